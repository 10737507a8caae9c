//! One run of the tool: the settings pick the mode, one file each.
//!
//! A backup (`backup`), the default; `--clean` ends what an earlier tool
//! left on the server (`clean`); `-S --stdin` copies the files it is given
//! while another process runs the backup (`aux_copy`); `-S -x` keeps
//! DEST/pg_wal up to date (`wal_feed`). Here too is what the modes share:
//! the sessions a run opens, its temporary slot and its plan.

mod aux_copy;
mod backup;
mod clean;
mod incremental;
mod tablespaces;
mod wal_feed;

use std::sync::Arc;

use anyhow::Result;
use log::{info, warn};
use postgres::Client;

use crate::abort::Abort;
use crate::cli::{RunMode, Settings};
use crate::conn::ConnSpec;
use crate::error::{Exit, Failure};
use crate::plan::{self, Plan};
use crate::session::reader::{ReadOptions, Reader};
use crate::session::server::{self, ServerInfo, Tablespace};
use crate::throttle::Throttle;

/// application_name of each kind of session, so a DBA can tell them apart
/// in pg_stat_activity.
const APPLICATION_NAME: &str = "pg_basebackup";
const WORKER_NAME: &str = "pg_basebackup worker";
const WAL_NAME: &str = "pg_basebackup wal";
const WATCH_NAME: &str = "pg_basebackup watch";

/// Run the mode the settings ask for.
pub fn run(settings: &Settings, abort: &Abort) -> Result<()> {
    let spec = ConnSpec::from_dsn(&settings.dsn)?;
    // What every reading session of this run shares: the rate limit, the
    // compression choice and the byte counters.
    let reading = ReadOptions::new(
        settings.max_rate.map(Throttle::new),
        settings.wire_compression,
    );
    match settings.mode {
        RunMode::Clean => clean::clean(&spec),
        RunMode::Backup => backup::backup(settings, &spec, &reading, abort),
        RunMode::AuxiliaryCopy => aux_copy::auxiliary_copy(settings, &spec, &reading, abort),
        RunMode::WalFollower => wal_feed::follow_wal(settings, &spec, &reading, abort),
    }
}

/// The control session, with timeouts off, and what the server is. A
/// backup lives in this session and so does the temporary slot: it runs
/// only statements that cannot fail, since an ERROR would silently drop
/// the slot.
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

/// One reading session per name in `names` (their application_name), all
/// sharing the run's rate limit, opened side by side: each costs a round
/// trip or three and a backend start on the server, 30-90 ms here, and a
/// backup opens up to five before it can start.
fn open_readers(
    spec: &ConnSpec,
    reading: &Arc<ReadOptions>,
    names: &[&str],
) -> Result<Vec<Reader>> {
    let opened: Vec<Result<Reader>> = std::thread::scope(|scope| {
        let opening: Vec<_> = names
            .iter()
            .map(|name| scope.spawn(move || open_reader(spec, reading, name)))
            .collect();
        opening
            .into_iter()
            .map(|o| {
                o.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    // The first failure in the order asked for, as opening them one by one
    // would report it; the others close as they drop.
    opened.into_iter().collect()
}

fn open_reader(
    spec: &ConnSpec,
    reading: &Arc<ReadOptions>,
    application_name: &str,
) -> Result<Reader> {
    Reader::new(spec.connect(application_name)?, reading.clone())
}

/// The sessions a run opens up front, once the server said it has room
/// for them.
struct Sessions {
    /// The copy's workers, one reading session each.
    workers: Vec<Reader>,
    /// The WAL follower's (-x).
    wal: Option<Reader>,
    /// The workers' and the WAL follower's sessions while they are being
    /// opened, in the background of the control session's first
    /// statements; see [`Sessions::ready`].
    opening: Option<Opening>,
    /// See [`open_control`]. Declared last, so closed last: closing it
    /// ends the backup on the server.
    control: Client,
}

/// Reading sessions being opened on a thread of their own: the workers',
/// then the WAL follower's if `wal`.
struct Opening {
    thread: std::thread::JoinHandle<Result<Vec<Reader>>>,
    wal: bool,
}

impl Opening {
    /// Start opening `jobs` worker sessions, and the WAL follower's if
    /// `wal`, side by side.
    fn start(spec: &ConnSpec, reading: &Arc<ReadOptions>, jobs: usize, wal: bool) -> Opening {
        let mut names = vec![WORKER_NAME; jobs];
        if wal {
            names.push(WAL_NAME);
        }
        let (spec, reading) = (spec.clone(), reading.clone());
        let thread = std::thread::spawn(move || open_readers(&spec, &reading, &names));
        Opening { thread, wal }
    }
}

impl Sessions {
    /// The control session, and `jobs` worker sessions (and the WAL
    /// follower's if `wal`) being opened in the background.
    fn open(
        control: Client,
        spec: &ConnSpec,
        reading: &Arc<ReadOptions>,
        jobs: usize,
        wal: bool,
    ) -> Sessions {
        Sessions {
            workers: Vec::new(),
            wal: None,
            opening: Some(Opening::start(spec, reading, jobs, wal)),
            control,
        }
    }

    /// Wait until the reading sessions are open.
    fn ready(&mut self) -> Result<()> {
        if let Some(opening) = self.opening.take() {
            let mut readers = opening
                .thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            self.wal = if opening.wal { readers.pop() } else { None };
            self.workers = readers;
            info!(
                "wire compression: {}",
                if self.workers[0].compressed() {
                    "zlib, on the server by a temporary PL/Python function"
                } else {
                    "none"
                }
            );
        }
        Ok(())
    }

    /// The session for the run's own questions once the backup started
    /// (the listing, the files whose names are not UTF-8, pg_control): the
    /// first worker's. It is idle then, so asking costs no connection of
    /// its own, and an ERROR there, unlike on the control session, cannot
    /// touch the backup.
    fn queries(&mut self) -> Result<&mut Reader> {
        self.ready()?;
        Ok(&mut self.workers[0])
    }
}

/// A temporary slot on the control session, named after its backend,
/// unless `obstacle` says the role cannot have one; returns its name.
/// Without a slot the run goes on, having warned (`going_on` ends the
/// warning of a failed creation).
fn temporary_slot(
    control: &mut Client,
    obstacle: Option<&str>,
    going_on: &str,
) -> Result<Option<String>> {
    if let Some(why) = obstacle {
        warn!("no replication slot ({why}): WAL may be recycled before it is copied");
        return Ok(None);
    }
    let name = format!("pg_basebackup_{}", server::backend_pid(control)?);
    match server::create_temporary_slot(control, &name) {
        Ok(()) => Ok(Some(name)),
        Err(e) => {
            warn!("could not create a temporary replication slot{going_on}: {e:#}");
            Ok(None)
        }
    }
}

/// List the data directory and plan its copy; a plan the listing does not
/// allow (`--only` naming what is not there, ...) fails with `exit`.
fn plan_copy(
    client: &mut Client,
    info: &ServerInfo,
    tablespaces: &[Tablespace],
    settings: &Settings,
    exit: Exit,
) -> Result<Plan> {
    let listing = server::list_data_directory(
        client,
        &plan::listing_skip_names(),
        &plan::listing_skip_paths(),
    )?;
    Ok(plan::build(
        &listing,
        tablespaces,
        &info.tablespace_version_dir(),
        settings.only_paths.as_deref(),
        settings.chunk_size,
    )
    .map_err(|e| Failure::new(exit, e))?)
}
