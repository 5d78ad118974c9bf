//! Saved queues: a named filter and order for a group or a person of a domain, kept in the
//! store's settings.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use usm_directory::Directory;
use usm_model::{Actor, Domain, Role, Timestamp};
use usm_store::{Store, StoreError};

use crate::{Filter, SearchError, Sort};

const PREFIX: &str = "queue/";
/// Most saved queues a domain holds.
pub const MAX_QUEUES_PER_DOMAIN: usize = 500;

/// Who a queue is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum QueueOwner {
    /// Every member of the group sees it.
    Group(String),
    /// Only the person sees it.
    Person(String),
}

/// A queue to save.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewQueue {
    /// What it is called (1-200 characters).
    pub name: String,
    /// The domain whose records it lists.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub domain: Domain,
    /// The group or the person it is for; the caller when absent.
    #[serde(default)]
    pub owner: Option<QueueOwner>,
    /// Which records (its `domain`, if given, must be the queue's).
    #[serde(default)]
    pub filter: Filter,
    /// In which order (`created_at` when absent; `-` for descending).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub sort: Option<Sort>,
}

/// A saved queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Queue {
    /// Its id.
    pub id: String,
    /// What it is called.
    pub name: String,
    /// The domain whose records it lists.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub domain: Domain,
    /// Who it is for.
    pub owner: QueueOwner,
    /// Which records.
    pub filter: Filter,
    /// In which order.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub sort: Sort,
    /// Who saved it.
    pub created_by: String,
    /// When.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

fn administers(actor: &Actor, domain: &Domain) -> bool {
    actor.has_role(Role::Admin) && actor.in_domain(domain)
}

/// Whether `actor` sees (and may run) the queue.
fn sees(directory: &Directory, actor: &Actor, queue: &Queue) -> bool {
    if !actor.works_records() || !actor.in_domain(&queue.domain) {
        return false;
    }
    administers(actor, &queue.domain)
        || match &queue.owner {
            QueueOwner::Person(person) => person == &actor.name,
            QueueOwner::Group(group) => directory
                .groups_of(&actor.name, &queue.domain)
                .iter()
                .any(|g| g == group),
        }
}

fn corrupt(detail: impl ToString) -> SearchError {
    SearchError::Store(StoreError::Corrupt {
        what: "queue",
        detail: detail.to_string(),
    })
}

fn all(store: &dyn Store) -> Result<Vec<Queue>, SearchError> {
    store
        .settings(PREFIX)?
        .into_iter()
        .map(|(_, bytes)| serde_json::from_slice(&bytes).map_err(corrupt))
        .collect()
}

/// The queues `actor` sees, in name order.
pub fn list(
    store: &dyn Store,
    directory: &Directory,
    actor: &Actor,
) -> Result<Vec<Queue>, SearchError> {
    if !actor.works_records() {
        return Err(SearchError::Forbidden(
            "queues are for those who work records".into(),
        ));
    }
    let mut queues: Vec<Queue> = all(store)?
        .into_iter()
        .filter(|q| sees(directory, actor, q))
        .collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Ok(queues)
}

/// The queue `id`, if `actor` sees it.
pub fn get(
    store: &dyn Store,
    directory: &Directory,
    actor: &Actor,
    id: &str,
) -> Result<Queue, SearchError> {
    let not_found = || SearchError::QueueNotFound(id.chars().take(64).collect());
    if id.len() > 64 {
        return Err(not_found());
    }
    let bytes = store
        .setting(&format!("{PREFIX}{id}"))?
        .ok_or_else(not_found)?;
    let queue: Queue = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if sees(directory, actor, &queue) {
        Ok(queue)
    } else {
        Err(not_found())
    }
}

/// A fresh queue id.
fn fresh_id() -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    hasher.update(Timestamp::now().as_nanosecond().to_be_bytes());
    hasher.update(SEQUENCE.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    hasher.update(std::process::id().to_be_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("q-{hex}")
}

/// Saves a queue. Agents save their own queues and those of their groups; admins of the
/// domain any queue of it.
pub fn create(
    store: &dyn Store,
    directory: &Directory,
    domains: &[Domain],
    actor: &Actor,
    new: NewQueue,
) -> Result<Queue, SearchError> {
    if !actor.works_records() {
        return Err(SearchError::Forbidden(
            "queues are for those who work records".into(),
        ));
    }
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(SearchError::invalid(
            "/name",
            "1-200 characters, no control characters",
        ));
    }
    if !domains.contains(&new.domain) {
        return Err(SearchError::invalid(
            "/domain",
            format!("unknown domain {:?}", new.domain.as_str()),
        ));
    }
    if !actor.in_domain(&new.domain) {
        return Err(SearchError::Forbidden(format!(
            "{} does not work in domain {}",
            actor.name, new.domain
        )));
    }
    let mut filter = new.filter;
    match &filter.domain {
        Some(domain) if domain != new.domain.as_str() => {
            return Err(SearchError::invalid(
                "/filter/domain",
                "a queue lists records of its own domain",
            ));
        }
        _ => filter.domain = Some(new.domain.as_str().to_owned()),
    }
    let owner = new
        .owner
        .unwrap_or_else(|| QueueOwner::Person(actor.name.clone()));
    let admin = administers(actor, &new.domain);
    match &owner {
        QueueOwner::Group(group) => {
            if directory.group_in(&new.domain, group).is_none() {
                return Err(SearchError::UnknownReference {
                    field: "/owner/group".into(),
                    message: format!("no group {group:?} in domain {}", new.domain),
                });
            }
            if !admin
                && !directory
                    .groups_of(&actor.name, &new.domain)
                    .iter()
                    .any(|g| g == group)
            {
                return Err(SearchError::Forbidden(format!(
                    "{} is not a member of group {group}",
                    actor.name
                )));
            }
        }
        QueueOwner::Person(person) => {
            if person != &actor.name {
                if !admin {
                    return Err(SearchError::Forbidden(
                        "agents save personal queues for themselves only".into(),
                    ));
                }
                if !directory
                    .active_person(person)
                    .is_some_and(|p| p.in_domain(&new.domain))
                {
                    return Err(SearchError::UnknownReference {
                        field: "/owner/person".into(),
                        message: format!("no active person {person:?} in domain {}", new.domain),
                    });
                }
            }
        }
    }
    let existing = all(store)?;
    if existing.iter().filter(|q| q.domain == new.domain).count() >= MAX_QUEUES_PER_DOMAIN {
        return Err(SearchError::invalid(
            "/domain",
            format!(
                "domain {} already has {MAX_QUEUES_PER_DOMAIN} queues",
                new.domain
            ),
        ));
    }
    let queue = Queue {
        id: fresh_id(),
        name: name.to_owned(),
        domain: new.domain,
        owner,
        filter,
        sort: new.sort.unwrap_or_default(),
        created_by: actor.name.clone(),
        created_at: Timestamp::now(),
    };
    let bytes = serde_json::to_vec(&queue).map_err(corrupt)?;
    store.write_settings(&[(format!("{PREFIX}{}", queue.id), bytes)], &[])?;
    Ok(queue)
}

/// Removes a queue. Those who see it may: its person, its group's members, the domain's admins.
pub fn delete(
    store: &dyn Store,
    directory: &Directory,
    actor: &Actor,
    id: &str,
) -> Result<Queue, SearchError> {
    let queue = get(store, directory, actor, id)?;
    store.write_settings(&[], &[format!("{PREFIX}{}", queue.id)])?;
    Ok(queue)
}
