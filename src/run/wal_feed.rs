//! `-S -x`: keep DEST/pg_wal up to date until stdin says `terminate` or a
//! signal arrives (the original script's warm-standby feed).
//!
//! It goes on from the newest segment DEST holds, so a feed that was
//! stopped resumes where it was; a temporary slot, moved forward as
//! segments complete, keeps the server from recycling WAL not yet copied.

use std::sync::Arc;

use anyhow::Result;
use log::warn;
use postgres::Client;

use crate::abort::Abort;
use crate::cli::Settings;
use crate::conn::ConnSpec;
use crate::output::dest::Dest;
use crate::pg::Lsn;
use crate::pg::version::MINIMUM_VERSION_FOR_SLOT_ADVANCE;
use crate::pg::wal_names::parse_segment_name;
use crate::plan;
use crate::progress::Progress;
use crate::run::{WAL_NAME, open_control, open_reader, temporary_slot};
use crate::session::reader::{ReadOptions, Reader};
use crate::session::server::{self, ServerInfo};
use crate::wal::WalFollower;

pub fn follow_wal(
    settings: &Settings,
    spec: &ConnSpec,
    reading: &Arc<ReadOptions>,
    abort: &Abort,
) -> Result<()> {
    let (mut control, info) = open_control(spec)?;
    let mut reader = open_reader(spec, reading, WAL_NAME)?;
    server::check_privileges(reader.client(), &info, false)?;
    let dest = Dest::open_shared(&settings.dest, info.data_directory_mode)?
        .with_early_writeback(settings.sync);
    dest.create_dirs(plan::required_empty_dirs(info.major()))?;
    let timeline = server::current_timeline(reader.client())?;
    let start_lsn = start_position(&dest, &info, timeline, &mut reader)?;
    let slot = advancing_slot(&mut control, &info, reader.client())?;
    stop_on_terminate(abort)?;
    let reconnect = || open_reader(spec, reading, WAL_NAME);
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
    let feed = Feed {
        control: &mut control,
        slot,
        start_lsn,
        segment_size: info.wal_segment_size,
    };
    feed.run(&mut follower, &dest, settings, abort)?;
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

/// Where to begin: from the newest segment of this timeline we already
/// hold (it may be partial), else from the last checkpoint's redo point
/// (what a backup taken now would need).
fn start_position(
    dest: &Dest,
    info: &ServerInfo,
    timeline: u32,
    reader: &mut Reader,
) -> Result<Lsn> {
    let newest_held = std::fs::read_dir(dest.path("pg_wal"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| parse_segment_name(&n, info.wal_segment_size))
        .filter(|(tli, _)| *tli == timeline)
        .map(|(_, segno)| segno)
        .max();
    Ok(match newest_held {
        Some(segno) => segno * info.wal_segment_size,
        None => server::last_redo_lsn(reader.client())?,
    })
}

/// A temporary slot the feed can move forward (pg_replication_slot_advance,
/// 11+), if the role may have one.
fn advancing_slot(
    control: &mut Client,
    info: &ServerInfo,
    queries: &mut Client,
) -> Result<Option<String>> {
    let obstacle = server::slot_obstacle(queries)?;
    if obstacle.is_none() && info.version_num < MINIMUM_VERSION_FOR_SLOT_ADVANCE {
        warn!(
            "no replication slot on PostgreSQL 10 (it cannot advance one): set wal_keep_segments"
        );
        return Ok(None);
    }
    temporary_slot(control, obstacle.as_deref(), "")
}

/// A line `terminate` on stdin (or its end) stops the feed as a signal
/// does.
fn stop_on_terminate(abort: &Abort) -> Result<()> {
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
    Ok(())
}

/// The feed's loop and what it moves forward besides the WAL: the slot.
struct Feed<'c> {
    control: &'c mut Client,
    slot: Option<String>,
    start_lsn: Lsn,
    segment_size: u64,
}

impl Feed<'_> {
    /// Poll every --wal-poll until told to stop; after each poll, move the
    /// slot up to the first segment we do not hold in full.
    fn run(
        self,
        follower: &mut WalFollower,
        dest: &Dest,
        settings: &Settings,
        abort: &Abort,
    ) -> Result<()> {
        let mut slot_at = self.start_lsn;
        loop {
            if cut_short_by_stop(follower.poll(dest, abort), abort)? {
                return Ok(());
            }
            if let Some(name) = &self.slot {
                // Everything before the first segment we do not hold in full can go.
                let mut next = self.start_lsn / self.segment_size;
                for segno in follower.complete_segments() {
                    if segno == next {
                        next += 1;
                    }
                }
                let lsn = next * self.segment_size;
                if lsn > slot_at {
                    let advanced = server::advance_slot(self.control, name, lsn);
                    if cut_short_by_stop(advanced, abort)? {
                        return Ok(());
                    }
                    slot_at = lsn;
                }
            }
            if abort.sleep(settings.wal_poll) {
                return Ok(());
            }
        }
    }
}

/// Whether a step of the feed failed because a signal cancelled it
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
