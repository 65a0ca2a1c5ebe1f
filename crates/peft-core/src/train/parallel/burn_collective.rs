//! [`Collective`] for the peers of a run: threads of one process, one per device, sum through
//! Burn's `burn-collective` engine; with [`GlobalLayout`] each process (node) is one of several,
//! and its first peer adds the node's sum to the other nodes' through the coordinator
//! ([`super::nodes`]).
//!
//! `burn-collective` 0.21 has no timeouts: a call waits until every local peer has made it.
//! Each call therefore runs on a helper thread while the peer watches it, and stops with an
//! error when another local peer has failed ([`Abort`]) or after [`Layout::timeout`]. The
//! helper thread of an abandoned call stays blocked; a process whose run failed should exit
//! (the CLI does) rather than start another run.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use burn::{
    collective::{
        AllReduceStrategy, CollectiveConfig, CollectiveError, PeerId, ReduceOperation, all_reduce,
        broadcast, finish_collective, register,
    },
    tensor::{Tensor, TensorData, TensorPrimitive, backend::Backend},
};

use super::{Collective, nodes::NodeLink};
use crate::error::{PeftError, Result};

/// The default of [`Layout::timeout`]: the longest wait for the other peers. A slow step is
/// not a failure; a node whose process ends is reported by the coordinator at once.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the peers of a run are.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Peers (devices) in this process.
    pub devices: usize,
    /// Several processes: this node's place among them (`None`: this process is the whole run).
    pub global: Option<GlobalLayout>,
    /// The longest wait for the other peers.
    pub timeout: Duration,
    /// CPU backends: run each peer's tensor operations on its own Rayon pool of this many
    /// threads (`None`: all peers share the global pool). With the cores split between the
    /// peers, they do not queue behind each other's parallel loops.
    pub threads_per_peer: Option<usize>,
}

/// This process's place in a run over several nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalLayout {
    /// Nodes (processes) in the run; each has [`Layout::devices`] peers.
    pub nodes: usize,
    /// This node's rank, `0..nodes`; node 0's first peer writes the run's files.
    pub node_rank: usize,
    /// `HOST:PORT` of the coordinator (`peft coordinator --port PORT`).
    pub coordinator: String,
}

impl Layout {
    /// One process with `devices` peers.
    pub fn local(devices: usize) -> Self {
        Self {
            devices,
            global: None,
            timeout: DEFAULT_TIMEOUT,
            threads_per_peer: None,
        }
    }

    /// One process (node) of `nodes`, each with `devices` peers, meeting at the coordinator
    /// at `HOST:PORT`.
    pub fn nodes(nodes: usize, node_rank: usize, coordinator: String, devices: usize) -> Self {
        Self {
            global: Some(GlobalLayout {
                nodes,
                node_rank,
                coordinator,
            }),
            ..Self::local(devices)
        }
    }

    /// For a CPU backend: splits the global Rayon pool's threads between this process's peers
    /// (at least one each), so that they stop queueing behind each other's parallel loops.
    pub fn split_cpu_threads(mut self) -> Self {
        if self.devices > 1 {
            self.threads_per_peer = Some((rayon::current_num_threads() / self.devices).max(1));
        }
        self
    }

    /// Peers in the whole run.
    pub fn world(&self) -> usize {
        self.devices * self.global.as_ref().map_or(1, |g| g.nodes)
    }

    /// The run-wide rank of this process's peer `local`.
    pub fn rank(&self, local: usize) -> usize {
        self.global.as_ref().map_or(0, |g| g.node_rank) * self.devices + local
    }

    /// Checks the numbers and addresses.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PeftError::Invalid(m));
        if self.devices == 0 {
            return bad("--devices must be at least 1".into());
        }
        if let Some(g) = &self.global {
            if g.nodes == 0 || g.node_rank >= g.nodes {
                return bad(format!(
                    "--node-rank {} is not below --nodes {}",
                    g.node_rank, g.nodes
                ));
            }
            let address = &g.coordinator;
            if address.contains("://")
                || address
                    .rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return bad(format!("--coordinator {address}: expected HOST:PORT"));
            }
        }
        Ok(())
    }

    fn config(&self) -> CollectiveConfig {
        CollectiveConfig::default()
            .with_num_devices(self.devices)
            .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2))
    }
}

/// Shared by the peers of one process: the first failure, which stops the others.
#[derive(Debug, Default)]
pub struct Abort {
    raised: AtomicBool,
    first: Mutex<Option<(usize, String)>>,
}

impl Abort {
    /// Records that peer `rank` failed with `reason` (the first failure wins) and stops the
    /// other peers' waits.
    pub fn raise(&self, rank: usize, reason: String) {
        let mut slot = self.first.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert((rank, reason));
        self.raised.store(true, Ordering::SeqCst);
    }

    /// The first failure recorded: the peer and why.
    pub fn first(&self) -> Option<(usize, String)> {
        if !self.raised.load(Ordering::SeqCst) {
            return None;
        }
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One peer of a run; `B` is the inner (non-autodiff) backend.
pub struct BurnCollective<B: Backend> {
    peer: PeerId,
    rank: usize,
    world: usize,
    /// Other peers in this process (`burn-collective` sums over them).
    local_peers: bool,
    /// The node's link to the coordinator, held by the node's first peer.
    link: Option<NodeLink>,
    /// Several nodes: the first peer shares the total with the node's other peers.
    global: bool,
    timeout: Duration,
    abort: Arc<Abort>,
    device: B::Device,
}

impl<B: Backend> std::fmt::Debug for BurnCollective<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnCollective")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

impl<B: Backend> BurnCollective<B> {
    /// Joins the run as this process's peer `local` on `device`: waits until every local peer
    /// has joined and, over several nodes, until every node has joined the coordinator; all
    /// nodes must agree on `settings` (name, value pairs: model, method, seed, batch size, …),
    /// otherwise the run is refused, naming the node and the setting.
    pub fn join(
        layout: &Layout,
        local: usize,
        device: B::Device,
        abort: Arc<Abort>,
        settings: &[(&str, String)],
    ) -> Result<Self> {
        layout.validate()?;
        let rank = layout.rank(local);
        let mut peer = Self {
            peer: PeerId::from(local),
            rank,
            world: layout.world(),
            local_peers: layout.devices > 1,
            link: None,
            global: layout.global.is_some(),
            timeout: layout.timeout,
            abort,
            device: device.clone(),
        };
        if peer.local_peers {
            let (id, config) = (peer.peer, layout.config());
            let joining = format!("joining: waiting for {} local peers", layout.devices);
            peer.wait(&joining, move || register::<B>(id, device, config))?;
        }
        if let (Some(g), 0) = (&layout.global, local) {
            let link = NodeLink::join(
                &g.coordinator,
                g.node_rank,
                g.nodes,
                settings,
                layout.timeout,
            )
            .inspect_err(|e| peer.abort.raise(rank, e.to_string()))?;
            peer.link = Some(link);
        }
        Ok(peer)
    }

    /// Leaves the run (after the last collective call of every peer).
    pub fn finish(mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            link.finish()?;
        }
        if self.local_peers {
            let id = self.peer;
            self.wait("leaving the run", move || finish_collective::<B>(id))?;
        }
        Ok(())
    }

    /// Runs one `burn-collective` call on a helper thread and waits for it, stopping early
    /// when another local peer failed or after the timeout.
    fn wait<R: Send + 'static>(
        &mut self,
        what: &str,
        call: impl FnOnce() -> std::result::Result<R, CollectiveError> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("collective-peer-{}", self.rank))
            .spawn(move || {
                let _ = tx.send(call());
            })
            .map_err(|e| PeftError::Training(format!("starting a collective call: {e}")))?;
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => return Err(self.fail(what, format!("burn-collective: {e:?}"))),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(what, "the collective call panicked".into()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some((_, reason)) = self.abort.first() {
                return Err(PeftError::Training(format!(
                    "peer {} stopped while {what}, because {reason}",
                    self.rank
                )));
            }
            if started.elapsed() >= self.timeout {
                return Err(self.fail(
                    what,
                    format!(
                        "no answer from the other local peers within {} s (--peer-timeout)",
                        self.timeout.as_secs()
                    ),
                ));
            }
        }
    }

    /// Records a failure for the other local peers and builds the error.
    fn fail(&self, what: &str, cause: String) -> PeftError {
        let message = format!("peer {} stopped while {what}: {cause}", self.rank);
        self.abort.raise(self.rank, message.clone());
        PeftError::Training(message)
    }
}

impl<B: Backend> Collective<B> for BurnCollective<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, values: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let id = self.peer;
        let mut values = values;
        if self.local_peers {
            let primitive = values.into_primitive().tensor();
            let summed = self.wait("summing gradients", move || {
                all_reduce::<B>(id, primitive, ReduceOperation::Sum)
            })?;
            values = Tensor::from_primitive(TensorPrimitive::Float(summed));
        }
        if !self.global {
            return Ok(values);
        }
        // The node's first peer adds the node's sum to the others'; then shares the total.
        let total = match self.link.as_mut() {
            Some(link) => {
                let local: Vec<f32> = values
                    .into_data()
                    .convert::<f32>()
                    .into_vec()
                    .map_err(|e| PeftError::Training(format!("reading gradients: {e:?}")))?;
                let total = link.all_reduce_sum(&local).inspect_err(|e| {
                    self.abort.raise(self.rank, e.to_string());
                })?;
                let n = total.len();
                Some(Tensor::<B, 1>::from_data(
                    TensorData::new(total, [n]),
                    &self.device,
                ))
            }
            None => None,
        };
        if !self.local_peers {
            return total.ok_or_else(|| PeftError::Training("no link to the coordinator".into()));
        }
        let primitive = total.map(|t| t.into_primitive().tensor());
        let shared = self.wait("sharing the nodes' sum", move || {
            broadcast::<B>(id, primitive)
        })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(shared)))
    }
}
