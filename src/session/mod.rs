//! Everything the tool says to the server, over the sessions it opens.

pub mod archive;
pub mod reader;
pub mod server;
pub mod standby;
pub mod watchdog;
