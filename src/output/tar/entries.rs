//! The bytes of tar entries: GNU tar headers (what GNU tar, bsdtar,
//! PostgreSQL's pg_basebackup readers and the `tar` crate all read), their
//! padding, and a task's piece of a file as it lands in the archive. Paths
//! or link targets longer than 100 bytes get a `././@LongLink` entry first.
//! Files are mode 0600, directories 0700 (or 0640/0750, see
//! `TarWriter::with_modes`), owned by uid/gid 0 with user and group name
//! `postgres`, as PostgreSQL's pg_basebackup names them: GNU tar run as
//! root maps files to the local `postgres` user.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{Context, Result, ensure};
use tar::{EntryType, Header};

use crate::fsx::ZEROS;
use crate::plan::{FileEntry, Piece};

/// The unit of a tar stream: headers and the padding of data are whole
/// blocks.
const TAR_BLOCK: u64 = 512;
/// Longest name or link target a tar header holds without a GNU long entry.
const NAME_LEN: usize = 100;

pub(super) fn write_tar(w: &mut dyn Write, buf: &[u8]) -> Result<()> {
    w.write_all(buf).context("cannot write the tar output")
}

fn zeros(w: &mut dyn Write, mut n: u64) -> Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        write_tar(w, &ZEROS[..k as usize])?;
        n -= k;
    }
    Ok(())
}

/// Pad an entry of `size` bytes to the next 512-byte block.
pub(super) fn pad(w: &mut dyn Write, size: u64) -> Result<()> {
    zeros(w, (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK)
}

/// A GNU long-name ('L') or long-link ('K') entry carrying `value`.
fn long_entry(w: &mut dyn Write, kind: u8, value: &[u8]) -> Result<()> {
    let mut h = Header::new_gnu();
    let name = b"././@LongLink";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(value.len() as u64 + 1);
    h.set_entry_type(EntryType::new(kind));
    h.set_cksum();
    write_tar(w, h.as_bytes())?;
    write_tar(w, value)?;
    write_tar(w, &[0])?;
    pad(w, value.len() as u64 + 1)
}

/// The header block(s) of one entry; `path` is already checked.
pub(super) fn header(
    w: &mut dyn Write,
    path: &[u8],
    kind: EntryType,
    size: u64,
    mode: u32,
    mtime: i64,
    link: Option<&str>,
) -> Result<()> {
    let mut h = Header::new_gnu();
    let name = path;
    if name.len() > NAME_LEN {
        long_entry(w, b'L', name)?;
    }
    let n = name.len().min(NAME_LEN);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    if let Some(target) = link {
        let target = target.as_bytes();
        if target.len() > NAME_LEN {
            long_entry(w, b'K', target)?;
        }
        let n = target.len().min(NAME_LEN);
        h.as_old_mut().linkname[..n].copy_from_slice(&target[..n]);
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("postgres")?;
    h.set_groupname("postgres")?;
    h.set_mtime(mtime.max(0) as u64);
    h.set_cksum();
    write_tar(w, h.as_bytes())
}

/// The tar bytes of one piece of a task: its file's header before the
/// file's first piece, its bytes (cut, or padded with zeros, to the piece's
/// length; zeros for a piece of a file gone after its start), the padding
/// after the file's last piece. A file whose first piece found it gone is
/// left out, with its later pieces (`omitted`, per task). A piece that
/// continues a file started in an earlier task is written as it is:
/// whether that file was left out is for the caller to know (see
/// `task::continued_pieces`).
pub(super) fn write_piece(
    w: &mut dyn Write,
    piece: &Piece,
    data: Option<&[u8]>,
    file: &FileEntry,
    file_mode: u32,
    omitted: &mut BTreeSet<usize>,
) -> Result<()> {
    if omitted.contains(&piece.file) {
        return Ok(());
    }
    if piece.offset == 0 {
        if data.is_none() {
            omitted.insert(piece.file);
            return Ok(());
        }
        header(
            w,
            file.path.as_bytes(),
            EntryType::Regular,
            file.size,
            file_mode,
            file.mtime,
            None,
        )?;
    }
    let n = data.map_or(0, |d| d.len().min(piece.len as usize));
    if let Some(d) = data {
        write_tar(w, &d[..n])?;
    }
    zeros(w, piece.len - n as u64)?;
    if piece.offset + piece.len == file.size {
        pad(w, file.size)?;
    }
    Ok(())
}

/// The end-of-archive marker: two zero blocks.
pub(super) fn end_of_archive(w: &mut dyn Write) -> Result<()> {
    zeros(w, 2 * TAR_BLOCK)
}

/// A path as an archive member: relative, no `..`, no empty part; without
/// a trailing slash.
pub(super) fn checked_path(path: &[u8]) -> Result<&[u8]> {
    let p = path.strip_suffix(b"/").unwrap_or(path);
    ensure!(
        !p.is_empty()
            && !p.starts_with(b"/")
            && !p.contains(&0)
            && p.split(|&b| b == b'/').all(|c| !c.is_empty() && c != b".."),
        "unsafe path for the tar output: {:?}",
        String::from_utf8_lossy(path)
    );
    Ok(p)
}
