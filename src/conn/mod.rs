//! Connection settings, resolved the way libpq resolves them, and the
//! sessions they open.
//!
//! A DSN (`key=value ...` or a `postgresql://` URI, or a bare database name)
//! is parsed by our own parser, completed from a service file (`service=` /
//! `PGSERVICE`), then from the `PG*` environment variables, then from libpq's
//! defaults; passwords come from the DSN, `PGPASSWORD` or the password file
//! (`passfile` / `PGPASSFILE` / `~/.pgpass`), looked up per host as libpq does.
//! The result, a [`ConnSpec`], opens sessions with `postgres` and TLS through
//! `openssl`, following libpq's `sslmode` rules.
//!
//! Where things are: `keywords` (libpq's keyword table), `parse` (key=value
//! and URIs), `resolve` (DSN > service > environment > defaults),
//! `service_file`, `passfile`, `system` (OS user, home, socket directory),
//! `attempt` (one connection attempt: timeouts, fallbacks, error text),
//! `sql` (the statements connecting sends), `tls` (sslmode rules and the
//! OpenSSL connector); here: [`ConnSpec`] and `connect`, which tries every
//! host and address in turn.
//!
//! Nothing here ever prints a password: `Debug`, [`ConnSpec::describe`], log
//! lines and error messages leave it out, and parse errors never echo the
//! text that follows a `password=`.

mod attempt;
mod keywords;
mod parse;
mod passfile;
mod resolve;
mod service_file;

mod system;
#[cfg(test)]
mod test_support;
mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use postgres::Client;
use postgres::config::ChannelBinding;

use crate::bail_with;
use crate::error::{Exit, Failure};
use attempt::shuffle;
use keywords::KEYWORDS;
use parse::quote_value;

/// libpq's default port.
const DEFAULT_PORT: u16 = 5432;

/// Bytes that must never be shown.
#[derive(Clone, PartialEq, Eq)]
struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a setting came from, in decreasing precedence.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Dsn,
    Service,
    Env,
}

#[derive(Clone)]
struct Setting {
    value: String,
    source: Source,
}

/// One entry of the host list: libpq's `pg_conn_host`.
#[derive(Clone)]
struct Target {
    /// The host as given (a name, an IP, or a socket directory starting with
    /// '/'); the default socket directory when neither host nor hostaddr was
    /// given; empty when only hostaddr was given.
    host: String,
    /// hostaddr, when given: connect to this address, use `host` for TLS.
    hostaddr: Option<IpAddr>,
    port: u16,
    /// The password from the password file for this host, if any.
    passfile_password: Option<Secret>,
}

impl Target {
    fn is_socket(&self) -> bool {
        self.hostaddr.is_none() && self.host.starts_with('/')
    }

    /// The host looked up in the password file: the host, else the hostaddr.
    fn passfile_host(&self) -> String {
        self.label()
    }

    /// The host as shown to people: the host, else the hostaddr.
    fn label(&self) -> String {
        match (&self.hostaddr, self.host.is_empty()) {
            (Some(ip), true) => ip.to_string(),
            _ => self.host.clone(),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("passfile_password", &self.passfile_password)
            .finish()
    }
}

/// libpq's target_session_attrs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

/// A fully resolved connection target: DSN + service file + PG* environment
/// + defaults + password file.
#[derive(Clone)]
pub struct ConnSpec {
    targets: Vec<Target>,
    user: String,
    dbname: String,
    /// From the DSN (or service file) or PGPASSWORD; beats the password file.
    password: Option<Secret>,
    password_from_dsn: bool,
    /// The password file the per-host passwords were read from.
    passfile: Option<PathBuf>,
    options: Option<String>,
    application_name: Option<String>,
    fallback_application_name: Option<String>,
    connect_timeout: Option<Duration>,
    keepalives: Option<bool>,
    keepalives_idle: Option<Duration>,
    keepalives_interval: Option<Duration>,
    keepalives_count: Option<u32>,
    tcp_user_timeout: Option<Duration>,
    session_attrs: SessionAttrs,
    load_balance: bool,
    channel_binding: ChannelBinding,
    tls: tls::TlsSettings,
    /// The TLS connector of `tls`, shared by every session (see [`tls::Built`]).
    tls_connector: tls::Built,
    /// Every setting given (DSN, service file, environment), for
    /// `conninfo_for_standby`.
    settings: BTreeMap<&'static str, Setting>,
}

impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnSpec")
            .field("targets", &self.targets)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password)
            .field("password_from_dsn", &self.password_from_dsn)
            .field("passfile", &self.passfile)
            .field("options", &self.options)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("session_attrs", &self.session_attrs)
            .field("load_balance", &self.load_balance)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// What `from_dsn` needs from the outside world, injectable for tests.
struct Context<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    home: Option<&'a Path>,
    /// The operating-system user name (libpq: getpwuid(geteuid())).
    os_user: &'a dyn Fn() -> Option<String>,
    /// The socket directory used when no host is given.
    default_socket_dir: &'a dyn Fn() -> String,
}

impl ConnSpec {
    /// Parse `key=value ...` conninfo or a `postgresql://`/`postgres://` URI and resolve it
    /// against the real process environment and home directory.
    pub fn from_dsn(dsn: &str) -> Result<ConnSpec> {
        let home = system::home_dir();
        ConnSpec::from_dsn_with(dsn, &|name| std::env::var(name).ok(), home.as_deref())
    }

    /// Same, with the environment and home directory injected (for unit tests).
    pub fn from_dsn_with(
        dsn: &str,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<ConnSpec> {
        let ctx = Context {
            env,
            home,
            os_user: &|| system::os_user().map(|(name, _)| name),
            default_socket_dir: &system::default_socket_dir,
        };
        let spec = resolve::resolve(dsn, &ctx)?;
        log::debug!("connection target: {}", spec.describe());
        Ok(spec)
    }

    /// Open a session (sync `postgres::Client`). Errors are `Failure(Exit::Connect)`
    /// with one line naming each host and port tried, e.g.
    /// `connection to server at "localhost" (::1), port 5432 failed: Connection refused`
    /// or `connection to server on socket "/tmp/.s.PGSQL.5432" failed: FATAL: password
    /// authentication failed for user "bob"`.
    pub fn connect(&self, application_name: &str) -> Result<Client> {
        let app = self
            .application_name
            .as_deref()
            .or(self.fallback_application_name.as_deref());
        let app = app.unwrap_or(application_name).to_string();
        let tls = tls::Lazy::new(&self.tls, &self.tls_connector);
        let passes = match self.session_attrs {
            // libpq: first look for a standby, then take any server.
            SessionAttrs::PreferStandby => vec![SessionAttrs::Standby, SessionAttrs::Any],
            other => vec![other],
        };
        let mut errors: Vec<String> = Vec::new();
        for want in passes {
            let mut order: Vec<&Target> = self.targets.iter().collect();
            if self.load_balance {
                shuffle(&mut order);
            }
            for target in order {
                let addrs = match self.addresses(target) {
                    Ok(addrs) => addrs,
                    Err(msg) => {
                        errors.push(msg);
                        continue;
                    }
                };
                for addr in addrs {
                    match self.attempt(target, &addr, &app, want, &tls) {
                        Ok(client) => return Ok(client),
                        Err(_) if crate::interrupt::signalled() => {
                            bail_with!(
                                Exit::Interrupted,
                                "interrupted by a signal while connecting"
                            )
                        }
                        Err(mut msgs) => errors.append(&mut msgs),
                    }
                }
            }
        }
        errors.dedup();
        bail_with!(Exit::Connect, "{}", errors.join("; "))
    }

    /// One-line description for logs: host, port, user, dbname, sslmode — never the password.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let hosts = self
            .targets
            .iter()
            .map(|t| t.host.as_str())
            .collect::<Vec<_>>();
        if hosts.iter().any(|h| !h.is_empty()) {
            parts.push(format!("host={}", quote_value(&hosts.join(","))));
        }
        if let Some(addr) = self.setting("hostaddr") {
            parts.push(format!("hostaddr={}", quote_value(addr)));
        }
        parts.push(format!("port={}", quote_value(&self.ports_string())));
        parts.push(format!("user={}", quote_value(&self.user)));
        parts.push(format!("dbname={}", quote_value(&self.dbname)));
        parts.push(format!("sslmode={}", self.tls.mode.as_str()));
        parts.join(" ")
    }

    /// conninfo string suitable for primary_conninfo (-R later): all settings except dbname,
    /// with the password included only if `with_password` and it came from the DSN itself.
    pub fn conninfo_for_standby(&self, with_password: bool) -> String {
        let mut parts = Vec::new();
        for k in KEYWORDS {
            let value: Option<String> = match k.name {
                "dbname" | "replication" | "fallback_application_name" | "service" => None,
                "user" => Some(self.user.clone()),
                "password" | "sslpassword" => self
                    .settings
                    .get(k.name)
                    .filter(|s| with_password && s.source == Source::Dsn)
                    .map(|s| s.value.clone()),
                "host" => {
                    let hosts = self
                        .targets
                        .iter()
                        .map(|t| t.host.as_str())
                        .collect::<Vec<_>>();
                    hosts.iter().any(|h| !h.is_empty()).then(|| hosts.join(","))
                }
                "port" => Some(self.ports_string()),
                "sslmode" => Some(self.tls.mode.as_str().to_string()),
                name => self.setting(name).map(str::to_string),
            };
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                parts.push(format!("{}={}", k.name, quote_value(&v)));
            }
        }
        parts.join(" ")
    }

    /// True when the password was given in the DSN (not env / pgpass).
    pub fn password_from_dsn(&self) -> bool {
        self.password_from_dsn
    }

    /// The host(s) as given (unix socket dirs start with '/'); a host given
    /// only as hostaddr is its address. For tests of the resolution rules.
    #[cfg(test)]
    pub fn hosts(&self) -> Vec<String> {
        self.targets.iter().map(Target::label).collect()
    }

    /// The port of the first host.
    #[cfg(test)]
    pub fn port(&self) -> u16 {
        self.targets.first().map_or(DEFAULT_PORT, |t| t.port)
    }

    /// A non-empty setting from the DSN, service file or environment.
    fn setting(&self, name: &str) -> Option<&str> {
        self.settings
            .get(name)
            .map(|s| s.value.as_str())
            .filter(|v| !v.is_empty())
    }

    fn ports_string(&self) -> String {
        let ports = self.targets.iter().map(|t| t.port).collect::<Vec<_>>();
        if ports.windows(2).all(|w| w[0] == w[1]) {
            ports[0].to_string()
        } else {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    }
}

/// The settings given so far; empty values count as not given.
struct Given<'a>(&'a BTreeMap<&'static str, Setting>);

impl<'a> Given<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .get(name)
            .map(|s| s.value.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A keyword that takes one of a few words: the meaning of the word
    /// given, `default` when none is.
    fn choice<T: Copy>(&self, name: &str, default: T, words: &[(&str, T)]) -> Result<T> {
        let Some(value) = self.get(name) else {
            return Ok(default);
        };
        words
            .iter()
            .find(|(word, _)| *word == value)
            .map(|(_, meaning)| *meaning)
            .ok_or_else(|| invalid_value(name, value))
    }
}

fn invalid_value(name: &str, value: &str) -> anyhow::Error {
    usage(format!("invalid {name} value: \"{value}\""))
}

/// A mistake in the connection settings: the usage exit code.
fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(Failure::new(Exit::Usage, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::parse::parse_dsn;
    use crate::conn::test_support::{spec, spec_with};

    #[test]
    fn spec_can_be_shared_by_worker_threads() {
        fn send_sync<T: Send + Sync + Clone>() {}
        send_sync::<ConnSpec>();
    }

    #[test]
    fn describe_never_shows_the_password() {
        for dsn in [
            "host=h user=u password=hunter2 sslpassword=hunter2",
            "postgresql://u:hunter2@h/db",
        ] {
            let s = spec(dsn);
            let d = s.describe();
            assert!(!d.contains("hunter2"), "{d}");
            assert!(
                d.contains("host=h")
                    && d.contains("user=u")
                    && d.contains("port=5432")
                    && d.contains("sslmode=prefer"),
                "{d}"
            );
            let dbg = format!("{s:?}");
            assert!(!dbg.contains("hunter2"), "{dbg}");
            assert!(dbg.contains("<redacted>"), "{dbg}");
        }
        let s = spec_with("host=h", &[("PGPASSWORD", "hunter2")], None).unwrap();
        assert!(
            !format!("{} {:?} {}", s.describe(), s, s.conninfo_for_standby(true))
                .contains("hunter2")
        );
        assert_eq!(
            spec("host='/my dir' dbname=x").describe(),
            "host='/my dir' port=5432 user=osuser dbname=x sslmode=prefer"
        );
    }

    #[test]
    fn conninfo_for_standby_quotes_and_filters() {
        let s = spec(
            r"host=db1 port=5433 user=rep dbname=app password='it\'s \\ ok' application_name='my app' sslmode=verify-full sslrootcert=/ca.pem",
        );
        assert_eq!(
            s.conninfo_for_standby(false),
            "user=rep host=db1 port=5433 application_name='my app' sslmode='verify-full' sslrootcert='/ca.pem'"
        );
        assert_eq!(
            s.conninfo_for_standby(true),
            r"user=rep password='it\'s \\ ok' host=db1 port=5433 application_name='my app' sslmode='verify-full' sslrootcert='/ca.pem'"
        );
        // The round trip gives back the same settings.
        let again = parse_dsn(&s.conninfo_for_standby(true)).unwrap();
        assert!(again.contains(&("password".to_string(), r"it's \ ok".to_string())));
        // Environment passwords never; resolved defaults always.
        let s = spec_with("", &[("PGPASSWORD", "envpw"), ("PGUSER", "x")], None).unwrap();
        assert_eq!(
            s.conninfo_for_standby(true),
            "user=x host='/var/run/postgresql' port=5432 sslmode=prefer"
        );
        let s = spec("host=a,b port=1,2 hostaddr=10.0.0.1,10.0.0.2");
        assert_eq!(
            s.conninfo_for_standby(false),
            "user=osuser host='a,b' hostaddr='10.0.0.1,10.0.0.2' port='1,2' sslmode=prefer"
        );
    }
}
