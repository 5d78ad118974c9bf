//! The messages' templates: a subject, a plain-text body and an HTML body per notice.

use minijinja::Environment;
use serde::Serialize;

use crate::NotifyError;

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
];

/// The templates, compiled once.
pub(crate) struct Templates(Environment<'static>);

/// A rendered message.
pub(crate) struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Templates {
    pub(crate) fn new() -> Result<Self, NotifyError> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        for (name, source) in DEFAULTS {
            env.add_template(name, source)
                .map_err(|e| NotifyError::Template {
                    name: (*name).to_owned(),
                    detail: e.to_string(),
                })?;
        }
        Ok(Self(env))
    }

    pub(crate) fn render(
        &self,
        notice: &str,
        context: &impl Serialize,
    ) -> Result<Rendered, NotifyError> {
        let part = |suffix: &str| {
            let name = format!("{notice}.{suffix}");
            self.0
                .get_template(&name)
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
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn html_bodies_escape_what_people_typed_and_subjects_stay_one_line() {
        let templates = Templates::new().unwrap();
        let context = json!({
            "record": {"id": "INC-7", "title": "<script>x</script>\r\nBcc: all@corp", "kind": "incident",
                       "state": "new"},
            "recipient": {"name": "Rob"},
        });
        let rendered = templates.render("created", &context).unwrap();
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
