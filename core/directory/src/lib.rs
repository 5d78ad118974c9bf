//! The directory: the people who work and ask in usm, and the groups records are assigned to.
//!
//! People and groups are what assignment, approvals, notifications and the console resolve to.
//! They live in the store's settings (so every store backend serves them) and in memory: they
//! are read on every write that assigns a record and on every request with a person's token.
//! Admins of a domain manage the people and groups of that domain; agents read them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{PoisonError, RwLock, RwLockReadGuard},
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use usm_model::{Actor, Domain, Role};
use usm_store::{Store, StoreError};

const PERSON_PREFIX: &str = "directory/person/";
const GROUP_PREFIX: &str = "directory/group/";

/// Most members one group may have.
pub const MAX_MEMBERS: usize = 1_000;
/// Most people or groups one page lists.
pub const MAX_PAGE: usize = 500;

/// Someone who works or asks in usm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Person {
    /// Stable id, e.g. `ann.lee`: lowercase letters, digits, `.`, `_`, `-`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The domains the person works or asks in; every domain when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>))]
    pub domains: Option<BTreeSet<Domain>>,
    /// The person's manager (a person id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// A very important person: routing and notifications may treat them first.
    #[serde(default)]
    pub vip: bool,
    /// The language their mail is written in (a BCP 47 tag such as `de` or `pt-BR`); the
    /// server's default templates when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// An inactive person keeps their history but cannot act, be assigned or join a group.
    pub active: bool,
    /// When the person was added.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When the person was last changed.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

impl Person {
    /// Whether the person works or asks in `domain`.
    pub fn in_domain(&self, domain: &Domain) -> bool {
        self.domains.as_ref().is_none_or(|d| d.contains(domain))
    }
}

/// A person to add.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewPerson {
    /// Stable id: 1–64 lowercase letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    pub id: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
    /// Domains; every domain when absent (only a global admin adds such a person).
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// The manager's person id.
    #[serde(default)]
    pub manager: Option<String>,
    /// A very important person.
    #[serde(default)]
    pub vip: bool,
    /// The language of their mail, a BCP 47 tag (`de`, `pt-BR`).
    #[serde(default)]
    pub locale: Option<String>,
}

/// Changes to a person; absent members stay as they are, `null` clears an optional one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PersonPatch {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// E-mail address (`null` clears it).
    #[serde(default, with = "double_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub email: Option<Option<String>>,
    /// Domains (`null`: every domain).
    #[serde(default, with = "double_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>))]
    pub domains: Option<Option<Vec<String>>>,
    /// Manager (`null` clears it).
    #[serde(default, with = "double_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub manager: Option<Option<String>>,
    /// A very important person.
    #[serde(default)]
    pub vip: Option<bool>,
    /// The language of their mail, a BCP 47 tag (`null` clears it).
    #[serde(default, with = "double_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub locale: Option<Option<String>>,
    /// `false` deactivates, `true` reactivates.
    #[serde(default)]
    pub active: Option<bool>,
}

/// A team in one domain that records are assigned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    /// Stable id, unique across domains, e.g. `it-network`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The domain whose records the group works.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub domain: Domain,
    /// Person ids.
    pub members: Vec<String>,
    /// When the group was made.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When the group was last changed.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

/// A group to make.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewGroup {
    /// Stable id, like a person's.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Its domain.
    pub domain: String,
    /// Person ids, each active and working in the domain.
    #[serde(default)]
    pub members: Vec<String>,
}

/// Changes to a group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupPatch {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// The whole new member list.
    #[serde(default)]
    pub members: Option<Vec<String>>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

/// Why a directory operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// A member of the input is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// JSON pointer of the member.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A person or group the input names does not exist, is inactive or is of another domain.
    #[error("{field}: {message}")]
    Reference {
        /// JSON pointer of the member.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such person or group (or one the caller may not see).
    #[error("{what} {id} does not exist")]
    NotFound {
        /// `person` or `group`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The id is taken.
    #[error("the id {0} is taken")]
    Taken(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> DirectoryError {
    DirectoryError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Default)]
struct Entries {
    people: BTreeMap<String, Person>,
    groups: BTreeMap<String, Group>,
}

/// The people and groups, loaded from the store once and kept in step with every change.
pub struct Directory {
    store: std::sync::Arc<dyn Store>,
    domains: Vec<Domain>,
    entries: RwLock<Option<Entries>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

fn valid_id(id: &str, field: &str) -> Result<(), DirectoryError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            "1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        ))
    }
}

fn valid_name(name: &str) -> Result<String, DirectoryError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(invalid("/name", "1-200 characters, no control characters"));
    }
    Ok(name.to_owned())
}

fn valid_email(email: Option<String>) -> Result<Option<String>, DirectoryError> {
    email
        .map(|email| {
            email_address::EmailAddress::parse_with_options(
                &email,
                email_address::Options::default().without_display_text(),
            )
            .map(|parsed| parsed.to_string())
            .map_err(|e| invalid("/email", format!("not an e-mail address: {e}")))
        })
        .transpose()
}

/// A well-formed BCP 47 language tag, as given; `/locale` otherwise.
fn valid_locale(locale: Option<String>) -> Result<Option<String>, DirectoryError> {
    locale
        .map(|tag| match language_tags::LanguageTag::parse(&tag) {
            Ok(parsed) if tag.len() <= 35 && parsed.primary_language().len() <= 3 => {
                Ok(parsed.as_str().to_owned())
            }
            _ => Err(invalid(
                "/locale",
                "a BCP 47 language tag such as de or pt-BR",
            )),
        })
        .transpose()
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, DirectoryError> {
    serde_json::to_vec(value).map_err(|e| {
        DirectoryError::Store(StoreError::Corrupt {
            what,
            detail: e.to_string(),
        })
    })
}

/// Whether `by` administers every domain of `scope` (`None`: the whole server).
fn administers(by: &Actor, scope: Option<&BTreeSet<Domain>>) -> bool {
    by.has_role(Role::Admin) && by.covers(scope)
}

/// Whether `by` may read people and groups of `scope`: those who work records in one of its
/// domains (a person of every domain is seen by all of them).
fn reads(by: &Actor, scope: Option<&BTreeSet<Domain>>) -> bool {
    by.works_records()
        && match (scope, &by.domains) {
            (_, None) | (None, _) => true,
            (Some(scope), Some(own)) => !scope.is_disjoint(own),
        }
}

impl Directory {
    /// A directory over `store`; `domains` are the server's. Entries load on first use.
    pub fn new(store: std::sync::Arc<dyn Store>, domains: Vec<Domain>) -> Self {
        Self {
            store,
            domains,
            entries: RwLock::new(None),
        }
    }

    fn load(&self) -> Result<Entries, DirectoryError> {
        let corrupt = |what: &'static str, e: serde_json::Error| {
            DirectoryError::Store(StoreError::Corrupt {
                what,
                detail: e.to_string(),
            })
        };
        let mut entries = Entries::default();
        for (_, bytes) in self.store.settings(PERSON_PREFIX)? {
            let person: Person =
                serde_json::from_slice(&bytes).map_err(|e| corrupt("person", e))?;
            entries.people.insert(person.id.clone(), person);
        }
        for (_, bytes) in self.store.settings(GROUP_PREFIX)? {
            let group: Group = serde_json::from_slice(&bytes).map_err(|e| corrupt("group", e))?;
            entries.groups.insert(group.id.clone(), group);
        }
        Ok(entries)
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Option<Entries>>, DirectoryError> {
        {
            let guard = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            if guard.is_some() {
                return Ok(guard);
            }
        }
        let loaded = self.load()?;
        let mut guard = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(loaded);
        }
        drop(guard);
        Ok(self.entries.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Forgets what was read, so that the next read sees the changes other nodes sharing the
    /// store made.
    pub fn reload(&self) {
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Runs `change` on the entries under the write lock, so checks and the write agree.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut Entries) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        drop(self.read()?);
        let mut guard = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let entries = guard.get_or_insert_with(Entries::default);
        change(entries)
    }

    fn domain_set(
        &self,
        names: Option<Vec<String>>,
    ) -> Result<Option<BTreeSet<Domain>>, DirectoryError> {
        names
            .map(|names| {
                if names.is_empty() {
                    return Err(invalid(
                        "/domains",
                        "name at least one domain, or leave it out",
                    ));
                }
                names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        Domain::new(name.as_str())
                            .ok()
                            .filter(|d| self.domains.contains(d))
                            .ok_or_else(|| {
                                invalid(
                                    format!("/domains/{i}"),
                                    format!(
                                        "unknown domain {:?}",
                                        name.chars().take(64).collect::<String>()
                                    ),
                                )
                            })
                    })
                    .collect()
            })
            .transpose()
    }

    // ---- people ----

    /// Adds a person. `taken` says whether another principal already uses the id as its name.
    pub fn create_person(
        &self,
        by: &Actor,
        new: NewPerson,
        taken: impl Fn(&str) -> bool,
    ) -> Result<Person, DirectoryError> {
        valid_id(&new.id, "/id")?;
        let name = valid_name(&new.name)?;
        let email = valid_email(new.email)?;
        let locale = valid_locale(new.locale)?;
        let domains = self.domain_set(new.domains)?;
        if !administers(by, domains.as_ref()) {
            return Err(DirectoryError::Forbidden(
                "adding a person needs the admin role in each of the person's domains (a person of every domain: a global admin)".into(),
            ));
        }
        if taken(&new.id) {
            return Err(DirectoryError::Taken(new.id));
        }
        self.change(|entries| {
            if entries.people.contains_key(&new.id) {
                return Err(DirectoryError::Taken(new.id));
            }
            if let Some(manager) = &new.manager {
                check_manager(entries, manager, &new.id)?;
            }
            let now = Timestamp::now();
            let person = Person {
                id: new.id,
                name,
                email,
                domains,
                manager: new.manager,
                vip: new.vip,
                locale,
                active: true,
                created_at: now,
                updated_at: now,
            };
            self.put_person(entries, person)
        })
    }

    fn put_person(&self, entries: &mut Entries, person: Person) -> Result<Person, DirectoryError> {
        self.put(&format!("{PERSON_PREFIX}{}", person.id), "person", &person)?;
        entries.people.insert(person.id.clone(), person.clone());
        Ok(person)
    }

    fn put(
        &self,
        key: &str,
        what: &'static str,
        value: &impl Serialize,
    ) -> Result<(), DirectoryError> {
        Ok(self
            .store
            .write_settings(&[(key.to_owned(), encode(what, value)?)], &[])?)
    }

    /// A page of the people `by` may read, by id, after `after`.
    pub fn people(
        &self,
        by: &Actor,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Person>, DirectoryError> {
        if !by.works_records() {
            return Err(DirectoryError::Forbidden(
                "the directory is read by agents and admins".into(),
            ));
        }
        let guard = self.read()?;
        let Some(entries) = guard.as_ref() else {
            return Ok(Vec::new());
        };
        Ok(entries
            .people
            .range::<str, _>((
                after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
                std::ops::Bound::Unbounded,
            ))
            .map(|(_, p)| p)
            .filter(|p| reads(by, p.domains.as_ref()))
            .take(limit.clamp(1, MAX_PAGE))
            .cloned()
            .collect())
    }

    /// A person `by` may read.
    pub fn person(&self, by: &Actor, id: &str) -> Result<Person, DirectoryError> {
        let guard = self.read()?;
        guard
            .as_ref()
            .and_then(|e| e.people.get(id))
            .filter(|p| reads(by, p.domains.as_ref()) || by.name == p.id)
            .cloned()
            .ok_or_else(|| not_found("person", id))
    }

    /// Changes a person; deactivating keeps them (and their history) but stops their tokens.
    pub fn update_person(
        &self,
        by: &Actor,
        id: &str,
        patch: PersonPatch,
    ) -> Result<Person, DirectoryError> {
        let name = patch.name.as_deref().map(valid_name).transpose()?;
        let email = patch.email.map(valid_email).transpose()?;
        let locale = patch.locale.map(valid_locale).transpose()?;
        let domains = patch.domains.map(|d| self.domain_set(d)).transpose()?;
        self.change(|entries| {
            let mut person = entries
                .people
                .get(id)
                .filter(|p| reads(by, p.domains.as_ref()))
                .cloned()
                .ok_or_else(|| not_found("person", id))?;
            if !administers(by, person.domains.as_ref()) {
                return Err(DirectoryError::Forbidden(
                    "changing a person needs the admin role in each of their domains".into(),
                ));
            }
            if let Some(domains) = domains {
                if !administers(by, domains.as_ref()) {
                    return Err(DirectoryError::Forbidden(
                        "a person's new domains must be among yours".into(),
                    ));
                }
                person.domains = domains;
            }
            if let Some(manager) = patch.manager {
                if let Some(manager) = &manager {
                    check_manager(entries, manager, id)?;
                }
                person.manager = manager;
            }
            if let Some(name) = name {
                person.name = name;
            }
            if let Some(email) = email {
                person.email = email;
            }
            if let Some(vip) = patch.vip {
                person.vip = vip;
            }
            if let Some(locale) = locale {
                person.locale = locale;
            }
            if let Some(active) = patch.active {
                person.active = active;
            }
            person.updated_at = Timestamp::now();
            self.put_person(entries, person)
        })
    }

    /// Deactivates a person: their history stays, their tokens stop working, and no record can
    /// be assigned to them. They stay members of their groups, so reactivating restores them.
    pub fn deactivate_person(&self, by: &Actor, id: &str) -> Result<Person, DirectoryError> {
        self.update_person(
            by,
            id,
            PersonPatch {
                active: Some(false),
                ..PersonPatch::default()
            },
        )
    }

    /// The person with `id` if they are active (for tokens, assignment and approvals).
    pub fn active_person(&self, id: &str) -> Option<Person> {
        self.read()
            .ok()?
            .as_ref()?
            .people
            .get(id)
            .filter(|p| p.active)
            .cloned()
    }

    /// The active person whose e-mail address is `email` (compared without regard to case).
    pub fn active_person_by_email(&self, email: &str) -> Option<Person> {
        self.read()
            .ok()?
            .as_ref()?
            .people
            .values()
            .find(|p| {
                p.active
                    && p.email
                        .as_deref()
                        .is_some_and(|own| own.eq_ignore_ascii_case(email))
            })
            .cloned()
    }

    /// Whether a person has the id `id`, active or not.
    pub fn has_person(&self, id: &str) -> bool {
        self.read()
            .ok()
            .and_then(|g| g.as_ref().map(|e| e.people.contains_key(id)))
            .unwrap_or(false)
    }

    // ---- groups ----

    /// Makes a group in a domain `by` administers.
    pub fn create_group(&self, by: &Actor, new: NewGroup) -> Result<Group, DirectoryError> {
        valid_id(&new.id, "/id")?;
        let name = valid_name(&new.name)?;
        let domain = Domain::new(new.domain.as_str())
            .ok()
            .filter(|d| self.domains.contains(d))
            .ok_or_else(|| {
                invalid(
                    "/domain",
                    format!("unknown domain {:?}", truncate(&new.domain)),
                )
            })?;
        if !administers(by, Some(&BTreeSet::from([domain.clone()]))) {
            return Err(DirectoryError::Forbidden(format!(
                "making a group in {domain} needs the admin role there"
            )));
        }
        self.change(|entries| {
            if entries.groups.contains_key(&new.id) {
                return Err(DirectoryError::Taken(new.id));
            }
            let members = check_members(entries, &domain, new.members)?;
            let now = Timestamp::now();
            let group = Group {
                id: new.id,
                name,
                domain,
                members,
                created_at: now,
                updated_at: now,
            };
            self.put_group(entries, group)
        })
    }

    fn put_group(&self, entries: &mut Entries, group: Group) -> Result<Group, DirectoryError> {
        self.put(&format!("{GROUP_PREFIX}{}", group.id), "group", &group)?;
        entries.groups.insert(group.id.clone(), group.clone());
        Ok(group)
    }

    /// The groups `by` may read (of its domains), by id; only `domain`'s when given.
    pub fn groups(
        &self,
        by: &Actor,
        domain: Option<&Domain>,
    ) -> Result<Vec<Group>, DirectoryError> {
        if !by.works_records() {
            return Err(DirectoryError::Forbidden(
                "the directory is read by agents and admins".into(),
            ));
        }
        let guard = self.read()?;
        Ok(guard
            .as_ref()
            .map(|e| {
                e.groups
                    .values()
                    .filter(|g| by.in_domain(&g.domain) && domain.is_none_or(|d| d == &g.domain))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A group `by` may read.
    pub fn group(&self, by: &Actor, id: &str) -> Result<Group, DirectoryError> {
        let guard = self.read()?;
        guard
            .as_ref()
            .and_then(|e| e.groups.get(id))
            .filter(|g| by.works_records() && by.in_domain(&g.domain))
            .cloned()
            .ok_or_else(|| not_found("group", id))
    }

    /// Renames a group or replaces its members.
    pub fn update_group(
        &self,
        by: &Actor,
        id: &str,
        patch: GroupPatch,
    ) -> Result<Group, DirectoryError> {
        let name = patch.name.as_deref().map(valid_name).transpose()?;
        self.change(|entries| {
            let mut group = administered_group(entries, by, id, "changing")?;
            if let Some(members) = patch.members {
                group.members = check_members(entries, &group.domain, members)?;
            }
            if let Some(name) = name {
                group.name = name;
            }
            group.updated_at = Timestamp::now();
            self.put_group(entries, group)
        })
    }

    /// Removes a group. Records that named it keep the name in their history.
    pub fn delete_group(&self, by: &Actor, id: &str) -> Result<Group, DirectoryError> {
        self.change(|entries| {
            let group = administered_group(entries, by, id, "removing")?;
            self.store
                .write_settings(&[], &[format!("{GROUP_PREFIX}{id}")])?;
            entries.groups.remove(id);
            Ok(group)
        })
    }

    /// The group `id` of `domain`, if there is one.
    pub fn group_in(&self, domain: &Domain, id: &str) -> Option<Group> {
        self.read()
            .ok()?
            .as_ref()?
            .groups
            .get(id)
            .filter(|g| &g.domain == domain)
            .cloned()
    }

    /// The ids of the groups of `domain` that `person` is a member of.
    pub fn groups_of(&self, person: &str, domain: &Domain) -> Vec<String> {
        self.read()
            .ok()
            .and_then(|guard| {
                guard.as_ref().map(|e| {
                    e.groups
                        .values()
                        .filter(|g| &g.domain == domain && g.members.iter().any(|m| m == person))
                        .map(|g| g.id.clone())
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Checks a record's watchers: each an active person of `domain`. Returns the JSON pointer
    /// of the first that is not, and why.
    pub fn check_watchers(
        &self,
        domain: &Domain,
        watchers: &[&str],
    ) -> Result<(), (String, String)> {
        for (n, id) in watchers.iter().enumerate() {
            let known = self.active_person(id).filter(|p| p.in_domain(domain));
            if known.is_none() {
                return Err((
                    format!("/fields/watchers/{n}"),
                    format!(
                        "{} is not an active person of domain {domain}",
                        truncate(id)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks an assignment on a record of `domain`: the group exists in the domain, the assignee
    /// is an active person of the domain and, with a group, one of its members. Returns the JSON
    /// pointer of the offending field and why.
    pub fn check_assignment(
        &self,
        domain: &Domain,
        group: Option<&str>,
        assignee: Option<&str>,
    ) -> Result<(), (&'static str, String)> {
        let group = match group {
            Some(id) => Some(self.group_in(domain, id).ok_or_else(|| {
                (
                    "/fields/assignment_group",
                    format!("{} is not a group of domain {domain}", truncate(id)),
                )
            })?),
            None => None,
        };
        let Some(assignee) = assignee else {
            return Ok(());
        };
        let bad = |message: String| ("/fields/assignee", message);
        let person = self
            .active_person(assignee)
            .ok_or_else(|| bad(format!("{} is not an active person", truncate(assignee))))?;
        if !person.in_domain(domain) {
            return Err(bad(format!(
                "{} does not work in domain {domain}",
                person.id
            )));
        }
        if let Some(group) = group
            && !group.members.contains(&person.id)
        {
            return Err(bad(format!(
                "{} is not a member of {}",
                person.id, group.id
            )));
        }
        Ok(())
    }
}

/// The group `id` if `by` reads it, and only if `by` also administers its domain (else
/// forbidden, saying what it was `doing`).
fn administered_group(
    entries: &Entries,
    by: &Actor,
    id: &str,
    doing: &str,
) -> Result<Group, DirectoryError> {
    let group = entries
        .groups
        .get(id)
        .filter(|g| by.works_records() && by.in_domain(&g.domain))
        .cloned()
        .ok_or_else(|| not_found("group", id))?;
    if !administers(by, Some(&BTreeSet::from([group.domain.clone()]))) {
        return Err(DirectoryError::Forbidden(format!(
            "{doing} a group of {} needs the admin role there",
            group.domain
        )));
    }
    Ok(group)
}

fn not_found(what: &'static str, id: &str) -> DirectoryError {
    DirectoryError::NotFound {
        what,
        id: truncate(id),
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

fn reference(field: impl Into<String>, message: impl Into<String>) -> DirectoryError {
    DirectoryError::Reference {
        field: field.into(),
        message: message.into(),
    }
}

fn check_manager(entries: &Entries, manager: &str, of: &str) -> Result<(), DirectoryError> {
    if manager == of {
        return Err(invalid("/manager", "a person does not manage themself"));
    }
    match entries.people.get(manager) {
        Some(person) if person.active => Ok(()),
        _ => Err(reference(
            "/manager",
            format!("{} is not an active person", truncate(manager)),
        )),
    }
}

fn check_members(
    entries: &Entries,
    domain: &Domain,
    members: Vec<String>,
) -> Result<Vec<String>, DirectoryError> {
    if members.len() > MAX_MEMBERS {
        return Err(invalid(
            "/members",
            format!("at most {MAX_MEMBERS} members"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, member) in members.iter().enumerate() {
        let field = format!("/members/{i}");
        match entries.people.get(member) {
            Some(person) if person.active && person.in_domain(domain) => {}
            Some(person) if !person.active => {
                return Err(reference(field, format!("{} is inactive", person.id)));
            }
            Some(person) => {
                return Err(reference(
                    field,
                    format!("{} does not work in domain {domain}", person.id),
                ));
            }
            None => {
                return Err(reference(
                    field,
                    format!("{} is not a person", truncate(member)),
                ));
            }
        }
        if !seen.insert(member.as_str()) {
            return Err(invalid(field, format!("{member} is listed twice")));
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests;
