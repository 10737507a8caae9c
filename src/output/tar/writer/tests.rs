//! The tar writer end to end: any completion order, threads within the
//! window, files that shrink, grow or vanish, compression, extraction by
//! the system's tools, misuse and write errors.

use super::*;
use crate::output::tar::compress::GZIP_DEFAULT_LEVEL;
use crate::plan::{self, Piece};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// A `Write` the test can read back after the writer is gone.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Shared {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

const CHUNK: u64 = 1000;
const LONG: &str = "base/16384/a_deliberately_long_file_name_that_passes_the_hundred_byte_limit_of_one_tar_header_16385_fsm";
const LINK_TARGET: &str = "/srv/postgres/tablespaces/a/very/long/location/that/is/definitely/longer/than/one/hundred/bytes/in/total";

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

fn content(i: usize, size: u64) -> Vec<u8> {
    (0..size)
        .map(|b| (b as usize * 31 + i * 7 + b as usize / 251) as u8)
        .collect()
}

struct Fixture {
    files: Vec<FileEntry>,
    tasks: Vec<Task>,
    contents: Vec<Vec<u8>>,
    skip: usize,
}

fn fixture() -> Fixture {
    let sized = [
        ("base/5/16384", 3500),
        ("base/5/16390", 1000),
        (LONG, 1234),
        ("base/5/PG_VERSION", 3),
        ("base/5/16400_vm", 700),
        ("global/1262", 512),
        ("postgresql.auto.conf", 88),
        ("base/5/16402", 0),
        ("global/pg_control", 8),
    ];
    let mut files: Vec<FileEntry> = sized
        .iter()
        .map(|(p, s)| FileEntry {
            path: p.to_string(),
            size: *s,
            mtime: 1_700_000_000,
        })
        .collect();
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let skip = files
        .iter()
        .position(|f| f.path == plan::PG_CONTROL)
        .unwrap();
    let tasks = plan::chunk(&files, Some(skip), CHUNK);
    let contents = files
        .iter()
        .enumerate()
        .map(|(i, f)| content(i, f.size))
        .collect();
    Fixture {
        files,
        tasks,
        contents,
        skip,
    }
}

/// What the server would return for a piece; `tweak` may change it.
type Tweak = dyn Fn(&FileEntry, &Piece, Vec<u8>) -> Option<Vec<u8>> + Sync;

fn piece_data(fx: &Fixture, p: &Piece, tweak: &Tweak) -> Option<Vec<u8>> {
    let bytes = fx.contents[p.file][p.offset as usize..(p.offset + p.len) as usize].to_vec();
    tweak(&fx.files[p.file], p, bytes)
}

/// What the server would return for each piece of `task`.
fn task_data(fx: &Fixture, task: &Task, tweak: &Tweak) -> Vec<Option<Vec<u8>>> {
    task.pieces
        .iter()
        .map(|p| piece_data(fx, p, tweak))
        .collect()
}

fn unchanged(_: &FileEntry, _: &Piece, b: Vec<u8>) -> Option<Vec<u8>> {
    Some(b)
}

fn preamble(w: &TarWriter) {
    for d in ["base", "base/5", "global", "pg_tblspc", "pg_wal"] {
        w.add_dir(d, 1_700_000_000).unwrap();
    }
    w.add_symlink("pg_tblspc/16500", LINK_TARGET, 1_700_000_000)
        .unwrap();
}

fn epilogue(w: &TarWriter, fx: &Fixture) {
    w.add_file("backup_label", b"START WAL LOCATION: 0/2000028\n", 1)
        .unwrap();
    let ctl = &fx.files[fx.skip];
    w.add_file(&ctl.path, &fx.contents[fx.skip], ctl.mtime)
        .unwrap();
}

/// Copy with `threads` workers that take tasks in order and finish
/// them after random delays; returns the writer's peak and the bytes.
fn threaded(
    fx: &Fixture,
    out: Box<dyn Write + Send>,
    compression: TarCompression,
    window: usize,
    threads: usize,
    tweak: &Tweak,
) -> (u64, u64, Vec<usize>, Vec<usize>) {
    let w = TarWriter::new(out, compression, window).unwrap();
    preamble(&w);
    let cursor = AtomicUsize::new(0);
    let max_ahead = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (w, cursor, max_ahead) = (&w, &cursor, &max_ahead);
            s.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                loop {
                    let i = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some(task) = fx.tasks.get(i) else { return };
                    w.wait_turn(i, &|| false);
                    let head = w.lock().head;
                    max_ahead.fetch_max(i - head, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(rng.next() % 3000));
                    let data = task_data(fx, task, tweak);
                    w.complete_task(i, task, &fx.files, data).unwrap();
                }
            });
        }
    });
    assert!(max_ahead.into_inner() < window);
    epilogue(&w, fx);
    let peak = w.peak_buffered_bytes();
    let (vanished, zero_filled) = (w.vanished_files(), w.zero_filled_files());
    let written = w.finish().unwrap();
    (peak, written, vanished, zero_filled)
}

/// The same, on one thread, completing tasks in a random permutation.
fn shuffled(fx: &Fixture, seed: u64, tweak: &Tweak) -> Vec<u8> {
    let out = Shared::default();
    let w = TarWriter::new(Box::new(out.clone()), TarCompression::None, usize::MAX).unwrap();
    preamble(&w);
    let mut order: Vec<usize> = (0..fx.tasks.len()).collect();
    Rng(seed).shuffle(&mut order);
    for i in order {
        let task = &fx.tasks[i];
        let data = task_data(fx, task, tweak);
        w.complete_task(i, task, &fx.files, data).unwrap();
    }
    epilogue(&w, fx);
    let n = w.finish().unwrap();
    let bytes = out.bytes();
    assert_eq!(n, bytes.len() as u64);
    bytes
}

#[derive(Debug, PartialEq)]
struct Member {
    kind: EntryType,
    mode: u32,
    mtime: u64,
    data: Vec<u8>,
    link: Option<String>,
}

fn read_tar(bytes: &[u8]) -> Vec<(String, Member)> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        // Directories are named with a trailing slash, as tar does.
        assert_eq!(path.ends_with('/'), entry.header().entry_type().is_dir());
        let path = path.trim_end_matches('/').to_string();
        let h = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        assert_eq!(data.len() as u64, h.size().unwrap(), "{path}");
        out.push((
            path,
            Member {
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                mtime: h.mtime().unwrap(),
                data,
                link: entry
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
            },
        ));
    }
    out
}

/// Check the archive holds exactly the expected entries: the preamble,
/// the plan's files in task order with `expected(i)` contents (None:
/// left out), then backup_label and pg_control.
fn check_tar(bytes: &[u8], fx: &Fixture, expected: &dyn Fn(usize) -> Option<Vec<u8>>) {
    assert_eq!(bytes.len() % 512, 0);
    assert!(bytes[bytes.len() - 1024..].iter().all(|&b| b == 0));
    let members = read_tar(bytes);
    let names: Vec<&str> = members.iter().map(|(p, _)| p.as_str()).collect();
    let mut want = vec!["base", "base/5", "global", "pg_tblspc", "pg_wal"];
    want.push("pg_tblspc/16500");
    let mut seen = BTreeSet::new();
    for p in fx.tasks.iter().flat_map(|t| &t.pieces) {
        if seen.insert(p.file) && expected(p.file).is_some() {
            want.push(fx.files[p.file].path.as_str());
        }
    }
    want.extend(["backup_label", plan::PG_CONTROL]);
    assert_eq!(names, want);
    let by_name: HashMap<&str, &Member> = members.iter().map(|(p, m)| (p.as_str(), m)).collect();
    for d in ["base", "pg_wal"] {
        assert_eq!(by_name[d].kind, EntryType::Directory);
        assert_eq!(by_name[d].mode, 0o700);
    }
    let link = by_name["pg_tblspc/16500"];
    assert_eq!(link.kind, EntryType::Symlink);
    assert_eq!(link.link.as_deref(), Some(LINK_TARGET));
    for (i, f) in fx.files.iter().enumerate() {
        if i == fx.skip {
            assert_eq!(by_name[f.path.as_str()].data, fx.contents[i]);
            continue;
        }
        let Some(want) = expected(i) else {
            assert!(!by_name.contains_key(f.path.as_str()), "{}", f.path);
            continue;
        };
        let m = by_name[f.path.as_str()];
        assert_eq!(m.kind, EntryType::Regular, "{}", f.path);
        assert_eq!(m.mode, 0o600, "{}", f.path);
        assert_eq!(m.mtime, f.mtime as u64, "{}", f.path);
        assert_eq!(m.data.len() as u64, f.size, "{}", f.path);
        assert!(m.data == want, "{}: wrong contents", f.path);
    }
}

#[test]
fn fixture_has_what_the_tests_need() {
    let fx = fixture();
    let pieces_of = |path: &str| {
        let i = fx.files.iter().position(|f| f.path == path).unwrap();
        fx.tasks
            .iter()
            .filter(|t| t.pieces.iter().any(|p| p.file == i))
            .count()
    };
    assert_eq!(
        pieces_of("base/5/16384"),
        4,
        "a big file split across tasks"
    );
    assert!(
        fx.tasks.iter().any(|t| t.pieces.len() >= 3),
        "small files packed"
    );
    assert!(fx.files.iter().any(|f| f.size == 0), "an empty file");
    assert!(LONG.len() > 100 && LINK_TARGET.len() > 100);
}

#[test]
fn any_completion_order_gives_the_same_archive() {
    let fx = fixture();
    let first = shuffled(&fx, 1, &unchanged);
    check_tar(&first, &fx, &|i| Some(fx.contents[i].clone()));
    for seed in 2..20 {
        assert!(shuffled(&fx, seed, &unchanged) == first, "seed {seed}");
    }
}

#[test]
fn threads_out_of_order_within_the_window() {
    let fx = fixture();
    let reference = shuffled(&fx, 7, &unchanged);
    for (window, threads) in [(1, 3), (2, 4), (3, 4), (8, 6)] {
        let out = Shared::default();
        let (peak, written, vanished, zero_filled) = threaded(
            &fx,
            Box::new(out.clone()),
            TarCompression::None,
            window,
            threads,
            &unchanged,
        );
        let bytes = out.bytes();
        assert_eq!(written, bytes.len() as u64);
        assert!(bytes == reference, "window {window}, {threads} threads");
        assert!(
            peak <= window as u64 * CHUNK,
            "window {window}: {peak} bytes buffered"
        );
        assert!(vanished.is_empty() && zero_filled.is_empty());
    }
}

#[test]
fn shrunk_pieces_are_zero_padded_and_grown_ones_cut() {
    let fx = fixture();
    // base/5/16384 shrank to 1500 bytes: its 2nd task comes back with
    // 500 bytes, the later ones empty. PG_VERSION grew.
    let tweak = |f: &FileEntry, p: &Piece, mut b: Vec<u8>| {
        if f.path == "base/5/16384" {
            b.truncate(1500u64.saturating_sub(p.offset) as usize);
        }
        if f.path == "base/5/PG_VERSION" {
            b.extend_from_slice(b"extra");
        }
        Some(b)
    };
    let bytes = shuffled(&fx, 3, &tweak);
    check_tar(&bytes, &fx, &|i| {
        let mut c = fx.contents[i].clone();
        if fx.files[i].path == "base/5/16384" {
            c[1500..].fill(0);
        }
        Some(c)
    });
}

#[test]
fn vanished_files_are_left_out_or_zero_filled() {
    let fx = fixture();
    let idx = |path: &str| fx.files.iter().position(|f| f.path == path).unwrap();
    // 16390 (one task) and the long-named file (two tasks, the second
    // of which finds it again) are gone at their first piece: left out.
    // 16384 vanishes after its first task: kept, zeros from 1000 on.
    // The empty file vanished too.
    let tweak = |f: &FileEntry, p: &Piece, b: Vec<u8>| match f.path.as_str() {
        "base/5/16390" | "base/5/16402" => None,
        LONG if p.offset == 0 => None,
        "base/5/16384" if p.offset >= 1000 => None,
        _ => Some(b),
    };
    let bytes = shuffled(&fx, 5, &tweak);
    let gone = [idx("base/5/16390"), idx(LONG), idx("base/5/16402")];
    check_tar(&bytes, &fx, &|i| {
        let mut c = fx.contents[i].clone();
        if gone.contains(&i) {
            return None;
        }
        if i == idx("base/5/16384") {
            c[1000..].fill(0);
        }
        Some(c)
    });
    let out = Shared::default();
    let (_, _, vanished, zero_filled) = threaded(
        &fx,
        Box::new(out.clone()),
        TarCompression::None,
        3,
        4,
        &tweak,
    );
    let mut gone = gone.to_vec();
    gone.sort_unstable();
    assert_eq!(vanished, gone);
    assert_eq!(zero_filled, [idx("base/5/16384")]);
    assert!(out.bytes() == bytes);
}

#[test]
fn compressed_outputs_decompress_to_the_same_tar() {
    let fx = fixture();
    let plain = shuffled(&fx, 11, &unchanged);
    for compression in [
        TarCompression::Gzip(GZIP_DEFAULT_LEVEL),
        TarCompression::Gzip(1),
        TarCompression::Lz4,
        TarCompression::Zstd(3),
        TarCompression::Zstd(-5),
    ] {
        let out = Shared::default();
        threaded(&fx, Box::new(out.clone()), compression, 4, 4, &unchanged);
        let packed = out.bytes();
        let mut unpacked = Vec::new();
        match compression {
            TarCompression::Gzip(_) => {
                flate2::read::GzDecoder::new(&packed[..])
                    .read_to_end(&mut unpacked)
                    .unwrap();
            }
            TarCompression::Lz4 => unpacked = compress::lz4_decode_all(&packed),
            TarCompression::Zstd(_) => unpacked = zstd::decode_all(&packed[..]).unwrap(),
            TarCompression::None => unreachable!(),
        }
        assert!(unpacked == plain, "{compression:?}");
        assert!(packed.len() < plain.len(), "{compression:?}");
    }
}

/// Extract with the system tools, as a user would.
#[test]
fn system_tar_extracts_the_archives() {
    if which("tar").is_none() {
        eprintln!("note: no tar command; system extraction not tested");
        return;
    }
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    for (compression, tool) in [
        (TarCompression::None, None),
        (TarCompression::Gzip(6), Some("gzip")),
        (TarCompression::Lz4, Some("lz4")),
        (TarCompression::Zstd(3), Some("zstd")),
    ] {
        if let Some(tool) = tool.filter(|t| which(t).is_none()) {
            eprintln!("note: no {tool} command; {compression:?} extraction not tested");
            continue;
        }
        let archive = tmp.path().join(format!("base{}", compression.extension()));
        let file = File::create(&archive).unwrap();
        let w = TarWriter::to_file(file, compression, 4).unwrap();
        preamble(&w);
        let mut wal = &b"WAL!"[..];
        w.add_file_from("pg_wal/000000010000000000000002", 4, 1, &mut wal)
            .unwrap();
        for (i, task) in fx.tasks.iter().enumerate().rev() {
            let data = task_data(&fx, task, &unchanged);
            w.complete_task(i, task, &fx.files, data).unwrap();
        }
        epilogue(&w, &fx);
        w.finish().unwrap();
        let into = tmp.path().join(format!("x{}", compression.extension()));
        std::fs::create_dir(&into).unwrap();
        let script = match tool {
            None => "tar -xf \"$0\" -C \"$1\"",
            Some("gzip") => "tar -xzf \"$0\" -C \"$1\"",
            Some(t) => &format!("{t} -dc \"$0\" | tar -xf - -C \"$1\""),
        };
        let status = std::process::Command::new("sh")
            .args(["-ec", script])
            .arg(&archive)
            .arg(&into)
            .status()
            .unwrap();
        assert!(status.success(), "{compression:?}: {script}");
        check_tree(&into, &fx);
        if compression == TarCompression::None {
            let listing = std::process::Command::new("tar")
                .arg("-tvf")
                .arg(&archive)
                .output()
                .unwrap();
            let listing: Vec<String> = String::from_utf8(listing.stdout)
                .unwrap()
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            let listing = listing.join("\n");
            assert!(
                listing.contains("-rw------- postgres/postgres 3500 "),
                "{listing}"
            );
            assert!(listing.contains(LONG), "{listing}");
            assert!(
                listing.contains(&format!("pg_tblspc/16500 -> {LINK_TARGET}")),
                "{listing}"
            );
        }
        assert_eq!(
            std::fs::read(into.join("pg_wal/000000010000000000000002")).unwrap(),
            b"WAL!"
        );
    }
}

fn check_tree(root: &Path, fx: &Fixture) {
    use std::os::unix::fs::PermissionsExt;
    for (i, f) in fx.files.iter().enumerate() {
        let p = root.join(&f.path);
        assert_eq!(std::fs::read(&p).unwrap(), fx.contents[i], "{}", f.path);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.path);
    }
    assert_eq!(
        std::fs::read_link(root.join("pg_tblspc/16500")).unwrap(),
        Path::new(LINK_TARGET)
    );
    assert_eq!(
        std::fs::read(root.join("backup_label")).unwrap(),
        b"START WAL LOCATION: 0/2000028\n"
    );
    let mode = std::fs::metadata(root.join("base/5"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

#[test]
fn misuse_and_gaps_are_errors() {
    let fx = fixture();
    let data = |i: usize| task_data(&fx, &fx.tasks[i], &unchanged);
    // A task that never arrives: finish says which.
    let w = TarWriter::new(Box::new(io::sink()), TarCompression::None, 100).unwrap();
    w.complete_task(1, &fx.tasks[1], &fx.files, data(1))
        .unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("task 0 never reached"), "{err}");

    // Twice the same task; a whole file added inside a streamed one.
    let w = TarWriter::new(Box::new(io::sink()), TarCompression::None, 100).unwrap();
    w.complete_task(0, &fx.tasks[0], &fx.files, data(0))
        .unwrap();
    assert!(
        w.complete_task(0, &fx.tasks[0], &fx.files, data(0))
            .is_err()
    );
    let err = w.add_file("backup_label", b"x", 0).unwrap_err().to_string();
    assert!(err.contains("half written"), "{err}");
    assert!(w.add_dir("../etc", 0).is_err());
    assert!(w.add_dir("/etc", 0).is_err());
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("short of its listed size"), "{err}");

    // A plan whose pieces of one file are not consecutive.
    let w = TarWriter::new(Box::new(io::sink()), TarCompression::None, 100).unwrap();
    w.complete_task(0, &fx.tasks[0], &fx.files, data(0))
        .unwrap();
    let err = w
        .complete_task(1, &fx.tasks[4], &fx.files, data(4))
        .unwrap_err()
        .to_string();
    assert!(err.contains("must follow each other"), "{err}");
    assert!(
        w.complete_task(2, &fx.tasks[2], &fx.files, data(2))
            .is_err()
    );
    assert!(w.finish().is_err());
}

/// A write error breaks the archive: later calls fail, waiters return.
#[test]
fn write_errors_stop_everyone() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let fx = fixture();
    let data = |i: usize| task_data(&fx, &fx.tasks[i], &unchanged);
    let w = TarWriter::new(Box::new(Full), TarCompression::None, 1).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| w.wait_turn(5, &|| false));
        // 8 MB: more than the output buffer holds, so the write happens now.
        let big = vec![FileEntry {
            path: "big".into(),
            size: 8 << 20,
            mtime: 0,
        }];
        let task = Task {
            pieces: vec![Piece {
                file: 0,
                offset: 0,
                len: 8 << 20,
            }],
        };
        let err = w
            .complete_task(0, &task, &big, vec![Some(vec![1; 8 << 20])])
            .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        waiter.join().unwrap();
    });
    let err = w
        .complete_task(1, &fx.tasks[1], &fx.files, data(1))
        .unwrap_err();
    assert!(err.to_string().contains("failed earlier"), "{err}");
    assert!(w.add_file("x", b"", 0).is_err());
    assert!(w.finish().is_err());
}

/// Several archives (base.tar and <oid>.tar) from one plan: every
/// writer sees every task index, with only its own pieces (often none),
/// and a file list whose paths are relative to its archive.
#[test]
fn one_writer_per_archive_from_one_plan() {
    let fx = fixture();
    let in_ts = |f: &FileEntry| f.path.starts_with("base/5/");
    let ts_files: Vec<FileEntry> = fx
        .files
        .iter()
        .map(|f| FileEntry {
            path: f.path.strip_prefix("base/5/").unwrap_or(&f.path).into(),
            ..f.clone()
        })
        .collect();
    let (base_out, ts_out) = (Shared::default(), Shared::default());
    let base = TarWriter::new(Box::new(base_out.clone()), TarCompression::None, 2).unwrap();
    let ts = TarWriter::new(Box::new(ts_out.clone()), TarCompression::Lz4, 2).unwrap();
    let cursor = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let i = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some(task) = fx.tasks.get(i) else { return };
                    base.wait_turn(i, &|| false);
                    ts.wait_turn(i, &|| false);
                    let mut parts = [
                        (Task { pieces: vec![] }, vec![]),
                        (Task { pieces: vec![] }, vec![]),
                    ];
                    for p in &task.pieces {
                        let part = &mut parts[usize::from(in_ts(&fx.files[p.file]))];
                        part.0.pieces.push(*p);
                        part.1.push(piece_data(&fx, p, &unchanged));
                    }
                    let [(bt, bd), (tt, td)] = parts;
                    base.complete_task(i, &bt, &fx.files, bd).unwrap();
                    ts.complete_task(i, &tt, &ts_files, td).unwrap();
                }
            });
        }
    });
    base.finish().unwrap();
    ts.finish().unwrap();
    let unpacked = compress::lz4_decode_all(&ts_out.bytes());
    for (bytes, mine) in [(base_out.bytes(), false), (unpacked, true)] {
        let names = if mine { &ts_files } else { &fx.files };
        let want: BTreeSet<&str> = (0..fx.files.len())
            .filter(|&i| i != fx.skip && in_ts(&fx.files[i]) == mine)
            .map(|i| names[i].path.as_str())
            .collect();
        let members = read_tar(&bytes);
        let got: BTreeSet<&str> = members.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(got, want);
        for (path, m) in &members {
            let i = names.iter().position(|f| f.path == *path).unwrap();
            assert!(m.data == fx.contents[i], "{path}");
        }
    }
}

#[test]
fn writer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TarWriter>();
}
