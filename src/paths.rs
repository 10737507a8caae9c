//! Checks on paths that come from outside: the server's listing and --stdin.
//!
//! The server is not trusted to name only files under its data directory. A
//! path is accepted only if it is relative, has no `..`, no NUL and no empty
//! component once `.` is dropped; only then is it joined to DEST.

/// Validate a data-directory relative path and return it in canonical form
/// (`a/b/c`: no `.` components, no repeated or trailing slashes). Paths are
/// bytes, as the server spells them: a file name need not be valid UTF-8.
pub fn normalize_relative(path: &[u8]) -> Result<Vec<u8>, String> {
    let shown = || String::from_utf8_lossy(path);
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.contains(&0) {
        return Err(format!("path {:?} contains a NUL byte", shown()));
    }
    if path.starts_with(b"/") {
        return Err(format!(
            "path {:?} is absolute; only paths relative to the data directory are allowed",
            shown()
        ));
    }
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err(format!("path {:?} contains \"..\"", shown())),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "path {:?} names the data directory itself",
            shown()
        ));
    }
    Ok(parts.join(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_canonicalizes_relative_paths() {
        assert_eq!(normalize_relative(b"base/1/1259").unwrap(), b"base/1/1259");
        assert_eq!(
            normalize_relative(b"./base//1/./1259/").unwrap(),
            b"base/1/1259"
        );
        assert_eq!(normalize_relative(b"PG_VERSION").unwrap(), b"PG_VERSION");
        assert_eq!(normalize_relative(b"dir/..file").unwrap(), b"dir/..file");
    }

    proptest::proptest! {
        /// Whatever the server sends, an accepted path stays inside DEST.
        #[test]
        fn accepted_paths_never_escape(parts in proptest::collection::vec("(\\.\\.|\\.|[a-z]{1,3}|/|\\x00)", 0..8)) {
            let raw: String = parts.concat();
            if let Ok(path) = normalize_relative(raw.as_bytes()) {
                let path = String::from_utf8(path).unwrap();
                let p = std::path::Path::new(&path);
                proptest::prop_assert!(p.is_relative());
                proptest::prop_assert!(!path.contains('\0'));
                proptest::prop_assert!(p.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                proptest::prop_assert!(std::path::Path::new("/dest").join(p).starts_with("/dest"));
            }
        }
    }

    proptest::proptest! {
        /// Bytes that are not UTF-8 are held to the same rules.
        #[test]
        fn accepted_byte_paths_never_escape(parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b"..".to_vec()),
                proptest::strategy::Just(b".".to_vec()),
                proptest::strategy::Just(b"/".to_vec()),
                proptest::strategy::Just(vec![0u8]),
                proptest::collection::vec(0x80u8..=0xff, 1..3),
                proptest::collection::vec(b'a'..=b'c', 1..3),
            ],
            0..8,
        )) {
            use std::os::unix::ffi::OsStrExt;
            let raw: Vec<u8> = parts.concat();
            if let Ok(path) = normalize_relative(&raw) {
                let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
                proptest::prop_assert!(p.is_relative());
                proptest::prop_assert!(!path.contains(&0));
                proptest::prop_assert!(p.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                proptest::prop_assert!(std::path::Path::new("/dest").join(p).starts_with("/dest"));
            }
        }
    }

    #[test]
    fn bytes_follow_the_same_rules() {
        assert_eq!(
            normalize_relative(b"./dir\xe9//FOO\xe0\xe0\xe0BAR/").unwrap(),
            b"dir\xe9/FOO\xe0\xe0\xe0BAR"
        );
        for bad in [&b"/x\xe0"[..], b"\xe0/../../x", b"a\0\xe0", b"./"] {
            assert!(normalize_relative(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn rejects_escapes() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "base/../../x",
            "a/..",
            ".",
            "./",
            "a\0b",
            "//x",
        ] {
            assert!(
                normalize_relative(bad.as_bytes()).is_err(),
                "{bad:?} was accepted"
            );
        }
    }
}
