//! Connection settings, resolved the way libpq resolves them.
//!
//! A DSN (`key=value ...` or a `postgresql://` URI, or a bare database name)
//! is parsed by our own parser, completed from a service file (`service=` /
//! `PGSERVICE`), then from the `PG*` environment variables, then from libpq's
//! defaults; passwords come from the DSN, `PGPASSWORD` or the password file
//! (`passfile` / `PGPASSFILE` / `~/.pgpass`), looked up per host as libpq does.
//! The result, a [`ConnSpec`], opens sessions with `postgres` and TLS through
//! `openssl`, following libpq's `sslmode` rules (see the `tls` section below).
//!
//! Nothing here ever prints a password: `Debug`, [`ConnSpec::describe`], log
//! lines and error messages leave it out, and parse errors never echo the
//! text that follows a `password=`.

use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use postgres::config::{ChannelBinding, SslMode as PgSslMode, SslNegotiation};
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::{Client, Socket};

use crate::bail_with;
use crate::error::{Exit, Failure};
use crate::interrupt::Endpoint;

/// libpq's default port.
const DEFAULT_PORT: u16 = 5432;

// ---------------------------------------------------------------------------
// Connection options known to libpq
// ---------------------------------------------------------------------------

/// What we do with a libpq keyword.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Support {
    /// Used.
    Yes,
    /// Accepted and ignored: it has no effect with this client (GSSAPI
    /// settings: the `postgres` crate has no GSSAPI; SSL compression: gone
    /// from PostgreSQL 14 on, libpq ignores it too).
    Ignored,
    /// Refused with this explanation: ignoring it would weaken a check the
    /// user asked for, or change what the connection is.
    Refused(&'static str),
}

struct Keyword {
    name: &'static str,
    env: Option<&'static str>,
    support: Support,
}

const fn kw(name: &'static str, env: Option<&'static str>, support: Support) -> Keyword {
    Keyword { name, env, support }
}

/// libpq's keywords in libpq's own order (fe-connect.c, PQconninfoOptions),
/// which is also the order of [`ConnSpec::conninfo_for_standby`].
const KEYWORDS: &[Keyword] = &[
    kw("service", Some("PGSERVICE"), Support::Yes),
    kw("user", Some("PGUSER"), Support::Yes),
    kw("password", Some("PGPASSWORD"), Support::Yes),
    kw("passfile", Some("PGPASSFILE"), Support::Yes),
    kw("channel_binding", Some("PGCHANNELBINDING"), Support::Yes),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT"), Support::Yes),
    kw("dbname", Some("PGDATABASE"), Support::Yes),
    kw("host", Some("PGHOST"), Support::Yes),
    kw("hostaddr", Some("PGHOSTADDR"), Support::Yes),
    kw("port", Some("PGPORT"), Support::Yes),
    kw("client_encoding", Some("PGCLIENTENCODING"), Support::Yes),
    kw("options", Some("PGOPTIONS"), Support::Yes),
    kw("application_name", Some("PGAPPNAME"), Support::Yes),
    kw("fallback_application_name", None, Support::Yes),
    kw("keepalives", None, Support::Yes),
    kw("keepalives_idle", None, Support::Yes),
    kw("keepalives_interval", None, Support::Yes),
    kw("keepalives_count", None, Support::Yes),
    kw("tcp_user_timeout", None, Support::Yes),
    kw("sslmode", Some("PGSSLMODE"), Support::Yes),
    kw("sslnegotiation", Some("PGSSLNEGOTIATION"), Support::Yes),
    kw("sslcompression", Some("PGSSLCOMPRESSION"), Support::Ignored),
    kw("sslcert", Some("PGSSLCERT"), Support::Yes),
    kw("sslkey", Some("PGSSLKEY"), Support::Yes),
    kw("sslcertmode", Some("PGSSLCERTMODE"), Support::Yes),
    kw("sslpassword", None, Support::Yes),
    kw("sslrootcert", Some("PGSSLROOTCERT"), Support::Yes),
    kw("sslcrl", Some("PGSSLCRL"), Support::Yes),
    kw("sslcrldir", Some("PGSSLCRLDIR"), Support::Yes),
    kw("sslsni", Some("PGSSLSNI"), Support::Yes),
    kw(
        "requirepeer",
        Some("PGREQUIREPEER"),
        Support::Refused(
            "checking the server's operating-system user is not supported by this tool",
        ),
    ),
    kw(
        "require_auth",
        Some("PGREQUIREAUTH"),
        Support::Refused("restricting the authentication method is not supported by this tool"),
    ),
    kw(
        "ssl_min_protocol_version",
        Some("PGSSLMINPROTOCOLVERSION"),
        Support::Yes,
    ),
    kw(
        "ssl_max_protocol_version",
        Some("PGSSLMAXPROTOCOLVERSION"),
        Support::Yes,
    ),
    kw("gssencmode", Some("PGGSSENCMODE"), Support::Yes),
    kw("krbsrvname", Some("PGKRBSRVNAME"), Support::Ignored),
    kw("gsslib", Some("PGGSSLIB"), Support::Ignored),
    kw("gssdelegation", Some("PGGSSDELEGATION"), Support::Ignored),
    kw(
        "replication",
        None,
        Support::Refused(
            "this tool copies over ordinary SQL sessions, not replication connections",
        ),
    ),
    kw(
        "target_session_attrs",
        Some("PGTARGETSESSIONATTRS"),
        Support::Yes,
    ),
    kw(
        "load_balance_hosts",
        Some("PGLOADBALANCEHOSTS"),
        Support::Yes,
    ),
];

fn keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

/// Keywords whose values are secrets: never echoed, never logged.
fn is_secret(name: &str) -> bool {
    name == "password" || name == "sslpassword"
}

// ---------------------------------------------------------------------------
// The resolved target
// ---------------------------------------------------------------------------

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
        let home = home_dir();
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
            os_user: &|| os_user().map(|(name, _)| name),
            default_socket_dir: &default_socket_dir,
        };
        let spec = resolve(dsn, &ctx)?;
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
        let mut tls = tls::Lazy::new(&self.tls);
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
                    match self.attempt(target, &addr, &app, want, &mut tls) {
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

    /// The addresses to try for one host: its socket, its hostaddr, or what
    /// its name resolves to (every address, in resolver order, as libpq).
    fn addresses(&self, t: &Target) -> std::result::Result<Vec<Addr>, String> {
        if t.is_socket() {
            return Ok(vec![Addr::Unix(PathBuf::from(&t.host))]);
        }
        if let Some(ip) = t.hostaddr {
            return Ok(vec![Addr::Tcp(ip)]);
        }
        match (t.host.as_str(), t.port).to_socket_addrs() {
            Ok(found) => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for a in found {
                    if !ips.contains(&a.ip()) {
                        ips.push(a.ip());
                    }
                }
                if self.load_balance {
                    shuffle(&mut ips);
                }
                if ips.is_empty() {
                    return Err(format!(
                        "could not translate host name \"{}\" to address: no addresses",
                        t.host
                    ));
                }
                Ok(ips.into_iter().map(Addr::Tcp).collect())
            }
            Err(e) => {
                let msg = e.to_string();
                let msg = msg
                    .strip_prefix("failed to lookup address information: ")
                    .unwrap_or(&msg);
                Err(format!(
                    "could not translate host name \"{}\" to address: {}",
                    t.host, msg
                ))
            }
        }
    }

    /// Settings shared by every attempt.
    fn base_config(&self, t: &Target, app: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.user(&self.user);
        c.dbname(&self.dbname);
        if let Some(pw) = self.password.as_ref().or(t.passfile_password.as_ref()) {
            c.password(&pw.0);
        }
        if let Some(o) = &self.options {
            c.options(o);
        }
        if !app.is_empty() {
            c.application_name(app);
        }
        if let Some(d) = self.connect_timeout {
            c.connect_timeout(d);
        }
        if let Some(on) = self.keepalives {
            c.keepalives(on);
        }
        if let Some(d) = self.keepalives_idle {
            c.keepalives_idle(d);
        }
        if let Some(d) = self.keepalives_interval {
            c.keepalives_interval(d);
        }
        if let Some(n) = self.keepalives_count {
            c.keepalives_retries(n);
        }
        if let Some(d) = self.tcp_user_timeout {
            c.tcp_user_timeout(d);
        }
        c.channel_binding(self.channel_binding);
        if self.tls.direct {
            c.ssl_negotiation(SslNegotiation::Direct);
        }
        c.port(t.port);
        c
    }

    /// One address, with the sslmode's fallbacks (allow: plain then TLS;
    /// prefer: TLS then plain), then the target_session_attrs check.
    fn attempt(
        &self,
        t: &Target,
        addr: &Addr,
        app: &str,
        want: SessionAttrs,
        tls: &mut tls::Lazy,
    ) -> std::result::Result<Client, Vec<String>> {
        let server = match addr {
            Addr::Unix(dir) => {
                format!("server on socket \"{}/.s.PGSQL.{}\"", dir.display(), t.port)
            }
            Addr::Tcp(ip) if t.label() == ip.to_string() => {
                format!("server at \"{}\", port {}", ip, t.port)
            }
            Addr::Tcp(ip) => format!("server at \"{}\" ({}), port {}", t.label(), ip, t.port),
        };
        log::debug!(
            "connecting to {server} as user \"{}\", database \"{}\"",
            self.user,
            self.dbname
        );
        let prefix = format!("connection to {server} failed: ");
        let fail = |reason: String| vec![format!("{prefix}{reason}")];
        let mut cfg = self.base_config(t, app);
        // The connection holds the only strong reference (in its notice
        // callback): the signal watcher forgets the session when it is gone.
        let alive = Arc::new(());
        let held = Arc::clone(&alive);
        cfg.notice_callback(move |notice| {
            let _alive = &held;
            log::debug!("server {}: {}", notice.severity(), notice.message());
        });
        crate::interrupt::register_endpoint(match addr {
            Addr::Unix(dir) => Endpoint::Unix(dir.join(format!(".s.PGSQL.{}", t.port))),
            Addr::Tcp(ip) => Endpoint::Tcp(*ip, t.port),
        });
        let tcp = match addr {
            Addr::Unix(dir) => {
                cfg.host_path(dir);
                false
            }
            Addr::Tcp(ip) => {
                // The name checked in the server certificate and sent as SNI:
                // the host as given, else the address.
                let name = if t.host.is_empty() || t.host.starts_with('/') {
                    ip.to_string()
                } else {
                    t.host.clone()
                };
                cfg.host(&name);
                cfg.hostaddr(*ip);
                true
            }
        };
        if tcp && self.tls.mode == tls::Mode::VerifyFull && t.host.is_empty() {
            return Err(fail(
                "host name must be specified for a verified SSL connection".into(),
            ));
        }
        let hint = match addr {
            Addr::Unix(_) => {
                "is the server running locally and accepting connections on that socket?"
            }
            Addr::Tcp(_) => "is the server running on that host and accepting TCP/IP connections?",
        };
        let reason = |e: &AttemptError| match e {
            AttemptError::Pg(e) => describe_pg_error(e, hint, self.passfile_hint(t)),
            AttemptError::TimedOut => "timeout expired".into(),
            AttemptError::Interrupted => "interrupted by a signal".into(),
            AttemptError::Spawn(e) => format!("could not start a connection thread: {e}"),
        };
        let timeout = self.connect_timeout;
        let plain = |cfg: &mut postgres::Config| {
            cfg.ssl_mode(PgSslMode::Disable);
            connect_within(cfg, postgres::NoTls, timeout)
        };
        // TLS is never used over unix sockets (libpq ignores sslmode there).
        let mode = if tcp {
            self.tls.mode
        } else {
            tls::Mode::Disable
        };
        let mut client = match mode {
            tls::Mode::Disable => plain(&mut cfg).map_err(|e| fail(reason(&e)))?,
            tls::Mode::Allow => match plain(&mut cfg) {
                Ok(c) => c,
                // The server refused a plain session: try again with TLS.
                Err(e) if e.refused_by_server() => {
                    let first = fail(reason(&e));
                    let connector = tls.get().map_err(|m| [first.clone(), fail(m)].concat())?;
                    cfg.ssl_mode(PgSslMode::Require);
                    connect_within(&cfg, connector, timeout)
                        .map_err(|e2| [first, fail(reason(&e2))].concat())?
                }
                Err(e) => return Err(fail(reason(&e))),
            },
            tls::Mode::Prefer => match tls.get() {
                Err(m) => {
                    log::debug!("{prefix}{m}; trying without SSL");
                    plain(&mut cfg).map_err(|e| fail(reason(&e)))?
                }
                Ok(connector) => {
                    let used = connector.flag();
                    cfg.ssl_mode(PgSslMode::Prefer);
                    match connect_within(&cfg, connector, timeout) {
                        Ok(c) => c,
                        // TLS was negotiated and then failed (handshake or the
                        // server's rejection): libpq retries without TLS.
                        Err(e @ AttemptError::Pg(_)) if used.get() => {
                            let first = fail(reason(&e));
                            plain(&mut cfg).map_err(|e2| [first, fail(reason(&e2))].concat())?
                        }
                        Err(e) => return Err(fail(reason(&e))),
                    }
                }
            },
            tls::Mode::Require | tls::Mode::VerifyCa | tls::Mode::VerifyFull => {
                let connector = tls.get().map_err(fail)?;
                cfg.ssl_mode(PgSslMode::Require);
                connect_within(&cfg, connector, timeout).map_err(|e| fail(reason(&e)))?
            }
        };
        crate::interrupt::register(client.cancel_token(), Arc::downgrade(&alive));
        check_session(&mut client, want).map_err(fail)?;
        Ok(client)
    }

    /// libpq's hint when a password from the password file was rejected.
    fn passfile_hint(&self, t: &Target) -> Option<&Path> {
        if self.password.is_none() && t.passfile_password.is_some() {
            self.passfile.as_deref()
        } else {
            None
        }
    }
}

/// Why one connection attempt failed.
enum AttemptError {
    /// The server, the socket or TLS said no.
    Pg(postgres::Error),
    /// connect_timeout ran out before the session was ready.
    TimedOut,
    /// SIGINT or SIGTERM arrived before the session was ready.
    Interrupted,
    Spawn(std::io::Error),
}

impl AttemptError {
    /// The server answered with an error (libpq's sslmode=allow then tries TLS).
    fn refused_by_server(&self) -> bool {
        matches!(self, AttemptError::Pg(e) if e.as_db_error().is_some())
    }
}

/// `cfg.connect(tls)`, bounded as a whole by `timeout`, as libpq bounds an
/// attempt by connect_timeout: postgres' own timeout covers only the TCP
/// connect, so a server (or a middlebox) that accepts the connection and
/// then never answers would hang TLS negotiation or authentication forever.
/// The attempt runs on a thread of its own, which is abandoned when the time
/// is up or a signal arrives (also without a timeout); it ends, closing its
/// socket, when the server finally answers or closes, or with the process.
fn connect_within<T>(
    cfg: &postgres::Config,
    tls: T,
    timeout: Option<Duration>,
) -> std::result::Result<Client, AttemptError>
where
    T: MakeTlsConnect<Socket> + 'static + Send,
    T::TlsConnect: Send,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (done, result) = std::sync::mpsc::channel();
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("connect".into())
        .spawn(move || {
            // A late session is dropped (and closed) here when nobody waits.
            let _ = done.send(cfg.connect(tls));
        })
        .map_err(AttemptError::Spawn)?;
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        if crate::interrupt::signalled() {
            return Err(AttemptError::Interrupted);
        }
        let mut wait = Duration::from_millis(100);
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(AttemptError::TimedOut);
            }
            wait = wait.min(left);
        }
        match result.recv_timeout(wait) {
            Ok(connected) => return connected.map_err(AttemptError::Pg),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(AttemptError::Spawn(std::io::Error::other(
                    "the connection thread ended without a result",
                )));
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Addr {
    Unix(PathBuf),
    Tcp(IpAddr),
}

/// libpq's target_session_attrs check on an open session.
fn check_session(client: &mut Client, want: SessionAttrs) -> std::result::Result<(), String> {
    let ask = |client: &mut Client, sql: &str| -> std::result::Result<String, String> {
        let rows = client
            .simple_query(sql)
            .map_err(|e| describe_pg_error(&e, "", None))?;
        rows.iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .ok_or_else(|| format!("no result from \"{sql}\""))
    };
    match want {
        SessionAttrs::Any | SessionAttrs::PreferStandby => Ok(()),
        SessionAttrs::ReadWrite => match ask(client, "SHOW transaction_read_only")?.as_str() {
            "on" => Err("session is read-only".into()),
            _ => Ok(()),
        },
        SessionAttrs::ReadOnly => match ask(client, "SHOW transaction_read_only")?.as_str() {
            "off" => Err("session is not read-only".into()),
            _ => Ok(()),
        },
        SessionAttrs::Primary => {
            match ask(client, "SELECT pg_catalog.pg_is_in_recovery()")?.as_str() {
                "t" => Err("server is in hot standby mode".into()),
                _ => Ok(()),
            }
        }
        SessionAttrs::Standby => {
            match ask(client, "SELECT pg_catalog.pg_is_in_recovery()")?.as_str() {
                "f" => Err("server is not in hot standby mode".into()),
                _ => Ok(()),
            }
        }
    }
}

/// What libpq says when the answer is not the PostgreSQL protocol.
const NOT_POSTGRES: &str =
    "received an invalid response from the server; is this a PostgreSQL server?";

/// One line for a failed connection attempt: the server's FATAL, or the
/// socket error, or the TLS error. Never contains the password (neither the
/// server nor the `postgres` crate ever repeats it).
fn describe_pg_error(e: &postgres::Error, hint: &str, passfile: Option<&Path>) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let mut msg = format!("{}: {}", db.severity(), db.message());
        if let Some(file) = passfile
            && db.code() == &postgres::error::SqlState::INVALID_PASSWORD
        {
            msg.push_str(&format!(
                " (password retrieved from file \"{}\")",
                file.display()
            ));
        }
        return msg;
    }
    let top = e.to_string();
    if top == "unexpected message from server" || top == "error parsing response from server" {
        return NOT_POSTGRES.into();
    }
    // Walk the causes: an io::Error (socket), an SSL error, or text.
    let mut texts = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            // The stream ended inside what was read as a message: the other
            // end does not speak the protocol (an HTTP server, say).
            if io.to_string() == "bytes remaining on stream" {
                return NOT_POSTGRES.into();
            }
            return describe_io_error(io, hint);
        }
        if let Some(ssl) = c.downcast_ref::<openssl::ssl::Error>() {
            if let Some(io) = ssl.io_error() {
                return format!("SSL error: {}", describe_io_error(io, ""));
            }
            let reasons = ssl
                .ssl_error()
                .map(tls::reasons)
                .unwrap_or_else(|| ssl.to_string());
            // postgres-openssl appends the certificate verification result.
            let outer: String = texts.last().cloned().unwrap_or_default();
            let verify = outer
                .strip_prefix(&ssl.to_string())
                .and_then(|s| s.strip_prefix(": "));
            return match verify {
                Some(v) => format!("SSL error: {reasons}: {v}"),
                None => format!("SSL error: {reasons}"),
            };
        }
        texts.push(c.to_string());
        cause = c.source();
    }
    match texts.first().map(String::as_str) {
        Some("password missing") => "no password supplied".into(),
        Some("server does not support TLS") => {
            "server does not support SSL, but SSL was required".into()
        }
        Some(inner) if top == "error performing TLS handshake" => format!("SSL error: {inner}"),
        Some(_) => format!("{top}: {}", texts.join(": ")),
        None if e.is_closed() => "server closed the connection unexpectedly".into(),
        None => top,
    }
}

fn describe_io_error(io: &std::io::Error, hint: &str) -> String {
    use std::io::ErrorKind;
    if io.kind() == ErrorKind::TimedOut {
        return "timeout expired".into();
    }
    let text = io.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    match io.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::NotFound if !hint.is_empty() => {
            format!("{text} ({hint})")
        }
        _ => text,
    }
}

/// Fisher-Yates with the standard library's random hasher keys as the
/// randomness (load_balance_hosts=random).
fn shuffle<T>(items: &mut [T]) {
    let state = std::collections::hash_map::RandomState::new();
    for i in (1..items.len()).rev() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        let j = (h.finish() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

// ---------------------------------------------------------------------------
// The outside world: user, home, default socket directory
// ---------------------------------------------------------------------------

/// The effective user's name and home directory from the password database.
fn os_user() -> Option<(String, PathBuf)> {
    let mut size = 16 * 1024;
    loop {
        let mut buf: Vec<libc::c_char> = vec![0; size];
        // SAFETY: getpwuid_r writes into `pwd` and `buf`, which outlive the
        // reads below; `result` is either null or points at `pwd`.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(
                libc::geteuid(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            );
            if rc == libc::ERANGE && size < (1 << 20) {
                size *= 4;
                continue;
            }
            if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
                return None;
            }
            let name = CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned();
            let dir = if pwd.pw_dir.is_null() {
                PathBuf::new()
            } else {
                PathBuf::from(OsStr::from_bytes(CStr::from_ptr(pwd.pw_dir).to_bytes()))
            };
            return Some((name, dir));
        }
    }
}

/// libpq's pqGetHomeDirectory: $HOME, else the password database.
fn home_dir() -> Option<PathBuf> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
        _ => os_user()
            .map(|(_, dir)| dir)
            .filter(|d| !d.as_os_str().is_empty()),
    }
}

/// Where the local server's socket is when no host is given: Debian's
/// libpq default if that directory exists, else upstream's.
fn default_socket_dir() -> String {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql".into()
    } else {
        "/tmp".into()
    }
}

// ---------------------------------------------------------------------------
// Parsing: key=value conninfo and URIs
// ---------------------------------------------------------------------------

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(Failure::new(Exit::Usage, msg))
}

/// Split a DSN into (keyword, value) pairs in order, later ones winning.
/// Keywords are checked against libpq's list; `requiressl` and the URI
/// parameter `ssl=true` are translated to sslmode as libpq does.
fn parse_dsn(dsn: &str) -> Result<Vec<(String, String)>> {
    let pairs = if dsn.starts_with("postgresql://") || dsn.starts_with("postgres://") {
        parse_uri(dsn)?
    } else if dsn.contains('=') {
        parse_keyvalue(dsn)?
    } else if dsn.trim().is_empty() {
        Vec::new()
    } else {
        // Like psql and pg_basebackup: a word that is not a connection
        // string names the database.
        vec![("dbname".to_string(), dsn.to_string())]
    };
    Ok(pairs)
}

/// libpq's conninfo_parse: `key = value` pairs separated by whitespace;
/// values may be single-quoted; a backslash escapes the next character.
fn parse_keyvalue(s: &str) -> Result<Vec<(String, String)>> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out: Vec<(String, String)> = Vec::new();
    // Never echo text that follows a secret: it may be part of it.
    let after_secret = |out: &Vec<(String, String)>| out.last().is_some_and(|(k, _)| is_secret(k));
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let mut name = String::new();
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            name.push(chars[i]);
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            if after_secret(&out) {
                return Err(usage(format!(
                    "invalid connection string: missing \"=\" after the value of \"{}\" (quote values that contain spaces)",
                    out.last().map_or("", |(k, _)| k.as_str())
                )));
            }
            return Err(usage(format!(
                "invalid connection string: missing \"=\" after \"{name}\""
            )));
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                if i >= chars.len() {
                    return Err(usage(
                        "invalid connection string: unterminated quoted string".into(),
                    ));
                }
                match chars[i] {
                    '\\' => {
                        i += 1;
                        if i < chars.len() {
                            value.push(chars[i]);
                            i += 1;
                        }
                    }
                    '\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    i += 1;
                    if i < chars.len() {
                        value.push(chars[i]);
                        i += 1;
                    }
                } else {
                    value.push(chars[i]);
                    i += 1;
                }
            }
        }
        if keyword(&name).is_none() && name != "requiressl" && after_secret(&out) {
            return Err(usage(format!(
                "invalid connection option after \"{}\" (quote values that contain spaces)",
                out.last().map_or("", |(k, _)| k.as_str())
            )));
        }
        store(&mut out, &name, value, |n| {
            format!("invalid connection option \"{n}\"")
        })?;
    }
    Ok(out)
}

/// Check a keyword and record it; `requiressl` becomes sslmode (libpq).
fn store(
    out: &mut Vec<(String, String)>,
    name: &str,
    value: String,
    unknown: impl Fn(&str) -> String,
) -> Result<()> {
    if name == "requiressl" {
        let mode = if value.starts_with('1') {
            "require"
        } else {
            "prefer"
        };
        out.push(("sslmode".into(), mode.into()));
        return Ok(());
    }
    if keyword(name).is_none() {
        return Err(usage(unknown(name)));
    }
    out.push((name.to_string(), value));
    Ok(())
}

/// libpq's conninfo_uri_parse:
/// `postgresql://[user[:password]@][host][:port][,...][/dbname][?param=value&...]`.
fn parse_uri(uri: &str) -> Result<Vec<(String, String)>> {
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .unwrap_or(uri);
    let mut out: Vec<(String, String)> = Vec::new();
    let unknown = |n: &str| format!("invalid URI query parameter: \"{n}\"");

    // user[:password]@ — found by looking ahead for '@' before any '/'.
    let mut p = rest;
    if let Some(at) = rest.find(['@', '/'])
        && rest.as_bytes()[at] == b'@'
    {
        let userinfo = &rest[..at];
        let (user, password) = match userinfo.find(':') {
            Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            out.push(("user".into(), percent_decode(user, "user name")?));
        }
        if let Some(pw) = password.filter(|p| !p.is_empty()) {
            out.push(("password".into(), percent_decode(pw, "password")?));
        }
        p = &rest[at + 1..];
    }

    // host[:port] pairs separated by commas; IPv6 addresses in brackets.
    let mut hosts: Vec<&str> = Vec::new();
    let mut ports: Vec<&str> = Vec::new();
    let mut term: Option<char>;
    loop {
        let host;
        if let Some(inner) = p.strip_prefix('[') {
            let Some(close) = inner.find(']') else {
                return Err(usage(
                    "invalid URI: missing \"]\" after an IPv6 host address".into(),
                ));
            };
            if close == 0 {
                return Err(usage(
                    "invalid URI: IPv6 host address may not be empty".into(),
                ));
            }
            host = &inner[..close];
            p = &inner[close + 1..];
            if let Some(c) = p.chars().next()
                && !matches!(c, ':' | '/' | '?' | ',')
            {
                return Err(usage(format!(
                    "invalid URI: unexpected character \"{c}\" after an IPv6 host address (expected \":\" or \"/\")"
                )));
            }
        } else {
            let end = p.find([':', '/', '?', ',']).unwrap_or(p.len());
            host = &p[..end];
            p = &p[end..];
        }
        hosts.push(host);
        term = p.chars().next();
        if term == Some(':') {
            p = &p[1..];
            let end = p.find(['/', '?', ',']).unwrap_or(p.len());
            ports.push(&p[..end]);
            p = &p[end..];
            term = p.chars().next();
        } else {
            ports.push("");
        }
        if term != Some(',') {
            break;
        }
        p = &p[1..];
    }
    let host = hosts.join(",");
    if !host.is_empty() {
        out.push(("host".into(), percent_decode(&host, "host")?));
    }
    let port = ports.join(",");
    if !port.is_empty() {
        out.push(("port".into(), percent_decode(&port, "port")?));
    }

    // /dbname
    if term == Some('/') {
        p = &p[1..];
        let end = p.find('?').unwrap_or(p.len());
        let dbname = &p[..end];
        if !dbname.is_empty() {
            out.push(("dbname".into(), percent_decode(dbname, "database name")?));
        }
        p = &p[end..];
        term = p.chars().next();
    }

    // ?key=value&...
    if term == Some('?') {
        let params = &p[1..];
        let mut rest = params;
        while !rest.is_empty() {
            let end = rest.find('&').unwrap_or(rest.len());
            let pair = &rest[..end];
            rest = if end < rest.len() {
                &rest[end + 1..]
            } else {
                ""
            };
            let Some(eq) = pair.find('=') else {
                return Err(usage(format!(
                    "invalid URI: missing key/value separator \"=\" in query parameter \"{}\"",
                    percent_decode(pair, "query parameter").unwrap_or_default()
                )));
            };
            let key = percent_decode(&pair[..eq], "query parameter")?;
            let raw_value = &pair[eq + 1..];
            if raw_value.contains('=') {
                return Err(usage(format!(
                    "invalid URI: extra key/value separator \"=\" in query parameter \"{key}\""
                )));
            }
            let value = percent_decode(raw_value, &format!("value of \"{key}\""))?;
            if key == "ssl" && value == "true" {
                out.push(("sslmode".into(), "require".into()));
                continue;
            }
            store(&mut out, &key, value, unknown)?;
        }
    }
    Ok(out)
}

/// %XX decoding as libpq does it (%00 is refused); the result must be UTF-8.
/// The error names the part of the URI, never its text (it may be a password).
fn percent_decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            let Some(b) =
                hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
            else {
                return Err(usage(format!(
                    "invalid URI: invalid percent-encoded token in the {what}"
                )));
            };
            if b == 0 {
                return Err(usage(format!(
                    "invalid URI: forbidden value %00 in the {what}"
                )));
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        usage(format!(
            "invalid URI: the {what} is not valid UTF-8 once decoded"
        ))
    })
}

/// libpq's appendConnStrVal: bare if only [A-Za-z0-9_.], else single-quoted
/// with `'` and `\` escaped by a backslash.
fn quote_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

// ---------------------------------------------------------------------------
// Resolution: DSN, service file, environment, defaults, password file
// ---------------------------------------------------------------------------

fn resolve(dsn: &str, ctx: &Context<'_>) -> Result<ConnSpec> {
    let mut settings: BTreeMap<&'static str, Setting> = BTreeMap::new();
    for (name, value) in parse_dsn(dsn)? {
        let k = keyword(&name).expect("parse_dsn checks keywords");
        settings.insert(
            k.name,
            Setting {
                value,
                source: Source::Dsn,
            },
        );
    }

    // Service file: fills what the DSN left out, before the environment.
    let service = match settings.get("service") {
        Some(s) => Some(s.value.clone()),
        None => (ctx.env)("PGSERVICE"),
    }
    .filter(|s| !s.is_empty());
    if let Some(service) = service {
        for (name, value) in service_settings(&service, ctx)? {
            let k = keyword(&name).expect("service_settings checks keywords");
            settings.entry(k.name).or_insert(Setting {
                value,
                source: Source::Service,
            });
        }
    }

    // Environment, for everything still unset.
    for k in KEYWORDS {
        if settings.contains_key(k.name) {
            continue;
        }
        if let Some(value) = k.env.and_then(|v| (ctx.env)(v)) {
            settings.insert(
                k.name,
                Setting {
                    value,
                    source: Source::Env,
                },
            );
        } else if k.name == "sslmode"
            && (ctx.env)("PGREQUIRESSL").is_some_and(|v| v.starts_with('1'))
        {
            settings.insert(
                k.name,
                Setting {
                    value: "require".into(),
                    source: Source::Env,
                },
            );
        }
    }

    let given = Given(&settings);
    let get = |name: &str| given.get(name);

    // Keywords we refuse or ignore.
    for k in KEYWORDS {
        if let Some(value) = get(k.name) {
            let origin = match settings[k.name].source {
                Source::Env => format!("{} (from {})", k.name, k.env.unwrap_or("the environment")),
                Source::Service => format!("{} (from service file)", k.name),
                Source::Dsn => k.name.to_string(),
            };
            match k.support {
                Support::Refused(why) => {
                    return Err(usage(format!("connection option {origin}: {why}")));
                }
                Support::Ignored if k.name == "gssdelegation" && value == "0" => {}
                Support::Ignored if k.name == "sslcompression" && value == "0" => {}
                Support::Ignored if k.name == "krbsrvname" || k.name == "gsslib" => {}
                Support::Ignored => {
                    log::warn!("connection option {origin} is ignored by this tool")
                }
                Support::Yes => {}
            }
        }
    }

    // User and database.
    let user = match get("user") {
        Some(u) => u.to_string(),
        None => match (ctx.os_user)() {
            Some(u) => u,
            None => bail_with!(
                Exit::Connect,
                "could not look up the local user name; give user= in the DSN or set PGUSER"
            ),
        },
    };
    let dbname = get("dbname").map_or_else(|| user.clone(), str::to_string);

    let mut targets = resolve_targets(&given, ctx.default_socket_dir)?;

    // Password: DSN (or service file) or PGPASSWORD, else the password file.
    let password = get("password").map(|p| Secret(p.as_bytes().to_vec()));
    let password_from_dsn = password.is_some() && settings["password"].source == Source::Dsn;
    let mut passfile = None;
    if password.is_none() {
        let file = get("passfile")
            .map(PathBuf::from)
            .or_else(|| ctx.home.map(|h| h.join(".pgpass")));
        if let Some(file) = file
            && let Some(content) = read_passfile(&file)
        {
            let default_dir = (ctx.default_socket_dir)();
            for t in &mut targets {
                t.passfile_password = passfile_lookup(
                    &content,
                    &t.passfile_host(),
                    &t.port.to_string(),
                    &dbname,
                    &user,
                    &default_dir,
                )
                .map(Secret);
            }
            passfile = Some(file);
        }
    }

    // Simple enumerations and numbers.
    let channel_binding = match get("channel_binding") {
        None | Some("prefer") => ChannelBinding::Prefer,
        Some("disable") => ChannelBinding::Disable,
        Some("require") => ChannelBinding::Require,
        Some(v) => return Err(invalid_value("channel_binding", v)),
    };
    let session_attrs = match get("target_session_attrs") {
        None | Some("any") => SessionAttrs::Any,
        Some("read-write") => SessionAttrs::ReadWrite,
        Some("read-only") => SessionAttrs::ReadOnly,
        Some("primary") => SessionAttrs::Primary,
        Some("standby") => SessionAttrs::Standby,
        Some("prefer-standby") => SessionAttrs::PreferStandby,
        Some(v) => return Err(invalid_value("target_session_attrs", v)),
    };
    let load_balance = match get("load_balance_hosts") {
        None | Some("disable") => false,
        Some("random") => true,
        Some(v) => return Err(invalid_value("load_balance_hosts", v)),
    };
    match get("gssencmode") {
        None | Some("disable") | Some("prefer") => {}
        Some("require") => {
            return Err(usage(
                "gssencmode=require: GSSAPI encryption is not supported by this tool".into(),
            ));
        }
        Some(v) => return Err(invalid_value("gssencmode", v)),
    }
    if let Some(enc) = get("client_encoding")
        && !matches!(
            enc.to_ascii_lowercase().as_str(),
            "utf8" | "utf-8" | "unicode" | "auto"
        )
    {
        log::warn!("client_encoding \"{enc}\" is ignored: this tool always uses UTF8");
    }
    let connect_timeout = match get("connect_timeout") {
        None => None,
        // libpq: zero or less waits forever; less than 2 seconds means 2.
        Some(v) => match parse_int("connect_timeout", v)? {
            t if t <= 0 => None,
            t => Some(Duration::from_secs(t.max(2) as u64)),
        },
    };
    let seconds = |name: &str| -> Result<Option<Duration>> {
        get(name)
            .map(|v| parse_int(name, v).map(|s| Duration::from_secs(s.max(0) as u64)))
            .transpose()
    };
    let keepalives = get("keepalives")
        .map(|v| parse_int("keepalives", v).map(|n| n != 0))
        .transpose()?;
    let keepalives_idle = seconds("keepalives_idle")?;
    let keepalives_interval = seconds("keepalives_interval")?;
    let keepalives_count = get("keepalives_count")
        .map(|v| parse_int("keepalives_count", v).map(|n| n.clamp(0, u32::MAX as i64) as u32))
        .transpose()?;
    let tcp_user_timeout = get("tcp_user_timeout")
        .map(|v| parse_int("tcp_user_timeout", v).map(|ms| Duration::from_millis(ms.max(0) as u64)))
        .transpose()?;

    let tls = tls::TlsSettings::resolve(&given, ctx.home)?;
    let options = get("options").map(str::to_string);
    let application_name = get("application_name").map(str::to_string);
    let fallback_application_name = get("fallback_application_name").map(str::to_string);

    Ok(ConnSpec {
        targets,
        user,
        dbname,
        password,
        password_from_dsn,
        passfile,
        options,
        application_name,
        fallback_application_name,
        connect_timeout,
        keepalives,
        keepalives_idle,
        keepalives_interval,
        keepalives_count,
        tcp_user_timeout,
        session_attrs,
        load_balance,
        channel_binding,
        tls,
        settings,
    })
}

/// The host list, as libpq's pqConnectOptions2 builds it: hostaddr and
/// host lists of equal length (or one of them), one port or one per host,
/// empty entries meaning the defaults.
fn resolve_targets(
    given: &Given<'_>,
    default_socket_dir: &dyn Fn() -> String,
) -> Result<Vec<Target>> {
    let get = |name: &str| given.get(name);
    let hostaddrs: Option<Vec<&str>> = get("hostaddr").map(|v| v.split(',').collect());
    let hosts: Option<Vec<&str>> = get("host").map(|v| v.split(',').collect());
    let n = hostaddrs
        .as_ref()
        .map(Vec::len)
        .or(hosts.as_ref().map(Vec::len))
        .unwrap_or(1);
    if let (Some(h), Some(_)) = (&hosts, &hostaddrs)
        && h.len() != n
    {
        return Err(usage(format!(
            "could not match {} host names to {} hostaddr values",
            h.len(),
            n
        )));
    }
    let ports: Vec<&str> = match get("port") {
        None => vec![""; n],
        Some(v) => {
            let p: Vec<&str> = v.split(',').collect();
            if p.len() == 1 {
                vec![p[0]; n]
            } else if p.len() == n {
                p
            } else {
                return Err(usage(format!(
                    "could not match {} port numbers to {} hosts",
                    p.len(),
                    n
                )));
            }
        }
    };
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let hostaddr = match hostaddrs
            .as_ref()
            .map(|a| a[i].trim())
            .filter(|a| !a.is_empty())
        {
            Some(a) => Some(
                a.parse::<IpAddr>()
                    .map_err(|_| usage(format!("could not parse network address \"{a}\"")))?,
            ),
            None => None,
        };
        let mut host = hosts.as_ref().map_or("", |h| h[i]).to_string();
        if host.is_empty() && hostaddr.is_none() {
            host = default_socket_dir();
        }
        if host.starts_with('@') && hostaddr.is_none() {
            return Err(usage(format!(
                "abstract Unix-domain sockets are not supported (host \"{host}\")"
            )));
        }
        let port = match ports[i].trim() {
            "" => DEFAULT_PORT,
            p => match p.parse::<i64>() {
                Ok(v) if (1..=65535).contains(&v) => v as u16,
                _ => return Err(usage(format!("invalid port number: \"{}\"", ports[i]))),
            },
        };
        targets.push(Target {
            host,
            hostaddr,
            port,
            passfile_password: None,
        });
    }
    Ok(targets)
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
}

fn invalid_value(name: &str, value: &str) -> anyhow::Error {
    usage(format!("invalid {name} value: \"{value}\""))
}

/// libpq's pqParseIntParam: an integer with optional surrounding spaces.
fn parse_int(name: &str, value: &str) -> Result<i64> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| i32::try_from(*n).is_ok())
        .ok_or_else(|| {
            usage(format!(
                "invalid integer value \"{value}\" for connection option \"{name}\""
            ))
        })
}

/// The password file's content, or None when it is missing (silently), not
/// a plain file, or readable by group or others (with a warning, as libpq).
fn read_passfile(file: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        log::warn!("password file \"{}\" is not a plain file", file.display());
        return None;
    }
    if meta.mode() & 0o077 != 0 {
        log::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            file.display()
        );
        return None;
    }
    match std::fs::read(file) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("could not read password file \"{}\": {e}", file.display());
            None
        }
    }
}

/// libpq's passwordFromFile over the file's content: the first line whose
/// `host:port:dbname:user` fields match (`*` matches anything; `\` escapes
/// `:` and `\`) gives the password. A host that is empty or the default
/// socket directory matches `localhost`, as in libpq.
fn passfile_lookup(
    content: &[u8],
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
    default_socket_dir: &str,
) -> Option<Vec<u8>> {
    if dbname.is_empty() || user.is_empty() {
        return None;
    }
    let trim = |s: &str| s.trim_end_matches('/').to_string();
    let host =
        if host.is_empty() || (host.starts_with('/') && trim(host) == trim(default_socket_dir)) {
            "localhost"
        } else {
            host
        };
    let port = if port.is_empty() { "5432" } else { port };
    for line in content.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let rest = Some(line)
            .and_then(|l| passfile_field(l, host.as_bytes()))
            .and_then(|l| passfile_field(l, port.as_bytes()))
            .and_then(|l| passfile_field(l, dbname.as_bytes()))
            .and_then(|l| passfile_field(l, user.as_bytes()));
        if let Some(rest) = rest {
            // The password runs to the first unescaped ':' or the end.
            let mut pw = Vec::new();
            let mut i = 0;
            while i < rest.len() && rest[i] != b':' {
                if rest[i] == b'\\' && i + 1 < rest.len() {
                    i += 1;
                }
                pw.push(rest[i]);
                i += 1;
            }
            return Some(pw);
        }
    }
    None
}

/// libpq's pwdfMatchesString: if the line's first field matches `token`,
/// the rest of the line after that field's ':'.
fn passfile_field<'a>(line: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if line.starts_with(b"*:") {
        return Some(&line[2..]);
    }
    let (mut i, mut t) = (0, 0);
    while i < line.len() {
        let mut escaped = false;
        if line[i] == b'\\' {
            i += 1;
            escaped = true;
        }
        let c = *line.get(i)?;
        if c == b':' && t == token.len() && !escaped {
            return Some(&line[i + 1..]);
        }
        if t == token.len() || c != token[t] {
            return None;
        }
        i += 1;
        t += 1;
    }
    None
}

/// The settings of one service from the user's service file
/// (`PGSERVICEFILE` or `~/.pg_service.conf`) or, when it is not there, the
/// system one (`$PGSYSCONFDIR/pg_service.conf`, Debian's
/// /etc/postgresql-common by default), as libpq's parseServiceInfo.
fn service_settings(service: &str, ctx: &Context<'_>) -> Result<Vec<(String, String)>> {
    let user_file = match (ctx.env)("PGSERVICEFILE").filter(|v| !v.is_empty()) {
        Some(f) => Some(PathBuf::from(f)),
        None => ctx.home.map(|h| h.join(".pg_service.conf")),
    };
    let sysconfdir = (ctx.env)("PGSYSCONFDIR").unwrap_or_else(|| "/etc/postgresql-common".into());
    let system_file = Path::new(&sysconfdir).join("pg_service.conf");
    for file in user_file.iter().chain(std::iter::once(&system_file)) {
        if !file.exists() {
            continue;
        }
        let text = std::fs::read_to_string(file).map_err(|e| {
            usage(format!(
                "service file \"{}\" could not be read: {e}",
                file.display()
            ))
        })?;
        if let Some(found) = parse_service_file(&text, service, file)? {
            return Ok(found);
        }
    }
    Err(usage(format!(
        "definition of service \"{service}\" not found"
    )))
}

fn parse_service_file(
    text: &str,
    service: &str,
    file: &Path,
) -> Result<Option<Vec<(String, String)>>> {
    let mut in_group = false;
    let mut found: Option<Vec<(String, String)>> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            if in_group {
                break;
            }
            in_group = line.strip_prefix('[').and_then(|l| l.strip_prefix(service)) == Some("]");
            if in_group {
                found = Some(Vec::new());
            }
            continue;
        }
        if !in_group {
            continue;
        }
        let syntax = || {
            usage(format!(
                "syntax error in service file \"{}\", line {}",
                file.display(),
                n + 1
            ))
        };
        let (key, value) = line.split_once('=').ok_or_else(syntax)?;
        if key == "service" {
            return Err(usage(format!(
                "nested service specifications not supported in service file \"{}\", line {}",
                file.display(),
                n + 1
            )));
        }
        if keyword(key).is_none() {
            return Err(syntax());
        }
        if let Some(f) = found.as_mut() {
            f.push((key.to_string(), value.to_string()));
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------------------
// TLS, with libpq's sslmode semantics
// ---------------------------------------------------------------------------
//
// - disable: never; allow: plain first, TLS if the server refuses;
//   prefer (default): TLS if the server offers it, plain if TLS then fails;
//   require: TLS, no verification... unless a root certificate file exists,
//   then as verify-ca; verify-ca: the chain must lead to sslrootcert
//   (default ~/.postgresql/root.crt; `system` = the system's trusted roots,
//   which forces verify-full); verify-full: also the host name.
// - Not over unix sockets, whatever sslmode says (as libpq).
// - sslcert/sslkey (default ~/.postgresql/postgresql.crt/.key) are sent only
//   when the certificate file exists; the key must not be group/world
//   readable; sslpassword decrypts it.
// - sslcrl/sslcrldir (default ~/.postgresql/root.crl) are checked when a
//   root certificate is used.
// postgres' own SslMode has only disable/prefer/require: every verify-*
// mode is Require plus a connector that verifies.

mod tls {
    use std::net::IpAddr;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use anyhow::Result;
    use openssl::error::ErrorStack;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
    use openssl::x509::store::{X509Lookup, X509StoreBuilder};
    use openssl::x509::verify::X509VerifyFlags;
    use openssl::x509::{X509, X509Ref, X509VerifyResult};
    use postgres::Socket;
    use postgres::tls::{MakeTlsConnect, TlsConnect};
    use postgres_openssl::MakeTlsConnector;

    use super::{Given, Secret, invalid_value, usage};

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(super) enum Mode {
        Disable,
        Allow,
        Prefer,
        Require,
        VerifyCa,
        VerifyFull,
    }

    impl Mode {
        pub(super) fn as_str(self) -> &'static str {
            match self {
                Mode::Disable => "disable",
                Mode::Allow => "allow",
                Mode::Prefer => "prefer",
                Mode::Require => "require",
                Mode::VerifyCa => "verify-ca",
                Mode::VerifyFull => "verify-full",
            }
        }

        fn verifies(self) -> bool {
            matches!(self, Mode::VerifyCa | Mode::VerifyFull)
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(super) enum RootCert {
        File(PathBuf),
        /// `sslrootcert=system`: OpenSSL's default trust store.
        System,
        /// No sslrootcert and no home directory to find the default in.
        Unknown,
    }

    #[derive(Clone, Debug)]
    pub(super) struct TlsSettings {
        pub(super) mode: Mode,
        pub(super) root: RootCert,
        pub(super) crl: Option<PathBuf>,
        pub(super) crldir: Option<PathBuf>,
        pub(super) cert: Option<PathBuf>,
        pub(super) key: Option<PathBuf>,
        pub(super) key_password: Option<Secret>,
        pub(super) send_cert: bool,
        pub(super) sni: bool,
        pub(super) min_version: Option<SslVersion>,
        pub(super) max_version: Option<SslVersion>,
        pub(super) direct: bool,
    }

    fn version(name: &str, v: Option<&str>) -> Result<Option<(u8, SslVersion)>> {
        Ok(match v.map(str::to_ascii_lowercase).as_deref() {
            None => None,
            Some("tlsv1") => Some((0, SslVersion::TLS1)),
            Some("tlsv1.1") => Some((1, SslVersion::TLS1_1)),
            Some("tlsv1.2") => Some((2, SslVersion::TLS1_2)),
            Some("tlsv1.3") => Some((3, SslVersion::TLS1_3)),
            Some(_) => return Err(invalid_value(name, v.unwrap_or_default())),
        })
    }

    impl TlsSettings {
        /// Check the TLS settings (libpq's connectOptions2 rules) and fill in
        /// the default file names under `<home>/.postgresql`.
        pub(super) fn resolve(given: &Given<'_>, home: Option<&Path>) -> Result<TlsSettings> {
            let get = |name: &str| given.get(name);
            let rootcert = get("sslrootcert");
            let mode = match get("sslmode") {
                // sslrootcert=system makes verify-full the default.
                None if rootcert == Some("system") => Mode::VerifyFull,
                None | Some("prefer") => Mode::Prefer,
                Some("disable") => Mode::Disable,
                Some("allow") => Mode::Allow,
                Some("require") => Mode::Require,
                Some("verify-ca") => Mode::VerifyCa,
                Some("verify-full") => Mode::VerifyFull,
                Some(v) => return Err(invalid_value("sslmode", v)),
            };
            let direct = match get("sslnegotiation") {
                None | Some("postgres") => false,
                Some("direct") => true,
                Some(v) => return Err(invalid_value("sslnegotiation", v)),
            };
            if direct && !matches!(mode, Mode::Require | Mode::VerifyCa | Mode::VerifyFull) {
                return Err(usage(format!(
                    "weak sslmode \"{}\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")",
                    mode.as_str()
                )));
            }
            if rootcert == Some("system") && mode != Mode::VerifyFull {
                return Err(usage(format!(
                    "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                    mode.as_str()
                )));
            }
            let min = version("ssl_min_protocol_version", get("ssl_min_protocol_version"))?;
            let max = version("ssl_max_protocol_version", get("ssl_max_protocol_version"))?;
            if let (Some((lo, _)), Some((hi, _))) = (min, max)
                && lo > hi
            {
                return Err(usage("invalid SSL protocol version range".into()));
            }
            let send_cert = match get("sslcertmode") {
                None | Some("allow") => true,
                Some("disable") => false,
                Some("require") => {
                    return Err(usage(
                        "sslcertmode=require is not supported by this tool".into(),
                    ));
                }
                Some(v) => return Err(invalid_value("sslcertmode", v)),
            };
            let in_home = |name: &str| home.map(|h| h.join(".postgresql").join(name));
            let root = match rootcert {
                Some("system") => RootCert::System,
                Some(p) => RootCert::File(PathBuf::from(p)),
                None => in_home("root.crt").map_or(RootCert::Unknown, RootCert::File),
            };
            let (crl, crldir) = match (get("sslcrl"), get("sslcrldir")) {
                (None, None) => (in_home("root.crl"), None),
                (crl, dir) => (crl.map(PathBuf::from), dir.map(PathBuf::from)),
            };
            Ok(TlsSettings {
                mode,
                root,
                crl,
                crldir,
                cert: get("sslcert")
                    .map(PathBuf::from)
                    .or_else(|| in_home("postgresql.crt")),
                key: get("sslkey")
                    .map(PathBuf::from)
                    .or_else(|| in_home("postgresql.key")),
                key_password: get("sslpassword").map(|p| Secret(p.as_bytes().to_vec())),
                send_cert,
                // libpq: SNI unless sslsni is set to something not starting with 1.
                sni: get("sslsni").is_none_or(|v| v.starts_with('1')),
                // libpq's default minimum is TLSv1.2.
                min_version: Some(min.map_or(SslVersion::TLS1_2, |(_, v)| v)),
                max_version: max.map(|(_, v)| v),
                direct,
            })
        }

        /// An OpenSSL connector configured as libpq would configure its
        /// SSL context; the error is one line.
        pub(super) fn connector(&self) -> std::result::Result<Connector, String> {
            let ssl = |what: &str| {
                let what = what.to_string();
                move |e: ErrorStack| format!("{what}: {}", reasons(&e))
            };
            let mut b = SslConnector::builder(SslMethod::tls_client())
                .map_err(ssl("could not create SSL context"))?;
            let verify = match &self.root {
                // The builder starts with OpenSSL's default trust store.
                RootCert::System => true,
                RootCert::File(path) if path.exists() => {
                    let shown = path.display().to_string();
                    let pem = std::fs::read(path).map_err(|e| {
                        format!("could not read root certificate file \"{shown}\": {e}")
                    })?;
                    let certs = X509::stack_from_pem(&pem).map_err(ssl(&format!(
                        "could not read root certificate file \"{shown}\""
                    )))?;
                    if certs.is_empty() {
                        return Err(format!(
                            "could not read root certificate file \"{shown}\": no certificates found"
                        ));
                    }
                    let mut store = X509StoreBuilder::new()
                        .map_err(ssl("could not create certificate store"))?;
                    for cert in certs {
                        store.add_cert(cert).map_err(ssl(&format!(
                            "could not load root certificate file \"{shown}\""
                        )))?;
                    }
                    let mut crl_loaded = false;
                    if let Some(crl) = self.crl.as_ref().filter(|p| p.exists()) {
                        let shown = crl.display().to_string();
                        let lookup = store
                            .add_lookup(X509Lookup::file())
                            .map_err(ssl("could not load SSL CRL"))?;
                        let name = crl.to_str().ok_or_else(|| format!("SSL certificate revocation list \"{shown}\" has a name that is not UTF-8"))?;
                        lookup
                            .load_crl_file(name, SslFiletype::PEM)
                            .map_err(ssl(&format!(
                                "could not load SSL certificate revocation list \"{shown}\""
                            )))?;
                        crl_loaded = true;
                    }
                    if let Some(dir) = self.crldir.as_ref().filter(|p| p.is_dir()) {
                        let shown = dir.display().to_string();
                        let name = dir.to_str().ok_or_else(|| format!("SSL certificate revocation list directory \"{shown}\" has a name that is not UTF-8"))?;
                        store
                            .add_lookup(X509Lookup::hash_dir())
                            .and_then(|l| l.add_dir(name, SslFiletype::PEM))
                            .map_err(ssl(&format!("could not load SSL certificate revocation list directory \"{shown}\"")))?;
                        crl_loaded = true;
                    }
                    if crl_loaded {
                        store
                            .set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)
                            .map_err(ssl("could not enable CRL checks"))?;
                    }
                    b.set_cert_store(store.build());
                    true
                }
                RootCert::File(path) if self.mode.verifies() => {
                    return Err(format!(
                        "root certificate file \"{}\" does not exist; either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification",
                        path.display()
                    ));
                }
                RootCert::Unknown if self.mode.verifies() => {
                    return Err("could not get home directory to locate root certificate file; either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification".into());
                }
                // require, prefer, allow without a root certificate: no checks.
                _ => false,
            };
            b.set_verify(if verify {
                SslVerifyMode::PEER
            } else {
                SslVerifyMode::NONE
            });
            b.set_min_proto_version(self.min_version)
                .map_err(ssl("could not set minimum SSL protocol version"))?;
            b.set_max_proto_version(self.max_version)
                .map_err(ssl("could not set maximum SSL protocol version"))?;
            if self.send_cert {
                self.client_certificate(&mut b)?;
            }
            if self.direct {
                postgres_openssl::set_postgresql_alpn(&mut b)
                    .map_err(ssl("could not set SSL ALPN extension"))?;
            }
            let mut inner = MakeTlsConnector::new(b.build());
            let (check_host, sni) = (self.mode == Mode::VerifyFull, self.sni);
            inner.set_callback(move |config, host| {
                // OpenSSL's own host check never accepts an address in the
                // CN; libpq's rule (certificate_names_host) does.
                config.set_verify_hostname(false);
                config.set_use_server_name_indication(sni);
                if check_host {
                    let host = host.to_string();
                    config.set_verify_callback(SslVerifyMode::PEER, move |chain_ok, ctx| {
                        // Depth 0 is the server's own certificate, checked
                        // last, once its chain has been verified.
                        if !chain_ok || ctx.error_depth() > 0 {
                            return chain_ok;
                        }
                        let named = ctx
                            .current_cert()
                            .is_some_and(|cert| certificate_names_host(cert, &host));
                        if !named {
                            // SAFETY: a verification result code OpenSSL defines.
                            ctx.set_error(unsafe { X509VerifyResult::from_raw(HOSTNAME_MISMATCH) });
                        }
                        named
                    });
                }
                Ok(())
            });
            Ok(Connector {
                inner,
                used: Arc::new(AtomicBool::new(false)),
            })
        }

        /// Load the client certificate and key when the certificate exists.
        fn client_certificate(
            &self,
            b: &mut openssl::ssl::SslConnectorBuilder,
        ) -> std::result::Result<(), String> {
            let Some(cert) = self.cert.as_ref().filter(|p| p.exists()) else {
                return Ok(());
            };
            let shown = cert.display().to_string();
            b.set_certificate_chain_file(cert).map_err(|e| {
                format!(
                    "could not read certificate file \"{shown}\": {}",
                    reasons(&e)
                )
            })?;
            let Some(key) = self.key.as_ref() else {
                return Err("certificate present, but not private key file".into());
            };
            let kshown = key.display().to_string();
            let meta = match std::fs::metadata(key) {
                Ok(m) => m,
                Err(_) if kshown.contains(':') => {
                    return Err(format!(
                        "OpenSSL engine keys (sslkey=\"{kshown}\") are not supported by this tool"
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "certificate present, but not private key file \"{kshown}\""
                    ));
                }
            };
            if !meta.is_file() {
                return Err(format!("key file \"{kshown}\" is not a regular file"));
            }
            use std::os::unix::fs::MetadataExt;
            // libpq: 0600 or less when owned by the user, 0640 or less when owned by root.
            let bad = if meta.uid() == 0 {
                meta.mode() & 0o037
            } else {
                meta.mode() & 0o077
            };
            if bad != 0 {
                return Err(format!(
                    "private key file \"{kshown}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root"
                ));
            }
            let pem = std::fs::read(key)
                .map_err(|e| format!("could not load private key file \"{kshown}\": {e}"))?;
            let pass = self.key_password.as_ref().map_or(&[][..], |p| &p.0[..]);
            let pkey = PKey::private_key_from_pem_passphrase(&pem, pass).map_err(|e| {
                format!(
                    "could not load private key file \"{kshown}\": {}",
                    reasons(&e)
                )
            })?;
            b.set_private_key(&pkey).map_err(|e| {
                format!(
                    "could not load private key file \"{kshown}\": {}",
                    reasons(&e)
                )
            })?;
            b.check_private_key().map_err(|e| {
                format!(
                    "certificate does not match private key file \"{kshown}\": {}",
                    reasons(&e)
                )
            })?;
            Ok(())
        }
    }

    /// X509_V_ERR_HOSTNAME_MISMATCH (x509_vfy.h): the error a failed name
    /// check reports, as OpenSSL's own check would.
    const HOSTNAME_MISMATCH: std::ffi::c_int = 62;

    /// libpq's verify-full rule (fe-secure-openssl.c): the host matches a
    /// subjectAltName dNSName (exactly or by a leading `*.` wildcard, case
    /// insensitively) or iPAddress entry; the subject's first Common Name is
    /// checked only when the certificate has no SAN entry of the host's kind
    /// (an IP address host falls back to the CN even beside dNSName
    /// entries). A name with an embedded NUL, or an address of a length
    /// that is neither IPv4 nor IPv6, fails the check.
    pub(super) fn certificate_names_host(cert: &X509Ref, host: &str) -> bool {
        let host_ip: Option<IpAddr> = host.parse().ok();
        let mut check_cn = true;
        for name in cert.subject_alt_names().iter().flatten() {
            if let Some(ip) = name.ipaddress() {
                check_cn &= host_ip.is_none();
                let matched = match (ip.len(), host_ip) {
                    (4, Some(IpAddr::V4(h))) => ip == h.octets(),
                    (16, Some(IpAddr::V6(h))) => ip == h.octets(),
                    (4 | 16, _) => false,
                    _ => return false,
                };
                if matched {
                    return true;
                }
            } else if let Some(dns) = name.dnsname() {
                check_cn &= host_ip.is_some();
                match dns_name_matches(dns.as_bytes(), host) {
                    Some(true) => return true,
                    Some(false) => {}
                    None => return false,
                }
            }
        }
        check_cn
            && cert
                .subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .next()
                .is_some_and(|cn| dns_name_matches(cn.data().as_slice(), host) == Some(true))
    }

    /// libpq's name comparison (fe-secure-common.c): equal ignoring ASCII
    /// case, or `*.rest` matching one leading label plus `.rest`; None for a
    /// name with an embedded NUL.
    fn dns_name_matches(name: &[u8], host: &str) -> Option<bool> {
        if name.contains(&0) {
            return None;
        }
        let host = host.as_bytes();
        if name.eq_ignore_ascii_case(host) {
            return Some(true);
        }
        let Some(suffix) = name
            .strip_prefix(b"*")
            .filter(|s| s.len() >= 2 && s[0] == b'.')
        else {
            return Some(false);
        };
        let Some(label_len) = host.len().checked_sub(suffix.len()).filter(|n| *n > 0) else {
            return Some(false);
        };
        let (label, rest) = host.split_at(label_len);
        Some(rest.eq_ignore_ascii_case(suffix) && !label.contains(&b'.'))
    }

    /// OpenSSL's reasons, without its codes and source locations.
    pub(super) fn reasons(e: &ErrorStack) -> String {
        let mut r: Vec<String> = Vec::new();
        for e in e.errors() {
            let reason = e.reason().map_or_else(|| e.to_string(), str::to_string);
            if !r.contains(&reason) {
                r.push(reason);
            }
        }
        if r.is_empty() {
            "unknown SSL error".into()
        } else {
            r.join(": ")
        }
    }

    /// The connector, built once per `connect` call and only when needed.
    pub(super) struct Lazy<'a> {
        settings: &'a TlsSettings,
        built: Option<std::result::Result<Connector, String>>,
    }

    impl<'a> Lazy<'a> {
        pub(super) fn new(settings: &'a TlsSettings) -> Lazy<'a> {
            Lazy {
                settings,
                built: None,
            }
        }

        /// A fresh copy, with its own "TLS was used" flag.
        pub(super) fn get(&mut self) -> std::result::Result<Connector, String> {
            let built = self.built.get_or_insert_with(|| self.settings.connector());
            built.as_ref().map(Connector::fresh).map_err(Clone::clone)
        }
    }

    /// postgres-openssl's connector, noting whether a TLS handshake was
    /// started: libpq's sslmode=prefer retries without TLS only then.
    #[derive(Clone)]
    pub(super) struct Connector {
        inner: MakeTlsConnector,
        used: Arc<AtomicBool>,
    }

    /// Whether the attempt got as far as a TLS handshake.
    pub(super) struct Used(Arc<AtomicBool>);

    impl Used {
        pub(super) fn get(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Connector {
        fn fresh(&self) -> Connector {
            Connector {
                inner: self.inner.clone(),
                used: Arc::new(AtomicBool::new(false)),
            }
        }

        pub(super) fn flag(&self) -> Used {
            Used(self.used.clone())
        }
    }

    impl MakeTlsConnect<Socket> for Connector {
        type Stream = <MakeTlsConnector as MakeTlsConnect<Socket>>::Stream;
        type TlsConnect = Flagged;
        type Error = <MakeTlsConnector as MakeTlsConnect<Socket>>::Error;

        fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<Flagged, Self::Error> {
            let inner = <MakeTlsConnector as MakeTlsConnect<Socket>>::make_tls_connect(
                &mut self.inner,
                domain,
            )?;
            Ok(Flagged {
                inner,
                used: self.used.clone(),
            })
        }
    }

    pub(super) struct Flagged {
        inner: postgres_openssl::TlsConnector,
        used: Arc<AtomicBool>,
    }

    impl TlsConnect<Socket> for Flagged {
        type Stream = <postgres_openssl::TlsConnector as TlsConnect<Socket>>::Stream;
        type Error = <postgres_openssl::TlsConnector as TlsConnect<Socket>>::Error;
        type Future = <postgres_openssl::TlsConnector as TlsConnect<Socket>>::Future;

        fn connect(self, stream: Socket) -> Self::Future {
            // Called only once the server has agreed to TLS.
            self.used.store(true, Ordering::SeqCst);
            self.inner.connect(stream)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use openssl::asn1::Asn1Time;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::x509::extension::SubjectAlternativeName;
        use openssl::x509::{X509Builder, X509NameBuilder};

        /// A self-signed certificate with this CN (if any) and these SANs
        /// ("DNS:name" or "IP:address").
        fn cert(cn: Option<&str>, sans: &[&str]) -> X509 {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
            let mut name = X509NameBuilder::new().unwrap();
            name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "test")
                .unwrap();
            if let Some(cn) = cn {
                name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
            }
            let name = name.build();
            let mut b = X509Builder::new().unwrap();
            b.set_version(2).unwrap();
            b.set_subject_name(&name).unwrap();
            b.set_issuer_name(&name).unwrap();
            b.set_pubkey(&key).unwrap();
            b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
                .unwrap();
            b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
                .unwrap();
            if !sans.is_empty() {
                let mut san = SubjectAlternativeName::new();
                for s in sans {
                    match s.split_once(':').unwrap() {
                        ("DNS", n) => san.dns(n),
                        ("IP", a) => san.ip(a),
                        _ => unreachable!(),
                    };
                }
                let ext = san.build(&b.x509v3_context(None, None)).unwrap();
                b.append_extension(ext).unwrap();
            }
            b.sign(&key, MessageDigest::sha256()).unwrap();
            b.build()
        }

        #[test]
        fn host_names_follow_libpqs_rule() {
            let cases: &[(Option<&str>, &[&str], &str, bool)] = &[
                // No SAN: the CN, for names and addresses alike.
                (Some("db.example.com"), &[], "db.example.com", true),
                (Some("DB.Example.COM"), &[], "db.example.com", true),
                (Some("db.example.com"), &[], "other.example.com", false),
                (Some("127.0.0.1"), &[], "127.0.0.1", true),
                (None, &[], "db.example.com", false),
                // A dNSName SAN hides the CN from a name...
                (
                    Some("db.example.com"),
                    &["DNS:other"],
                    "db.example.com",
                    false,
                ),
                (
                    Some("x"),
                    &["DNS:a", "DNS:db.example.com"],
                    "db.example.com",
                    true,
                ),
                // ... but not from an address (libpq breaks RFC 6125 here).
                (Some("127.0.0.1"), &["DNS:localhost"], "127.0.0.1", true),
                // An iPAddress SAN hides the CN from an address, not a name.
                (Some("127.0.0.1"), &["IP:127.0.0.2"], "127.0.0.1", false),
                (Some("x"), &["IP:127.0.0.1"], "127.0.0.1", true),
                (Some("db"), &["IP:127.0.0.1"], "db", true),
                (Some("x"), &["IP:::1"], "::1", true),
                (Some("x"), &["IP:::1"], "127.0.0.1", false),
                // A dNSName holding the address text matches it, as in libpq.
                (None, &["DNS:127.0.0.1"], "127.0.0.1", true),
                // Wildcards: one leading label, nothing else.
                (None, &["DNS:*.example.com"], "db.example.com", true),
                (None, &["DNS:*.example.com"], "DB.EXAMPLE.com", true),
                (None, &["DNS:*.example.com"], "a.db.example.com", false),
                (None, &["DNS:*.example.com"], "example.com", false),
                (None, &["DNS:*.example.com"], ".example.com", false),
                (None, &["DNS:db*.example.com"], "db1.example.com", false),
                (Some("*.example.com"), &[], "db.example.com", true),
            ];
            for (cn, sans, host, want) in cases {
                assert_eq!(
                    certificate_names_host(&cert(*cn, sans), host),
                    *want,
                    "CN {cn:?} SAN {sans:?} host {host}"
                );
            }
        }

        #[test]
        fn a_name_with_a_nul_never_matches() {
            assert_eq!(dns_name_matches(b"db\0.evil", "db"), None);
            assert_eq!(
                dns_name_matches(b"*.example.com", "db.example.com"),
                Some(true)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env_of(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Resolve with a fixed OS user, socket directory and environment.
    fn spec_with(dsn: &str, vars: &[(&str, &str)], home: Option<&Path>) -> Result<ConnSpec> {
        let env = env_of(vars);
        let lookup = move |k: &str| env.get(k).cloned();
        let ctx = Context {
            env: &lookup,
            home,
            os_user: &|| Some("osuser".to_string()),
            default_socket_dir: &|| "/var/run/postgresql".to_string(),
        };
        resolve(dsn, &ctx)
    }

    fn spec(dsn: &str) -> ConnSpec {
        spec_with(dsn, &[], None).unwrap()
    }

    fn usage_error(dsn: &str) -> String {
        let err = spec_with(dsn, &[], None).unwrap_err();
        assert_eq!(crate::error::exit_of(&err), Exit::Usage, "{err:#}");
        format!("{err:#}")
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pw(s: &ConnSpec) -> Option<String> {
        s.password
            .as_ref()
            .map(|p| String::from_utf8(p.0.clone()).unwrap())
    }

    fn host_pw(s: &ConnSpec, i: usize) -> Option<String> {
        s.targets[i]
            .passfile_password
            .as_ref()
            .map(|p| String::from_utf8(p.0.clone()).unwrap())
    }

    #[test]
    fn spec_can_be_shared_by_worker_threads() {
        fn send_sync<T: Send + Sync + Clone>() {}
        send_sync::<ConnSpec>();
    }

    // --- key=value -------------------------------------------------------

    #[test]
    fn keyvalue_plain_and_spaces_around_equals() {
        let got = parse_dsn("host=db1  port = 5433\tuser= bob dbname =x").unwrap();
        assert_eq!(
            got,
            kv(&[
                ("host", "db1"),
                ("port", "5433"),
                ("user", "bob"),
                ("dbname", "x")
            ])
        );
    }

    #[test]
    fn keyvalue_quotes_and_escapes() {
        let got =
            parse_dsn(r"password='a b\'c\\d' application_name=x\ y options='-c search_path=s'")
                .unwrap();
        assert_eq!(
            got,
            kv(&[
                ("password", r"a b'c\d"),
                ("application_name", "x y"),
                ("options", "-c search_path=s")
            ])
        );
        // An empty quoted value is a value.
        assert_eq!(
            parse_dsn("host='' port=1").unwrap(),
            kv(&[("host", ""), ("port", "1")])
        );
        // Later settings win.
        let s = spec("port=1 port=2 host=/tmp");
        assert_eq!(s.port(), 2);
    }

    #[test]
    fn keyvalue_errors() {
        assert!(usage_error("host=x 'oops").contains("missing \"=\""));
        assert!(usage_error("host='x").contains("unterminated quoted string"));
        let msg = usage_error("host=x bogus=1");
        assert!(msg.contains("invalid connection option \"bogus\""), "{msg}");
    }

    #[test]
    fn keyvalue_error_after_password_does_not_echo_it() {
        let msg = usage_error("password=sec ret host=x");
        assert!(!msg.contains("ret"), "{msg}");
        let msg = usage_error("password=sec ret=x");
        assert!(!msg.contains("ret"), "{msg}");
    }

    #[test]
    fn bare_word_is_a_database_name() {
        assert_eq!(parse_dsn("mydb").unwrap(), kv(&[("dbname", "mydb")]));
        assert_eq!(spec("mydb").dbname, "mydb");
        assert!(parse_dsn("").unwrap().is_empty());
    }

    #[test]
    fn requiressl_is_translated() {
        assert_eq!(
            parse_dsn("requiressl=1").unwrap(),
            kv(&[("sslmode", "require")])
        );
        assert_eq!(
            parse_dsn("requiressl=0").unwrap(),
            kv(&[("sslmode", "prefer")])
        );
    }

    #[test]
    fn refused_and_ignored_keywords() {
        assert!(usage_error("host=/tmp requirepeer=postgres").contains("requirepeer"));
        assert!(usage_error("host=/tmp replication=true").contains("replication"));
        assert!(usage_error("host=/tmp gssencmode=require").contains("GSSAPI"));
        // Accepted and ignored.
        spec("host=/tmp gssencmode=prefer krbsrvname=postgres sslcompression=0");
    }

    // --- URIs ---------------------------------------------------------------

    #[test]
    fn uri_full() {
        let got = parse_uri("postgresql://bob:s%40cret@db1.example.com:5433/my%20db?sslmode=require&connect_timeout=5").unwrap();
        assert_eq!(
            got,
            kv(&[
                ("user", "bob"),
                ("password", "s@cret"),
                ("host", "db1.example.com"),
                ("port", "5433"),
                ("dbname", "my db"),
                ("sslmode", "require"),
                ("connect_timeout", "5"),
            ])
        );
        assert_eq!(parse_uri("postgres://h").unwrap(), kv(&[("host", "h")]));
    }

    #[test]
    fn uri_multiple_hosts_and_ipv6() {
        let got = parse_uri("postgresql://h1:5432,[::1]:5433,h3/db").unwrap();
        assert_eq!(
            got,
            kv(&[
                ("host", "h1,::1,h3"),
                ("port", "5432,5433,"),
                ("dbname", "db")
            ])
        );
        let s = spec("postgresql://h1:5432,[::1]:5433,h3/db");
        assert_eq!(s.hosts(), vec!["h1", "::1", "h3"]);
        assert_eq!(
            s.targets.iter().map(|t| t.port).collect::<Vec<_>>(),
            vec![5432, 5433, 5432]
        );
        assert_eq!(
            parse_uri("postgresql://[2001:db8::7]/x").unwrap(),
            kv(&[("host", "2001:db8::7"), ("dbname", "x")])
        );
        assert!(usage_error("postgresql://[::1/db").contains("]"));
        assert!(usage_error("postgresql://[]/db").contains("empty"));
    }

    #[test]
    fn uri_socket_paths() {
        let s = spec("postgresql://%2Fvar%2Flib%2Fpg/db");
        assert_eq!(s.hosts(), vec!["/var/lib/pg"]);
        assert!(s.targets[0].is_socket());
        let s = spec("postgresql:///db?host=/tmp&port=5499");
        assert_eq!(s.hosts(), vec!["/tmp"]);
        assert_eq!(s.port(), 5499);
        assert_eq!(s.dbname.as_str(), "db");
    }

    #[test]
    fn uri_userinfo_forms() {
        assert_eq!(
            parse_uri("postgresql://bob@h").unwrap(),
            kv(&[("user", "bob"), ("host", "h")])
        );
        assert_eq!(
            parse_uri("postgresql://:pw@h").unwrap(),
            kv(&[("password", "pw"), ("host", "h")])
        );
        assert_eq!(
            parse_uri("postgresql://bob:@h").unwrap(),
            kv(&[("user", "bob"), ("host", "h")])
        );
        // A ':' in the password survives; '@' must be encoded.
        assert_eq!(
            parse_uri("postgresql://u:a:b@h").unwrap(),
            kv(&[("user", "u"), ("password", "a:b"), ("host", "h")])
        );
        assert!(spec("postgresql://u:pw@h").password_from_dsn());
    }

    #[test]
    fn uri_query_parameters() {
        assert_eq!(
            parse_uri("postgresql://h?ssl=true").unwrap(),
            kv(&[("host", "h"), ("sslmode", "require")])
        );
        assert!(
            usage_error("postgresql://h?foo=1").contains("invalid URI query parameter: \"foo\"")
        );
        assert!(usage_error("postgresql://h?sslmode").contains("missing key/value separator"));
        assert!(usage_error("postgresql://h?a=b=c").contains("extra key/value separator"));
        // Empty parts are not settings.
        assert!(parse_uri("postgresql://").unwrap().is_empty());
        assert!(parse_uri("postgresql:///").unwrap().is_empty());
    }

    #[test]
    fn uri_percent_errors_do_not_echo() {
        let msg = usage_error("postgresql://u:s3cr%zz@h");
        assert!(msg.contains("password") && !msg.contains("s3cr"), "{msg}");
        assert!(usage_error("postgresql://h/db%00").contains("%00"));
    }

    // --- resolution -----------------------------------------------------------

    #[test]
    fn defaults() {
        let s = spec("");
        assert_eq!(s.hosts(), vec!["/var/run/postgresql"]);
        assert_eq!(s.port(), 5432);
        assert_eq!(s.user.as_str(), "osuser");
        assert_eq!(s.dbname.as_str(), "osuser");
        assert_eq!(s.tls.mode, tls::Mode::Prefer);
        assert!(!s.password_from_dsn());
        assert!(s.password.is_none());
    }

    #[test]
    fn dsn_beats_env_beats_defaults() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "disable"),
            ("PGAPPNAME", "envapp"),
            ("PGOPTIONS", "-c work_mem=1MB"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("PGTARGETSESSIONATTRS", "read-write"),
            ("PGCHANNELBINDING", "disable"),
        ];
        let s = spec_with("", &env, None).unwrap();
        assert_eq!(s.hosts(), vec!["envhost"]);
        assert_eq!(s.port(), 6000);
        assert_eq!(s.user.as_str(), "envuser");
        assert_eq!(s.dbname.as_str(), "envdb");
        assert_eq!(pw(&s).as_deref(), Some("envpw"));
        assert!(!s.password_from_dsn());
        assert_eq!(s.tls.mode, tls::Mode::Disable);
        assert_eq!(s.application_name.as_deref(), Some("envapp"));
        assert_eq!(s.options.as_deref(), Some("-c work_mem=1MB"));
        assert_eq!(s.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(s.session_attrs, SessionAttrs::ReadWrite);
        assert_eq!(s.channel_binding, ChannelBinding::Disable);

        let s = spec_with(
            "host=dsnhost port=7000 user=u dbname=d password=p sslmode=require",
            &env,
            None,
        )
        .unwrap();
        assert_eq!(s.hosts(), vec!["dsnhost"]);
        assert_eq!(s.port(), 7000);
        assert_eq!((s.user.as_str(), s.dbname.as_str()), ("u", "d"));
        assert_eq!(pw(&s).as_deref(), Some("p"));
        assert!(s.password_from_dsn());
        assert_eq!(s.tls.mode, tls::Mode::Require);
        // The database defaults to the user, wherever the user came from.
        let s = spec_with("", &[("PGUSER", "alice")], None).unwrap();
        assert_eq!(s.dbname, "alice");
        // An empty DSN value counts as given: the environment is not used.
        let s = spec_with("host=''", &[("PGHOST", "envhost")], None).unwrap();
        assert_eq!(s.hosts(), vec!["/var/run/postgresql"]);
    }

    #[test]
    fn pgrequiressl_only_without_sslmode() {
        let s = spec_with("", &[("PGREQUIRESSL", "1")], None).unwrap();
        assert_eq!(s.tls.mode, tls::Mode::Require);
        let s = spec_with("", &[("PGREQUIRESSL", "1"), ("PGSSLMODE", "allow")], None).unwrap();
        assert_eq!(s.tls.mode, tls::Mode::Allow);
    }

    #[test]
    fn hosts_hostaddrs_ports() {
        let s = spec("host=a,b,/tmp port=1,2,3");
        assert_eq!(s.hosts(), vec!["a", "b", "/tmp"]);
        assert_eq!(
            s.targets.iter().map(|t| t.port).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let s = spec("host=a,b port=9");
        assert_eq!(
            s.targets.iter().map(|t| t.port).collect::<Vec<_>>(),
            vec![9, 9]
        );
        // Empty entries take the defaults.
        let s = spec("host=a, port=,6000");
        assert_eq!(s.hosts(), vec!["a", "/var/run/postgresql"]);
        assert_eq!(
            s.targets.iter().map(|t| t.port).collect::<Vec<_>>(),
            vec![5432, 6000]
        );
        // hostaddr alone, and with host names for TLS and pgpass.
        let s = spec("hostaddr=127.0.0.1");
        assert_eq!(s.hosts(), vec!["127.0.0.1"]);
        assert!(!s.targets[0].is_socket());
        let s = spec("host=db.example.com hostaddr=10.0.0.1");
        assert_eq!(s.hosts(), vec!["db.example.com"]);
        assert_eq!(s.targets[0].hostaddr, Some("10.0.0.1".parse().unwrap()));
        assert!(
            usage_error("host=a,b hostaddr=10.0.0.1")
                .contains("could not match 2 host names to 1 hostaddr")
        );
        assert!(
            usage_error("host=a,b,c port=1,2")
                .contains("could not match 2 port numbers to 3 hosts")
        );
        assert!(usage_error("hostaddr=nope").contains("could not parse network address"));
        assert!(usage_error("port=0").contains("invalid port number"));
        assert!(usage_error("port=70000").contains("invalid port number"));
        assert!(usage_error("port=x").contains("invalid port number"));
        assert!(usage_error("host=@abstract").contains("abstract"));
    }

    #[test]
    fn numbers_and_enumerations() {
        let s = spec(
            "host=/tmp connect_timeout=1 keepalives=0 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=1500",
        );
        assert_eq!(
            s.connect_timeout,
            Some(Duration::from_secs(2)),
            "libpq's minimum is 2 s"
        );
        assert_eq!(s.keepalives, Some(false));
        assert_eq!(s.keepalives_idle, Some(Duration::from_secs(30)));
        assert_eq!(s.keepalives_interval, Some(Duration::from_secs(5)));
        assert_eq!(s.keepalives_count, Some(3));
        assert_eq!(s.tcp_user_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(spec("connect_timeout=0").connect_timeout, None);
        assert!(usage_error("connect_timeout=soon").contains("connect_timeout"));
        assert!(usage_error("sslmode=maybe").contains("invalid sslmode value: \"maybe\""));
        assert!(usage_error("channel_binding=always").contains("channel_binding"));
        assert!(usage_error("target_session_attrs=whatever").contains("target_session_attrs"));
        assert!(usage_error("load_balance_hosts=yes").contains("load_balance_hosts"));
        assert_eq!(
            spec("target_session_attrs=prefer-standby").session_attrs,
            SessionAttrs::PreferStandby
        );
        assert!(spec("load_balance_hosts=random").load_balance);
    }

    #[test]
    fn tls_settings() {
        let home = Path::new("/home/u");
        let s = spec_with("", &[], Some(home)).unwrap();
        assert_eq!(
            s.tls.root,
            tls::RootCert::File(home.join(".postgresql/root.crt"))
        );
        assert_eq!(s.tls.cert, Some(home.join(".postgresql/postgresql.crt")));
        assert_eq!(s.tls.key, Some(home.join(".postgresql/postgresql.key")));
        assert_eq!(s.tls.crl, Some(home.join(".postgresql/root.crl")));
        assert!(s.tls.sni);
        let s = spec_with(
            "sslrootcert=/etc/ca.pem sslcert=/c sslkey=/k sslsni=0",
            &[("PGSSLCRL", "/crl")],
            Some(home),
        )
        .unwrap();
        assert_eq!(s.tls.root, tls::RootCert::File("/etc/ca.pem".into()));
        assert_eq!(
            (s.tls.cert.as_deref(), s.tls.key.as_deref()),
            (Some(Path::new("/c")), Some(Path::new("/k")))
        );
        assert_eq!(s.tls.crl.as_deref(), Some(Path::new("/crl")));
        assert!(!s.tls.sni);
        // sslrootcert=system makes verify-full the default and refuses weaker modes.
        let s = spec("sslrootcert=system");
        assert_eq!(
            (s.tls.mode, &s.tls.root),
            (tls::Mode::VerifyFull, &tls::RootCert::System)
        );
        assert!(usage_error("sslrootcert=system sslmode=require").contains("weak sslmode"));
        assert!(usage_error("sslnegotiation=direct").contains("weak sslmode \"prefer\""));
        assert!(spec("sslnegotiation=direct sslmode=require").tls.direct);
        assert!(
            usage_error("ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2")
                .contains("range")
        );
        assert!(usage_error("ssl_min_protocol_version=SSLv3").contains("ssl_min_protocol_version"));
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("root.crt");
        let s = spec(&format!(
            "sslmode=verify-ca sslrootcert={}",
            missing.display()
        ));
        let err = s.tls.connector().err().unwrap();
        assert!(
            err.contains("root certificate file") && err.contains("does not exist"),
            "{err}"
        );
        // require without a root certificate: no verification, no error.
        let s = spec(&format!(
            "sslmode=require sslrootcert={}",
            missing.display()
        ));
        assert!(s.tls.connector().is_ok());
        let s = spec_with("sslmode=verify-full", &[], None).unwrap();
        assert!(s.tls.connector().err().unwrap().contains("home directory"));
        // A file that is not PEM.
        std::fs::write(&missing, "not a certificate").unwrap();
        let s = spec(&format!(
            "sslmode=verify-ca sslrootcert={}",
            missing.display()
        ));
        assert!(
            s.tls
                .connector()
                .err()
                .unwrap()
                .contains("could not read root certificate file")
        );
    }

    // --- password file ------------------------------------------------------

    const PGPASS: &str = "\
# comment line: *:*:*:*:nope
db1:5432:app:bob:first
db1:5432:app:bob:second
*:6000:*:*:port6000
localhost:5432:*:alice:local
/tmp/sock:5432:*:alice:literal-socket
we\\:ird:5432:*:*:escaped-host
db2:*:*:*:pa\\:ss\\\\word:trailing
";

    fn lookup(host: &str, port: &str, db: &str, user: &str) -> Option<String> {
        passfile_lookup(
            PGPASS.as_bytes(),
            host,
            port,
            db,
            user,
            "/var/run/postgresql",
        )
        .map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn passfile_matching() {
        assert_eq!(
            lookup("db1", "5432", "app", "bob").as_deref(),
            Some("first"),
            "first match wins"
        );
        assert_eq!(lookup("db1", "5432", "other", "bob"), None);
        assert_eq!(
            lookup("anything", "6000", "x", "y").as_deref(),
            Some("port6000")
        );
        assert_eq!(
            lookup("we:ird", "5432", "x", "y").as_deref(),
            Some("escaped-host")
        );
        assert_eq!(lookup("db2", "1", "x", "y").as_deref(), Some("pa:ss\\word"));
        assert_eq!(
            lookup("#", "5432", "x", "alice"),
            None,
            "comment lines never match"
        );
        // localhost matches an empty host and the default socket directory.
        assert_eq!(
            lookup("localhost", "5432", "x", "alice").as_deref(),
            Some("local")
        );
        assert_eq!(lookup("", "5432", "x", "alice").as_deref(), Some("local"));
        assert_eq!(
            lookup("/var/run/postgresql", "5432", "x", "alice").as_deref(),
            Some("local")
        );
        assert_eq!(
            lookup("/var/run/postgresql/", "5432", "x", "alice").as_deref(),
            Some("local")
        );
        // Another socket directory is matched by its path (as libpq).
        assert_eq!(
            lookup("/tmp/sock", "5432", "x", "alice").as_deref(),
            Some("literal-socket")
        );
        assert_eq!(lookup("/elsewhere", "5432", "x", "alice"), None);
        // No lookup without a database or user.
        assert_eq!(lookup("db1", "5432", "", "bob"), None);
        // CRLF line ends.
        let crlf = b"h:1:d:u:pw\r\n";
        assert_eq!(
            passfile_lookup(crlf, "h", "1", "d", "u", "/tmp"),
            Some(b"pw".to_vec())
        );
        // A short line never matches.
        assert_eq!(
            passfile_lookup(b"h:1:d:u", "h", "1", "d", "u", "/tmp"),
            None
        );
        assert_eq!(
            passfile_lookup(b"h:1:d:u:", "h", "1", "d", "u", "/tmp"),
            Some(Vec::new())
        );
    }

    fn write_passfile(dir: &Path, content: &str, mode: u32) -> PathBuf {
        let file = dir.join("pgpass");
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn passfile_is_used_per_host_and_only_without_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_passfile(dir.path(), "h1:5432:db:u:one\nh2:5433:db:u:two\n", 0o600);
        let f = file.to_str().unwrap();
        let s = spec_with(
            "host=h1,h2 port=5432,5433 dbname=db user=u",
            &[("PGPASSFILE", f)],
            None,
        )
        .unwrap();
        assert_eq!(
            (host_pw(&s, 0).as_deref(), host_pw(&s, 1).as_deref()),
            (Some("one"), Some("two"))
        );
        assert_eq!(s.passfile.as_deref(), Some(file.as_path()));
        assert!(!s.password_from_dsn());
        // passfile= beats PGPASSFILE.
        let s = spec_with(
            &format!("host=h1 dbname=db user=u passfile={f}"),
            &[("PGPASSFILE", "/nonexistent")],
            None,
        )
        .unwrap();
        assert_eq!(host_pw(&s, 0).as_deref(), Some("one"));
        // A password from the DSN or PGPASSWORD wins; the file is not read.
        let s = spec_with(
            "host=h1 dbname=db user=u",
            &[("PGPASSFILE", f), ("PGPASSWORD", "env")],
            None,
        )
        .unwrap();
        assert_eq!((pw(&s).as_deref(), host_pw(&s, 0)), (Some("env"), None));
        // Default location: ~/.pgpass.
        std::fs::rename(&file, dir.path().join(".pgpass")).unwrap();
        let s = spec_with("host=h2 port=5433 dbname=db user=u", &[], Some(dir.path())).unwrap();
        assert_eq!(host_pw(&s, 0).as_deref(), Some("two"));
        // A missing file is fine.
        let s = spec_with(
            "host=h1 dbname=db user=u",
            &[("PGPASSFILE", "/nonexistent/pgpass")],
            None,
        )
        .unwrap();
        assert_eq!(host_pw(&s, 0), None);
    }

    #[test]
    fn passfile_ignored_when_group_or_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, used) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o660, false),
        ] {
            let file = write_passfile(dir.path(), "*:*:*:*:pw\n", mode);
            let s = spec_with("host=h", &[("PGPASSFILE", file.to_str().unwrap())], None).unwrap();
            assert_eq!(host_pw(&s, 0).is_some(), used, "mode {mode:o}");
        }
        // A directory is not a password file.
        let s = spec_with(
            "host=h",
            &[("PGPASSFILE", dir.path().to_str().unwrap())],
            None,
        )
        .unwrap();
        assert_eq!(host_pw(&s, 0), None);
    }

    #[test]
    fn passfile_socket_host_matches_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_passfile(dir.path(), "localhost:5432:*:*:sockpw\n", 0o600);
        let env = [("PGPASSFILE", file.to_str().unwrap())];
        // No host: the default socket directory, which matches localhost.
        let s = spec_with("", &env, None).unwrap();
        assert_eq!(host_pw(&s, 0).as_deref(), Some("sockpw"));
        let s = spec_with("host=/var/run/postgresql", &env, None).unwrap();
        assert_eq!(host_pw(&s, 0).as_deref(), Some("sockpw"));
        let s = spec_with("host=localhost", &env, None).unwrap();
        assert_eq!(host_pw(&s, 0).as_deref(), Some("sockpw"));
        // hostaddr without host is looked up by address.
        let file = write_passfile(dir.path(), "127.0.0.1:5432:*:*:bytaddr\n", 0o600);
        let s = spec_with(
            "hostaddr=127.0.0.1",
            &[("PGPASSFILE", file.to_str().unwrap())],
            None,
        )
        .unwrap();
        assert_eq!(host_pw(&s, 0).as_deref(), Some("bytaddr"));
    }

    // --- service file -------------------------------------------------------

    #[test]
    fn service_file_between_dsn_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(&file, "# c\n[other]\nhost=nope\n\n[main]\nhost=svchost\nport=7777\ndbname=svcdb\n[after]\nuser=nope\n").unwrap();
        let env = [
            ("PGSERVICEFILE", file.to_str().unwrap()),
            ("PGPORT", "1"),
            ("PGUSER", "envuser"),
        ];
        let s = spec_with("service=main dbname=dsndb", &env, None).unwrap();
        assert_eq!(s.hosts(), vec!["svchost"]);
        assert_eq!(s.port(), 7777, "service beats the environment");
        assert_eq!(s.dbname.as_str(), "dsndb", "the DSN beats the service");
        assert_eq!(s.user.as_str(), "envuser");
        let env = [
            ("PGSERVICEFILE", file.to_str().unwrap()),
            ("PGSERVICE", "main"),
            ("PGSYSCONFDIR", "/nonexistent"),
        ];
        assert_eq!(spec_with("", &env, None).unwrap().port(), 7777);
        let err = spec_with("service=absent", &env, None).unwrap_err();
        assert!(format!("{err:#}").contains("definition of service \"absent\" not found"));
        std::fs::write(&file, "[main]\nbogus=1\n").unwrap();
        assert!(
            format!("{:#}", spec_with("service=main", &env, None).unwrap_err())
                .contains("syntax error")
        );
    }

    // --- output -------------------------------------------------------------

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

    #[test]
    fn quote_value_rules() {
        assert_eq!(quote_value("plain_1.2"), "plain_1.2");
        assert_eq!(quote_value(""), "''");
        assert_eq!(quote_value("a b"), "'a b'");
        assert_eq!(quote_value(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(quote_value("/tmp"), "'/tmp'");
    }

    // --- connecting (no server needed) ----------------------------------------

    fn connect_err(s: &ConnSpec) -> anyhow::Error {
        match s.connect("test") {
            Ok(_) => panic!("connected to {}", s.describe()),
            Err(e) => e,
        }
    }

    #[test]
    fn refused_connection_is_one_line_with_host_and_port() {
        // Port 1 on loopback: nothing listens there.
        let s = spec("host=127.0.0.1 port=1 user=u password=hunter2 sslmode=disable");
        let err = connect_err(&s);
        assert_eq!(crate::error::exit_of(&err), Exit::Connect);
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(
                "connection to server at \"127.0.0.1\", port 1 failed: Connection refused"
            ),
            "{msg}"
        );
        assert!(!msg.contains('\n') && !msg.contains("hunter2"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        let s = spec(&format!(
            "host={} port=5999 sslmode=require",
            dir.path().display()
        ));
        let msg = format!("{:#}", connect_err(&s));
        assert!(
            msg.starts_with(&format!(
                "connection to server on socket \"{}/.s.PGSQL.5999\" failed: No such file",
                dir.path().display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn unknown_host_is_reported() {
        let s = spec("host=no-such-host.invalid port=5432");
        let msg = format!("{:#}", connect_err(&s));
        assert!(
            msg.starts_with("could not translate host name \"no-such-host.invalid\" to address"),
            "{msg}"
        );
    }

    #[test]
    fn every_host_is_tried_and_reported() {
        let s = spec("host=127.0.0.1,127.0.0.1 port=1,2 sslmode=disable");
        let msg = format!("{:#}", connect_err(&s));
        assert!(
            msg.contains("port 1 failed") && msg.contains("port 2 failed"),
            "{msg}"
        );
    }

    /// Against a real server: run with
    /// `PGBB_TEST_DSN='host=/tmp/xsock port=5499 user=postgres' cargo test conn::tests::live -- --ignored`.
    #[test]
    #[ignore]
    fn live() {
        let dsn = std::env::var("PGBB_TEST_DSN").expect("set PGBB_TEST_DSN");
        let s = ConnSpec::from_dsn(&dsn).unwrap();
        let mut client = s.connect("conn-test").unwrap();
        let row = client
            .query_one("SELECT current_setting('application_name')", &[])
            .unwrap();
        let app: String = row.get(0);
        assert!(app == "conn-test" || s.application_name.as_deref() == Some(app.as_str()));
    }
}
