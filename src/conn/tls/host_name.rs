//! verify-full's host-name check, by libpq's rule rather than OpenSSL's:
//! libpq accepts an address in the Common Name, which OpenSSL's own check
//! never does.

use std::net::IpAddr;

use openssl::nid::Nid;
use openssl::x509::{X509Ref, X509StoreContextRef, X509VerifyResult};

/// OpenSSL's verify callback for verify-full: once the chain is verified,
/// the server's own certificate must name `host`.
pub(super) fn verify_host_name(
    host: String,
) -> impl Fn(bool, &mut X509StoreContextRef) -> bool + Send + Sync + 'static {
    move |chain_ok, ctx| {
        // Depth 0 is the server's own certificate, checked last, once its
        // chain has been verified.
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
fn certificate_names_host(cert: &X509Ref, host: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509, X509Builder, X509NameBuilder};

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
