//! The connection service file (`service=` / `PGSERVICE`): the user's
//! file, else the system's, read as libpq's parseServiceInfo reads it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::keywords::keyword;
use super::{Context, usage};

/// The settings of one service from the user's service file
/// (`PGSERVICEFILE` or `~/.pg_service.conf`) or, when it is not there, the
/// system one (`$PGSYSCONFDIR/pg_service.conf`, Debian's
/// /etc/postgresql-common by default), as libpq's parseServiceInfo.
pub(super) fn service_settings(service: &str, ctx: &Context<'_>) -> Result<Vec<(String, String)>> {
    let user_file = match (ctx.env)("PGSERVICEFILE").filter(|v| !v.is_empty()) {
        Some(f) => Some(PathBuf::from(f)),
        None => ctx.home.map(|h| h.join(".pg_service.conf")),
    };
    let sysconfdir = (ctx.env)("PGSYSCONFDIR").unwrap_or_else(|| "/etc/postgresql-common".into());
    let system_file = Path::new(&sysconfdir).join("pg_service.conf");
    for file in user_file.iter().chain(std::iter::once(&system_file)) {
        if !file.exists() {
            continue;
        }
        let text = std::fs::read_to_string(file).map_err(|e| {
            usage(format!(
                "service file \"{}\" could not be read: {e}",
                file.display()
            ))
        })?;
        if let Some(found) = parse_service_file(&text, service, file)? {
            return Ok(found);
        }
    }
    Err(usage(format!(
        "definition of service \"{service}\" not found"
    )))
}

fn parse_service_file(
    text: &str,
    service: &str,
    file: &Path,
) -> Result<Option<Vec<(String, String)>>> {
    let mut in_group = false;
    let mut found: Option<Vec<(String, String)>> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            if in_group {
                break;
            }
            in_group = line.strip_prefix('[').and_then(|l| l.strip_prefix(service)) == Some("]");
            if in_group {
                found = Some(Vec::new());
            }
            continue;
        }
        if !in_group {
            continue;
        }
        let syntax = || {
            usage(format!(
                "syntax error in service file \"{}\", line {}",
                file.display(),
                n + 1
            ))
        };
        let (key, value) = line.split_once('=').ok_or_else(syntax)?;
        if key == "service" {
            return Err(usage(format!(
                "nested service specifications not supported in service file \"{}\", line {}",
                file.display(),
                n + 1
            )));
        }
        if keyword(key).is_none() {
            return Err(syntax());
        }
        if let Some(f) = found.as_mut() {
            f.push((key.to_string(), value.to_string()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use crate::conn::test_support::spec_with;

    #[test]
    fn service_file_between_dsn_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(&file, "# c\n[other]\nhost=nope\n\n[main]\nhost=svchost\nport=7777\ndbname=svcdb\n[after]\nuser=nope\n").unwrap();
        let env = [
            ("PGSERVICEFILE", file.to_str().unwrap()),
            ("PGPORT", "1"),
            ("PGUSER", "envuser"),
        ];
        let s = spec_with("service=main dbname=dsndb", &env, None).unwrap();
        assert_eq!(s.hosts(), vec!["svchost"]);
        assert_eq!(s.port(), 7777, "service beats the environment");
        assert_eq!(s.dbname.as_str(), "dsndb", "the DSN beats the service");
        assert_eq!(s.user.as_str(), "envuser");
        let env = [
            ("PGSERVICEFILE", file.to_str().unwrap()),
            ("PGSERVICE", "main"),
            ("PGSYSCONFDIR", "/nonexistent"),
        ];
        assert_eq!(spec_with("", &env, None).unwrap().port(), 7777);
        let err = spec_with("service=absent", &env, None).unwrap_err();
        assert!(format!("{err:#}").contains("definition of service \"absent\" not found"));
        std::fs::write(&file, "[main]\nbogus=1\n").unwrap();
        assert!(
            format!("{:#}", spec_with("service=main", &env, None).unwrap_err())
                .contains("syntax error")
        );
    }
}
