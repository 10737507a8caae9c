//! PostgreSQL data page checksums (`storage/checksum_impl.h`) and the rules the server's
//! own base backup (`backup/basebackup.c`, `sendFile()` / `verify_page_checksum()`) uses to
//! decide which pages of which files to verify.
//!
//! All functions are pure and thread-safe.

use crate::pg::BLCKSZ;

/// Number of parallel FNV-1a-style sums.
const N_SUMS: usize = 32;
/// FNV-1a prime.
const FNV_PRIME: u32 = 16_777_619;
/// `checksumBaseOffsets[]`: initial value of each of the 32 sums.
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// Byte offsets in `PageHeaderData`.
const PD_LSN: usize = 0; // PageXLogRecPtr { uint32 xlogid (high half); uint32 xrecoff }
const PD_CHECKSUM: usize = 8; // uint16
const PD_UPPER: usize = 14; // LocationIndex (uint16)

/// `CHECKSUM_COMP`: one FNV-1a round with the extra `>> 17` mixing.
#[inline(always)]
fn comp(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

fn ne_u16(page: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([page[at], page[at + 1]])
}

fn ne_u32(page: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]])
}

/// `pg_checksum_page()`: the checksum a page with block number `blkno` (within its
/// relation, see [`relation_block_number`]) must carry. `pd_checksum` is taken as zero, the
/// page is read as `u32` words in native byte order (pages are written in the server's
/// byte order, so check them on a machine of the same endianness).
///
/// Panics if `page` is not exactly [`BLCKSZ`] bytes.
pub fn page_checksum(page: &[u8], blkno: u32) -> u16 {
    assert_eq!(page.len(), BLCKSZ, "a page is {BLCKSZ} bytes");
    let mut sums = BASE_OFFSETS;
    // The page is a [BLCKSZ / 128][32] array of u32; column j feeds sums[j].
    for (row_no, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        let mut words = [0u32; N_SUMS];
        for (w, bytes) in words.iter_mut().zip(row.chunks_exact(4)) {
            *w = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        if row_no == 0 {
            // Word 2 holds pd_checksum (bytes 8..10) and pd_flags (bytes 10..12).
            // Checksum it with pd_checksum zeroed.
            let b = &row[PD_CHECKSUM..PD_CHECKSUM + 4];
            words[PD_CHECKSUM / 4] = u32::from_ne_bytes([0, 0, b[2], b[3]]);
        }
        for (sum, w) in sums.iter_mut().zip(words) {
            *sum = comp(*sum, w);
        }
    }
    // Two rounds of zeros for additional mixing.
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = comp(*sum, 0);
        }
    }
    let checksum = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((checksum % 65535) + 1) as u16
}

/// Verdict on one page read during the backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageVerdict {
    /// Checksum matches.
    Ok,
    /// `PageIsNew()`: `pd_upper == 0`. The server skips such pages without looking further
    /// (no all-zero test: that is `PageIsVerified()`, used when reading into shared
    /// buffers, not by base backups).
    New,
    /// `pd_lsn >= backup start LSN`: the page was written after the backup started and
    /// may be torn; WAL replay restores it. Skipped.
    NewerThanBackup,
    /// Checksum mismatch: `computed` from the page contents, `stored` in its `pd_checksum`.
    /// The server words it as "checksum verification failed in file \"F\", block B:
    /// calculated {computed:X} but expected {stored:X}". Like the server, re-read the block
    /// once before reporting it.
    Mismatch { computed: u16, stored: u16 },
}

/// Verify one page as the server's base backup does (PostgreSQL 11+):
/// `if (!PageIsNew(page) && PageGetLSN(page) < startptr)` then compare
/// `pg_checksum_page(page, blkno)` with `pd_checksum`.
///
/// Panics if `page` is not exactly [`BLCKSZ`] bytes.
pub fn check_page(page: &[u8], blkno: u32, backup_start_lsn: u64) -> PageVerdict {
    assert_eq!(page.len(), BLCKSZ, "a page is {BLCKSZ} bytes");
    if ne_u16(page, PD_UPPER) == 0 {
        return PageVerdict::New;
    }
    let lsn = (u64::from(ne_u32(page, PD_LSN)) << 32) | u64::from(ne_u32(page, PD_LSN + 4));
    if lsn >= backup_start_lsn {
        return PageVerdict::NewerThanBackup;
    }
    let computed = page_checksum(page, blkno);
    let stored = ne_u16(page, PD_CHECKSUM);
    if computed == stored {
        PageVerdict::Ok
    } else {
        PageVerdict::Mismatch { computed, stored }
    }
}

/// `noChecksumFiles[]`: (name, match as prefix). `config_exec_params` exists only on
/// EXEC_BACKEND builds (Windows servers).
const NO_CHECKSUM_FILES: &[(&str, bool)] = &[
    ("pg_control", false),
    ("pg_filenode.map", false),
    ("pg_internal.init", true),
    ("PG_VERSION", false),
    ("config_exec_params", true),
];

/// Whether the server's base backup would verify the pages of this file
/// (`is_checksummed_file()`): any file under `global/` or `base/`, or inside a tablespace's
/// version directory (`pg_tblspc/<oid>/PG_<major>_<catversion>/...`; the server sees those
/// by their absolute path), except the files of [`NO_CHECKSUM_FILES`] matched on the file
/// name. `relpath` is relative to the data directory, `/`-separated; a leading `./` is
/// ignored. Files the backup leaves out altogether (temporary files, `pgsql_tmp`, unlogged
/// main forks) are the plan's business, not this function's.
///
/// One difference from the server: it does not verify in-place tablespaces (directories
/// inside `pg_tblspc`, a developer option), which it reaches by a relative path; we do.
pub fn is_checksummed_file(relpath: &str) -> bool {
    let relpath = relpath.strip_prefix("./").unwrap_or(relpath);
    let in_tablespace = relpath.starts_with("global/")
        || relpath.starts_with("base/")
        || tablespace_version_dir_file(relpath);
    if !in_tablespace {
        return false;
    }
    let filename = relpath.rsplit('/').next().unwrap_or(relpath);
    !NO_CHECKSUM_FILES.iter().any(|&(name, prefix)| {
        if prefix {
            filename.starts_with(name)
        } else {
            filename == name
        }
    })
}

/// `pg_tblspc/<digits>/PG_.../<something>`.
fn tablespace_version_dir_file(relpath: &str) -> bool {
    let mut parts = relpath.splitn(4, '/');
    parts.next() == Some("pg_tblspc")
        && parts
            .next()
            .is_some_and(|oid| !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_some_and(|v| v.starts_with("PG_"))
        && parts.next().is_some_and(|rest| !rest.is_empty())
}

/// Segment number of a relation file: what follows the first `.` of the file name, read
/// like C's `atoi` (leading digits; 0 if none), 0 without a `.`. The server refuses to
/// verify a file whose name has a `.` but segment number 0.
pub fn segment_number(relpath: &str) -> u32 {
    let filename = relpath.rsplit('/').next().unwrap_or(relpath);
    let Some((_, after)) = filename.split_once('.') else {
        return 0;
    };
    after
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0u32, |n, d| {
            n.wrapping_mul(10).wrapping_add(u32::from(d - b'0'))
        })
}

/// Block number within the relation of block `block_in_file` of the file `relpath`:
/// `block_in_file + segment_number x segment_blocks`, where `segment_blocks` is
/// `segment_size / block_size` (131072 for the default 1 GB segments of 8 kB blocks).
/// Arithmetic wraps like the server's `BlockNumber` (u32).
pub fn relation_block_number(relpath: &str, block_in_file: u32, segment_blocks: u32) -> u32 {
    block_in_file.wrapping_add(segment_number(relpath).wrapping_mul(segment_blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8 kB pages copied from a PostgreSQL 15 cluster initialised with --data-checksums
    /// (after CHECKPOINT and a clean shutdown; pg_checksums --check reported 0 bad).
    /// Name: relation kind and block number within the relation.
    const FIXTURES: &[(&str, &[u8], u32)] = &[
        (
            "heap_blk0",
            include_bytes!("../../tests/data/pages/heap_blk0.page"),
            0,
        ),
        (
            "heap_blk7",
            include_bytes!("../../tests/data/pages/heap_blk7.page"),
            7,
        ),
        (
            "btree_blk1",
            include_bytes!("../../tests/data/pages/btree_blk1.page"),
            1,
        ),
    ];

    fn stored(page: &[u8]) -> u16 {
        u16::from_ne_bytes([page[8], page[9]])
    }

    #[test]
    fn checksums_of_real_pages() {
        for &(name, page, blkno) in FIXTURES {
            assert_eq!(page.len(), BLCKSZ, "{name}");
            assert_eq!(page_checksum(page, blkno), stored(page), "{name}");
            // The block number is part of the checksum.
            assert_ne!(page_checksum(page, blkno + 1), stored(page), "{name}");
            assert_eq!(check_page(page, blkno, u64::MAX), PageVerdict::Ok, "{name}");
        }
    }

    #[test]
    fn pd_checksum_itself_is_not_checksummed() {
        let (_, page, blkno) = FIXTURES[0];
        let mut p = page.to_vec();
        p[8] ^= 0xff;
        p[9] ^= 0x0f;
        assert_eq!(page_checksum(&p, blkno), stored(page));
        // pd_flags (bytes 10..12), in the same word, is.
        let mut p = page.to_vec();
        p[10] ^= 1;
        assert_ne!(page_checksum(&p, blkno), stored(page));
    }

    #[test]
    fn flipped_byte_is_a_mismatch() {
        for &(name, page, blkno) in FIXTURES {
            for at in [20, 100, 4000, BLCKSZ - 1] {
                let mut p = page.to_vec();
                p[at] ^= 0x10;
                let calc = page_checksum(&p, blkno);
                assert_ne!(calc, stored(page), "{name} byte {at}");
                assert_eq!(
                    check_page(&p, blkno, u64::MAX),
                    PageVerdict::Mismatch {
                        computed: calc,
                        stored: stored(page)
                    },
                    "{name} byte {at}"
                );
            }
            // A page moved to the wrong block number is caught too.
            assert!(matches!(
                check_page(page, blkno + 131_072, u64::MAX),
                PageVerdict::Mismatch { .. }
            ));
        }
    }

    #[test]
    fn new_pages_are_skipped() {
        let zero = vec![0u8; BLCKSZ];
        assert_eq!(check_page(&zero, 0, u64::MAX), PageVerdict::New);
        assert_eq!(check_page(&zero, 5, 0), PageVerdict::New);
        // PageIsNew only looks at pd_upper, exactly like basebackup.c.
        let mut p = FIXTURES[1].1.to_vec();
        p[14] = 0;
        p[15] = 0;
        p[5000] ^= 0xff;
        assert_eq!(check_page(&p, 7, u64::MAX), PageVerdict::New);
    }

    #[test]
    fn pages_newer_than_backup_start_are_skipped() {
        for &(name, page, blkno) in FIXTURES {
            let lsn = (u64::from(u32::from_ne_bytes(page[0..4].try_into().unwrap())) << 32)
                | u64::from(u32::from_ne_bytes(page[4..8].try_into().unwrap()));
            assert!(lsn > 0, "{name}");
            assert_eq!(check_page(page, blkno, lsn), PageVerdict::NewerThanBackup);
            assert_eq!(
                check_page(page, blkno, lsn - 1),
                PageVerdict::NewerThanBackup
            );
            assert_eq!(check_page(page, blkno, lsn + 1), PageVerdict::Ok, "{name}");
            // Even a torn page is not judged when its LSN is at or past the start.
            let mut p = page.to_vec();
            p[3000] ^= 1;
            assert_eq!(check_page(&p, blkno, lsn), PageVerdict::NewerThanBackup);
            assert!(matches!(
                check_page(&p, blkno, lsn + 1),
                PageVerdict::Mismatch { .. }
            ));
        }
    }

    #[test]
    fn which_files_are_checksummed() {
        for yes in [
            "base/5/16384",
            "./base/5/16384",
            "base/5/16384.1",
            "base/5/16384_fsm",
            "base/5/16384_vm",
            "base/5/16384_init",
            "global/1262",
            "global/1262_fsm",
            "pg_tblspc/16385/PG_15_202209061/5/16386",
            "pg_tblspc/16385/PG_15_202209061/5/16386.3",
        ] {
            assert!(is_checksummed_file(yes), "{yes}");
        }
        for no in [
            "global/pg_control",
            "global/pg_filenode.map",
            "global/pg_internal.init",
            "base/5/pg_filenode.map",
            "base/5/pg_internal.init",
            "base/5/pg_internal.init.12345",
            "base/5/PG_VERSION",
            "PG_VERSION",
            "postgresql.conf",
            "pg_xact/0000",
            "pg_multixact/offsets/0000",
            "pg_wal/000000010000000000000001",
            "pg_tblspc/16385",
            "pg_tblspc/16385/PG_15_202209061",
            "pg_tblspc/16385/other/5/16386",
            "pg_tblspc/x/PG_15_202209061/5/16386",
            "pg_tblspc/16385/PG_15_202209061/5/PG_VERSION",
            "pg_tblspc/16385/PG_15_202209061/5/pg_filenode.map",
            "baseball/5/1",
            "globals/1",
        ] {
            assert!(!is_checksummed_file(no), "{no}");
        }
    }

    #[test]
    fn block_numbers_include_the_segment() {
        assert_eq!(segment_number("base/5/16384"), 0);
        assert_eq!(segment_number("base/5/16384.1"), 1);
        assert_eq!(segment_number("base/5/16384_fsm.12"), 12);
        assert_eq!(segment_number("base/5/16384.x"), 0);
        assert_eq!(relation_block_number("base/5/16384", 7, 131_072), 7);
        assert_eq!(relation_block_number("base/5/16384.1", 0, 131_072), 131_072);
        assert_eq!(
            relation_block_number("pg_tblspc/1/PG_15_1/5/16384.3", 10, 131_072),
            3 * 131_072 + 10
        );
        // 2 GB segments of 8 kB blocks.
        assert_eq!(relation_block_number("base/5/1.2", 1, 262_144), 524_289);
        // The largest relation (2^32 - 1 blocks) stays within u32.
        assert_eq!(
            relation_block_number("base/5/1.32767", 131_071, 131_072),
            u32::MAX
        );
    }
}
