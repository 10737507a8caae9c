//! The backup, read top to bottom as PostgreSQL's BaseBackup(): the run is
//! prepared (sessions, privileges, tablespaces, the output), then the
//! backup goes through four phases: start, copy, stop, finish.
//!
//! The order of the steps is what makes the copy correct. The control
//! session only creates the slot and starts and stops the backup (any
//! ERROR there would silently drop the slot): all listing and reading
//! happens on other sessions. backup_label and tablespace_map come from the
//! stop call and are written after every data file, and global/pg_control
//! last, so a copy that was cut short can never start. On any failure the
//! control session is closed, which ends the backup on the server and
//! drops the slot.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use log::{info, warn};
use postgres::Client;
use postgres::types::PgLsn;

use crate::abort::Abort;
use crate::bail_with;
use crate::cli::Settings;
use crate::conn::ConnSpec;
use crate::copy::{CopyOutcome, Job, copy_files};
use crate::delta::{self, Delta, Earlier};
use crate::error::{Exit, Failure};
use crate::incremental::label::add_incremental_lines;
use crate::integrity::checksum::{ChecksumAlgorithm, checksum_of};
use crate::integrity::{Integrity, PageFailure, PageVerification};
use crate::manifest::ManifestWriter;
use crate::odd_names::{self, OddFile};
use crate::output::dest::{self, Dest};
use crate::output::tar::{TarOptions, TarOutput};
use crate::output::{AUTO_CONF, Output, unix_now};
use crate::pg::pg_control;
use crate::pg::timeline::WalRange;
use crate::pg::version::{MINIMUM_VERSION_FOR_MANIFESTS, MINIMUM_VERSION_FOR_RECOVERY_GUC};
use crate::pg::wal_names::segment_name;
use crate::pg::{BLCKSZ, Lsn};
use crate::plan::{self, Plan};
use crate::progress::{Progress, Summary};
use crate::run::incremental::{self, Prior};
use crate::run::tablespaces;
use crate::run::{
    Sessions, WAL_NAME, WATCH_NAME, WORKER_NAME, open_control, open_reader, plan_copy,
    temporary_slot,
};
use crate::session::reader::ReadOptions;
use crate::session::server::{self, BackupStop, ServerInfo, Tablespace};
use crate::session::{archive, standby, watchdog};
use crate::wal::WalFollower;

pub fn backup(
    settings: &Settings,
    spec: &ConnSpec,
    reading: &Arc<ReadOptions>,
    abort: &Abort,
) -> Result<()> {
    let began = Instant::now();
    let prior = settings
        .incremental
        .as_ref()
        .map(incremental::read_prior)
        .transpose()?;
    let earlier = inspect_dest(settings)?;
    let (mut sessions, info) = open_sessions(settings, spec, reading, earlier.as_ref())?;
    let prior = match (prior, &settings.incremental) {
        (Some(manifest), Some(inc)) => Some(incremental::check_server(
            manifest,
            inc,
            &mut sessions.control,
            &info,
        )?),
        _ => None,
    };
    let mut run = survey(
        settings,
        spec,
        reading,
        &info,
        abort,
        &mut sessions,
        earlier.is_some(),
    )?;
    run.prior = prior;
    let (mut out, mut delta) = open_output(&run, &mut sessions, earlier)?;
    let result = backup_into(&run, &mut sessions, &mut *out, delta.as_mut());
    // Closing the control session ends the backup on the server (if it is
    // still running) and drops the temporary slot.
    drop(sessions);
    match result {
        Ok(done) => {
            if let Some(d) = delta {
                d.finish(done.bytes)?;
            }
            report(&run, &done, &*out, began);
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
        Err(e) => Err(fail(&run, e, out, delta.is_some())),
    }
}

/// What DEST holds already: the copy --delta refreshes, else nothing (DEST
/// must be empty or absent; a tar to stdout has no DEST).
fn inspect_dest(settings: &Settings) -> Result<Option<Earlier>> {
    Ok(match settings.delta {
        Some(options) => Some(delta::inspect(&settings.dest, options)?),
        None if settings.tar.is_some_and(|t| t.to_stdout) => None,
        None => {
            dest::check(&settings.dest, settings.force)?;
            None
        }
    })
}

/// Every session the backup needs, opened before anything is done on the
/// server, once it said it has room for them.
fn open_sessions(
    settings: &Settings,
    spec: &ConnSpec,
    reading: &Arc<ReadOptions>,
    earlier: Option<&Earlier>,
) -> Result<(Sessions, ServerInfo)> {
    let (mut control, info) = open_control(spec)?;
    if let Some(earlier) = earlier {
        delta::check_server(earlier, &info)?;
    }
    server::check_free_connections(
        &mut control,
        settings.jobs as u32 + u32::from(settings.fetch_wal) + u32::from(info.in_recovery),
    )?;
    // The reading sessions open while the control session runs its checks
    // (Sessions::ready).
    let sessions = Sessions::open(control, spec, reading, settings.jobs, settings.fetch_wal);
    Ok((sessions, info))
}

/// What every phase of one backup needs to know.
struct Run<'a> {
    settings: &'a Settings,
    spec: &'a ConnSpec,
    /// Shared by every reading session of the run.
    reading: &'a Arc<ReadOptions>,
    info: &'a ServerInfo,
    abort: &'a Abort,
    tablespaces: Vec<Tablespace>,
    /// Where each linked tablespace is written: (oid, directory).
    targets: Vec<(u32, PathBuf)>,
    /// Why the role cannot have a replication slot, if it cannot.
    slot_obstacle: Option<String>,
    /// The server's archive_mode: off, on or always.
    archive_mode: String,
    /// Whether the backup stop waits until the server has archived the WAL
    /// the copy needs (without -x, where the server archives).
    wait_for_archive: bool,
    /// --incremental: the prior backup.
    prior: Option<Prior>,
}

/// Before anything is done on the server: whether the role may do all the
/// backup needs, and what the server has (tablespaces, slots, archiving).
fn survey<'a>(
    settings: &'a Settings,
    spec: &'a ConnSpec,
    reading: &'a Arc<ReadOptions>,
    info: &'a ServerInfo,
    abort: &'a Abort,
    sessions: &mut Sessions,
    refresh: bool,
) -> Result<Run<'a>> {
    // Before the backup starts an ERROR on the control session costs
    // nothing, and the reading sessions may still be opening.
    let queries = &mut sessions.control;
    server::check_privileges(queries, info, true)?;
    let tablespaces = server::tablespaces(queries)?;
    // A tar keeps the links to the original locations: nothing is written
    // there. A refresh keeps the tablespace directories its copy links to.
    let targets = match settings.tar {
        Some(_) => Vec::new(),
        None => {
            let earlier_links = if refresh {
                delta::tablespace_links(&settings.dest)
            } else {
                Vec::new()
            };
            tablespaces::targets(&tablespaces, &settings.tablespace_mapping, &earlier_links)?
        }
    };
    let slot_obstacle = server::slot_obstacle(queries)?;
    let archive_mode = server::archive_mode(queries)?;
    archive::announce(settings.fetch_wal, &archive_mode, info.in_recovery);
    Ok(Run {
        settings,
        spec,
        reading,
        info,
        abort,
        tablespaces,
        targets,
        slot_obstacle,
        wait_for_archive: archive::stop_waits(settings.fetch_wal, &archive_mode, info.in_recovery),
        archive_mode,
        prior: None,
    })
}

/// Where the copy goes: a tar, the copy --delta refreshes (with the Delta
/// that compares against it), or a new plain DEST.
fn open_output(
    run: &Run,
    sessions: &mut Sessions,
    earlier: Option<Earlier>,
) -> Result<(Box<dyn Output>, Option<Delta>)> {
    let (settings, info) = (run.settings, run.info);
    Ok(match (settings.tar, earlier) {
        (Some(format), _) => (
            Box::new(TarOutput::create(
                &TarOptions {
                    format,
                    dest: &settings.dest,
                    jobs: settings.jobs,
                    sync: settings.sync,
                    fetch_wal: settings.fetch_wal,
                    write_recovery_conf: settings.write_recovery_conf,
                },
                info,
                &run.tablespaces,
            )?),
            None,
        ),
        // A refresh keeps DEST as it is, also when it fails (it resumes).
        (None, Some(earlier)) => {
            let dest = Dest::open_shared(&settings.dest, info.data_directory_mode)?
                .with_early_writeback(settings.sync);
            let delta = Delta::begin(earlier, &dest, info, sessions.queries()?.client())?;
            (Box::new(dest), Some(delta))
        }
        (None, None) => (
            Box::new(
                Dest::prepare(&settings.dest, info.data_directory_mode)?
                    .with_early_writeback(settings.sync),
            ),
            None,
        ),
    })
}

/// Everything the report after the backup needs to know.
struct Finished {
    files: usize,
    bytes: u64,
    wal_bytes: u64,
    wal_segments: u64,
    manifest_written: bool,
    page_failures: Vec<PageFailure>,
    /// --incremental: the size of what the backup stands for.
    full_bytes: Option<u64>,
}

/// The four phases. The WAL follower (-x) is made here because it borrows
/// the progress the copy phase also counts on.
fn backup_into(
    run: &Run,
    sessions: &mut Sessions,
    out: &mut dyn Output,
    mut delta: Option<&mut Delta>,
) -> Result<Finished> {
    let mut started = start(run, sessions, out, delta.as_deref_mut())?;
    let progress = Progress::new(run.settings.progress, started.plan.total_bytes());
    let reconnect_wal = || open_reader(run.spec, run.reading, WAL_NAME);
    let follower = sessions.wal.take().map(|r| {
        WalFollower::new(
            r,
            &reconnect_wal,
            run.info,
            started.timeline,
            started.start_lsn,
            run.settings.chunk_size,
            &progress,
        )
    });
    let (copied, follower) = copy(
        run,
        sessions,
        &mut started,
        follower,
        out,
        delta.as_deref(),
        &progress,
    )?;
    let stopped = stop(
        run,
        &mut sessions.control,
        &started,
        follower,
        out,
        &progress,
    )?;
    finish(run, out, &started, &copied, &stopped)
}

/// What the start phase learnt.
struct Started {
    start_lsn: Lsn,
    /// The timeline the server was on at the start.
    timeline: u32,
    plan: Plan,
    /// A session that watches a standby source for a promotion.
    promotion_watch: Option<Client>,
    /// --incremental: what backup_label says the backup is incremental from.
    incremental_from: Option<incremental::From>,
}

/// Start: the slot, the backup start (its checkpoint), the listing and the
/// plan, and DEST laid out for it.
fn start(
    run: &Run,
    sessions: &mut Sessions,
    out: &mut dyn Output,
    delta: Option<&mut Delta>,
) -> Result<Started> {
    let (settings, info) = (run.settings, run.info);
    // Every session is open before the server does anything for the
    // backup: one that cannot be opened (or a --wire-compression the
    // server cannot do) is refused before a checkpoint, not after.
    sessions.ready()?;
    let control = &mut sessions.control;
    let going_on = ", going on without";
    if let Some(name) = temporary_slot(control, run.slot_obstacle.as_deref(), going_on)? {
        info!("temporary replication slot {name} keeps the WAL this backup needs");
    }
    let promotion_watch = if info.in_recovery {
        info!(
            "the source is a standby: the backup ends at its minimum recovery point, \
             and fails if it is promoted meanwhile"
        );
        let mut client = run.spec.connect(WATCH_NAME)?;
        server::disable_timeouts(&mut client)?;
        Some(client)
    } else {
        None
    };
    // A spread checkpoint can take minutes: a signal cancels it (interrupt.rs).
    let start_lsn = server::start_backup(control, info, &settings.label, settings.fast_checkpoint)?;
    info!("backup started at {}", PgLsn::from(start_lsn));
    let queries = sessions.queries()?.client();
    let timeline = server::current_timeline(queries)?;
    let mut plan = plan_copy(queries, info, &run.tablespaces, settings, Exit::Backup)?;
    let incremental_from = match &run.prior {
        Some(prior) => Some(incremental::apply(
            prior,
            queries,
            info,
            (timeline, start_lsn),
            &mut plan,
            settings.chunk_size,
            run.abort,
        )?),
        None => None,
    };
    info!(
        "{} files, {} MB, in {} read requests",
        plan.files.len(),
        plan.total_bytes() >> 20,
        plan.tasks.len()
    );
    for s in &plan.skipped {
        log::debug!("skipped {s}");
    }
    if let Some(d) = delta {
        d.prune(&plan, &run.targets, info.major())?;
    }
    out.layout(&plan, info, &run.targets)?;
    Ok(Started {
        start_lsn,
        timeline,
        plan,
        promotion_watch,
        incremental_from,
    })
}

/// What the copy phase produced.
struct Copied {
    outcome: CopyOutcome,
    integrity: Integrity,
    /// The manifest's checksum algorithm, when a manifest is written.
    manifest_alg: Option<ChecksumAlgorithm>,
    /// The files whose names are not UTF-8, for the manifest.
    odd_files: Vec<OddFile>,
    /// global/pg_control as read last, written last.
    pg_control: Option<Vec<u8>>,
}

/// Copy: every file of the plan, in parallel with the WAL (-x); then the
/// files whose names are not UTF-8 and, after every other file,
/// pg_control.
fn copy<'f>(
    run: &Run,
    sessions: &mut Sessions,
    started: &mut Started,
    follower: Option<WalFollower<'f>>,
    out: &dyn Output,
    delta: Option<&Delta>,
    progress: &Progress,
) -> Result<(Copied, Option<WalFollower<'f>>)> {
    let (settings, info, plan) = (run.settings, run.info, &started.plan);
    let manifest_alg = settings
        .manifest
        .filter(|_| info.version_num >= MINIMUM_VERSION_FOR_MANIFESTS);
    let pages =
        (settings.verify_page_checksums && info.data_checksums && info.block_size == BLCKSZ as u32)
            .then_some(PageVerification {
                start_lsn: started.start_lsn,
                blocks_per_segment: info.blocks_per_segment,
            });
    let integrity = Integrity::new(
        &plan.files,
        manifest_alg,
        pages,
        settings.jobs as u64 * settings.chunk_size,
    );
    let job = Job {
        plan,
        sink: out.sink(),
        integrity: &integrity,
        progress,
        delta,
    };
    let promotion_watch = started.promotion_watch.take();
    let (outcome, follower) = copy_watched(run, sessions, promotion_watch, follower, out, &job)?;
    let queries = sessions.queries()?;
    let odd_files = odd_names::copy(
        queries.client(),
        &plan.odd,
        out,
        settings.chunk_size,
        manifest_alg,
    )?;
    // global/pg_control: read after every other file, written after the label.
    let pg_control = match plan.pg_control {
        Some(i) => Some(pg_control::read_consistent(info.major(), || {
            queries.read_whole(&plan.files[i].path, plan.files[i].size)
        })?),
        None => None,
    };
    progress.add_data(pg_control.as_ref().map_or(0, |b| b.len() as u64));
    let copied = Copied {
        outcome,
        integrity,
        manifest_alg,
        odd_files,
        pg_control,
    };
    Ok((copied, follower))
}

/// The workers copy the plan while beside them the WAL follower copies WAL
/// and two watches ask whether the backup still stands: the control
/// session's (losing it ends the backup) and, on a standby, the promotion
/// watch. A failure of any of them stops the workers.
fn copy_watched<'f>(
    run: &Run,
    sessions: &mut Sessions,
    promotion_watch: Option<Client>,
    follower: Option<WalFollower<'f>>,
    out: &dyn Output,
    job: &Job,
) -> Result<(CopyOutcome, Option<WalFollower<'f>>)> {
    let (settings, abort) = (run.settings, run.abort);
    let wal_done = AtomicBool::new(false);
    let workers = std::mem::take(&mut sessions.workers);
    let control = &mut sessions.control;
    let (copied, workers, follower) = std::thread::scope(|s| -> Result<_> {
        let wal_done = &wal_done;
        let promotion = promotion_watch.map(|client| {
            std::thread::Builder::new()
                .name("watch promotion".into())
                .spawn_scoped(s, move || {
                    standby::watch_for_promotion(client, abort, wal_done)
                })
                .expect("spawn the standby promotion watch")
        });
        let watch = watchdog::watch(s, control, abort);
        let wal_dest = out.wal_dest();
        let wal_thread = follower.map(|mut f| {
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
        let reconnect = || open_reader(run.spec, run.reading, WORKER_NAME);
        let copied = copy_files(workers, job, &reconnect, abort);
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
            follower
                .and_then(|follower| copied.map(|(copied, workers)| (copied, workers, follower)))
        }))
    })?;
    sessions.workers = workers;
    Ok((copied, follower))
}

/// What the stop phase learnt.
struct Stopped {
    stop: BackupStop,
    wal: WalCopied,
}

/// The WAL of the copy: its ranges for the manifest and, with -x, what was
/// copied.
struct WalCopied {
    ranges: Vec<WalRange>,
    bytes: u64,
    segments: u64,
}

/// Stop: the backup stop (which may wait for the archiver) and, with -x,
/// the WAL through the stop position.
fn stop(
    run: &Run,
    control: &mut Client,
    started: &Started,
    follower: Option<WalFollower>,
    out: &dyn Output,
    progress: &Progress,
) -> Result<Stopped> {
    let info = run.info;
    if run.wait_for_archive {
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
    let mut stop = server::stop_backup(control, info, run.wait_for_archive)?;
    // pg_backup_stop() leaves out what the server's own incremental backup
    // adds (xlogbackup.c:build_backup_content).
    if let Some(from) = started.incremental_from {
        stop.label_file = add_incremental_lines(&stop.label_file, from.lsn, from.tli)?;
    }
    info!(
        "backup stopped at {}{}",
        PgLsn::from(stop.lsn),
        if info.in_recovery {
            " (the standby's minimum recovery point)"
        } else {
            ""
        }
    );
    if run.wait_for_archive {
        info!(
            "the server has archived the WAL the copy needs, through segment {}",
            segment_name(
                started.timeline,
                (stop.lsn - 1) / info.wal_segment_size,
                info.wal_segment_size
            )
        );
    }
    let wal = complete_wal(run, started, follower, stop.lsn, out, progress)?;
    progress.finish();
    Ok(Stopped { stop, wal })
}

/// The WAL from the start to `stop_lsn`: with -x the follower's final
/// sweep; without, it comes from elsewhere and its range is the start
/// timeline's.
fn complete_wal(
    run: &Run,
    started: &Started,
    follower: Option<WalFollower>,
    stop_lsn: Lsn,
    out: &dyn Output,
    progress: &Progress,
) -> Result<WalCopied> {
    let Some(mut f) = follower else {
        return Ok(WalCopied {
            ranges: vec![WalRange {
                timeline: started.timeline,
                start_lsn: started.start_lsn,
                end_lsn: stop_lsn,
            }],
            bytes: 0,
            segments: 0,
        });
    };
    let dest = out.wal_dest().context("no directory for the WAL")?;
    f.complete_through(dest, stop_lsn, run.settings.wal_poll, run.abort)?;
    Ok(WalCopied {
        ranges: f.wal_ranges(stop_lsn),
        bytes: progress.wal_bytes(),
        segments: f.segments_copied(),
    })
}

/// Finish: what is left is writing DEST. The files that vanished go, then
/// come the labels from the stop call, the manifest, -R's settings, and
/// pg_control last.
fn finish(
    run: &Run,
    out: &mut dyn Output,
    started: &Started,
    copied: &Copied,
    stopped: &Stopped,
) -> Result<Finished> {
    let (settings, info, plan) = (run.settings, run.info, &started.plan);
    for &i in &copied.outcome.vanished {
        out.drop_vanished(&plan.files[i].path)?;
    }
    if run.abort.is_set() {
        anyhow::bail!("backup interrupted");
    }
    // Only writing DEST is left: a signal from here on lets the backup complete.
    crate::interrupt::only_local_work_left();
    if settings.sync {
        out.sync_data()?;
    }
    out.pack_wal()?;
    let now = unix_now();
    // A plain incremental backup has no tablespace_map, as PostgreSQL's own
    // (pg_basebackup.c asks for one only with -F t): pg_combinebackup
    // copies the final backup's, and the restored server would follow it
    // to that backup's tablespace directories instead of its -T targets.
    let tablespace_map = if run.prior.is_some() && settings.tar.is_none() {
        String::new()
    } else {
        tablespaces::mapped_tablespace_map(
            &stopped.stop.tablespace_map,
            &run.targets,
            info.version_num,
        )
    };
    if !tablespace_map.is_empty() {
        out.put_file("tablespace_map", tablespace_map.as_bytes(), now)?;
    }
    out.put_file("backup_label", stopped.stop.label_file.as_bytes(), now)?;
    if let Some(alg) = copied.manifest_alg {
        let manifest = manifest(run, started, copied, stopped, alg, &tablespace_map, now)?;
        out.put_manifest(manifest)?;
    }
    if settings.write_recovery_conf {
        write_recovery_conf(out, run.spec, info, now)?;
    }
    if let (Some(i), Some(bytes)) = (plan.pg_control, &copied.pg_control) {
        out.put_file(plan::PG_CONTROL, bytes, plan.files[i].mtime)?;
    }
    out.finish()?;
    Ok(Finished {
        files: plan.files.len() - copied.outcome.vanished.len(),
        bytes: copied.outcome.bytes,
        wal_bytes: stopped.wal.bytes,
        wal_segments: stopped.wal.segments,
        manifest_written: copied.manifest_alg.is_some(),
        page_failures: copied.integrity.page_failures(),
        full_bytes: run.prior.as_ref().map(|_| incremental::full_bytes(plan)),
    })
}

/// backup_manifest: every file copied, with the labels and pg_control that
/// were written from memory, and the WAL ranges.
fn manifest(
    run: &Run,
    started: &Started,
    copied: &Copied,
    stopped: &Stopped,
    alg: ChecksumAlgorithm,
    tablespace_map: &str,
    now: i64,
) -> Result<Vec<u8>> {
    let plan = &started.plan;
    let manifest = ManifestWriter::new(run.info.major(), run.info.system_identifier, alg);
    for (i, f) in plan.files.iter().enumerate() {
        if !copied.outcome.vanished.contains(&i) && Some(i) != plan.pg_control {
            manifest.add_file(
                f.path.as_bytes(),
                f.size,
                f.mtime,
                copied.integrity.file_checksum(i)?,
            );
        }
    }
    for f in &copied.odd_files {
        manifest.add_file(&f.path, f.size, f.mtime, f.checksum.clone());
    }
    let mut in_memory = vec![("backup_label", stopped.stop.label_file.as_bytes(), now)];
    if !tablespace_map.is_empty() {
        in_memory.push(("tablespace_map", tablespace_map.as_bytes(), now));
    }
    if let (Some(i), Some(bytes)) = (plan.pg_control, &copied.pg_control) {
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
    manifest.finish(&stopped.wal.ranges)
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
    if info.version_num >= MINIMUM_VERSION_FOR_RECOVERY_GUC {
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

/// The summary of a backup that worked, and where its WAL must come from.
fn report(run: &Run, done: &Finished, out: &dyn Output, began: Instant) {
    let settings = run.settings;
    let summary = Summary {
        files: done.files as u64,
        data_bytes: done.bytes,
        wal_segments: done.wal_segments,
        wal_bytes: done.wal_bytes,
        seconds: began.elapsed().as_secs_f64(),
        checksum_failures: done.page_failures.len() as u64,
        manifest_written: done.manifest_written,
        full_bytes: done.full_bytes,
    };
    if done.page_failures.is_empty() {
        info!("{summary}");
    } else {
        warn!("{summary}");
    }
    let options = run.reading;
    info!(
        "{} bytes crossed the wire for {} bytes read",
        options.wire_bytes.load(Ordering::Relaxed),
        options.data_bytes.load(Ordering::Relaxed)
    );
    archive::warn_no_wal(settings.fetch_wal, &run.archive_mode, run.info.in_recovery);
    out.announce(done.manifest_written);
}

/// A backup that failed: every thread is told to stop, and DEST removed
/// (kept with --keep-partial, and a refreshed copy always: it resumes).
fn fail(run: &Run, e: anyhow::Error, out: Box<dyn Output>, refresh: bool) -> anyhow::Error {
    let (settings, abort) = (run.settings, run.abort);
    abort.fail();
    crate::interrupt::only_local_work_left();
    let e = if abort.signalled() {
        e.context(Failure::new(Exit::Interrupted, "interrupted by a signal"))
    } else {
        e
    };
    if refresh {
        warn!(
            "the partial copy in {} was kept; it is NOT restorable, run again with --delta to resume",
            settings.dest.display()
        );
    }
    // A refresh's DEST is shared: fail() leaves it as it is.
    if let Err(cleanup) = out.fail(settings.keep_partial && !refresh) {
        warn!("{cleanup:#}");
    }
    e
}
