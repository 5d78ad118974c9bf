//! The service catalog's vocabulary: what a requester can order, the form they fill in, who
//! approves the order, and the tasks that fulfil it. Admins write items; modules ship them
//! (`[[catalog_items]]` in `module.toml`).

use std::{collections::BTreeSet, fmt};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Domain, FieldError};

/// Most fulfilment tasks of one item.
pub const MAX_TASKS: usize = 20;
/// Largest form (its JSON), in bytes.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// Longest item name and task title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4_000;

/// Who decides whether an order goes ahead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Approver {
    /// No one: an order is fulfilled at once.
    #[default]
    None,
    /// The manager of the person the order is for.
    Manager,
    /// Any member of the group (of the item's domain) but the requester.
    Group(String),
}

impl fmt::Display for Approver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Manager => f.write_str("manager"),
            Self::Group(id) => write!(f, "group:{id}"),
        }
    }
}

impl Serialize for Approver {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Approver {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "none" => Ok(Self::None),
            "manager" => Ok(Self::Manager),
            other => match other.strip_prefix("group:") {
                Some(id) if is_id(id) => Ok(Self::Group(id.to_owned())),
                _ => Err(serde::de::Error::custom(
                    "an approver is none, manager or group:<id>",
                )),
            },
        }
    }
}

/// How an item's orders are approved.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovalPolicy {
    /// `none`, `manager` (of the person the order is for) or `group:<id>`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "manager"))]
    pub by: Approver,
}

/// One task that fulfils an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FulfilmentTask {
    /// The task's title, a template over the order's `variables`, e.g.
    /// `Create accounts for {{ variables.employee }}`. Unique within the item.
    pub title: String,
    /// The domain the task is created in.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub domain: Domain,
    /// The group (of that domain) the task is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Titles of earlier tasks that must be finished before this one is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// What can be ordered, in one domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogItem {
    /// 1-64 lowercase letters, digits and hyphens; a module's items are `<domain>.<id>`.
    pub id: String,
    /// The domain the item is ordered in: where its request records live.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub domain: Domain,
    /// What a requester sees, e.g. `New starter`.
    pub name: String,
    /// What the item is for.
    #[serde(default)]
    pub description: String,
    /// A JSON Schema (draft 2020-12, root `type: object`) of the order's `variables`; UI hints
    /// such as `title`, `description`, `enum` and `format` are schema keywords.
    #[serde(default = "empty_form")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub form: Value,
    /// Who approves an order.
    #[serde(default)]
    pub approval: ApprovalPolicy,
    /// The tasks that fulfil an order, 1-20.
    pub fulfilment: Vec<FulfilmentTask>,
    /// The module that ships the item; such an item changes only with the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// A change of an item: each member given replaces the item's; `id`, `domain` and `module`
/// do not change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ItemPatch {
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A new form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub form: Option<Value>,
    /// A new approval policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicy>,
    /// New fulfilment tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfilment: Option<Vec<FulfilmentTask>>,
}

impl CatalogItem {
    /// The item with `patch` applied.
    #[must_use]
    pub fn patched(mut self, patch: ItemPatch) -> Self {
        if let Some(name) = patch.name {
            self.name = name;
        }
        if let Some(description) = patch.description {
            self.description = description;
        }
        if let Some(form) = patch.form {
            self.form = form;
        }
        if let Some(approval) = patch.approval {
            self.approval = approval;
        }
        if let Some(fulfilment) = patch.fulfilment {
            self.fulfilment = fulfilment;
        }
        self
    }
}

/// An item a module ships (`[[catalog_items]]`): offered in each domain the module is enabled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogItemDecl {
    /// 1-64 lowercase letters, digits and hyphens.
    pub id: String,
    /// What a requester sees.
    pub name: String,
    /// What the item is for.
    #[serde(default)]
    pub description: String,
    /// A JSON Schema of the order's variables.
    #[serde(default = "empty_form")]
    pub form: Value,
    /// Who approves an order.
    #[serde(default)]
    pub approval: ApprovalPolicy,
    /// The tasks that fulfil an order.
    pub fulfilment: Vec<FulfilmentTask>,
}

fn empty_form() -> Value {
    serde_json::json!({"type": "object"})
}

impl CatalogItemDecl {
    /// The item as offered in `domain`, by `module`.
    pub fn in_domain(&self, domain: &Domain, module: &str) -> CatalogItem {
        CatalogItem {
            id: format!("{domain}.{}", self.id),
            domain: domain.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            form: self.form.clone(),
            approval: self.approval.clone(),
            fulfilment: self.fulfilment.clone(),
            module: Some(module.to_owned()),
        }
    }

    /// Checks what the types do not, as for an admin's item.
    pub fn check(&self) -> Result<(), FieldError> {
        if !is_id(&self.id) {
            return Err(invalid("/id", ID_RULE));
        }
        check_content(&self.name, &self.description, &self.form, &self.fulfilment)
    }
}

const ID_RULE: &str = "1-64 lowercase letters, digits and hyphens";

/// Whether `text` is an id of an item or a group: 1-64 lowercase letters, digits and hyphens.
pub fn is_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn invalid(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl CatalogItem {
    /// Checks what the types do not: id, lengths, the form is a schema of an object, and the
    /// tasks are 1-20 with unique titles, each `after` naming an earlier one. Whether the
    /// domains and groups exist is the server's to check.
    pub fn check(&self) -> Result<(), FieldError> {
        if !is_id(&self.id) {
            return Err(invalid("/id", ID_RULE));
        }
        check_content(&self.name, &self.description, &self.form, &self.fulfilment)
    }

    /// A validator of the order form.
    pub fn form_validator(&self) -> Result<jsonschema::Validator, FieldError> {
        compile_form(&self.form)
    }

    /// The plan an order follows: each task with the positions of the tasks it waits for.
    pub fn plan(&self) -> Vec<(usize, &FulfilmentTask, Vec<usize>)> {
        self.fulfilment
            .iter()
            .enumerate()
            .map(|(at, task)| {
                let after = task
                    .after
                    .iter()
                    .filter_map(|title| self.fulfilment.iter().position(|t| t.title == *title))
                    .collect();
                (at, task, after)
            })
            .collect()
    }
}

fn compile_form(form: &Value) -> Result<jsonschema::Validator, FieldError> {
    if form.get("type") != Some(&Value::from("object")) {
        return Err(invalid(
            "/form",
            "the form's root must be {\"type\": \"object\", …}",
        ));
    }
    jsonschema::options()
        .should_validate_formats(true)
        .build(form)
        .map_err(|e| invalid("/form", format!("not a JSON Schema: {e}")))
}

fn check_content(
    name: &str,
    description: &str,
    form: &Value,
    fulfilment: &[FulfilmentTask],
) -> Result<(), FieldError> {
    let name_chars = name.chars().count();
    if name.trim().is_empty() || name_chars > MAX_TITLE_CHARS {
        return Err(invalid(
            "/name",
            format!("1-{MAX_TITLE_CHARS} characters, not blank"),
        ));
    }
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(
            "/description",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    let form_bytes = serde_json::to_vec(form).map_or(usize::MAX, |bytes| bytes.len());
    if form_bytes > MAX_FORM_BYTES {
        return Err(invalid(
            "/form",
            format!("at most {MAX_FORM_BYTES} bytes of JSON"),
        ));
    }
    compile_form(form)?;
    if fulfilment.is_empty() || fulfilment.len() > MAX_TASKS {
        return Err(invalid(
            "/fulfilment",
            format!("1-{MAX_TASKS} tasks fulfil an item"),
        ));
    }
    let mut earlier = BTreeSet::new();
    for (at, task) in fulfilment.iter().enumerate() {
        let title_chars = task.title.chars().count();
        if task.title.trim().is_empty() || title_chars > MAX_TITLE_CHARS {
            return Err(invalid(
                &format!("/fulfilment/{at}/title"),
                format!("1-{MAX_TITLE_CHARS} characters, not blank"),
            ));
        }
        if task.group.as_deref().is_some_and(|g| !is_id(g)) {
            return Err(invalid(&format!("/fulfilment/{at}/group"), ID_RULE));
        }
        for before in &task.after {
            if !earlier.contains(before.as_str()) {
                return Err(invalid(
                    &format!("/fulfilment/{at}/after"),
                    format!(
                        "{:?} is not the title of an earlier task",
                        before.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
        if !earlier.insert(task.title.as_str()) {
            return Err(invalid(
                &format!("/fulfilment/{at}/title"),
                "two tasks of an item have this title",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(value: Value) -> CatalogItem {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("item: {e}"))
    }

    fn base() -> Value {
        json!({
            "id": "laptop", "domain": "it", "name": "A laptop",
            "form": {"type": "object", "required": ["model"],
                     "properties": {"model": {"type": "string", "enum": ["13", "15"]}}},
            "approval": {"by": "manager"},
            "fulfilment": [
                {"title": "Order a {{ variables.model }}-inch laptop", "domain": "it", "group": "it-workplace"},
                {"title": "Hand it over", "domain": "it", "after": ["Order a {{ variables.model }}-inch laptop"]}
            ]
        })
    }

    #[test]
    fn a_well_formed_item_passes_and_its_plan_orders_tasks() {
        let item = item(base());
        assert_eq!(item.check(), Ok(()));
        let plan = item.plan();
        assert_eq!(plan[0].2, Vec::<usize>::new());
        assert_eq!(plan[1].2, vec![0]);
        assert_eq!(item.approval.by, Approver::Manager);
    }

    #[test]
    fn each_broken_part_is_named() {
        let cases = [
            ("/id", json!({"id": "Not an id"})),
            ("/name", json!({"name": " "})),
            ("/form", json!({"form": {"type": "array"}})),
            (
                "/form",
                json!({"form": {"type": "object", "properties": {"a": {"type": 7}}}}),
            ),
            ("/fulfilment", json!({"fulfilment": []})),
            (
                "/fulfilment/1/after",
                json!({"fulfilment": [{"title": "a", "domain": "it"}, {"title": "b", "domain": "it", "after": ["c"]}]}),
            ),
            (
                "/fulfilment/0/after",
                json!({"fulfilment": [{"title": "a", "domain": "it", "after": ["b"]}, {"title": "b", "domain": "it"}]}),
            ),
            (
                "/fulfilment/1/title",
                json!({"fulfilment": [{"title": "a", "domain": "it"}, {"title": "a", "domain": "it"}]}),
            ),
            (
                "/fulfilment/0/group",
                json!({"fulfilment": [{"title": "a", "domain": "it", "group": "Team A"}]}),
            ),
        ];
        for (field, change) in cases {
            let mut value = base();
            for (key, member) in change.as_object().into_iter().flatten() {
                value[key] = member.clone();
            }
            let error = item(value).check().expect_err(field);
            assert_eq!(error.field, field, "{change}");
        }
    }

    #[test]
    fn approvers_read_and_write_as_text() {
        for text in ["none", "manager", "group:it-identity"] {
            let approver: Approver = serde_json::from_value(json!(text)).unwrap_or_default();
            assert_eq!(approver.to_string(), text);
        }
        for text in ["group:", "group:Bad Id", "boss"] {
            assert!(
                serde_json::from_value::<Approver>(json!(text)).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn a_module_item_is_named_by_its_domain() {
        let decl = CatalogItemDecl {
            id: "onboarding".into(),
            name: "New starter".into(),
            description: String::new(),
            form: empty_form(),
            approval: ApprovalPolicy::default(),
            fulfilment: vec![FulfilmentTask {
                title: "Create accounts".into(),
                domain: Domain::new("it").unwrap_or_default(),
                group: None,
                after: Vec::new(),
            }],
        };
        assert_eq!(decl.check(), Ok(()));
        let hr = Domain::new("hr").unwrap_or_default();
        let item = decl.in_domain(&hr, "hr");
        assert_eq!(item.id, "hr.onboarding");
        assert_eq!(item.module.as_deref(), Some("hr"));
    }
}
