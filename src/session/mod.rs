//! Everything the tool says to the server: the SQL texts, the statements
//! that learn about the server and start and stop the backup, the reading
//! sessions and their replacement when lost, and the watches that run
//! beside the copy (control session, standby promotion, archiver), and the
//! WAL summaries of an incremental backup.

pub mod archive;
pub mod reader;
pub mod retry;
pub mod server;
pub mod sql;
pub mod standby;
pub mod summaries;
pub mod watchdog;
