//! Who is calling. Until token authentication lands, every caller acts as the built-in
//! `anonymous` principal with the admin role; this extractor is the single place that changes.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, dev::Payload};
use usm_model::{Actor, Role};

use crate::problem::ApiError;

/// The authenticated caller of a request.
pub struct Principal(pub Actor);

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(_request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(Ok(Self(Actor::new("anonymous", [Role::Admin]))))
    }
}
