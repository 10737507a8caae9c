//! What PostgreSQL itself defines and the copy must match: the server
//! versions where things changed, global/pg_control, timelines and WAL file
//! names. Nothing here talks to a server.

pub mod pg_control;
pub mod timeline;
pub mod version;
pub mod wal_names;

/// PostgreSQL's page size (`BLCKSZ`, 8 kB unless the server was built
/// otherwise): the unit of page checksums, of --delta's comparison and of
/// --chunk-size. A server built with another block size is copied but its
/// pages are not verified (the copy reads `block_size` and skips).
pub const BLCKSZ: usize = 8192;

/// A WAL location as a byte position: the copy computes segments and
/// ranges with it. `postgres::types::PgLsn` reads, sends and prints it
/// (`X/Y`).
pub type Lsn = u64;

/// An LSN written as text (`%X/%X`, each half at most 8 hex digits: 19
/// pads the low half), as PostgreSQL's `pg_lsn_in` reads it, for what
/// comes from files (history files, manifests, labels). `PgLsn`'s own
/// parser also takes a longer low half and carries it into the high one.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (hi, lo) = text.split_once('/')?;
    let half = |h: &str| match h.len() {
        1..=8 => u32::from_str_radix(h, 16).ok(),
        _ => None,
    };
    Some((u64::from(half(hi)?) << 32) | u64::from(half(lo)?))
}

#[cfg(test)]
mod tests {
    use postgres::types::PgLsn;

    /// The LSNs the server prints (and history files hold) read and print
    /// as [`Lsn`] byte positions.
    #[test]
    fn lsns_read_and_print_as_postgresql_does() {
        let parse = super::parse_lsn;
        assert_eq!(parse("0/3000028"), Some(0x3000028));
        assert_eq!(parse("0/03000028"), Some(0x3000028), "PostgreSQL 19 pads");
        assert_eq!(parse("0/123456789"), None);
        assert_eq!(parse("1/0000A0"), Some((1 << 32) | 0xA0));
        assert_eq!(PgLsn::from((0x1F << 32) | 0xABC).to_string(), "1F/ABC");
        assert_eq!(PgLsn::from(0).to_string(), "0/0");
        assert!(parse("nonsense").is_none());
    }
}
