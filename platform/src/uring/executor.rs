//! The tasks of one worker: a single-threaded executor whose idle wait is the ring's.
//!
//! Tasks are `!Send` futures polled on the worker's thread only. A waker called on that
//! thread puts its task on the local run queue; one called elsewhere (a timer, a resolver
//! thread, a connection handed over by another worker, shutdown) puts it on a shared queue and
//! writes the worker's eventfd once, which completes the read the ring keeps pending on it
//! (see [`super::submission`]), so a parked worker wakes without any other wait than the ring.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    future::Future,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Wake, Waker},
};

/// The run queue and the tasks of one worker.
pub(super) struct Executor {
    tasks: RefCell<Slots<TaskSlot>>,
    ready: RefCell<VecDeque<Arc<TaskHandle>>>,
    remote: Arc<Remote>,
}

struct TaskSlot {
    /// Taken out while the task is polled, so that it may spawn.
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    handle: Arc<TaskHandle>,
}

/// What a waker holds: which task, and how to reach its worker from anywhere.
pub(super) struct TaskHandle {
    key: usize,
    /// Set while the task sits on a run queue, so that a burst of wakes queues it once.
    scheduled: AtomicBool,
    remote: Arc<Remote>,
}

/// The part of a worker other threads may touch.
pub(super) struct Remote {
    queue: Mutex<Vec<Arc<TaskHandle>>>,
    /// Set from the first remote wake until the worker drains the queue: one eventfd write
    /// per batch of remote wakes.
    notified: AtomicBool,
    eventfd: OwnedFd,
}

thread_local! {
    /// The executor of the worker running on this thread (null elsewhere).
    static LOCAL: Cell<*const Executor> = const { Cell::new(std::ptr::null()) };
}

/// The key of the future given to [`Executor::block_on`]; never a slot.
const MAIN: usize = usize::MAX;

impl Executor {
    pub(super) fn new() -> io::Result<Self> {
        // Safety: eventfd has no memory preconditions; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            tasks: RefCell::new(Slots::default()),
            ready: RefCell::new(VecDeque::new()),
            remote: Arc::new(Remote {
                queue: Mutex::new(Vec::new()),
                notified: AtomicBool::new(false),
                // Safety: `fd` was just created and is owned by nobody else.
                eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            }),
        })
    }

    /// The descriptor remote wakes write to; the ring keeps a read pending on it.
    pub(super) fn eventfd(&self) -> RawFd {
        self.remote.eventfd.as_raw_fd()
    }

    /// Moves the tasks woken from other threads onto the run queue.
    pub(super) fn take_remote_wakes(&self) {
        // Cleared first: a wake racing with the drain below writes the eventfd again.
        self.remote.notified.store(false, Ordering::SeqCst);
        let woken = std::mem::take(
            &mut *self
                .remote
                .queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        self.ready.borrow_mut().extend(woken);
    }

    /// Whether a task is waiting to run.
    pub(super) fn has_ready(&self) -> bool {
        !self.ready.borrow().is_empty()
    }

    /// Adds a task; it runs on the next turn.
    pub(super) fn spawn(&self, future: Pin<Box<dyn Future<Output = ()>>>) {
        let mut tasks = self.tasks.borrow_mut();
        let key = tasks.vacant_key();
        let handle = Arc::new(TaskHandle {
            key,
            scheduled: AtomicBool::new(true),
            remote: Arc::clone(&self.remote),
        });
        tasks.insert(TaskSlot {
            future: Some(future),
            handle: Arc::clone(&handle),
        });
        self.ready.borrow_mut().push_back(handle);
    }

    /// Runs `future` and every task it spawns until `future` completes; `turn` is called
    /// between two rounds of ready tasks with whether the worker has nothing to run (then it
    /// waits in the ring).
    pub(super) fn block_on<T>(
        &self,
        future: impl Future<Output = T>,
        mut turn: impl FnMut(bool) -> io::Result<()>,
    ) -> io::Result<T> {
        let previous = LOCAL.with(|local| local.replace(self));
        let _restore = Restore(previous);
        let main = Arc::new(TaskHandle {
            key: MAIN,
            scheduled: AtomicBool::new(true),
            remote: Arc::clone(&self.remote),
        });
        let main_waker = Waker::from(Arc::clone(&main));
        self.ready.borrow_mut().push_back(main);
        let mut future = std::pin::pin!(future);
        loop {
            // One round: the tasks ready now; what they wake runs after the next turn, so the
            // operations a round queued are submitted together.
            let round = self.ready.borrow().len();
            for _ in 0..round {
                let Some(handle) = self.ready.borrow_mut().pop_front() else {
                    break;
                };
                handle.scheduled.store(false, Ordering::Release);
                if handle.key == MAIN {
                    if let Poll::Ready(value) =
                        future.as_mut().poll(&mut Context::from_waker(&main_waker))
                    {
                        return Ok(value);
                    }
                } else {
                    self.run(handle);
                }
            }
            turn(!self.has_ready())?;
        }
    }

    fn run(&self, handle: Arc<TaskHandle>) {
        let future = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(handle.key) {
                Some(slot) if Arc::ptr_eq(&slot.handle, &handle) => slot.future.take(),
                // A stale wake of a task that ended (its slot may hold another task now).
                _ => None,
            }
        };
        let Some(mut future) = future else {
            return;
        };
        let waker = Waker::from(Arc::clone(&handle));
        let done = future
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        let mut tasks = self.tasks.borrow_mut();
        if done {
            tasks.remove(handle.key);
        } else if let Some(slot) = tasks.get_mut(handle.key) {
            slot.future = Some(future);
        }
    }

    /// Drops every task (their sockets and buffers with them), on the worker's thread.
    pub(super) fn drop_tasks(&self) {
        let previous = LOCAL.with(|local| local.replace(self));
        let _restore = Restore(previous);
        loop {
            // Dropping a task may spawn or wake others; take them out a batch at a time.
            let batch = std::mem::take(&mut *self.tasks.borrow_mut());
            if batch.is_empty() {
                break;
            }
            drop(batch);
        }
        self.ready.borrow_mut().clear();
    }
}

struct Restore(*const Executor);

impl Drop for Restore {
    fn drop(&mut self) {
        LOCAL.with(|local| local.set(self.0));
    }
}

/// Spawns `future` on this thread's worker.
///
/// # Panics
/// Outside an io_uring worker.
pub(super) fn spawn_local(future: Pin<Box<dyn Future<Output = ()>>>) {
    LOCAL.with(|local| {
        let executor = local.get();
        assert!(!executor.is_null(), "spawn outside an io_uring worker");
        // Safety: LOCAL points at the executor that `block_on` or `drop_tasks` is running on
        // this thread, which outlives the call (it is reset when they return).
        unsafe { &*executor }.spawn(future);
    });
}

impl Wake for TaskHandle {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let on_worker = LOCAL.with(|local| {
            let executor = local.get();
            // Safety: as in `spawn_local`.
            if !executor.is_null() && Arc::ptr_eq(&unsafe { &*executor }.remote, &self.remote) {
                unsafe { &*executor }
                    .ready
                    .borrow_mut()
                    .push_back(Arc::clone(self));
                true
            } else {
                false
            }
        });
        if on_worker {
            return;
        }
        self.remote
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::clone(self));
        if !self.remote.notified.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // Safety: writes 8 bytes from a live u64 to the eventfd, which lives as long as
            // `remote`. A failure (the counter cannot overflow from single increments) loses
            // nothing: the queue is drained on every eventfd completion.
            unsafe {
                libc::write(
                    self.remote.eventfd.as_raw_fd(),
                    std::ptr::from_ref(&one).cast(),
                    8,
                );
            }
        }
    }
}

/// A future that lets the worker's other ready tasks run once before it completes.
pub(super) struct YieldNow(bool);

impl YieldNow {
    pub(super) fn new() -> Self {
        Self(false)
    }
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Values addressed by small reusable keys (tasks here, ring operations in
/// [`super::submission`]).
pub(super) struct Slots<T> {
    entries: Vec<Option<T>>,
    vacant: Vec<usize>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            vacant: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    /// The key the next [`Slots::insert`] uses.
    pub(super) fn vacant_key(&self) -> usize {
        self.vacant.last().copied().unwrap_or(self.entries.len())
    }

    pub(super) fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.vacant.pop() {
            Some(key) => {
                self.entries[key] = Some(value);
                key
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    pub(super) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key).and_then(Option::as_mut)
    }

    pub(super) fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.entries.get_mut(key).and_then(Option::take);
        if value.is_some() {
            self.len -= 1;
            self.vacant.push(key);
        }
        value
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }
}
