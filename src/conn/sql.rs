//! The SQL that connecting sends itself: libpq's target_session_attrs
//! checks on a freshly opened session.

/// "on" when the session is read-only.
pub(super) const SHOW_TRANSACTION_READ_ONLY: &str = "SHOW transaction_read_only";

/// "t" when the server is a standby (in recovery).
pub(super) const IS_IN_RECOVERY: &str = "SELECT pg_catalog.pg_is_in_recovery()";
