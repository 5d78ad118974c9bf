//! Who may administer what, API tokens and the audit log.
//!
//! Every role, admin included, acts within its token's domains. An admin manages what lies
//! within its domains (tokens, module enablement, webhooks, automations, the audit entries that
//! concern them); only a global admin — a token without a domain restriction — manages what is
//! server-wide (module bundles, workflows). The decisions live here, so every route and every
//! caller of the engine applies the same rules.
//!
//! Tokens are stored as SHA-256 hashes (the secret is shown once, at creation) with a unique
//! name, roles, domains and an optional expiry; every admin action leaves an audit entry with
//! actor, time, the domains it concerns and before/after.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, PoisonError, RwLock},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use usm_model::{Actor, Domain, ErrorCode, Role, Timestamp};
use usm_store::{Store, StoreError};

const TOKEN_PREFIX: &str = "token/";

/// Why a request could not be authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("this route needs an `Authorization: Bearer <token>` header")]
    Missing,
    /// The token is unknown or revoked.
    #[error("the token is not valid")]
    Invalid,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token's person was deactivated.
    #[error("the token's person is inactive")]
    Inactive,
}

/// Why an actor may not do what it asked: the route exists for its role, not for its domains
/// or not without the admin role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

fn domain_list(domains: &BTreeSet<Domain>) -> String {
    let names: Vec<&str> = domains.iter().map(Domain::as_str).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The scope of an object that applies to `domains`, where none means every domain.
pub fn scope_of<'a>(domains: impl IntoIterator<Item = &'a Domain>) -> Option<BTreeSet<Domain>> {
    let domains: BTreeSet<Domain> = domains.into_iter().cloned().collect();
    (!domains.is_empty()).then_some(domains)
}

/// Allows `actor` to administer what concerns `scope` (`None`: every domain, the whole server):
/// it holds the admin role and its domains include all of `scope`.
pub fn admin_over(actor: &Actor, scope: Option<&BTreeSet<Domain>>) -> Result<(), Forbidden> {
    if !actor.has_role(Role::Admin) {
        return Err(Forbidden("this needs the admin role".into()));
    }
    if actor.covers(scope) {
        return Ok(());
    }
    let own = actor.domains.as_ref().map(domain_list).unwrap_or_default();
    Err(Forbidden(match scope {
        None => format!(
            "{} administers only domains {own}; name domains among them",
            actor.name
        ),
        Some(scope) => format!(
            "{} administers only domains {own}, not {}",
            actor.name,
            domain_list(
                &scope
                    .iter()
                    .filter(|d| !actor.in_domain(d))
                    .cloned()
                    .collect()
            )
        ),
    }))
}

/// Allows only a global admin (no domain restriction) to change what is server-wide: module
/// bundles, workflows, settings.
pub fn global_admin(actor: &Actor, what: &str) -> Result<(), Forbidden> {
    if !actor.has_role(Role::Admin) {
        return Err(Forbidden("this needs the admin role".into()));
    }
    if !actor.is_global() {
        return Err(Forbidden(format!(
            "{what} is server-wide: it needs an admin token without a domain restriction"
        )));
    }
    Ok(())
}

/// Whether an admin listing or reading shows `actor` an object of `scope`.
pub fn admin_sees(actor: &Actor, scope: Option<&BTreeSet<Domain>>) -> bool {
    admin_over(actor, scope).is_ok()
}

/// Token names the server's own actors use; no token can be minted with one of them, so
/// history and audit entries naming them cannot be forged.
fn reserved_name(name: &str) -> bool {
    matches!(name, "system" | BOOTSTRAP_NAME | "config" | "anonymous")
        || name.starts_with("module:")
        || name.starts_with("automation:")
}

/// The name of the bootstrap admin token (`admin_token`, `USM_ADMIN_TOKEN` or the one printed
/// at first start); no other token can take it.
pub const BOOTSTRAP_NAME: &str = "admin";

/// Why a token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A member of the request is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The member.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No token with that id (or none the caller may see).
    #[error("no token {0}")]
    NotFound(String),
    /// Another token (or a person, whose id is their tokens' principal) has that name.
    #[error("a token or person named {0:?} exists; principals' names are unique")]
    NameTaken(String),
    /// The person named is not an active person (or not of the token's domains).
    #[error("{field}: {message}")]
    Reference {
        /// The member.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The caller may not do this.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    /// The stable code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid { .. } => ErrorCode::InvalidInput,
            Self::NotFound(_) => ErrorCode::TokenNotFound,
            Self::NameTaken(_) => ErrorCode::TokenNameTaken,
            Self::Reference { .. } => ErrorCode::UnknownReference,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::Store(_) => ErrorCode::Internal,
        }
    }
}

/// A token to create.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewToken {
    /// The principal the token acts as, recorded in history (e.g. `alice`, `monitoring`);
    /// unique among tokens. `system`, `admin`, `config`, `anonymous`, `module:…` and
    /// `automation:…` are the server's own.
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// The domains its roles apply in; every domain when absent.
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// When it stops working.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<Timestamp>,
    /// The person the token belongs to: the actor is then that person (history, approvals,
    /// requester, assignee), and the token stops working when the person is deactivated. A
    /// person may hold several tokens; `name` then only labels the token.
    #[serde(default)]
    pub person: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    id: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    person: Option<String>,
    roles: Vec<Role>,
    domains: Option<BTreeSet<Domain>>,
    expires_at: Option<Timestamp>,
    created_at: Timestamp,
    created_by: String,
    hash: String,
}

/// A token as listed: everything but the secret.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    /// The token's id (not its secret).
    pub id: String,
    /// Its label, and the principal it acts as unless it belongs to a person.
    pub name: String,
    /// The person it belongs to and acts as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Its domains; every domain when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>))]
    pub domains: Option<BTreeSet<Domain>>,
    /// When it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<Timestamp>,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// Who created it.
    pub created_by: String,
}

impl From<&TokenRecord> for TokenInfo {
    fn from(record: &TokenRecord) -> Self {
        Self {
            id: record.id.clone(),
            name: record.name.clone(),
            person: record.person.clone(),
            roles: record.roles.clone(),
            domains: record.domains.clone(),
            expires_at: record.expires_at,
            created_at: record.created_at,
            created_by: record.created_by.clone(),
        }
    }
}

/// The hash a token is known by: the hex SHA-256 of its secret.
pub fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], TokenError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Invalid {
        field: "token",
        message: format!("no randomness available: {e}"),
    })?;
    Ok(bytes)
}

/// The API tokens, cached in memory by hash and persisted in the store.
pub struct Tokens {
    store: Arc<dyn Store>,
    domains: Vec<Domain>,
    directory: Arc<usm_directory::Directory>,
    by_hash: RwLock<HashMap<String, TokenRecord>>,
}

fn load_tokens(store: &dyn Store) -> Result<HashMap<String, TokenRecord>, StoreError> {
    let mut by_hash = HashMap::new();
    for (key, bytes) in store.settings(TOKEN_PREFIX)? {
        let record: TokenRecord =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: "token",
                detail: format!("{key}: {e}"),
            })?;
        by_hash.insert(record.hash.clone(), record);
    }
    Ok(by_hash)
}

impl Tokens {
    /// Loads the stored tokens; `domains` are the server's domains (token scopes must be among them).
    pub fn open(
        store: Arc<dyn Store>,
        domains: Vec<Domain>,
        directory: Arc<usm_directory::Directory>,
    ) -> Result<Self, StoreError> {
        let by_hash = RwLock::new(load_tokens(store.as_ref())?);
        Ok(Self {
            store,
            domains,
            directory,
            by_hash,
        })
    }

    /// Reads the tokens again, for the ones other nodes sharing the store created or revoked.
    /// Holds the tokens while reading, so a token this node writes meanwhile is not lost.
    pub fn reload(&self) -> Result<(), StoreError> {
        let mut tokens = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        *tokens = load_tokens(self.store.as_ref())?;
        Ok(())
    }

    /// Whether a token acts under `name` of its own (not as a person): a person may not take
    /// that id, or the two principals would be one in history.
    pub fn principal_named(&self, name: &str) -> bool {
        self.by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|t| t.person.is_none() && t.name == name)
    }

    /// Whether any token exists (a fresh data directory has none).
    pub fn is_empty(&self) -> bool {
        self.by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Resolves a bearer secret to the actor it stands for: the token's id and name, roles and
    /// domains.
    pub fn authenticate(&self, secret: &str) -> Result<Actor, AuthError> {
        self.authenticate_hash(&secret_hash(secret))
    }

    /// Resolves a token by its secret's hash ([`secret_hash`]): what a console session keeps,
    /// so the secret itself is stored nowhere and revoking the token ends the session.
    pub fn authenticate_hash(&self, hash: &str) -> Result<Actor, AuthError> {
        let tokens = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        let record = tokens.get(hash).ok_or(AuthError::Invalid)?;
        if record.expires_at.is_some_and(|at| at <= Timestamp::now()) {
            return Err(AuthError::Expired);
        }
        let principal = match &record.person {
            Some(person) => self
                .directory
                .active_person(person)
                .map(|p| p.id)
                .ok_or(AuthError::Inactive)?,
            None => record.name.clone(),
        };
        let mut actor = Actor::new(principal, record.roles.clone()).with_id(record.id.clone());
        actor.domains = record.domains.clone();
        Ok(actor)
    }

    /// Creates a token with a fresh random secret; returns the secret, which is never shown
    /// again. `by` must be an admin whose domains include all of the new token's.
    pub fn create(&self, by: &Actor, new: NewToken) -> Result<(TokenInfo, String), TokenError> {
        let id = hex(&random_bytes::<6>()?);
        let secret = random_secret(&id)?;
        let info = self.insert(by, new, id, &secret, Minting::Api)?;
        Ok((info, secret))
    }

    /// Makes `secret` (the operator's choice, or a fresh random one when `None`) the bootstrap
    /// admin token, replacing an earlier one: the token named `admin`, global, never expiring.
    /// Returns the secret.
    pub fn bootstrap(&self, by: &Actor, secret: Option<&str>) -> Result<String, TokenError> {
        let id = hex(&random_bytes::<6>()?);
        let secret = match secret {
            Some(secret) => {
                let printable = secret.bytes().all(|b| b.is_ascii_graphic());
                if secret.len() < 32 || secret.len() > 512 || !printable {
                    return Err(TokenError::Invalid {
                        field: "token",
                        message:
                            "an operator-chosen token must be 32 to 512 printable ASCII characters"
                                .into(),
                    });
                }
                secret.to_owned()
            }
            None => random_secret(&id)?,
        };
        let admin = NewToken {
            name: BOOTSTRAP_NAME.into(),
            roles: vec![Role::Admin],
            domains: None,
            expires_at: None,
            person: None,
        };
        self.insert(by, admin, id, &secret, Minting::Bootstrap)?;
        Ok(secret)
    }

    fn insert(
        &self,
        by: &Actor,
        new: NewToken,
        id: String,
        secret: &str,
        minting: Minting,
    ) -> Result<TokenInfo, TokenError> {
        let name = new.name.trim();
        let name_ok = (1..=100).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || "._-@:".contains(c));
        if !name_ok {
            return Err(TokenError::Invalid {
                field: "/name",
                message: "1-100 letters, digits or . _ - @ :".into(),
            });
        }
        if minting == Minting::Api && reserved_name(name) {
            return Err(TokenError::Invalid {
                field: "/name",
                message: format!("{name:?} is reserved for the server's own actors"),
            });
        }
        if new.roles.is_empty() {
            return Err(TokenError::Invalid {
                field: "/roles",
                message: "give at least one role".into(),
            });
        }
        let domains = new
            .domains
            .map(|names| {
                names
                    .iter()
                    .map(|n| {
                        Domain::new(n.as_str())
                            .ok()
                            .filter(|d| self.domains.contains(d))
                            .ok_or_else(|| TokenError::Invalid {
                                field: "/domains",
                                message: format!("unknown domain {n:?}"),
                            })
                    })
                    .collect::<Result<BTreeSet<_>, _>>()
            })
            .transpose()?;
        if new.expires_at.is_some_and(|at| at <= Timestamp::now()) {
            return Err(TokenError::Invalid {
                field: "/expires_at",
                message: "must be in the future".into(),
            });
        }
        let domains = match &new.person {
            Some(person) => self.person_scope(person, domains)?,
            None if self.directory.has_person(name) => {
                return Err(TokenError::NameTaken(name.to_owned()));
            }
            None => domains,
        };
        if minting == Minting::Api {
            admin_over(by, domains.as_ref())?;
        }
        let record = TokenRecord {
            id,
            name: name.to_owned(),
            person: new.person,
            roles: new.roles,
            domains,
            expires_at: new.expires_at,
            created_at: Timestamp::now(),
            created_by: by.name.clone(),
            hash: secret_hash(secret),
        };
        let encoded = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt {
            what: "token",
            detail: e.to_string(),
        })?;
        // Held across the check and the write, so two requests cannot both take a name.
        let mut tokens = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        let same_name = tokens
            .values()
            .find(|t| t.name == record.name)
            .map(|t| (t.id.clone(), t.hash.clone()));
        let replaced = match (same_name, minting) {
            (Some(_), Minting::Api) => return Err(TokenError::NameTaken(record.name)),
            (Some((id, hash)), Minting::Bootstrap) => vec![(format!("{TOKEN_PREFIX}{id}"), hash)],
            (None, _) => Vec::new(),
        };
        let deletes: Vec<String> = replaced.iter().map(|(key, _)| key.clone()).collect();
        self.store.write_settings(
            &[(format!("{TOKEN_PREFIX}{}", record.id), encoded)],
            &deletes,
        )?;
        for (_, hash) in &replaced {
            tokens.remove(hash);
        }
        let info = TokenInfo::from(&record);
        tokens.insert(record.hash.clone(), record);
        Ok(info)
    }

    /// The domains of a token of `person`: within the person's own (theirs when none are given).
    fn person_scope(
        &self,
        person: &str,
        domains: Option<BTreeSet<Domain>>,
    ) -> Result<Option<BTreeSet<Domain>>, TokenError> {
        let person = self
            .directory
            .active_person(person)
            .ok_or_else(|| TokenError::Reference {
                field: "/person",
                message: format!(
                    "{} is not an active person",
                    person.chars().take(64).collect::<String>()
                ),
            })?;
        match (domains, person.domains) {
            (domains, None) => Ok(domains),
            (None, own) => Ok(own),
            (Some(asked), Some(own)) if asked.is_subset(&own) => Ok(Some(asked)),
            (Some(_), Some(own)) => Err(TokenError::Reference {
                field: "/domains",
                message: format!("{} works only in {}", person.id, domain_list(&own)),
            }),
        }
    }

    /// The tokens `by` may see — those whose domains lie within its own — without secrets, by
    /// creation time.
    pub fn list(&self, by: &Actor) -> Vec<TokenInfo> {
        let mut all: Vec<TokenInfo> = self
            .by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|t| admin_sees(by, t.domains.as_ref()))
            .map(TokenInfo::from)
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    /// Revokes a token `by` may see: it stops working at once. A token outside `by`'s domains
    /// is not found, like one that does not exist.
    pub fn revoke(&self, by: &Actor, id: &str) -> Result<TokenInfo, TokenError> {
        let mut tokens = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        let hash = tokens
            .values()
            .find(|t| t.id == id && admin_sees(by, t.domains.as_ref()))
            .map(|t| t.hash.clone())
            .ok_or_else(|| TokenError::NotFound(id.chars().take(64).collect()))?;
        self.store
            .write_settings(&[], &[format!("{TOKEN_PREFIX}{id}")])?;
        let record = tokens
            .remove(&hash)
            .ok_or_else(|| TokenError::NotFound(id.to_owned()))?;
        Ok(TokenInfo::from(&record))
    }
}

/// How a token comes to be: through the API (checked against the caller's rights, reserved
/// names refused) or as the bootstrap admin token (which replaces its predecessor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Minting {
    Api,
    Bootstrap,
}

/// A fresh secret; it starts with the token's id, so a leaked secret names its token.
fn random_secret(id: &str) -> Result<String, TokenError> {
    Ok(format!(
        "usm_{id}_{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>()?)
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One audit entry: who did what to what, when, in which domains, with the state before and
/// after.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Position in the audit log.
    #[serde(default)]
    pub seq: u64,
    /// When.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// Who: the principal's name.
    pub actor: String,
    /// Who: the principal's id (a token's id, or the name of a server actor).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor_id: String,
    /// What, e.g. `module.install`, `module.enable`, `token.create`.
    pub action: String,
    /// The object, e.g. `module:itil4`, `token:3fa2c1`.
    pub target: String,
    /// The domains the action concerns; absent for a server-wide action, which only global
    /// admins see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>))]
    pub domains: Option<BTreeSet<Domain>>,
    /// The state before, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub before: Option<Value>,
    /// The state after, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub after: Option<Value>,
}

/// Appends an audit entry (durably) for an action concerning `scope` (`None`: server-wide).
pub fn audit(
    store: &dyn Store,
    actor: &Actor,
    action: &str,
    target: &str,
    scope: Option<&BTreeSet<Domain>>,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<(), StoreError> {
    let entry = AuditEntry {
        seq: 0,
        at: Timestamp::now(),
        actor: actor.name.clone(),
        actor_id: actor.id.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        domains: scope.cloned(),
        before,
        after,
    };
    let bytes = serde_json::to_vec(&entry).map_err(|e| StoreError::Corrupt {
        what: "audit entry",
        detail: e.to_string(),
    })?;
    store.append_audit(&bytes)?;
    Ok(())
}

/// The audit entries after `after` that `actor` may see (those whose domains lie within its
/// own), oldest first, at most `limit`.
pub fn audit_entries(
    store: &dyn Store,
    actor: &Actor,
    after: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    /// Entries read at once while skipping those the actor may not see.
    const BATCH: usize = 1000;
    let mut entries = Vec::new();
    let mut position = after;
    while entries.len() < limit {
        let batch = store.audit_after(position, BATCH)?;
        let exhausted = batch.len() < BATCH;
        for (seq, bytes) in batch {
            position = seq;
            let entry = serde_json::from_slice::<AuditEntry>(&bytes)
                .map(|entry| AuditEntry { seq, ..entry })
                .map_err(|e| StoreError::Corrupt {
                    what: "audit entry",
                    detail: e.to_string(),
                })?;
            if admin_sees(actor, entry.domains.as_ref()) {
                entries.push(entry);
                if entries.len() == limit {
                    break;
                }
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use usm_store::MemoryStore;

    use super::*;

    fn domains(names: &[&str]) -> BTreeSet<Domain> {
        names.iter().map(|n| Domain::new(*n).unwrap()).collect()
    }

    fn hr_admin() -> Actor {
        Actor::new("hana", [Role::Admin]).in_domains(domains(&["hr"]))
    }

    fn new_token(name: &str, scope: Option<&[&str]>) -> NewToken {
        NewToken {
            name: name.into(),
            roles: vec![Role::Agent],
            domains: scope.map(|names| names.iter().map(|n| (*n).to_owned()).collect()),
            expires_at: None,
            person: None,
        }
    }

    #[test]
    fn a_scoped_admin_administers_only_within_its_domains() {
        let root = Actor::new("root", [Role::Admin]);
        let hana = hr_admin();
        let agent = Actor::new("ann", [Role::Agent]);
        let (hr, it_hr) = (domains(&["hr"]), domains(&["it", "hr"]));
        assert!(admin_over(&root, None).is_ok());
        assert!(admin_over(&hana, Some(&hr)).is_ok());
        assert!(admin_over(&hana, Some(&domains(&[]))).is_ok());
        let denied = admin_over(&hana, Some(&it_hr)).unwrap_err();
        assert!(denied.0.ends_with("not it"), "{denied}");
        assert!(admin_over(&hana, None).is_err(), "every domain is not hr");
        assert!(admin_over(&agent, None).is_err(), "the role is needed");
        assert!(global_admin(&root, "x").is_ok());
        assert!(global_admin(&hana, "x").is_err());
        assert!(global_admin(&agent, "x").is_err());
    }

    #[test]
    fn tokens_are_minted_listed_and_revoked_within_the_callers_domains() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let all: Vec<Domain> = domains(&["it", "hr"]).into_iter().collect();
        let directory = Arc::new(usm_directory::Directory::new(
            Arc::clone(&store),
            all.clone(),
        ));
        let tokens = Tokens::open(store, all, directory).unwrap();
        let root = Actor::new("root", [Role::Admin]);
        let hana = hr_admin();
        let (it_agent, _) = tokens
            .create(&root, new_token("ivan", Some(&["it"])))
            .unwrap();
        assert!(matches!(
            tokens.create(&hana, new_token("x", None)),
            Err(TokenError::Forbidden(_))
        ));
        assert!(matches!(
            tokens.create(&hana, new_token("x", Some(&["it"]))),
            Err(TokenError::Forbidden(_))
        ));
        let (hr_agent, _) = tokens
            .create(&hana, new_token("hal", Some(&["hr"])))
            .unwrap();
        assert!(matches!(
            tokens.create(&root, new_token("hal", Some(&["it"]))),
            Err(TokenError::NameTaken(_))
        ));
        for reserved in ["system", "admin", "module:x", "automation:y"] {
            assert!(
                matches!(
                    tokens.create(&root, new_token(reserved, None)),
                    Err(TokenError::Invalid { field: "/name", .. })
                ),
                "{reserved}"
            );
        }
        let seen: Vec<String> = tokens.list(&hana).into_iter().map(|t| t.name).collect();
        assert_eq!(seen, ["hal"]);
        assert_eq!(tokens.list(&root).len(), 2);
        assert!(matches!(
            tokens.revoke(&hana, &it_agent.id),
            Err(TokenError::NotFound(_))
        ));
        assert!(tokens.revoke(&hana, &hr_agent.id).is_ok());

        // The bootstrap token may take its reserved name, and a new one replaces the old.
        let first = tokens.bootstrap(&root, None).unwrap();
        let second = tokens
            .bootstrap(&root, Some("an-operator-chosen-secret-of-32-chars"))
            .unwrap();
        assert_eq!(tokens.authenticate(&first), Err(AuthError::Invalid));
        let admin = tokens.authenticate(&second).unwrap();
        assert_eq!(admin.name, BOOTSTRAP_NAME);
        assert!(admin.is_global());
        assert_ne!(
            admin.id, admin.name,
            "a token's actor carries the token's id"
        );
    }
}
