//! The application's in-memory database of work units, and how a database
//! activity (an [`Operation`]) changes it. Request ids make every activity
//! idempotent: a retry after a switchover is recognised, not applied twice.

use hitless_protocol::{Operation, UnitState, WorkRequest, WorkUnit};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// Why an activity cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// Open of a unit that exists.
    #[error("work unit {0} already exists")]
    Exists(String),
    /// Update/close of a unit that does not exist.
    #[error("no work unit {0}")]
    Missing(String),
    /// Update/close of a closed unit.
    #[error("work unit {0} is closed")]
    Closed(String),
    /// A new request id beyond the database's capacity.
    #[error(
        "the database is full: it holds {0} request ids, as many as this processor's memory allows; \
         restart the pair (`hitless down`, `hitless up`) or give the processors more memory (`memory_mib`)"
    )]
    Full(usize),
}

/// What an activity does to its unit, carrying the strings the database keeps.
enum Change {
    Open(BTreeMap<String, String>),
    Fields(BTreeMap<String, String>),
    Close,
    Priority(u8),
}

/// Work units plus the index of applied request ids. Both are hash maps with
/// a fast non-keyed hash (the ids come from the testbed's own clients, not
/// from an adversary): every activity looks a unit and a request id up, and
/// ordered maps of strings made those lookups most of an activity's cost.
/// Only a dump or a step-up needs the units in order, and sorts them.
#[derive(Debug, Default, Clone)]
pub struct Database {
    units: FxHashMap<String, WorkUnit>,
    /// request id -> sequence number that applied it.
    applied: FxHashMap<String, u64>,
    /// Hash chained over every applied (seq, request id): see [`hitless_protocol::chain`].
    chain: u64,
    /// The most request ids [`Database::apply`] takes (0: no bound).
    capacity: usize,
}

impl Database {
    /// An empty database for `ids` request ids: its tables are sized for them
    /// up front, and it applies no more (0: no bound, nothing sized). Every
    /// request id stays (the de-duplication index and the history the
    /// invariants read): unbounded, a guest under a sustained load ran out of
    /// memory and died (its agent killed after ~420,000 requests in a 256 MiB
    /// guest), which the testbed would have reported as a processor failure.
    pub fn with_capacity(ids: usize) -> Self {
        let mut db = Database { capacity: ids, ..Database::default() };
        db.reserve(ids);
        db
    }

    /// Rebuild from a step-up snapshot, continuing the active's history
    /// `chain`, with the capacity of [`Database::with_capacity`]`(ids)`.
    pub fn from_units(units: Vec<WorkUnit>, seq: u64, chain: u64, ids: usize) -> Self {
        let mut db = Database::with_capacity(ids);
        db.refill(units, seq, chain);
        db
    }

    /// Replace everything with a step-up snapshot, continuing the active's
    /// history `chain`, in the tables this database already has (capacity and
    /// bound unchanged): a full database and its replacement would not both
    /// fit in a guest, and new tables would take their page faults again, at
    /// random, under the updates that follow (under TCG, on a fresh pair, page
    /// faults were about half the kernel instructions per replicated unit).
    pub fn refill(&mut self, units: Vec<WorkUnit>, seq: u64, chain: u64) {
        self.units.clear();
        self.applied.clear();
        self.chain = chain;
        for u in units {
            for op in &u.ops {
                // The snapshot does not carry per-op sequence numbers; they are all <= seq.
                self.applied.insert(op.clone(), seq);
            }
            self.units.insert(u.id.clone(), u);
        }
    }

    /// Make room for `ids` applied request ids (and half as many units) up
    /// front. A hash map grows by moving every entry to a table twice the
    /// size: under TCG that stalls the agent for tens of milliseconds at each
    /// power of two, and every request in flight with it (the probe's p99 and
    /// maximum ack latency, `make bench`).
    fn reserve(&mut self, ids: usize) {
        self.applied.reserve(ids.saturating_sub(self.applied.len()));
        self.units.reserve((ids / 2).saturating_sub(self.units.len()));
    }

    /// How many request ids have been applied, and the most that may be (0: no bound).
    pub fn request_ids(&self) -> (usize, usize) {
        (self.applied.len(), self.capacity)
    }

    /// The history chain of everything applied (continued from the last step-up).
    pub fn chain(&self) -> u64 {
        self.chain
    }

    /// The sequence number that applied request `id`, if it was applied.
    pub fn applied(&self, id: &str) -> Option<u64> {
        self.applied.get(id).copied()
    }

    /// Apply a request at sequence number `seq`, or say why it does not apply
    /// (the database is then unchanged). The active's way: its request goes on
    /// to the standby, so the database copies what it keeps. Only here is the
    /// capacity enforced: a standby applies whatever its active applied.
    pub fn apply(&mut self, req: &WorkRequest, seq: u64) -> Result<(), DbError> {
        if self.capacity > 0 && self.applied.len() >= self.capacity {
            return Err(DbError::Full(self.capacity));
        }
        let change = match &req.op {
            Operation::Open { fields, .. } => Change::Open(fields.clone()),
            Operation::Update { fields, .. } => Change::Fields(fields.clone()),
            Operation::Close { .. } => Change::Close,
            Operation::SetPriority { priority, .. } => Change::Priority(*priority),
        };
        self.commit(req.id.clone(), req.op.unit(), change, seq)
    }

    /// [`Database::apply`], the standby's way: nothing else needs the request,
    /// so the database takes its strings instead of copies.
    pub fn apply_owned(&mut self, req: WorkRequest, seq: u64) -> Result<(), DbError> {
        let (unit, change) = match req.op {
            Operation::Open { unit, fields } => (unit, Change::Open(fields)),
            Operation::Update { unit, fields } => (unit, Change::Fields(fields)),
            Operation::Close { unit } => (unit, Change::Close),
            Operation::SetPriority { unit, priority } => (unit, Change::Priority(priority)),
        };
        self.commit(req.id, &unit, change, seq)
    }

    /// Apply `change` to `unit` as request `id`, after checking it applies.
    fn commit(&mut self, id: String, unit: &str, change: Change, seq: u64) -> Result<(), DbError> {
        let u = match (change, self.units.get_mut(unit)) {
            (Change::Open(_), Some(_)) => return Err(DbError::Exists(unit.into())),
            (Change::Open(fields), None) => {
                let new =
                    WorkUnit { id: unit.to_string(), state: UnitState::Open, fields, priority: None, ops: Vec::new() };
                self.units.entry(unit.to_string()).or_insert(new)
            }
            (_, None) => return Err(DbError::Missing(unit.into())),
            (_, Some(u)) if u.state == UnitState::Closed => return Err(DbError::Closed(unit.into())),
            (Change::Fields(fields), Some(u)) => {
                u.fields.extend(fields);
                u
            }
            (Change::Close, Some(u)) => {
                u.state = UnitState::Closed;
                u
            }
            (Change::Priority(p), Some(u)) => {
                u.priority = Some(p);
                u
            }
        };
        self.chain = hitless_protocol::chain(self.chain, seq, &id);
        u.ops.push(id.clone());
        self.applied.insert(id, seq);
        Ok(())
    }

    /// All work units, in id order.
    pub fn units(&self) -> Vec<WorkUnit> {
        let mut v: Vec<WorkUnit> = self.units.values().cloned().collect();
        v.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Number of work units.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// True when there are no work units.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(id: &str, op: Operation) -> WorkRequest {
        WorkRequest { id: id.into(), op }
    }

    #[test]
    fn lifecycle_and_history() {
        let mut db = Database::default();
        db.apply(&req("r1", Operation::Open { unit: "u".into(), fields: Default::default() }), 1).unwrap();
        db.apply(&req("r2", Operation::Update { unit: "u".into(), fields: [("k".into(), "v".into())].into() }), 2)
            .unwrap();
        db.apply(&req("r3", Operation::Close { unit: "u".into() }), 3).unwrap();
        let u = &db.units()[0];
        assert_eq!(u.ops, vec!["r1", "r2", "r3"]);
        assert_eq!(u.state, UnitState::Closed);
        assert_eq!(u.fields["k"], "v");
        assert_eq!(db.applied("r2"), Some(2));
        assert_eq!(db.apply(&req("r4", Operation::Close { unit: "u".into() }), 4), Err(DbError::Closed("u".into())));
        assert_eq!(db.apply(&req("r5", Operation::Close { unit: "x".into() }), 5), Err(DbError::Missing("x".into())));
    }

    #[test]
    fn snapshot_round_trip_keeps_dedup_index() {
        let mut db = Database::default();
        db.apply(&req("r1", Operation::Open { unit: "a".into(), fields: Default::default() }), 1).unwrap();
        db.apply(&req("r2", Operation::SetPriority { unit: "a".into(), priority: 4 }), 2).unwrap();
        let mut copy = Database::from_units(db.units(), 2, db.chain(), 0);
        assert_eq!(copy.units(), db.units());
        // The copy continues the history: the same next update gives the same chain.
        let next = req("r3", Operation::Close { unit: "a".into() });
        db.apply(&next, 3).unwrap();
        copy.apply_owned(next, 3).unwrap();
        assert_eq!(copy.chain(), db.chain());
        assert!(copy.applied("r1").is_some() && copy.applied("r2").is_some());
        assert_eq!(copy.units()[0].priority, Some(4));
    }

    #[test]
    fn a_full_database_refuses_new_ids_and_still_knows_the_old_ones() {
        let open =
            |n: usize| req(&format!("o{n}"), Operation::Open { unit: format!("u{n}"), fields: Default::default() });
        let mut db = Database::with_capacity(3);
        for n in 0..3 {
            db.apply(&open(n), n as u64 + 1).unwrap();
        }
        assert_eq!(db.apply(&open(3), 4), Err(DbError::Full(3)));
        assert_eq!(db.request_ids(), (3, 3));
        assert_eq!(db.applied("o1"), Some(2), "a retry is still recognised");
        assert!(DbError::Full(3).to_string().contains("memory_mib"), "says what to do");
        // A standby applies what its active applied, and a step-up keeps the bound.
        let mut standby = Database::from_units(db.units(), 3, db.chain(), 3);
        standby.apply_owned(open(3), 4).unwrap();
        assert_eq!(standby.apply(&open(4), 5), Err(DbError::Full(3)));
        // No bound: capacity 0.
        let mut free = Database::with_capacity(0);
        for n in 0..10 {
            free.apply(&open(n), n as u64 + 1).unwrap();
        }
    }

    #[test]
    fn a_reserved_database_holds_that_many_ids_without_growing() {
        let mut db = Database::with_capacity(1000);
        let (ids, units) = (db.applied.capacity(), db.units.capacity());
        assert!(ids >= 1000 && units >= 500, "{ids} {units}");
        for n in 0..500 {
            db.apply(
                &req(&format!("o{n}"), Operation::Open { unit: format!("u{n}"), fields: Default::default() }),
                2 * n,
            )
            .unwrap();
            db.apply(&req(&format!("c{n}"), Operation::Close { unit: format!("u{n}") }), 2 * n + 1).unwrap();
        }
        assert_eq!((db.applied.capacity(), db.units.capacity()), (ids, units), "a table grew");
        // A step-up refills the tables it has: they keep their capacity, nothing of the old state stays.
        let snapshot = vec![WorkUnit {
            id: "s".into(),
            state: UnitState::Open,
            fields: Default::default(),
            priority: None,
            ops: vec!["s1".into()],
        }];
        let old = (db.applied.capacity(), db.units.capacity());
        db.refill(snapshot, 7, 99);
        assert_eq!((db.applied.capacity(), db.units.capacity()), old, "the tables were resized");
        assert_eq!((db.len(), db.applied("s1"), db.applied("o1"), db.chain()), (1, Some(7), None, 99));
    }
}
