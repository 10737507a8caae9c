//! The bytes of an `INCREMENTAL.` file.
//!
//! Written by `sendFile()` (src/backend/backup/basebackup.c), read by
//! `make_incremental_rfile()` (src/bin/pg_combinebackup/reconstruct.c). All integers are
//! 4 bytes in the server's byte order (little-endian here), in this order (note: the comment
//! of `GetIncrementalHeaderSize` names them in another order, the code writes this one):
//!
//! | offset | field |
//! | --- | --- |
//! | 0 | magic `0xd3ae1f0d` |
//! | 4 | number of blocks `n` |
//! | 8 | truncation block length |
//! | 12 | `n` block numbers, relative to the segment, ascending |
//! | 12 + 4n | zero padding up to a multiple of BLCKSZ, only when `n > 0` |
//! | header | the `n` blocks, BLCKSZ each, in the order of the block numbers |
//!
//! So a file with no blocks is exactly 12 bytes; otherwise it is `BLCKSZ * (n + 1)` bytes as
//! long as the block numbers fit in one block (n <= 2045 with 8 kB blocks), more after that
//! (`GetIncrementalHeaderSize`, `GetIncrementalFileSize`). The padding came in PostgreSQL
//! 17 before its release (17.0 already writes it).
//!
//! A block that reads short (the relation was truncated while being copied) ends the data:
//! the server stops reading and zero-fills the rest of the file up to the size it announced
//! in the header of the tar member ("If the file was truncated while we were sending it, pad
//! it with zeros"); WAL replay repairs it. [`assemble`] does the same.

#[cfg(test)]
use anyhow::bail;
use anyhow::{Result, ensure};

use super::{Geometry, INCREMENTAL_MAGIC};

/// A file of the copy made up of another file's blocks: an incremental
/// backup's `INCREMENTAL.<name>` (src/incremental/, PostgreSQL's
/// basebackup.c:sendFile): a header written as it is, then blocks read
/// from the relation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// The listed file the blocks are read from.
    pub source: String,
    /// Its size at listing time.
    pub source_size: u64,
    /// Written at offset 0, not read.
    pub header: Vec<u8>,
    /// (offset here, offset in `source`, length), ascending and adjacent
    /// from the end of the header; no piece of the file crosses one.
    pub extents: Vec<(u64, u64, u64)>,
}

impl Assembled {
    /// The `INCREMENTAL.` file of `header` for the relation file `source`:
    /// the encoded header, then block `i` of the header's list read from
    /// `blocks[i] * BLCKSZ` of `source`, consecutive blocks one extent.
    pub fn new(source: String, source_size: u64, header: &Header, g: Geometry) -> Assembled {
        let blcksz = u64::from(g.blcksz);
        let mut extents: Vec<(u64, u64, u64)> = Vec::new();
        for (i, &b) in header.blocks.iter().enumerate() {
            let (here, there) = (header.block_offset(i, g), u64::from(b) * blcksz);
            match extents.last_mut() {
                Some(e) if e.0 + e.2 == here && e.1 + e.2 == there => e.2 += blcksz,
                _ => extents.push((here, there, blcksz)),
            }
        }
        Assembled {
            source,
            source_size,
            header: header.encode(g),
            extents,
        }
    }

    /// Size of the file: the header and the blocks.
    pub fn size(&self) -> u64 {
        self.header.len() as u64 + self.extents.iter().map(|e| e.2).sum::<u64>()
    }

    /// Where the bytes at `offset` of this file come from in `source`
    /// (None: in the header).
    pub fn source_offset(&self, offset: u64) -> Option<u64> {
        let i = self.extents.partition_point(|e| e.0 + e.2 <= offset);
        self.extents
            .get(i)
            .filter(|e| e.0 <= offset)
            .map(|e| e.1 + (offset - e.0))
    }
}

/// `GetIncrementalHeaderSize(n)`.
pub fn header_size(n_blocks: u32, g: Geometry) -> u64 {
    let blcksz = u64::from(g.blcksz);
    let mut size = 12 + 4 * u64::from(n_blocks);
    if n_blocks > 0 && size % blcksz != 0 {
        size += blcksz - size % blcksz;
    }
    size
}

/// `GetIncrementalFileSize(n)`: the size of the file, and of its manifest entry.
#[cfg(test)]
pub fn file_size(n_blocks: u32, g: Geometry) -> u64 {
    header_size(n_blocks, g) + u64::from(g.blcksz) * u64::from(n_blocks)
}

/// The header of an incremental file: what goes before the first block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub truncation_block_length: u32,
    /// Relative to the segment, strictly ascending, each below RELSEG_SIZE.
    pub blocks: Vec<u32>,
}

impl Header {
    pub fn new(truncation_block_length: u32, blocks: Vec<u32>, g: Geometry) -> Result<Header> {
        ensure!(
            blocks.len() <= g.relseg_size as usize,
            "{} blocks exceed a segment",
            blocks.len()
        );
        ensure!(
            truncation_block_length <= g.relseg_size,
            "truncation block length {truncation_block_length} in excess of segment size {}",
            g.relseg_size
        );
        ensure!(
            blocks.windows(2).all(|w| w[0] < w[1]),
            "block numbers must be ascending"
        );
        ensure!(
            blocks.last().is_none_or(|b| *b < g.relseg_size),
            "block number beyond the segment"
        );
        Ok(Header {
            truncation_block_length,
            blocks,
        })
    }

    /// The header bytes, padding included.
    pub fn encode(&self, g: Geometry) -> Vec<u8> {
        let n = self.blocks.len() as u32;
        let mut out = Vec::with_capacity(header_size(n, g) as usize);
        out.extend_from_slice(&INCREMENTAL_MAGIC.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&self.truncation_block_length.to_le_bytes());
        for b in &self.blocks {
            out.extend_from_slice(&b.to_le_bytes());
        }
        out.resize(header_size(n, g) as usize, 0);
        out
    }

    /// Where block number `index` of the list starts in the file.
    pub fn block_offset(&self, index: usize, g: Geometry) -> u64 {
        header_size(self.blocks.len() as u32, g) + index as u64 * u64::from(g.blcksz)
    }

    /// The whole file's size.
    #[cfg(test)]
    pub fn file_size(&self, g: Geometry) -> u64 {
        file_size(self.blocks.len() as u32, g)
    }

    /// Reads a header back with `pg_combinebackup`'s checks (`make_incremental_rfile`).
    #[cfg(test)]
    pub fn decode(bytes: &[u8], g: Geometry) -> Result<Header> {
        let word = |i: usize| -> Result<u32> {
            match bytes.get(i * 4..i * 4 + 4) {
                Some(w) => Ok(u32::from_le_bytes(w.try_into().expect("4 bytes"))),
                None => bail!("incremental file too short"),
            }
        };
        let magic = word(0)?;
        ensure!(
            magic == INCREMENTAL_MAGIC,
            "bad incremental magic number (0x{magic:x} not 0x{INCREMENTAL_MAGIC:x})"
        );
        let n = word(1)?;
        ensure!(
            n <= g.relseg_size,
            "block count {n} in excess of segment size {}",
            g.relseg_size
        );
        let tbl = word(2)?;
        ensure!(
            tbl <= g.relseg_size,
            "truncation block length {tbl} in excess of segment size {}",
            g.relseg_size
        );
        let blocks = (0..n as usize)
            .map(|i| word(3 + i))
            .collect::<Result<Vec<u32>>>()?;
        Ok(Header {
            truncation_block_length: tbl,
            blocks,
        })
    }
}

/// The whole file: header, then each block. `read_block(i)` gives the contents of the
/// block at index `i` of the list; a block shorter than BLCKSZ (or `None`) ends the data and
/// zero fills the rest of the file, as the server does after a short read.
#[cfg(test)]
pub fn assemble<'a>(
    header: &Header,
    g: Geometry,
    mut read_block: impl FnMut(usize) -> Option<&'a [u8]>,
) -> Vec<u8> {
    let mut out = header.encode(g);
    let total = header.file_size(g) as usize;
    for i in 0..header.blocks.len() {
        match read_block(i) {
            Some(b) if b.len() == g.blcksz as usize => out.extend_from_slice(b),
            _ => break,
        }
    }
    out.resize(total, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_get_incremental_file_size() {
        let g = Geometry::default();
        assert_eq!(header_size(0, g), 12);
        assert_eq!(file_size(0, g), 12);
        assert_eq!(header_size(1, g), 8192);
        assert_eq!(file_size(1, g), 16384);
        // 2045 block numbers still fit in one header block (12 + 4*2045 = 8192).
        assert_eq!(header_size(2045, g), 8192);
        assert_eq!(header_size(2046, g), 16384);
        // The experiment: INCREMENTAL.16437 with 566 blocks is 4644864 bytes.
        assert_eq!(file_size(566, g), 4644864);
        assert_eq!(file_size(360, g), 2957312);
    }

    #[test]
    fn header_bytes() {
        let g = Geometry::default();
        let h = Header::new(1000, vec![0], g).unwrap();
        let bytes = h.encode(g);
        assert_eq!(bytes.len(), 8192);
        // What PostgreSQL 18 wrote for vac_me (base/5/INCREMENTAL.16455).
        assert_eq!(
            &bytes[..16],
            &[
                0x0d, 0x1f, 0xae, 0xd3, 1, 0, 0, 0, 0xe8, 0x03, 0, 0, 0, 0, 0, 0
            ]
        );
        assert!(bytes[16..].iter().all(|b| *b == 0));
        assert_eq!(Header::decode(&bytes, g).unwrap(), h);
        // No blocks: 12 bytes, no padding.
        let e = Header::new(3289, vec![], g).unwrap().encode(g);
        assert_eq!(e, [0x0d, 0x1f, 0xae, 0xd3, 0, 0, 0, 0, 0xd9, 0x0c, 0, 0]);
    }

    #[test]
    fn refuses_what_pg_combinebackup_refuses() {
        let g = Geometry::default();
        assert!(Header::new(131073, vec![], g).is_err());
        assert!(Header::new(10, vec![3, 3], g).is_err());
        assert!(Header::new(10, vec![131072], g).is_err());
        let mut bad = Header::new(1, vec![], g).unwrap().encode(g);
        bad[0] = 0;
        assert!(
            Header::decode(&bad, g)
                .unwrap_err()
                .to_string()
                .contains("bad incremental magic")
        );
        let mut big = Header::new(1, vec![], g).unwrap().encode(g);
        big[8..12].copy_from_slice(&131073u32.to_le_bytes());
        assert!(Header::decode(&big, g).is_err());
    }

    #[test]
    fn assemble_with_a_short_read() {
        let g = Geometry::default();
        let h = Header::new(10, vec![2, 5, 7], g).unwrap();
        let a = vec![1u8; 8192];
        let b = vec![2u8; 100]; // truncated under us
        let c = vec![3u8; 8192];
        let blocks = [a.as_slice(), b.as_slice(), c.as_slice()];
        let out = assemble(&h, g, |i| Some(blocks[i]));
        assert_eq!(out.len() as u64, h.file_size(g));
        assert_eq!(h.block_offset(0, g), 8192);
        assert!(out[8192..16384].iter().all(|x| *x == 1));
        // The short block and every later one are zeros.
        assert!(out[16384..].iter().all(|x| *x == 0));
    }
}
