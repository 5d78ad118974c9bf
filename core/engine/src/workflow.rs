//! USM-WIF, the SURVUZ draft JSON interchange format for workflows: a workflow of steps, each in
//! one of the five USM processes, each made of activities with RACI per profile. Parsing ignores
//! members it does not know, as the format requires; export writes the members it knows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use usm_model::Process;

/// A USM-WIF document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WifDocument {
    /// The format version the document claims, e.g. `1.0-draft`.
    pub usm_wif: String,
    /// The workflow.
    pub workflow: Workflow,
}

/// A workflow: a sequence of steps through the USM processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Workflow {
    /// Identifier in URLs: lowercase letters, digits and dashes.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// The workflow's own version, e.g. `2`; an import that replaces a module's template of
    /// the same slug must give one, so a template is never overwritten by accident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Position among the eight USM workflows, for the templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// `reactive` (a customer call starts it) or `proactive` (a planned trigger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// What the workflow is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The steps, in order.
    pub steps: Vec<WifStep>,
}

/// One step of a workflow, in one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WifStep {
    /// Display name.
    pub name: String,
    /// `agree`, `change`, `recover`, `operate` or `improve`.
    pub process: Process,
    /// What happens in the step.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The activities, in order.
    pub activities: Vec<Activity>,
}

/// One activity, with who is Responsible, Accountable, Consulted and Informed, per profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Activity {
    /// Display name.
    pub name: String,
    /// Profile → one or more of the letters R, A, C, I.
    #[serde(default)]
    pub raci: BTreeMap<String, String>,
}

/// Most steps, activities per step and profiles per activity a document may have.
const MAX_ITEMS: usize = 100;

/// Parses and checks a USM-WIF document.
pub fn parse(bytes: &[u8]) -> Result<WifDocument, String> {
    let document: WifDocument =
        serde_json::from_slice(bytes).map_err(|e| format!("not a USM-WIF document: {e}"))?;
    check(&document)?;
    Ok(document)
}

/// Checks slug, sizes and RACI letters; at most one Accountable per activity.
pub fn check(document: &WifDocument) -> Result<(), String> {
    let workflow = &document.workflow;
    let slug_ok = (1..=64).contains(&workflow.slug.len())
        && workflow.slug.starts_with(|c: char| c.is_ascii_lowercase())
        && workflow
            .slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !slug_ok {
        return Err(
            "/workflow/slug: 1-64 lowercase letters, digits or '-', starting with a letter".into(),
        );
    }
    if workflow.name.trim().is_empty() || workflow.name.len() > 200 {
        return Err("/workflow/name: 1-200 characters".into());
    }
    if workflow
        .version
        .as_ref()
        .is_some_and(|v| v.trim().is_empty() || v.len() > 64 || v.contains(char::is_control))
    {
        return Err("/workflow/version: 1-64 printable characters".into());
    }
    if workflow.steps.is_empty() || workflow.steps.len() > MAX_ITEMS {
        return Err(format!("/workflow/steps: 1 to {MAX_ITEMS} steps"));
    }
    for (s, step) in workflow.steps.iter().enumerate() {
        if step.activities.len() > MAX_ITEMS {
            return Err(format!(
                "/workflow/steps/{s}/activities: at most {MAX_ITEMS}"
            ));
        }
        for (a, activity) in step.activities.iter().enumerate() {
            let at = format!("/workflow/steps/{s}/activities/{a}/raci");
            if activity.raci.len() > MAX_ITEMS {
                return Err(format!("{at}: at most {MAX_ITEMS} profiles"));
            }
            let mut accountable = 0;
            for (profile, letters) in &activity.raci {
                if letters.is_empty() || !letters.chars().all(|c| "RACI".contains(c)) {
                    return Err(format!("{at}/{profile}: use the letters R, A, C and I"));
                }
                accountable += usize::from(letters.contains('A'));
            }
            if accountable > 1 {
                return Err(format!("{at}: one profile at most is Accountable"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_members_are_ignored_and_raci_checked() {
        let doc = parse(
            br#"{"usm_wif": "1.0-draft", "vendor": {"x": 1}, "workflow": {"slug": "wf", "name": "W", "colour": "red",
                "steps": [{"name": "s", "process": "recover", "activities": [{"name": "a", "raci": {"desk": "RA", "user": "I"}}]}]}}"#,
        )
        .unwrap();
        let exported = serde_json::to_value(&doc).unwrap();
        assert!(exported.get("vendor").is_none());
        assert!(exported["workflow"].get("colour").is_none());
        let bad_letter = br#"{"usm_wif": "1", "workflow": {"slug": "wf", "name": "W", "steps": [{"name": "s", "process": "agree", "activities": [{"name": "a", "raci": {"desk": "X"}}]}]}}"#;
        assert!(parse(bad_letter).unwrap_err().contains("raci/desk"));
        let two_accountable = br#"{"usm_wif": "1", "workflow": {"slug": "wf", "name": "W", "steps": [{"name": "s", "process": "agree", "activities": [{"name": "a", "raci": {"a": "A", "b": "A"}}]}]}}"#;
        assert!(parse(two_accountable).is_err());
        let bad_process = br#"{"usm_wif": "1", "workflow": {"slug": "wf", "name": "W", "steps": [{"name": "s", "process": "deploy", "activities": []}]}}"#;
        assert!(parse(bad_process).is_err());
    }
}
