//! The catalogs in force: a module's catalog additions (kinds, fields, states) exist only in the
//! domains where it is enabled, so each domain has its own catalog. An installed module that is
//! enabled nowhere changes nothing.

use std::{collections::BTreeMap, sync::Arc};

use usm_model::{Catalog, CatalogAdditions, CatalogError, Domain, KindDef};

/// One catalog per domain, and the union of the kinds in force anywhere.
#[derive(Debug, Clone)]
pub struct Catalogs {
    base: Arc<Catalog>,
    union: Arc<Catalog>,
    by_domain: BTreeMap<Domain, Arc<Catalog>>,
}

impl Catalogs {
    /// Every domain with the same catalog (no module adds anything).
    pub fn uniform(catalog: Arc<Catalog>) -> Self {
        Self {
            base: Arc::clone(&catalog),
            union: catalog,
            by_domain: BTreeMap::new(),
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
        Ok(Self {
            base: compose(&|_: &[Domain]| false)?,
            union: compose(&|enabled: &[Domain]| !enabled.is_empty())?,
            by_domain,
        })
    }

    /// The catalog of `domain`: the engine's kinds plus what the modules enabled there add.
    pub fn domain(&self, domain: &Domain) -> &Arc<Catalog> {
        self.by_domain.get(domain).unwrap_or(&self.base)
    }

    /// Every kind in force in some domain, for listings across domains.
    pub fn union(&self) -> &Arc<Catalog> {
        &self.union
    }
}
