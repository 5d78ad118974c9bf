//! Pages: templates embedded in the binary, the console's English text in one file, and the
//! refusals every handler may answer with, rendered as pages.

use std::{collections::BTreeMap, sync::OnceLock};

use actix_web::{
    HttpResponse, ResponseError,
    http::{StatusCode, header},
};
use minijinja::{Environment, Value, context};
use usm_api::ApiError;

/// The templates, by name.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("error.html", include_str!("../templates/error.html")),
    ("records.html", include_str!("../templates/records.html")),
    ("record.html", include_str!("../templates/record.html")),
    ("new.html", include_str!("../templates/new.html")),
    ("fields.html", include_str!("../templates/fields.html")),
    ("modules.html", include_str!("../templates/modules.html")),
    ("portal.html", include_str!("../templates/portal.html")),
    ("item.html", include_str!("../templates/item.html")),
    ("tokens.html", include_str!("../templates/tokens.html")),
    ("people.html", include_str!("../templates/people.html")),
    ("webhooks.html", include_str!("../templates/webhooks.html")),
    ("audit.html", include_str!("../templates/audit.html")),
    ("kpis.html", include_str!("../templates/kpis.html")),
    ("preview.html", include_str!("../templates/preview.html")),
    (
        "admin_nav.html",
        include_str!("../templates/admin_nav.html"),
    ),
];

/// Every word the console shows, in English: one file to translate.
const TEXT: &str = include_str!("../text/en.toml");

struct Pages {
    env: Environment<'static>,
}

fn pages() -> &'static Pages {
    static PAGES: OnceLock<Pages> = OnceLock::new();
    PAGES.get_or_init(|| {
        let mut env = Environment::new();
        // Templates are ours and fixed; a failure here is a bug the unit tests catch.
        for (name, source) in TEMPLATES {
            if let Err(error) = env.add_template(name, source) {
                tracing::error!(%error, name, "a console template does not compile");
            }
        }
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        env.add_filter("minutes", minutes);
        env.add_filter("json", compact_json);
        let text: BTreeMap<String, String> = toml::from_str(TEXT).unwrap_or_else(|error| {
            tracing::error!(%error, "the console's text does not parse");
            BTreeMap::new()
        });
        // A global, so the macros of imported templates see it too.
        env.add_global("t", value_of(&text));
        Pages { env }
    })
}

/// A duration in minutes as people read it: `45 min`, `3 h 5 min`, `2 d 4 h`.
fn minutes(value: f64) -> String {
    let sign = if value < 0.0 { "-" } else { "" };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a clock's minutes, far inside u64"
    )]
    let total = value.abs().round() as u64;
    let (days, hours, mins) = (total / 1440, total / 60 % 24, total % 60);
    match (days, hours) {
        (0, 0) => format!("{sign}{mins} min"),
        (0, _) => format!("{sign}{hours} h {mins} min"),
        _ => format!("{sign}{days} d {hours} h"),
    }
}

fn compact_json(value: Value) -> String {
    serde_json::to_string(&value).unwrap_or_default()
}

/// A value a template can read, from anything serde serialises.
pub fn value_of<T: serde::Serialize>(value: &T) -> Value {
    Value::from(minijinja::value::Serde(value))
}

/// Renders a template with `context` (the text is the global `t`).
pub fn render(name: &str, context: Value) -> Result<String, Refusal> {
    let pages = pages();
    let template = pages.env.get_template(name).map_err(Refusal::template)?;
    template.render(context).map_err(Refusal::template)
}

/// A rendered page as a response.
pub fn page(name: &str, context: Value) -> Result<HttpResponse, Refusal> {
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(render(name, context)?))
}

/// A redirect after a form post (303: the browser follows with a GET).
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// Why the console did not do what was asked, answered as a page.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The API's own refusal (rights, validation, conflicts), shown with its code.
    #[error("{}", .0.problem().detail)]
    Api(ApiError),
    /// No session: sign in first (a GET goes to the sign-in page).
    #[error("sign in first")]
    SignIn {
        /// Whether a session existed and ended.
        expired: bool,
        /// Where to come back to.
        next: Option<String>,
    },
    /// A state-changing form without the session's CSRF token.
    #[error("the form is missing its CSRF token or carries a wrong one")]
    Csrf,
    /// A form that is not `application/x-www-form-urlencoded`, or too large.
    #[error("{0}")]
    BadForm(String),
    /// A page template failed: a bug of ours.
    #[error("a page could not be rendered: {0}")]
    Template(String),
}

impl Refusal {
    fn template(error: minijinja::Error) -> Self {
        tracing::error!(%error, "a console page could not be rendered");
        Self::Template(error.to_string())
    }

    fn code(&self) -> String {
        match self {
            Self::Api(error) => error.problem().code.to_string(),
            Self::SignIn { .. } => "unauthorized".to_owned(),
            Self::Csrf => "csrf_invalid".to_owned(),
            Self::BadForm(_) => "invalid_input".to_owned(),
            Self::Template(_) => "internal".to_owned(),
        }
    }
}

impl<E: Into<ApiError>> From<E> for Refusal {
    fn from(error: E) -> Self {
        Self::Api(error.into())
    }
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Api(error) => error.status_code(),
            Self::SignIn { .. } => StatusCode::SEE_OTHER,
            Self::Csrf => StatusCode::FORBIDDEN,
            Self::BadForm(_) => StatusCode::BAD_REQUEST,
            Self::Template(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::SignIn { expired, next } = self {
            let mut location = url::form_urlencoded::Serializer::new(String::new());
            if *expired {
                location.append_pair("expired", "1");
            }
            if let Some(next) = next {
                location.append_pair("next", next);
            }
            let query = location.finish();
            return see_other(&if query.is_empty() {
                "/ui/login".to_owned()
            } else {
                format!("/ui/login?{query}")
            });
        }
        let (title, detail, errors) = match self {
            Self::Api(error) => {
                let problem = error.problem();
                (
                    problem.title.clone(),
                    problem.detail.clone(),
                    problem.errors.clone().unwrap_or_default(),
                )
            }
            other => (String::new(), other.to_string(), Vec::new()),
        };
        let status = self.status_code();
        let body = render(
            "error.html",
            context! {
                status => status.as_u16(),
                code => self.code(),
                title => title,
                detail => detail,
                errors => value_of(&errors),
            },
        )
        .unwrap_or_else(|_| format!("{status}: {self}"));
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_every_text_it_names_exists() {
        let pages = pages();
        let text: BTreeMap<String, String> = toml::from_str(TEXT).expect("the text parses");
        for (name, source) in TEMPLATES {
            pages.env.get_template(name).expect("compiles");
            let mut rest = *source;
            while let Some(at) = rest.find("t.") {
                let before = rest[..at].chars().last();
                rest = &rest[at + 2..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
                    continue;
                }
                let key: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    text.contains_key(&key),
                    "{name} uses t.{key}, which text/en.toml lacks"
                );
            }
        }
    }

    #[test]
    fn minutes_read_as_people_say_them() {
        assert_eq!(minutes(45.2), "45 min");
        assert_eq!(minutes(185.0), "3 h 5 min");
        assert_eq!(minutes(3120.0), "2 d 4 h");
        assert_eq!(minutes(-30.0), "-30 min");
    }
}
