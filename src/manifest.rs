//! `backup_manifest` that PostgreSQL's `pg_verifybackup` accepts.
//!
//! Two parts:
//!
//! * [`FileChecksum`]: the checksum of one file whose byte ranges arrive out of order from
//!   several worker threads. CRC-32C pieces are combined exactly, so nothing is buffered;
//!   SHA-2 cannot be combined, so bytes that arrive ahead of the first missing byte are held
//!   until the gap is filled (see "Memory bound" on [`FileChecksum`]).
//! * [`ManifestWriter`]: collects one entry per file (from any thread) and renders the
//!   manifest exactly as the server's `backup_manifest.c` does: same line breaks, spacing,
//!   `escape_json` escaping, `Encoded-Path` for names that are not UTF-8, `Last-Modified` in
//!   GMT, and the closing `Manifest-Checksum` (SHA-256 of every byte before its line).
//!
//! Layout written by the server (PostgreSQL 13-16 write version 1 and no System-Identifier):
//!
//! ```text
//! { "PostgreSQL-Backup-Manifest-Version": 2,
//! "System-Identifier": 7300000000000000000,
//! "Files": [
//! { "Path": "backup_label", "Size": 225, "Last-Modified": "2024-01-02 03:04:05 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "8a744722" },
//! { "Encoded-Path": "626164ff", "Size": 5, "Last-Modified": "2024-01-02 03:04:05 GMT" }
//! ],
//! "WAL-Ranges": [
//! { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000138" }
//! ],
//! "Manifest-Checksum": "<64 hex digits>"}
//! ```

// Until backup.rs/copy.rs use every item; remove once wired in.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// Per-file checksum algorithm of the manifest (`--manifest-checksums` of the server's
/// pg_basebackup). The server's default is CRC32C.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    /// No per-file checksum: entries carry no `Checksum-Algorithm`/`Checksum` fields at all,
    /// and pg_verifybackup checks only presence and size.
    None,
    #[default]
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl ChecksumAlgorithm {
    /// Every algorithm, in the order PostgreSQL lists them.
    pub const ALL: [ChecksumAlgorithm; 6] = [
        ChecksumAlgorithm::None,
        ChecksumAlgorithm::Crc32c,
        ChecksumAlgorithm::Sha224,
        ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Sha384,
        ChecksumAlgorithm::Sha512,
    ];

    /// The spelling of `pg_checksum_type_name()` (checksum_helper.c), as written in the
    /// manifest's `Checksum-Algorithm` field. `NONE` is never written: entries of a manifest
    /// without checksums simply have no checksum fields.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::None => "NONE",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Sha224 => "SHA224",
            ChecksumAlgorithm::Sha256 => "SHA256",
            ChecksumAlgorithm::Sha384 => "SHA384",
            ChecksumAlgorithm::Sha512 => "SHA512",
        }
    }

    /// Length of the raw checksum in bytes (the manifest holds twice as many hex digits).
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::None => 0,
            ChecksumAlgorithm::Crc32c => 4,
            ChecksumAlgorithm::Sha224 => 28,
            ChecksumAlgorithm::Sha256 => 32,
            ChecksumAlgorithm::Sha384 => 48,
            ChecksumAlgorithm::Sha512 => 64,
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChecksumAlgorithm {
    type Err = anyhow::Error;

    /// Case-insensitive, as `pg_checksum_parse_type()`: none, crc32c, sha224, sha256,
    /// sha384, sha512.
    fn from_str(s: &str) -> Result<Self> {
        ChecksumAlgorithm::ALL
            .into_iter()
            .find(|alg| alg.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                anyhow!(
                    "unrecognized checksum algorithm \"{s}\" \
                     (expected none, crc32c, sha224, sha256, sha384 or sha512)"
                )
            })
    }
}

/// Checksum of one file whose byte ranges may arrive out of order, from several threads.
///
/// # Thread safety
/// `FileChecksum` is `Send + Sync` with a `Mutex` inside: share it by reference or in an
/// `Arc` and call [`update`](Self::update) from any worker with `&self`; no outer lock is
/// needed. The expensive part (CRC of the piece, SHA-2 compression) runs outside the lock,
/// so a worker never waits for another worker's hashing: a piece that arrives while another
/// thread is hashing is queued, and the hashing thread picks it up.
///
/// # Memory bound (SHA-2 only)
/// CRC32C and NONE never hold data. For SHA-2 the bytes of a piece that starts past the
/// first byte not yet fed (or that arrives while another thread is busy hashing) are held
/// until everything before them has been hashed. Pieces handed over as a `Vec<u8>` are moved
/// in, borrowed pieces are copied, and in-order pieces are hashed straight from the caller's
/// buffer without any copy.
///
/// The held data is at most `(W - 1) x chunk` (plus the piece being hashed) for `W` workers,
/// **provided the scheduler never hands out a chunk of a file more than `W` chunks past the
/// lowest chunk of that file not yet fed** (equivalently: at most `W` chunks of one file are
/// handed out and unfinished at a time, counting chunks that were fetched but are still
/// waiting here). Handing chunks out in file order is not enough on its own: if the worker
/// holding chunk `k` stalls or retries, the others would keep finishing chunks `k+1, k+2, ...`
/// and every one of them would be held. [`held_bytes`](Self::held_bytes) and
/// [`contiguous_bytes`](Self::contiguous_bytes) let the scheduler enforce that window.
pub struct FileChecksum {
    alg: ChecksumAlgorithm,
    size: u64,
    state: Mutex<State>,
}

enum State {
    /// NONE: track only which ranges were fed, to catch gaps and overlaps.
    Coverage(Ranges<()>),
    /// CRC32C: one finished CRC per run of adjacent fed bytes; adjacent runs are merged with
    /// `crc32c_combine` as soon as they touch.
    Crc(Ranges<u32>),
    Sha(Box<ShaState>),
    Finished,
}

struct ShaState {
    /// `None` while a thread hashes outside the lock.
    hasher: Option<Sha2>,
    /// Bytes `[0, claimed)` are hashed or being hashed by the thread that took `hasher`.
    claimed: u64,
    /// Pieces at or past `claimed`, waiting for the bytes before them.
    pending: BTreeMap<u64, Vec<u8>>,
    held: u64,
    peak_held: u64,
}

/// Disjoint half-open byte ranges `start -> (end, value)`, adjacent ranges merged.
struct Ranges<V> {
    map: BTreeMap<u64, (u64, V)>,
}

impl<V: Copy> Ranges<V> {
    fn new() -> Self {
        Ranges {
            map: BTreeMap::new(),
        }
    }

    /// Insert `[start, end)`, merging with touching neighbours through `merge(left, right,
    /// right_len)`. Fails on overlap with a range already present.
    fn insert(
        &mut self,
        start: u64,
        end: u64,
        value: V,
        merge: impl Fn(V, V, u64) -> V,
    ) -> Result<()> {
        let (mut start, mut end, mut value) = (start, end, value);
        if let Some((&s, &(e, _))) = self.map.range(..end).next_back() {
            ensure!(
                e <= start,
                "byte range {start}..{end} overlaps range {s}..{e} already fed"
            );
        }
        if let Some((&s, &(e, v))) = self.map.range(..=start).next_back()
            && e == start
        {
            self.map.remove(&s);
            value = merge(v, value, end - start);
            start = s;
        }
        if let Some(&(e, v)) = self.map.get(&end) {
            self.map.remove(&end);
            value = merge(value, v, e - end);
            end = e;
        }
        self.map.insert(start, (end, value));
        Ok(())
    }

    /// Remove the range that ends exactly at `end`, if any: (its start, its value).
    fn take_ending_at(&mut self, end: u64) -> Option<(u64, V)> {
        let (&s, &(e, v)) = self.map.range(..end).next_back()?;
        (e == end).then(|| {
            self.map.remove(&s);
            (s, v)
        })
    }

    /// The value of the single range `[0, size)`, if that is exactly what was fed.
    fn whole(&self, size: u64) -> Option<V> {
        match self.map.iter().next() {
            Some((&0, &(end, v))) if end == size && self.map.len() == 1 => Some(v),
            _ => None,
        }
    }

    fn describe_gap(&self, size: u64) -> String {
        let mut expect = 0;
        for (&s, &(e, _)) in &self.map {
            if s > expect {
                return format!("bytes {expect}..{s} of {size} were never fed");
            }
            expect = e;
        }
        format!("bytes {expect}..{size} of {size} were never fed")
    }
}

enum Sha2 {
    S224(Sha224),
    S256(Sha256),
    S384(Sha384),
    S512(Sha512),
}

impl Sha2 {
    fn new(alg: ChecksumAlgorithm) -> Option<Sha2> {
        Some(match alg {
            ChecksumAlgorithm::Sha224 => Sha2::S224(Sha224::new()),
            ChecksumAlgorithm::Sha256 => Sha2::S256(Sha256::new()),
            ChecksumAlgorithm::Sha384 => Sha2::S384(Sha384::new()),
            ChecksumAlgorithm::Sha512 => Sha2::S512(Sha512::new()),
            ChecksumAlgorithm::None | ChecksumAlgorithm::Crc32c => return None,
        })
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Sha2::S224(h) => h.update(data),
            Sha2::S256(h) => h.update(data),
            Sha2::S384(h) => h.update(data),
            Sha2::S512(h) => h.update(data),
        }
    }

    fn finish_hex(self) -> String {
        match self {
            Sha2::S224(h) => hex::encode(h.finalize()),
            Sha2::S256(h) => hex::encode(h.finalize()),
            Sha2::S384(h) => hex::encode(h.finalize()),
            Sha2::S512(h) => hex::encode(h.finalize()),
        }
    }
}

/// The manifest spelling of a finished CRC-32C: `pg_checksum_final()` memcpy's the `uint32`
/// in the machine's byte order, and pg_verifybackup compares it the same way, so the bytes
/// are native order (little-endian on x86-64/aarch64: CRC 0x2247748a is "8a744722").
pub fn crc32c_hex(crc: u32) -> String {
    hex::encode(crc.to_ne_bytes())
}

impl FileChecksum {
    /// Checksum of a file of exactly `size` bytes (the size listed at backup start; the
    /// manifest's `Size`).
    pub fn new(alg: ChecksumAlgorithm, size: u64) -> Self {
        let state = match alg {
            ChecksumAlgorithm::None => State::Coverage(Ranges::new()),
            ChecksumAlgorithm::Crc32c => State::Crc(Ranges::new()),
            _ => State::Sha(Box::new(ShaState {
                hasher: Sha2::new(alg),
                claimed: 0,
                pending: BTreeMap::new(),
                held: 0,
                peak_held: 0,
            })),
        };
        FileChecksum {
            alg,
            size,
            state: Mutex::new(state),
        }
    }

    pub fn algorithm(&self) -> ChecksumAlgorithm {
        self.alg
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| anyhow!("file checksum state poisoned by a panicking thread"))
    }

    /// Feed bytes `[offset, offset + data.len())`.
    ///
    /// Pass `&[u8]` to keep your buffer (it is copied only if it has to be held, see the
    /// type's docs) or a `Vec<u8>` to give it away (moved, never copied). Ranges must not
    /// overlap and must lie inside `[0, size)`; together they must cover it exactly (when a
    /// file shrank the caller feeds the zero padding itself). Violations are reported as
    /// errors, here or by [`finish`](Self::finish).
    pub fn update<'a>(
        &self,
        offset: u64,
        data: impl Into<std::borrow::Cow<'a, [u8]>>,
    ) -> Result<()> {
        let data = data.into();
        let len = data.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| {
                anyhow!(
                    "byte range at offset {offset} with length {len} lies outside the file's {} bytes",
                    self.size
                )
            })?;
        if len == 0 {
            return Ok(());
        }
        match self.alg {
            ChecksumAlgorithm::None => {
                let mut st = self.lock()?;
                match &mut *st {
                    State::Coverage(r) => r.insert(offset, end, (), |_, _, _| ()),
                    _ => bail!("file checksum already finished"),
                }
            }
            ChecksumAlgorithm::Crc32c => {
                // Most pieces continue the run a worker fed just before: take
                // that run out and extend its CRC, which costs nothing beyond
                // the CRC itself; crc32c_combine costs ~50 times a 256 kB
                // piece's CRC. Either way the CRC is computed without the lock.
                let mut start = offset;
                let before = match &mut *self.lock()? {
                    State::Crc(r) => r.take_ending_at(offset),
                    _ => bail!("file checksum already finished"),
                };
                let crc = match before {
                    Some((s, crc)) => {
                        start = s;
                        crc32c::crc32c_append(crc, &data)
                    }
                    None => crc32c::crc32c(&data),
                };
                let mut st = self.lock()?;
                match &mut *st {
                    State::Crc(r) => r.insert(start, end, crc, |a, b, blen| {
                        // Lengths of fed pieces fit in memory, so they fit in usize.
                        crc32c::crc32c_combine(a, b, blen as usize)
                    }),
                    _ => bail!("file checksum already finished"),
                }
            }
            _ => self.update_sha(offset, end, data),
        }
    }

    fn update_sha(&self, offset: u64, end: u64, data: std::borrow::Cow<'_, [u8]>) -> Result<()> {
        let mut st = self.lock()?;
        let State::Sha(sha) = &mut *st else {
            bail!("file checksum already finished");
        };
        ensure!(
            offset >= sha.claimed,
            "byte range {offset}..{end} overlaps bytes already hashed (up to {})",
            sha.claimed
        );
        if let Some((&s, piece)) = sha.pending.range(..end).next_back() {
            let e = s + piece.len() as u64;
            ensure!(
                e <= offset,
                "byte range {offset}..{end} overlaps range {s}..{e} already fed"
            );
        }
        if offset == sha.claimed
            && let Some(mut hasher) = sha.hasher.take()
        {
            // In order and nobody else hashing: hash straight from the caller's buffer.
            sha.claimed = end;
            drop(st);
            hasher.update(&data);
            drop(data);
            self.drain_sha(hasher)
        } else {
            // Ahead of a gap, or another thread is hashing: hold the bytes.
            let len = end - offset;
            match sha.pending.entry(offset) {
                Entry::Vacant(v) => {
                    v.insert(data.into_owned());
                }
                Entry::Occupied(_) => bail!("byte range at offset {offset} fed twice"),
            }
            sha.held += len;
            sha.peak_held = sha.peak_held.max(sha.held);
            Ok(())
        }
    }

    /// Hash the held pieces that now follow on, then put the hasher back.
    fn drain_sha(&self, mut hasher: Sha2) -> Result<()> {
        loop {
            let mut st = self.lock()?;
            let State::Sha(sha) = &mut *st else {
                bail!("file checksum finished while a thread was still hashing");
            };
            match sha.pending.first_entry() {
                Some(e) if *e.key() == sha.claimed => {
                    let piece = e.remove();
                    sha.claimed += piece.len() as u64;
                    sha.held -= piece.len() as u64;
                    drop(st);
                    hasher.update(&piece);
                }
                _ => {
                    sha.hasher = Some(hasher);
                    return Ok(());
                }
            }
        }
    }

    /// Bytes currently held back waiting for a gap to be filled (always 0 for CRC32C/NONE).
    pub fn held_bytes(&self) -> u64 {
        match self.lock().as_deref() {
            Ok(State::Sha(sha)) => sha.held,
            _ => 0,
        }
    }

    /// Largest value [`held_bytes`](Self::held_bytes) ever reached.
    pub fn peak_held_bytes(&self) -> u64 {
        match self.lock().as_deref() {
            Ok(State::Sha(sha)) => sha.peak_held,
            _ => 0,
        }
    }

    /// Length of the fed prefix: every byte of `[0, n)` has been fed. A scheduler can keep
    /// the chunks it hands out below `n + workers x chunk` to bound what SHA-2 holds.
    pub fn contiguous_bytes(&self) -> u64 {
        match self.lock().as_deref() {
            Ok(State::Coverage(r)) => r.map.get(&0).map_or(0, |&(e, _)| e),
            Ok(State::Crc(r)) => r.map.get(&0).map_or(0, |&(e, _)| e),
            Ok(State::Sha(sha)) => {
                let mut n = sha.claimed;
                while let Some(p) = sha.pending.get(&n) {
                    n += p.len() as u64;
                }
                n
            }
            Ok(State::Finished) => self.size,
            Err(_) => 0,
        }
    }

    /// The checksum as the manifest writes it: `None` for [`ChecksumAlgorithm::None`], else
    /// lowercase hex. Fails unless exactly `[0, size)` was fed, if a thread is still inside
    /// `update`, or if called twice.
    pub fn finish(&self) -> Result<Option<String>> {
        let mut st = self.lock()?;
        let size = self.size;
        let result = match &mut *st {
            State::Finished => bail!("file checksum finished twice"),
            State::Coverage(r) => {
                ensure!(
                    size == 0 || r.whole(size).is_some(),
                    "{}",
                    r.describe_gap(size)
                );
                None
            }
            State::Crc(r) => {
                let crc = if size == 0 {
                    0
                } else {
                    r.whole(size)
                        .ok_or_else(|| anyhow!("{}", r.describe_gap(size)))?
                };
                Some(crc32c_hex(crc))
            }
            State::Sha(sha) => {
                ensure!(
                    sha.claimed == size && sha.pending.is_empty(),
                    "bytes {}..{size} of {size} were never fed",
                    sha.claimed
                );
                let hasher = sha
                    .hasher
                    .take()
                    .context("file checksum finished while a thread was still hashing")?;
                Some(hasher.finish_hex())
            }
        };
        *st = State::Finished;
        Ok(result)
    }
}

/// One timeline's stretch of WAL the backup needs, as in the manifest's `WAL-Ranges`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start_lsn: u64,
    pub end_lsn: u64,
}

/// An LSN as PostgreSQL prints it in the manifest (`%X/%X`, upper-case hex, no padding):
/// `0/3000028`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

struct FileEntry {
    path: Vec<u8>,
    size: u64,
    mtime: i64,
    checksum: Option<String>,
}

/// Accumulates manifest entries and renders `backup_manifest`.
///
/// # Thread safety
/// `Send + Sync` with a `Mutex` inside: [`add_file`](Self::add_file) takes `&self`, so
/// workers can add entries through a shared reference or an `Arc`. `finish` consumes the
/// writer (use `Arc::into_inner` once the workers are done).
pub struct ManifestWriter {
    version: u32,
    system_identifier: u64,
    alg: ChecksumAlgorithm,
    files: Mutex<Vec<FileEntry>>,
}

impl ManifestWriter {
    /// `server_major` is the major version (15, 17, ...); a `server_version_num` such as
    /// 170002 is understood too. 17 and later get manifest version 2 with the
    /// `System-Identifier` line (pg_verifybackup 17+ checks it against the backup's
    /// pg_control); 13 to 16 get version 1, the only one their pg_verifybackup accepts.
    /// Servers before 13 have no manifests; version 1 is written for them as well.
    pub fn new(server_major: u32, system_identifier: u64, alg: ChecksumAlgorithm) -> Self {
        let major = if server_major >= 1000 {
            server_major / 10000
        } else {
            server_major
        };
        ManifestWriter {
            version: if major >= 17 { 2 } else { 1 },
            system_identifier,
            alg,
            files: Mutex::new(Vec::new()),
        }
    }

    pub fn algorithm(&self) -> ChecksumAlgorithm {
        self.alg
    }

    /// The `PostgreSQL-Backup-Manifest-Version` this writer produces.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Add one file. `path` is the raw name relative to DEST, `/`-separated (tablespace
    /// files as `pg_tblspc/<oid>/PG_.../...`, like the server); `size` is the number of bytes
    /// written; `mtime_unix` the server's modification time in seconds since 1970;
    /// `checksum` the result of [`FileChecksum::finish`] (`None` exactly when the algorithm is
    /// NONE). Mistakes (duplicate path, checksum that does not fit the algorithm) are
    /// reported by [`finish`](Self::finish).
    pub fn add_file(&self, path: &[u8], size: u64, mtime_unix: i64, checksum: Option<String>) {
        let entry = FileEntry {
            path: path.to_vec(),
            size,
            mtime: mtime_unix,
            checksum,
        };
        self.files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(entry);
    }

    /// Number of files added so far.
    pub fn len(&self) -> usize {
        self.files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The complete manifest, entries sorted by path, ending with the `Manifest-Checksum`
    /// line and a newline. `wal_ranges` are written in the given order; the server lists the
    /// backup's end timeline first and walks back to the start timeline, each range ending
    /// where the next newer timeline began.
    pub fn finish(self, wal_ranges: &[WalRange]) -> Result<Vec<u8>> {
        let mut files = self
            .files
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        files.sort_unstable_by(|a, b| a.path.cmp(&b.path));

        for pair in files.windows(2) {
            ensure!(
                pair[0].path != pair[1].path,
                "file \"{}\" added to the backup manifest twice",
                String::from_utf8_lossy(&pair[0].path)
            );
        }
        for f in &files {
            let shown = String::from_utf8_lossy(&f.path);
            ensure!(
                !f.path.is_empty() && !f.path.contains(&0) && f.path[0] != b'/',
                "invalid path \"{shown}\" in backup manifest"
            );
            match (&f.checksum, self.alg) {
                (None, ChecksumAlgorithm::None) => {}
                (Some(c), alg) if alg != ChecksumAlgorithm::None => ensure!(
                    c.len() == 2 * alg.digest_len()
                        && c.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                    "checksum \"{c}\" of file \"{shown}\" is not a {} checksum in lowercase hex",
                    alg.name()
                ),
                (c, alg) => bail!(
                    "file \"{shown}\": checksum {c:?} does not match algorithm {}",
                    alg.name()
                ),
            }
        }

        let mut out = Vec::with_capacity(200 * files.len() + 512);
        // InitializeBackupManifest()
        if self.version >= 2 {
            out.extend_from_slice(
                format!(
                    "{{ \"PostgreSQL-Backup-Manifest-Version\": {},\n\
                     \"System-Identifier\": {},\n\
                     \"Files\": [",
                    self.version, self.system_identifier
                )
                .as_bytes(),
            );
        } else {
            out.extend_from_slice(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
        }
        // AddFileToBackupManifest(): each entry terminates the previous line.
        for (i, f) in files.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            write_file_entry(&mut out, f, self.alg);
        }
        // AddWALInfoToBackupManifest()
        out.extend_from_slice(b"\n],\n\"WAL-Ranges\": [\n");
        for (i, r) in wal_ranges.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b",\n");
            }
            out.extend_from_slice(
                format!(
                    "{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
                    r.timeline,
                    format_lsn(r.start_lsn),
                    format_lsn(r.end_lsn)
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"\n],\n");
        // SendBackupManifest(): SHA-256 of everything so far, whatever the file algorithm.
        let digest = hex::encode(Sha256::digest(&out));
        out.extend_from_slice(b"\"Manifest-Checksum\": \"");
        out.extend_from_slice(digest.as_bytes());
        out.extend_from_slice(b"\"}\n");
        Ok(out)
    }
}

fn write_file_entry(out: &mut Vec<u8>, f: &FileEntry, alg: ChecksumAlgorithm) {
    // The server uses Path when pg_verify_mbstr(PG_UTF8) accepts the name; its rules
    // (no overlong forms, no surrogates, nothing past U+10FFFF) are Rust's.
    match std::str::from_utf8(&f.path) {
        Ok(path) => {
            out.extend_from_slice(b"{ \"Path\": ");
            escape_json(out, path);
            out.extend_from_slice(b", ");
        }
        Err(_) => {
            out.extend_from_slice(b"{ \"Encoded-Path\": \"");
            out.extend_from_slice(hex::encode(&f.path).as_bytes());
            out.extend_from_slice(b"\", ");
        }
    }
    out.extend_from_slice(
        format!(
            "\"Size\": {}, \"Last-Modified\": \"{}\"",
            f.size,
            format_gmt(f.mtime)
        )
        .as_bytes(),
    );
    if let Some(c) = &f.checksum {
        out.extend_from_slice(
            format!(
                ", \"Checksum-Algorithm\": \"{}\", \"Checksum\": \"{c}\"",
                alg.name()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b" }");
}

/// A JSON string literal exactly as the server's `escape_json()` (utils/adt/json.c) writes
/// it: `\b \f \n \r \t \" \\` by name, other bytes below 0x20 as `\u00XX` (lowercase hex),
/// everything else (including DEL and non-ASCII UTF-8) as is.
pub fn escape_json(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if b < b' ' => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.push(b'"');
}

/// `Last-Modified` as the server writes it: `pg_strftime("%Y-%m-%d %H:%M:%S %Z",
/// pg_gmtime(&mtime))`, e.g. `2024-02-29 13:05:09 GMT`.
pub fn format_gmt(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn feed_in_order(alg: ChecksumAlgorithm, data: &[u8], chunk: usize) -> Option<String> {
        let fc = FileChecksum::new(alg, data.len() as u64);
        for (i, piece) in data.chunks(chunk.max(1)).enumerate() {
            fc.update((i * chunk) as u64, piece).unwrap();
        }
        fc.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn algorithm_names_parse_case_insensitively() {
        for alg in ChecksumAlgorithm::ALL {
            assert_eq!(alg.name().parse::<ChecksumAlgorithm>().unwrap(), alg);
            assert_eq!(
                alg.name()
                    .to_ascii_lowercase()
                    .parse::<ChecksumAlgorithm>()
                    .unwrap(),
                alg
            );
        }
        assert_eq!(
            "Sha256".parse::<ChecksumAlgorithm>().unwrap(),
            ChecksumAlgorithm::Sha256
        );
        assert!("md5".parse::<ChecksumAlgorithm>().is_err());
        assert!("".parse::<ChecksumAlgorithm>().is_err());
        assert_eq!(ChecksumAlgorithm::default(), ChecksumAlgorithm::Crc32c);
    }

    #[test]
    fn crc32c_known_value_and_encoding() {
        // CRC-32C check value (RFC 3720 / iSCSI): "123456789" -> 0xE3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        #[cfg(target_endian = "little")]
        {
            assert_eq!(crc32c_hex(0x2247_748a), "8a744722");
            assert_eq!(
                feed_in_order(ChecksumAlgorithm::Crc32c, b"123456789", 4).unwrap(),
                "839206e3"
            );
            // Values copied from a manifest written by a PostgreSQL 15 server.
            assert_eq!(
                feed_in_order(ChecksumAlgorithm::Crc32c, b"hello", 2).unwrap(),
                "4cbb719a"
            );
            assert_eq!(
                feed_in_order(ChecksumAlgorithm::Crc32c, b"x\n", 1).unwrap(),
                "d548ceb8"
            );
        }
        // Empty file: INIT_CRC32C then FIN_CRC32C gives 0.
        assert_eq!(
            feed_in_order(ChecksumAlgorithm::Crc32c, b"", 1).unwrap(),
            "00000000"
        );
    }

    #[test]
    fn sha_known_values() {
        assert_eq!(
            feed_in_order(ChecksumAlgorithm::Sha256, b"abc", 1).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            feed_in_order(ChecksumAlgorithm::Sha224, b"abc", 2).unwrap(),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
        assert_eq!(
            feed_in_order(ChecksumAlgorithm::Sha256, b"", 1).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for alg in ChecksumAlgorithm::ALL {
            let hex = feed_in_order(alg, b"abc", 3);
            assert_eq!(hex.map_or(0, |h| h.len()), 2 * alg.digest_len(), "{alg}");
        }
    }

    #[test]
    fn out_of_order_pieces_are_held_and_drained() {
        let data = sample(10_000);
        let fc = FileChecksum::new(ChecksumAlgorithm::Sha256, data.len() as u64);
        fc.update(6000, data[6000..].to_vec()).unwrap(); // owned: moved
        fc.update(3000, &data[3000..6000]).unwrap(); // borrowed: copied
        assert_eq!(fc.held_bytes(), 7000);
        assert_eq!(fc.contiguous_bytes(), 0);
        fc.update(0, &data[..3000]).unwrap(); // fills the gap, drains the rest
        assert_eq!(fc.held_bytes(), 0);
        assert_eq!(fc.peak_held_bytes(), 7000);
        assert_eq!(fc.contiguous_bytes(), 10_000);
        assert_eq!(
            fc.finish().unwrap(),
            feed_in_order(ChecksumAlgorithm::Sha256, &data, 10_000)
        );
    }

    #[test]
    fn contract_violations_are_errors() {
        for alg in ChecksumAlgorithm::ALL {
            let fc = FileChecksum::new(alg, 100);
            assert!(
                fc.update(90, &[0u8; 20][..]).is_err(),
                "{alg}: past the end"
            );
            assert!(
                fc.update(u64::MAX, &[0u8; 2][..]).is_err(),
                "{alg}: overflow"
            );
            fc.update(10, &[0u8; 20][..]).unwrap();
            assert!(fc.update(20, &[0u8; 20][..]).is_err(), "{alg}: overlap");
            assert!(fc.update(10, &[0u8; 5][..]).is_err(), "{alg}: same offset");
            fc.update(30, &[0u8; 70][..]).unwrap();
            let err = fc.finish().unwrap_err().to_string();
            assert!(err.contains("0..10"), "{alg}: {err}");
            assert!(fc.finish().is_err(), "{alg}: finished twice");

            // An in-order piece that runs into a piece fed earlier.
            let fc = FileChecksum::new(alg, 100);
            fc.update(50, &[0u8; 10][..]).unwrap();
            assert!(
                fc.update(0, &[0u8; 55][..]).is_err(),
                "{alg}: overlap ahead"
            );

            let fc = FileChecksum::new(alg, 100);
            fc.update(0, &[0u8; 60][..]).unwrap();
            if alg != ChecksumAlgorithm::None && alg != ChecksumAlgorithm::Crc32c {
                assert!(
                    fc.update(10, &[0u8; 5][..]).is_err(),
                    "{alg}: already hashed"
                );
            }
            let err = fc.finish().unwrap_err().to_string();
            assert!(err.contains("60..100"), "{alg}: {err}");
        }
    }

    #[test]
    fn many_threads_feeding_one_file() {
        let data = Arc::new(sample(1 << 20));
        let chunk = 4096;
        for alg in [ChecksumAlgorithm::Crc32c, ChecksumAlgorithm::Sha512] {
            let fc = Arc::new(FileChecksum::new(alg, data.len() as u64));
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (fc, next, data) = (fc.clone(), next.clone(), data.clone());
                    std::thread::spawn(move || {
                        loop {
                            let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let start = k * chunk;
                            if start >= data.len() {
                                break;
                            }
                            let end = (start + chunk).min(data.len());
                            if k % 3 == 0 {
                                std::thread::yield_now();
                            }
                            fc.update(start as u64, &data[start..end]).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(fc.held_bytes(), 0);
            assert_eq!(fc.finish().unwrap(), feed_in_order(alg, &data, 1 << 20));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_feeding_order_gives_the_in_order_checksum(
            len in 0usize..5000,
            cuts in proptest::collection::vec(0usize..5000, 0..12),
            order_seed in any::<u64>(),
            owned in any::<bool>(),
        ) {
            let data = sample(len);
            let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c < len).collect();
            bounds.push(0);
            bounds.push(len);
            bounds.sort_unstable();
            bounds.dedup();
            let mut pieces: Vec<(usize, usize)> =
                bounds.windows(2).map(|w| (w[0], w[1])).collect();
            // Fisher-Yates with a small LCG so the order is a function of the seed.
            let mut s = order_seed | 1;
            for i in (1..pieces.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                pieces.swap(i, (s >> 33) as usize % (i + 1));
            }
            for alg in ChecksumAlgorithm::ALL {
                let fc = FileChecksum::new(alg, len as u64);
                for &(a, b) in &pieces {
                    if owned {
                        fc.update(a as u64, data[a..b].to_vec()).unwrap();
                    } else {
                        fc.update(a as u64, &data[a..b]).unwrap();
                    }
                }
                let expect = match alg {
                    ChecksumAlgorithm::None => None,
                    ChecksumAlgorithm::Crc32c => Some(crc32c_hex(crc32c::crc32c(&data))),
                    _ => feed_in_order(alg, &data, len.max(1)),
                };
                prop_assert_eq!(fc.finish().unwrap(), expect);
            }
        }
    }

    #[test]
    fn lsn_formatting() {
        assert_eq!(format_lsn(0x3000028), "0/3000028");
        assert_eq!(format_lsn(0x1_0000_00A0), "1/A0");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(format_lsn(u64::MAX), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn gmt_dates() {
        assert_eq!(format_gmt(0), "1970-01-01 00:00:00 GMT");
        assert_eq!(format_gmt(-1), "1969-12-31 23:59:59 GMT");
        assert_eq!(format_gmt(951_782_400), "2000-02-29 00:00:00 GMT");
        assert_eq!(format_gmt(951_955_199), "2000-03-01 23:59:59 GMT");
        assert_eq!(format_gmt(1_700_000_000), "2023-11-14 22:13:20 GMT");
        assert_eq!(format_gmt(4_107_542_400), "2100-03-01 00:00:00 GMT");
        assert_eq!(format_gmt(-2_208_988_800), "1900-01-01 00:00:00 GMT");
        assert_eq!(format_gmt(253_402_300_799), "9999-12-31 23:59:59 GMT");
        // Each day of 1970-2100 maps to a valid, strictly increasing date.
        let mut prev = String::new();
        for day in 0..(131 * 366) {
            let s = format_gmt(day * 86_400);
            assert!(s > prev, "{s} after {prev}");
            prev = s;
        }
    }

    #[test]
    fn json_escaping_matches_escape_json() {
        let mut out = Vec::new();
        escape_json(
            &mut out,
            "a\"b\\c\td\ne\rf\u{8}g\u{c}h\u{1}i\u{1f}j\u{7f}k é/ü",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\td\\ne\\rf\\bg\\fh\\u0001i\\u001fj\u{7f}k é/ü\""
        );
    }

    fn manifest_for(version_major: u32, alg: ChecksumAlgorithm) -> Vec<u8> {
        let w = ManifestWriter::new(version_major, 7_301_234_567_890_123_456, alg);
        let ck = |d: &[u8]| feed_in_order(alg, d, 3);
        w.add_file(b"global/pg_control", 5, 1_700_000_000, ck(b"hello"));
        w.add_file(b"backup_label", 2, 0, ck(b"x\n"));
        w.add_file(b"bad\xff\xfename", 0, -1, ck(b""));
        w.finish(&[
            WalRange {
                timeline: 2,
                start_lsn: 0x5000000,
                end_lsn: 0x5000100,
            },
            WalRange {
                timeline: 1,
                start_lsn: 0x4000028,
                end_lsn: 0x5000000,
            },
        ])
        .unwrap()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn version_1_layout_byte_for_byte() {
        let m = manifest_for(15, ChecksumAlgorithm::Crc32c);
        let text = String::from_utf8(m.clone()).unwrap();
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\
\"Files\": [\n\
{ \"Path\": \"backup_label\", \"Size\": 2, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"d548ceb8\" },\n\
{ \"Encoded-Path\": \"626164fffe6e616d65\", \"Size\": 0, \"Last-Modified\": \"1969-12-31 23:59:59 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" },\n\
{ \"Path\": \"global/pg_control\", \"Size\": 5, \"Last-Modified\": \"2023-11-14 22:13:20 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"4cbb719a\" }\n\
],\n\
\"WAL-Ranges\": [\n\
{ \"Timeline\": 2, \"Start-LSN\": \"0/5000000\", \"End-LSN\": \"0/5000100\" },\n\
{ \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"0/5000000\" }\n\
],\n";
        let digest = hex::encode(Sha256::digest(body.as_bytes()));
        assert_eq!(
            text,
            format!("{body}\"Manifest-Checksum\": \"{digest}\"}}\n")
        );
    }

    #[test]
    fn version_2_header_has_system_identifier() {
        for major in [17, 18, 170_002] {
            let m = manifest_for(major, ChecksumAlgorithm::Sha256);
            assert!(m.starts_with(
                b"{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\
                  \"System-Identifier\": 7301234567890123456,\n\
                  \"Files\": [\n{ \"Path\": \"backup_label\""
            ));
        }
        for major in [13, 16, 160_004] {
            let m = manifest_for(major, ChecksumAlgorithm::Sha256);
            assert!(m.starts_with(
                b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{ \"Path\""
            ));
        }
    }

    #[test]
    fn no_checksum_fields_for_none() {
        let m = String::from_utf8(manifest_for(15, ChecksumAlgorithm::None)).unwrap();
        assert!(m.contains(
            "{ \"Path\": \"backup_label\", \"Size\": 2, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\" },\n"
        ));
        assert!(!m.contains("Checksum-Algorithm"));
    }

    /// What pg_verifybackup's verify_manifest_checksum() does: SHA-256 over everything up to
    /// and including the penultimate newline, compared with the last line's value.
    #[test]
    fn manifest_checksum_covers_exactly_the_bytes_before_its_line() {
        for alg in ChecksumAlgorithm::ALL {
            let m = manifest_for(15, alg);
            assert_eq!(m.last(), Some(&b'\n'));
            let penultimate = m[..m.len() - 1].iter().rposition(|&b| b == b'\n').unwrap();
            let (covered, last_line) = m.split_at(penultimate + 1);
            let last_line = std::str::from_utf8(last_line).unwrap();
            let expect = hex::encode(Sha256::digest(covered));
            assert_eq!(
                last_line,
                format!("\"Manifest-Checksum\": \"{expect}\"}}\n")
            );
        }
    }

    #[test]
    fn encoded_path_only_for_invalid_utf8() {
        let w = ManifestWriter::new(15, 1, ChecksumAlgorithm::None);
        w.add_file("caf\u{e9}/\u{1F600}".as_bytes(), 0, 0, None);
        w.add_file(b"surrogate\xed\xa0\x80", 0, 0, None); // CESU surrogate: not UTF-8
        w.add_file(b"overlong\xc0\xaf", 0, 0, None);
        w.add_file(b"\xf4\x90\x80\x80", 0, 0, None); // above U+10FFFF
        let m = String::from_utf8(w.finish(&[]).unwrap()).unwrap();
        assert!(m.contains("{ \"Path\": \"caf\u{e9}/\u{1F600}\", "));
        assert!(m.contains("{ \"Encoded-Path\": \"737572726f67617465eda080\", "));
        assert!(m.contains("{ \"Encoded-Path\": \"6f7665726c6f6e67c0af\", "));
        assert!(m.contains("{ \"Encoded-Path\": \"f4908080\", "));
    }

    #[test]
    fn entries_are_sorted_and_checked() {
        let w = ManifestWriter::new(15, 1, ChecksumAlgorithm::None);
        for p in ["b", "a/b", "a", "B"] {
            w.add_file(p.as_bytes(), 0, 0, None);
        }
        let m = String::from_utf8(w.finish(&[]).unwrap()).unwrap();
        let paths: Vec<&str> = m
            .lines()
            .filter_map(|l| l.strip_prefix("{ \"Path\": \""))
            .map(|l| &l[..l.find('"').unwrap()])
            .collect();
        assert_eq!(paths, ["B", "a", "a/b", "b"]);

        let dup = ManifestWriter::new(15, 1, ChecksumAlgorithm::None);
        dup.add_file(b"x", 0, 0, None);
        dup.add_file(b"x", 0, 0, None);
        assert!(dup.finish(&[]).is_err());

        let missing = ManifestWriter::new(15, 1, ChecksumAlgorithm::Crc32c);
        missing.add_file(b"x", 0, 0, None);
        assert!(missing.finish(&[]).is_err());

        let wrong_len = ManifestWriter::new(15, 1, ChecksumAlgorithm::Sha256);
        wrong_len.add_file(b"x", 0, 0, Some("00000000".into()));
        assert!(wrong_len.finish(&[]).is_err());

        let absolute = ManifestWriter::new(15, 1, ChecksumAlgorithm::None);
        absolute.add_file(b"/etc/passwd", 0, 0, None);
        assert!(absolute.finish(&[]).is_err());
    }

    #[test]
    fn empty_manifest_is_well_formed() {
        let m = ManifestWriter::new(15, 1, ChecksumAlgorithm::Crc32c)
            .finish(&[])
            .unwrap();
        let text = String::from_utf8(m).unwrap();
        assert!(text.starts_with(
            "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n],\n\"WAL-Ranges\": [\n\n],\n\"Manifest-Checksum\": \""
        ));
    }

    /// Rebuild the manifest of a backup taken by the real pg_basebackup with this writer and
    /// let the real pg_verifybackup judge it. Needs:
    ///   PGBB_IT_BACKUP=<plain backup dir with its server-written backup_manifest>
    ///   PGBB_IT_DATADIR=<the source data directory, for mtimes> (optional)
    ///   PGBB_IT_BINDIR=<dir with pg_verifybackup> (default /usr/lib/postgresql/15/bin)
    /// Run: cargo test manifest::tests::real_pg_verifybackup -- --ignored --nocapture
    #[test]
    #[ignore]
    fn real_pg_verifybackup() {
        let Ok(backup) = std::env::var("PGBB_IT_BACKUP") else {
            eprintln!("PGBB_IT_BACKUP not set; skipping");
            return;
        };
        let datadir = std::env::var("PGBB_IT_DATADIR").ok();
        let bindir = std::env::var("PGBB_IT_BINDIR")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
        integration::run(
            std::path::Path::new(&backup),
            datadir.as_deref().map(std::path::Path::new),
            std::path::Path::new(&bindir),
        );
    }

    mod integration {
        use super::super::*;
        use std::collections::BTreeMap;
        use std::os::unix::ffi::OsStrExt;
        use std::path::{Path, PathBuf};
        use std::process::Command;
        use std::sync::Arc;

        /// Server-written manifest: file lines keyed by their path field, and WAL ranges.
        struct Original {
            alg: ChecksumAlgorithm,
            lines: BTreeMap<String, String>,
            wal: Vec<WalRange>,
        }

        fn parse_lsn(s: &str) -> u64 {
            let (hi, lo) = s.split_once('/').unwrap();
            (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
        }

        fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
            let start = line.find(&format!("\"{name}\": "))? + name.len() + 4;
            let rest = &line[start..];
            Some(match rest.strip_prefix('"') {
                Some(r) => &r[..r.find('"')?],
                None => &rest[..rest.find([',', ' '])?],
            })
        }

        fn parse_original(path: &Path) -> Original {
            let text = std::fs::read_to_string(path).unwrap();
            let mut lines = BTreeMap::new();
            let mut wal = Vec::new();
            let mut alg = ChecksumAlgorithm::None;
            for line in text.lines() {
                let line = line.trim_end_matches(',');
                if line.starts_with("{ \"Path\"") || line.starts_with("{ \"Encoded-Path\"") {
                    // Key: everything up to ", \"Size\"" identifies the file.
                    let key = line[..line.find(", \"Size\"").unwrap()].to_string();
                    if let Some(a) = field(line, "Checksum-Algorithm") {
                        alg = a.parse().unwrap();
                    }
                    lines.insert(key, line.to_string());
                } else if line.starts_with("{ \"Timeline\"") {
                    wal.push(WalRange {
                        timeline: field(line, "Timeline").unwrap().parse().unwrap(),
                        start_lsn: parse_lsn(field(line, "Start-LSN").unwrap()),
                        end_lsn: parse_lsn(field(line, "End-LSN").unwrap()),
                    });
                }
            }
            Original { alg, lines, wal }
        }

        fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(root.join(rel)).unwrap() {
                let e = e.unwrap();
                let r = rel.join(e.file_name());
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    walk(root, &r, out);
                } else if ft.is_file() {
                    out.push(r);
                }
            }
        }

        /// Feed a file's bytes in small chunks, in a scrambled order, from 4 threads.
        fn checksum_of(alg: ChecksumAlgorithm, data: Arc<Vec<u8>>, seed: u64) -> Option<String> {
            let chunk = 8192 + 77;
            let fc = Arc::new(FileChecksum::new(alg, data.len() as u64));
            let mut order: Vec<usize> = (0..data.len().div_ceil(chunk)).collect();
            let mut s = seed | 1;
            for i in (1..order.len()).rev() {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            let order = Arc::new(order);
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let (fc, data, order) = (fc.clone(), data.clone(), order.clone());
                    std::thread::spawn(move || {
                        for &k in order.iter().skip(t).step_by(4) {
                            let a = k * chunk;
                            let b = (a + chunk).min(data.len());
                            if k % 2 == 0 {
                                fc.update(a as u64, data[a..b].to_vec()).unwrap();
                            } else {
                                fc.update(a as u64, &data[a..b]).unwrap();
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            fc.finish().unwrap()
        }

        fn verify(bindir: &Path, dir: &Path) -> (bool, String) {
            let out = Command::new(bindir.join("pg_verifybackup"))
                .arg(dir)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }

        pub(super) fn run(backup: &Path, datadir: Option<&Path>, bindir: &Path) {
            use std::os::unix::fs::MetadataExt;

            let original = parse_original(&backup.join("backup_manifest"));
            let work = tempfile::tempdir().unwrap();
            let copy = work.path().join("bk");
            let st = Command::new("cp")
                .arg("-a")
                .arg(backup)
                .arg(&copy)
                .status()
                .unwrap();
            assert!(st.success());

            let mut files = Vec::new();
            walk(&copy, Path::new(""), &mut files);
            let writer = ManifestWriter::new(15, 0, original.alg);
            let mut exact = 0;
            let mut ours = BTreeMap::new();
            for (i, rel) in files.iter().enumerate() {
                let raw = rel.as_os_str().as_bytes();
                if raw == b"backup_manifest" || raw.starts_with(b"pg_wal/") {
                    continue;
                }
                let data = Arc::new(std::fs::read(copy.join(rel)).unwrap());
                let mtime = datadir
                    .and_then(|d| std::fs::metadata(d.join(rel)).ok())
                    .unwrap_or_else(|| std::fs::metadata(copy.join(rel)).unwrap())
                    .mtime();
                let ck = checksum_of(original.alg, data.clone(), i as u64);
                writer.add_file(raw, data.len() as u64, mtime, ck.clone());
                // Render this one entry alone to compare with the server's line.
                let one = ManifestWriter::new(15, 0, original.alg);
                one.add_file(raw, data.len() as u64, mtime, ck);
                let m = String::from_utf8(one.finish(&[]).unwrap()).unwrap();
                let line = m.lines().nth(2).unwrap().to_string();
                let key = line[..line.find(", \"Size\"").unwrap()].to_string();
                ours.insert(key, line);
            }
            // Same files, and every line equal to the server's except possibly for
            // Last-Modified (the data directory may have changed since the backup).
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                original.lines.keys().collect::<Vec<_>>()
            );
            let strip = |l: &str| {
                let a = l.find("\"Last-Modified\": \"").unwrap();
                let b = a + 18 + l[a + 18..].find('"').unwrap();
                format!("{}{}", &l[..a], &l[b + 1..])
            };
            for (k, line) in &ours {
                let theirs = &original.lines[k];
                if line == theirs {
                    exact += 1;
                } else {
                    assert_eq!(strip(line), strip(theirs));
                }
            }
            eprintln!(
                "{} entries ({}), {exact} byte-identical to the server's lines",
                ours.len(),
                original.alg
            );

            let manifest = writer.finish(&original.wal).unwrap();
            std::fs::write(copy.join("backup_manifest"), &manifest).unwrap();
            let (ok, text) = verify(bindir, &copy);
            eprintln!("pg_verifybackup on our manifest: {text}");
            assert!(ok, "{text}");

            // Damage one relation file: a flipped byte (caught by any checksum), then a
            // size change (caught even without checksums).
            let victim = files
                .iter()
                .filter(|p| p.starts_with("base"))
                .max_by_key(|p| std::fs::metadata(copy.join(p)).unwrap().len())
                .unwrap();
            let vpath = copy.join(victim);
            let mut bytes = std::fs::read(&vpath).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x20;
            std::fs::write(&vpath, &bytes).unwrap();
            let (ok, text) = verify(bindir, &copy);
            eprintln!("after flipping a byte of {}: {text}", victim.display());
            if original.alg == ChecksumAlgorithm::None {
                assert!(ok, "{text}");
            } else {
                assert!(!ok && text.contains("checksum mismatch"), "{text}");
            }
            bytes.push(0);
            std::fs::write(&vpath, &bytes).unwrap();
            let (ok, text) = verify(bindir, &copy);
            eprintln!("after growing {}: {text}", victim.display());
            assert!(!ok && text.contains("size"), "{text}");

            // A manifest with one byte changed fails its own checksum.
            let mut bad = manifest.clone();
            let needle = b"\"Last-Modified\": \"";
            let pos = bad.windows(needle.len()).position(|w| w == needle).unwrap();
            bad[pos + needle.len()] = if bad[pos + needle.len()] == b'1' {
                b'2'
            } else {
                b'1'
            };
            std::fs::write(copy.join("backup_manifest"), &bad).unwrap();
            let (ok, text) = verify(bindir, &copy);
            eprintln!("after editing a Last-Modified in the manifest: {text}");
            assert!(!ok && text.contains("manifest checksum mismatch"), "{text}");
        }
    }
}
