//! Reading byte ranges of server files over SQL: the one hot path.
//!
//! A [`Reader`] is a session with a prepared statement that reads several
//! ranges per round trip with `pg_read_binary_file`, results in binary
//! format, so bytes go from the protocol buffer to the file without another
//! copy. With wire compression (the original script's headline) each range
//! is zlib-compressed on the server by a session-temporary PL/Python
//! function ([`sql::CREATE_ZLIB_FUNCTION`]) and inflated here with flate2.

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
use crate::session::sql;
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

/// The three arrays a request of `ranges` sends (the `unnest($1, $2, $3)`
/// of the read statements): paths, offsets, lengths.
pub struct RequestArrays<'a> {
    pub paths: Vec<&'a str>,
    pub offsets: Vec<i64>,
    pub lens: Vec<i64>,
}

impl<'a> RequestArrays<'a> {
    pub fn new(ranges: &[Range<'a>]) -> Self {
        RequestArrays {
            paths: ranges.iter().map(|r| r.0).collect(),
            offsets: ranges.iter().map(|r| r.1 as i64).collect(),
            lens: ranges.iter().map(|r| r.2 as i64).collect(),
        }
    }

    /// The statement's parameters $1, $2, $3.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.paths, &self.offsets, &self.lens]
    }
}

/// Why this session cannot compress on the server, if it cannot.
fn zlib_obstacle(client: &mut Client) -> Result<Option<&'static str>> {
    let sql = sql::ZLIB_OBSTACLE;
    debug!("SQL: {sql}");
    let row = client.query_one(sql, &[])?;
    Ok(match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
        (_, false) => Some("the database has no plpython3u language (CREATE EXTENSION plpython3u)"),
        (false, _) => Some("only a superuser may create a PL/Python function"),
        _ => None,
    })
}

fn is_local_link(client: &mut Client) -> Result<bool> {
    Ok(client.query_one(sql::IS_LOCAL_LINK, &[])?.get(0))
}

pub struct Reader {
    client: Client,
    statement: Statement,
    compressed: bool,
    /// The session comes over a unix socket or loopback: its backend runs
    /// on this host's CPUs.
    shares_host: bool,
    options: Arc<ReadOptions>,
    /// Inflated bytes of the current row, reused across rows.
    inflated: Vec<u8>,
}

impl Reader {
    pub fn new(mut client: Client, options: Arc<ReadOptions>) -> Result<Reader> {
        disable_timeouts(&mut client)?;
        let shares_host = is_local_link(&mut client)?;
        let compressed = match options.compression {
            WireCompression::None => false,
            WireCompression::Zlib => match zlib_obstacle(&mut client)? {
                Some(why) => bail_with!(
                    Exit::Server,
                    "--wire-compression zlib is not possible here: {why}"
                ),
                None => true,
            },
            WireCompression::Auto => !shares_host && zlib_obstacle(&mut client)?.is_none(),
        };
        if compressed {
            debug!("SQL: {}", sql::CREATE_ZLIB_FUNCTION);
            client
                .batch_execute(sql::CREATE_ZLIB_FUNCTION)
                .context("could not create the compressing read function")?;
        }
        let sql = if compressed {
            sql::COMPRESSED_READ
        } else {
            sql::PLAIN_READ
        };
        debug!("SQL: PREPARE {sql}");
        let statement = client
            .prepare(sql)
            .context("could not prepare the read statement")?;
        Ok(Reader {
            client,
            statement,
            compressed,
            shares_host,
            options,
            inflated: Vec::new(),
        })
    }

    /// Whether this session compresses on the server.
    pub fn compressed(&self) -> bool {
        self.compressed
    }

    /// Whether the server runs on this host (a unix socket or loopback).
    pub fn shares_host(&self) -> bool {
        self.shares_host
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
    /// times the CPU (measured on 15: 8 MB rows 0.70-0.85 CPU s and 294k
    /// page faults per 384 MB, rows of 64 kB-1 MB 0.26-0.29 s and none).
    ///
    /// If the request fails midway, the ranges already handed to `sink`
    /// stay handed: a caller that retries asks only for the others.
    pub fn read(
        &mut self,
        ranges: &[Range<'_>],
        mut sink: impl FnMut(usize, Option<&[u8]>) -> Result<()>,
    ) -> Result<()> {
        let request = RequestArrays::new(ranges);
        if let Some(t) = &self.options.throttle {
            t.acquire(ranges.iter().map(|r| r.2).sum());
        }
        let (path, offset, len) = ranges[0];
        debug!(
            "read {} range(s), first {path}@{offset}+{len}",
            ranges.len()
        );
        let context = || format!("could not read {path} from the server");
        let mut rows = self
            .client
            .query_raw(&self.statement, request.params())
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

    /// A whole small file into memory (pg_control: 8 kB), at `size` bytes
    /// (zeros for what it lacks).
    pub fn read_whole(&mut self, path: &str, size: u64) -> Result<Vec<u8>> {
        let mut out = None;
        self.read(&[(path, 0, size)], |_, data| {
            out = data.map(<[u8]>::to_vec);
            Ok(())
        })?;
        let mut bytes = out.with_context(|| format!("{path} vanished during the backup"))?;
        bytes.resize(size as usize, 0);
        Ok(bytes)
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}
