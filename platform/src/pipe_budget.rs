//! How much pipe capacity the whole process may hold for zero-copy relaying.
//!
//! Why: Linux counts every pipe's capacity against its owner's `fs.pipe-user-pages-soft`
//! (16384 pages, 64 MiB, by default) across all of that user's processes. Once the user is over
//! it, an unprivileged process can no longer grow a pipe (`F_SETPIPE_SZ` fails with EPERM) and
//! every new pipe the user opens, in any program (a shell pipeline, `make`'s jobserver), gets
//! two pages instead of sixteen. Each worker may hold up to 32 relay pipes of 256 KiB, so
//! without a budget 8 workers reach the limit on their own (measured as user `nobody`: the
//! 257th 256 KiB pipe could not be resized and came back with 8 KiB).
//!
//! So all workers draw their pipes from one [`PipeBudget`]: a quarter of the soft limit (16 MiB
//! by default: 64 pipes of the default chunk, which is what two workers could hold before the
//! budget existed). Beyond it the relay copies through a buffer, as it does whenever no pipe is
//! to be had. Where the soft limit is off (0) the budget is unlimited.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// The share of the user's soft pipe limit one fyntr process takes at most.
pub const SHARE_OF_SOFT_LIMIT: usize = 4;

/// Pipe capacity, in bytes, that the process's pipe pools may hold open between them. Cheap to
/// clone; the clones share one account.
#[derive(Clone, Debug)]
pub struct PipeBudget {
    /// `None`: unlimited.
    account: Option<Arc<Account>>,
}

#[derive(Debug)]
struct Account {
    total: usize,
    left: AtomicUsize,
}

impl PipeBudget {
    /// A budget that never refuses.
    pub fn unlimited() -> Self {
        Self { account: None }
    }

    /// A budget of `bytes` of pipe capacity.
    pub fn new(bytes: usize) -> Self {
        Self {
            account: Some(Arc::new(Account {
                total: bytes,
                left: AtomicUsize::new(bytes),
            })),
        }
    }

    /// The budget for this process: [`SHARE_OF_SOFT_LIMIT`] of this user's soft pipe limit
    /// (`/proc/sys/fs/pipe-user-pages-soft`); unlimited where there is no such limit.
    pub fn for_this_user() -> Self {
        match soft_limit_bytes() {
            Some(bytes) => Self::from_soft_limit(bytes),
            None => Self::unlimited(),
        }
    }

    /// The budget under a soft limit of `soft_limit` bytes (0: no limit).
    pub fn from_soft_limit(soft_limit: usize) -> Self {
        if soft_limit == 0 {
            Self::unlimited()
        } else {
            Self::new(soft_limit / SHARE_OF_SOFT_LIMIT)
        }
    }

    /// The budget in bytes, `None` when unlimited.
    pub fn total(&self) -> Option<usize> {
        self.account.as_ref().map(|account| account.total)
    }

    /// Takes `bytes` out of the budget if they are left; false (and nothing taken) if not.
    pub fn take(&self, bytes: usize) -> bool {
        let Some(account) = &self.account else {
            return true;
        };
        account
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken earlier.
    pub fn give_back(&self, bytes: usize) {
        if let Some(account) = &self.account {
            account.left.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    /// Less than half of the budget is left: spare pipes should be closed rather than kept, so
    /// that busy workers can open theirs.
    pub fn is_scarce(&self) -> bool {
        self.account
            .as_ref()
            .is_some_and(|account| account.left.load(Ordering::Acquire) < account.total / 2)
    }
}

/// The soft limit in bytes, `Some(0)` when it is off; `None` where it cannot be read (or the
/// system has no such limit: pipes are only used on Linux).
#[cfg(target_os = "linux")]
fn soft_limit_bytes() -> Option<usize> {
    let pages: usize = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(pages.saturating_mul(page_size()))
}

#[cfg(not(target_os = "linux"))]
fn soft_limit_bytes() -> Option<usize> {
    None
}

#[cfg(target_os = "linux")]
fn page_size() -> usize {
    // Safety: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&size| size > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_quarter_of_the_soft_limit_and_off_without_one() {
        assert_eq!(
            PipeBudget::from_soft_limit(64 << 20).total(),
            Some(16 << 20)
        );
        assert_eq!(PipeBudget::from_soft_limit(0).total(), None);
    }

    #[test]
    fn takes_are_refused_once_the_budget_is_spent_and_allowed_again_after_giving_back() {
        let budget = PipeBudget::new(3 << 20);
        let shared = budget.clone();
        assert!(budget.take(1 << 20));
        assert!(!budget.is_scarce(), "2 of 3 MiB left");
        assert!(shared.take(1 << 20), "clones share one account");
        assert!(budget.is_scarce(), "1 of 3 MiB left");
        assert!(!budget.take(2 << 20), "only 1 MiB left");
        assert!(budget.take(1 << 20), "a refused take took nothing");
        assert!(!shared.take(1));
        shared.give_back(1 << 20);
        assert!(budget.take(1 << 20));
    }

    #[test]
    fn an_unlimited_budget_never_refuses() {
        let budget = PipeBudget::unlimited();
        assert!(budget.take(usize::MAX));
        assert!(budget.take(usize::MAX));
        assert!(!budget.is_scarce());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_users_budget_follows_the_kernels_soft_limit() {
        let pages: usize = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let expected = (pages > 0).then(|| pages * page_size() / SHARE_OF_SOFT_LIMIT);
        assert_eq!(PipeBudget::for_this_user().total(), expected);
    }
}
