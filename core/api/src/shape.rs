//! How a client shapes a page of records: sparse fieldsets (`fields=`), the records they link
//! to inline (`expand=links`), and the total the filters select (`count=true`).

use std::collections::BTreeSet;

use usm_engine::{Engine, EngineError};
use usm_model::{Actor, ErrorCode, Record, RecordId};

use crate::problem::ApiError;

/// Most names a sparse fieldset may list.
const MAX_FIELD_NAMES: usize = 50;
/// Most linked records one page inlines: expansion reads one record per link, so a page of
/// densely linked records must not turn one request into thousands of reads.
pub const MAX_INCLUDED: usize = 500;

/// The shaping a listing asked for.
#[derive(Debug, Default)]
pub struct Shape {
    /// Members of `fields` to keep; every member when `None`.
    fields: Option<BTreeSet<String>>,
    /// Whether linked records come inline, in `included`.
    expand_links: bool,
}

impl Shape {
    /// Reads the `fields` and `expand` parameters.
    pub fn parse(fields: Option<&str>, expand: Option<&str>) -> Result<Self, ApiError> {
        let fields = fields
            .map(|list| {
                let names: BTreeSet<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
                    .collect();
                if names.is_empty() || names.len() > MAX_FIELD_NAMES {
                    return Err(invalid(
                        "fields",
                        format!(
                            "a comma-separated list of 1 to {MAX_FIELD_NAMES} field names, e.g. fields=priority,assignee"
                        ),
                    ));
                }
                match names.iter().find(|name| name.len() > 100) {
                    Some(name) => Err(invalid(
                        "fields",
                        format!("{}…: a field name has at most 100 bytes", name.chars().take(20).collect::<String>()),
                    )),
                    None => Ok(names),
                }
            })
            .transpose()?;
        let expand_links = match expand {
            None => false,
            Some("links") => true,
            Some(other) => {
                return Err(invalid(
                    "expand",
                    format!(
                        "{}: only `links` can be expanded",
                        other.chars().take(64).collect::<String>()
                    ),
                ));
            }
        };
        Ok(Self {
            fields,
            expand_links,
        })
    }

    /// The page's records trimmed to the fieldset, and the records they link to that `actor`
    /// may see (trimmed alike), each once and none already on the page. A link to a record
    /// the caller may not see is left as it is, without telling whether that record exists.
    pub fn apply(
        &self,
        engine: &Engine,
        actor: &Actor,
        mut records: Vec<Record>,
    ) -> Result<(Vec<Record>, Vec<Record>), ApiError> {
        let mut included = Vec::new();
        if self.expand_links {
            let on_page: BTreeSet<&RecordId> = records.iter().map(|r| &r.id).collect();
            let mut wanted: Vec<&RecordId> = Vec::new();
            let mut seen = BTreeSet::new();
            for link in records.iter().flat_map(|r| &r.links) {
                if !on_page.contains(&link.to) && seen.insert(&link.to) {
                    wanted.push(&link.to);
                }
            }
            for id in wanted.into_iter().take(MAX_INCLUDED) {
                match engine.get(actor, id.as_str()) {
                    Ok(record) => included.push(record),
                    Err(EngineError::NotFound(_) | EngineError::Forbidden(_)) => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        if let Some(names) = &self.fields {
            for record in records.iter_mut().chain(included.iter_mut()) {
                record.fields.retain(|name, _| names.contains(name));
            }
        }
        Ok((records, included))
    }
}

fn invalid(parameter: &str, message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, format!("{parameter}: {message}")).with_field(parameter)
}
