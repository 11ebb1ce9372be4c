//! nova's wait loops, seen from the wire: after a state change (a PUT of a
//! provision, power or console state), one thread repeats the same lookup
//! (the instance's node, or the node) at a steady interval until the state
//! is reached. The loop record counts its polls and measures its interval.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Call, CallKind};
use crate::bounded::push_bounded;

/// A state change older than this does not start a loop any more.
const TRIGGER_WINDOW_NS: u64 = 120_000_000_000;
/// Finished loops kept per process.
const DONE_KEPT: usize = 64;
/// Gaps kept per loop for its interval.
const GAPS_KEPT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopKind {
    /// Provision target active or rebuild: `_wait_for_active`.
    Deploy,
    /// Target deleted or undeploy: `_unprovision`, bounded by api_max_retries.
    Unprovision,
    /// Target rescue or unrescue.
    Rescue,
    /// A power state change: `_wait_for_power_state`.
    Power,
    /// A console change: the console state loop.
    Console,
    /// Another provision target.
    Provision,
}

impl LoopKind {
    fn of(kind: CallKind, target: Option<&str>) -> LoopKind {
        match (kind, target) {
            (CallKind::PowerState, _) => LoopKind::Power,
            (CallKind::ConsoleSet, _) => LoopKind::Console,
            (_, Some("active" | "rebuild" | "deploy")) => LoopKind::Deploy,
            (_, Some("deleted" | "undeploy")) => LoopKind::Unprovision,
            (_, Some("rescue" | "unrescue")) => LoopKind::Rescue,
            _ => LoopKind::Provision,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollLoop {
    pub kind: LoopKind,
    /// The thread that polls.
    pub tid: u32,
    /// The instance (or node) the polls ask about.
    pub subject: String,
    /// The node of the state change that started it.
    pub node: Option<String>,
    /// The state change's call.
    pub trigger: u64,
    pub polls: u32,
    pub first_ns: u64,
    pub last_ns: u64,
    #[serde(skip)]
    gaps_ns: VecDeque<u64>,
}

impl PollLoop {
    /// The median gap between polls.
    pub fn interval_ns(&self) -> Option<u64> {
        let mut gaps: Vec<u64> = self.gaps_ns.iter().copied().collect();
        gaps.sort_unstable();
        gaps.get(gaps.len() / 2).copied()
    }

    fn poll(&mut self, ts_ns: u64) {
        push_bounded(&mut self.gaps_ns, ts_ns.saturating_sub(self.last_ns), GAPS_KEPT);
        self.polls += 1;
        self.last_ns = ts_ns;
    }

    pub fn duration_ns(&self) -> u64 {
        self.last_ns - self.first_ns
    }

    /// No poll for three intervals (at least 10 s): the loop has ended.
    pub fn finished_at(&self, now_ns: u64) -> bool {
        let quiet = (self.interval_ns().unwrap_or(0) * 3).max(10_000_000_000);
        now_ns.saturating_sub(self.last_ns) > quiet
    }
}

#[derive(Clone, Debug)]
struct Trigger {
    call: u64,
    ts_ns: u64,
    node: Option<String>,
    kind: CallKind,
    target: Option<&'static str>,
}

/// A first lookup that may become a loop.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    first_ns: u64,
}

/// Lookups closer together than this are one step's work (openstacksdk
/// fetches the node right after a PUT), not a wait loop's polls.
const MIN_POLL_GAP_NS: u64 = 100_000_000;

type LoopKey = (u32, String);

#[derive(Debug, Default)]
pub struct Loops {
    /// State changes that no loop has claimed yet, newest last.
    triggers: VecDeque<Trigger>,
    /// (thread, subject) -> its last lookup not yet part of a loop.
    candidates: HashMap<LoopKey, Candidate>,
    /// (thread, subject) -> a loop under way.
    pub active: HashMap<LoopKey, PollLoop>,
    pub done: VecDeque<PollLoop>,
}

impl Loops {
    pub fn call_started(&mut self, call: &Call) {
        if call.kind.starts_a_wait() {
            self.triggers.push_back(Trigger {
                call: call.id,
                ts_ns: call.started_ns,
                node: call.node.clone(),
                kind: call.kind,
                target: call.target,
            });
            while self.triggers.len() > 64 {
                self.triggers.pop_front();
            }
            return;
        }
        if !call.kind.is_poll() {
            return;
        }
        let Some(subject) = call.instance.clone().or_else(|| call.node.clone()) else {
            return;
        };
        let key = (call.tid, subject);
        if let Some(running) = self.active.get_mut(&key) {
            running.poll(call.started_ns);
            return;
        }
        // The loop thread polls at a steady interval; the state change's own
        // thread may look the node up once right after it (a candidate that
        // is never promoted). A loop forms at its second poll.
        let promoted = match self.candidates.get(&key).copied() {
            Some(first) if call.started_ns.saturating_sub(first.first_ns) >= MIN_POLL_GAP_NS => self
                .claim_trigger(first.first_ns, call.node.as_deref())
                .map(|trigger| (first, trigger)),
            _ => None,
        };
        let Some((first, trigger)) = promoted else {
            self.candidates.insert(
                key,
                Candidate {
                    first_ns: call.started_ns,
                },
            );
            return;
        };
        self.candidates.remove(&key);
        let mut running = PollLoop {
            kind: LoopKind::of(trigger.kind, trigger.target),
            tid: call.tid,
            subject: key.1.clone(),
            node: trigger.node,
            trigger: trigger.call,
            polls: 1,
            first_ns: first.first_ns,
            last_ns: first.first_ns,
            gaps_ns: VecDeque::new(),
        };
        running.poll(call.started_ns);
        self.active.insert(key, running);
    }

    /// The state change a loop whose first poll was at `first_ns` waits for:
    /// one on the polled node if there is one, else the newest before it.
    fn claim_trigger(&mut self, first_ns: u64, node: Option<&str>) -> Option<Trigger> {
        self.triggers
            .retain(|t| first_ns.saturating_sub(t.ts_ns) <= TRIGGER_WINDOW_NS);
        let before = |t: &&Trigger| t.ts_ns <= first_ns;
        let index = self
            .triggers
            .iter()
            .rposition(|t| before(&t) && node.is_some() && t.node.as_deref() == node)
            .or_else(|| self.triggers.iter().rposition(|t| before(&t)))?;
        self.triggers.remove(index)
    }

    /// A state change's target came in its body after the call started.
    pub fn target_known(&mut self, call: u64, target: Option<&'static str>) {
        if let Some(trigger) = self.triggers.iter_mut().find(|t| t.call == call) {
            trigger.target = target;
        }
        // Only a provision change's loop depends on its target.
        for running in self
            .active
            .values_mut()
            .filter(|l| l.trigger == call && l.kind == LoopKind::Provision)
        {
            running.kind = LoopKind::of(CallKind::ProvisionState, target);
        }
    }

    /// Moves loops that stopped polling to `done`; forgets old candidates.
    pub fn settle(&mut self, now_ns: u64) {
        self.candidates
            .retain(|_, c| now_ns.saturating_sub(c.first_ns) <= TRIGGER_WINDOW_NS);
        let ended: Vec<LoopKey> = self
            .active
            .iter()
            .filter(|(_, l)| l.finished_at(now_ns))
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(finished) = self.active.remove(&key) {
                push_bounded(&mut self.done, finished, DONE_KEPT);
            }
        }
    }
}
