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

#[cfg(test)]
mod tests {
    use postgres::types::PgLsn;

    /// The LSNs the server prints (and history files hold) read and print
    /// as [`Lsn`] byte positions.
    #[test]
    fn lsns_read_and_print_as_postgresql_does() {
        let parse = |s: &str| s.parse::<PgLsn>().ok().map(u64::from);
        assert_eq!(parse("0/3000028"), Some(0x3000028));
        assert_eq!(parse("1/0000A0"), Some((1 << 32) | 0xA0));
        assert_eq!(PgLsn::from((0x1F << 32) | 0xABC).to_string(), "1F/ABC");
        assert_eq!(PgLsn::from(0).to_string(), "0/0");
        assert!(parse("nonsense").is_none());
    }
}
