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
use postgres::{Client, Statement};

use crate::bail_with;
use crate::error::Exit;
use crate::server::disable_timeouts;
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

/// The rows of one request, received but not yet handled.
pub struct Fetched {
    rows: Vec<postgres::Row>,
    compressed: bool,
    options: Arc<ReadOptions>,
}

impl Fetched {
    /// Call `sink(i, bytes)` for each range, as [`Reader::read`] describes;
    /// `inflated` is a scratch buffer for compressed rows.
    pub fn deliver(
        &self,
        inflated: &mut Vec<u8>,
        mut sink: impl FnMut(usize, Option<&[u8]>) -> Result<()>,
    ) -> Result<()> {
        for row in &self.rows {
            let n: i64 = row.get(0);
            let index = usize::try_from(n - 1)
                .ok()
                .filter(|&i| i < self.rows.len())
                .context("bad range number")?;
            let wire = row.get::<_, Option<&[u8]>>(1);
            let data = match wire {
                Some(z) if self.compressed => {
                    inflated.clear();
                    flate2::read::ZlibDecoder::new(z)
                        .read_to_end(inflated)
                        .context("corrupt compressed data from the server")?;
                    Some(inflated.as_slice())
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
        Ok(())
    }
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

    /// Read `ranges`; `sink(i, bytes)` is called once per range with its
    /// index and the bytes (fewer than asked if the file shrank, `None` if it
    /// vanished). Uncompressed, the bytes borrow the protocol buffer.
    pub fn read(
        &mut self,
        ranges: &[Range<'_>],
        sink: impl FnMut(usize, Option<&[u8]>) -> Result<()>,
    ) -> Result<()> {
        let fetched = self.fetch(ranges)?;
        fetched.deliver(&mut self.inflated, sink)
    }

    /// The network half of [`read`](Self::read): send the request and
    /// receive every row. The result can be handed to another thread, which
    /// writes it while this session already fetches the next request.
    pub fn fetch(&mut self, ranges: &[Range<'_>]) -> Result<Fetched> {
        let paths: Vec<&str> = ranges.iter().map(|r| r.0).collect();
        let offsets: Vec<i64> = ranges.iter().map(|r| r.1 as i64).collect();
        let lens: Vec<i64> = ranges.iter().map(|r| r.2 as i64).collect();
        if let Some(t) = &self.options.throttle {
            t.acquire(ranges.iter().map(|r| r.2).sum());
        }
        debug!(
            "read {} range(s), first {}@{}+{}",
            ranges.len(),
            paths[0],
            offsets[0],
            lens[0]
        );
        let rows = self
            .client
            .query(&self.statement, &[&paths, &offsets, &lens])
            .with_context(|| format!("could not read {} from the server", paths[0]))?;
        if rows.len() != ranges.len() {
            anyhow::bail!(
                "asked for {} ranges, the server returned {}",
                ranges.len(),
                rows.len()
            );
        }
        Ok(Fetched {
            rows,
            compressed: self.compressed,
            options: Arc::clone(&self.options),
        })
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}
