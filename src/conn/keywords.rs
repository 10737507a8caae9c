//! libpq's connection keywords, and what this tool does with each: one
//! table, in libpq's own order, that parsing, resolution and
//! `conninfo_for_standby` all read.

/// What we do with a libpq keyword.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Support {
    /// Used.
    Yes,
    /// Accepted and ignored: it has no effect with this client (GSSAPI
    /// settings: the `postgres` crate has no GSSAPI; SSL compression: gone
    /// from PostgreSQL 14 on, libpq ignores it too).
    Ignored,
    /// Refused with this explanation: ignoring it would weaken a check the
    /// user asked for, or change what the connection is.
    Refused(&'static str),
}

pub(super) struct Keyword {
    pub(super) name: &'static str,
    pub(super) env: Option<&'static str>,
    pub(super) support: Support,
}

const fn kw(name: &'static str, env: Option<&'static str>, support: Support) -> Keyword {
    Keyword { name, env, support }
}

/// libpq's keywords in libpq's own order (fe-connect.c, PQconninfoOptions),
/// which is also the order of [`super::ConnSpec::conninfo_for_standby`].
pub(super) const KEYWORDS: &[Keyword] = &[
    kw("service", Some("PGSERVICE"), Support::Yes),
    kw("user", Some("PGUSER"), Support::Yes),
    kw("password", Some("PGPASSWORD"), Support::Yes),
    kw("passfile", Some("PGPASSFILE"), Support::Yes),
    kw("channel_binding", Some("PGCHANNELBINDING"), Support::Yes),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT"), Support::Yes),
    kw("dbname", Some("PGDATABASE"), Support::Yes),
    kw("host", Some("PGHOST"), Support::Yes),
    kw("hostaddr", Some("PGHOSTADDR"), Support::Yes),
    kw("port", Some("PGPORT"), Support::Yes),
    kw("client_encoding", Some("PGCLIENTENCODING"), Support::Yes),
    kw("options", Some("PGOPTIONS"), Support::Yes),
    kw("application_name", Some("PGAPPNAME"), Support::Yes),
    kw("fallback_application_name", None, Support::Yes),
    kw("keepalives", None, Support::Yes),
    kw("keepalives_idle", None, Support::Yes),
    kw("keepalives_interval", None, Support::Yes),
    kw("keepalives_count", None, Support::Yes),
    kw("tcp_user_timeout", None, Support::Yes),
    kw("sslmode", Some("PGSSLMODE"), Support::Yes),
    kw("sslnegotiation", Some("PGSSLNEGOTIATION"), Support::Yes),
    kw("sslcompression", Some("PGSSLCOMPRESSION"), Support::Ignored),
    kw("sslcert", Some("PGSSLCERT"), Support::Yes),
    kw("sslkey", Some("PGSSLKEY"), Support::Yes),
    kw("sslcertmode", Some("PGSSLCERTMODE"), Support::Yes),
    kw("sslpassword", None, Support::Yes),
    kw("sslrootcert", Some("PGSSLROOTCERT"), Support::Yes),
    kw("sslcrl", Some("PGSSLCRL"), Support::Yes),
    kw("sslcrldir", Some("PGSSLCRLDIR"), Support::Yes),
    kw("sslsni", Some("PGSSLSNI"), Support::Yes),
    kw(
        "requirepeer",
        Some("PGREQUIREPEER"),
        Support::Refused(
            "checking the server's operating-system user is not supported by this tool",
        ),
    ),
    kw(
        "require_auth",
        Some("PGREQUIREAUTH"),
        Support::Refused("restricting the authentication method is not supported by this tool"),
    ),
    kw(
        "ssl_min_protocol_version",
        Some("PGSSLMINPROTOCOLVERSION"),
        Support::Yes,
    ),
    kw(
        "ssl_max_protocol_version",
        Some("PGSSLMAXPROTOCOLVERSION"),
        Support::Yes,
    ),
    kw("gssencmode", Some("PGGSSENCMODE"), Support::Yes),
    kw("krbsrvname", Some("PGKRBSRVNAME"), Support::Ignored),
    kw("gsslib", Some("PGGSSLIB"), Support::Ignored),
    kw("gssdelegation", Some("PGGSSDELEGATION"), Support::Ignored),
    kw(
        "replication",
        None,
        Support::Refused(
            "this tool copies over ordinary SQL sessions, not replication connections",
        ),
    ),
    kw(
        "target_session_attrs",
        Some("PGTARGETSESSIONATTRS"),
        Support::Yes,
    ),
    kw(
        "load_balance_hosts",
        Some("PGLOADBALANCEHOSTS"),
        Support::Yes,
    ),
];

pub(super) fn keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

/// Keywords whose values are secrets: never echoed, never logged.
pub(super) fn is_secret(name: &str) -> bool {
    name == "password" || name == "sslpassword"
}
