//! Checks a recorded client history against the model of a key-value store with compare-and-swap
//! transactions (the requests Kubernetes makes), and watch streams against the store's history.
//!
//! Two independent checkers:
//!
//! * [`check_revisions`] uses what etcd's API exposes: every write has a revision, every read a
//!   header revision. With the store's full event history (read back at the end), it places each
//!   operation at a point (its event's revision for an applied write, its header revision for a
//!   read or a failed compare) and checks that the order of points respects real time, that each
//!   read returned exactly the state at its point, that each compare was decided by the state at
//!   its point, that every acknowledged write is in the history at its revision, that nothing
//!   the server said was not applied is there, and that every event comes from exactly one
//!   operation. Linear time; complete for histories that carry revisions.
//! * [`check_wgl`] ignores revisions: per key (a key-value store is P-compositional), a search
//!   for a linearization in the manner of Wing & Gong with Lowe's state cache (the algorithm of
//!   the Go `porcupine` checker), on a register whose values are unique. Operations with an
//!   unknown outcome may take effect at any time after their call, or never.
//!
//! Values written are unique, so an event names the operation that wrote it.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kv {
    pub value: String,
    pub mod_rev: i64,
    pub create_rev: i64,
    pub version: i64,
}

#[derive(Clone, Debug)]
pub enum Input {
    /// `create_revision(key) == 0` → put, else get.
    Create {
        key: String,
        value: String,
    },
    /// `mod_revision(key) == expect_rev` → put, else get. `expect_value` was read with it.
    Update {
        key: String,
        expect_rev: i64,
        expect_value: String,
        value: String,
    },
    /// `mod_revision(key) == expect_rev` → delete, else get.
    Delete {
        key: String,
        expect_rev: i64,
        expect_value: String,
    },
    Get {
        key: String,
    },
    List {
        prefix: String,
    },
}

impl Input {
    pub fn key(&self) -> &str {
        match self {
            Input::Create { key, .. }
            | Input::Update { key, .. }
            | Input::Delete { key, .. }
            | Input::Get { key } => key,
            Input::List { prefix } => prefix,
        }
    }
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Input::Create { .. } | Input::Update { .. } | Input::Delete { .. }
        )
    }
    fn written(&self) -> Option<&str> {
        match self {
            Input::Create { value, .. } | Input::Update { value, .. } => Some(value),
            _ => None,
        }
    }
    /// Whether the compare holds when the key's current state is `cur`.
    fn compare(&self, cur: Option<&Kv>) -> bool {
        match self {
            Input::Create { .. } => cur.is_none(),
            Input::Update { expect_rev, .. } | Input::Delete { expect_rev, .. } => {
                cur.map_or(0, |k| k.mod_rev) == *expect_rev
            }
            _ => true,
        }
    }
    /// The same compare on a register of unique values (no revisions).
    fn compare_value(&self, cur: Option<&str>) -> bool {
        match self {
            Input::Create { .. } => cur.is_none(),
            Input::Update { expect_value, .. } | Input::Delete { expect_value, .. } => {
                cur == Some(expect_value.as_str())
            }
            _ => true,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Output {
    /// A transaction's answer: `current` is the else branch's get when the compare failed.
    Write {
        succeeded: bool,
        rev: i64,
        current: Option<Kv>,
    },
    Get {
        rev: i64,
        kv: Option<Kv>,
    },
    List {
        rev: i64,
        kvs: Vec<(String, Kv)>,
    },
    /// The server said the write was not applied.
    Fail,
    /// No answer (timeout, connection lost): applied or not.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub node: usize,
    pub input: Input,
    /// Nanoseconds since the run started.
    pub call: u64,
    /// `u64::MAX` when the outcome is unknown.
    pub ret: u64,
    pub output: Output,
}

/// One revision of the store's history (a watch event with its prev_kv).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub rev: i64,
    pub key: String,
    /// None: a delete.
    pub kv: Option<Kv>,
    pub prev: Option<Kv>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub ops_checked: usize,
    pub violations: Vec<String>,
}

impl Report {
    fn fail(&mut self, msg: String) {
        if self.violations.len() < 50 {
            self.violations.push(msg);
        }
    }
}

/// The state of each key over revisions, rebuilt from the events.
pub struct Timeline {
    keys: HashMap<String, Vec<(i64, Option<Kv>)>>,
    pub head: i64,
}

impl Timeline {
    /// `initial` is the state at `start - 1`; events must begin at `start`.
    pub fn build(
        initial: &BTreeMap<String, Kv>,
        start: i64,
        events: &[Event],
        report: &mut Report,
    ) -> Timeline {
        let mut keys: HashMap<String, Vec<(i64, Option<Kv>)>> = HashMap::new();
        for (k, kv) in initial {
            keys.insert(k.clone(), vec![(kv.mod_rev, Some(kv.clone()))]);
        }
        let mut expect = start;
        for e in events {
            if e.rev != expect {
                report.fail(format!(
                    "history: revision {} follows {} (gap or reorder)",
                    e.rev,
                    expect - 1
                ));
            }
            expect = e.rev + 1;
            let line = keys.entry(e.key.clone()).or_default();
            let before = line.last().and_then(|(_, s)| s.clone());
            if e.prev != before {
                report.fail(format!(
                    "history: rev {} {}: prev_kv {:?} but the state before was {:?}",
                    e.rev, e.key, e.prev, before
                ));
            }
            if let Some(kv) = &e.kv {
                let (create, version) = match &before {
                    Some(b) => (b.create_rev, b.version + 1),
                    None => (e.rev, 1),
                };
                if kv.mod_rev != e.rev || kv.create_rev != create || kv.version != version {
                    report.fail(format!(
                        "history: rev {} {}: {:?} after {:?}",
                        e.rev, e.key, kv, before
                    ));
                }
            } else if before.is_none() {
                report.fail(format!("history: rev {} deletes absent {}", e.rev, e.key));
            }
            line.push((e.rev, e.kv.clone()));
        }
        Timeline {
            keys,
            head: expect - 1,
        }
    }

    /// The key's state once revision `rev` is applied.
    pub fn at(&self, key: &str, rev: i64) -> Option<&Kv> {
        let line = self.keys.get(key)?;
        let i = line.partition_point(|(r, _)| *r <= rev);
        if i == 0 { None } else { line[i - 1].1.as_ref() }
    }

    fn prefix_at(&self, prefix: &str, rev: i64) -> Vec<(String, Kv)> {
        let mut out: Vec<(String, Kv)> = self
            .keys
            .keys()
            .filter(|k| k.starts_with(prefix))
            .filter_map(|k| self.at(k, rev).map(|kv| (k.clone(), kv.clone())))
            .collect();
        out.sort();
        out
    }
}

/// The revision-based check (see the module docs). `initial` is the state before `start`.
pub fn check_revisions(
    ops: &[Op],
    initial: &BTreeMap<String, Kv>,
    start: i64,
    events: &[Event],
) -> Report {
    let mut report = Report::default();
    let tl = Timeline::build(initial, start, events, &mut report);

    // Events → the operations that made them.
    let by_value: HashMap<&str, usize> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.input.written().map(|v| (v, i)))
        .collect();
    let mut deletes: HashMap<(&str, i64), Vec<usize>> = HashMap::new();
    for (i, o) in ops.iter().enumerate() {
        if let Input::Delete {
            key, expect_rev, ..
        } = &o.input
        {
            deletes.entry((key, *expect_rev)).or_default().push(i);
        }
    }
    let mut applied_at: HashMap<usize, i64> = HashMap::new();
    for e in events {
        let candidates: Vec<usize> = match &e.kv {
            Some(kv) => by_value
                .get(kv.value.as_str())
                .copied()
                .into_iter()
                .collect(),
            None => {
                let prev = e.prev.as_ref().map_or(0, |p| p.mod_rev);
                deletes
                    .get(&(e.key.as_str(), prev))
                    .cloned()
                    .unwrap_or_default()
            }
        };
        let pick = candidates
            .iter()
            .copied()
            .filter(|i| !applied_at.contains_key(i))
            .find(|&i| matches!(ops[i].output, Output::Write { succeeded: true, rev, .. } if rev == e.rev))
            .or_else(|| {
                // Several deletes of the same version may have an unknown outcome (clients that
                // read the same version). They share the compare, so the one called first fits
                // every real-time order a later one fits: taking another could report a
                // violation the history does not have.
                candidates
                    .iter()
                    .copied()
                    .filter(|i| !applied_at.contains_key(i))
                    .filter(|&i| matches!(ops[i].output, Output::Unknown))
                    .min_by_key(|&i| ops[i].call)
            });
        let Some(i) = pick else {
            let who: Vec<String> = candidates
                .iter()
                .map(|&i| format!("{:?} → {:?}", ops[i].input, ops[i].output))
                .collect();
            report.fail(format!(
                "history: rev {} on {} comes from no operation that may have applied it (candidates: {})",
                e.rev,
                e.key,
                if who.is_empty() { "none".into() } else { who.join("; ") }
            ));
            continue;
        };
        applied_at.insert(i, e.rev);
        if ops[i].input.key() != e.key {
            report.fail(format!(
                "rev {}: op on {} wrote {}",
                e.rev,
                ops[i].input.key(),
                e.key
            ));
        }
        if !ops[i].input.compare(tl.at(&e.key, e.rev - 1)) {
            report.fail(format!(
                "rev {}: {:?} applied although its compare failed on {:?}",
                e.rev,
                ops[i].input,
                tl.at(&e.key, e.rev - 1)
            ));
        }
    }

    // Every operation against the history; points for the real-time check.
    // (call, ret, point, is_write)
    let mut points: Vec<(u64, u64, i64, bool, usize)> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        match &o.output {
            Output::Write {
                succeeded: true,
                rev,
                ..
            } => {
                report.ops_checked += 1;
                match applied_at.get(&i) {
                    Some(r) if r == rev => points.push((o.call, o.ret, *rev, true, i)),
                    Some(r) => report.fail(format!(
                        "acknowledged at rev {rev} but in the history at {r}: {:?}",
                        o.input
                    )),
                    None => report.fail(format!(
                        "LOST: acknowledged at rev {rev}, not in the history: {:?}",
                        o.input
                    )),
                }
            }
            Output::Write {
                succeeded: false,
                rev,
                current,
            } => {
                report.ops_checked += 1;
                if applied_at.contains_key(&i) {
                    report.fail(format!("compare failed but applied: {:?}", o.input));
                }
                let at = tl.at(o.input.key(), *rev);
                if o.input.compare(at) {
                    report.fail(format!(
                        "compare answered false at rev {rev} although the state was {at:?}: {:?}",
                        o.input
                    ));
                }
                if current.as_ref() != at {
                    report.fail(format!(
                        "failed compare at rev {rev} returned {current:?}, the state was {at:?}"
                    ));
                }
                points.push((o.call, o.ret, *rev, false, i));
            }
            Output::Fail => {
                report.ops_checked += 1;
                if let Some(r) = applied_at.get(&i) {
                    report.fail(format!(
                        "answered 'not applied' but in the history at rev {r}: {:?}",
                        o.input
                    ));
                }
            }
            Output::Unknown => {
                if let Some(r) = applied_at.get(&i) {
                    points.push((o.call, u64::MAX, *r, true, i));
                }
            }
            Output::Get { rev, kv } => {
                report.ops_checked += 1;
                if *rev > tl.head {
                    report.fail(format!(
                        "read at rev {rev} beyond the history's head {}",
                        tl.head
                    ));
                }
                let at = tl.at(o.input.key(), *rev);
                if kv.as_ref() != at {
                    report.fail(format!(
                        "get {} at rev {rev} returned {kv:?}, the state was {at:?}",
                        o.input.key()
                    ));
                }
                points.push((o.call, o.ret, *rev, false, i));
            }
            Output::List { rev, kvs } => {
                report.ops_checked += 1;
                let at = tl.prefix_at(o.input.key(), *rev);
                if *kvs != at {
                    report.fail(format!(
                        "list {} at rev {rev} returned {} keys, the state had {}",
                        o.input.key(),
                        kvs.len(),
                        at.len()
                    ));
                }
                points.push((o.call, o.ret, *rev, false, i));
            }
        }
    }

    // Real time: whatever completed before an operation began has an earlier (writes) or
    // no later (reads) point.
    let mut by_ret = points.clone();
    by_ret.sort_by_key(|p| p.1);
    let mut max_w = Vec::with_capacity(by_ret.len());
    let mut max_r = Vec::with_capacity(by_ret.len());
    let (mut w, mut r) = (i64::MIN, i64::MIN);
    for p in &by_ret {
        if p.3 {
            w = w.max(p.2);
        } else {
            r = r.max(p.2);
        }
        max_w.push(w);
        max_r.push(r);
    }
    for &(call, _, point, is_write, i) in &points {
        let n = by_ret.partition_point(|p| p.1 < call);
        if n == 0 {
            continue;
        }
        let (w, r) = (max_w[n - 1], max_r[n - 1]);
        let bad = if is_write {
            point <= w || point <= r
        } else {
            point < w || point < r
        };
        if bad {
            report.fail(format!(
                "real time: {:?} at point {point} began after operations at points {w} (writes) / {r} (reads) had completed",
                ops[i].input
            ));
        }
    }
    report
}

/// Outcome of the black-box search for one key.
#[derive(Debug, PartialEq)]
pub enum Wgl {
    Linearizable,
    NotLinearizable,
    /// Search budget exhausted.
    Unknown,
}

/// The revision-free check (see the module docs): returns per-key verdicts for keys whose
/// history is not linearizable or could not be decided, and the number of operations searched.
pub fn check_wgl(ops: &[Op], budget: u64) -> (usize, Vec<(String, Wgl)>) {
    let mut per_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for o in ops {
        if matches!(o.input, Input::List { .. }) || matches!(o.output, Output::Fail) {
            continue;
        }
        per_key.entry(o.input.key()).or_default().push(o);
    }
    let mut checked = 0;
    let mut bad = Vec::new();
    for (key, ops) in per_key {
        checked += ops.len();
        let v = wgl_key(&ops, budget);
        if v != Wgl::Linearizable {
            bad.push((key.to_string(), v));
        }
    }
    (checked, bad)
}

/// One register step: `Some(new state)` when `op` may take effect in `state`.
fn step(state: &Option<String>, op: &Op) -> Option<Option<String>> {
    let cur = state.as_deref();
    let holds = op.input.compare_value(cur);
    let apply = || match &op.input {
        Input::Delete { .. } => None,
        i => i.written().map(str::to_string),
    };
    match &op.output {
        Output::Unknown => Some(if holds && op.input.is_write() {
            apply()
        } else {
            state.clone()
        }),
        Output::Write {
            succeeded: true, ..
        } => holds.then(apply),
        Output::Write {
            succeeded: false,
            current,
            ..
        } => (!holds && current.as_ref().map(|k| k.value.as_str()) == cur).then(|| state.clone()),
        Output::Get { kv, .. } => {
            (kv.as_ref().map(|k| k.value.as_str()) == cur).then(|| state.clone())
        }
        Output::List { .. } | Output::Fail => Some(state.clone()),
    }
}

fn wgl_key(ops: &[&Op], budget: u64) -> Wgl {
    let n = ops.len();
    if n == 0 {
        return Wgl::Linearizable;
    }
    // Entries: (time, is_return, op). Calls sort before returns at equal times.
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        entries.push((o.call, false, i));
        entries.push((o.ret, true, i));
    }
    entries.sort();
    // A doubly linked list over the entries; index len = head sentinel.
    let len = entries.len();
    let head = len;
    let mut next = vec![usize::MAX; len + 1];
    let mut prev = vec![usize::MAX; len + 1];
    let mut ret_of = vec![0usize; n];
    for (pos, e) in entries.iter().enumerate() {
        if e.1 {
            ret_of[e.2] = pos;
        }
    }
    let mut last = head;
    for pos in 0..len {
        next[last] = pos;
        prev[pos] = last;
        last = pos;
    }
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut state: Option<String> = None;
    let mut entry = next[head];
    let mut steps = 0u64;
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        let (p, nx) = (prev[call], next[call]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
        let (p, nx) = (prev[ret], next[ret]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        let (p, nx) = (prev[ret], next[ret]);
        next[p] = ret;
        if nx != usize::MAX {
            prev[nx] = ret;
        }
        let (p, nx) = (prev[call], next[call]);
        next[p] = call;
        if nx != usize::MAX {
            prev[nx] = call;
        }
    };
    while next[head] != usize::MAX {
        steps += 1;
        if steps > budget {
            return Wgl::Unknown;
        }
        if entry == usize::MAX {
            // Only possible when every remaining entry is a call that cannot go first.
            let Some((call, s)) = stack.pop() else {
                return Wgl::NotLinearizable;
            };
            let op = entries[call].2;
            linearized[op / 64] &= !(1 << (op % 64));
            state = s;
            unlift(&mut next, &mut prev, call, ret_of[op]);
            entry = next[call];
            continue;
        }
        let (_, is_ret, op) = entries[entry];
        if !is_ret {
            if let Some(new_state) = step(&state, ops[op]) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), new_state.clone())) {
                    stack.push((entry, state));
                    state = new_state;
                    linearized = lin;
                    lift(&mut next, &mut prev, entry, ret_of[op]);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            let Some((call, s)) = stack.pop() else {
                return Wgl::NotLinearizable;
            };
            let op = entries[call].2;
            linearized[op / 64] &= !(1 << (op % 64));
            state = s;
            unlift(&mut next, &mut prev, call, ret_of[op]);
            entry = next[call];
        }
    }
    Wgl::Linearizable
}

/// What one watch stream delivered, in order.
#[derive(Clone, Debug)]
pub enum Seen {
    Event(Event),
    /// A progress notification at this revision.
    Progress(i64),
}

/// Watch guarantees for one stream that started at `start` (resumed after breaks from the
/// revision after the last one it had): events in revision order, none missing, none twice,
/// each identical to the history's (prev_kv included), and progress notifications never ahead
/// of the events delivered. Returns the number of events checked.
pub fn check_watch(
    name: &str,
    start: i64,
    seen: &[Seen],
    history: &[Event],
    report: &mut Report,
) -> usize {
    let by_rev: HashMap<i64, &Event> = history.iter().map(|e| (e.rev, e)).collect();
    let mut last = start - 1;
    let mut checked = 0;
    for s in seen {
        match s {
            Seen::Event(e) => {
                checked += 1;
                if e.rev <= last {
                    report.fail(format!("{name}: rev {} delivered after rev {last}", e.rev));
                    continue;
                }
                if let Some(missing) = (last + 1..e.rev).find(|r| by_rev.contains_key(r)) {
                    report.fail(format!(
                        "{name}: rev {missing} missing (got {} after {last})",
                        e.rev
                    ));
                }
                match by_rev.get(&e.rev) {
                    Some(h) if *h == e => {}
                    Some(h) => {
                        report.fail(format!("{name}: rev {} is {e:?}, history has {h:?}", e.rev))
                    }
                    None => report.fail(format!("{name}: rev {} is not in the history", e.rev)),
                }
                last = e.rev;
            }
            Seen::Progress(r) => {
                // Everything up to r must already have been delivered.
                if let Some(missing) = (last + 1..=*r).find(|x| by_rev.contains_key(x)) {
                    report.fail(format!(
                        "{name}: progress at rev {r} before rev {missing} was delivered"
                    ));
                }
                last = last.max(*r);
            }
        }
    }
    checked
}
