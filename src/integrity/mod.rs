//! What we check about each byte as it arrives ([`Integrity`]): the
//! manifest checksum of every file ([`checksum`]), and PostgreSQL's data
//! page checksums ([`page`]).
//!
//! Both are computed from the chunk in hand, right after it is written, so
//! there is no second pass over DEST. Chunks of one file arrive out of order
//! from several workers: CRC32C pieces are combined exactly, SHA-2 needs the
//! bytes in order, so a worker does not start a chunk more than `window`
//! bytes past the first byte of that file still missing (see [`wait_turn`]);
//! that bounds what a SHA-2 checksum holds to about jobs x chunk size.
//!
//! [`wait_turn`]: Integrity::wait_turn

pub mod checksum;
pub mod page;

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;

use crate::abort::Abort;
use crate::fsx::ZEROS;
use crate::pg::BLCKSZ;
use crate::plan::FileEntry;
use checksum::{ChecksumAlgorithm, FileChecksum};
use page::PageVerdict;

/// A data page whose checksum is wrong, after one re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageFailure {
    pub path: String,
    /// Block number within the relation (as the server reports it).
    pub block: u32,
    /// Checksum computed from the page contents.
    pub computed: u16,
    /// Checksum stored in the page header.
    pub stored: u16,
}

/// Settings for data page checksum verification.
#[derive(Debug, Clone, Copy)]
pub struct PageVerification {
    /// Pages with an LSN at or after this were written during the backup:
    /// they may be torn, and WAL replay restores them, so they are skipped.
    pub start_lsn: u64,
    pub blocks_per_segment: u32,
}

/// A block that failed its first check, to be re-read once.
#[derive(Debug, Clone)]
pub struct Suspect {
    pub file: usize,
    /// Byte offset of the block in its file.
    pub offset: u64,
}

pub struct Integrity {
    checksums: Option<Vec<FileChecksum>>,
    /// True when checksums need their bytes in order (SHA-2).
    ordered: bool,
    window: u64,
    pages: Option<PageVerification>,
    failures: Mutex<Vec<PageFailure>>,
    /// Files that vanished: nobody waits for their missing bytes.
    vanished: Mutex<Vec<bool>>,
}

impl Integrity {
    pub fn new(
        files: &[FileEntry],
        algorithm: Option<ChecksumAlgorithm>,
        pages: Option<PageVerification>,
        window: u64,
    ) -> Integrity {
        let algorithm = algorithm.filter(|a| *a != ChecksumAlgorithm::None);
        Integrity {
            checksums: algorithm
                .map(|a| files.iter().map(|f| FileChecksum::new(a, f.size)).collect()),
            ordered: !matches!(algorithm, None | Some(ChecksumAlgorithm::Crc32c)),
            window,
            pages,
            failures: Mutex::default(),
            vanished: Mutex::new(vec![false; files.len()]),
        }
    }

    /// Wait until starting a chunk at `offset` of file `file` keeps the bytes
    /// a SHA-2 checksum must hold within the window. Returns at once for
    /// CRC32C, for small offsets, and when `abort` is set.
    pub fn wait_turn(&self, file: usize, offset: u64, abort: &Abort) {
        let Some(sums) = self.checksums.as_ref().filter(|_| self.ordered) else {
            return;
        };
        while sums[file].contiguous_bytes() + self.window < offset
            && !abort.is_set()
            && !self.vanished.lock().unwrap()[file]
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn mark_vanished(&self, file: usize) {
        self.vanished.lock().unwrap()[file] = true;
    }

    /// Account for the bytes of `[offset, offset + len)` of a file: `data`
    /// is what the server returned (shorter if the file shrank; the rest of
    /// the range is zeros in the copy). Returns the blocks whose page
    /// checksum failed, for one re-read.
    pub fn observe(
        &self,
        index: usize,
        file: &FileEntry,
        offset: u64,
        len: u64,
        data: &[u8],
    ) -> Result<Vec<Suspect>> {
        self.observe_from(index, offset, len, data, (&file.path, offset))
    }

    /// [`observe`](Self::observe) for bytes that come from elsewhere: the
    /// blocks of an `INCREMENTAL.` file, whose pages are checked as blocks
    /// of their relation file `source.0` at offset `source.1` (the block
    /// number is part of a page checksum); a suspect's offset is there.
    pub fn observe_from(
        &self,
        index: usize,
        offset: u64,
        len: u64,
        data: &[u8],
        (path, at): (&str, u64),
    ) -> Result<Vec<Suspect>> {
        if let Some(sums) = &self.checksums {
            let sum = &sums[index];
            sum.update(offset, data)?;
            let mut at = offset + data.len() as u64;
            while at < offset + len {
                let n = (offset + len - at).min(ZEROS.len() as u64);
                sum.update(at, &ZEROS[..n as usize])?;
                at += n;
            }
        }
        let mut suspects = Vec::new();
        if let Some(pv) = &self.pages {
            if page::is_checksummed_file(path) && at % BLCKSZ as u64 == 0 {
                for (i, page) in data.chunks_exact(BLCKSZ).enumerate() {
                    let block_offset = at + (i * BLCKSZ) as u64;
                    if let PageVerdict::Mismatch { .. } = self.verdict(path, block_offset, page, pv)
                    {
                        suspects.push(Suspect {
                            file: index,
                            offset: block_offset,
                        });
                    }
                }
            }
        }
        Ok(suspects)
    }

    /// Account for bytes a --delta run kept from DEST instead of fetching:
    /// they count for the manifest checksum; their pages are not verified.
    pub fn account_kept(&self, index: usize, offset: u64, data: &[u8]) -> Result<()> {
        match &self.checksums {
            Some(sums) => sums[index].update(offset, data),
            None => Ok(()),
        }
    }

    fn verdict(
        &self,
        path: &str,
        block_offset: u64,
        page: &[u8],
        pv: &PageVerification,
    ) -> PageVerdict {
        let block_in_file = (block_offset / BLCKSZ as u64) as u32;
        let blkno = page::relation_block_number(path, block_in_file, pv.blocks_per_segment);
        page::check_page(page, blkno, pv.start_lsn)
    }

    /// Judge a suspect block of the file at `path` again with freshly read
    /// bytes (`None`: the file or the block is gone, which is no corruption).
    pub fn recheck(&self, path: &str, suspect: &Suspect, page: Option<&[u8]>) {
        let (Some(pv), Some(page)) = (&self.pages, page) else {
            return;
        };
        if page.len() != BLCKSZ {
            return;
        }
        if let PageVerdict::Mismatch { computed, stored } =
            self.verdict(path, suspect.offset, page, pv)
        {
            let block = page::relation_block_number(
                path,
                (suspect.offset / BLCKSZ as u64) as u32,
                pv.blocks_per_segment,
            );
            let failure = PageFailure {
                path: path.to_string(),
                block,
                computed,
                stored,
            };
            log::warn!(
                "checksum verification failed in file \"{}\", block {}: calculated {:X} but expected {:X}",
                failure.path,
                failure.block,
                failure.computed,
                failure.stored
            );
            self.failures.lock().unwrap().push(failure);
        }
    }

    /// The manifest checksum of a fully copied file.
    pub fn file_checksum(&self, index: usize) -> Result<Option<String>> {
        match &self.checksums {
            Some(sums) => sums[index].finish(),
            None => Ok(None),
        }
    }

    pub fn page_failures(&self) -> Vec<PageFailure> {
        self.failures.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            mtime: 0,
        }
    }

    #[test]
    fn checksum_covers_zero_padding_of_a_shrunk_file() {
        let files = [entry("a", 10)];
        let padded = Integrity::new(&files, Some(ChecksumAlgorithm::Sha256), None, 0);
        padded.observe(0, &files[0], 0, 10, b"abcd").unwrap();
        let full = Integrity::new(&files, Some(ChecksumAlgorithm::Sha256), None, 0);
        full.observe(0, &files[0], 0, 10, b"abcd\0\0\0\0\0\0")
            .unwrap();
        let padded = padded.file_checksum(0).unwrap();
        assert!(padded.is_some());
        assert_eq!(padded, full.file_checksum(0).unwrap());
    }

    #[test]
    fn corrupt_page_is_suspect_and_reported_after_recheck() {
        // A page with a wrong checksum: not new (pd_upper != 0), pd_lsn 0.
        let mut page = vec![0u8; BLCKSZ];
        page[14] = 0x40;
        page[8] = 0x12; // a stored checksum that will not match
        let files = [entry("base/5/16384", BLCKSZ as u64 * 2)];
        let pv = PageVerification {
            start_lsn: u64::MAX,
            blocks_per_segment: 131072,
        };
        let integrity = Integrity::new(&files, None, Some(pv), 0);
        let mut data = page.clone();
        data.extend_from_slice(&[0u8; BLCKSZ]); // a new page: skipped
        let suspects = integrity
            .observe(0, &files[0], 0, data.len() as u64, &data)
            .unwrap();
        assert_eq!(suspects.len(), 1);
        assert_eq!(suspects[0].offset, 0);
        integrity.recheck(&files[0].path, &suspects[0], Some(&page));
        let failures = integrity.page_failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].block, 0);
        assert_eq!(failures[0].stored, 0x12);
        // A re-read that finds a good (here: new) page clears the suspicion.
        integrity.recheck(&files[0].path, &suspects[0], Some(&[0u8; BLCKSZ]));
        assert_eq!(integrity.page_failures().len(), 1);
    }
}
