//! global/pg_control, read so that the copy never holds a torn one.
//!
//! The server rewrites pg_control in place (every checkpoint; on a standby
//! every restartpoint and minimum-recovery-point update), and a read may see
//! half of the old and half of the new contents. The copy starts from this
//! file, so it is checked as PostgreSQL itself checks it: a CRC32C over the
//! bytes of ControlFileData before its `crc` field, stored right after them.
//! A read that fails the check is repeated a few times; one that never
//! passes fails the backup.

use std::time::Duration;

use anyhow::Result;
use log::{debug, warn};

use crate::bail_with;
use crate::error::Exit;

/// How often pg_control is read before the backup gives up, and the pause
/// between reads (the server's rewrite is a single 8 kB write: it is over
/// long before the next try).
const ATTEMPTS: u32 = 5;
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// ControlFileData's layout by major version: its PG_CONTROL_VERSION (the
/// u32 after the u64 system identifier) and the offset of its `crc` field,
/// which moves as fields come and go (11 dropped prevCheckPoint, 18 added
/// default_char_signedness). Found on each major's initdb output on x86-64;
/// the files are in tests/data/pg_control. None for a major we do not know.
fn layout(major: u32) -> Option<(u32, usize)> {
    Some(match major {
        10 => (1002, 288),
        11 => (1100, 280),
        12 => (1201, 288),
        13..=16 => (1300, 288),
        17 => (1700, 288),
        18 => (1800, 292),
        _ => return None,
    })
}

/// Why these bytes are not a consistent pg_control of `major`, if they are
/// not; None also for a major whose layout we do not know.
fn inconsistency(bytes: &[u8], major: u32) -> Option<String> {
    let (version, crc_at) = layout(major)?;
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let (Some(found_version), Some(stored)) = (u32_at(8), u32_at(crc_at)) else {
        return Some(format!("it is only {} bytes long", bytes.len()));
    };
    if found_version != version {
        return Some(format!(
            "it says pg_control version {found_version}, PostgreSQL {major} writes {version}"
        ));
    }
    let computed = crc32c::crc32c(&bytes[..crc_at]);
    (computed != stored)
        .then(|| format!("its CRC is {stored:08x}, its contents give {computed:08x}"))
}

/// pg_control as `read` returns it, read again while its CRC does not match
/// (the server was rewriting it); fails the backup if no read is consistent.
pub fn read_consistent(major: u32, mut read: impl FnMut() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    if layout(major).is_none() {
        warn!("the layout of pg_control of PostgreSQL {major} is unknown: it is copied unchecked");
        return read();
    }
    let mut why = String::new();
    for attempt in 1..=ATTEMPTS {
        let bytes = read()?;
        match inconsistency(&bytes, major) {
            None => return Ok(bytes),
            Some(w) => {
                debug!("global/pg_control, read {attempt} of {ATTEMPTS}: {w}");
                why = w;
            }
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(RETRY_DELAY);
        }
    }
    bail_with!(
        Exit::Backup,
        "global/pg_control was read {ATTEMPTS} times and never consistently ({why}): \
         the server's control file is damaged or rewritten without pause"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 512 bytes of global/pg_control as each major's initdb wrote
    /// it (the rest of the 8 kB file is zeros).
    fn real(major: u32) -> Vec<u8> {
        let head: &[u8] = match major {
            10 => include_bytes!("../../tests/data/pg_control/pg10.head"),
            11 => include_bytes!("../../tests/data/pg_control/pg11.head"),
            12 => include_bytes!("../../tests/data/pg_control/pg12.head"),
            13 => include_bytes!("../../tests/data/pg_control/pg13.head"),
            14 => include_bytes!("../../tests/data/pg_control/pg14.head"),
            15 => include_bytes!("../../tests/data/pg_control/pg15.head"),
            16 => include_bytes!("../../tests/data/pg_control/pg16.head"),
            17 => include_bytes!("../../tests/data/pg_control/pg17.head"),
            18 => include_bytes!("../../tests/data/pg_control/pg18.head"),
            _ => unreachable!(),
        };
        let mut file = head.to_vec();
        file.resize(8192, 0);
        file
    }

    #[test]
    fn real_control_files_of_every_major_pass() {
        for major in 10..=18 {
            assert_eq!(
                inconsistency(&real(major), major),
                None,
                "PostgreSQL {major}"
            );
        }
    }

    #[test]
    fn any_changed_byte_before_the_crc_is_caught() {
        for major in 10..=18 {
            let (_, crc_at) = layout(major).unwrap();
            for at in [0, 16, crc_at / 2, crc_at - 1, crc_at, crc_at + 3] {
                let mut torn = real(major);
                torn[at] ^= 0x40;
                let why = inconsistency(&torn, major)
                    .unwrap_or_else(|| panic!("PostgreSQL {major}: byte {at} changed unnoticed"));
                assert!(why.contains("CRC") || why.contains("version"), "{why}");
            }
            // Bytes after the CRC (padding) are not covered, as in PostgreSQL.
            let mut padded = real(major);
            padded[4096] = 1;
            assert_eq!(inconsistency(&padded, major), None);
        }
    }

    #[test]
    fn a_file_of_another_major_or_too_short_is_caught() {
        assert!(
            inconsistency(&real(11), 12)
                .unwrap()
                .contains("version 1100")
        );
        assert!(inconsistency(&real(18), 17).is_some());
        assert!(
            inconsistency(&real(15)[..100], 15)
                .unwrap()
                .contains("100 bytes")
        );
        assert_eq!(
            inconsistency(&[], 19),
            None,
            "unknown majors are not judged"
        );
    }

    #[test]
    fn a_torn_read_is_repeated_until_it_is_consistent() {
        let mut torn = real(16);
        torn[40] ^= 1;
        let mut reads = vec![real(16), torn.clone(), torn];
        let got = read_consistent(16, || Ok(reads.pop().unwrap())).unwrap();
        assert_eq!(got, real(16));
        assert!(reads.is_empty(), "read until consistent, and no more");
    }

    #[test]
    fn a_never_consistent_file_fails_the_backup() {
        let mut torn = real(15);
        torn[100] ^= 1;
        let mut reads = 0;
        let err = read_consistent(15, || {
            reads += 1;
            Ok(torn.clone())
        })
        .unwrap_err();
        assert_eq!(reads, ATTEMPTS);
        assert_eq!(crate::error::exit_of(&err), Exit::Backup);
        assert!(err.to_string().contains("never consistently"), "{err}");
    }
}
