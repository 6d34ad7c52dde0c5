//! systemd: listening sockets passed by socket activation (`LISTEN_FDS`, `LISTEN_FDNAMES`)
//! and the service's state told to the manager (`Type=notify`: `READY=1`, `RELOADING=1`,
//! `STOPPING=1`), through `sd-notify`. Outside systemd both do nothing.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::reactor::Listening;

/// Names (`FileDescriptorName=` in the socket unit) that mark a socket as a TLS listener.
pub const TLS_NAMES: [&str; 2] = ["tls", "wss"];
/// Names that mark a socket as a plain listener. Any other name (systemd's default is the
/// unit's, `wsedge.socket`) is plain too, with a warning that says so.
pub const PLAIN_NAMES: [&str; 3] = ["ws", "http", "plain"];

/// Why the passed sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` are malformed.
    #[error("LISTEN_FDS: {0}")]
    Environment(std::io::Error),
    /// A passed descriptor is not a listening TCP socket.
    #[error("LISTEN_FDS: descriptor {fd} ({name}) is not a listening TCP socket{why}")]
    NotAListener {
        /// The descriptor.
        fd: i32,
        /// Its name.
        name: String,
        /// What was found.
        why: String,
    },
}

/// The listening sockets systemd passed to this process (none outside socket activation),
/// made non-blocking. Whether one speaks TLS is decided by the flags first: an address in
/// `listen_tls` is TLS and one in `listen` plain, whatever its name (a socket named `ws` on
/// the port of `--listen-tls` must not serve plaintext there); only an address no flag
/// names is decided by its name ([`TLS_NAMES`], [`PLAIN_NAMES`]).
pub fn activated_sockets(
    listen: &[SocketAddr],
    listen_tls: &[SocketAddr],
) -> Result<Vec<(Listening, SocketAddr)>, ActivationError> {
    let passed = sd_notify::listen_fds_with_names().map_err(ActivationError::Environment)?;
    let mut sockets = Vec::with_capacity(passed.len());
    for (fd, name) in passed {
        // SAFETY: LISTEN_PID names this process, so descriptors 3.. are ours, passed by the
        // service manager for us to own; each is taken once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let socket = socket2::Socket::from(owned);
        let not_a_listener = |why: String| ActivationError::NotAListener {
            fd,
            name: name.clone(),
            why,
        };
        match (socket.is_listener(), socket.r#type(), socket.local_addr()) {
            (Ok(true), Ok(socket2::Type::STREAM), Ok(addr)) => {
                let Some(addr) = addr.as_socket() else {
                    return Err(not_a_listener(": not an IP socket".into()));
                };
                socket
                    .set_nonblocking(true)
                    .map_err(|e| not_a_listener(format!(": {e}")))?;
                let tls = decide_tls(addr, &name, listen, listen_tls);
                sockets.push((
                    Listening {
                        socket: socket.into(),
                        tls,
                    },
                    addr,
                ));
            }
            (Ok(false), _, _) => return Err(not_a_listener(": it does not listen".into())),
            (_, Ok(other), _) if other != socket2::Type::STREAM => {
                return Err(not_a_listener(": not a stream socket".into()))
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return Err(not_a_listener(format!(": {e}")))
            }
            _ => return Err(not_a_listener(String::new())),
        }
    }
    Ok(sockets)
}

/// Whether the passed socket on `addr`, named `name`, is a TLS listener (see
/// [`activated_sockets`]); a name that contradicts the flags, or says nothing, is warned of.
fn decide_tls(
    addr: SocketAddr,
    name: &str,
    listen: &[SocketAddr],
    listen_tls: &[SocketAddr],
) -> bool {
    let named = |list: &[SocketAddr]| {
        list.iter()
            .any(|a| a.ip() == addr.ip() && (a.port() == addr.port() || a.port() == 0))
    };
    let by_name = match name {
        name if TLS_NAMES.contains(&name) => Some(true),
        name if PLAIN_NAMES.contains(&name) => Some(false),
        _ => None,
    };
    let by_flags = match (named(listen_tls), named(listen)) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    };
    let kind = |tls: bool| if tls { "TLS" } else { "plain" };
    match (by_flags, by_name) {
        (Some(tls), Some(named)) if tls != named => {
            tracing::warn!(
                "systemd socket {addr} is named {name:?} but the flags serve it {}: served {}",
                kind(tls),
                kind(tls)
            );
            tls
        }
        (Some(tls), _) => tls,
        (None, Some(tls)) => tls,
        (None, None) => {
            tracing::warn!(
                "systemd socket {addr} is named {name:?}, neither {TLS_NAMES:?} (TLS) nor \
                 {PLAIN_NAMES:?} (plain), and no --listen/--listen-tls names it: served \
                 PLAIN; set FileDescriptorName= in its socket unit"
            );
            false
        }
    }
}

/// Tells the service manager what the service is doing (nothing outside systemd).
pub fn notify(state: ServiceState) {
    use sd_notify::NotifyState;
    let result = match state {
        ServiceState::Ready => sd_notify::notify(&[NotifyState::Ready]),
        ServiceState::Reloading => match NotifyState::monotonic_usec_now() {
            Ok(now) => sd_notify::notify(&[NotifyState::Reloading, now]),
            Err(_) => sd_notify::notify(&[NotifyState::Reloading]),
        },
        ServiceState::Stopping => sd_notify::notify(&[NotifyState::Stopping]),
    };
    if let Err(error) = result {
        tracing::warn!("NOTIFY_SOCKET: cannot tell systemd: {error}");
    }
}

/// What [`notify`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Serving (`READY=1`): after startup, and after a reload.
    Ready,
    /// Reading the configuration again (`RELOADING=1`).
    Reloading,
    /// Draining before exit (`STOPPING=1`).
    Stopping,
}
