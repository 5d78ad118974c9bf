//! The messages' templates: a subject, a plain-text body and an HTML body per notice.

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use usm_model::Domain;
use usm_store::{Store, StoreError};

use crate::{ModuleNotifications, NotifyError};

/// Steps a template may take when rendering (a loop over a huge value ends early with an error).
const FUEL: u64 = 50_000;

/// `(name, source)`: `<notice>.subject`, `<notice>.txt`, `<notice>.html`. Names ending in
/// `.html` are escaped automatically.
const DEFAULTS: &[(&str, &str)] = &[
    (
        "created.subject",
        "[usm {{ record.id }}] Received: {{ record.title }}",
    ),
    (
        "created.txt",
        "Hello {{ recipient.name }},\n\nwe have received your {{ record.kind }} {{ record.id }}, \
         \"{{ record.title }}\". Reply to this message to add to it.\n",
    ),
    (
        "created.html",
        "<p>Hello {{ recipient.name }},</p><p>we have received your {{ record.kind }} \
         <b>{{ record.id }}</b>, “{{ record.title }}”. Reply to this message to add to it.</p>",
    ),
    (
        "replied.subject",
        "[usm {{ record.id }}] {{ record.title }}",
    ),
    (
        "replied.txt",
        "{{ comment.author }} wrote on {{ record.id }}:\n\n{{ comment.body }}\n",
    ),
    (
        "replied.html",
        "<p>{{ comment.author }} wrote on <b>{{ record.id }}</b>:</p>{{ comment.html | safe }}",
    ),
    (
        "assigned.subject",
        "[usm {{ record.id }}] Assigned to you: {{ record.title }}",
    ),
    (
        "assigned.txt",
        "Hello {{ recipient.name }},\n\n{{ record.id }} (\"{{ record.title }}\", {{ record.state }}) \
         is assigned to you{% if record.group %} in group {{ record.group }}{% endif %}.\n",
    ),
    (
        "assigned.html",
        "<p>Hello {{ recipient.name }},</p><p><b>{{ record.id }}</b> (“{{ record.title }}”, \
         {{ record.state }}) is assigned to you{% if record.group %} in group \
         {{ record.group }}{% endif %}.</p>",
    ),
    (
        "transitioned.subject",
        "[usm {{ record.id }}] {{ record.title }}: {{ record.state }}",
    ),
    (
        "transitioned.txt",
        "{{ record.id }} (\"{{ record.title }}\") moved from {{ transition.from }} to \
         {{ transition.to }}.\n",
    ),
    (
        "transitioned.html",
        "<p><b>{{ record.id }}</b> (“{{ record.title }}”) moved from {{ transition.from }} to \
         {{ transition.to }}.</p>",
    ),
    (
        "approval.subject",
        "[usm {{ record.id }}] Approval requested: {{ record.title }}",
    ),
    (
        "approval.txt",
        "Hello {{ recipient.name }},\n\n{{ record.kind }} {{ record.id }} (\"{{ record.title }}\") \
         awaits approval. Approve or reject it with POST /api/v1/records/{{ record.id }}/approvals.\n",
    ),
    (
        "approval.html",
        "<p>Hello {{ recipient.name }},</p><p>{{ record.kind }} <b>{{ record.id }}</b> \
         (“{{ record.title }}”) awaits approval.</p>",
    ),
    (
        "sla_warning.subject",
        "[usm {{ record.id }}] SLA warning: {{ record.title }}",
    ),
    (
        "sla_warning.txt",
        "{{ record.id }} (\"{{ record.title }}\", {{ record.priority or \"no priority\" }}) is close \
         to breaching its SLA.\n",
    ),
    (
        "sla_warning.html",
        "<p><b>{{ record.id }}</b> (“{{ record.title }}”) is close to breaching its SLA.</p>",
    ),
    (
        "sla_breach.subject",
        "[usm {{ record.id }}] SLA breached: {{ record.title }}",
    ),
    (
        "sla_breach.txt",
        "{{ record.id }} (\"{{ record.title }}\", {{ record.priority or \"no priority\" }}) has \
         breached its SLA.\n",
    ),
    (
        "sla_breach.html",
        "<p><b>{{ record.id }}</b> (“{{ record.title }}”) has breached its SLA.</p>",
    ),
    ("notice.subject", "[usm {{ record.id }}] {{ record.title }}"),
    ("notice.txt", "{{ event.payload.message }}\n"),
    ("notice.html", "<p>{{ event.payload.message }}</p>"),
];

/// The template sets the server ships.
pub const BUILT_IN: &[&str] = &[
    "approval",
    "assigned",
    "created",
    "notice",
    "replied",
    "sla_breach",
    "sla_warning",
    "transitioned",
];

const OWN: &str = "notify/template/";
/// Templates a domain may have of its own (sets × locales).
pub const MAX_OWN: usize = 200;
const MAX_SUBJECT: usize = 1_000;
const MAX_BODY: usize = 64 * 1024;

/// A template set a domain writes itself: for one language (`locale`), or for everyone. It
/// replaces the built-in set of that name, or adds one that rules can name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = NotificationTemplateSet))]
pub struct TemplateSet {
    /// The set's name: 1–64 lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// A BCP 47 language tag (`de`, `pt-BR`): the set for people of that language; for
    /// everyone else when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The subject (minijinja; one line is kept).
    pub subject: String,
    /// The plain-text body (minijinja).
    pub text: String,
    /// The HTML body (minijinja; values are escaped).
    pub html: String,
}

fn own_key(domain: &Domain, name: &str, locale: Option<&str>) -> String {
    format!("{OWN}{domain}/{name}/{}", locale.unwrap_or("-"))
}

fn invalid(field: &str, message: impl Into<String>) -> NotifyError {
    NotifyError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env
}

impl TemplateSet {
    pub(crate) fn compile(&self) -> Result<Environment<'static>, NotifyError> {
        let mut env = environment();
        for (field, part, source, max) in [
            ("/subject", "subject", &self.subject, MAX_SUBJECT),
            ("/text", "txt", &self.text, MAX_BODY),
            ("/html", "html", &self.html, MAX_BODY),
        ] {
            if source.len() > max {
                return Err(invalid(field, format!("at most {max} bytes")));
            }
            env.add_template_owned(format!("{}.{part}", self.name), source.clone())
                .map_err(|e| invalid(field, e.to_string()))?;
        }
        Ok(env)
    }

    /// Checks the set (name, language tag, sizes, template syntax).
    pub fn check(&self) -> Result<(), NotifyError> {
        let named = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !named {
            return Err(invalid("/name", "1-64 lowercase letters, digits, - and _"));
        }
        if let Some(locale) = &self.locale {
            let tag = language_tags::LanguageTag::parse(locale)
                .map_err(|_| invalid("/locale", "a BCP 47 language tag such as de or pt-BR"))?;
            if tag.as_str() != locale || locale.len() > 35 {
                return Err(invalid(
                    "/locale",
                    "a BCP 47 language tag such as de or pt-BR",
                ));
            }
        }
        self.compile().map(drop)
    }
}

/// The template sets `domain` wrote itself.
pub fn own(store: &dyn Store, domain: &Domain) -> Result<Vec<TemplateSet>, StoreError> {
    store
        .settings(&format!("{OWN}{domain}/"))?
        .into_iter()
        .map(|(key, bytes)| {
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: "notification template",
                detail: format!("{key}: {e}"),
            })
        })
        .collect()
}

/// Writes a domain's template set (replacing the one of the same name and language); `true`
/// when it is new.
pub fn put(store: &dyn Store, domain: &Domain, set: &TemplateSet) -> Result<bool, NotifyError> {
    set.check()?;
    let key = own_key(domain, &set.name, set.locale.as_deref());
    let existed = store.setting(&key)?.is_some();
    if !existed && store.settings(&format!("{OWN}{domain}/"))?.len() >= MAX_OWN {
        return Err(invalid(
            "/name",
            format!("a domain has at most {MAX_OWN} template sets of its own"),
        ));
    }
    let bytes = serde_json::to_vec(set).map_err(|e| StoreError::Corrupt {
        what: "notification template",
        detail: e.to_string(),
    })?;
    store.write_settings(&[(key, bytes)], &[])?;
    Ok(!existed)
}

/// Removes a domain's template set; `false` when there is none of that name and language.
pub fn delete(
    store: &dyn Store,
    domain: &Domain,
    name: &str,
    locale: Option<&str>,
) -> Result<bool, StoreError> {
    let key = own_key(domain, name, locale);
    if store.setting(&key)?.is_none() {
        return Ok(false);
    }
    store.write_settings(&[], &[key])?;
    Ok(true)
}

/// Whether rules of `domain` can name the set `name`.
pub fn exists(
    store: &dyn Store,
    domain: &Domain,
    modules: &ModuleNotifications,
    name: &str,
) -> Result<bool, StoreError> {
    Ok(BUILT_IN.contains(&name)
        || modules.has_template(name)
        || !store
            .settings(&format!("{OWN}{domain}/{name}/"))?
            .is_empty())
}

/// The built-in templates, compiled once.
pub(crate) struct Templates(Environment<'static>);

/// A rendered message.
pub(crate) struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn render_parts(
    env: &Environment<'_>,
    set: &str,
    context: &impl Serialize,
) -> Result<Rendered, NotifyError> {
    let part = |suffix: &str| {
        let name = format!("{set}.{suffix}");
        env.get_template(&name)
            .and_then(|t| t.render(minijinja::value::Serde(context)))
            .map_err(|e| NotifyError::Template {
                name,
                detail: e.to_string(),
            })
    };
    let subject: String = part("subject")?
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    Ok(Rendered {
        subject,
        text: part("txt")?,
        html: part("html")?,
    })
}

impl Templates {
    pub(crate) fn new() -> Result<Self, NotifyError> {
        let mut env = environment();
        for (name, source) in DEFAULTS {
            env.add_template(name, source)
                .map_err(|e| NotifyError::Template {
                    name: (*name).to_owned(),
                    detail: e.to_string(),
                })?;
        }
        Ok(Self(env))
    }

    /// Renders the set `set` for a person of `locale` in `domain`: for their language
    /// (`pt-BR`, then `pt`), then for everyone, the domain's own set before a module's; else
    /// the built-in.
    pub(crate) fn render(
        &self,
        store: &dyn Store,
        domain: &Domain,
        modules: &ModuleNotifications,
        set: &str,
        locale: Option<&str>,
        context: &impl Serialize,
    ) -> Result<Rendered, NotifyError> {
        let mut candidates = Vec::new();
        if let Some(locale) = locale {
            candidates.push(Some(locale));
            if let Some((language, _)) = locale.split_once('-') {
                candidates.push(Some(language));
            }
        }
        candidates.push(None);
        for candidate in candidates {
            if let Some(bytes) = store.setting(&own_key(domain, set, candidate))? {
                let own: TemplateSet =
                    serde_json::from_slice(&bytes).map_err(|e| NotifyError::Template {
                        name: set.to_owned(),
                        detail: e.to_string(),
                    })?;
                return render_parts(&own.compile()?, set, context);
            }
            if let Some(module) = modules.template(set, candidate) {
                return render_parts(&module.compile()?, set, context);
            }
        }
        render_parts(&self.0, set, context)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn html_bodies_escape_what_people_typed_and_subjects_stay_one_line() {
        let templates = Templates::new().unwrap();
        let store = usm_store::MemoryStore::new();
        let it = Domain::new("it").unwrap();
        let context = json!({
            "record": {"id": "INC-7", "title": "<script>x</script>\r\nBcc: all@corp", "kind": "incident",
                       "state": "new"},
            "recipient": {"name": "Rob"},
        });
        let rendered = templates
            .render(
                &store,
                &it,
                &ModuleNotifications::default(),
                "created",
                None,
                &context,
            )
            .unwrap();
        assert!(!rendered.html.contains("<script>"), "{}", rendered.html);
        assert!(
            rendered.html.contains("&lt;script&gt;"),
            "{}",
            rendered.html
        );
        assert!(rendered.subject.starts_with("[usm INC-7] "));
        assert!(
            !rendered.subject.contains(['\r', '\n']),
            "{}",
            rendered.subject
        );
        assert!(rendered.text.contains("Hello Rob,"));
    }
}

#[cfg(test)]
mod own_sets {
    use serde_json::json;

    use super::*;

    fn set(locale: Option<&str>, greeting: &str) -> TemplateSet {
        TemplateSet {
            name: "created".into(),
            locale: locale.map(str::to_owned),
            subject: format!("[usm {{{{ record.id }}}}] {greeting}"),
            text: format!("{greeting} {{{{ recipient.name }}}}"),
            html: format!("<p>{greeting} {{{{ recipient.name }}}}</p>"),
        }
    }

    #[test]
    fn a_domain_writes_sets_per_language_and_people_get_theirs() {
        let templates = Templates::new().unwrap();
        let store = usm_store::MemoryStore::new();
        let (it, hr) = (Domain::new("it").unwrap(), Domain::new("hr").unwrap());
        let context = json!({"record": {"id": "INC-1"}, "recipient": {"name": "<Lea>"}});
        assert!(put(&store, &it, &set(Some("de"), "Hallo")).unwrap());
        assert!(put(&store, &it, &set(None, "Hi")).unwrap());
        assert!(!put(&store, &it, &set(None, "Hey")).unwrap());
        let render = |domain: &Domain, locale| {
            templates
                .render(
                    &store,
                    domain,
                    &ModuleNotifications::default(),
                    "created",
                    locale,
                    &context,
                )
                .unwrap()
        };
        assert_eq!(render(&it, Some("de-CH")).text, "Hallo <Lea>");
        assert_eq!(render(&it, Some("de")).html, "<p>Hallo &lt;Lea&gt;</p>");
        assert_eq!(render(&it, Some("fr")).subject, "[usm INC-1] Hey");
        assert_eq!(render(&it, None).text, "Hey <Lea>");
        assert!(render(&hr, Some("de")).subject.contains("Received"));
        assert!(delete(&store, &it, "created", Some("de")).unwrap());
        assert_eq!(render(&it, Some("de")).text, "Hey <Lea>");
        let none = ModuleNotifications::default();
        assert!(exists(&store, &it, &none, "created").unwrap());
        assert!(!exists(&store, &it, &none, "escalated").unwrap());
    }

    #[test]
    fn a_modules_sets_come_between_the_domains_own_and_the_built_in() {
        let templates = Templates::new().unwrap();
        let store = usm_store::MemoryStore::new();
        let it = Domain::new("it").unwrap();
        let context = json!({"record": {"id": "INC-1"}, "recipient": {"name": "Lea"}});
        let mut escalated = set(None, "Escalated");
        escalated.name = "escalated".into();
        let modules = ModuleNotifications {
            rules: Vec::new(),
            templates: vec![
                ("itil4".into(), set(None, "Module hi")),
                ("itil4".into(), set(Some("de"), "Modul hallo")),
                ("itil4".into(), escalated),
            ],
        };
        let render = |locale| {
            templates
                .render(&store, &it, &modules, "created", locale, &context)
                .unwrap()
                .text
        };
        assert_eq!(render(None), "Module hi Lea");
        assert_eq!(render(Some("de-AT")), "Modul hallo Lea");
        // The domain's own set for everyone beats the module's for everyone, not its German one.
        assert!(put(&store, &it, &set(None, "Own hi")).unwrap());
        assert_eq!(render(None), "Own hi Lea");
        assert_eq!(render(Some("de")), "Modul hallo Lea");
        assert!(exists(&store, &it, &modules, "escalated").unwrap());
        assert!(!exists(&store, &it, &ModuleNotifications::default(), "escalated").unwrap());
    }

    #[test]
    fn broken_sets_are_refused_with_the_member_at_fault() {
        let field = |change: fn(&mut TemplateSet)| {
            let mut bad = set(None, "x");
            change(&mut bad);
            match bad.check() {
                Err(NotifyError::Invalid { field, .. }) => field,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(field(|s| s.name = "Created!".into()), "/name");
        assert_eq!(field(|s| s.locale = Some("de_DE".into())), "/locale");
        assert_eq!(field(|s| s.text = "{% if %}".into()), "/text");
        assert_eq!(field(|s| s.subject = "x".repeat(2_000)), "/subject");
    }
}
