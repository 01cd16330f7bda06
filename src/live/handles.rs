//! The registry's handles to the policies and switches in use: weak, so that a name no
//! longer used costs nothing once its last handle is gone.

use std::collections::HashMap;

use crate::policy::{Policy, WeakPolicy};
use crate::switch::{Switch, WeakSwitch};

/// A handle that does not keep its target alive.
pub(super) trait Weak {
    /// The strong handle.
    type Strong;
    /// The target, if it is still alive.
    fn upgrade(&self) -> Option<Self::Strong>;
}

impl Weak for WeakPolicy {
    type Strong = Policy;
    fn upgrade(&self) -> Option<Policy> {
        WeakPolicy::upgrade(self)
    }
}

impl Weak for WeakSwitch {
    type Strong = Switch;
    fn upgrade(&self) -> Option<Switch> {
        WeakSwitch::upgrade(self)
    }
}

/// Below this many entries the map is never pruned.
const MIN_PRUNE: usize = 64;

/// Weak handles by name. Dead entries are dropped whenever they are met (a lookup, a
/// refresh of the key, a walk over every handle) and, amortized, whenever the map
/// reaches twice the number alive at the last prune: so it holds at most
/// `max(2 × the most handles alive at once, 64)` entries.
pub(super) struct Handles<W> {
    map: HashMap<String, W>,
    prune_at: usize,
}

impl<W: Weak> Handles<W> {
    pub(super) fn new() -> Self {
        Handles {
            map: HashMap::new(),
            prune_at: MIN_PRUNE,
        }
    }

    /// The live handle of `name`, if there is one; a dead entry is dropped.
    pub(super) fn get(&mut self, name: &str) -> Option<W::Strong> {
        let strong = self.map.get(name)?.upgrade();
        if strong.is_none() {
            self.map.remove(name);
        }
        strong
    }

    /// Remembers `weak` as `name`'s handle.
    pub(super) fn insert(&mut self, name: &str, weak: W) {
        self.map.insert(name.to_owned(), weak);
        if self.map.len() >= self.prune_at {
            self.for_each(|_| {});
        }
    }

    /// Calls `f` with every live handle, and drops the dead entries.
    pub(super) fn for_each(&mut self, mut f: impl FnMut(&W::Strong)) {
        self.map.retain(|_, weak| match weak.upgrade() {
            Some(strong) => {
                f(&strong);
                true
            }
            None => false,
        });
        self.prune_at = (2 * self.map.len()).max(MIN_PRUNE);
    }

    /// Entries held, dead ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}
