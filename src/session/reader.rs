//! Reading byte ranges of server files over SQL: the one hot path.
//!
//! A [`Reader`] is a session with a prepared statement that reads several
//! ranges per round trip with `pg_read_binary_file`, results in binary
//! format, so bytes go from the protocol buffer to the file without another
//! copy. With wire compression (the original script's headline) each range
//! is zlib-compressed on the server by a session-temporary PL/Python
//! function, created in `pg_temp` so nothing outlives the session, and
//! inflated here with flate2.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use clap::ValueEnum;
use log::debug;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Statement};

use crate::bail_with;
use crate::error::Exit;
use crate::session::server::disable_timeouts;
use crate::throttle::Throttle;

/// `--wire-compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireCompression {
    /// zlib where the server can do it and the link is not local (a unix
    /// socket or loopback gains nothing and pays server CPU).
    Auto,
    /// zlib, or fail when the server cannot do it.
    Zlib,
    None,
}

/// What every reader of a run shares: the rate limit, the compression
/// choice and the byte counters.
#[derive(Debug)]
pub struct ReadOptions {
    pub throttle: Option<Throttle>,
    pub compression: WireCompression,
    /// Bytes as they crossed the wire, and as they were after inflating.
    pub wire_bytes: AtomicU64,
    pub data_bytes: AtomicU64,
}

impl ReadOptions {
    pub fn new(throttle: Option<Throttle>, compression: WireCompression) -> Arc<ReadOptions> {
        Arc::new(ReadOptions {
            throttle,
            compression,
            wire_bytes: AtomicU64::new(0),
            data_bytes: AtomicU64::new(0),
        })
    }
}

/// One byte range to read: (path relative to the data directory, offset, length).
pub type Range<'a> = (&'a str, u64, u64);

const PLAIN_READ: &str = "SELECT t.n, pg_read_binary_file(t.p, t.o, t.l, true) \
    FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS t(p, o, l, n)";

const COMPRESSED_READ: &str = "SELECT t.n, pg_temp.pgbb_read_zlib(t.p, t.o, t.l) \
    FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS t(p, o, l, n)";

/// Reads a range and deflates it on the server; NULL when the file is gone,
/// as pg_read_binary_file(..., missing_ok => true). Relative paths resolve
/// in the data directory, the backend's working directory.
const CREATE_ZLIB_FUNCTION: &str =
    "CREATE FUNCTION pg_temp.pgbb_read_zlib(p text, o bigint, l bigint) \
    RETURNS bytea LANGUAGE plpython3u AS $fn$
import zlib
try:
    f = open(p, 'rb')
except FileNotFoundError:
    return None
with f:
    f.seek(o)
    return zlib.compress(f.read(l), 1)
$fn$";

/// Why this session cannot compress on the server, if it cannot.
fn zlib_obstacle(client: &mut Client) -> Result<Option<&'static str>> {
    let sql = "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                      EXISTS (SELECT 1 FROM pg_language WHERE lanname = 'plpython3u')";
    debug!("SQL: {sql}");
    let row = client.query_one(sql, &[])?;
    Ok(match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
        (_, false) => Some("the database has no plpython3u language (CREATE EXTENSION plpython3u)"),
        (false, _) => Some("only a superuser may create a PL/Python function"),
        _ => None,
    })
}

fn is_local_link(client: &mut Client) -> Result<bool> {
    let sql = "SELECT coalesce(host(inet_client_addr()) IN ('127.0.0.1', '::1'), true)";
    Ok(client.query_one(sql, &[])?.get(0))
}

pub struct Reader {
    client: Client,
    statement: Statement,
    compressed: bool,
    options: Arc<ReadOptions>,
    /// Inflated bytes of the current row, reused across rows.
    inflated: Vec<u8>,
}

impl Reader {
    pub fn new(mut client: Client, options: Arc<ReadOptions>) -> Result<Reader> {
        disable_timeouts(&mut client)?;
        let compressed = match options.compression {
            WireCompression::None => false,
            WireCompression::Zlib => match zlib_obstacle(&mut client)? {
                Some(why) => bail_with!(
                    Exit::Server,
                    "--wire-compression zlib is not possible here: {why}"
                ),
                None => true,
            },
            WireCompression::Auto => {
                zlib_obstacle(&mut client)?.is_none() && !is_local_link(&mut client)?
            }
        };
        if compressed {
            debug!("SQL: {CREATE_ZLIB_FUNCTION}");
            client
                .batch_execute(CREATE_ZLIB_FUNCTION)
                .context("could not create the compressing read function")?;
        }
        let sql = if compressed {
            COMPRESSED_READ
        } else {
            PLAIN_READ
        };
        debug!("SQL: PREPARE {sql}");
        let statement = client
            .prepare(sql)
            .context("could not prepare the read statement")?;
        Ok(Reader {
            client,
            statement,
            compressed,
            options,
            inflated: Vec::new(),
        })
    }

    /// Whether this session compresses on the server.
    pub fn compressed(&self) -> bool {
        self.compressed
    }

    /// Read `ranges` in one request; `sink(i, bytes)` is called for each
    /// range as its row arrives, with the range's index and its bytes (fewer
    /// than asked if the file shrank, `None` if it vanished). Rows are
    /// handled as they come off the socket, so a request of many rows never
    /// sits in memory whole and the server goes on sending while we write.
    /// Uncompressed, the bytes borrow the protocol buffer.
    ///
    /// Keep each range small (plan::MAX_ROW): the server builds every row
    /// in fresh buffers, and rows of megabytes cost it page faults and three
    /// times the CPU (shared/postgres-facts.md, section 3).
    ///
    /// If the request fails midway, the ranges already handed to `sink`
    /// stay handed: a caller that retries asks only for the others.
    pub fn read(
        &mut self,
        ranges: &[Range<'_>],
        mut sink: impl FnMut(usize, Option<&[u8]>) -> Result<()>,
    ) -> Result<()> {
        let paths: Vec<&str> = ranges.iter().map(|r| r.0).collect();
        let offsets: Vec<i64> = ranges.iter().map(|r| r.1 as i64).collect();
        let lens: Vec<i64> = ranges.iter().map(|r| r.2 as i64).collect();
        if let Some(t) = &self.options.throttle {
            t.acquire(lens.iter().map(|&l| l as u64).sum());
        }
        debug!(
            "read {} range(s), first {}@{}+{}",
            ranges.len(),
            paths[0],
            offsets[0],
            lens[0]
        );
        let context = || format!("could not read {} from the server", paths[0]);
        let params: [&(dyn ToSql + Sync); 3] = [&paths, &offsets, &lens];
        let mut rows = self
            .client
            .query_raw(&self.statement, params)
            .with_context(context)?;
        let mut received = 0;
        while let Some(row) = rows.next().with_context(context)? {
            received += 1;
            let n: i64 = row.get(0);
            let index = usize::try_from(n - 1)
                .ok()
                .filter(|&i| i < ranges.len())
                .context("bad range number")?;
            let wire = row.get::<_, Option<&[u8]>>(1);
            let data = match wire {
                Some(z) if self.compressed => {
                    self.inflated.clear();
                    flate2::read::ZlibDecoder::new(z)
                        .read_to_end(&mut self.inflated)
                        .context("corrupt compressed data from the server")?;
                    Some(self.inflated.as_slice())
                }
                other => other,
            };
            let counted = |b: Option<&[u8]>| b.map_or(0, |b| b.len() as u64);
            self.options
                .wire_bytes
                .fetch_add(counted(wire), Ordering::Relaxed);
            self.options
                .data_bytes
                .fetch_add(counted(data), Ordering::Relaxed);
            sink(index, data)?;
        }
        if received != ranges.len() {
            anyhow::bail!(
                "asked for {} ranges, the server returned {received}",
                ranges.len()
            );
        }
        Ok(())
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}
