//! Typed processor identities. A testbed has exactly two processors (the
//! patent's P121 and P122); a [`ProcId`] names one of the two slots and a
//! [`Pair`] holds one value per slot. Names from the config are resolved to a
//! `ProcId` once, at the boundary ([`crate::config::Config::proc_id`]), so no
//! lookup inside can fall back to a default or an empty name.

use std::ops::{Index, IndexMut};

/// One of the two processors: the first in the config starts active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcId(u8);

impl ProcId {
    /// The processor listed first in the config (active at step 200).
    pub const FIRST: ProcId = ProcId(0);
    /// The processor listed second (standby at step 200).
    pub const SECOND: ProcId = ProcId(1);
    /// Both, in config order.
    pub const BOTH: [ProcId; 2] = [ProcId::FIRST, ProcId::SECOND];

    /// The other processor of the pair.
    pub fn other(self) -> ProcId {
        ProcId(1 - self.0)
    }

    /// Position in config order (0 or 1).
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// One value per processor.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Pair<T>([T; 2]);

impl<T> Pair<T> {
    /// A pair from its two values, in config order.
    pub fn new(first: T, second: T) -> Self {
        Pair([first, second])
    }

    /// A pair with each slot computed from its id.
    pub fn from_fn(mut f: impl FnMut(ProcId) -> T) -> Self {
        Pair([f(ProcId::FIRST), f(ProcId::SECOND)])
    }

    /// Each id with its value, in config order.
    pub fn iter(&self) -> impl Iterator<Item = (ProcId, &T)> {
        ProcId::BOTH.into_iter().zip(self.0.iter())
    }

    /// The values, in config order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// A pair of `f` applied to each value.
    pub fn map<U>(&self, mut f: impl FnMut(ProcId, &T) -> U) -> Pair<U> {
        Pair::from_fn(|p| f(p, &self[p]))
    }

    /// The first id whose value satisfies `pred`.
    pub fn find(&self, mut pred: impl FnMut(&T) -> bool) -> Option<ProcId> {
        self.iter().find(|(_, v)| pred(v)).map(|(p, _)| p)
    }
}

impl<T> Index<ProcId> for Pair<T> {
    type Output = T;
    fn index(&self, p: ProcId) -> &T {
        &self.0[p.index()]
    }
}

impl<T> IndexMut<ProcId> for Pair<T> {
    fn index_mut(&mut self, p: ProcId) -> &mut T {
        &mut self.0[p.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_processor_has_exactly_one_other() {
        for p in ProcId::BOTH {
            assert_ne!(p, p.other());
            assert_eq!(p.other().other(), p);
        }
        let names = Pair::new("p121", "p122");
        assert_eq!(names[ProcId::FIRST.other()], "p122");
        assert_eq!(names.find(|n| *n == "p122"), Some(ProcId::SECOND));
        assert_eq!(names.find(|n| *n == "p999"), None);
        assert_eq!(names.map(|p, n| format!("{}{n}", p.index())), Pair::new("0p121".into(), "1p122".to_string()));
    }
}
