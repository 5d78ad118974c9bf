//! Console sessions: a random id in an HttpOnly cookie, kept in the store (so every node of a
//! shared store knows it) under the hash of the id, bound to the hash of the API token that
//! signed in. The token's secret is kept nowhere; revoking the token ends its sessions.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use usm_store::{Store, StoreError};

/// Where sessions live among the store's settings.
const PREFIX: &str = "console/sessions/";
/// Live sessions one token may hold; signing in once more ends the oldest.
pub const MAX_PER_TOKEN: usize = 16;
/// How often expired sessions are swept from the store.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// A session as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSession {
    /// The hash of the API token the session acts with.
    pub token: String,
    /// The value every state-changing form must carry.
    pub csrf: String,
    /// When it was opened, in seconds since the Unix epoch.
    pub opened: i64,
    /// When it ends, in seconds since the Unix epoch.
    pub expires: i64,
}

/// What the cookie leads to.
#[derive(Debug)]
pub enum Lookup {
    /// A live session.
    Live(StoredSession),
    /// A session that has ended (and is now removed).
    Expired,
    /// No such session.
    Unknown,
}

/// The sessions of the console.
pub struct Sessions {
    store: Arc<dyn Store>,
    ttl: Duration,
    swept: Mutex<Option<Instant>>,
}

fn now_secs() -> i64 {
    usm_model::Timestamp::now().as_second()
}

/// A random value of 32 bytes, URL-safe.
pub fn random_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| StoreError::Database(format!("no randomness: {error}").into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn hex_digest(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The store key of a cookie's session: `{token group}/{hash of the id}`; `None` for a cookie
/// not of our making.
fn key_of(cookie: &str) -> Option<String> {
    let (group, id) = cookie.split_once('.')?;
    let well_formed = group.len() == 16
        && group.bytes().all(|b| b.is_ascii_hexdigit())
        && id.len() == 43
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| format!("{PREFIX}{group}/{}", hex_digest(id)))
}

impl Sessions {
    /// Sessions in `store` that last `ttl` from sign-in.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            swept: Mutex::new(None),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session for the token whose secret hashes to `token`; returns the cookie value
    /// and the session.
    pub fn open(&self, token: &str) -> Result<(String, StoredSession), StoreError> {
        self.sweep()?;
        let group = &token[..16.min(token.len())];
        let id = random_token()?;
        let cookie = format!("{group}.{id}");
        let key = key_of(&cookie)
            .ok_or_else(|| StoreError::Database("a session id of the wrong shape".into()))?;
        let now = now_secs();
        let session = StoredSession {
            token: token.to_owned(),
            csrf: random_token()?,
            opened: now,
            expires: now.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)),
        };
        // The token's other sessions: the expired ones go, and the oldest beyond the bound.
        let mut others: Vec<(String, StoredSession)> = self
            .store
            .settings(&format!("{PREFIX}{group}/"))?
            .into_iter()
            .filter_map(|(key, bytes)| {
                serde_json::from_slice::<StoredSession>(&bytes)
                    .ok()
                    .map(|s| (key, s))
            })
            .filter(|(_, s)| s.token == token)
            .collect();
        others.sort_by_key(|(_, s)| s.opened);
        let mut ended: Vec<String> = others
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(key, _)| key.clone())
            .collect();
        let live = others.len() - ended.len();
        if live >= MAX_PER_TOKEN {
            ended.extend(
                others
                    .iter()
                    .filter(|(_, s)| s.expires > now)
                    .take(live + 1 - MAX_PER_TOKEN)
                    .map(|(key, _)| key.clone()),
            );
        }
        let bytes = serde_json::to_vec(&session)
            .map_err(|error| StoreError::Database(error.to_string().into()))?;
        self.store.write_settings(&[(key, bytes)], &ended)?;
        Ok((cookie, session))
    }

    /// The session a cookie names.
    pub fn find(&self, cookie: &str) -> Result<Lookup, StoreError> {
        let Some(key) = key_of(cookie) else {
            return Ok(Lookup::Unknown);
        };
        let Some(bytes) = self.store.setting(&key)? else {
            return Ok(Lookup::Unknown);
        };
        let session: StoredSession =
            serde_json::from_slice(&bytes).map_err(|error| StoreError::Corrupt {
                what: "console session",
                detail: error.to_string(),
            })?;
        if session.expires <= now_secs() {
            self.store.write_settings(&[], &[key])?;
            return Ok(Lookup::Expired);
        }
        Ok(Lookup::Live(session))
    }

    /// Ends the session a cookie names.
    pub fn close(&self, cookie: &str) -> Result<(), StoreError> {
        match key_of(cookie) {
            Some(key) => self.store.write_settings(&[], &[key]),
            None => Ok(()),
        }
    }

    /// Removes expired sessions, at most once every [`SWEEP_EVERY`].
    fn sweep(&self) -> Result<(), StoreError> {
        {
            let mut swept = self.swept.lock().unwrap_or_else(PoisonError::into_inner);
            if swept.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                return Ok(());
            }
            *swept = Some(Instant::now());
        }
        let now = now_secs();
        let expired: Vec<String> = self
            .store
            .settings(PREFIX)?
            .into_iter()
            .filter(|(_, bytes)| {
                serde_json::from_slice::<StoredSession>(bytes).map_or(true, |s| s.expires <= now)
            })
            .map(|(key, _)| key)
            .collect();
        if !expired.is_empty() {
            self.store.write_settings(&[], &expired)?;
        }
        Ok(())
    }

    /// How many sessions are stored (live or not yet swept).
    pub fn count(&self) -> Result<usize, StoreError> {
        Ok(self.store.settings(PREFIX)?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(ttl: Duration) -> Sessions {
        Sessions::new(Arc::new(usm_store::MemoryStore::default()), ttl)
    }

    #[test]
    fn a_session_is_found_until_it_is_closed() {
        let sessions = sessions(Duration::from_secs(60));
        let token = hex_digest("secret");
        let (cookie, opened) = sessions.open(&token).expect("opens");
        match sessions.find(&cookie).expect("reads") {
            Lookup::Live(found) => {
                assert_eq!(found.token, token);
                assert_eq!(found.csrf, opened.csrf);
            }
            other => panic!("expected a live session, got {other:?}"),
        }
        sessions.close(&cookie).expect("closes");
        assert!(matches!(
            sessions.find(&cookie).expect("reads"),
            Lookup::Unknown
        ));
    }

    #[test]
    fn an_expired_session_is_refused_and_removed() {
        let sessions = sessions(Duration::ZERO);
        let (cookie, _) = sessions.open(&hex_digest("secret")).expect("opens");
        assert!(matches!(
            sessions.find(&cookie).expect("reads"),
            Lookup::Expired
        ));
        assert_eq!(sessions.count().expect("counts"), 0);
    }

    #[test]
    fn cookies_not_of_our_making_find_nothing() {
        let sessions = sessions(Duration::from_secs(60));
        let (cookie, _) = sessions.open(&hex_digest("secret")).expect("opens");
        let (group, id) = cookie.split_once('.').expect("two parts");
        let mut other_id = id.to_owned();
        other_id.replace_range(0..1, if id.starts_with('A') { "B" } else { "A" });
        for forged in [
            String::new(),
            "nonsense".to_owned(),
            format!("{group}.{other_id}"),
            format!("{group}/../x.{id}"),
        ] {
            assert!(
                matches!(sessions.find(&forged).expect("reads"), Lookup::Unknown),
                "{forged:?}"
            );
        }
    }

    #[test]
    fn a_token_holds_a_bounded_number_of_sessions() {
        let sessions = sessions(Duration::from_secs(60));
        let token = hex_digest("secret");
        let cookies: Vec<String> = (0..MAX_PER_TOKEN + 3)
            .map(|_| sessions.open(&token).expect("opens").0)
            .collect();
        assert_eq!(sessions.count().expect("counts"), MAX_PER_TOKEN);
        assert!(matches!(
            sessions.find(cookies.last().expect("some")).expect("reads"),
            Lookup::Live(_)
        ));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
