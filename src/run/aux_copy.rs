//! `-S --stdin`: copy the files named on stdin into DEST, with no backup
//! start or stop: another process runs the backup and decides the order
//! (it copies pg_control last itself).
//!
//! Not `aux.rs`: AUX is a reserved device name on Windows, where a checkout
//! of such a file fails.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use log::info;

use crate::abort::Abort;
use crate::cli::Settings;
use crate::conn::ConnSpec;
use crate::copy;
use crate::error::Exit;
use crate::integrity::Integrity;
use crate::odd_names;
use crate::output::dest::Dest;
use crate::plan;
use crate::progress::Progress;
use crate::run::{Sessions, WORKER_NAME, open_control, open_reader, plan_copy};
use crate::session::reader::ReadOptions;
use crate::session::server;

pub fn auxiliary_copy(
    settings: &Settings,
    spec: &ConnSpec,
    reading: &Arc<ReadOptions>,
    abort: &Abort,
) -> Result<()> {
    let (control, info) = open_control(spec)?;
    let mut sessions = Sessions::open(control, spec, reading, settings.jobs, false);
    let queries = sessions.queries()?.client();
    server::check_privileges(queries, &info, false)?;
    let tablespaces = server::tablespaces(queries)?;
    let mut plan = plan_copy(queries, &info, &tablespaces, settings, Exit::Usage)?;
    // Here pg_control is an ordinary file: the caller decides the order.
    plan.tasks = plan::chunk(&plan.files, None, settings.chunk_size);
    let dest = Dest::open_shared(&settings.dest, info.data_directory_mode)?
        .with_early_writeback(settings.sync);
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
    let (copied, workers) = copy::copy_files(
        std::mem::take(&mut sessions.workers),
        &job,
        &|| open_reader(spec, reading, WORKER_NAME),
        abort,
    )?;
    sessions.workers = workers;
    dest.create_dirs(
        plan.odd
            .iter()
            .filter_map(|o| Path::new(OsStr::from_bytes(&o.path)).parent()),
    )?;
    let odd = odd_names::copy(
        sessions.queries()?.client(),
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
