//! What libpq asks of the operating system: the effective user's name and
//! home directory, and the socket directory used when no host is given.

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The effective user's name and home directory from the password database.
pub(super) fn os_user() -> Option<(String, PathBuf)> {
    let mut size = 16 * 1024;
    loop {
        let mut buf: Vec<libc::c_char> = vec![0; size];
        // SAFETY: getpwuid_r writes into `pwd` and `buf`, which outlive the
        // reads below; `result` is either null or points at `pwd`.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(
                libc::geteuid(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            );
            if rc == libc::ERANGE && size < (1 << 20) {
                size *= 4;
                continue;
            }
            if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
                return None;
            }
            let name = CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned();
            let dir = if pwd.pw_dir.is_null() {
                PathBuf::new()
            } else {
                PathBuf::from(OsStr::from_bytes(CStr::from_ptr(pwd.pw_dir).to_bytes()))
            };
            return Some((name, dir));
        }
    }
}

/// libpq's pqGetHomeDirectory: $HOME, else the password database.
pub(super) fn home_dir() -> Option<PathBuf> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
        _ => os_user()
            .map(|(_, dir)| dir)
            .filter(|d| !d.as_os_str().is_empty()),
    }
}

/// Where the local server's socket is when no host is given: Debian's
/// libpq default if that directory exists, else upstream's.
pub(super) fn default_socket_dir() -> String {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql".into()
    } else {
        "/tmp".into()
    }
}
