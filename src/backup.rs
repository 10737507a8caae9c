//! Three helpers the old backup.rs held for other modules, left here while
//! issue 15 moves them: `checksum_of` to the integrity checks,
//! `unix_now` and `shell_quote` to the output. The backup itself is in
//! `run/`.

use std::path::Path;

use anyhow::Result;

use crate::manifest::{ChecksumAlgorithm, FileChecksum};

/// The manifest checksum of bytes we hold in memory (backup_label, ...).
pub(crate) fn checksum_of(alg: ChecksumAlgorithm, bytes: &[u8]) -> Result<Option<String>> {
    let sum = FileChecksum::new(alg, bytes.len() as u64);
    sum.update(0, bytes)?;
    sum.finish()
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(crate) fn shell_quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote(Path::new("/srv/pg/copy")), "/srv/pg/copy");
        assert_eq!(shell_quote(Path::new("/srv/my copy")), "'/srv/my copy'");
    }
}
