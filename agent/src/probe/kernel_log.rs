//! Kernel log lines: the BPF programs write their rare events (a process's first lost
//! event of a kind, a context whose creation site was not found) with `aya-log-ebpf` into
//! the `AYA_LOGS` ring buffer; a thread forwards them to `tracing` (target
//! `goroscope::kernel`), so they land in the agent's own log.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use aya::Ebpf;
use aya_log::EbpfLogger;

/// Forwards kernel log records until dropped. It holds the log ring buffer, whose fd the
/// programs are loaded with: keep it as long as the `Ebpf` it came from.
pub struct KernelLog {
    /// Shared with the thread; held here too so the ring buffer lives as long as this,
    /// whether or not the thread runs.
    _logger: Arc<Mutex<EbpfLogger<ToTracing>>>,
    /// An eventfd that tells the thread to stop, and the thread.
    forwarder: Option<(Arc<OwnedFd>, JoinHandle<()>)>,
}

/// Starts forwarding the kernel's log records: call it after loading the object and
/// before loading any program. Never fails: without it the programs run as well (their
/// records are dropped) and a warning says so.
pub fn start(ebpf: &mut Ebpf) -> Option<KernelLog> {
    let logger = match EbpfLogger::init_with_logger(ebpf, ToTracing) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!(error = %e, "kernel log lines unavailable");
            return None;
        }
    };
    let ring = logger.as_raw_fd();
    let logger = Arc::new(Mutex::new(logger));
    let forwarder = spawn(Arc::clone(&logger), ring)
        .inspect_err(|e| tracing::warn!(error = %e, "kernel log lines will not be read"))
        .ok();
    Some(KernelLog {
        _logger: logger,
        forwarder,
    })
}

fn spawn(
    logger: Arc<Mutex<EbpfLogger<ToTracing>>>,
    ring: RawFd,
) -> std::io::Result<(Arc<OwnedFd>, JoinHandle<()>)> {
    // SAFETY: eventfd has no memory preconditions; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let wake = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("kernel-log".into())
        .spawn(move || forward(&logger, ring, wake.as_raw_fd()))?;
    Ok((stop, thread))
}

/// Flushes the ring buffer whenever it has records, until `stop` is signalled.
fn forward(logger: &Mutex<EbpfLogger<ToTracing>>, ring: RawFd, stop: RawFd) {
    let mut fds = [ring, stop].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: two initialised pollfds; both fds stay open while this thread runs (it
        // holds the logger and the eventfd).
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "kernel log lines: poll failed, no longer read");
                return;
            }
        }
        if let Ok(mut logger) = logger.lock() {
            logger.flush();
        }
        if fds[1].revents != 0 {
            return;
        }
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.forwarder.take() {
            // SAFETY: writes 8 bytes from a live u64 to the eventfd, which adds them.
            unsafe { libc::write(stop.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
            let _ = thread.join();
        }
    }
}

/// Hands `aya-log` records to `tracing`.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let module = record.module_path().unwrap_or_default();
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(target: "goroscope::kernel", $level, bpf_module = module, "{}", record.args())
            };
        }
        match record.level() {
            log::Level::Error => emit!(tracing::Level::ERROR),
            log::Level::Warn => emit!(tracing::Level::WARN),
            log::Level::Info => emit!(tracing::Level::INFO),
            log::Level::Debug => emit!(tracing::Level::DEBUG),
            log::Level::Trace => emit!(tracing::Level::TRACE),
        }
    }

    fn flush(&self) {}
}
