//! The earlier copy a `--delta` run refreshes, read before anything is
//! written: which cluster it holds (its marker or its pg_control), and,
//! for --trust-mtime, the sizes and mtimes its backup_manifest recorded.
//! A run that finds another cluster, or a server without sha256, stops
//! here with DEST untouched.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use log::warn;

use super::Options;
use crate::bail_with;
use crate::error::{Exit, ExitContext, Failure};
use crate::output::dest;
use crate::pg::version::MINIMUM_VERSION_FOR_SHA256;
use crate::plan;
use crate::session::server::ServerInfo;

/// Written first by a --delta run, removed once the copy is complete: it
/// names the cluster while global/pg_control is missing.
pub const MARKER: &str = "pg_basebackup_delta.in_progress";

/// What DEST holds before the run, read without writing anything.
pub struct Earlier {
    pub(super) root: PathBuf,
    /// None when DEST is missing or empty: then every file is new.
    pub(super) system_identifier: Option<u64>,
    /// From a complete earlier copy, with --trust-mtime.
    pub(super) mtimes: Option<EarlierManifest>,
}

pub(super) struct EarlierManifest {
    /// Path -> (size, Last-Modified as written).
    pub(super) files: HashMap<String, (u64, String)>,
    /// backup_label's START TIME, as the server wrote it.
    pub(super) start_time: String,
}

/// Look at DEST: a missing or empty directory, or an earlier copy named by
/// the marker of an interrupted refresh or by its global/pg_control.
pub fn inspect(root: &Path, options: Options) -> Result<Earlier> {
    // Refuses a running server's data directory and anything inside one.
    dest::check(root, true)?;
    let mut earlier = Earlier {
        root: root.to_path_buf(),
        system_identifier: None,
        mtimes: None,
    };
    let empty = match fs::read_dir(root) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true, // missing: check() made sure its parent exists
    };
    if empty {
        return Ok(earlier);
    }
    let marker = root.join(MARKER);
    let control = root.join(plan::PG_CONTROL);
    if marker.exists() {
        let text = fs::read_to_string(&marker)
            .exit_with(Exit::Dest, || format!("cannot read {}", marker.display()))?;
        earlier.system_identifier = Some(parse_marker(&text).with_context(|| {
            Failure::new(Exit::Dest, format!("{} is damaged", marker.display()))
        })?);
    } else if let Ok(bytes) = fs::read(&control) {
        let Some(id) = bytes.get(..8) else {
            bail_with!(Exit::Dest, "{} is too short", control.display());
        };
        earlier.system_identifier = Some(u64::from_ne_bytes(id.try_into().expect("8 bytes")));
        if options.trust_mtime {
            earlier.mtimes = read_earlier_manifest(root);
        }
    } else {
        bail_with!(
            Exit::Dest,
            "--delta: {} is not empty and holds no copy of a cluster (no global/pg_control, no {MARKER})",
            root.display()
        );
    }
    Ok(earlier)
}

/// The marker's contents for the cluster `system_identifier`.
pub(super) fn marker_text(system_identifier: u64) -> String {
    format!("system identifier {system_identifier}\n")
}

fn parse_marker(text: &str) -> Result<u64> {
    text.trim()
        .strip_prefix("system identifier ")
        .context("no system identifier")?
        .parse()
        .context("bad system identifier")
}

/// The sizes and mtimes an earlier complete copy recorded, and its start
/// time; `None` (with a warning) when they cannot be read.
fn read_earlier_manifest(root: &Path) -> Option<EarlierManifest> {
    let read = || -> Result<EarlierManifest> {
        let label = fs::read_to_string(root.join("backup_label"))?;
        let start_time = label
            .lines()
            .find_map(|l| l.strip_prefix("START TIME: "))
            .context("backup_label has no START TIME")?
            .to_string();
        let manifest = fs::read_to_string(root.join("backup_manifest"))?;
        let files = manifest_files(&manifest)?;
        Ok(EarlierManifest { files, start_time })
    };
    match read() {
        Ok(m) => Some(m),
        Err(e) => {
            warn!(
                "--trust-mtime: every file is compared, the earlier copy's manifest and label are unusable: {e:#}"
            );
            None
        }
    }
}

/// `path -> (size, last-modified)` of every file a backup manifest lists
/// by `Path`. Files listed by `Encoded-Path` (names that are not UTF-8)
/// are left out: such files are simply compared.
fn manifest_files(text: &str) -> Result<HashMap<String, (u64, String)>> {
    use serde_json::Value;
    let manifest: Value = serde_json::from_str(text).context("backup_manifest is not JSON")?;
    let files = manifest
        .get("Files")
        .and_then(Value::as_array)
        .context("backup_manifest has no Files")?;
    Ok(files
        .iter()
        .filter_map(|f| {
            let path = f.get("Path")?.as_str()?;
            let size = f.get("Size")?.as_u64()?;
            let modified = f.get("Last-Modified")?.as_str()?;
            Some((path.to_string(), (size, modified.to_string())))
        })
        .collect())
}

/// Refuse a server whose DEST holds another cluster, or one without sha256.
/// Runs before anything is written.
pub fn check_server(earlier: &Earlier, info: &ServerInfo) -> Result<()> {
    if info.version_num < MINIMUM_VERSION_FOR_SHA256 {
        bail_with!(
            Exit::Server,
            "--delta needs PostgreSQL 11 or newer (the server hashes chunks with sha256); this is {}",
            info.major()
        );
    }
    if let Some(id) = earlier.system_identifier {
        if id != info.system_identifier {
            bail_with!(
                Exit::Dest,
                "--delta: {} holds a copy of another cluster (system identifier {id}, the server's is {}); \
                 nothing was changed",
                earlier.root.display(),
                info.system_identifier
            );
        }
    }
    Ok(())
}

/// Tablespace links of the earlier copy: (oid, target). A target listed
/// here is part of the copy and may be refreshed though it is not empty.
pub fn tablespace_links(root: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir(root.join("pg_tblspc")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let oid = e.file_name().to_str()?.parse().ok()?;
            Some((oid, fs::read_link(e.path()).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_give_path_size_and_mtime() {
        let manifest = r#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "base/1/a\"b\u00e9", "Size": 8192, "Last-Modified": "2024-02-29 13:05:09 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "8a744722" },
{ "Encoded-Path": "ff", "Size": 1, "Last-Modified": "x" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "00" }
"#;
        let files = manifest_files(manifest).unwrap();
        assert_eq!(
            files.into_iter().collect::<Vec<_>>(),
            [(
                "base/1/a\"b\u{e9}".to_string(),
                (8192, "2024-02-29 13:05:09 GMT".to_string())
            )]
        );
        assert!(manifest_files("{ \"Files\": [").is_err());
        assert!(manifest_files("{}").is_err());
    }

    #[test]
    fn marker_round_trip() {
        assert_eq!(parse_marker(&marker_text(7312)).unwrap(), 7312);
        assert_eq!(marker_text(7312), "system identifier 7312\n");
        assert!(parse_marker("garbage").is_err());
    }

    #[test]
    fn inspect_tells_empty_copies_and_strangers_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = Options { trust_mtime: false };
        let root = tmp.path().join("copy");
        assert_eq!(inspect(&root, opts).unwrap().system_identifier, None);
        fs::create_dir(&root).unwrap();
        assert_eq!(inspect(&root, opts).unwrap().system_identifier, None);
        fs::write(root.join("stray"), b"x").unwrap();
        let err = inspect(&root, opts).err().unwrap();
        assert_eq!(crate::error::exit_of(&err), Exit::Dest);
        fs::create_dir(root.join("global")).unwrap();
        fs::write(root.join(plan::PG_CONTROL), 42u64.to_ne_bytes()).unwrap();
        assert_eq!(inspect(&root, opts).unwrap().system_identifier, Some(42));
        fs::write(root.join(MARKER), b"system identifier 43\n").unwrap();
        assert_eq!(inspect(&root, opts).unwrap().system_identifier, Some(43));
    }
}
