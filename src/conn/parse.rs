//! Conninfo text, both ways: `key=value ...` and `postgresql://` URIs read
//! into (keyword, value) pairs as libpq reads them, and a value quoted back
//! as libpq writes it. Errors never echo what follows a password.

use anyhow::Result;
use percent_encoding::percent_decode_str;

use super::keywords::{is_secret, keyword};
use super::usage;

/// (keyword, value) pairs in the order given; later ones win.
pub(super) type Pairs = Vec<(String, String)>;

/// Split a DSN into (keyword, value) pairs in order, later ones winning.
/// Keywords are checked against libpq's list; `requiressl` and the URI
/// parameter `ssl=true` are translated to sslmode as libpq does.
pub(super) fn parse_dsn(dsn: &str) -> Result<Pairs> {
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
fn parse_keyvalue(s: &str) -> Result<Pairs> {
    let mut text = Scanner {
        chars: s.chars().collect(),
        at: 0,
    };
    let mut out: Pairs = Vec::new();
    loop {
        text.skip_spaces();
        if text.peek().is_none() {
            return Ok(out);
        }
        let name = text.name();
        text.skip_spaces();
        if !text.eat('=') {
            return Err(missing_equals(&out, &name));
        }
        text.skip_spaces();
        let value = if text.eat('\'') {
            text.quoted()?
        } else {
            text.bare()
        };
        if keyword(&name).is_none()
            && name != "requiressl"
            && let Some(secret) = secret_before(&out)
        {
            return Err(usage(format!(
                "invalid connection option after \"{secret}\" (quote values that contain spaces)"
            )));
        }
        store(&mut out, &name, value, |n| {
            format!("invalid connection option \"{n}\"")
        })?;
    }
}

/// The keyword just read when its value is a secret: text after it may be
/// part of that value (an unquoted space), so an error must not echo it.
fn secret_before(out: &Pairs) -> Option<&str> {
    out.last().map(|(k, _)| k.as_str()).filter(|k| is_secret(k))
}

fn missing_equals(out: &Pairs, name: &str) -> anyhow::Error {
    match secret_before(out) {
        Some(secret) => usage(format!(
            "invalid connection string: missing \"=\" after the value of \"{secret}\" (quote values that contain spaces)"
        )),
        None => usage(format!(
            "invalid connection string: missing \"=\" after \"{name}\""
        )),
    }
}

/// A cursor over `key=value` conninfo text.
struct Scanner {
    chars: Vec<char>,
    at: usize,
}

impl Scanner {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn take_char(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.at += 1;
        }
        found
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// A keyword: up to '=' or whitespace.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|c| *c != '=' && !c.is_whitespace()) {
            name.push(c);
            self.at += 1;
        }
        name
    }

    /// After the opening quote: up to the closing one, a backslash taking
    /// the next character as it is.
    fn quoted(&mut self) -> Result<String> {
        let mut value = String::new();
        loop {
            match self.take_char() {
                None => {
                    return Err(usage(
                        "invalid connection string: unterminated quoted string".into(),
                    ));
                }
                Some('\'') => return Ok(value),
                Some('\\') => value.extend(self.take_char()),
                Some(c) => value.push(c),
            }
        }
    }

    /// An unquoted value: up to whitespace, a backslash taking the next
    /// character (a space too) as it is.
    fn bare(&mut self) -> String {
        let mut value = String::new();
        while let Some(c) = self.peek().filter(|c| !c.is_whitespace()) {
            self.at += 1;
            if c == '\\' {
                value.extend(self.take_char());
            } else {
                value.push(c);
            }
        }
        value
    }
}

/// Check a keyword and record it; `requiressl` becomes sslmode (libpq).
fn store(
    out: &mut Pairs,
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
fn parse_uri(uri: &str) -> Result<Pairs> {
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .unwrap_or(uri);
    let mut out: Pairs = Vec::new();
    let rest = uri_userinfo(rest, &mut out)?;
    let mut rest = uri_hosts(rest, &mut out)?;
    if let Some(path) = rest.strip_prefix('/') {
        rest = uri_dbname(path, &mut out)?;
    }
    if let Some(query) = rest.strip_prefix('?') {
        uri_query(query, &mut out)?;
    }
    Ok(out)
}

/// `user[:password]@`, found by looking ahead for '@' before any '/'; gives
/// back the rest of the URI.
fn uri_userinfo<'a>(rest: &'a str, out: &mut Pairs) -> Result<&'a str> {
    let Some(at) = rest
        .find(['@', '/'])
        .filter(|&at| rest.as_bytes()[at] == b'@')
    else {
        return Ok(rest);
    };
    let userinfo = &rest[..at];
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    if !user.is_empty() {
        out.push(("user".into(), percent_decode(user, "user name")?));
    }
    if let Some(pw) = password.filter(|p| !p.is_empty()) {
        out.push(("password".into(), percent_decode(pw, "password")?));
    }
    Ok(&rest[at + 1..])
}

/// `host[:port]` pairs separated by commas, IPv6 addresses in brackets;
/// gives back the rest of the URI, from the '/' or '?' that ends the list.
fn uri_hosts<'a>(mut p: &'a str, out: &mut Pairs) -> Result<&'a str> {
    let mut hosts: Vec<&str> = Vec::new();
    let mut ports: Vec<&str> = Vec::new();
    loop {
        let (host, rest) = uri_host(p)?;
        hosts.push(host);
        p = rest;
        if let Some(after) = p.strip_prefix(':') {
            let end = after.find(['/', '?', ',']).unwrap_or(after.len());
            ports.push(&after[..end]);
            p = &after[end..];
        } else {
            ports.push("");
        }
        match p.strip_prefix(',') {
            Some(next) => p = next,
            None => break,
        }
    }
    let host = hosts.join(",");
    if !host.is_empty() {
        out.push(("host".into(), percent_decode(&host, "host")?));
    }
    let port = ports.join(",");
    if !port.is_empty() {
        out.push(("port".into(), percent_decode(&port, "port")?));
    }
    Ok(p)
}

/// One host of the list and what follows it.
fn uri_host(p: &str) -> Result<(&str, &str)> {
    let Some(inner) = p.strip_prefix('[') else {
        let end = p.find([':', '/', '?', ',']).unwrap_or(p.len());
        return Ok((&p[..end], &p[end..]));
    };
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
    let rest = &inner[close + 1..];
    if let Some(c) = rest.chars().next()
        && !matches!(c, ':' | '/' | '?' | ',')
    {
        return Err(usage(format!(
            "invalid URI: unexpected character \"{c}\" after an IPv6 host address (expected \":\" or \"/\")"
        )));
    }
    Ok((&inner[..close], rest))
}

/// The database name after the '/'; gives back the rest of the URI.
fn uri_dbname<'a>(p: &'a str, out: &mut Pairs) -> Result<&'a str> {
    let end = p.find('?').unwrap_or(p.len());
    let dbname = &p[..end];
    if !dbname.is_empty() {
        out.push(("dbname".into(), percent_decode(dbname, "database name")?));
    }
    Ok(&p[end..])
}

/// `key=value&...` after the '?'; a trailing '&' ends the list.
fn uri_query(params: &str, out: &mut Pairs) -> Result<()> {
    for pair in params.split_terminator('&') {
        let Some((raw_key, raw_value)) = pair.split_once('=') else {
            return Err(usage(format!(
                "invalid URI: missing key/value separator \"=\" in query parameter \"{}\"",
                percent_decode(pair, "query parameter").unwrap_or_default()
            )));
        };
        let key = percent_decode(raw_key, "query parameter")?;
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
        store(out, &key, value, |n| {
            format!("invalid URI query parameter: \"{n}\"")
        })?;
    }
    Ok(())
}

/// %XX decoding as libpq does it: a '%' without two hex digits and %00 are
/// refused (the crate would pass them through), and the result must be
/// UTF-8. The error names the part of the URI, never its text (it may be a
/// password).
fn percent_decode(s: &str, what: &str) -> Result<String> {
    for (at, _) in s.match_indices('%') {
        match s.as_bytes().get(at + 1..at + 3) {
            Some(b"00") => {
                return Err(usage(format!(
                    "invalid URI: forbidden value %00 in the {what}"
                )));
            }
            Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => {}
            _ => {
                return Err(usage(format!(
                    "invalid URI: invalid percent-encoded token in the {what}"
                )));
            }
        }
    }
    percent_decode_str(s)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| {
            usage(format!(
                "invalid URI: the {what} is not valid UTF-8 once decoded"
            ))
        })
}

/// libpq's appendConnStrVal: bare if only [A-Za-z0-9_.], else single-quoted
/// with `'` and `\` escaped by a backslash.
pub(super) fn quote_value(v: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::test_support::{spec, usage_error};

    fn kv(pairs: &[(&str, &str)]) -> Pairs {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

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

    #[test]
    fn quote_value_rules() {
        assert_eq!(quote_value("plain_1.2"), "plain_1.2");
        assert_eq!(quote_value(""), "''");
        assert_eq!(quote_value("a b"), "'a b'");
        assert_eq!(quote_value(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(quote_value("/tmp"), "'/tmp'");
    }
}
