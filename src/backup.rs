//! One run of the tool, start to finish, and the clean abort.
//!
//! The order of the steps is what makes the copy correct; see the numbered
//! rules in shared/design.md. In short: the control session only creates
//! the slot and starts and stops the backup (an ERROR there would drop the
//! slot); all reading happens on other sessions; backup_label and
//! tablespace_map come from the stop call; global/pg_control is written
//! last, so a copy that was cut short can never start.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use log::{info, warn};
use postgres::Client;

use crate::abort::Abort;
use crate::archive;
use crate::cli::{Mode, Settings};
use crate::conn::ConnSpec;
use crate::copy;
use crate::delta::{self, Delta};
use crate::error::{Exit, Failure};
use crate::integrity::checksum::checksum_of;
use crate::integrity::{Integrity, PageFailure, PageVerification};
use crate::manifest::{ManifestWriter, WalRange};
use crate::odd_names;
use crate::output::dest::{self, Dest};
use crate::output::tar::TarOutput;
use crate::output::{AUTO_CONF, Output, unix_now};
use crate::pg_control;
use crate::plan;
use crate::progress::{Progress, Summary};
use crate::reader::Reader;
use crate::server::{self, ServerInfo, Tablespace};
use crate::standby;
use crate::wal::WalFollower;
use crate::watchdog;
use crate::{bail_with, wal};

/// application_name of each kind of session, so a DBA can tell them apart
/// in pg_stat_activity.
const APPLICATION_NAME: &str = "pg_basebackup";
const WORKER_NAME: &str = "pg_basebackup worker";
const WAL_NAME: &str = "pg_basebackup wal";
const WATCH_NAME: &str = "pg_basebackup watch";

/// Run the mode the settings ask for.
pub fn run(settings: &Settings, abort: &Abort) -> Result<()> {
    let spec = ConnSpec::from_dsn(&settings.dsn)?;
    match settings.mode {
        Mode::Clean => clean(&spec),
        Mode::Backup => backup(settings, &spec, abort),
        Mode::AuxiliaryCopy => auxiliary_copy(settings, &spec, abort),
        Mode::WalFollower => follow_wal(settings, &spec, abort),
    }
}

/// A session with timeouts off, and what the server is.
fn open_control(spec: &ConnSpec) -> Result<(Client, ServerInfo)> {
    info!("connecting to {}", spec.describe());
    let mut client = spec.connect(APPLICATION_NAME)?;
    let info = server::probe(&mut client)?;
    server::disable_timeouts(&mut client)?;
    info!(
        "server version {}, WAL segment size {} MB{}",
        info.version_num,
        info.wal_segment_size >> 20,
        if info.in_recovery { ", a standby" } else { "" }
    );
    Ok((client, info))
}

/// `n` reading sessions sharing the run's rate limit.
fn open_readers(spec: &ConnSpec, settings: &Settings, n: usize) -> Result<Vec<Reader>> {
    (0..n)
        .map(|_| open_reader(spec, settings, WORKER_NAME))
        .collect()
}

fn open_reader(spec: &ConnSpec, settings: &Settings, application_name: &str) -> Result<Reader> {
    Reader::new(
        spec.connect(application_name)?,
        settings.read_options.clone(),
    )
}

fn clean(spec: &ConnSpec) -> Result<()> {
    let (mut client, info) = open_control(spec)?;
    if server::stop_leftover_exclusive_backup(&mut client, &info)? {
        println!("pg_basebackup: stopped the exclusive backup that was left in progress");
    } else if info.version_num >= 150000 {
        println!(
            "pg_basebackup: nothing to clean: PostgreSQL {} ends every backup with its session",
            info.major()
        );
    } else {
        println!("pg_basebackup: nothing to clean: no exclusive backup is in progress");
    }
    Ok(())
}

/// Where each linked tablespace goes in a plain copy: its -T mapping, else
/// its own path (which must then be empty, so a copy on the server's host
/// never writes into the live tablespace).
/// `earlier` are the tablespace links of a copy --delta refreshes: their
/// targets are part of it.
fn tablespace_targets(
    tablespaces: &[Tablespace],
    mapping: &[(PathBuf, PathBuf)],
    earlier: &[(u32, PathBuf)],
) -> Result<Vec<(u32, PathBuf)>> {
    for (old, _) in mapping {
        if !tablespaces.iter().any(|t| Path::new(&t.location) == old) {
            bail_with!(
                Exit::Usage,
                "-T {}: the server has no tablespace in that directory",
                old.display()
            );
        }
    }
    let mut targets = Vec::new();
    for t in tablespaces.iter().filter(|t| t.location.starts_with('/')) {
        let location = Path::new(&t.location);
        let target = mapping
            .iter()
            .find(|(old, _)| old == location)
            .map(|(_, new)| new.clone());
        let target = target.unwrap_or_else(|| location.to_path_buf());
        if earlier.contains(&(t.oid, target.clone())) {
            targets.push((t.oid, target));
            continue;
        }
        dest::check(&target, false).map_err(|e| {
            e.context(Failure::new(
                Exit::Dest,
                format!(
                    "tablespace \"{}\" cannot be written to {}; relocate it with -T {}=NEWDIR",
                    t.name,
                    target.display(),
                    t.location
                ),
            ))
        })?;
        targets.push((t.oid, target));
    }
    Ok(targets)
}

/// tablespace_map with each linked tablespace pointing at its copy.
fn mapped_tablespace_map(map: &str, targets: &[(u32, PathBuf)], major: u32) -> String {
    let escape = |p: &str| {
        let mut out = String::new();
        for c in p.chars() {
            match c {
                '\n' | '\r' => out.push('\\'),
                '\\' if major >= 14 => out.push('\\'),
                _ => {}
            }
            out.push(c);
        }
        out
    };
    let mut out = String::new();
    for line in map.lines() {
        let oid = line.split(' ').next().unwrap_or("");
        match targets.iter().find(|(o, _)| o.to_string() == oid) {
            Some((_, target)) => {
                out.push_str(&format!("{oid} {}\n", escape(&target.to_string_lossy())))
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Everything the steps after the copy need to know.
struct Finished {
    files: usize,
    bytes: u64,
    wal_bytes: u64,
    wal_segments: u64,
    manifest_written: bool,
    page_failures: Vec<PageFailure>,
}

fn backup(settings: &Settings, spec: &ConnSpec, abort: &Abort) -> Result<()> {
    let started = Instant::now();
    let earlier = match settings.delta {
        Some(options) => Some(delta::inspect(&settings.dest, options)?),
        None if settings.tar.is_some_and(|t| t.to_stdout) => None,
        None => {
            dest::check(&settings.dest, settings.force)?;
            None
        }
    };
    let (mut control, info) = open_control(spec)?;
    if let Some(earlier) = &earlier {
        delta::check_server(earlier, &info)?;
    }
    server::check_free_connections(
        &mut control,
        settings.jobs as u32 + u32::from(settings.fetch_wal) + u32::from(info.in_recovery),
    )?;
    let mut readers = open_readers(spec, settings, settings.jobs)?;
    info!(
        "wire compression: {}",
        if readers[0].compressed() {
            "zlib, on the server by a temporary PL/Python function"
        } else {
            "none"
        }
    );
    let wal_reader = if settings.fetch_wal {
        Some(open_reader(spec, settings, WAL_NAME)?)
    } else {
        None
    };

    let aux = readers[0].client();
    server::check_privileges(aux, &info, true)?;
    let tablespaces = server::tablespaces(aux)?;
    // A tar keeps the links to the original locations: nothing is written
    // there. A refresh keeps the tablespace directories its copy links to.
    let targets = match settings.tar {
        Some(_) => Vec::new(),
        None => {
            let earlier_links = match earlier {
                Some(_) => delta::tablespace_links(&settings.dest),
                None => Vec::new(),
            };
            tablespace_targets(&tablespaces, &settings.tablespace_mapping, &earlier_links)?
        }
    };
    let slot_obstacle = server::slot_obstacle(aux)?;
    let archive_mode = server::archive_mode(aux)?;
    archive::announce(settings.fetch_wal, &archive_mode, info.in_recovery);

    let mut delta = None;
    let mut out: Box<dyn Output> = match (settings.tar, earlier) {
        (Some(_), _) => Box::new(TarOutput::create(settings, &info, &tablespaces)?),
        // A refresh keeps DEST as it is, also when it fails (it resumes).
        (None, Some(earlier)) => {
            let dest = Dest::open_shared(&settings.dest, info.data_directory_mode)?;
            delta = Some(Delta::begin(earlier, &dest, &info, readers[0].client())?);
            Box::new(dest)
        }
        (None, None) => Box::new(Dest::prepare(&settings.dest, info.data_directory_mode)?),
    };
    let run = Run {
        settings,
        spec,
        info: &info,
        abort,
        tablespaces: &tablespaces,
        targets: &targets,
        wait_for_archive: archive::stop_waits(settings.fetch_wal, &archive_mode, info.in_recovery),
    };
    let result = backup_into(
        &run,
        &mut control,
        readers,
        wal_reader,
        slot_obstacle,
        &mut *out,
        delta.as_mut(),
    );
    // Closing the control session ends the backup on the server (if it is
    // still running) and drops the temporary slot.
    drop(control);
    match result {
        Ok(done) => {
            if let Some(d) = delta {
                d.finish(done.bytes)?;
            }
            let summary = Summary {
                files: done.files as u64,
                data_bytes: done.bytes,
                wal_segments: done.wal_segments,
                wal_bytes: done.wal_bytes,
                seconds: started.elapsed().as_secs_f64(),
                checksum_failures: done.page_failures.len() as u64,
                manifest_written: done.manifest_written,
            };
            if done.page_failures.is_empty() {
                info!("{summary}");
            } else {
                warn!("{summary}");
            }
            let options = &settings.read_options;
            info!(
                "{} bytes crossed the wire for {} bytes read",
                options.wire_bytes.load(Ordering::Relaxed),
                options.data_bytes.load(Ordering::Relaxed)
            );
            archive::warn_no_wal(settings.fetch_wal, &archive_mode, info.in_recovery);
            out.announce(done.manifest_written);
            if !done.page_failures.is_empty() {
                bail_with!(
                    Exit::Corrupt,
                    "the backup is complete, but {} data page(s) failed checksum verification (listed above): \
                     the source cluster has corrupt data",
                    done.page_failures.len()
                );
            }
            Ok(())
        }
        Err(e) => {
            abort.fail();
            crate::interrupt::only_local_work_left();
            let e = if abort.signalled() {
                e.context(Failure::new(Exit::Interrupted, "interrupted by a signal"))
            } else {
                e
            };
            if delta.is_some() {
                warn!(
                    "the partial copy in {} was kept; it is NOT restorable, run again with --delta to resume",
                    settings.dest.display()
                );
            }
            // A refresh's DEST is shared: fail() leaves it as it is.
            if let Err(cleanup) = out.fail(settings.keep_partial && delta.is_none()) {
                warn!("{cleanup:#}");
            }
            Err(e)
        }
    }
}

/// What every step of one backup needs to know.
struct Run<'a> {
    settings: &'a Settings,
    spec: &'a ConnSpec,
    info: &'a ServerInfo,
    abort: &'a Abort,
    tablespaces: &'a [Tablespace],
    /// Where each linked tablespace is written: (oid, directory).
    targets: &'a [(u32, PathBuf)],
    /// Whether the backup stop waits until the server has archived the WAL
    /// the copy needs (without -x, where the server archives).
    wait_for_archive: bool,
}

fn backup_into(
    run: &Run,
    control: &mut Client,
    mut readers: Vec<Reader>,
    wal_reader: Option<Reader>,
    slot_obstacle: Option<String>,
    out: &mut dyn Output,
    mut delta: Option<&mut Delta>,
) -> Result<Finished> {
    let Run {
        settings,
        spec,
        info,
        abort,
        tablespaces,
        targets,
        wait_for_archive,
    } = *run;
    match slot_obstacle {
        Some(why) => warn!("no replication slot ({why}): WAL may be recycled before it is copied"),
        None => {
            let name = format!("pg_basebackup_{}", server::backend_pid(control)?);
            match server::create_temporary_slot(control, &name) {
                Ok(()) => {
                    info!("temporary replication slot {name} keeps the WAL this backup needs")
                }
                Err(e) => {
                    warn!("could not create a temporary replication slot, going on without: {e:#}")
                }
            }
        }
    }
    let promotion_watch = if info.in_recovery {
        info!(
            "the source is a standby: the backup ends at its minimum recovery point, \
             and fails if it is promoted meanwhile"
        );
        let mut client = spec.connect(WATCH_NAME)?;
        server::disable_timeouts(&mut client)?;
        Some(client)
    } else {
        None
    };
    // A spread checkpoint can take minutes: a signal cancels it (interrupt.rs).
    let start_lsn = server::start_backup(control, info, &settings.label, settings.fast_checkpoint)?;
    info!("backup started at {}", server::format_lsn(start_lsn));
    let aux = readers[0].client();
    let timeline = server::current_timeline(aux)?;
    let listing = server::list_data_directory(
        aux,
        &plan::listing_skip_names(),
        &plan::listing_skip_paths(),
    )?;
    let mut plan = plan::build(
        &listing,
        tablespaces,
        &info.tablespace_version_dir(),
        settings.only_paths.as_deref(),
        settings.chunk_size,
    )
    .map_err(|e| Failure::new(Exit::Backup, e))?;
    if settings.tar.is_none() {
        plan.tasks = plan::spread_files(plan.tasks);
    }
    info!(
        "{} files, {} MB, in {} read requests",
        plan.files.len(),
        plan.total_bytes() >> 20,
        plan.tasks.len()
    );
    for s in &plan.skipped {
        log::debug!("skipped {s}");
    }
    if let Some(d) = delta.as_deref_mut() {
        d.prune(&plan, targets, info.major())?;
    }
    out.layout(&plan, info, targets)?;
    let manifest_alg = settings.manifest.filter(|_| info.major() >= 13);
    let pages = (settings.verify_page_checksums && info.data_checksums && info.block_size == 8192)
        .then_some(PageVerification {
            start_lsn,
            blocks_per_segment: info.blocks_per_segment,
        });
    let integrity = Integrity::new(
        &plan.files,
        manifest_alg,
        pages,
        settings.jobs as u64 * settings.chunk_size,
    );

    let progress = Progress::new(settings.progress, plan.total_bytes());
    let wal_done = AtomicBool::new(false);
    let reconnect_wal = || open_reader(spec, settings, WAL_NAME);
    let mut follower = wal_reader.map(|r| {
        WalFollower::new(
            r,
            &reconnect_wal,
            info,
            timeline,
            start_lsn,
            settings.chunk_size,
            &progress,
        )
    });
    let (copied, readers_back, follower) = std::thread::scope(|s| -> Result<_> {
        let promotion = promotion_watch.map(|client| {
            let wal_done = &wal_done;
            std::thread::Builder::new()
                .name("watch promotion".into())
                .spawn_scoped(s, move || {
                    standby::watch_for_promotion(client, abort, wal_done)
                })
                .expect("spawn the standby promotion watch")
        });
        // The backup lives in the control session: losing it ends the copy.
        let watch = watchdog::watch(s, control, abort);
        let wal_dest = out.wal_dest();
        let wal_thread = follower.take().map(|mut f| {
            let wal_done = &wal_done;
            std::thread::Builder::new()
                .name("wal".into())
                .spawn_scoped(s, move || -> Result<WalFollower> {
                    let dest = wal_dest.context("no directory for the WAL")?;
                    let r = f.follow(dest, settings.wal_poll, abort, wal_done);
                    if r.is_err() {
                        abort.fail();
                    }
                    r.map(|()| f)
                })
                .expect("spawn the WAL thread")
        });
        let job = copy::Job {
            plan: &plan,
            sink: out.sink(),
            integrity: &integrity,
            progress: &progress,
            delta: delta.as_deref(),
        };
        let copied = copy::copy_files(
            std::mem::take(&mut readers),
            &job,
            &|| open_reader(spec, settings, WORKER_NAME),
            abort,
        );
        wal_done.store(true, Ordering::SeqCst);
        let follower = wal_thread
            .map(|t| t.join().expect("the WAL thread panicked"))
            .transpose();
        let promoted = promotion
            .map(|t| t.join().expect("the standby promotion watch panicked"))
            .transpose();
        // A promotion or a failed WAL thread is what stopped the copy: its
        // error comes first.
        watch.verdict(promoted.and_then(|_| {
            follower.and_then(|follower| {
                copied.map(|(copied, readers_back)| (copied, readers_back, follower))
            })
        }))
    })?;
    readers = readers_back;
    let odd_files = odd_names::copy(
        readers[0].client(),
        &plan.odd,
        out,
        settings.chunk_size,
        manifest_alg,
    )?;

    // global/pg_control: read after every other file, written after the label.
    let pg_control = match plan.pg_control {
        Some(i) => Some(pg_control::read_consistent(info.major(), || {
            read_whole(&mut readers[0], &plan.files[i].path, plan.files[i].size)
        })?),
        None => None,
    };
    progress.add_data(pg_control.as_ref().map_or(0, |b| b.len() as u64));
    if wait_for_archive {
        info!(
            "stopping the backup: waiting for the server to archive the WAL the copy needs{}",
            if info.in_recovery {
                " (a standby archives a segment once it has received all of it: \
                 this lasts until the primary fills or switches it, pg_switch_wal())"
            } else {
                ""
            }
        );
    }
    // Waiting for the archiver can take long: a signal cancels it (interrupt.rs).
    let stop = server::stop_backup(control, info, wait_for_archive)?;
    info!(
        "backup stopped at {}{}",
        server::format_lsn(stop.lsn),
        if info.in_recovery {
            " (the standby's minimum recovery point)"
        } else {
            ""
        }
    );
    if wait_for_archive {
        info!(
            "the server has archived the WAL the copy needs, through segment {}",
            wal::segment_name(
                timeline,
                (stop.lsn - 1) / info.wal_segment_size,
                info.wal_segment_size
            )
        );
    }
    let (mut wal_bytes, mut wal_segments) = (0, 0);
    // Without -x the copy's WAL comes from elsewhere; its range is the
    // start timeline's.
    let mut wal_ranges = vec![WalRange {
        timeline,
        start_lsn,
        end_lsn: stop.lsn,
    }];
    if let Some(mut f) = follower {
        let dest = out.wal_dest().context("no directory for the WAL")?;
        f.complete_through(dest, stop.lsn, settings.wal_poll, abort)?;
        (wal_bytes, wal_segments) = (progress.wal_bytes(), f.segments_copied());
        wal_ranges = f.wal_ranges(stop.lsn);
    }
    progress.finish();
    for &i in &copied.vanished {
        out.drop_vanished(&plan.files[i].path)?;
    }
    if abort.is_set() {
        anyhow::bail!("backup interrupted");
    }
    // Only writing DEST is left: a signal from here on lets the backup complete.
    crate::interrupt::only_local_work_left();
    if settings.sync {
        out.sync_data()?;
    }
    out.pack_wal()?;
    let now = unix_now();
    let tablespace_map = mapped_tablespace_map(&stop.tablespace_map, targets, info.major());
    if !tablespace_map.is_empty() {
        out.put_file("tablespace_map", tablespace_map.as_bytes(), now)?;
    }
    out.put_file("backup_label", stop.label_file.as_bytes(), now)?;
    if let Some(alg) = manifest_alg {
        let manifest = ManifestWriter::new(info.major(), info.system_identifier, alg);
        for (i, f) in plan.files.iter().enumerate() {
            if !copied.vanished.contains(&i) && Some(i) != plan.pg_control {
                manifest.add_file(
                    f.path.as_bytes(),
                    f.size,
                    f.mtime,
                    integrity.file_checksum(i)?,
                );
            }
        }
        for f in odd_files {
            manifest.add_file(&f.path, f.size, f.mtime, f.checksum);
        }
        let mut in_memory = vec![("backup_label", stop.label_file.as_bytes(), now)];
        if !tablespace_map.is_empty() {
            in_memory.push(("tablespace_map", tablespace_map.as_bytes(), now));
        }
        if let (Some(i), Some(bytes)) = (plan.pg_control, &pg_control) {
            in_memory.push((plan::PG_CONTROL, bytes, plan.files[i].mtime));
        }
        for (path, bytes, mtime) in in_memory {
            manifest.add_file(
                path.as_bytes(),
                bytes.len() as u64,
                mtime,
                checksum_of(alg, bytes)?,
            );
        }
        out.put_manifest(manifest.finish(&wal_ranges)?)?;
    }
    if settings.write_recovery_conf {
        write_recovery_conf(out, spec, info, now)?;
    }
    if let (Some(i), Some(bytes)) = (plan.pg_control, pg_control) {
        out.put_file(plan::PG_CONTROL, &bytes, plan.files[i].mtime)?;
    }
    out.finish()?;
    Ok(Finished {
        files: plan.files.len() - copied.vanished.len(),
        bytes: copied.bytes,
        wal_bytes,
        wal_segments,
        manifest_written: manifest_alg.is_some(),
        page_failures: integrity.page_failures(),
    })
}

/// -R: make the copy start as a streaming standby of the source. The
/// password goes into the file only if the DSN itself held it (not from
/// PGPASSWORD or .pgpass), as PostgreSQL's pg_basebackup does.
fn write_recovery_conf(
    out: &dyn Output,
    spec: &ConnSpec,
    info: &ServerInfo,
    now: i64,
) -> Result<()> {
    let conninfo = spec.conninfo_for_standby(spec.password_from_dsn());
    let setting = format!(
        "primary_conninfo = '{}'\n",
        conninfo.replace('\\', "\\\\").replace('\'', "''")
    );
    if info.major() >= 12 {
        let mut contents = out.copied_file(AUTO_CONF);
        if !contents.is_empty() && !contents.ends_with(b"\n") {
            contents.push(b'\n');
        }
        contents.extend_from_slice(setting.as_bytes());
        out.put_file(AUTO_CONF, &contents, now)?;
        out.put_file("standby.signal", b"", now)
    } else {
        out.put_file(
            "recovery.conf",
            format!("standby_mode = 'on'\n{setting}").as_bytes(),
            now,
        )
    }
}

/// A whole small file into memory (pg_control: 8 kB).
fn read_whole(reader: &mut Reader, path: &str, size: u64) -> Result<Vec<u8>> {
    let mut out = None;
    reader.read(&[(path, 0, size)], |_, data| {
        out = data.map(<[u8]>::to_vec);
        Ok(())
    })?;
    let mut bytes = out.with_context(|| format!("{path} vanished during the backup"))?;
    bytes.resize(size as usize, 0);
    Ok(bytes)
}

/// -S --stdin: copy the given files into DEST, with no backup start or stop
/// (another process runs the backup).
fn auxiliary_copy(settings: &Settings, spec: &ConnSpec, abort: &Abort) -> Result<()> {
    let (_control, info) = open_control(spec)?;
    let mut readers = open_readers(spec, settings, settings.jobs)?;
    let aux = readers[0].client();
    server::check_privileges(aux, &info, false)?;
    let tablespaces = server::tablespaces(aux)?;
    let listing = server::list_data_directory(
        aux,
        &plan::listing_skip_names(),
        &plan::listing_skip_paths(),
    )?;
    let mut plan = plan::build(
        &listing,
        &tablespaces,
        &info.tablespace_version_dir(),
        settings.only_paths.as_deref(),
        settings.chunk_size,
    )
    .map_err(|e| Failure::new(Exit::Usage, e))?;
    // Here pg_control is an ordinary file: the caller decides the order.
    plan.tasks = plan::chunk(&plan.files, None, settings.chunk_size);
    let dest = Dest::open_shared(&settings.dest, info.data_directory_mode)?;
    dest.create_dirs(
        plan.files
            .iter()
            .filter_map(|f| f.path.rsplit_once('/').map(|(dir, _)| dir)),
    )?;
    let integrity = Integrity::new(&plan.files, None, None, 0);
    let progress = Progress::new(settings.progress, plan.total_bytes());
    let job = copy::Job {
        plan: &plan,
        sink: &dest,
        integrity: &integrity,
        progress: &progress,
        delta: None,
    };
    let (copied, mut readers) = copy::copy_files(
        readers,
        &job,
        &|| open_reader(spec, settings, WORKER_NAME),
        abort,
    )?;
    dest.create_dirs(
        plan.odd
            .iter()
            .filter_map(|o| Path::new(OsStr::from_bytes(&o.path)).parent()),
    )?;
    let odd = odd_names::copy(
        readers[0].client(),
        &plan.odd,
        &dest,
        settings.chunk_size,
        None,
    )?;
    progress.finish();
    for &i in &copied.vanished {
        dest.remove_file(&plan.files[i].path)?;
    }
    if settings.sync {
        dest.sync()?;
    }
    info!(
        "copied {} files, {} MB",
        plan.files.len() - copied.vanished.len() + odd.len(),
        copied.bytes >> 20
    );
    Ok(())
}

/// -S -x: keep DEST/pg_wal up to date until stdin says `terminate` or a
/// signal arrives (the original's warm-standby feed).
fn follow_wal(settings: &Settings, spec: &ConnSpec, abort: &Abort) -> Result<()> {
    let (mut control, info) = open_control(spec)?;
    let mut reader = open_reader(spec, settings, WAL_NAME)?;
    server::check_privileges(reader.client(), &info, false)?;
    let dest = Dest::open_shared(&settings.dest, info.data_directory_mode)?;
    dest.create_dirs(plan::required_empty_dirs(info.major()))?;
    let timeline = server::current_timeline(reader.client())?;
    // Continue from the newest segment we already hold, else from the last
    // checkpoint's redo point (what a backup taken now would need).
    let newest_held = std::fs::read_dir(dest.path("pg_wal"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| wal::parse_segment_name(&n, info.wal_segment_size))
        .filter(|(tli, _)| *tli == timeline)
        .map(|(_, segno)| segno)
        .max();
    let start_lsn = match newest_held {
        Some(segno) => segno * info.wal_segment_size,
        None => server::last_redo_lsn(reader.client())?,
    };
    // A slot keeps the server from recycling WAL we have not copied yet; we
    // move it forward as segments complete (pg_replication_slot_advance, 11+).
    let slot = match (
        server::slot_obstacle(reader.client())?,
        info.version_num >= 110000,
    ) {
        (None, true) => {
            let name = format!("pg_basebackup_{}", server::backend_pid(&mut control)?);
            match server::create_temporary_slot(&mut control, &name) {
                Ok(()) => Some(name),
                Err(e) => {
                    warn!("could not create a temporary replication slot: {e:#}");
                    None
                }
            }
        }
        (Some(why), _) => {
            warn!("no replication slot ({why}): WAL may be recycled before it is copied");
            None
        }
        (None, false) => {
            warn!(
                "no replication slot on PostgreSQL 10 (it cannot advance one): set wal_keep_segments"
            );
            None
        }
    };
    let stdin_abort = abort.clone();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lines() {
                match line {
                    Ok(l) if l.trim() == "terminate" => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            stdin_abort.terminate();
        })?;
    let reconnect = || open_reader(spec, settings, WAL_NAME);
    let progress = Progress::new(settings.progress, 0);
    let mut follower = WalFollower::new(
        reader,
        &reconnect,
        &info,
        timeline,
        start_lsn,
        settings.chunk_size,
        &progress,
    );
    println!(
        "pg_basebackup: following WAL from {} into {}",
        follower.start_segment(),
        dest.path("pg_wal").display()
    );
    let mut slot_at = start_lsn;
    loop {
        if cut_short_by_stop(follower.poll(&dest, abort), abort)? {
            break;
        }
        if let Some(name) = &slot {
            // Everything before the first segment we do not hold in full can go.
            let mut next = start_lsn / info.wal_segment_size;
            for segno in follower.complete_segments() {
                if segno == next {
                    next += 1;
                }
            }
            let lsn = next * info.wal_segment_size;
            if lsn > slot_at {
                if cut_short_by_stop(server::advance_slot(&mut control, name, lsn), abort)? {
                    break;
                }
                slot_at = lsn;
            }
        }
        if abort.sleep(settings.wal_poll) {
            break;
        }
    }
    crate::interrupt::only_local_work_left();
    if settings.sync {
        dest.sync()?;
    }
    println!(
        "pg_basebackup: WAL follower stopped ({} bytes of WAL copied)",
        progress.wal_bytes()
    );
    Ok(())
}

/// Whether a step of the -S -x feed failed because a signal cancelled it
/// (interrupt.rs): a requested stop all the same, the next run copies that
/// segment again. Other failures are returned.
fn cut_short_by_stop(step: Result<impl Sized>, abort: &Abort) -> Result<bool> {
    match step {
        Err(e) if abort.signalled() => {
            log::debug!("cut short by the stop: {e:#}");
            Ok(true)
        }
        Err(e) => Err(e),
        Ok(_) => Ok(false),
    }
}

/// Used by tests of the tablespace map rewrite.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_map_points_at_the_copies() {
        let map = "16400 /srv/ts1\n16401 /srv/ts\\\\2\n";
        let targets = vec![(16400, PathBuf::from("/copy/ts1"))];
        assert_eq!(
            mapped_tablespace_map(map, &targets, 15),
            "16400 /copy/ts1\n16401 /srv/ts\\\\2\n"
        );
        let targets = vec![(16401, PathBuf::from("/c/a\\b"))];
        assert_eq!(
            mapped_tablespace_map(map, &targets, 15),
            "16400 /srv/ts1\n16401 /c/a\\\\b\n"
        );
        assert_eq!(
            mapped_tablespace_map(map, &targets, 13),
            "16400 /srv/ts1\n16401 /c/a\\b\n"
        );
    }
}
