//! Files and directories whose names are not valid UTF-8 (PostgreSQL's own
//! test suite puts `FOO\xe0\xe0\xe0BAR` in a data directory; its base
//! backup copies it, and so do we).
//!
//! The hot path sends file names as text, which the server validates, so
//! such a name cannot be read there. These files are rare and small: each
//! is read whole, chunk by chunk, by a slower request that finds its path
//! server-side ([`server::read_by_raw_path`]), after the other files and
//! before the labels, and written with its name as bytes (a plain copy, a
//! tar header, `Encoded-Path` in the manifest).

use anyhow::Result;
use log::{debug, info};
use postgres::Client;

use crate::integrity::checksum::{ChecksumAlgorithm, checksum_of};
use crate::output::Output;
use crate::plan::OddEntry;
use crate::session::server;

/// A file copied here, for the manifest.
pub struct OddFile {
    pub path: Vec<u8>,
    pub size: u64,
    pub mtime: i64,
    pub checksum: Option<String>,
}

/// Copy `odd` (parents first) into `out`; returns the files copied (one
/// that vanished meanwhile is left out, as on the hot path). A file that
/// shrank is padded with zeros to its listed size, one that grew is cut.
pub fn copy(
    client: &mut Client,
    odd: &[OddEntry],
    out: &dyn Output,
    chunk_size: u64,
    checksums: Option<ChecksumAlgorithm>,
) -> Result<Vec<OddFile>> {
    let mut copied = Vec::new();
    for entry in odd {
        let shown = String::from_utf8_lossy(&entry.path);
        if entry.is_dir {
            out.put_raw_dir(&entry.path, entry.mtime)?;
            continue;
        }
        let Some(data) = read_whole(client, entry, chunk_size)? else {
            debug!("{shown} vanished during the backup");
            continue;
        };
        out.put_raw_file(&entry.path, &data, entry.mtime)?;
        let checksum = match checksums {
            Some(alg) => checksum_of(alg, &data)?,
            None => None,
        };
        copied.push(OddFile {
            path: entry.path.clone(),
            size: entry.size,
            mtime: entry.mtime,
            checksum,
        });
    }
    if !copied.is_empty() {
        info!(
            "{} file(s) whose names are not valid UTF-8 copied by name",
            copied.len()
        );
    }
    Ok(copied)
}

/// The file at its listed size, or None when it is gone.
fn read_whole(client: &mut Client, entry: &OddEntry, chunk_size: u64) -> Result<Option<Vec<u8>>> {
    let mut data = Vec::with_capacity(entry.size as usize);
    while (data.len() as u64) < entry.size {
        let offset = data.len() as u64;
        let want = chunk_size.min(entry.size - offset);
        let Some(bytes) = server::read_by_raw_path(client, &entry.path, offset, want)? else {
            return Ok(None);
        };
        data.extend_from_slice(&bytes);
        if (bytes.len() as u64) < want {
            break;
        }
    }
    data.resize(entry.size as usize, 0);
    Ok(Some(data))
}
