//! Signing in and out, and [`Visitor`]: the signed-in caller every other page takes.

use std::{future::Future, pin::Pin};

use actix_web::{
    FromRequest, HttpRequest, HttpResponse,
    cookie::{Cookie, SameSite},
    dev::Payload,
    http::header,
    web,
};
use minijinja::context;
use serde::Deserialize;
use usm_api::{ApiError, Services};
use usm_model::{Actor, ErrorCode, Role};

use crate::{
    Console,
    form::FormBody,
    render::{Refusal, page, see_other},
    session::{Lookup, random_token, same_secret},
};

/// The session cookie.
pub const SESSION_COOKIE: &str = "usm_session";
/// The sign-in form's own CSRF cookie (there is no session to bind it to yet).
const LOGIN_COOKIE: &str = "usm_login";

/// The signed-in caller: the actor its token stands for, and the session's CSRF token.
pub struct Visitor {
    /// Who acts, with the token's roles and domains.
    pub actor: Actor,
    /// What every state-changing form of the session carries.
    pub csrf: String,
    cookie: String,
}

impl Visitor {
    /// Refuses a form without the session's CSRF token.
    pub fn check(&self, form: &FormBody) -> Result<(), Refusal> {
        match form.get("csrf") {
            Some(sent) if same_secret(sent, &self.csrf) => Ok(()),
            _ => Err(Refusal::Csrf),
        }
    }

    /// The check of an upload form's `csrf` part, made before the file is read.
    pub fn upload_guard(&self) -> usm_api::FormGuard {
        let csrf = self.csrf.clone();
        usm_api::FormGuard {
            field: "csrf",
            accepts: Box::new(move |sent| same_secret(sent, &csrf)),
        }
    }

    /// What every page's layout shows of the caller.
    pub fn view(&self) -> minijinja::Value {
        context! {
            name => self.actor.name.clone(),
            csrf => self.csrf.clone(),
            agent => self.actor.works_records(),
            admin => self.actor.has_role(Role::Admin),
        }
    }
}

fn services_of(
    request: &HttpRequest,
) -> Result<(web::Data<Services>, web::Data<Console>), Refusal> {
    let services = request.app_data::<web::Data<Services>>().cloned();
    let console = request.app_data::<web::Data<Console>>().cloned();
    match (services, console) {
        (Some(services), Some(console)) => Ok((services, console)),
        _ => Err(Refusal::Api(ApiError::new(
            ErrorCode::Internal,
            "the console is not configured",
        ))),
    }
}

/// Where a page asked for without a session comes back to after sign-in: only our own paths.
fn return_path(request: &HttpRequest) -> Option<String> {
    (request.method() == actix_web::http::Method::GET).then(|| {
        let path = request.uri().path_and_query().map_or("/ui", |p| p.as_str());
        path.to_owned()
    })
}

async fn visitor(request: HttpRequest) -> Result<Visitor, Refusal> {
    let (services, console) = services_of(&request)?;
    let next = return_path(&request);
    let Some(cookie) = request.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
        return Err(Refusal::SignIn {
            expired: false,
            next,
        });
    };
    let lookup = {
        let (console, cookie) = (console.clone(), cookie.clone());
        web::block(move || console.sessions.find(&cookie))
            .await
            .map_err(ApiError::from)?
            .map_err(|error| {
                tracing::error!(%error, "cannot read a console session");
                ApiError::new(ErrorCode::Unavailable, "sessions cannot be read now")
            })?
    };
    let session = match lookup {
        Lookup::Live(session) => session,
        Lookup::Expired => {
            return Err(Refusal::SignIn {
                expired: true,
                next,
            });
        }
        Lookup::Unknown => {
            return Err(Refusal::SignIn {
                expired: false,
                next,
            });
        }
    };
    // The token is checked on every page: revoked, expired or its person deactivated, the
    // session ends with it.
    let actor = match services.tokens.authenticate_hash(&session.token) {
        Ok(actor) => actor,
        Err(_) => {
            let _ = web::block(move || console.sessions.close(&cookie)).await;
            return Err(Refusal::SignIn {
                expired: true,
                next,
            });
        }
    };
    usm_api::admit(&services, &request, &actor)?;
    Ok(Visitor {
        actor,
        csrf: session.csrf,
        cookie,
    })
}

impl FromRequest for Visitor {
    type Error = Refusal;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Refusal>>>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        Box::pin(visitor(request.clone()))
    }
}

/// Whether the browser reached us over TLS (directly, or as a proxy says): cookies are then
/// `Secure`.
fn over_tls(request: &HttpRequest) -> bool {
    request.connection_info().scheme() == "https"
}

fn cookie<'a>(request: &HttpRequest, name: &'a str, value: String, path: &'a str) -> Cookie<'a> {
    Cookie::build(name, value)
        .path(path)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_tls(request))
        .finish()
}

/// Query of the sign-in page.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    expired: Option<String>,
    next: Option<String>,
}

/// Only a path of the console is a place to return to.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if next.starts_with("/ui/") && !next.starts_with("//") && !next.contains('\\') =>
        {
            next.to_owned()
        }
        _ => "/ui/records".to_owned(),
    }
}

fn login_form(
    request: &HttpRequest,
    status: actix_web::http::StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
    next: &str,
) -> Result<HttpResponse, Refusal> {
    let csrf = random_token().map_err(|error| {
        tracing::error!(%error, "no randomness for a sign-in form");
        ApiError::new(ErrorCode::Internal, "the sign-in form cannot be made now")
    })?;
    let body = crate::render::render(
        "login.html",
        context! { csrf => csrf.clone(), notice => notice, error => error, next => next },
    )?;
    Ok(HttpResponse::build(status)
        .cookie(cookie(request, LOGIN_COOKIE, csrf, "/ui/login"))
        .content_type("text/html; charset=utf-8")
        .body(body))
}

/// `GET /ui/login`: the sign-in form.
pub async fn login_page(
    request: HttpRequest,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse, Refusal> {
    let expired = query.expired.is_some();
    login_form(
        &request,
        actix_web::http::StatusCode::OK,
        expired.then_some("session_expired"),
        None,
        &safe_next(query.next.as_deref()),
    )
}

/// `POST /ui/login`: a token in the form body (never in the URL) opens a session.
pub async fn login(request: HttpRequest, body: web::Bytes) -> Result<HttpResponse, Refusal> {
    let (services, console) = services_of(&request)?;
    let form = posted_form(&request, &body)?;
    let expected = request.cookie(LOGIN_COOKIE).map(|c| c.value().to_owned());
    match (form.get("csrf"), expected) {
        (Some(sent), Some(expected)) if same_secret(sent, &expected) => {}
        _ => return Err(Refusal::Csrf),
    }
    let next = safe_next(form.get("next"));
    let secret = form.text("token").unwrap_or_default();
    let actor = match services.tokens.authenticate(&secret) {
        Ok(actor) => actor,
        Err(error) => {
            // Guessing tokens costs the guesser's address.
            usm_api::limit_address(&services, &request)?;
            tracing::info!(%error, "a console sign-in was refused");
            return login_form(
                &request,
                actix_web::http::StatusCode::UNAUTHORIZED,
                None,
                Some("login_refused"),
                &next,
            );
        }
    };
    usm_api::admit(&services, &request, &actor)?;
    let hash = usm_engine::auth::secret_hash(&secret);
    let (value, _) = web::block(move || console.sessions.open(&hash))
        .await
        .map_err(ApiError::from)?
        .map_err(|error| {
            tracing::error!(%error, "cannot open a console session");
            ApiError::new(ErrorCode::Unavailable, "sessions cannot be opened now")
        })?;
    tracing::info!(principal = %actor.name, "signed in to the console");
    // A browser-session cookie: the store's record decides when it ends, so an expired session
    // is told apart from none.
    let session = cookie(&request, SESSION_COOKIE, value, "/ui");
    let mut spent = cookie(&request, LOGIN_COOKIE, String::new(), "/ui/login");
    spent.make_removal();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, next))
        .cookie(session)
        .cookie(spent)
        .finish())
}

/// `POST /ui/logout`: ends the session.
pub async fn logout(
    request: HttpRequest,
    visitor: Visitor,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    let (_, console) = services_of(&request)?;
    checked_form(&request, &visitor, &body)?;
    let cookie_value = visitor.cookie.clone();
    web::block(move || console.sessions.close(&cookie_value))
        .await
        .map_err(ApiError::from)?
        .map_err(|error| {
            tracing::error!(%error, "cannot close a console session");
            ApiError::new(ErrorCode::Unavailable, "sessions cannot be closed now")
        })?;
    let mut gone = cookie(&request, SESSION_COOKIE, String::new(), "/ui");
    gone.make_removal();
    let mut response = see_other("/ui/login");
    response.add_cookie(&gone).map_err(|error| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot end the cookie: {error}"),
        )
    })?;
    Ok(response)
}

fn posted_form(request: &HttpRequest, body: &[u8]) -> Result<FormBody, Refusal> {
    FormBody::parse(
        request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        body,
    )
}

/// Reads a posted form and checks its CSRF token against the visitor's session.
pub fn checked_form(
    request: &HttpRequest,
    visitor: &Visitor,
    body: &[u8],
) -> Result<FormBody, Refusal> {
    let form = posted_form(request, body)?;
    visitor.check(&form)?;
    Ok(form)
}

/// Renders `template` for the visitor with `context`.
pub fn page_for(
    visitor: &Visitor,
    template: &str,
    context: minijinja::Value,
) -> Result<HttpResponse, Refusal> {
    page(template, context! { me => visitor.view(), ..context })
}
