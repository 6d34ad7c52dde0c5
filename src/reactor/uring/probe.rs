//! Can this process use io_uring? Checked once at startup, so `--io auto` can fall back to
//! epoll with a reason, and `--io uring` can fail with one.

use io_uring::{opcode, IoUring, Probe};

/// Set to `fail` to make the probe report io_uring as unavailable (for tests of the
/// fallback, and for operators who want to rule io_uring out without changing flags).
pub const FORCE_UNAVAILABLE_ENV: &str = "WSEDGE_IO_URING_PROBE";

/// Why io_uring cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Forced by the environment.
    #[error("{FORCE_UNAVAILABLE_ENV}=fail is set")]
    Forced,
    /// `kernel.io_uring_disabled` forbids it.
    #[error("kernel.io_uring_disabled={0} forbids io_uring for this process")]
    DisabledBySysctl(String),
    /// The kernel has no io_uring (ENOSYS) or a filter blocks it (EPERM from seccomp).
    #[error("io_uring_setup failed: {0} (kernel without io_uring, or blocked by seccomp)")]
    Setup(std::io::Error),
    /// An operation wsedge needs is missing (kernel too old).
    #[error("the kernel lacks {0} (io_uring needs kernel 6.0 or later here)")]
    Missing(&'static str),
}

/// Checks for io_uring and every feature the backend uses.
pub fn probe() -> Result<(), Unavailable> {
    if std::env::var(FORCE_UNAVAILABLE_ENV).is_ok_and(|v| v == "fail") {
        return Err(Unavailable::Forced);
    }
    if let Ok(value) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let value = value.trim();
        // 1 allows only members of kernel.io_uring_group; setup below tells whether we are.
        if value == "2" {
            return Err(Unavailable::DisabledBySysctl(value.to_owned()));
        }
    }
    let ring = IoUring::new(8).map_err(Unavailable::Setup)?;
    let mut ops = Probe::new();
    ring.submitter()
        .register_probe(&mut ops)
        .map_err(|_| Unavailable::Missing("IORING_REGISTER_PROBE"))?;
    let needed = [
        (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
        (opcode::Recv::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::Close::CODE, "IORING_OP_CLOSE"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Read::CODE, "IORING_OP_READ"),
        // Proxy mode's upstream connections.
        (opcode::Connect::CODE, "IORING_OP_CONNECT"),
    ];
    for (code, name) in needed {
        if !ops.is_supported(code) {
            return Err(Unavailable::Missing(name));
        }
    }
    // Provided-buffer rings and multishot accept arrived together (5.19).
    super::buf_ring::BufRing::new(&ring, 0, 1, 64)
        .map(|b| b.unregister(&ring))
        .map_err(|_| Unavailable::Missing("provided-buffer rings (IORING_REGISTER_PBUF_RING)"))
}
