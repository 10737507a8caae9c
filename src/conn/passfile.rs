//! The password file (`passfile` / `PGPASSFILE` / `~/.pgpass`): read only
//! when it is private, and searched line by line as libpq's
//! passwordFromFile does.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The password file's content, or None when it is missing (silently), not
/// a plain file, or readable by group or others (with a warning, as libpq).
pub(super) fn read_passfile(file: &Path) -> Option<Vec<u8>> {
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
pub(super) fn passfile_lookup(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::test_support::{host_pw, pw, spec_with};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

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
}
