//! The static facts a policy needs about a compiled graph on a machine: which workers may
//! run each task (eligibility sets), each task's priority band, victim orders, and the fused
//! chains.
//!
//! Invariants: every task's set is non-empty (compile rejects the graph otherwise);
//! `sets_of(w)` lists exactly the sets whose mask contains `w`; bands are `0..num_bands`,
//! 0 being the highest priority; a fused link `t → s` ([`Plan::fused_next`]) has `s` as
//! `t`'s only successor, `t` as `s`'s only predecessor, and both in the same set, so the
//! worker that finishes `t` may always run `s` and nothing else is waiting for it.

use crate::topology::WorkerId;

/// At most this many priority bands; more distinct priorities are folded by rank.
pub const MAX_BANDS: u8 = 8;

/// A set of workers as a bitmask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkerMask(Vec<u64>);

impl WorkerMask {
    /// An empty set sized for `n` workers.
    pub fn empty(n: usize) -> Self {
        WorkerMask(vec![0; n.div_ceil(64).max(1)])
    }

    /// Adds a worker.
    pub fn insert(&mut self, w: WorkerId) {
        self.0[w.index() / 64] |= 1 << (w.index() % 64);
    }

    /// Whether it holds `w`.
    #[inline]
    pub fn contains(&self, w: WorkerId) -> bool {
        self.0
            .get(w.index() / 64)
            .is_some_and(|word| word >> (w.index() % 64) & 1 == 1)
    }
}

/// The workers that may run a group of tasks.
#[derive(Clone, Debug)]
pub struct EligibleSet {
    pub workers: Vec<WorkerId>,
    pub mask: WorkerMask,
}

/// Per-task eligibility and priority band, and per-worker victims.
#[derive(Clone, Debug)]
pub struct Plan {
    task_set: Vec<u16>,
    task_band: Vec<u8>,
    num_bands: u8,
    /// Per task, its priority's rank among the graph's distinct priorities (0: the highest);
    /// empty: the band stands in.
    priority_key: Vec<u32>,
    /// See [`Plan::bands_fold`].
    bands_fold: bool,
    sets: Vec<EligibleSet>,
    worker_sets: Vec<Vec<u16>>,
    victims: Vec<Vec<WorkerId>>,
    /// Per task, the next task of its fused chain (`NO_LINK`: none); empty when fusion is
    /// off.
    fused_next: Vec<u32>,
}

/// No fused successor.
const NO_LINK: u32 = u32::MAX;

impl Plan {
    /// Builds a plan. `task_set[t]` indexes `sets`; `task_band[t] < num_bands`.
    pub fn new(
        task_set: Vec<u16>,
        task_band: Vec<u8>,
        num_bands: u8,
        sets: Vec<EligibleSet>,
        victims: Vec<Vec<WorkerId>>,
    ) -> Self {
        let n = victims.len();
        let worker_sets = (0..n)
            .map(|w| {
                (0..sets.len() as u16)
                    .filter(|&s| sets[s as usize].mask.contains(WorkerId(w as u32)))
                    .collect()
            })
            .collect();
        debug_assert!(task_band.iter().all(|&b| b < num_bands.max(1)));
        Plan {
            task_set,
            task_band,
            num_bands: num_bands.max(1),
            priority_key: Vec::new(),
            bands_fold: false,
            sets,
            worker_sets,
            victims,
            fused_next: Vec::new(),
        }
    }

    /// Fuses the linear chains of a graph with these successor lists and in-degrees: links
    /// `t → s` where `s` is `t`'s only successor, `t` is `s`'s only predecessor, and both may
    /// run on the same workers, all of one device class (`kind_of` each worker's). The worker
    /// that finishes `t` runs `s` next, with no placement, queueing or transfer in between
    /// (under the policies that follow fused chains). A chain that could run on CPUs or GPUs
    /// is left to the policy: which device each link suits is a placement decision. Returns
    /// the number of links.
    pub fn fuse_chains<K: PartialEq>(
        &mut self,
        edges: &super::compile::Successors,
        kind_of: impl Fn(WorkerId) -> K,
    ) -> usize {
        let n = self.task_set.len();
        let one_class: Vec<bool> = self
            .sets
            .iter()
            .map(|s| s.workers.windows(2).all(|w| kind_of(w[0]) == kind_of(w[1])))
            .collect();
        let mut next = vec![NO_LINK; n];
        let mut links = 0;
        for (t, link) in next.iter_mut().enumerate() {
            if let &[s] = edges.of_task(t as u32) {
                let set = self.task_set[t];
                if edges.indegree[s as usize] == 1 && set == self.task_set[s as usize] && one_class[set as usize] {
                    *link = s;
                    links += 1;
                }
            }
        }
        self.fused_next = if links == 0 { Vec::new() } else { next };
        links
    }

    /// The next task of `task`'s fused chain, if it has one and fusion is on.
    #[inline]
    pub fn fused_next(&self, task: u32) -> Option<u32> {
        self.fused_next.get(task as usize).copied().filter(|&s| s != NO_LINK)
    }

    /// Turns fusion off: no task has a fused successor.
    pub fn unfuse(&mut self) {
        self.fused_next = Vec::new();
    }

    /// Fused links (0 with fusion off).
    pub fn fused_links(&self) -> usize {
        self.fused_next.iter().filter(|&&s| s != NO_LINK).count()
    }

    /// Number of workers.
    pub fn num_workers(&self) -> usize {
        self.victims.len()
    }

    /// The eligibility set of a task.
    #[inline]
    pub fn task_set(&self, task: u32) -> u16 {
        self.task_set[task as usize]
    }

    /// The priority band of a task (0 is the highest).
    #[inline]
    pub fn band(&self, task: u32) -> u8 {
        self.task_band[task as usize]
    }

    /// Sets each task's priority key (see [`Plan::priority_key`]; none: the bands are the
    /// keys). Keys must order tasks as their bands do: a higher band never has a smaller key.
    pub fn set_priority_keys(&mut self, keys: Vec<u32>) {
        debug_assert!(keys.is_empty() || keys.len() == self.task_band.len());
        self.bands_fold = keys.iter().any(|&k| k >= u32::from(self.num_bands));
        self.priority_key = keys;
    }

    /// Whether some band holds more than one priority (more distinct priorities than
    /// [`MAX_BANDS`]): serving a band in arrival order then loses the priorities' order.
    #[inline]
    pub fn bands_fold(&self) -> bool {
        self.bands_fold
    }

    /// A task's priority as an exact rank (0 is the highest; equal priorities, equal keys):
    /// what queues that serve tasks in priority order sort by, where bands fold many
    /// priorities into [`MAX_BANDS`].
    #[inline]
    pub fn priority_key(&self, task: u32) -> u32 {
        match self.priority_key.get(task as usize) {
            Some(&k) => k,
            None => u32::from(self.task_band[task as usize]),
        }
    }

    /// Number of bands.
    pub fn num_bands(&self) -> u8 {
        self.num_bands
    }

    /// An eligibility set.
    pub fn set(&self, set: u16) -> &EligibleSet {
        &self.sets[set as usize]
    }

    /// Every eligibility set.
    pub fn sets(&self) -> &[EligibleSet] {
        &self.sets
    }

    /// The sets a worker belongs to.
    pub fn sets_of(&self, w: WorkerId) -> &[u16] {
        &self.worker_sets[w.index()]
    }

    /// Whether `w` may run `task`.
    #[inline]
    pub fn eligible(&self, task: u32, w: WorkerId) -> bool {
        self.sets[self.task_set(task) as usize].mask.contains(w)
    }

    /// Workers `w` may steal from, closest first (all of its own class).
    pub fn victims(&self, w: WorkerId) -> &[WorkerId] {
        &self.victims[w.index()]
    }
}
