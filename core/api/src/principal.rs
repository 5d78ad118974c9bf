//! Who is calling: the bearer token resolved to an actor, rate-limited per principal. Admin
//! routes take [`Admin`], which also requires the admin role.

use std::{
    collections::HashMap,
    future::{Ready, ready},
    sync::{Mutex, PoisonError},
    time::Instant,
};

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};
use usm_engine::auth::AuthError;
use usm_model::{Actor, ErrorCode, Role};

use crate::{Services, problem::ApiError};

/// Charges a request without a principal to its peer address: unauthenticated requests, and
/// the public routes, share one budget per address.
pub fn limit_address(services: &Services, request: &HttpRequest) -> Result<(), ApiError> {
    let address = request
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
    match services.rate_limiter.check(&format!("\0address {address}")) {
        None => Ok(()),
        Some(retry_after) => Err(ApiError::new(
            ErrorCode::RateLimited,
            format!("{address} sent too many unauthenticated requests; retry in {retry_after} s"),
        )
        .with_header("Retry-After", retry_after.to_string())),
    }
}

/// The authenticated caller of a request.
pub struct Principal(pub Actor);

/// An authenticated caller holding the admin role.
pub struct Admin(pub Actor);

fn authenticate(request: &HttpRequest) -> Result<Actor, ApiError> {
    let services = request
        .app_data::<web::Data<Services>>()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "services are not configured"))?;
    let actor = if services.config.auth_required {
        let secret = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let result = match secret {
            Some(secret) => services.tokens.authenticate(secret),
            None => Err(AuthError::Missing),
        };
        result.map_err(|error| {
            // Guessing tokens costs the guesser's address, not a principal's budget.
            limit_address(services, request).err().unwrap_or_else(|| {
                ApiError::new(ErrorCode::Unauthorized, error.to_string())
                    .with_header("WWW-Authenticate", "Bearer realm=\"usm\"")
            })
        })?
    } else {
        Actor::new("anonymous", [Role::Admin])
    };
    admit(services, request, &actor)?;
    Ok(actor)
}

/// Charges a request to `actor`'s budget (the console's requests, like the API's): the quota
/// left goes back in the `RateLimit-*` headers, an empty budget is `429`.
pub fn admit(services: &Services, request: &HttpRequest, actor: &Actor) -> Result<(), ApiError> {
    match services.rate_limiter.take(&actor.id) {
        Ok(Some(quota)) => {
            use actix_web::HttpMessage as _;
            request.extensions_mut().insert(quota);
        }
        Ok(None) => {}
        Err(retry_after) => {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "{} sent too many requests; retry in {retry_after} s",
                    actor.name
                ),
            )
            .with_header("Retry-After", retry_after.to_string())
            .with_header("RateLimit-Remaining", "0".to_owned())
            .with_header("RateLimit-Reset", retry_after.to_string()));
        }
    }
    Ok(())
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(request).map(Self))
    }
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(request).and_then(|actor| {
            if actor.has_role(Role::Admin) {
                Ok(Self(actor))
            } else {
                Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this route needs the admin role",
                ))
            }
        }))
    }
}

/// A token bucket per principal: `per_second` sustained, `burst` at once. Zero turns it off.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 10_000;

/// A principal's budget after a request: sent back as `RateLimit-Limit`, `RateLimit-Remaining`
/// and `RateLimit-Reset` (seconds until the bucket is full again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed at once.
    pub limit: u64,
    /// Requests left now.
    pub remaining: u64,
    /// Seconds until `remaining` is back at `limit`.
    pub reset: u64,
}

impl Quota {
    /// Adds the three headers to a response.
    pub fn write(&self, headers: &mut actix_web::http::header::HeaderMap) {
        use actix_web::http::header::{HeaderName, HeaderValue};
        for (name, value) in [
            ("ratelimit-limit", self.limit),
            ("ratelimit-remaining", self.remaining),
            ("ratelimit-reset", self.reset),
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
        }
    }
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests per principal with bursts of `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `who`'s bucket; `Some(seconds)` to wait when it is empty.
    pub fn check(&self, who: &str) -> Option<u64> {
        self.take(who).err()
    }

    /// Takes one request from `who`'s bucket: the budget left (`None` without limits), or the
    /// seconds to wait when it is empty.
    pub fn take(&self, who: &str) -> Result<Option<Quota>, u64> {
        if self.per_second <= 0.0 {
            return Ok(None);
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(who) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_second < burst
            });
        }
        let (tokens, at) = buckets.entry(who.to_owned()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            let reset = ((self.burst - *tokens) / self.per_second).ceil();
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "non-negative and bounded by the burst"
            )]
            Ok(Some(Quota {
                limit: self.burst as u64,
                remaining: tokens.floor() as u64,
                reset: if reset.is_finite() { reset as u64 } else { 0 },
            }))
        } else {
            // Whole seconds, rounded up, until one token is back.
            let wait = ((1.0 - *tokens) / self.per_second).ceil();
            Err(if wait.is_finite() && wait >= 1.0 {
                wait as u64
            } else {
                1
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_are_per_principal() {
        let limiter = RateLimiter::new(1, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check("ann"), None);
        }
        assert_eq!(limiter.check("ann"), Some(1));
        assert_eq!(
            limiter.check("bob"),
            None,
            "another principal has its own bucket"
        );
        assert_eq!(
            RateLimiter::new(0, 0).check("ann"),
            None,
            "zero turns limiting off"
        );
    }
}
