//! What the unit tests of `conn` share: resolution with a fixed operating
//! system user, socket directory and environment, and looks at secrets
//! that only tests may take.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;

use super::resolve::resolve;
use super::{ConnSpec, Context};
use crate::error::Exit;

fn env_of(vars: &[(&str, &str)]) -> HashMap<String, String> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Resolve with a fixed OS user, socket directory and environment.
pub(super) fn spec_with(dsn: &str, vars: &[(&str, &str)], home: Option<&Path>) -> Result<ConnSpec> {
    let env = env_of(vars);
    let lookup = move |k: &str| env.get(k).cloned();
    let ctx = Context {
        env: &lookup,
        home,
        os_user: &|| Some("osuser".to_string()),
        default_socket_dir: &|| "/var/run/postgresql".to_string(),
    };
    resolve(dsn, &ctx)
}

pub(super) fn spec(dsn: &str) -> ConnSpec {
    spec_with(dsn, &[], None).unwrap()
}

/// The message of a DSN that must be refused as a usage error.
pub(super) fn usage_error(dsn: &str) -> String {
    let err = spec_with(dsn, &[], None).unwrap_err();
    assert_eq!(crate::error::exit_of(&err), Exit::Usage, "{err:#}");
    format!("{err:#}")
}

/// The password from the DSN, service file or environment.
pub(super) fn pw(s: &ConnSpec) -> Option<String> {
    s.password
        .as_ref()
        .map(|p| String::from_utf8(p.0.clone()).unwrap())
}

/// The password the password file gave host `i`.
pub(super) fn host_pw(s: &ConnSpec, i: usize) -> Option<String> {
    s.targets[i]
        .passfile_password
        .as_ref()
        .map(|p| String::from_utf8(p.0.clone()).unwrap())
}
