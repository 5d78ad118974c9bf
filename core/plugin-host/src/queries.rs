//! Answers to `host.query`, shared by every step of a host and reused for as long as no record
//! of the queried kind has been written since.
//!
//! Steps that look up reference data on every write (the active agreements, a service's CIs)
//! would otherwise scan the store once per create; under concurrent writes those reads wait on
//! the store and dominate the pipeline. Reference data changes rarely, so a cached answer keyed
//! by the store's per-kind write count is exact: a write of that kind moves the count, and the
//! next query reads afresh.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use usm_model::{Domain, Kind, State};
use usm_store::Store;

/// Distinct queries kept; past it the cache starts over.
const MAX_ENTRIES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QueryKey {
    pub(crate) domain: Domain,
    pub(crate) kind: Kind,
    pub(crate) state: Option<State>,
    pub(crate) limit: usize,
}

/// Cached query answers (the JSON handed to the guest), each with the write count it is
/// valid for.
#[derive(Debug, Default)]
pub(crate) struct QueryCache {
    entries: Mutex<HashMap<QueryKey, (u64, Arc<str>)>>,
}

impl QueryCache {
    /// The answer to `key`: cached while no record of its kind was written, else `load`ed.
    pub(crate) fn answer(
        &self,
        store: &dyn Store,
        key: QueryKey,
        load: impl FnOnce() -> Result<String, String>,
    ) -> Result<Arc<str>, String> {
        // Read the count before loading: a write racing the load moves it past what is stored
        // with the answer, so the answer is refreshed next time rather than kept stale.
        let writes = store.kind_writes(&key.kind);
        if let Some((seen, answer)) = self.lock().get(&key)
            && *seen == writes
        {
            return Ok(Arc::clone(answer));
        }
        let answer: Arc<str> = load()?.into();
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (writes, Arc::clone(&answer)));
        Ok(answer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<QueryKey, (u64, Arc<str>)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
