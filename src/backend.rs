//! Choosing the I/O backend once, at start, and saying why.

use std::fmt;

use crate::config::BackendChoice;

/// The backend picked for this run.
#[derive(Clone, Copy, Debug)]
pub enum Chosen {
    /// The portable Tokio backend.
    Tokio(fyntr_platform::portable::Portable),
    /// The io_uring backend.
    #[cfg(target_os = "linux")]
    IoUring(fyntr_platform::uring::Uring),
}

/// The outcome of the choice: the backend, the reason for the start line, and a warning when
/// `auto` fell back.
#[derive(Debug)]
pub struct Choice {
    /// The backend to run.
    pub backend: Chosen,
    /// Why, in words for the start line.
    pub reason: String,
    /// Set when `auto` wanted io_uring and could not have it.
    pub fallback_warning: Option<String>,
}

/// `--backend io-uring` on a system where it cannot run.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--backend io-uring: io_uring is unavailable: {}", self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Picks the backend for `choice`. The io_uring backend's relay buffers are `buffer_size`
/// bytes, registered with its rings when `may_register` (see `uring::buffers`).
pub fn choose(
    choice: BackendChoice,
    buffer_size: usize,
    may_register: bool,
) -> Result<Choice, Unavailable> {
    let tokio = Chosen::Tokio(fyntr_platform::portable::Portable);
    match choice {
        BackendChoice::Tokio => Ok(Choice {
            backend: tokio,
            reason: "requested with --backend tokio".into(),
            fallback_warning: None,
        }),
        BackendChoice::IoUring | BackendChoice::Auto => {
            #[cfg(target_os = "linux")]
            {
                use fyntr_platform::uring;
                match uring::probe() {
                    Ok(report) => {
                        let how = if choice == BackendChoice::Auto {
                            "auto: io_uring is available"
                        } else {
                            "requested with --backend io-uring"
                        };
                        let buffers = if may_register {
                            "relay buffers registered on first use"
                        } else {
                            "relay buffers not registered (RLIMIT_MEMLOCK too low)"
                        };
                        Ok(Choice {
                            backend: Chosen::IoUring(uring::Uring::new(buffer_size, may_register)),
                            reason: format!("{how}; {}; {buffers}", report.setup.describe()),
                            fallback_warning: None,
                        })
                    }
                    Err(unavailable) if choice == BackendChoice::IoUring => {
                        Err(Unavailable(unavailable.to_string()))
                    }
                    Err(unavailable) => Ok(Choice {
                        backend: tokio,
                        reason: format!("auto: io_uring unavailable ({})", unavailable.cause),
                        fallback_warning: Some(format!(
                            "io_uring is unavailable, running the portable tokio backend instead: {unavailable}"
                        )),
                    }),
                }
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = (buffer_size, may_register);
                if choice == BackendChoice::IoUring {
                    return Err(Unavailable("io_uring exists only on Linux".into()));
                }
                Ok(Choice {
                    backend: tokio,
                    reason: "auto: io_uring exists only on Linux".into(),
                    fallback_warning: None,
                })
            }
        }
    }
}

impl Chosen {
    /// The backend's name for logs.
    pub fn name(&self) -> &'static str {
        use fyntr_platform::Backend;
        match self {
            Self::Tokio(backend) => backend.name(),
            #[cfg(target_os = "linux")]
            Self::IoUring(backend) => backend.name(),
        }
    }

    /// Runs the server on this backend (monomorphised per backend).
    pub(crate) fn run(
        self,
        config: std::sync::Arc<crate::worker::Shared>,
        listeners: crate::server::Listeners,
        shutdown: crate::server::ShutdownSignal,
    ) -> std::io::Result<()> {
        match self {
            Self::Tokio(backend) => crate::server::run(backend, config, listeners, shutdown),
            #[cfg(target_os = "linux")]
            Self::IoUring(backend) => crate::server::run(backend, config, listeners, shutdown),
        }
    }
}
