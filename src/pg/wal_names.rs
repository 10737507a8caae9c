//! The names of the files in pg_wal: segments (`<TLI><log><seg>`, 24 hex
//! digits) and timeline history files (`<TLI>.history`), as xlog_internal.h
//! builds them.

/// A segment file name: timeline, then the segment number split in two.
pub fn segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_size;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// (timeline, segment number) of a segment file name, None for other files.
pub fn parse_segment_name(name: &str, segment_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((tli, log * (0x1_0000_0000 / segment_size) + seg))
}

pub fn is_history_file(name: &str) -> bool {
    name.len() == 16
        && name.ends_with(".history")
        && name[..8].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let size = 16 * 1024 * 1024;
        assert_eq!(segment_name(1, 1, size), "000000010000000000000001");
        assert_eq!(segment_name(2, 0x1_23, size), "000000020000000100000023");
        assert_eq!(
            parse_segment_name("000000020000000100000023", size),
            Some((2, 0x123))
        );
        assert_eq!(
            parse_segment_name("000000010000000000000001.partial", size),
            None
        );
        assert_eq!(parse_segment_name("00000002.history", size), None);
        let big = 1024 * 1024 * 1024;
        assert_eq!(segment_name(1, 5, big), "000000010000000100000001");
        assert_eq!(
            parse_segment_name("000000010000000100000001", big),
            Some((1, 5))
        );
        assert!(is_history_file("00000002.history"));
        assert!(!is_history_file("archive_status"));
    }
}
