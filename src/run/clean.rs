//! `--clean`: end an exclusive backup an earlier tool left in progress
//! (PostgreSQL 10-14; later versions end every backup with its session).

use anyhow::Result;

use crate::conn::ConnSpec;
use crate::pg::version::MINIMUM_VERSION_FOR_BACKUP_START;
use crate::run::open_control;
use crate::session::server;

pub fn clean(spec: &ConnSpec) -> Result<()> {
    let (mut client, info) = open_control(spec)?;
    if server::stop_leftover_exclusive_backup(&mut client, &info)? {
        println!("pg_basebackup: stopped the exclusive backup that was left in progress");
    } else if info.version_num >= MINIMUM_VERSION_FOR_BACKUP_START {
        println!(
            "pg_basebackup: nothing to clean: PostgreSQL {} ends every backup with its session",
            info.major()
        );
    } else {
        println!("pg_basebackup: nothing to clean: no exclusive backup is in progress");
    }
    Ok(())
}
