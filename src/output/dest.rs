//! The copy on disk ([`Dest`]): checking and preparing DEST, positional
//! writes from many threads, the final sync, and removing a partial copy.
//! The plain format writes the backup here (see `plain.rs`); the tar format
//! puts its archives and WAL scratch directory here; --delta and the WAL
//! feed write through it too.
//!
//! Nothing here talks to the server. Paths handed in are relative and were
//! validated by `paths::normalize_relative`, so joining them to the root
//! cannot leave DEST (tablespace links, which we create ourselves, are the
//! one intended way out).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::bail_with;
use crate::error::{Exit, ExitContext};
use crate::fsx::{self, remove_contents};

/// Refuse an unusable DEST before anything is done on the server.
pub fn check(path: &Path, force: bool) -> Result<()> {
    if let Some((kind, dir)) = enclosing_cluster_directory(path) {
        bail_with!(
            Exit::Dest,
            "{} is inside the PostgreSQL {kind} {}; choose a directory outside it",
            path.display(),
            dir.display()
        );
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                bail_with!(
                    Exit::Dest,
                    "cannot create {}: parent directory {} does not exist",
                    path.display(),
                    parent.display()
                );
            }
            Ok(())
        }
        Err(e) => bail_with!(Exit::Dest, "cannot use {}: {e}", path.display()),
        Ok(meta) if !meta.is_dir() => {
            bail_with!(
                Exit::Dest,
                "{} exists and is not a directory",
                path.display()
            )
        }
        Ok(_) => {
            let not_empty = fs::read_dir(path)
                .exit_with(Exit::Dest, || {
                    format!("cannot read directory {}", path.display())
                })?
                .next()
                .is_some();
            if not_empty && !force {
                bail_with!(
                    Exit::Dest,
                    "directory {} exists and is not empty (use -f to replace its contents)",
                    path.display()
                );
            }
            Ok(())
        }
    }
}

/// The directory of a cluster that `path` would write into, if any, and
/// what it is. Writing there would corrupt that cluster:
/// - a data directory: an ancestor with PG_VERSION and global/pg_control,
///   or `path` itself while a server runs on it (postmaster.pid); `path`
///   itself as a stopped cluster (an earlier copy) may be replaced with -f;
/// - a WAL directory (`pg_wal`, or where an `initdb -X` link points): `path`
///   or an ancestor holding `archive_status` and WAL segment files;
/// - a tablespace directory: `path` or an ancestor holding a
///   `PG_<major>_<catalog version>` directory.
///
/// Only the client's file system is looked at, with symbolic links
/// resolved: this protects a server on the same host (whatever the links),
/// and paths that exist only on a remote server never refuse a DEST here.
fn enclosing_cluster_directory(path: &Path) -> Option<(&'static str, PathBuf)> {
    let resolved = resolve_existing_prefix(&std::path::absolute(path).ok()?);
    let is_data_dir =
        |dir: &Path| dir.join("PG_VERSION").is_file() && dir.join("global/pg_control").is_file();
    if is_data_dir(&resolved) && resolved.join("postmaster.pid").exists() {
        return Some(("data directory", resolved));
    }
    for dir in resolved.ancestors() {
        if dir != resolved && is_data_dir(dir) {
            return Some(("data directory", dir.to_path_buf()));
        }
        if is_wal_dir(dir) {
            return Some(("WAL directory", dir.to_path_buf()));
        }
        if is_tablespace_dir(dir) {
            return Some(("tablespace directory", dir.to_path_buf()));
        }
    }
    None
}

/// `path` with its longest existing prefix resolved (symbolic links, `..`).
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    for existing in path.ancestors() {
        if let Ok(real) = fs::canonicalize(existing) {
            let rest = path.strip_prefix(existing).unwrap_or(Path::new(""));
            return real.join(rest);
        }
    }
    path.to_path_buf()
}

fn is_wal_dir(dir: &Path) -> bool {
    dir.join("archive_status").is_dir()
        && fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.as_encoded_bytes();
                name.len() == 24 && name.iter().all(u8::is_ascii_hexdigit)
            })
        })
}

fn is_tablespace_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let is_version_dir = name
                .to_str()
                .and_then(|n| n.strip_prefix("PG_"))
                .is_some_and(|v| {
                    v.split_once('_').is_some_and(|(major, catalog)| {
                        !major.is_empty()
                            && major.bytes().all(|b| b.is_ascii_digit())
                            && catalog.len() == 9
                            && catalog.bytes().all(|b| b.is_ascii_digit())
                    })
                });
            is_version_dir && e.path().is_dir()
        })
    })
}

/// A file of the copy kept open from one [`Dest::write_at`] to the next.
pub struct OpenFile {
    rel: String,
    file: File,
    unflushed: fsx::Unflushed,
}

/// The root of a copy in progress.
pub struct Dest {
    root: PathBuf,
    /// Whether we created the root, so a failed run removes it entirely
    /// (otherwise only its contents, as it may be a mount point).
    created_root: bool,
    /// Whether everything in root is ours (a fresh backup) rather than
    /// shared with other runs (the auxiliary -S modes).
    owns_contents: bool,
    dir_mode: u32,
    file_mode: u32,
    /// Tablespace directories outside root that we filled.
    tablespace_roots: Vec<PathBuf>,
    /// Whether what is written is sent on to the disk as it is written
    /// ([`fsx::Unflushed`]): when the copy is synced at the end.
    early_writeback: bool,
}

impl Dest {
    /// Create DEST, or empty it when it exists (allowed by `check`).
    pub fn prepare(root: &Path, dir_mode: u32) -> Result<Dest> {
        let created_root = !root.exists();
        if created_root {
            fs::DirBuilder::new()
                .mode(dir_mode)
                .create(root)
                .exit_with(Exit::Dest, || {
                    format!("cannot create directory {}", root.display())
                })?;
        } else {
            remove_contents(root).exit_with(Exit::Dest, || {
                format!("cannot empty directory {}", root.display())
            })?;
            fs::set_permissions(root, fs::Permissions::from_mode(dir_mode))
                .exit_with(Exit::Dest, || {
                    format!("cannot set permissions of {}", root.display())
                })?;
        }
        Ok(Dest {
            root: root.to_path_buf(),
            created_root,
            owns_contents: true,
            dir_mode,
            file_mode: fsx::file_mode_for(dir_mode),
            tablespace_roots: Vec::new(),
            early_writeback: false,
        })
    }

    /// Open DEST for the auxiliary modes, which add files to a directory
    /// that other runs may be filling too: create it if missing, never empty
    /// it, and never remove anything on failure.
    pub fn open_shared(root: &Path, dir_mode: u32) -> Result<Dest> {
        let mut dest = if root.exists() {
            if !root.is_dir() {
                bail_with!(
                    Exit::Dest,
                    "{} exists and is not a directory",
                    root.display()
                );
            }
            Dest {
                root: root.to_path_buf(),
                created_root: false,
                owns_contents: false,
                dir_mode,
                file_mode: 0,
                tablespace_roots: Vec::new(),
                early_writeback: false,
            }
        } else {
            Dest::prepare(root, dir_mode)?
        };
        dest.owns_contents = false;
        dest.file_mode = fsx::file_mode_for(dir_mode);
        Ok(dest)
    }

    /// Send what is written on to the disk as it is written, for a copy
    /// that is synced at the end (not with -N): see [`fsx::Unflushed`].
    pub fn with_early_writeback(mut self, on: bool) -> Dest {
        self.early_writeback = on;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Create directories and any missing parents (existing ones are fine).
    /// The paths need not be valid UTF-8.
    pub fn create_dirs<P: AsRef<OsStr>>(&self, dirs: impl IntoIterator<Item = P>) -> Result<()> {
        for d in dirs {
            let p = self.root.join(d.as_ref());
            fs::DirBuilder::new()
                .recursive(true)
                .mode(self.dir_mode)
                .create(&p)
                .exit_with(Exit::Dest, || {
                    format!("cannot create directory {}", p.display())
                })?;
        }
        Ok(())
    }

    /// Make `pg_tblspc/<oid>` a link to `target`, which must be missing or
    /// empty: a copy never writes into a directory that holds data.
    /// A link that already points at `target` (a copy --delta refreshes) is kept.
    pub fn link_tablespace(&mut self, oid: u32, target: &Path) -> Result<()> {
        let link = self.path(&format!("pg_tblspc/{oid}"));
        if fs::read_link(&link).is_ok_and(|t| t == target) {
            self.tablespace_roots.push(target.to_path_buf());
            return Ok(());
        }
        check(target, false)?;
        if !target.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(self.dir_mode)
                .create(target)
                .exit_with(Exit::Dest, || {
                    format!("cannot create tablespace directory {}", target.display())
                })?;
        }
        self.tablespace_roots.push(target.to_path_buf());
        std::os::unix::fs::symlink(target, &link).exit_with(Exit::Dest, || {
            format!("cannot create tablespace link {}", link.display())
        })
    }

    /// Open a file of the copy for writing (never through a link, see
    /// [`fsx::open_no_follow`]).
    fn open(&self, rel: &str) -> Result<File> {
        let p = self.path(rel);
        fsx::open_no_follow(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(self.file_mode),
            &p,
        )
        .exit_with(Exit::Dest, || {
            format!("cannot open {} for writing", p.display())
        })
    }

    /// Write `data` at `offset` of a file, creating it; then, when `final_len`
    /// is given, set the file to exactly that size (zero padding a file that
    /// shrank on the server). Safe to call from many threads on one file.
    /// `open` caches the file of the last call: the pieces of a file come
    /// one after another, and an open and close per piece cost as much as a
    /// tenth of the write.
    pub fn write_at(
        &self,
        open: &mut Option<OpenFile>,
        rel: &str,
        offset: u64,
        data: &[u8],
        final_len: Option<u64>,
    ) -> Result<()> {
        if open.as_ref().is_none_or(|o| o.rel != rel) {
            *open = Some(OpenFile {
                rel: rel.to_string(),
                file: self.open(rel)?,
                unflushed: fsx::Unflushed::default(),
            });
        }
        let o = open.as_mut().expect("opened above");
        let f = &o.file;
        f.write_all_at(data, offset)
            .and_then(|()| match self.early_writeback {
                true => o.unflushed.wrote(f, offset, data.len() as u64),
                false => Ok(()),
            })
            .exit_with(Exit::Dest, || {
                format!("cannot write {}", self.path(rel).display())
            })?;
        if let Some(len) = final_len {
            // Only ever extend: another worker may already have written the
            // tail of a file that is still being copied.
            if f.metadata()?.len() < len {
                f.set_len(len).exit_with(Exit::Dest, || {
                    format!("cannot extend {}", self.path(rel).display())
                })?;
            }
        }
        Ok(())
    }

    /// Make a file `len` bytes long with every block allocated, keeping
    /// what it holds (zeros where it holds nothing), as PostgreSQL zero-fills
    /// a WAL segment before use: a segment with holes in the copy could fail
    /// with ENOSPC once the server started on the copy writes into it.
    pub fn allocate(&self, rel: &str, len: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        let f = self.open(rel)?;
        // SAFETY: posix_fallocate on a file descriptor we own.
        let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).exit_with(Exit::Dest, || {
                format!(
                    "cannot allocate {} bytes for {}",
                    len,
                    self.path(rel).display()
                )
            });
        }
        Ok(())
    }

    /// Write a whole small file (backup_label, tablespace_map) and fsync it.
    /// Its path need not be valid UTF-8.
    pub fn write_file(&self, rel: impl AsRef<OsStr>, data: &[u8]) -> Result<()> {
        let p = self.root.join(rel.as_ref());
        let mut f = fsx::open_no_follow(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(self.file_mode),
            &p,
        )
        .exit_with(Exit::Dest, || format!("cannot create {}", p.display()))?;
        f.write_all(data)
            .exit_with(Exit::Dest, || format!("cannot write {}", p.display()))?;
        f.sync_all()
            .exit_with(Exit::Dest, || format!("cannot fsync {}", p.display()))?;
        if let Some(dir) = p.parent() {
            fsx::sync_dir(dir)
                .exit_with(Exit::Dest, || format!("cannot fsync {}", dir.display()))?;
        }
        Ok(())
    }

    pub fn remove_file(&self, rel: &str) -> Result<()> {
        match fs::remove_file(self.path(rel)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)
                .exit_with(Exit::Dest, || {
                    format!("cannot remove {}", self.path(rel).display())
                }),
            _ => Ok(()),
        }
    }

    /// Flush everything written so far to stable storage: one syncfs per
    /// file system (DEST and each tablespace), far cheaper than an fsync
    /// per file and it covers directory entries too.
    pub fn sync(&self) -> Result<()> {
        for root in std::iter::once(&self.root).chain(&self.tablespace_roots) {
            let dir = File::open(root)
                .exit_with(Exit::Dest, || format!("cannot open {}", root.display()))?;
            fsx::sync_file_system(&dir)
                .exit_with(Exit::Dest, || format!("cannot sync {}", root.display()))?;
        }
        Ok(())
    }

    /// Remove a partial copy: the root if we made it, else its contents, and
    /// whatever we put into tablespace directories.
    pub fn discard(self) -> Result<()> {
        if !self.owns_contents {
            return Ok(());
        }
        for ts in &self.tablespace_roots {
            remove_contents(ts)
                .with_context(|| format!("cannot clean tablespace directory {}", ts.display()))?;
        }
        if self.created_root {
            fs::remove_dir_all(&self.root)
        } else {
            remove_contents(&self.root)
        }
        .with_context(|| format!("cannot remove partial copy {}", self.root.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_files_and_non_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(check(&file, true).is_err());
        assert!(check(tmp.path(), false).is_err());
        assert!(check(tmp.path(), true).is_ok());
        assert!(check(&tmp.path().join("new"), false).is_ok());
        assert!(check(&tmp.path().join("no/such/parent"), false).is_err());
        let datadir = tmp.path().join("data");
        fs::create_dir_all(datadir.join("global")).unwrap();
        fs::write(datadir.join("PG_VERSION"), b"15\n").unwrap();
        fs::write(datadir.join("global/pg_control"), b"").unwrap();
        let err = check(&datadir.join("base/copy"), false).unwrap_err();
        assert!(
            err.to_string()
                .contains("inside the PostgreSQL data directory"),
            "{err}"
        );
        assert!(
            check(&datadir, true).is_ok(),
            "a stopped cluster (an earlier copy) may be replaced"
        );
        fs::write(datadir.join("postmaster.pid"), b"1").unwrap();
        assert!(
            check(&datadir, true).is_err(),
            "never a running server's data directory"
        );
    }

    #[test]
    fn check_refuses_wal_and_tablespace_directories_also_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = tmp.path().join("wal");
        fs::create_dir_all(wal.join("archive_status")).unwrap();
        fs::write(wal.join("000000010000000000000001"), b"").unwrap();
        let tablespace = tmp.path().join("ts");
        fs::create_dir_all(tablespace.join("PG_15_202209061")).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&wal, &link).unwrap();
        for (dest, kind) in [
            (wal.join("copy"), "WAL directory"),
            (wal.clone(), "WAL directory"),
            (link.join("a/../copy"), "WAL directory"),
            (tablespace.join("copy"), "tablespace directory"),
            (
                tablespace.join("PG_15_202209061/copy"),
                "tablespace directory",
            ),
        ] {
            let err = check(&dest, true).unwrap_err();
            assert!(err.to_string().contains(kind), "{}: {err}", dest.display());
            assert_eq!(crate::error::exit_of(&err), Exit::Dest);
        }
        // An ordinary directory with a name alike is fine.
        fs::create_dir_all(tmp.path().join("other/PG_15_notdigits")).unwrap();
        assert!(check(&tmp.path().join("other/copy"), false).is_ok());
    }

    #[test]
    fn out_of_order_writes_and_padding() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Dest::prepare(&tmp.path().join("copy"), 0o700).unwrap();
        d.write_at(&mut None, "f", 4, b"5678", Some(10)).unwrap();
        d.write_at(&mut None, "f", 0, b"1234", None).unwrap();
        assert_eq!(fs::read(d.path("f")).unwrap(), b"12345678\0\0");
        d.write_at(&mut None, "empty", 0, b"", Some(0)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path("planted")).unwrap();
        assert!(
            d.write_at(&mut None, "planted", 0, b"x", None).is_err(),
            "never writes through a link"
        );
        assert_eq!(fs::metadata(d.path("empty")).unwrap().len(), 0);
        let mode = fs::metadata(d.path("f")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        d.sync().unwrap();
        let root = d.root().to_path_buf();
        d.discard().unwrap();
        assert!(!root.exists());
    }
}
