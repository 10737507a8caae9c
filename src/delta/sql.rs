//! The SQL a `--delta` run sends, in one place (the statements that read
//! and back up are in the server and reader modules).

/// sha256 of each 8 kB block ([`super::BLOCK`]) of each range, in one array
/// per range; NULL when the file is gone. The range is read once, then
/// sliced. `sha256` needs PostgreSQL 11 ([`super::MINIMUM_VERSION_FOR_SHA256`]).
pub(super) const HASH_BLOCKS: &str = "SELECT t.n, CASE WHEN r.d IS NOT NULL THEN ARRAY( \
        SELECT sha256(substring(r.d FROM b * 8192 + 1 FOR 8192)) \
        FROM generate_series(0, (length(r.d) - 1) / 8192) AS b ORDER BY b) END \
    FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS t(p, o, l, n), \
    LATERAL (SELECT pg_read_binary_file(t.p, t.o, t.l, true) AS d) AS r";

/// Seconds since the epoch of a timestamp the server wrote, read by the
/// server (backup_label's START TIME carries its log_timezone abbreviation,
/// which only it knows for sure).
pub(super) const EPOCH_OF_TIMESTAMP: &str =
    "SELECT extract(epoch FROM $1::text::timestamptz)::int8";

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_blocks_of_the_comparison_size() {
        let block = format!("FOR {}", super::super::BLOCK);
        assert!(super::HASH_BLOCKS.contains(&block));
    }
}
