//! TLS with libpq's sslmode semantics: the settings checked and completed
//! here, the OpenSSL connector in `connector`, verify-full's host-name rule
//! in `host_name`.
//!
//! - disable: never; allow: plain first, TLS if the server refuses;
//!   prefer (default): TLS if the server offers it, plain if TLS then fails;
//!   require: TLS, no verification... unless a root certificate file exists,
//!   then as verify-ca; verify-ca: the chain must lead to sslrootcert
//!   (default ~/.postgresql/root.crt; `system` = the system's trusted roots,
//!   which forces verify-full); verify-full: also the host name.
//! - Not over unix sockets, whatever sslmode says (as libpq).
//! - sslcert/sslkey (default ~/.postgresql/postgresql.crt/.key) are sent only
//!   when the certificate file exists; the key must not be group/world
//!   readable; sslpassword decrypts it.
//! - sslcrl/sslcrldir (default ~/.postgresql/root.crl) are checked when a
//!   root certificate is used.
//!
//! postgres' own SslMode has only disable/prefer/require: every verify-*
//! mode is Require plus a connector that verifies.

mod connector;
mod host_name;

use std::path::{Path, PathBuf};

use anyhow::Result;
use openssl::error::ErrorStack;
use openssl::ssl::SslVersion;

use super::{Given, Secret, invalid_value, usage};

pub(super) use connector::{Built, Lazy};

/// libpq's sslmode: whether TLS is used, and what of the server's
/// certificate is verified.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Each sslmode as libpq spells it.
const SSL_MODES: &[(&str, SslMode)] = &[
    ("disable", SslMode::Disable),
    ("allow", SslMode::Allow),
    ("prefer", SslMode::Prefer),
    ("require", SslMode::Require),
    ("verify-ca", SslMode::VerifyCa),
    ("verify-full", SslMode::VerifyFull),
];

impl SslMode {
    pub(super) fn as_str(self) -> &'static str {
        SSL_MODES
            .iter()
            .find(|(_, mode)| *mode == self)
            .map_or("", |(name, _)| name)
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
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
    pub(super) mode: SslMode,
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

/// A protocol version setting, with its rank for the range check.
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
            None if rootcert == Some("system") => SslMode::VerifyFull,
            _ => given.choice("sslmode", SslMode::Prefer, SSL_MODES)?,
        };
        let direct = given.choice(
            "sslnegotiation",
            false,
            &[("postgres", false), ("direct", true)],
        )?;
        if direct
            && !matches!(
                mode,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
            )
        {
            return Err(usage(format!(
                "weak sslmode \"{}\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")",
                mode.as_str()
            )));
        }
        if rootcert == Some("system") && mode != SslMode::VerifyFull {
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
            Some("require") => {
                return Err(usage(
                    "sslcertmode=require is not supported by this tool".into(),
                ));
            }
            _ => given.choice("sslcertmode", true, &[("allow", true), ("disable", false)])?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::test_support::{spec, spec_with, usage_error};

    #[test]
    fn tls_settings() {
        let home = Path::new("/home/u");
        let s = spec_with("", &[], Some(home)).unwrap();
        assert_eq!(
            s.tls.root,
            RootCert::File(home.join(".postgresql/root.crt"))
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
        assert_eq!(s.tls.root, RootCert::File("/etc/ca.pem".into()));
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
            (SslMode::VerifyFull, &RootCert::System)
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
}
