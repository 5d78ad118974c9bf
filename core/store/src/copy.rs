//! Copies a whole store, tree by tree and byte for byte, between backends (`usm store copy`):
//! every backend holds the same layout, so a copy is the same store on another engine.

use crate::{
    StoreError,
    layout::{Entry, KvRead, TreeId},
};

/// Entries read and written per batch.
const BATCH: usize = 1000;

/// A backend a whole store can be copied out of and into.
pub trait KvCopy: KvRead {
    /// How many entries `tree` holds.
    fn tree_len(&self, tree: TreeId) -> Result<u64, StoreError>;

    /// Writes `entries` into `tree`, replacing the values of keys it holds; durable on return.
    fn load(&self, tree: TreeId, entries: Vec<Entry>) -> Result<(), StoreError>;
}

/// What a copy moved: entries per tree, counted again in the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    /// (tree, entries) for every tree.
    pub trees: Vec<(&'static str, u64)>,
    /// Entries in all.
    pub entries: u64,
}

/// The entries in every tree of `store`, in all (for a progress bar's length).
pub fn total_entries(store: &dyn KvCopy) -> Result<u64, StoreError> {
    TreeId::ALL
        .iter()
        .try_fold(0, |sum, tree| Ok(sum + store.tree_len(*tree)?))
}

/// Copies every tree of `from` into `to`, which must hold no records, outbox events, settings
/// or counters yet; `progress` hears of every batch (entries copied). Verifies at the end that
/// `to` holds as many entries per tree as `from`.
pub fn copy(
    from: &dyn KvCopy,
    to: &dyn KvCopy,
    mut progress: impl FnMut(u64),
) -> Result<Copied, StoreError> {
    for tree in [TreeId::Records, TreeId::Outbox, TreeId::Settings] {
        if to.tree_len(tree)? > 0 {
            return Err(StoreError::Corrupt {
                what: "copy target",
                detail: format!(
                    "it already holds {} entries; copy into an empty store only",
                    tree.name()
                ),
            });
        }
    }
    let mut copied = Copied::default();
    for tree in TreeId::ALL {
        let mut start = Vec::new();
        loop {
            let entries = from.scan(tree, &[], &start, BATCH)?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            start = last.clone();
            start.push(0);
            let count = entries.len() as u64;
            to.load(tree, entries)?;
            progress(count);
            if count < BATCH as u64 {
                break;
            }
        }
        let (source, target) = (from.tree_len(tree)?, to.tree_len(tree)?);
        // The target may hold a few counters of its own from when it opened (its format).
        let complete = match tree {
            TreeId::Counters => target >= source,
            _ => target == source,
        };
        if !complete {
            return Err(StoreError::Corrupt {
                what: "copy",
                detail: format!("{} holds {source} entries, its copy {target}", tree.name()),
            });
        }
        copied.trees.push((tree.name(), source));
        copied.entries += source;
    }
    Ok(copied)
}
