//! Where the tablespaces of a plain copy go, and the tablespace_map that
//! points the copy at them.
//!
//! A tablespace is a link in pg_tblspc to a directory outside the data
//! directory. A plain copy writes each to its -T mapping, else to its own
//! path (which must then be empty, so a copy on the server's host never
//! writes into the live tablespace); the server's tablespace_map names the
//! original paths, so the copy's is rewritten to name the new ones.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::bail_with;
use crate::error::{Exit, Failure};
use crate::output::dest;
use crate::pg::version::MINIMUM_VERSION_FOR_TABLESPACE_MAP_BACKSLASH;
use crate::session::server::Tablespace;

/// Where each linked tablespace goes in a plain copy: (oid, directory).
/// `earlier` are the tablespace links of a copy --delta refreshes: their
/// targets are part of it.
pub fn targets(
    tablespaces: &[Tablespace],
    mapping: &[(PathBuf, PathBuf)],
    earlier: &[(u32, PathBuf)],
) -> Result<Vec<(u32, PathBuf)>> {
    for (old, _) in mapping {
        if !tablespaces.iter().any(|t| Path::new(&t.location) == old) {
            bail_with!(
                Exit::Usage,
                "-T {}: the server has no tablespace in that directory",
                old.display()
            );
        }
    }
    let mut targets = Vec::new();
    for t in tablespaces.iter().filter(|t| t.location.starts_with('/')) {
        let location = Path::new(&t.location);
        let target = mapping
            .iter()
            .find(|(old, _)| old == location)
            .map(|(_, new)| new.clone());
        let target = target.unwrap_or_else(|| location.to_path_buf());
        if earlier.contains(&(t.oid, target.clone())) {
            targets.push((t.oid, target));
            continue;
        }
        dest::check(&target, false).map_err(|e| {
            e.context(Failure::new(
                Exit::Dest,
                format!(
                    "tablespace \"{}\" cannot be written to {}; relocate it with -T {}=NEWDIR",
                    t.name,
                    target.display(),
                    t.location
                ),
            ))
        })?;
        targets.push((t.oid, target));
    }
    Ok(targets)
}

/// tablespace_map with each linked tablespace pointing at its copy, its
/// path escaped as the server of `version_num` escapes it.
pub fn mapped_tablespace_map(map: &str, targets: &[(u32, PathBuf)], version_num: u32) -> String {
    let escape = |p: &str| {
        let mut out = String::new();
        for c in p.chars() {
            match c {
                '\n' | '\r' => out.push('\\'),
                '\\' if version_num >= MINIMUM_VERSION_FOR_TABLESPACE_MAP_BACKSLASH => {
                    out.push('\\')
                }
                _ => {}
            }
            out.push(c);
        }
        out
    };
    let mut out = String::new();
    for line in map.lines() {
        let oid = line.split(' ').next().unwrap_or("");
        match targets.iter().find(|(o, _)| o.to_string() == oid) {
            Some((_, target)) => {
                out.push_str(&format!("{oid} {}\n", escape(&target.to_string_lossy())))
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_map_points_at_the_copies() {
        let map = "16400 /srv/ts1\n16401 /srv/ts\\\\2\n";
        let targets = vec![(16400, PathBuf::from("/copy/ts1"))];
        assert_eq!(
            mapped_tablespace_map(map, &targets, 150000),
            "16400 /copy/ts1\n16401 /srv/ts\\\\2\n"
        );
        let targets = vec![(16401, PathBuf::from("/c/a\\b"))];
        assert_eq!(
            mapped_tablespace_map(map, &targets, 150000),
            "16400 /srv/ts1\n16401 /c/a\\\\b\n"
        );
        assert_eq!(
            mapped_tablespace_map(map, &targets, 130000),
            "16400 /srv/ts1\n16401 /c/a\\b\n"
        );
    }
}
