//! Checks on paths that come from outside: the server's listing and --stdin.
//!
//! The server is not trusted to name only files under its data directory. A
//! path is accepted only if it is relative, has no `..`, no NUL and no empty
//! component once `.` is dropped; only then is it joined to DEST.

/// Validate a data-directory relative path and return it in canonical form
/// (`a/b/c`: no `.` components, no repeated or trailing slashes).
pub fn normalize_relative(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.contains('\0') {
        return Err(format!("path {path:?} contains a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(format!(
            "path {path:?} is absolute; only paths relative to the data directory are allowed"
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(format!("path {path:?} contains \"..\"")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!("path {path:?} names the data directory itself"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_canonicalizes_relative_paths() {
        assert_eq!(normalize_relative("base/1/1259").unwrap(), "base/1/1259");
        assert_eq!(
            normalize_relative("./base//1/./1259/").unwrap(),
            "base/1/1259"
        );
        assert_eq!(normalize_relative("PG_VERSION").unwrap(), "PG_VERSION");
        assert_eq!(normalize_relative("dir/..file").unwrap(), "dir/..file");
    }

    proptest::proptest! {
        /// Whatever the server sends, an accepted path stays inside DEST.
        #[test]
        fn accepted_paths_never_escape(parts in proptest::collection::vec("(\\.\\.|\\.|[a-z]{1,3}|/|\\x00)", 0..8)) {
            let raw: String = parts.concat();
            if let Ok(path) = normalize_relative(&raw) {
                let p = std::path::Path::new(&path);
                proptest::prop_assert!(p.is_relative());
                proptest::prop_assert!(!path.contains('\0'));
                proptest::prop_assert!(p.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                proptest::prop_assert!(std::path::Path::new("/dest").join(p).starts_with("/dest"));
            }
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
            assert!(normalize_relative(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
