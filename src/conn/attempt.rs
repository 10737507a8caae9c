//! One connection attempt: one address of one host, with the sslmode's
//! fallbacks, bounded by connect_timeout and by signals, then the
//! target_session_attrs check; its failure as one line that names the
//! server, as libpq words it.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postgres::config::{SslMode as PgSslMode, SslNegotiation};
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::{Client, Socket};

use super::tls::{self, Lazy, SslMode};
use super::{ConnSpec, SessionAttrs, Target};
use crate::interrupt::Endpoint;
use crate::session::sql::{IS_IN_RECOVERY, SHOW_TRANSACTION_READ_ONLY};

/// Where one attempt connects.
#[derive(Clone, Debug)]
pub(super) enum Addr {
    Unix(PathBuf),
    Tcp(IpAddr),
}

impl ConnSpec {
    /// The addresses to try for one host: its socket, its hostaddr, or what
    /// its name resolves to (every address, in resolver order, as libpq).
    pub(super) fn addresses(&self, t: &Target) -> std::result::Result<Vec<Addr>, String> {
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
    /// One address, with the sslmode's fallbacks (allow: plain then TLS;
    /// prefer: TLS then plain), then the target_session_attrs check.
    pub(super) fn attempt(
        &self,
        t: &Target,
        addr: &Addr,
        app: &str,
        want: SessionAttrs,
        tls: &Lazy,
    ) -> Result<Client, Vec<String>> {
        let server = server_label(t, addr);
        log::debug!(
            "connecting to {server} as user \"{}\", database \"{}\"",
            self.user,
            self.dbname
        );
        let attempt = Attempt {
            spec: self,
            target: t,
            prefix: format!("connection to {server} failed: "),
            hint: unreachable_hint(addr),
        };
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
        let tcp = point_at(&mut cfg, t, addr);
        if tcp && self.tls.mode == SslMode::VerifyFull && t.host.is_empty() {
            return Err(
                attempt.fail("host name must be specified for a verified SSL connection".into())
            );
        }
        // TLS is never used over unix sockets (libpq ignores sslmode there).
        let mode = if tcp { self.tls.mode } else { SslMode::Disable };
        let mut client = attempt.open(&mut cfg, mode, tls)?;
        crate::interrupt::register(client.cancel_token(), Arc::downgrade(&alive));
        check_session(&mut client, want).map_err(|m| attempt.fail(m))?;
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

/// The server as libpq names it in errors.
fn server_label(t: &Target, addr: &Addr) -> String {
    match addr {
        Addr::Unix(dir) => {
            format!("server on socket \"{}/.s.PGSQL.{}\"", dir.display(), t.port)
        }
        Addr::Tcp(ip) if t.label() == ip.to_string() => {
            format!("server at \"{}\", port {}", ip, t.port)
        }
        Addr::Tcp(ip) => format!("server at \"{}\" ({}), port {}", t.label(), ip, t.port),
    }
}

/// What to check when nothing answers at the address.
fn unreachable_hint(addr: &Addr) -> &'static str {
    match addr {
        Addr::Unix(_) => "is the server running locally and accepting connections on that socket?",
        Addr::Tcp(_) => "is the server running on that host and accepting TCP/IP connections?",
    }
}

/// Aim the configuration at the address; whether it is TCP.
fn point_at(cfg: &mut postgres::Config, t: &Target, addr: &Addr) -> bool {
    match addr {
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
    }
}

/// One address being tried, and how its failures are worded.
struct Attempt<'a> {
    spec: &'a ConnSpec,
    target: &'a Target,
    /// `connection to server ... failed: `
    prefix: String,
    hint: &'static str,
}

impl Attempt<'_> {
    fn fail(&self, reason: String) -> Vec<String> {
        vec![format!("{}{reason}", self.prefix)]
    }

    fn failed(&self, e: &AttemptError) -> Vec<String> {
        self.fail(match e {
            AttemptError::Pg(e) => {
                describe_pg_error(e, self.hint, self.spec.passfile_hint(self.target))
            }
            AttemptError::TimedOut => "timeout expired".into(),
            AttemptError::Interrupted => "interrupted by a signal".into(),
            AttemptError::Spawn(e) => format!("could not start a connection thread: {e}"),
        })
    }

    fn plain(&self, cfg: &mut postgres::Config) -> Result<Client, AttemptError> {
        cfg.ssl_mode(PgSslMode::Disable);
        connect_within(cfg, postgres::NoTls, self.spec.connect_timeout)
    }

    /// Open the session as the sslmode says: with or without TLS, trying
    /// the other way where libpq does; the errors of every try.
    fn open(
        &self,
        cfg: &mut postgres::Config,
        mode: SslMode,
        tls: &Lazy,
    ) -> Result<Client, Vec<String>> {
        let timeout = self.spec.connect_timeout;
        match mode {
            SslMode::Disable => self.plain(cfg).map_err(|e| self.failed(&e)),
            SslMode::Allow => match self.plain(cfg) {
                Ok(c) => Ok(c),
                // The server refused a plain session: try again with TLS.
                Err(e) if e.refused_by_server() => {
                    let first = self.failed(&e);
                    let connector = tls
                        .get()
                        .map_err(|m| [first.clone(), self.fail(m)].concat())?;
                    cfg.ssl_mode(PgSslMode::Require);
                    connect_within(cfg, connector, timeout)
                        .map_err(|e2| [first, self.failed(&e2)].concat())
                }
                Err(e) => Err(self.failed(&e)),
            },
            SslMode::Prefer => match tls.get() {
                Err(m) => {
                    log::debug!("{}{m}; trying without SSL", self.prefix);
                    self.plain(cfg).map_err(|e| self.failed(&e))
                }
                Ok(connector) => {
                    let used = connector.flag();
                    cfg.ssl_mode(PgSslMode::Prefer);
                    match connect_within(cfg, connector, timeout) {
                        Ok(c) => Ok(c),
                        // TLS was negotiated and then failed (handshake or the
                        // server's rejection): libpq retries without TLS.
                        Err(e @ AttemptError::Pg(_)) if used.get() => {
                            let first = self.failed(&e);
                            self.plain(cfg)
                                .map_err(|e2| [first, self.failed(&e2)].concat())
                        }
                        Err(e) => Err(self.failed(&e)),
                    }
                }
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                let connector = tls.get().map_err(|m| self.fail(m))?;
                cfg.ssl_mode(PgSslMode::Require);
                connect_within(cfg, connector, timeout).map_err(|e| self.failed(&e))
            }
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
) -> Result<Client, AttemptError>
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

/// libpq's target_session_attrs check on an open session.
fn check_session(client: &mut Client, want: SessionAttrs) -> Result<(), String> {
    let ask = |client: &mut Client, sql: &str| -> Result<String, String> {
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
        SessionAttrs::ReadWrite => match ask(client, SHOW_TRANSACTION_READ_ONLY)?.as_str() {
            "on" => Err("session is read-only".into()),
            _ => Ok(()),
        },
        SessionAttrs::ReadOnly => match ask(client, SHOW_TRANSACTION_READ_ONLY)?.as_str() {
            "off" => Err("session is not read-only".into()),
            _ => Ok(()),
        },
        SessionAttrs::Primary => match ask(client, IS_IN_RECOVERY)?.as_str() {
            "t" => Err("server is in hot standby mode".into()),
            _ => Ok(()),
        },
        SessionAttrs::Standby => match ask(client, IS_IN_RECOVERY)?.as_str() {
            "f" => Err("server is not in hot standby mode".into()),
            _ => Ok(()),
        },
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
pub(super) fn shuffle<T>(items: &mut [T]) {
    let state = std::collections::hash_map::RandomState::new();
    for i in (1..items.len()).rev() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        let j = (h.finish() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::test_support::spec;
    use crate::error::Exit;

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
    /// `PGBB_TEST_DSN='host=/tmp/xsock port=5499 user=postgres' cargo test conn::attempt::tests::live -- --ignored`.
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
