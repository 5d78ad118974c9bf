//! `usm-console`: the web console usm serves at `/ui`. Pages are rendered on the server from
//! the same calls the API's handlers make, with the caller's own rights: a session is bound to
//! the API token that signed in, and every page acts as that token. No script runs inline
//! (the Content-Security-Policy forbids it); forms work without JavaScript.

mod admin;
mod form;
mod kpis;
mod portal;
mod records;
mod render;
mod session;
mod signin;

use std::{sync::Arc, time::Duration};

use actix_web::{
    HttpResponse,
    http::header::{self, HeaderName, HeaderValue},
    web,
};

pub use render::Refusal;
pub use session::Sessions;

/// Settings of the console.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// How long a session lasts from sign-in.
    pub session_ttl: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

/// The console's own state, beside the API's `Services`.
pub struct Console {
    sessions: Sessions,
}

impl Console {
    /// A console keeping its sessions in `store`.
    pub fn new(store: Arc<dyn usm_store::Store>, config: &ConsoleConfig) -> Self {
        Self {
            sessions: Sessions::new(store, config.session_ttl),
        }
    }
}

/// What every page answers with besides its body: no inline script or style, no framing, no
/// caching of pages that show records.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("../assets/console.css");
const SCRIPT: &str = include_str!("../assets/console.js");

async fn asset(name: web::Path<String>) -> HttpResponse {
    let (body, content_type) = match name.as_str() {
        "console.css" => (STYLESHEET, "text/css; charset=utf-8"),
        "console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(body)
}

async fn home() -> HttpResponse {
    render::see_other("/ui/records")
}

/// Registers the console's routes under `/ui`.
pub fn configure(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/ui")
            .wrap_fn(|request, service| {
                use actix_web::dev::Service as _;
                let is_asset = request.path().starts_with("/ui/assets/");
                let response = service.call(request);
                async move {
                    let mut response = response.await?;
                    let headers = response.headers_mut();
                    for (name, value) in [
                        ("content-security-policy", CONTENT_SECURITY_POLICY),
                        ("x-content-type-options", "nosniff"),
                        ("x-frame-options", "DENY"),
                        ("referrer-policy", "same-origin"),
                    ] {
                        headers.insert(
                            HeaderName::from_static(name),
                            HeaderValue::from_static(value),
                        );
                    }
                    if !is_asset {
                        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    }
                    Ok(response)
                }
            })
            .route("", web::get().to(home))
            .route("/", web::get().to(home))
            .route("/assets/{name}", web::get().to(asset))
            .route("/login", web::get().to(signin::login_page))
            .route("/login", web::post().to(signin::login))
            .route("/logout", web::post().to(signin::logout))
            .route("/records", web::get().to(records::queue))
            .route("/records", web::post().to(records::create))
            .route("/new", web::get().to(records::new_form))
            .route("/records/{id}", web::get().to(records::record))
            .route(
                "/records/{id}/transition",
                web::post().to(records::transition),
            )
            .route("/records/{id}/comments", web::post().to(records::comment))
            .route("/records/{id}/attachments", web::post().to(records::attach))
            .route(
                "/records/{id}/attachments/{attachment}",
                web::get().to(records::download),
            )
            .route(
                "/records/{id}/confirmation",
                web::post().to(records::confirmation),
            )
            .route("/records/{id}/approvals", web::post().to(records::approve))
            .route("/kpis", web::get().to(kpis::kpis))
            .route("/admin/tokens", web::get().to(admin::tokens))
            .route("/admin/tokens", web::post().to(admin::create_token))
            .route(
                "/admin/tokens/{id}/revoke",
                web::post().to(admin::revoke_token),
            )
            .route("/admin/people", web::get().to(admin::people))
            .route("/admin/webhooks", web::get().to(admin::webhooks))
            .route("/admin/audit", web::get().to(admin::audit))
            .route("/admin/modules", web::get().to(admin::modules))
            .route("/admin/modules", web::post().to(admin::install))
            .route("/admin/modules/{id}/preview", web::get().to(admin::preview))
            .route(
                "/admin/modules/{id}/{action}",
                web::post().to(admin::change_module),
            )
            .route("/portal", web::get().to(portal::portal))
            .route("/portal/items/{id}", web::get().to(portal::item))
            .route("/portal/items/{id}", web::post().to(portal::order)),
    );
}
