//! systemd: listening sockets passed by socket activation (`LISTEN_FDS`, `LISTEN_FDNAMES`)
//! and the service's state told to the manager (`Type=notify`: `READY=1`, `RELOADING=1`,
//! `STOPPING=1`), through `sd-notify`. Outside systemd both do nothing.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::reactor::Listening;

/// Names (`FileDescriptorName=` in the socket unit) that mark a socket as a TLS listener;
/// any other name is a plain one.
pub const TLS_NAMES: [&str; 2] = ["tls", "wss"];

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
/// made non-blocking, each a TLS listener if its name is one of [`TLS_NAMES`].
pub fn activated_sockets() -> Result<Vec<(Listening, SocketAddr)>, ActivationError> {
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
                let tls = TLS_NAMES.contains(&name.as_str());
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
