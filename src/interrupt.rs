//! SIGINT and SIGTERM: a prompt exit 130 whatever the server does.
//!
//! The threads look at a flag between units of work ([`crate::abort`]), but a
//! thread blocked in a socket read of a hung server (a stopped backend, a
//! network black hole, a listener that never answers) never looks. So a
//! watcher thread takes the signals and, while the process is still alive,
//! escalates:
//!
//! 1. at once: the flag is set; the threads stop after their current request
//!    and the normal failure path ends the backup on the server (closing the
//!    control session) and removes the partial DEST;
//! 2. after [`CANCEL_AFTER`]: a cancel request (as libpq's) for every live
//!    session, each from a thread of its own, since a cancel connection can
//!    hang too; a long statement (a spread checkpoint, a big read) ends;
//! 3. after [`SHUTDOWN_AFTER`]: every socket of ours connected to the server
//!    is shut down (`shutdown(2)`), so a read blocked on a backend that will
//!    never answer returns, and its thread unwinds through the normal
//!    failure path too;
//! 4. after [`EXIT_AFTER`], if the run is still not done and has not said
//!    that only local work is left ([`only_local_work_left`]: removing the
//!    partial DEST, or the last writes and the sync of a complete copy),
//!    something other than the server blocks it: the process exits with 130
//!    by itself, saying that DEST was left as it is (a partial copy never
//!    looks complete: backup_label and pg_control come last).
//!
//! The watcher never removes DEST itself: the workers might still write into
//! it. It is removed on the main thread, after every worker stopped, as for
//! any other failure; steps 2 and 3 are what make sure that happens, and
//! step 4 never cuts that removal short. A second signal exits at once.
//!
//! Sessions are registered when they connect ([`register`]) and forgotten
//! when their connection is dropped. A connection attempt that is still
//! waiting for the server (no session yet) gives up as soon as the flag is
//! set ([`signalled`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use anyhow::Result;
use postgres::CancelToken;

/// How long the threads get to stop on their own before their statements
/// are cancelled (a -S -x poll in flight completes, and the feed exits 0).
const CANCEL_AFTER: Duration = Duration::from_millis(500);
/// When the sockets are shut down, counted from the signal.
const SHUTDOWN_AFTER: Duration = Duration::from_millis(2000);
/// When the process exits by itself, counted from the signal.
const EXIT_AFTER: Duration = Duration::from_millis(4000);

static SIGNALLED: AtomicBool = AtomicBool::new(false);
static LOCAL_ONLY: AtomicBool = AtomicBool::new(false);
static SESSIONS: Mutex<Vec<Session>> = Mutex::new(Vec::new());
static SERVERS: Mutex<Vec<Endpoint>> = Mutex::new(Vec::new());

/// A session the watcher may cancel, while its connection lives.
struct Session {
    token: CancelToken,
    alive: Weak<()>,
}

/// Where the server listens: what our sockets to it are connected to.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Endpoint {
    Tcp(IpAddr, u16),
    Unix(PathBuf),
}

/// Whether SIGINT or SIGTERM arrived.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Take SIGINT and SIGTERM on a watcher thread, as the module docs say.
pub fn install() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_none() {
                return;
            }
            SIGNALLED.store(true, Ordering::SeqCst);
            let (tx, second) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    let _ = tx.send(());
                }
            });
            escalate(&second);
        })?;
    Ok(())
}

/// Steps 2 to 4 of the module docs; returns only if the process outlives
/// them while its cleanup runs, or not at all.
fn escalate(second: &std::sync::mpsc::Receiver<()>) {
    let started = std::time::Instant::now();
    let wait_until = |at: Duration| {
        let left = at.saturating_sub(started.elapsed());
        if second.recv_timeout(left).is_ok() {
            exit_now("interrupted again: exiting at once; DEST may hold a partial copy");
        }
    };
    wait_until(CANCEL_AFTER);
    cancel_sessions();
    wait_until(SHUTDOWN_AFTER);
    log::debug!("shutting down the sockets of every session");
    shut_down_sockets();
    wait_until(EXIT_AFTER);
    if !LOCAL_ONLY.load(Ordering::SeqCst) {
        exit_now("interrupted: the threads did not stop in time; DEST was left as it is");
    }
    if second.recv().is_ok() {
        exit_now("interrupted again: exiting at once; DEST may hold a partial copy");
    }
}

fn exit_now(message: &str) -> ! {
    log::error!("{message}");
    std::process::exit(crate::error::Exit::Interrupted.code());
}

/// The run needs the server no more: what is left writes or removes
/// DEST, however long the disk takes; the watcher lets it finish (a second
/// signal still exits at once).
pub fn only_local_work_left() {
    LOCAL_ONLY.store(true, Ordering::SeqCst);
}

/// Remember a session until `alive` can no longer be upgraded (the
/// connection holds the only strong reference, see `conn/attempt.rs`).
pub fn register(token: CancelToken, alive: Weak<()>) {
    let mut sessions = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    sessions.retain(|s| s.alive.strong_count() > 0);
    sessions.push(Session { token, alive });
}

/// Remember where a server listens, before connecting to it.
pub fn register_endpoint(endpoint: Endpoint) {
    let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    if !servers.contains(&endpoint) {
        servers.push(endpoint);
    }
}

/// A cancel request for every live session, each on a thread that nobody
/// waits for (the process ends without them if they hang).
fn cancel_sessions() {
    let sessions = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    for s in sessions.iter().filter(|s| s.alive.strong_count() > 0) {
        let token = s.token.clone();
        let spawned = std::thread::Builder::new()
            .name("cancel".into())
            .spawn(move || {
                // As libpq before 17, without TLS; a server that insists on
                // TLS refuses it, and the sockets are shut down later.
                if let Err(e) = token.cancel_query(postgres::NoTls) {
                    log::debug!("could not send a cancel request: {e}");
                }
            });
        if let Err(e) = spawned {
            log::debug!("could not start a cancel thread: {e}");
        }
    }
}

/// `shutdown(2)` every socket of this process that is connected to a server
/// we connected to: sessions, connection attempts, cancel requests. The fds
/// come from /proc/self/fd; standard input and output are never touched.
fn shut_down_sockets() {
    let servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for fd in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if fd <= 2 {
            continue;
        }
        // SAFETY: the fd is only borrowed for two system calls; if it was
        // closed since the listing, they fail with EBADF, or act on a
        // socket opened since, which is ours too.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let Ok(peer) = socket.peer_addr() else {
            continue;
        };
        let endpoint = match (peer.as_socket(), peer.as_pathname()) {
            (Some(addr), _) => Endpoint::Tcp(addr.ip(), addr.port()),
            (None, Some(path)) => Endpoint::Unix(path.to_path_buf()),
            (None, None) => continue,
        };
        if servers.contains(&endpoint) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn only_sockets_to_a_registered_server_are_shut_down() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        register_endpoint(Endpoint::Tcp(addr.ip(), addr.port()));
        let mut ours = std::net::TcpStream::connect(addr).unwrap();
        let theirs = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (_held, _) = server.accept().unwrap();
        let (_held_other, _) = other.accept().unwrap();
        shut_down_sockets();
        // A read that would block forever returns at once: end of stream.
        let mut buf = [0u8; 1];
        assert_eq!(ours.read(&mut buf).unwrap(), 0);
        theirs.set_nonblocking(true).unwrap();
        let untouched = (&theirs).read(&mut buf).unwrap_err();
        assert_eq!(untouched.kind(), std::io::ErrorKind::WouldBlock);
    }
}
