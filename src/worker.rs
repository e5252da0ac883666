//! One worker's state: what all workers share (configuration, policy, the connection cap,
//! pacers, the pipe budget) and what the tasks of one worker share (its buffer pool, pipes,
//! scratch buffer, gate). Single-threaded below [`Shared`].

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use fyntr_platform::{Backend, PipeBudget, PipePool};
use tokio::sync::Notify;

use crate::{
    active_downloads::ActiveDownloads,
    admission::Admission,
    auto_pacing::AutoPacing,
    config::{Config, Pacing, RateSetting},
    dial::SocketTuning,
    gate::Gate,
    grace_over::GraceOver,
    metrics::{Protocol, Stats, WorkerStats},
    relay::RelayContext,
    reload::Live,
    sched::pacer::{on_the_wire, Pacer, Rate},
    send_queue::BulkFlows,
};

/// What all workers share (read-only but for atomics and the settings a reload swaps).
pub(crate) struct Shared {
    /// The configuration the server started with; what may change while it runs is in
    /// [`Shared::live`].
    pub(crate) config: Config,
    live: RwLock<Arc<Live>>,
    pub(crate) admission: Arc<Admission>,
    /// Downloads that moved data lately, among which a paced download window is shared.
    pub(crate) active_downloads: Arc<ActiveDownloads>,
    pub(crate) upload_pacer: Option<Arc<Pacer>>,
    pub(crate) download_pacer: Option<Arc<Pacer>>,
    /// The directions paced with `auto`, if any.
    pub(crate) auto_pacing: Option<Arc<AutoPacing>>,
    pub(crate) connect_pacer: Option<Arc<Pacer>>,
    /// Counters and gauges, one shard per worker.
    pub(crate) stats: Stats,
    /// The backend's name, for `fyntr_build_info`.
    pub(crate) backend_name: &'static str,
    /// What every worker's pipe pool draws from.
    pipe_budget: PipeBudget,
}

impl Shared {
    pub(crate) fn new(config: Config, backend_name: &'static str) -> Shared {
        let epoch = Instant::now();
        // Every direction has a pacer, unlimited unless a rate is fixed, so that a reload can
        // set, change or lift a rate; with `auto` the controllers set it. An unlimited pacer
        // costs one atomic load per grant.
        let byte_pacer = |setting: RateSetting| {
            Some(Arc::new(match setting {
                RateSetting::Off | RateSetting::Auto => Pacer::unlimited(epoch),
                RateSetting::Fixed(rate) => {
                    Pacer::new(rate, byte_burst(rate, config.buffer_size), epoch)
                }
            }))
        };
        let connect_pacer = Some(Arc::new(match config.pacing.connects_per_second {
            Some(per_second) => Pacer::new(Rate(per_second), connect_burst(per_second), epoch),
            None => Pacer::unlimited(epoch),
        }));
        let upload_pacer = byte_pacer(config.pacing.upload);
        let download_pacer = byte_pacer(config.pacing.download);
        let active_downloads = Arc::new(ActiveDownloads::new(epoch));
        let auto_pacing = AutoPacing::new(
            upload_pacer.clone(),
            download_pacer.clone(),
            [
                config.pacing.upload.is_auto(),
                config.pacing.download.is_auto(),
            ],
            config.buffer_size,
            Arc::clone(&active_downloads),
        );
        if let Some(auto_pacing) = &auto_pacing {
            AutoPacing::start(auto_pacing);
        }
        Shared {
            live: RwLock::new(Arc::new(Live::new(&config))),
            admission: Arc::new(Admission::new(config.connection_cap)),
            active_downloads,
            stats: Stats::new(config.workers.max(1)),
            backend_name,
            upload_pacer,
            download_pacer,
            auto_pacing,
            connect_pacer,
            pipe_budget: config
                .pipe_budget
                .map_or_else(PipeBudget::unlimited, PipeBudget::new),
            config,
        }
    }
}

impl Shared {
    /// The settings for a new request: what the last reload left in force.
    pub(crate) fn live(&self) -> Arc<Live> {
        Arc::clone(
            &self
                .live
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Puts `live` in force for the requests that come after.
    pub(crate) fn set_live(&self, live: Live) {
        *self
            .live
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(live);
    }
}

/// A fixed byte rate's burst: one whole chunk plus 2 ms of the rate, room for a timer that
/// fires late (Tokio's resolution is 1 ms) without losing the rate, no more. With 2 ms in all,
/// late timers cost a fifth of a 19 Mbit/s rate on loopback.
pub(crate) fn byte_burst(rate: Rate, buffer_size: usize) -> u64 {
    let slack = (rate.bytes_per_second() * 0.002) as u64;
    on_the_wire(buffer_size as u64) + slack
}

/// New connections' burst: a tenth of a second's worth, at least one.
pub(crate) fn connect_burst(per_second: f64) -> u64 {
    (per_second / 10.0).floor().max(1.0) as u64
}

/// What one worker's tasks share. Single-threaded.
pub(crate) struct WorkerContext<B: Backend> {
    pub(crate) shared: Arc<Shared>,
    /// This worker's index: its shard of [`Shared::stats`].
    index: usize,
    pool: B::Pool,
    pub(crate) pipes: PipePool,
    /// Where interactive messages and request heads land first (see `relay` and `tunnel`);
    /// only ever borrowed without an await in between.
    scratch: RefCell<Box<[u8]>>,
    gate: Rc<Gate>,
    bulk_flows: BulkFlows,
    pub(crate) tunnels: Cell<usize>,
    pub(crate) refusing: Cell<usize>,
    pub(crate) stopping: Cell<bool>,
    pub(crate) all_closed: Notify,
    /// Announced when the shutdown grace period ends with tunnels still open.
    pub(crate) grace_over: GraceOver,
}

impl<B: Backend> WorkerContext<B> {
    /// A worker's context on `backend`: its buffer pool, pipes, scratch buffer and gate.
    pub(crate) fn new(backend: B, shared: Arc<Shared>, index: usize) -> Self {
        let config = &shared.config;
        Self {
            pool: backend.new_pool(config.buffer_size, config.max_buffers_per_worker),
            pipes: PipePool::new(
                config.splice_chunk,
                config.buffer_size,
                config.pipes_per_worker,
                shared.pipe_budget.clone(),
            ),
            scratch: RefCell::new(vec![0; crate::relay::INTERACTIVE_READ].into_boxed_slice()),
            gate: Gate::new(
                config.scheduler,
                shared.upload_pacer.clone(),
                shared.download_pacer.clone(),
                shared.stats.worker(index).backlog(),
            ),
            bulk_flows: BulkFlows::default(),
            tunnels: Cell::new(0),
            refusing: Cell::new(0),
            stopping: Cell::new(false),
            all_closed: Notify::new(),
            grace_over: GraceOver::default(),
            index,
            shared,
        }
    }

    /// What the relay of a tunnel of `protocol` on this worker uses, with the idle timeout in
    /// force when it starts.
    pub(crate) fn relay_context(
        &self,
        protocol: Protocol,
        idle_timeout: Option<Duration>,
    ) -> RelayContext<'_, B> {
        RelayContext {
            config: &self.shared.config,
            idle_timeout,
            bytes: self.stats().bytes(protocol),
            active_downloads: &self.shared.active_downloads,
            pool: &self.pool,
            pipes: &self.pipes,
            scratch: &self.scratch,
            gate: &self.gate,
            bulk_flows: &self.bulk_flows,
            upload_pacer: self.shared.upload_pacer.as_deref(),
            download_pacer: self.shared.download_pacer.as_deref(),
            auto_pacing: self.shared.auto_pacing.as_deref(),
            grace_over: &self.grace_over,
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The settings for a new request (see [`Shared::live`]).
    pub(crate) fn live(&self) -> Arc<Live> {
        self.shared.live()
    }

    /// This worker's counters.
    pub(crate) fn stats(&self) -> &WorkerStats {
        self.shared.stats.worker(self.index)
    }

    /// The worker's scratch buffer for interactive reads and request heads.
    pub(crate) fn scratch(&self) -> &RefCell<Box<[u8]>> {
        &self.scratch
    }

    pub(crate) fn gate(&self) -> &Rc<Gate> {
        &self.gate
    }

    /// The shared pacer of new upstream connections, if `--connect-rate` is set.
    pub(crate) fn connect_pacer(&self) -> Option<&Pacer> {
        self.shared.connect_pacer.as_deref()
    }

    /// Socket options for a new upstream connection: while downloads are paced, a first
    /// receive window of the new tunnel's share (see [`Pacing::first_window_clamp`]).
    pub(crate) fn socket_tuning(&self) -> SocketTuning {
        let tunnels = self.shared.admission.active();
        SocketTuning {
            window_clamp: self
                .shared
                .download_pacer
                .as_ref()
                .and_then(|pacer| pacer.rate())
                .map(|rate| Pacing::first_window_clamp(rate, tunnels)),
        }
    }
}
