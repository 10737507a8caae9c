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
