//! Resolution, as libpq resolves a connection: the DSN first, then the
//! service file, then the `PG*` environment, then the defaults; the
//! password from the DSN or `PGPASSWORD`, else from the password file per
//! host. Every value is checked here, so that connecting cannot fail on a
//! setting.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use postgres::config::ChannelBinding;

use super::keywords::{KEYWORDS, Support, keyword};
use super::parse::parse_dsn;
use super::passfile::{passfile_lookup, read_passfile};
use super::service_file::service_settings;
use super::tls::TlsSettings;
use super::{
    ConnSpec, Context, DEFAULT_PORT, Given, Secret, SessionAttrs, Setting, Source, Target,
    invalid_value, usage,
};
use crate::bail_with;
use crate::error::Exit;

/// Every setting given, by keyword.
type Settings = BTreeMap<&'static str, Setting>;

/// libpq's target_session_attrs values.
const SESSION_ATTRS: &[(&str, SessionAttrs)] = &[
    ("any", SessionAttrs::Any),
    ("read-write", SessionAttrs::ReadWrite),
    ("read-only", SessionAttrs::ReadOnly),
    ("primary", SessionAttrs::Primary),
    ("standby", SessionAttrs::Standby),
    ("prefer-standby", SessionAttrs::PreferStandby),
];

const CHANNEL_BINDINGS: &[(&str, ChannelBinding)] = &[
    ("prefer", ChannelBinding::Prefer),
    ("disable", ChannelBinding::Disable),
    ("require", ChannelBinding::Require),
];

/// load_balance_hosts: whether the hosts are tried in random order.
const LOAD_BALANCE: &[(&str, bool)] = &[("disable", false), ("random", true)];

/// The steps in libpq's order, which is also the order in which errors and
/// warnings come out.
pub(super) fn resolve(dsn: &str, ctx: &Context<'_>) -> Result<ConnSpec> {
    let settings = gather(dsn, ctx)?;
    check_support(&settings)?;
    let given = Given(&settings);
    let user = user(&given, ctx)?;
    let dbname = given
        .get("dbname")
        .map_or_else(|| user.clone(), str::to_string);
    let mut targets = resolve_targets(&given, ctx.default_socket_dir)?;
    // Password: DSN (or service file) or PGPASSWORD, else the password file.
    let password = given.get("password").map(|p| Secret(p.as_bytes().to_vec()));
    let password_from_dsn = password.is_some() && settings["password"].source == Source::Dsn;
    let passfile = match password {
        None => passfile_passwords(&given, ctx, &mut targets, &dbname, &user),
        Some(_) => None,
    };
    let channel_binding =
        given.choice("channel_binding", ChannelBinding::Prefer, CHANNEL_BINDINGS)?;
    let session_attrs = given.choice("target_session_attrs", SessionAttrs::Any, SESSION_ATTRS)?;
    let load_balance = given.choice("load_balance_hosts", false, LOAD_BALANCE)?;
    check_gssencmode(&given)?;
    warn_client_encoding(&given);
    let connect_timeout = connect_timeout(&given)?;
    let number = |name: &str| given.get(name).map(|v| parse_int(name, v)).transpose();
    let seconds = |name: &str| -> Result<Option<Duration>> {
        Ok(number(name)?.map(|s| Duration::from_secs(s.max(0) as u64)))
    };
    let keepalives = number("keepalives")?.map(|n| n != 0);
    let keepalives_idle = seconds("keepalives_idle")?;
    let keepalives_interval = seconds("keepalives_interval")?;
    let keepalives_count = number("keepalives_count")?.map(|n| n.clamp(0, u32::MAX as i64) as u32);
    let tcp_user_timeout =
        number("tcp_user_timeout")?.map(|ms| Duration::from_millis(ms.max(0) as u64));
    let tls = TlsSettings::resolve(&given, ctx.home)?;
    Ok(ConnSpec {
        targets,
        user,
        dbname,
        password,
        password_from_dsn,
        passfile,
        options: given.get("options").map(str::to_string),
        application_name: given.get("application_name").map(str::to_string),
        fallback_application_name: given.get("fallback_application_name").map(str::to_string),
        connect_timeout,
        keepalives,
        keepalives_idle,
        keepalives_interval,
        keepalives_count,
        tcp_user_timeout,
        session_attrs,
        load_balance,
        channel_binding,
        tls,
        tls_connector: Default::default(),
        settings,
    })
}

/// Every setting given: the DSN's, then the service file's for what the
/// DSN left out, then the environment's for what is still unset.
fn gather(dsn: &str, ctx: &Context<'_>) -> Result<Settings> {
    let mut settings = Settings::new();
    for (name, value) in parse_dsn(dsn)? {
        let k = keyword(&name).expect("parse_dsn checks keywords");
        settings.insert(
            k.name,
            Setting {
                value,
                source: Source::Dsn,
            },
        );
    }
    let service = match settings.get("service") {
        Some(s) => Some(s.value.clone()),
        None => (ctx.env)("PGSERVICE"),
    }
    .filter(|s| !s.is_empty());
    if let Some(service) = service {
        for (name, value) in service_settings(&service, ctx)? {
            let k = keyword(&name).expect("service_settings checks keywords");
            settings.entry(k.name).or_insert(Setting {
                value,
                source: Source::Service,
            });
        }
    }
    add_environment(&mut settings, ctx);
    Ok(settings)
}

/// The `PG*` variables of the keywords still unset; PGREQUIRESSL=1 stands
/// for sslmode=require when PGSSLMODE is unset too.
fn add_environment(settings: &mut Settings, ctx: &Context<'_>) {
    for k in KEYWORDS {
        if settings.contains_key(k.name) {
            continue;
        }
        let value = k.env.and_then(|v| (ctx.env)(v)).or_else(|| {
            (k.name == "sslmode" && (ctx.env)("PGREQUIRESSL").is_some_and(|v| v.starts_with('1')))
                .then(|| "require".to_string())
        });
        if let Some(value) = value {
            settings.insert(
                k.name,
                Setting {
                    value,
                    source: Source::Env,
                },
            );
        }
    }
}

/// Refuse the keywords we refuse; warn about the ones we ignore when their
/// value asks for something.
fn check_support(settings: &Settings) -> Result<()> {
    let given = Given(settings);
    for k in KEYWORDS {
        let Some(value) = given.get(k.name) else {
            continue;
        };
        let origin = match settings[k.name].source {
            Source::Env => format!("{} (from {})", k.name, k.env.unwrap_or("the environment")),
            Source::Service => format!("{} (from service file)", k.name),
            Source::Dsn => k.name.to_string(),
        };
        match k.support {
            Support::Refused(why) => {
                return Err(usage(format!("connection option {origin}: {why}")));
            }
            Support::Ignored if k.name == "gssdelegation" && value == "0" => {}
            Support::Ignored if k.name == "sslcompression" && value == "0" => {}
            Support::Ignored if k.name == "krbsrvname" || k.name == "gsslib" => {}
            Support::Ignored => {
                log::warn!("connection option {origin} is ignored by this tool")
            }
            Support::Yes => {}
        }
    }
    Ok(())
}

/// The user given, else the operating-system user (libpq).
fn user(given: &Given<'_>, ctx: &Context<'_>) -> Result<String> {
    if let Some(u) = given.get("user") {
        return Ok(u.to_string());
    }
    match (ctx.os_user)() {
        Some(u) => Ok(u),
        None => bail_with!(
            Exit::Connect,
            "could not look up the local user name; give user= in the DSN or set PGUSER"
        ),
    }
}

/// Each host's password from the password file, when there is one to read;
/// the file read.
fn passfile_passwords(
    given: &Given<'_>,
    ctx: &Context<'_>,
    targets: &mut [Target],
    dbname: &str,
    user: &str,
) -> Option<PathBuf> {
    let file = given
        .get("passfile")
        .map(PathBuf::from)
        .or_else(|| ctx.home.map(|h| h.join(".pgpass")))?;
    let content = read_passfile(&file)?;
    let default_dir = (ctx.default_socket_dir)();
    for t in targets {
        t.passfile_password = passfile_lookup(
            &content,
            &t.passfile_host(),
            &t.port.to_string(),
            dbname,
            user,
            &default_dir,
        )
        .map(Secret);
    }
    Some(file)
}

/// GSSAPI encryption cannot be had here: refused when required.
fn check_gssencmode(given: &Given<'_>) -> Result<()> {
    match given.get("gssencmode") {
        None | Some("disable") | Some("prefer") => Ok(()),
        Some("require") => Err(usage(
            "gssencmode=require: GSSAPI encryption is not supported by this tool".into(),
        )),
        Some(v) => Err(invalid_value("gssencmode", v)),
    }
}

/// Sessions always use UTF8: say so when another encoding was asked for.
fn warn_client_encoding(given: &Given<'_>) {
    if let Some(enc) = given.get("client_encoding")
        && !matches!(
            enc.to_ascii_lowercase().as_str(),
            "utf8" | "utf-8" | "unicode" | "auto"
        )
    {
        log::warn!("client_encoding \"{enc}\" is ignored: this tool always uses UTF8");
    }
}

/// libpq: zero or less waits forever; less than 2 seconds means 2.
fn connect_timeout(given: &Given<'_>) -> Result<Option<Duration>> {
    let Some(v) = given.get("connect_timeout") else {
        return Ok(None);
    };
    Ok(match parse_int("connect_timeout", v)? {
        t if t <= 0 => None,
        t => Some(Duration::from_secs(t.max(2) as u64)),
    })
}

/// The host list, as libpq's pqConnectOptions2 builds it: hostaddr and
/// host lists of equal length (or one of them), one port or one per host,
/// empty entries meaning the defaults.
fn resolve_targets(
    given: &Given<'_>,
    default_socket_dir: &dyn Fn() -> String,
) -> Result<Vec<Target>> {
    let get = |name: &str| given.get(name);
    let hostaddrs: Option<Vec<&str>> = get("hostaddr").map(|v| v.split(',').collect());
    let hosts: Option<Vec<&str>> = get("host").map(|v| v.split(',').collect());
    let n = hostaddrs
        .as_ref()
        .map(Vec::len)
        .or(hosts.as_ref().map(Vec::len))
        .unwrap_or(1);
    if let (Some(h), Some(_)) = (&hosts, &hostaddrs)
        && h.len() != n
    {
        return Err(usage(format!(
            "could not match {} host names to {} hostaddr values",
            h.len(),
            n
        )));
    }
    let ports: Vec<&str> = match get("port") {
        None => vec![""; n],
        Some(v) => {
            let p: Vec<&str> = v.split(',').collect();
            if p.len() == 1 {
                vec![p[0]; n]
            } else if p.len() == n {
                p
            } else {
                return Err(usage(format!(
                    "could not match {} port numbers to {} hosts",
                    p.len(),
                    n
                )));
            }
        }
    };
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let hostaddr = match hostaddrs
            .as_ref()
            .map(|a| a[i].trim())
            .filter(|a| !a.is_empty())
        {
            Some(a) => Some(
                a.parse::<IpAddr>()
                    .map_err(|_| usage(format!("could not parse network address \"{a}\"")))?,
            ),
            None => None,
        };
        let mut host = hosts.as_ref().map_or("", |h| h[i]).to_string();
        if host.is_empty() && hostaddr.is_none() {
            host = default_socket_dir();
        }
        if host.starts_with('@') && hostaddr.is_none() {
            return Err(usage(format!(
                "abstract Unix-domain sockets are not supported (host \"{host}\")"
            )));
        }
        let port = match ports[i].trim() {
            "" => DEFAULT_PORT,
            p => match p.parse::<i64>() {
                Ok(v) if (1..=65535).contains(&v) => v as u16,
                _ => return Err(usage(format!("invalid port number: \"{}\"", ports[i]))),
            },
        };
        targets.push(Target {
            host,
            hostaddr,
            port,
            passfile_password: None,
        });
    }
    Ok(targets)
}

/// libpq's pqParseIntParam: an integer with optional surrounding spaces.
fn parse_int(name: &str, value: &str) -> Result<i64> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| i32::try_from(*n).is_ok())
        .ok_or_else(|| {
            usage(format!(
                "invalid integer value \"{value}\" for connection option \"{name}\""
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::test_support::{pw, spec, spec_with, usage_error};
    use crate::conn::tls::SslMode;

    #[test]
    fn refused_and_ignored_keywords() {
        assert!(usage_error("host=/tmp requirepeer=postgres").contains("requirepeer"));
        assert!(usage_error("host=/tmp replication=true").contains("replication"));
        assert!(usage_error("host=/tmp gssencmode=require").contains("GSSAPI"));
        // Accepted and ignored.
        spec("host=/tmp gssencmode=prefer krbsrvname=postgres sslcompression=0");
    }

    #[test]
    fn defaults() {
        let s = spec("");
        assert_eq!(s.hosts(), vec!["/var/run/postgresql"]);
        assert_eq!(s.port(), 5432);
        assert_eq!(s.user.as_str(), "osuser");
        assert_eq!(s.dbname.as_str(), "osuser");
        assert_eq!(s.tls.mode, SslMode::Prefer);
        assert!(!s.password_from_dsn());
        assert!(s.password.is_none());
    }

    #[test]
    fn dsn_beats_env_beats_defaults() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "disable"),
            ("PGAPPNAME", "envapp"),
            ("PGOPTIONS", "-c work_mem=1MB"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("PGTARGETSESSIONATTRS", "read-write"),
            ("PGCHANNELBINDING", "disable"),
        ];
        let s = spec_with("", &env, None).unwrap();
        assert_eq!(s.hosts(), vec!["envhost"]);
        assert_eq!(s.port(), 6000);
        assert_eq!(s.user.as_str(), "envuser");
        assert_eq!(s.dbname.as_str(), "envdb");
        assert_eq!(pw(&s).as_deref(), Some("envpw"));
        assert!(!s.password_from_dsn());
        assert_eq!(s.tls.mode, SslMode::Disable);
        assert_eq!(s.application_name.as_deref(), Some("envapp"));
        assert_eq!(s.options.as_deref(), Some("-c work_mem=1MB"));
        assert_eq!(s.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(s.session_attrs, SessionAttrs::ReadWrite);
        assert_eq!(s.channel_binding, ChannelBinding::Disable);

        let s = spec_with(
            "host=dsnhost port=7000 user=u dbname=d password=p sslmode=require",
            &env,
            None,
        )
        .unwrap();
        assert_eq!(s.hosts(), vec!["dsnhost"]);
        assert_eq!(s.port(), 7000);
        assert_eq!((s.user.as_str(), s.dbname.as_str()), ("u", "d"));
        assert_eq!(pw(&s).as_deref(), Some("p"));
        assert!(s.password_from_dsn());
        assert_eq!(s.tls.mode, SslMode::Require);
        // The database defaults to the user, wherever the user came from.
        let s = spec_with("", &[("PGUSER", "alice")], None).unwrap();
        assert_eq!(s.dbname, "alice");
        // An empty DSN value counts as given: the environment is not used.
        let s = spec_with("host=''", &[("PGHOST", "envhost")], None).unwrap();
        assert_eq!(s.hosts(), vec!["/var/run/postgresql"]);
    }

    #[test]
    fn pgrequiressl_only_without_sslmode() {
        let s = spec_with("", &[("PGREQUIRESSL", "1")], None).unwrap();
        assert_eq!(s.tls.mode, SslMode::Require);
        let s = spec_with("", &[("PGREQUIRESSL", "1"), ("PGSSLMODE", "allow")], None).unwrap();
        assert_eq!(s.tls.mode, SslMode::Allow);
    }

    #[test]
    fn hosts_hostaddrs_ports() {
        let s = spec("host=a,b,/tmp port=1,2,3");
        assert_eq!(s.hosts(), vec!["a", "b", "/tmp"]);
        assert_eq!(
            s.targets.iter().map(|t| t.port).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let s = spec("host=a,b port=9");
        assert_eq!(
            s.targets.iter().map(|t| t.port).collect::<Vec<_>>(),
            vec![9, 9]
        );
        // Empty entries take the defaults.
        let s = spec("host=a, port=,6000");
        assert_eq!(s.hosts(), vec!["a", "/var/run/postgresql"]);
        assert_eq!(
            s.targets.iter().map(|t| t.port).collect::<Vec<_>>(),
            vec![5432, 6000]
        );
        // hostaddr alone, and with host names for TLS and pgpass.
        let s = spec("hostaddr=127.0.0.1");
        assert_eq!(s.hosts(), vec!["127.0.0.1"]);
        assert!(!s.targets[0].is_socket());
        let s = spec("host=db.example.com hostaddr=10.0.0.1");
        assert_eq!(s.hosts(), vec!["db.example.com"]);
        assert_eq!(s.targets[0].hostaddr, Some("10.0.0.1".parse().unwrap()));
        assert!(
            usage_error("host=a,b hostaddr=10.0.0.1")
                .contains("could not match 2 host names to 1 hostaddr")
        );
        assert!(
            usage_error("host=a,b,c port=1,2")
                .contains("could not match 2 port numbers to 3 hosts")
        );
        assert!(usage_error("hostaddr=nope").contains("could not parse network address"));
        assert!(usage_error("port=0").contains("invalid port number"));
        assert!(usage_error("port=70000").contains("invalid port number"));
        assert!(usage_error("port=x").contains("invalid port number"));
        assert!(usage_error("host=@abstract").contains("abstract"));
    }

    #[test]
    fn numbers_and_enumerations() {
        let s = spec(
            "host=/tmp connect_timeout=1 keepalives=0 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=1500",
        );
        assert_eq!(
            s.connect_timeout,
            Some(Duration::from_secs(2)),
            "libpq's minimum is 2 s"
        );
        assert_eq!(s.keepalives, Some(false));
        assert_eq!(s.keepalives_idle, Some(Duration::from_secs(30)));
        assert_eq!(s.keepalives_interval, Some(Duration::from_secs(5)));
        assert_eq!(s.keepalives_count, Some(3));
        assert_eq!(s.tcp_user_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(spec("connect_timeout=0").connect_timeout, None);
        assert!(usage_error("connect_timeout=soon").contains("connect_timeout"));
        assert!(usage_error("sslmode=maybe").contains("invalid sslmode value: \"maybe\""));
        assert!(usage_error("channel_binding=always").contains("channel_binding"));
        assert!(usage_error("target_session_attrs=whatever").contains("target_session_attrs"));
        assert!(usage_error("load_balance_hosts=yes").contains("load_balance_hosts"));
        assert_eq!(
            spec("target_session_attrs=prefer-standby").session_attrs,
            SessionAttrs::PreferStandby
        );
        assert!(spec("load_balance_hosts=random").load_balance);
    }
}
