//! Files and directories: temporary ones the server's OS user can reach
//! (kept for inspection when `KEEP_TEST_DIRS` is set), modes, appending to
//! a configuration file, the tail of a log.

use std::io::Write;
use std::path::Path;

/// chmod, panicking with the path on failure.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Whether `KEEP_TEST_DIRS` asks to keep every directory a test made.
pub(super) fn keep_dirs() -> bool {
    std::env::var_os("KEEP_TEST_DIRS").is_some()
}

/// A temporary directory (mode 0755) the server user can traverse: put DEST
/// directories in it; a DEST inside it works with [`super::Cluster::start_on_copy`].
/// Removed on drop, unless `KEEP_TEST_DIRS` is set.
pub fn scratch_dir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("pgbb-test-")
        .tempdir()
        .unwrap();
    set_mode(dir.path(), 0o755);
    if keep_dirs() {
        dir.disable_cleanup(true);
        eprintln!("KEEP_TEST_DIRS: keeping {}", dir.path().display());
    }
    dir
}

/// Append `text` to the file at `path`.
pub(super) fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// The last `lines` lines of `text`.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
