//! The service catalog: what requesters can order. An item has a form (a JSON Schema of the
//! order's variables), an approval policy (none, the manager of the person the order is for, or
//! a group) and the tasks that fulfil it, in the domains and groups of the teams that do the
//! work. Ordering creates a `request` record that carries its own plan (the item's approvers and
//! tasks, rendered for this order), so what happens next depends on the record alone: the
//! [`FulfilmentWorker`] creates the tasks once the order is approved, in the order their `after`
//! says, and marks the request fulfilled when they are all finished.
//!
//! Admins keep their items in the store (`catalog/item/<id>`); modules ship items of their own
//! (`[[catalog_items]]`), offered as `<domain>.<id>` in each domain the module is enabled in.

mod worker;

use std::{collections::BTreeSet, sync::Arc};

use serde_json::{Map, Value, json};
use usm_engine::{Created, Engine, EngineError, NewRecord, Registry};
use usm_model::{
    Actor, Domain, FieldError,
    service_catalog::{Approver, CatalogItem, ItemPatch},
};
use usm_store::StoreError;

pub use worker::FulfilmentWorker;

/// Where admins' items are kept.
const ITEM_PREFIX: &str = "catalog/item/";
/// Most items admins may keep (modules' items aside).
pub const MAX_ITEMS: usize = 1_000;
/// Largest order variables (their JSON), in bytes.
pub const MAX_VARIABLES_BYTES: usize = 32 * 1024;
/// Most violations of the form reported for one order.
const MAX_FORM_ERRORS: usize = 10;
/// Template work allowed to render one task title.
const TITLE_FUEL: u64 = 10_000;

/// Why a catalog operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No item by that id is offered to the caller.
    #[error("no catalog item {0}")]
    NotFound(String),
    /// Another item has the id.
    #[error("a catalog item {0} exists")]
    Exists(String),
    /// The item is a module's.
    #[error("catalog item {id} comes from module {module}: it changes with the module")]
    ReadOnly {
        /// The item.
        id: String,
        /// Its module.
        module: String,
    },
    /// The item (or a change of it) is not acceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// JSON pointer of the member.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The item cannot be ordered now.
    #[error("{0}")]
    Unavailable(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<StoreError> for CatalogError {
    fn from(error: StoreError) -> Self {
        Self::Engine(error.into())
    }
}

impl From<FieldError> for CatalogError {
    fn from(error: FieldError) -> Self {
        Self::Invalid {
            field: error.field,
            message: error.message,
        }
    }
}

fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

/// An order: the form's answers, and whom it is for.
#[derive(Debug, Clone, Default)]
pub struct Order {
    /// The answers to the item's form.
    pub variables: Map<String, Value>,
    /// The person the order is for, when an agent orders for someone else.
    pub on_behalf_of: Option<String>,
}

/// The catalog of a server: admins' items and the items of enabled modules.
pub struct ServiceCatalog {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
}

impl ServiceCatalog {
    /// The catalog over `engine`'s store, with the items of `registry`'s modules.
    pub fn new(engine: Arc<Engine>, registry: Arc<Registry>) -> Self {
        Self { engine, registry }
    }

    fn stored(&self) -> Result<Vec<CatalogItem>, CatalogError> {
        self.engine
            .store()
            .settings(ITEM_PREFIX)?
            .into_iter()
            .map(|(key, bytes)| decode(&key, &bytes))
            .collect()
    }

    fn module_items(&self) -> Vec<CatalogItem> {
        let mut items = Vec::new();
        for info in self.registry.list() {
            let Some(module) = self.registry.module(&info.id) else {
                continue;
            };
            for domain in &info.domains {
                items.extend(
                    module
                        .manifest
                        .catalog_items
                        .iter()
                        .map(|decl| decl.in_domain(domain, &info.id)),
                );
            }
        }
        items
    }

    /// The items offered to `actor` (in its domains), optionally of one domain, by id.
    pub fn list(
        &self,
        actor: &Actor,
        domain: Option<&Domain>,
    ) -> Result<Vec<CatalogItem>, CatalogError> {
        let mut items: Vec<CatalogItem> = self
            .stored()?
            .into_iter()
            .chain(self.module_items())
            .filter(|item| actor.in_domain(&item.domain))
            .filter(|item| domain.is_none_or(|d| *d == item.domain))
            .collect();
        items.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(items)
    }

    /// One item offered to `actor`.
    pub fn get(&self, actor: &Actor, id: &str) -> Result<CatalogItem, CatalogError> {
        let item = if id.contains('.') {
            self.module_items().into_iter().find(|item| item.id == id)
        } else if usm_model::service_catalog::is_id(id) {
            let key = format!("{ITEM_PREFIX}{id}");
            self.engine
                .store()
                .setting(&key)?
                .map(|bytes| decode(&key, &bytes))
                .transpose()?
        } else {
            None
        };
        item.filter(|item| actor.in_domain(&item.domain))
            .ok_or_else(|| CatalogError::NotFound(truncated(id)))
    }

    /// Checks what only the server knows: the domains exist.
    fn check_domains(&self, item: &CatalogItem) -> Result<(), CatalogError> {
        let known = |domain: &Domain| self.engine.domains().contains(domain);
        if !known(&item.domain) {
            return Err(CatalogError::Invalid {
                field: "/domain".into(),
                message: format!("{} is not a domain of this server", item.domain),
            });
        }
        for (at, task) in item.fulfilment.iter().enumerate() {
            if !known(&task.domain) {
                return Err(CatalogError::Invalid {
                    field: format!("/fulfilment/{at}/domain"),
                    message: format!("{} is not a domain of this server", task.domain),
                });
            }
            if let Err(message) = title_template(&task.title) {
                return Err(CatalogError::Invalid {
                    field: format!("/fulfilment/{at}/title"),
                    message,
                });
            }
        }
        Ok(())
    }

    fn admin_of(actor: &Actor, domain: &Domain) -> Result<BTreeSet<Domain>, CatalogError> {
        let scope = BTreeSet::from([domain.clone()]);
        usm_engine::auth::admin_over(actor, Some(&scope))
            .map_err(|e| CatalogError::Forbidden(e.to_string()))?;
        Ok(scope)
    }

    fn save(&self, item: &CatalogItem) -> Result<(), CatalogError> {
        let bytes = serde_json::to_vec(item).map_err(|e| CatalogError::Invalid {
            field: String::new(),
            message: e.to_string(),
        })?;
        self.engine
            .store()
            .write_settings(&[(format!("{ITEM_PREFIX}{}", item.id), bytes)], &[])?;
        Ok(())
    }

    fn audit(
        &self,
        actor: &Actor,
        action: &str,
        scope: &BTreeSet<Domain>,
        id: &str,
        before: Option<&CatalogItem>,
        after: Option<&CatalogItem>,
    ) -> Result<(), CatalogError> {
        let value = |item: Option<&CatalogItem>| item.and_then(|i| serde_json::to_value(i).ok());
        usm_engine::auth::audit(
            self.engine.store().as_ref(),
            actor,
            action,
            id,
            Some(scope),
            value(before),
            value(after),
        )?;
        Ok(())
    }

    /// Adds an item (an admin of its domain).
    pub fn create(&self, actor: &Actor, item: CatalogItem) -> Result<CatalogItem, CatalogError> {
        let scope = Self::admin_of(actor, &item.domain)?;
        if item.module.is_some() {
            return Err(CatalogError::Invalid {
                field: "/module".into(),
                message: "only a module ships an item of a module".into(),
            });
        }
        item.check()?;
        self.check_domains(&item)?;
        let store = self.engine.store();
        let key = format!("{ITEM_PREFIX}{}", item.id);
        if store.setting(&key)?.is_some() {
            return Err(CatalogError::Exists(item.id));
        }
        if store.settings(ITEM_PREFIX)?.len() >= MAX_ITEMS {
            return Err(CatalogError::Invalid {
                field: String::new(),
                message: format!("the catalog holds at most {MAX_ITEMS} items"),
            });
        }
        self.save(&item)?;
        self.audit(
            actor,
            "catalog.item.create",
            &scope,
            &item.id,
            None,
            Some(&item),
        )?;
        Ok(item)
    }

    fn own(&self, actor: &Actor, id: &str) -> Result<CatalogItem, CatalogError> {
        let item = self.get(actor, id)?;
        if let Some(module) = &item.module {
            return Err(CatalogError::ReadOnly {
                id: item.id.clone(),
                module: module.clone(),
            });
        }
        Ok(item)
    }

    /// Changes an item (an admin of its domain): each member of `patch` replaces the item's.
    pub fn update(
        &self,
        actor: &Actor,
        id: &str,
        patch: ItemPatch,
    ) -> Result<CatalogItem, CatalogError> {
        let before = self.own(actor, id)?;
        let scope = Self::admin_of(actor, &before.domain)?;
        let after = before.clone().patched(patch);
        after.check()?;
        self.check_domains(&after)?;
        self.save(&after)?;
        self.audit(
            actor,
            "catalog.item.update",
            &scope,
            id,
            Some(&before),
            Some(&after),
        )?;
        Ok(after)
    }

    /// Removes an item (an admin of its domain). Orders already made keep their plans.
    pub fn delete(&self, actor: &Actor, id: &str) -> Result<CatalogItem, CatalogError> {
        let item = self.own(actor, id)?;
        let scope = Self::admin_of(actor, &item.domain)?;
        self.engine
            .store()
            .write_settings(&[], &[format!("{ITEM_PREFIX}{}", item.id)])?;
        self.audit(actor, "catalog.item.delete", &scope, id, Some(&item), None)?;
        Ok(item)
    }

    /// Orders an item: checks the variables against its form, finds its approvers, renders its
    /// tasks, and creates the request that carries all of it. With an idempotency key, a
    /// repeat of the same order returns the request the first one created.
    pub fn order(
        &self,
        actor: &Actor,
        id: &str,
        order: Order,
        idempotency_key: Option<&str>,
    ) -> Result<Created, CatalogError> {
        let item = self.get(actor, id)?;
        let variables = Value::Object(order.variables);
        if serde_json::to_vec(&variables).map_or(usize::MAX, |b| b.len()) > MAX_VARIABLES_BYTES {
            return Err(CatalogError::Invalid {
                field: "/variables".into(),
                message: format!("at most {MAX_VARIABLES_BYTES} bytes of JSON"),
            });
        }
        let validator = item.form_validator()?;
        let errors: Vec<FieldError> = validator
            .iter_errors(&variables)
            .take(MAX_FORM_ERRORS)
            .map(|error| FieldError {
                field: format!("/variables{}", error.instance_path()),
                message: error.to_string(),
            })
            .collect();
        if !errors.is_empty() {
            return Err(EngineError::InvalidFields {
                kind: "request".into(),
                errors,
            }
            .into());
        }
        let directory = self.engine.directory();
        let for_person = order.on_behalf_of.clone().unwrap_or(actor.name.clone());
        if for_person != actor.name && !actor.works_records() {
            return Err(CatalogError::Forbidden(
                "only agents order for someone else (on_behalf_of)".into(),
            ));
        }
        if let Some(other) = &order.on_behalf_of
            && directory.active_person(other).is_none()
        {
            return Err(CatalogError::Invalid {
                field: "/on_behalf_of".into(),
                message: format!("{} is not an active person", truncated(other)),
            });
        }
        let approvers: Vec<String> = match &item.approval.by {
            Approver::None => Vec::new(),
            Approver::Manager => {
                let manager = directory
                    .active_person(&for_person)
                    .and_then(|person| person.manager)
                    .filter(|manager| directory.active_person(manager).is_some());
                match manager {
                    Some(manager) => vec![manager],
                    None => {
                        return Err(CatalogError::Unavailable(format!(
                            "{} has no active manager in the directory to approve the order",
                            truncated(&for_person)
                        )));
                    }
                }
            }
            Approver::Group(group) => {
                if directory.group_in(&item.domain, group).is_none() {
                    return Err(CatalogError::Unavailable(format!(
                        "the approving group {group} does not exist in domain {}",
                        item.domain
                    )));
                }
                vec![format!("group:{group}")]
            }
        };
        let context = json!({"variables": variables, "requester": for_person, "item": {"id": item.id, "name": item.name}});
        let mut plan = Vec::with_capacity(item.fulfilment.len());
        for (_, task, after) in item.plan() {
            if !self.engine.domains().contains(&task.domain) {
                return Err(CatalogError::Unavailable(format!(
                    "a fulfilment task's domain {} is not a domain of this server",
                    task.domain
                )));
            }
            if let Some(group) = &task.group
                && directory.group_in(&task.domain, group).is_none()
            {
                return Err(CatalogError::Unavailable(format!(
                    "the fulfilment group {group} does not exist in domain {}",
                    task.domain
                )));
            }
            let title = render_title(&task.title, &context);
            let mut step = json!({"title": title, "domain": task.domain, "after": after});
            if let Some(group) = &task.group {
                step["group"] = json!(group);
            }
            plan.push(step);
        }
        // Classified by what was ordered: ISO/IEC 20000 asks every request for a category.
        let mut fields = Map::from_iter([("category".to_owned(), json!(item.id))]);
        if let Some(other) = order.on_behalf_of {
            fields.insert(usm_engine::controls::REQUESTER.into(), Value::String(other));
        }
        let system = Map::from_iter([
            ("catalog_item".to_owned(), json!(item.id)),
            ("variables".to_owned(), variables),
            ("approvers".to_owned(), json!(approvers)),
            ("fulfilment".to_owned(), Value::Array(plan)),
        ]);
        let new = NewRecord {
            kind: "request".into(),
            domain: Some(item.domain.to_string()),
            title: item.name.clone(),
            fields,
            links: Vec::new(),
        };
        let created = self
            .engine
            .create_with_system_fields(actor, new, idempotency_key, system)?;
        if !created.replayed {
            tracing::info!(record = %created.record.id, item = %item.id, "catalog item ordered");
        }
        Ok(created)
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<CatalogItem, CatalogError> {
    serde_json::from_slice(bytes).map_err(|e| {
        CatalogError::from(StoreError::Corrupt {
            what: "catalog item",
            detail: format!("{key}: {e}"),
        })
    })
}

fn title_template(source: &str) -> Result<(), String> {
    let env = minijinja::Environment::new();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| format!("not a template: {e}"))
}

/// A task's title for one order; the template itself when it does not render.
fn render_title(source: &str, context: &Value) -> String {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TITLE_FUEL));
    let context = minijinja::value::Serde(context);
    let rendered = env.render_str(source, context).unwrap_or_else(|error| {
        tracing::warn!(%error, "a fulfilment task's title does not render");
        source.to_owned()
    });
    let title: String = rendered
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(usm_model::service_catalog::MAX_TITLE_CHARS)
        .collect();
    if title.trim().is_empty() {
        source.chars().take(200).collect()
    } else {
        title
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_renders_the_variables_and_stays_one_bounded_line() {
        let context = json!({"variables": {"employee": "Dana Kim", "note": "a\nb"}});
        assert_eq!(
            render_title("Accounts for {{ variables.employee }}", &context),
            "Accounts for Dana Kim"
        );
        assert_eq!(render_title("{{ variables.note }}", &context), "a b");
        let long = render_title("{% for i in range(500) %}x{% endfor %}", &context);
        assert_eq!(long.chars().count(), 200);
        // A template that does not render is shown as written, not dropped.
        assert_eq!(render_title("{{ 1 / 0 }}", &context), "{{ 1 / 0 }}");
        assert!(title_template("{{ unclosed").is_err());
    }
}
