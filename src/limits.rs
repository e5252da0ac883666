//! The file-descriptor guard.
//!
//! Every tunnel needs two descriptors (client and upstream). At start the soft `RLIMIT_NOFILE`
//! is raised toward the hard limit; if the connection cap still does not fit, the effective cap
//! is lowered to what does, and the start line says so, instead of failing later with EMFILE in
//! the middle of a Terraform run.

use std::io;

/// Descriptors per admitted connection: the client and the upstream.
pub const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// Pipes a worker keeps open at most for zero-copy relaying (two descriptors each). A pipe is
/// held only while one chunk crosses the proxy, so 32 cover the flows a worker moves at once;
/// beyond them chunks are copied.
pub const PIPES_PER_WORKER: usize = 32;

/// Descriptors kept for everything else: listeners, rings, relay pipes, logs, resolver,
/// connections being refused with 503.
pub fn headroom(workers: usize) -> u64 {
    64 + (8 + 2 * PIPES_PER_WORKER as u64) * workers as u64
}

/// What the guard decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// Soft limit after raising it.
    pub soft_limit: u64,
    /// The connection cap in force; never 0.
    pub connection_cap: usize,
    /// The requested cap did not fit and was lowered (or derived, for "unlimited").
    pub lowered: bool,
}

/// Raises the soft descriptor limit and fits the connection cap into it.
///
/// `requested` is `--max-connections`; 0 means unlimited, which becomes the most the descriptor
/// limit allows.
pub fn fd_guard(requested: usize, workers: usize) -> io::Result<FdBudget> {
    let soft_limit = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(fit_cap(requested, soft_limit, headroom(workers)))
}

/// The arithmetic of [`fd_guard`], separate so it can be tested without touching limits.
pub fn fit_cap(requested: usize, soft_limit: u64, headroom: u64) -> FdBudget {
    let fits = (soft_limit.saturating_sub(headroom) / DESCRIPTORS_PER_CONNECTION).max(1);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    if requested == 0 {
        return FdBudget {
            soft_limit,
            connection_cap: fits,
            lowered: true,
        };
    }
    FdBudget {
        soft_limit,
        connection_cap: requested.min(fits),
        lowered: requested > fits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_that_fits_is_kept() {
        assert_eq!(
            fit_cap(1000, 20_000, 80),
            FdBudget {
                soft_limit: 20_000,
                connection_cap: 1000,
                lowered: false
            }
        );
    }

    #[test]
    fn a_cap_that_does_not_fit_is_lowered() {
        let budget = fit_cap(1000, 1024, 80);
        assert_eq!(budget.connection_cap, 472);
        assert!(budget.lowered);
    }

    #[test]
    fn unlimited_is_derived_from_the_limit() {
        assert_eq!(fit_cap(0, 20_000, 80).connection_cap, 9960);
        assert_eq!(fit_cap(0, 10, 80).connection_cap, 1);
    }
}
