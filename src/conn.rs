//! Connection settings, resolved the way libpq resolves them.
//!
//! INTERFACE STUB — being written by a helper; signatures are the contract.

use anyhow::Result;

/// A fully resolved connection target: DSN + PG* environment + defaults + .pgpass.
#[derive(Clone)]
pub struct ConnSpec {}

impl ConnSpec {
    /// Parse `key=value ...` conninfo or a `postgresql://` URI and resolve it.
    pub fn from_dsn(_dsn: &str) -> Result<ConnSpec> {
        todo!()
    }

    /// Open a session; the error is a `Failure` with `Exit::Connect`.
    pub fn connect(&self, _application_name: &str) -> Result<postgres::Client> {
        todo!()
    }

    /// The settings for log lines, never including the password.
    pub fn describe(&self) -> String {
        todo!()
    }
}
