//! Exit codes and the error type that carries one.
//!
//! Every failure the user can act on is raised as a [`Failure`], which pairs a
//! one-line message with an [`Exit`] kind. `main` walks the `anyhow` chain for
//! the first `Failure` to pick the process exit code, so scripts and cron jobs
//! can tell "wrong password" from "disk full" without parsing text. The codes
//! are listed in README.md; keep the two in step.

use std::fmt;

/// Why the program ended; each kind has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Anything not classified below (a bug, an unexpected I/O error).
    Internal,
    /// Bad command line or a value that makes no sense (clap uses 2 as well).
    Usage,
    /// Could not connect or authenticate: DSN, host, port, password, database.
    Connect,
    /// The server cannot be backed up as asked: version, privileges, settings.
    Server,
    /// DEST is unusable: not empty, not writable, on the live data directory.
    Dest,
    /// The backup started but failed while copying or ending it.
    Backup,
    /// A WAL segment the copy needs could not be fetched.
    Wal,
    /// The backup is complete, but data page checksum failures were found.
    Corrupt,
    /// Stopped by SIGINT or SIGTERM.
    Interrupted,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Internal => 1,
            Exit::Usage => 2,
            Exit::Connect => 3,
            Exit::Server => 4,
            Exit::Dest => 5,
            Exit::Backup => 6,
            Exit::Wal => 7,
            Exit::Corrupt => 8,
            Exit::Interrupted => 130,
        }
    }
}

/// An error with a known exit code. Wrap causes with `anyhow::Context` as
/// usual; the outermost message plus its causes form the one line printed.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Shorthand: `bail_with!(Exit::Dest, "directory {} is not empty", p)`.
#[macro_export]
macro_rules! bail_with {
    ($exit:expr, $($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::error::Failure::new($exit, format!($($arg)*))))
    };
}

/// The exit code for an error chain: the outermost `Failure`, else Internal.
/// (`anyhow::Error::downcast_ref` looks through context layers, which a walk
/// of `chain()` would not: there each layer is a private wrapper type.)
pub fn exit_of(err: &anyhow::Error) -> Exit {
    err.downcast_ref::<Failure>()
        .map_or(Exit::Internal, |f| f.exit)
}

/// The one line printed for a failure, and the server's HINT if it gave one
/// (printed on a line of its own, as PostgreSQL's tools do). The causes are
/// joined with ": "; a server error reads `SEVERITY: message (detail)`,
/// without the client library's "db error" in front; line breaks become
/// spaces, so the line stays one line whatever a cause says.
pub fn report(err: &anyhow::Error) -> (String, Option<String>) {
    let mut parts = Vec::new();
    let mut hint = None;
    for cause in err.chain() {
        if let Some(db) = cause.downcast_ref::<postgres::error::DbError>() {
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            hint = db.hint().map(str::to_string);
            parts.push(text);
        } else if cause
            .downcast_ref::<postgres::Error>()
            .is_none_or(|e| e.as_db_error().is_none())
        {
            parts.push(cause.to_string());
        }
    }
    let one_line = |s: &str| s.replace(['\r', '\n'], " ");
    (one_line(&parts.join(": ")), hint.as_deref().map(one_line))
}

/// Extension for results: tag any error with an exit kind while keeping the
/// original error as the cause, e.g. `.exit_with(Exit::Dest, || format!(...))`.
pub trait ExitContext<T> {
    fn exit_with<F: FnOnce() -> String>(self, exit: Exit, msg: F) -> anyhow::Result<T>;
}

impl<T, E> ExitContext<T> for Result<T, E>
where
    E: Into<anyhow::Error>,
{
    fn exit_with<F: FnOnce() -> String>(self, exit: Exit, msg: F) -> anyhow::Result<T> {
        self.map_err(|e| e.into().context(Failure::new(exit, msg())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_comes_from_the_outermost_failure() {
        let inner: anyhow::Result<()> =
            Err(anyhow::Error::new(Failure::new(Exit::Connect, "refused")));
        let err = inner.context("while starting").unwrap_err();
        assert_eq!(exit_of(&err), Exit::Connect);
        let err = err.context(Failure::new(Exit::Interrupted, "interrupted"));
        assert_eq!(exit_of(&err), Exit::Interrupted);
        let io: Result<(), std::io::Error> = Err(std::io::Error::other("disk"));
        assert_eq!(
            exit_of(
                &io.exit_with(Exit::Dest, || "cannot write".into())
                    .unwrap_err()
            ),
            Exit::Dest
        );
        assert_eq!(exit_of(&anyhow::anyhow!("plain")), Exit::Internal);
    }

    #[test]
    fn a_report_is_one_line() {
        let err = anyhow::anyhow!("first\nsecond").context("while  doing it");
        assert_eq!(report(&err), ("while  doing it: first second".into(), None));
    }
}
