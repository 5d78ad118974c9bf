//! API tokens and the audit log. Tokens are stored as SHA-256 hashes (the secret is shown once,
//! at creation) with a name, roles, domains and an optional expiry; every admin action leaves an
//! audit entry with actor, time and before/after.

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
}

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
    /// No token with that id.
    #[error("no token {0}")]
    NotFound(String),
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
            Self::Store(_) => ErrorCode::Internal,
        }
    }
}

/// A token to create.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewToken {
    /// The principal the token acts as, recorded in history (e.g. `alice`, `monitoring`).
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    id: String,
    name: String,
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
    /// The principal it acts as.
    pub name: String,
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
            roles: record.roles.clone(),
            domains: record.domains.clone(),
            expires_at: record.expires_at,
            created_at: record.created_at,
            created_by: record.created_by.clone(),
        }
    }
}

fn hash(secret: &str) -> String {
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
    by_hash: RwLock<HashMap<String, TokenRecord>>,
}

impl Tokens {
    /// Loads the stored tokens; `domains` are the server's domains (token scopes must be among them).
    pub fn open(store: Arc<dyn Store>, domains: Vec<Domain>) -> Result<Self, StoreError> {
        let mut by_hash = HashMap::new();
        for (key, bytes) in store.settings(TOKEN_PREFIX)? {
            let record: TokenRecord =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    what: "token",
                    detail: format!("{key}: {e}"),
                })?;
            by_hash.insert(record.hash.clone(), record);
        }
        Ok(Self {
            store,
            domains,
            by_hash: RwLock::new(by_hash),
        })
    }

    /// Whether any token exists (a fresh data directory has none).
    pub fn is_empty(&self) -> bool {
        self.by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Resolves a bearer secret to the actor it stands for.
    pub fn authenticate(&self, secret: &str) -> Result<Actor, AuthError> {
        let tokens = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        let record = tokens.get(&hash(secret)).ok_or(AuthError::Invalid)?;
        if record.expires_at.is_some_and(|at| at <= Timestamp::now()) {
            return Err(AuthError::Expired);
        }
        let mut actor = Actor::new(record.name.clone(), record.roles.clone());
        actor.domains = record.domains.clone();
        Ok(actor)
    }

    /// Creates a token with a fresh random secret; returns the secret, which is never shown again.
    pub fn create(&self, by: &Actor, new: NewToken) -> Result<(TokenInfo, String), TokenError> {
        let id = hex(&random_bytes::<6>()?);
        let secret = format!("usm_{id}_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()?));
        let info = self.insert(by, new, id, &secret)?;
        Ok((info, secret))
    }

    /// Creates a token with a secret the operator chose (e.g. `USM_ADMIN_TOKEN`).
    pub fn create_with_secret(
        &self,
        by: &Actor,
        new: NewToken,
        secret: &str,
    ) -> Result<TokenInfo, TokenError> {
        if secret.len() < 32 || secret.len() > 512 || !secret.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(TokenError::Invalid {
                field: "token",
                message: "an operator-chosen token must be 32 to 512 printable ASCII characters"
                    .into(),
            });
        }
        self.insert(by, new, hex(&random_bytes::<6>()?), secret)
    }

    fn insert(
        &self,
        by: &Actor,
        new: NewToken,
        id: String,
        secret: &str,
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
        let record = TokenRecord {
            id,
            name: name.to_owned(),
            roles: new.roles,
            domains,
            expires_at: new.expires_at,
            created_at: Timestamp::now(),
            created_by: by.name.clone(),
            hash: hash(secret),
        };
        let encoded = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt {
            what: "token",
            detail: e.to_string(),
        })?;
        self.store
            .write_settings(&[(format!("{TOKEN_PREFIX}{}", record.id), encoded)], &[])?;
        let info = TokenInfo::from(&record);
        self.by_hash
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(record.hash.clone(), record);
        Ok(info)
    }

    /// Every token, without secrets, by creation time.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut all: Vec<TokenInfo> = self
            .by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(TokenInfo::from)
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    /// Revokes a token: it stops working at once.
    pub fn revoke(&self, id: &str) -> Result<TokenInfo, TokenError> {
        let mut tokens = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        let hash = tokens
            .values()
            .find(|t| t.id == id)
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One audit entry: who did what to what, when, with the state before and after.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Position in the audit log.
    #[serde(default)]
    pub seq: u64,
    /// When.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// Who.
    pub actor: String,
    /// What, e.g. `module.install`, `module.enable`, `token.create`.
    pub action: String,
    /// The object, e.g. `module:itil4`, `token:3fa2c1`.
    pub target: String,
    /// The state before, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub before: Option<Value>,
    /// The state after, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub after: Option<Value>,
}

/// Appends an audit entry (durably).
pub fn audit(
    store: &dyn Store,
    actor: &Actor,
    action: &str,
    target: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<(), StoreError> {
    let entry = AuditEntry {
        seq: 0,
        at: Timestamp::now(),
        actor: actor.name.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
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

/// Audit entries after `after`, oldest first.
pub fn audit_entries(
    store: &dyn Store,
    after: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    store
        .audit_after(after, limit)?
        .into_iter()
        .map(|(seq, bytes)| {
            serde_json::from_slice::<AuditEntry>(&bytes)
                .map(|entry| AuditEntry { seq, ..entry })
                .map_err(|e| StoreError::Corrupt {
                    what: "audit entry",
                    detail: e.to_string(),
                })
        })
        .collect()
}
