//! Checking at start that this process may drive a ring the way the backend does.
//!
//! Everything the workers use is tried once: ring setup (and which flags the kernel takes),
//! each opcode, a provided buffer ring, and a multishot receive on a socket pair, which shows
//! both that multishot receives exist (Linux 6.0) and that a seccomp profile lets the calls
//! through.

use std::{io, os::fd::AsRawFd};

use io_uring::{cqueue, opcode, types, IoUring};

use super::submission::{build_ring, RingSetup};

/// What the start-up probe found.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    /// How rings are set up on this kernel.
    pub setup: RingSetup,
}

/// Why io_uring cannot be used here.
#[derive(Clone, Debug)]
pub struct Unavailable {
    /// What failed, with the errno.
    pub cause: String,
    /// What the user can do about it.
    pub advice: &'static str,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.cause, self.advice)
    }
}

const NEWER_KERNEL: &str =
    "the io_uring backend needs Linux 6.0 or later; run with --backend tokio";

/// Checks that this process may use io_uring the way the backend does.
pub fn probe() -> Result<ProbeReport, Unavailable> {
    if let Ok(setting) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if setting.trim() == "2" {
            return Err(Unavailable {
                cause: "io_uring is disabled by the sysctl kernel.io_uring_disabled=2".into(),
                advice: "set kernel.io_uring_disabled=0, or run with --backend tokio",
            });
        }
    }
    let (ring, setup) = build_ring(8).map_err(|error| classify("io_uring_setup", &error))?;
    let mut supported = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut supported)
        .map_err(|error| classify("IORING_REGISTER_PROBE", &error))?;
    for (name, code) in [
        ("RECV", opcode::RecvMulti::CODE),
        ("SEND", opcode::Send::CODE),
        ("WRITE_FIXED", opcode::WriteFixed::CODE),
        ("ACCEPT", opcode::AcceptMulti::CODE),
        ("CONNECT", opcode::Connect::CODE),
        ("READ", opcode::Read::CODE),
        ("POLL_ADD", opcode::PollAdd::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ] {
        if !supported.is_supported(code) {
            return Err(Unavailable {
                cause: format!("the kernel's io_uring lacks the {name} operation"),
                advice: NEWER_KERNEL,
            });
        }
    }
    multishot_receive(ring)?;
    Ok(ProbeReport { setup })
}

/// Receives one byte over a socket pair with a multishot receive into a one-buffer provided
/// ring, as the workers do.
fn multishot_receive(ring: IoUring) -> Result<(), Unavailable> {
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|error| classify("socketpair", &error))?;
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);
    let mut entries = Box::new(Page([0; 4096]));
    let mut buffer = [0u8; 64];
    let entries_ptr = entries.0.as_mut_ptr().cast::<types::BufRingEntry>();
    // Bound after the memory it uses, so dropped (ending every operation) before it.
    let mut ring = ring;
    // Safety: the page is aligned, zeroed and outlives the registration, which ends when the
    // ring is dropped or unregisters it below.
    unsafe {
        ring.submitter()
            .register_buf_ring(entries_ptr as u64, 1, 7)
            .map_err(|error| {
                if error.raw_os_error() == Some(libc::EINVAL) {
                    Unavailable {
                        cause: format!(
                            "IORING_REGISTER_PBUF_RING rejected by this kernel: {error}"
                        ),
                        advice: NEWER_KERNEL,
                    }
                } else {
                    classify("IORING_REGISTER_PBUF_RING", &error)
                }
            })?;
        let entry = &mut *entries_ptr;
        entry.set_addr(buffer.as_mut_ptr() as u64);
        entry.set_len(buffer.len() as u32);
        entry.set_bid(0);
        let tail = types::BufRingEntry::tail(entries_ptr).cast_mut();
        std::sync::atomic::AtomicU16::from_ptr(tail).store(1, std::sync::atomic::Ordering::Release);
    }
    use std::io::Write;
    (&theirs)
        .write_all(b"x")
        .map_err(|error| classify("socketpair write", &error))?;
    let receive = opcode::RecvMulti::new(types::Fd(ours.as_raw_fd()), 7)
        .build()
        .user_data(1);
    // Safety: the socket and the registered buffer outlive the operation (the ring is
    // dropped, which ends it, before they are).
    unsafe { ring.submission().push(&receive) }.map_err(|_| Unavailable {
        cause: "io_uring submission queue full".into(),
        advice: "run with --backend tokio",
    })?;
    ring.submit_and_wait(1)
        .map_err(|error| classify("io_uring_enter", &error))?;
    let completion = ring.completion().next();
    let outcome = match completion {
        Some(cqe) if cqe.result() == 1 && cqueue::more(cqe.flags()) => Ok(()),
        Some(cqe) if cqe.result() < 0 => Err(classify(
            "multishot receive",
            &io::Error::from_raw_os_error(-cqe.result()),
        )),
        _ => Err(Unavailable {
            cause: "multishot receive is not supported by this kernel".into(),
            advice: NEWER_KERNEL,
        }),
    };
    drop(ring);
    drop(entries);
    outcome
}

fn classify(step: &str, error: &io::Error) -> Unavailable {
    let (cause, advice) = match error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => (
            "denied (a seccomp profile such as Docker's default, or kernel.io_uring_disabled)",
            "allow io_uring in the container's seccomp profile, or run with --backend tokio",
        ),
        Some(libc::ENOSYS) => ("not implemented by this kernel", NEWER_KERNEL),
        Some(libc::ENOMEM) => (
            "out of locked memory",
            "raise RLIMIT_MEMLOCK (ulimit -l), or run with --backend tokio",
        ),
        Some(libc::EINVAL) => ("rejected by this kernel", NEWER_KERNEL),
        _ => ("failed", "run with --backend tokio"),
    };
    Unavailable {
        cause: format!("{step} {cause}: {error}"),
        advice,
    }
}
