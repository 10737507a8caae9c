//! What PostgreSQL itself defines and the copy must match: the server
//! versions where things changed, global/pg_control, timelines and WAL file
//! names. Nothing here talks to a server.

pub mod pg_control;
pub mod timeline;
