//! The OpenSSL connector, configured as libpq configures its SSL context:
//! trusted roots and revocation lists, protocol versions, the client
//! certificate, SNI and the verify-full host check.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use openssl::x509::store::{X509Lookup, X509Store, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use postgres::Socket;
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres_openssl::MakeTlsConnector;

use super::host_name::verify_host_name;
use super::{RootCert, SslMode, TlsSettings, reasons};

/// Turns OpenSSL's error into one line that says what was being done.
fn failed(what: &str) -> impl FnOnce(ErrorStack) -> String + '_ {
    move |e| format!("{what}: {}", reasons(&e))
}

impl TlsSettings {
    /// An OpenSSL connector configured as libpq would configure its
    /// SSL context; the error is one line.
    pub(in crate::conn) fn connector(&self) -> Result<Connector, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(failed("could not create SSL context"))?;
        let verify = self.trust(&mut b)?;
        b.set_verify(if verify {
            SslVerifyMode::PEER
        } else {
            SslVerifyMode::NONE
        });
        b.set_min_proto_version(self.min_version)
            .map_err(failed("could not set minimum SSL protocol version"))?;
        b.set_max_proto_version(self.max_version)
            .map_err(failed("could not set maximum SSL protocol version"))?;
        if self.send_cert {
            self.client_certificate(&mut b)?;
        }
        if self.direct {
            postgres_openssl::set_postgresql_alpn(&mut b)
                .map_err(failed("could not set SSL ALPN extension"))?;
        }
        let mut inner = MakeTlsConnector::new(b.build());
        let (check_host, sni) = (self.mode == SslMode::VerifyFull, self.sni);
        inner.set_callback(move |config, host| {
            // OpenSSL's own host check never accepts an address in the
            // CN; libpq's rule (host_name) does.
            config.set_verify_hostname(false);
            config.set_use_server_name_indication(sni);
            if check_host {
                config.set_verify_callback(SslVerifyMode::PEER, verify_host_name(host.into()));
            }
            Ok(())
        });
        Ok(Connector {
            inner,
            used: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Set the roots the server's certificate must lead to; whether it is
    /// verified at all.
    fn trust(&self, b: &mut SslConnectorBuilder) -> Result<bool, String> {
        match &self.root {
            // The builder starts with OpenSSL's default trust store.
            RootCert::System => Ok(true),
            RootCert::File(path) if path.exists() => {
                b.set_cert_store(self.root_store(path)?);
                Ok(true)
            }
            RootCert::File(path) if self.mode.verifies() => Err(format!(
                "root certificate file \"{}\" does not exist; either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification",
                path.display()
            )),
            RootCert::Unknown if self.mode.verifies() => Err("could not get home directory to locate root certificate file; either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification".into()),
            // require, prefer, allow without a root certificate: no checks.
            _ => Ok(false),
        }
    }

    /// The certificates of the root certificate file, with the revocation
    /// lists when there are any.
    fn root_store(&self, path: &Path) -> Result<X509Store, String> {
        let shown = path.display().to_string();
        let pem = std::fs::read(path)
            .map_err(|e| format!("could not read root certificate file \"{shown}\": {e}"))?;
        let certs = X509::stack_from_pem(&pem).map_err(failed(&format!(
            "could not read root certificate file \"{shown}\""
        )))?;
        if certs.is_empty() {
            return Err(format!(
                "could not read root certificate file \"{shown}\": no certificates found"
            ));
        }
        let mut store =
            X509StoreBuilder::new().map_err(failed("could not create certificate store"))?;
        for cert in certs {
            store.add_cert(cert).map_err(failed(&format!(
                "could not load root certificate file \"{shown}\""
            )))?;
        }
        if self.revocation_lists(&mut store)? {
            store
                .set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)
                .map_err(failed("could not enable CRL checks"))?;
        }
        Ok(store.build())
    }

    /// Add sslcrl and sslcrldir when they exist; whether either was added.
    fn revocation_lists(&self, store: &mut X509StoreBuilder) -> Result<bool, String> {
        let mut loaded = false;
        if let Some(crl) = self.crl.as_ref().filter(|p| p.exists()) {
            let shown = crl.display().to_string();
            let lookup = store
                .add_lookup(X509Lookup::file())
                .map_err(failed("could not load SSL CRL"))?;
            let name = crl.to_str().ok_or_else(|| {
                format!("SSL certificate revocation list \"{shown}\" has a name that is not UTF-8")
            })?;
            lookup
                .load_crl_file(name, SslFiletype::PEM)
                .map_err(failed(&format!(
                    "could not load SSL certificate revocation list \"{shown}\""
                )))?;
            loaded = true;
        }
        if let Some(dir) = self.crldir.as_ref().filter(|p| p.is_dir()) {
            let shown = dir.display().to_string();
            let name = dir.to_str().ok_or_else(|| {
                format!("SSL certificate revocation list directory \"{shown}\" has a name that is not UTF-8")
            })?;
            store
                .add_lookup(X509Lookup::hash_dir())
                .and_then(|l| l.add_dir(name, SslFiletype::PEM))
                .map_err(failed(&format!(
                    "could not load SSL certificate revocation list directory \"{shown}\""
                )))?;
            loaded = true;
        }
        Ok(loaded)
    }

    /// Load the client certificate and key when the certificate exists.
    fn client_certificate(&self, b: &mut SslConnectorBuilder) -> Result<(), String> {
        let Some(cert) = self.cert.as_ref().filter(|p| p.exists()) else {
            return Ok(());
        };
        let shown = cert.display().to_string();
        b.set_certificate_chain_file(cert).map_err(failed(&format!(
            "could not read certificate file \"{shown}\""
        )))?;
        let Some(key) = self.key.as_ref() else {
            return Err("certificate present, but not private key file".into());
        };
        let kshown = key.display().to_string();
        let pem = private_key_file(key, &kshown)?;
        let pass = self.key_password.as_ref().map_or(&[][..], |p| &p.0[..]);
        let unusable = format!("could not load private key file \"{kshown}\"");
        let pkey = PKey::private_key_from_pem_passphrase(&pem, pass).map_err(failed(&unusable))?;
        b.set_private_key(&pkey).map_err(failed(&unusable))?;
        b.check_private_key().map_err(failed(&format!(
            "certificate does not match private key file \"{kshown}\""
        )))?;
        Ok(())
    }
}

/// The private key file's content, once it is known to be a plain file
/// that others cannot read (libpq's rule).
fn private_key_file(key: &Path, kshown: &str) -> Result<Vec<u8>, String> {
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
    std::fs::read(key).map_err(|e| format!("could not load private key file \"{kshown}\": {e}"))
}

/// The connector of the run's [`TlsSettings`], built when a session first
/// needs it and then shared by the sessions opened within [`REUSE_FOR`]:
/// building it costs about 30 ms of CPU (openssl reads and parses the
/// system's root certificates, even for sslmode=prefer, which checks none),
/// and a backup opens up to five sessions at once (clones of the ConnSpec
/// share it). Not for longer, so a WAL follower that reconnects after days
/// reads the client certificate, key and revocation lists as they are then.
pub(in crate::conn) type Built = Arc<Mutex<Option<(Instant, Result<Connector, String>)>>>;

const REUSE_FOR: Duration = Duration::from_secs(60);

/// The run's connector, built on first use.
pub(in crate::conn) struct Lazy<'a> {
    settings: &'a TlsSettings,
    built: &'a Built,
}

impl<'a> Lazy<'a> {
    pub(in crate::conn) fn new(settings: &'a TlsSettings, built: &'a Built) -> Lazy<'a> {
        Lazy { settings, built }
    }

    /// A fresh copy, with its own "TLS was used" flag.
    pub(in crate::conn) fn get(&self) -> Result<Connector, String> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if built
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > REUSE_FOR)
        {
            *built = Some((Instant::now(), self.settings.connector()));
        }
        let (_, connector) = built.as_ref().expect("built above");
        connector
            .as_ref()
            .map(Connector::fresh)
            .map_err(Clone::clone)
    }
}

/// postgres-openssl's connector, noting whether a TLS handshake was
/// started: libpq's sslmode=prefer retries without TLS only then.
#[derive(Clone)]
pub(in crate::conn) struct Connector {
    inner: MakeTlsConnector,
    used: Arc<AtomicBool>,
}

/// Whether the attempt got as far as a TLS handshake.
pub(in crate::conn) struct Used(Arc<AtomicBool>);

impl Used {
    pub(in crate::conn) fn get(&self) -> bool {
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

    pub(in crate::conn) fn flag(&self) -> Used {
        Used(self.used.clone())
    }
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = <MakeTlsConnector as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = Flagged;
    type Error = <MakeTlsConnector as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Flagged, Self::Error> {
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

pub(in crate::conn) struct Flagged {
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
    use crate::conn::test_support::{spec, spec_with};

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
}
