//! The manifest checksum of each file ([`FileChecksum`]), computed from
//! byte ranges that arrive out of order from several worker threads, in
//! the algorithms `backup_manifest` names ([`ChecksumAlgorithm`]).
//!
//! CRC-32C pieces are combined exactly, so nothing is buffered; SHA-2
//! cannot be combined, so bytes that arrive ahead of the first missing byte
//! are held until the gap is filled (see "Memory bound" on
//! [`FileChecksum`]).

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
/// and every one of them would be held. [`contiguous_bytes`](Self::contiguous_bytes) lets
/// the scheduler enforce that window (`Integrity::wait_turn` does).
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
    #[cfg(test)]
    pub fn held_bytes(&self) -> u64 {
        match self.lock().as_deref() {
            Ok(State::Sha(sha)) => sha.held,
            _ => 0,
        }
    }

    /// Largest value [`held_bytes`](Self::held_bytes) ever reached.
    #[cfg(test)]
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

/// The manifest checksum of bytes held in memory (backup_label, ...).
pub fn checksum_of(alg: ChecksumAlgorithm, bytes: &[u8]) -> Result<Option<String>> {
    let sum = FileChecksum::new(alg, bytes.len() as u64);
    sum.update(0, bytes)?;
    sum.finish()
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
            let crc = |data: &[u8], chunk| feed_in_order(ChecksumAlgorithm::Crc32c, data, chunk);
            assert_eq!(crc(b"123456789", 4).unwrap(), "839206e3");
            // Values copied from a manifest written by a PostgreSQL 15 server.
            assert_eq!(crc(b"hello", 2).unwrap(), "4cbb719a");
            assert_eq!(crc(b"x\n", 1).unwrap(), "d548ceb8");
        }
        // Empty file: INIT_CRC32C then FIN_CRC32C gives 0.
        assert_eq!(
            feed_in_order(ChecksumAlgorithm::Crc32c, b"", 1).unwrap(),
            "00000000"
        );
    }

    #[test]
    fn sha_known_values() {
        for (alg, data, chunk, hex) in [
            (
                ChecksumAlgorithm::Sha256,
                &b"abc"[..],
                1,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                ChecksumAlgorithm::Sha224,
                b"abc",
                2,
                "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7",
            ),
            (
                ChecksumAlgorithm::Sha256,
                b"",
                1,
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        ] {
            assert_eq!(feed_in_order(alg, data, chunk).unwrap(), hex, "{alg}");
        }
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
}
