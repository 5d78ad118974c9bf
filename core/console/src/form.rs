//! Forms: the body of a form post, and HTML form fields generated from a JSON Schema (a kind's
//! fields, a catalog item's order form) with the values posted back turned into JSON the
//! schema's types expect. The engine validates the result against the schema itself.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::render::Refusal;

/// Largest form body the console reads.
pub const MAX_FORM_BYTES: usize = 256 * 1024;
/// Form fields prefixed so a schema's `title` or `csrf` property cannot collide with ours.
pub const FIELD_PREFIX: &str = "field.";

/// A posted `application/x-www-form-urlencoded` body.
#[derive(Debug, Default)]
pub struct FormBody(pub Vec<(String, String)>);

impl FormBody {
    /// Parses a body the browser sent with `content_type`.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, Refusal> {
        let urlencoded = content_type.is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|essence| essence.trim() == "application/x-www-form-urlencoded")
        });
        if !urlencoded {
            return Err(Refusal::BadForm(
                "the form must be sent as application/x-www-form-urlencoded".into(),
            ));
        }
        if body.len() > MAX_FORM_BYTES {
            return Err(Refusal::BadForm(format!(
                "the form is larger than {MAX_FORM_BYTES} bytes"
            )));
        }
        Ok(Self(
            url::form_urlencoded::parse(body)
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        ))
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// How a property is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// One line of text.
    Text,
    /// Several lines.
    TextArea,
    /// A number (`step` 1 for integers).
    Integer,
    /// A number.
    Number,
    /// A checkbox.
    Checkbox,
    /// One of a list.
    Select,
    /// Several of a list.
    MultiSelect,
    /// A date (`format: date`).
    Date,
    /// JSON, for objects and arrays of anything else.
    Json,
}

/// A form field for one property of a schema.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    /// The property.
    pub name: String,
    /// The HTML form field's name.
    pub input: String,
    /// Its label: the schema's `title`, else the property's name.
    pub label: String,
    /// The schema's `description`.
    pub help: Option<String>,
    /// How it is entered.
    pub control: Control,
    /// Whether the schema requires it.
    pub required: bool,
    /// The choices of a select.
    pub options: Vec<String>,
    /// The schema's `default`, as text.
    pub value: String,
}

/// The type a property's schema declares, ignoring `null` in a list of types.
fn declared_type(schema: &Value) -> Option<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null"),
        _ => None,
    }
}

fn choices(schema: &Value) -> Vec<String> {
    schema
        .get("enum")
        .and_then(Value::as_array)
        .map(|values| {
            values
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn control_of(schema: &Value) -> Control {
    if !choices(schema).is_empty() {
        return Control::Select;
    }
    match declared_type(schema) {
        Some("string") => {
            let long = schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_none_or(|max| max > 200);
            match schema.get("format").and_then(Value::as_str) {
                Some("date") => Control::Date,
                _ if long && schema.get("maxLength").is_some() => Control::TextArea,
                _ => Control::Text,
            }
        }
        Some("integer") => Control::Integer,
        Some("number") => Control::Number,
        Some("boolean") => Control::Checkbox,
        Some("array") if !choices(schema.get("items").unwrap_or(&Value::Null)).is_empty() => {
            Control::MultiSelect
        }
        _ => Control::Json,
    }
}

/// The form fields of an object schema's properties, in the schema's order, keeping those
/// `keep` admits (the caller may write them).
pub fn fields_of(schema: &Value, keep: impl Fn(&str) -> bool) -> Vec<Field> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, property)| {
            let control = control_of(property);
            let options = match control {
                Control::MultiSelect => choices(property.get("items").unwrap_or(&Value::Null)),
                _ => choices(property),
            };
            Field {
                name: name.clone(),
                input: format!("{FIELD_PREFIX}{name}"),
                label: property
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or(name)
                    .to_owned(),
                help: property
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                control,
                required: required.contains(&name.as_str()),
                options,
                value: match property.get("default") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                },
            }
        })
        .collect()
}

/// The JSON values of `fields` as posted: blank fields are left out (the schema decides
/// whether they were required), numbers and JSON are parsed, an unticked checkbox is `false`.
pub fn values_of(form: &FormBody, fields: &[Field]) -> Result<Map<String, Value>, Refusal> {
    let mut values = Map::new();
    for field in fields {
        let bad = |what: &str| Refusal::BadForm(format!("{}: {what}", field.label));
        let value = match field.control {
            Control::Checkbox => Some(Value::Bool(form.get(&field.input).is_some())),
            Control::MultiSelect => {
                let chosen: Vec<Value> = form
                    .all(&field.input)
                    .filter(|v| !v.is_empty())
                    .map(|v| Value::String(v.to_owned()))
                    .collect();
                (!chosen.is_empty()).then_some(Value::Array(chosen))
            }
            control => match form.text(&field.input) {
                None => None,
                Some(text) => Some(match control {
                    Control::Integer => Value::from(
                        text.parse::<i64>()
                            .map_err(|_| bad("expected a whole number"))?,
                    ),
                    Control::Number => serde_json::Number::from_f64(
                        text.parse::<f64>().map_err(|_| bad("expected a number"))?,
                    )
                    .map(Value::Number)
                    .ok_or_else(|| bad("expected a finite number"))?,
                    Control::Json => serde_json::from_str(&text)
                        .map_err(|error| bad(&format!("expected JSON: {error}")))?,
                    _ => Value::String(text),
                }),
            },
        };
        if let Some(value) = value {
            values.insert(field.name.clone(), value);
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["impact"],
            "properties": {
                "impact": {"type": "string", "enum": ["low", "high"], "title": "Impact"},
                "count": {"type": "integer"},
                "ratio": {"type": ["number", "null"]},
                "urgent": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
                "extra": {"type": "object"},
                "note": {"type": "string", "maxLength": 4000},
                "owned": {"type": "string"}
            }
        })
    }

    #[test]
    fn a_schema_becomes_labelled_controls() {
        let fields = fields_of(&schema(), |name| name != "owned");
        let by_name = |name: &str| {
            fields
                .iter()
                .find(|f| f.name == name)
                .unwrap_or_else(|| panic!("{name} has a field"))
        };
        assert_eq!(by_name("impact").control, Control::Select);
        assert_eq!(by_name("impact").options, ["low", "high"]);
        assert!(by_name("impact").required);
        assert_eq!(by_name("impact").label, "Impact");
        assert_eq!(by_name("count").control, Control::Integer);
        assert_eq!(by_name("ratio").control, Control::Number);
        assert_eq!(by_name("urgent").control, Control::Checkbox);
        assert_eq!(by_name("tags").control, Control::MultiSelect);
        assert_eq!(by_name("extra").control, Control::Json);
        assert_eq!(by_name("note").control, Control::TextArea);
        assert!(fields.iter().all(|f| f.name != "owned"), "not kept");
    }

    #[test]
    fn posted_values_take_the_schema_types() {
        let fields = fields_of(&schema(), |_| true);
        let form = FormBody(
            [
                ("field.impact", "high"),
                ("field.count", " 3 "),
                ("field.ratio", "0.5"),
                ("field.tags", "a"),
                ("field.tags", "b"),
                ("field.extra", "{\"k\": 1}"),
                ("field.note", ""),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        );
        let values = values_of(&form, &fields).expect("converts");
        assert_eq!(
            Value::Object(values),
            json!({"impact": "high", "count": 3, "ratio": 0.5, "urgent": false,
                   "tags": ["a", "b"], "extra": {"k": 1}})
        );
        let wrong = FormBody(vec![("field.count".into(), "three".into())]);
        assert!(matches!(
            values_of(&wrong, &fields),
            Err(Refusal::BadForm(_))
        ));
    }

    #[test]
    fn only_urlencoded_forms_are_read() {
        assert!(FormBody::parse(Some("application/json"), b"{}").is_err());
        let form = FormBody::parse(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            b"a=1&b=x+y%21",
        )
        .expect("parses");
        assert_eq!(form.get("b"), Some("x y!"));
        assert!(
            FormBody::parse(
                Some("application/x-www-form-urlencoded"),
                &vec![b'a'; MAX_FORM_BYTES + 1]
            )
            .is_err()
        );
    }
}
