//! One worker's state: what all workers share (configuration, policy, the connection cap,
//! pacers, the pipe budget) and what the tasks of one worker share (its buffer pool, pipes,
//! scratch buffer, gate). Single-threaded below [`Shared`].

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::Arc,
    time::Instant,
};

use fyntr_platform::{Backend, PipeBudget, PipePool};
use tokio::sync::Notify;

use crate::{
    admission::Admission,
    auto_pacing::AutoPacing,
    config::{Config, Pacing, RateSetting},
    dial::SocketTuning,
    gate::Gate,
    policy::Policy,
    relay::RelayContext,
    sched::pacer::{on_the_wire, Pacer, Rate},
    send_queue::BulkFlows,
};

/// What all workers share (read-only but for atomics).
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) policy: Policy,
    pub(crate) admission: Arc<Admission>,
    upload_pacer: Option<Arc<Pacer>>,
    download_pacer: Option<Arc<Pacer>>,
    /// The directions paced with `auto`, if any.
    auto_pacing: Option<Arc<AutoPacing>>,
    connect_pacer: Option<Arc<Pacer>>,
    /// What every worker's pipe pool draws from.
    pipe_budget: PipeBudget,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Shared {
        let epoch = Instant::now();
        // A byte pacer's burst is one whole chunk plus 2 ms of the rate: room for a timer that
        // fires late (Tokio's resolution is 1 ms) without losing the rate, no more. With 2 ms
        // in all, late timers cost a fifth of a 19 Mbit/s rate on loopback.
        // With `auto`, the pacer starts unlimited and the controllers set its rate.
        let byte_pacer = |setting: RateSetting| match setting {
            RateSetting::Off => None,
            RateSetting::Auto => Some(Arc::new(Pacer::unlimited(epoch))),
            RateSetting::Fixed(rate) => {
                let slack = (rate.bytes_per_second() * 0.002) as u64;
                let chunk = on_the_wire(config.buffer_size as u64);
                Some(Arc::new(Pacer::new(rate, chunk + slack, epoch)))
            }
        };
        // Connections: a burst of a tenth of a second's worth, at least one.
        let connect_pacer = config.pacing.connects_per_second.map(|per_second| {
            let burst = (per_second / 10.0).floor().max(1.0) as u64;
            Arc::new(Pacer::new(Rate(per_second), burst, epoch))
        });
        let upload_pacer = byte_pacer(config.pacing.upload);
        let download_pacer = byte_pacer(config.pacing.download);
        let auto = |setting: RateSetting, pacer: &Option<Arc<Pacer>>| {
            pacer.clone().filter(|_| setting.is_auto())
        };
        let auto_pacing = AutoPacing::new(
            auto(config.pacing.upload, &upload_pacer),
            auto(config.pacing.download, &download_pacer),
            config.buffer_size,
        );
        if let Some(auto_pacing) = &auto_pacing {
            AutoPacing::start(auto_pacing);
        }
        Shared {
            policy: Policy::new(&config.policy),
            admission: Arc::new(Admission::new(config.connection_cap)),
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

/// What one worker's tasks share. Single-threaded.
pub(crate) struct WorkerContext<B: Backend> {
    pub(crate) shared: Arc<Shared>,
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
}

impl<B: Backend> WorkerContext<B> {
    /// A worker's context on `backend`: its buffer pool, pipes, scratch buffer and gate.
    pub(crate) fn new(backend: B, shared: Arc<Shared>) -> Self {
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
            ),
            bulk_flows: BulkFlows::default(),
            tunnels: Cell::new(0),
            refusing: Cell::new(0),
            stopping: Cell::new(false),
            all_closed: Notify::new(),
            shared,
        }
    }

    /// What the relay of a tunnel on this worker uses.
    pub(crate) fn relay_context(&self) -> RelayContext<'_, B> {
        RelayContext {
            config: &self.shared.config,
            admission: &self.shared.admission,
            pool: &self.pool,
            pipes: &self.pipes,
            scratch: &self.scratch,
            gate: &self.gate,
            bulk_flows: &self.bulk_flows,
            upload_pacer: self.shared.upload_pacer.as_deref(),
            download_pacer: self.shared.download_pacer.as_deref(),
            auto_pacing: self.shared.auto_pacing.as_deref(),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.shared.policy
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
