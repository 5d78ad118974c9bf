//! The catalogs in force: a module's catalog additions (kinds, fields, states) exist only in the
//! domains where it is enabled, so each domain has its own catalog. An installed module that is
//! enabled nowhere changes nothing.
//!
//! A module disabled (with `force`) in a domain that still holds records of a kind or in a state
//! only it adds leaves those records read-only there: [`Catalogs::missing`] names the module to
//! enable again.

use std::{collections::BTreeMap, sync::Arc};

use usm_model::{Catalog, CatalogAdditions, CatalogError, Domain, Kind, KindDef, Record, State};

/// One catalog per domain, and the union of the kinds in force anywhere.
#[derive(Debug, Clone)]
pub struct Catalogs {
    base: Arc<Catalog>,
    union: Arc<Catalog>,
    installed: Arc<Catalog>,
    by_domain: BTreeMap<Domain, Arc<Catalog>>,
    kind_providers: BTreeMap<Kind, String>,
    state_providers: BTreeMap<(Kind, State), String>,
}

/// What a record's domain no longer has of it: its kind, or the state it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The kind, or the state (`kind/state`), the domain lacks.
    pub what: String,
    /// The installed module that adds it, if one does.
    pub module: Option<String>,
}

impl Catalogs {
    /// Every domain with the same catalog (no module adds anything).
    pub fn uniform(catalog: Arc<Catalog>) -> Self {
        Self {
            base: Arc::clone(&catalog),
            union: Arc::clone(&catalog),
            installed: catalog,
            by_domain: BTreeMap::new(),
            kind_providers: BTreeMap::new(),
            state_providers: BTreeMap::new(),
        }
    }

    /// Composes, for each of `domains`, `base` plus the additions of the modules enabled there;
    /// `modules` are (id, additions, domains enabled in), in the order additions apply.
    pub fn compose<'a>(
        base: &[KindDef],
        domains: &[Domain],
        modules: &[(&'a str, &'a CatalogAdditions, Vec<Domain>)],
    ) -> Result<Self, CatalogError> {
        let compose = |keep: &dyn Fn(&[Domain]) -> bool| {
            Catalog::compose(
                base.iter().cloned(),
                modules
                    .iter()
                    .filter(|(_, _, enabled)| keep(enabled))
                    .map(|(id, additions, _)| (*id, *additions)),
            )
            .map(Arc::new)
        };
        let mut by_domain = BTreeMap::new();
        for domain in domains {
            by_domain.insert(
                domain.clone(),
                compose(&|enabled: &[Domain]| enabled.contains(domain))?,
            );
        }
        let mut kind_providers = BTreeMap::new();
        let mut state_providers = BTreeMap::new();
        for (id, additions, _) in modules {
            for def in &additions.kinds {
                kind_providers.insert(def.name.clone(), (*id).to_owned());
            }
            for addition in &additions.states {
                state_providers.insert(
                    (addition.kind.clone(), addition.state.name.clone()),
                    (*id).to_owned(),
                );
            }
        }
        Ok(Self {
            base: compose(&|_: &[Domain]| false)?,
            union: compose(&|enabled: &[Domain]| !enabled.is_empty())?,
            installed: compose(&|_: &[Domain]| true)?,
            by_domain,
            kind_providers,
            state_providers,
        })
    }

    /// The catalog of `domain`: the engine's kinds plus what the modules enabled there add.
    pub fn domain(&self, domain: &Domain) -> &Arc<Catalog> {
        self.by_domain.get(domain).unwrap_or(&self.base)
    }

    /// Every kind in force in some domain.
    pub fn union(&self) -> &Arc<Catalog> {
        &self.union
    }

    /// Every kind and state of the installed modules, enabled or not: what records may have,
    /// including those a forced disabling left read-only.
    pub fn installed(&self) -> &Arc<Catalog> {
        &self.installed
    }

    /// What `record`'s domain lacks of its kind or state, with the module that adds it; `None`
    /// when the domain has both.
    pub fn missing(&self, record: &Record) -> Option<Missing> {
        let catalog = self.domain(&record.domain);
        let Some(def) = catalog.get(&record.kind) else {
            return Some(Missing {
                what: format!("kind {}", record.kind),
                module: self.kind_providers.get(&record.kind).cloned(),
            });
        };
        if def.lifecycle.state(&record.state).is_some() {
            return None;
        }
        let key = (record.kind.clone(), record.state.clone());
        Some(Missing {
            what: format!("state {} of {}", record.state, record.kind),
            module: self.state_providers.get(&key).cloned(),
        })
    }
}
