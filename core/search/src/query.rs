//! Filters, orders and search text, and the index queries they become.

use std::{fmt, ops::Bound, str::FromStr};

use serde::{Deserialize, Serialize};
use tantivy::{
    Term,
    query::{BooleanQuery, EmptyQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery},
    schema::{Field, IndexRecordOption},
    tokenizer::TextAnalyzer,
};
use usm_model::{Actor, Record, Timestamp};

use crate::{
    SearchError,
    document::{ABSENT, Fields, micros, text_field},
};

/// Longest search text accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 1_000;
/// Most words and phrases one search may hold.
pub const MAX_TERMS: usize = 32;

/// Where a record's SLA stands, as a queue filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SlaFilter {
    /// A clock not yet stopped is past its target.
    Breached,
    /// A running clock is past its warning threshold and not yet breached.
    Warning,
    /// A clock is running (neither paused nor stopped).
    Running,
}

impl FromStr for SlaFilter {
    type Err = SearchError;

    fn from_str(text: &str) -> Result<Self, SearchError> {
        match text {
            "breached" => Ok(Self::Breached),
            "warning" => Ok(Self::Warning),
            "running" => Ok(Self::Running),
            _ => Err(SearchError::invalid(
                "sla",
                format!("{text:?} is not breached, warning or running"),
            )),
        }
    }
}

/// What records a queue holds. Every member narrows it; `me` as the assignee or requester is the
/// caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Filter {
    /// Records of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Records in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Records of this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Records assigned to this person (`me`: the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// Records assigned to this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_group: Option<String>,
    /// Records this person requested or created (`me`: the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// Records of this priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Records whose SLA stands so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SlaFilter>,
    /// Records written at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub updated_since: Option<Timestamp>,
}

impl Filter {
    /// The filter with `me` replaced by the caller's name.
    #[must_use]
    pub fn for_caller(mut self, actor: &Actor) -> Self {
        for member in [&mut self.assignee, &mut self.requester] {
            if member.as_deref() == Some("me") {
                *member = Some(actor.name.clone());
            }
        }
        self
    }

    /// Whether the record, as the store has it now, still matches. The SLA filter is left to
    /// the index: it moves with time, not with writes.
    pub(crate) fn matches(&self, record: &Record) -> bool {
        let is = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        let requested = self.requester.as_deref().is_none_or(|who| {
            record.created_by == who || text_field(record, "requester") == Some(who)
        });
        is(&self.kind, Some(record.kind.as_str()))
            && is(&self.state, Some(record.state.as_str()))
            && is(&self.domain, Some(record.domain.as_str()))
            && is(&self.assignee, text_field(record, "assignee"))
            && is(
                &self.assignment_group,
                text_field(record, "assignment_group"),
            )
            && is(&self.priority, text_field(record, "priority"))
            && requested
            && self
                .updated_since
                .is_none_or(|since| record.updated_at >= since)
    }

    /// The index clauses of the filter, evaluated at `now`.
    pub(crate) fn clauses(&self, fields: &Fields, now: Timestamp) -> Vec<(Occur, Box<dyn Query>)> {
        let mut clauses = Vec::new();
        for (field, value) in [
            (fields.kind, &self.kind),
            (fields.state, &self.state),
            (fields.domain, &self.domain),
            (fields.assignee, &self.assignee),
            (fields.group, &self.assignment_group),
            (fields.owner, &self.requester),
            (fields.priority, &self.priority),
        ] {
            if let Some(value) = value {
                clauses.push((Occur::Must, exact(field, value)));
            }
        }
        if let Some(since) = self.updated_since {
            clauses.push((Occur::Must, at_least(fields.updated, micros(since))));
        }
        let now = micros(now);
        match self.sla {
            None => {}
            Some(SlaFilter::Running) => {
                clauses.push((Occur::Must, below(fields.sla_due, ABSENT)));
            }
            Some(SlaFilter::Breached) => {
                let recorded = exact_u64(fields.breached, 1);
                let overdue = at_most(fields.sla_due, now);
                clauses.push((
                    Occur::Must,
                    Box::new(BooleanQuery::new(vec![
                        (Occur::Should, recorded),
                        (Occur::Should, overdue),
                    ])),
                ));
            }
            Some(SlaFilter::Warning) => {
                clauses.push((Occur::Must, at_most(fields.sla_warning, now)));
                clauses.push((Occur::Must, above(fields.sla_due, now)));
                clauses.push((Occur::MustNot, exact_u64(fields.breached, 1)));
            }
        }
        clauses
    }

    /// A stable text of the filter, for binding cursors to it.
    pub(crate) fn fingerprint(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a queue is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SortKey {
    /// Creation.
    CreatedAt,
    /// The last write.
    UpdatedAt,
    /// Priority, P1 first.
    Priority,
    /// The earliest due instant of a running SLA clock; records without one last.
    SlaDue,
}

/// A sort key and its direction, written `created_at` (ascending) or `-created_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    /// What to sort by.
    pub key: SortKey,
    /// Largest first.
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Self {
            key: SortKey::CreatedAt,
            descending: false,
        }
    }
}

impl FromStr for Sort {
    type Err = SearchError;

    fn from_str(text: &str) -> Result<Self, SearchError> {
        let (descending, name) = match text.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, text),
        };
        let key = match name {
            "created_at" => SortKey::CreatedAt,
            "updated_at" => SortKey::UpdatedAt,
            "priority" => SortKey::Priority,
            "sla_due" => SortKey::SlaDue,
            _ => {
                return Err(SearchError::invalid(
                    "sort",
                    format!(
                        "{text:?} is not one of created_at, updated_at, priority, sla_due \
                         (prefix - for descending)"
                    ),
                ));
            }
        };
        Ok(Self { key, descending })
    }
}

impl fmt::Display for Sort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.key {
            SortKey::CreatedAt => "created_at",
            SortKey::UpdatedAt => "updated_at",
            SortKey::Priority => "priority",
            SortKey::SlaDue => "sla_due",
        };
        if self.descending {
            write!(f, "-{name}")
        } else {
            f.write_str(name)
        }
    }
}

impl Serialize for Sort {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Sort {
    /// The field holding the primary key of the order.
    pub(crate) fn field(&self, fields: &Fields) -> Field {
        match self.key {
            SortKey::CreatedAt => fields.created,
            SortKey::UpdatedAt => fields.updated,
            SortKey::Priority => fields.rank,
            SortKey::SlaDue => fields.sla_due,
        }
    }
}

/// A record's place in an order: larger comes first, so ascending orders store complements.
pub(crate) type Place = (u64, u64, u64);

pub(crate) fn place(sort: Sort, primary: u64, created: u64, tie: u64) -> Place {
    if sort.descending {
        (primary, created, tie)
    } else {
        (u64::MAX - primary, u64::MAX - created, u64::MAX - tie)
    }
}

/// Search text: filters written `name:value` and words or "quoted phrases" to find.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub filter: Filter,
    /// Each a word or a phrase, as typed.
    pub terms: Vec<String>,
}

/// Parses search text such as `kind:incident state:new "disk full" printer`.
pub(crate) fn parse(text: &str) -> Result<Parsed, SearchError> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(SearchError::Syntax(format!(
            "the search text is {} bytes; at most {MAX_QUERY_BYTES}",
            text.len()
        )));
    }
    let mut parsed = Parsed::default();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (token, quoted, after) = if let Some(inner) = rest.strip_prefix('"') {
            let end = inner.find('"').ok_or_else(|| {
                SearchError::Syntax("a quoted phrase is not closed with \"".into())
            })?;
            (&inner[..end], true, &inner[end + 1..])
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (&rest[..end], false, &rest[end..])
        };
        rest = after.trim_start();
        if token.contains('"') {
            return Err(SearchError::Syntax(format!(
                "{token:?}: quotes go around a whole phrase"
            )));
        }
        let filter = (!quoted)
            .then(|| token.split_once(':'))
            .flatten()
            .filter(|(name, _)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        match filter {
            Some((name, value)) => set(&mut parsed.filter, name, value)?,
            None if token.trim().is_empty() => {}
            None => parsed.terms.push(token.to_owned()),
        }
        if parsed.terms.len() > MAX_TERMS {
            return Err(SearchError::Syntax(format!(
                "more than {MAX_TERMS} words and phrases"
            )));
        }
    }
    Ok(parsed)
}

fn set(filter: &mut Filter, name: &str, value: &str) -> Result<(), SearchError> {
    if value.is_empty() {
        return Err(SearchError::Syntax(format!("{name}: has no value")));
    }
    let slot = match name {
        "kind" => &mut filter.kind,
        "state" => &mut filter.state,
        "domain" => &mut filter.domain,
        "assignee" => &mut filter.assignee,
        "group" | "assignment_group" => &mut filter.assignment_group,
        "requester" => &mut filter.requester,
        "priority" => &mut filter.priority,
        "sla" => {
            filter.sla = Some(value.parse().map_err(|_| {
                SearchError::Syntax(format!("sla:{value}: use breached, warning or running"))
            })?);
            return Ok(());
        }
        _ => {
            return Err(SearchError::Syntax(format!(
                "{name}: is not a filter; filters are kind, state, domain, assignee, group, \
                 requester, priority and sla (quote the text to search for it as words)"
            )));
        }
    };
    if slot.is_some() {
        return Err(SearchError::Syntax(format!("{name}: is given twice")));
    }
    *slot = Some(value.to_owned());
    Ok(())
}

/// What the caller may see: their domains, and their own records unless they work records.
pub(crate) fn scope(fields: &Fields, actor: &Actor) -> Vec<(Occur, Box<dyn Query>)> {
    let mut clauses = Vec::new();
    if let Some(domains) = &actor.domains {
        let any: Vec<(Occur, Box<dyn Query>)> = domains
            .iter()
            .map(|d| (Occur::Should, exact(fields.domain, d.as_str())))
            .collect();
        let within: Box<dyn Query> = if any.is_empty() {
            Box::new(EmptyQuery)
        } else {
            Box::new(BooleanQuery::new(any))
        };
        clauses.push((Occur::Must, within));
    }
    if !actor.works_records() {
        clauses.push((Occur::Must, exact(fields.owner, &actor.name)));
    }
    clauses
}

/// The clauses finding `terms` (each word or phrase must occur) in `searched` fields.
pub(crate) fn text_clauses(
    terms: &[String],
    searched: &[(Field, TextAnalyzer)],
) -> Vec<(Occur, Box<dyn Query>)> {
    let mut clauses = Vec::new();
    for term in terms {
        let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (field, analyzer) in searched {
            let mut analyzer = analyzer.clone();
            let mut stream = analyzer.token_stream(term);
            let mut words = Vec::new();
            while let Some(token) = stream.next() {
                words.push((token.position, Term::from_field_text(*field, &token.text)));
            }
            match words.len() {
                0 => {}
                1 => alternatives.push((
                    Occur::Should,
                    Box::new(TermQuery::new(
                        words.remove(0).1,
                        IndexRecordOption::WithFreqs,
                    )),
                )),
                _ => alternatives
                    .push((Occur::Should, Box::new(PhraseQuery::new_with_offset(words)))),
            }
        }
        // A word made only of stop words or punctuation narrows nothing.
        if !alternatives.is_empty() {
            clauses.push((
                Occur::Must,
                Box::new(BooleanQuery::new(alternatives)) as Box<dyn Query>,
            ));
        }
    }
    clauses
}

fn exact(field: Field, value: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, value),
        IndexRecordOption::Basic,
    ))
}

fn exact_u64(field: Field, value: u64) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_u64(field, value),
        IndexRecordOption::Basic,
    ))
}

fn at_least(field: Field, value: u64) -> Box<dyn Query> {
    Box::new(RangeQuery::new(
        Bound::Included(Term::from_field_u64(field, value)),
        Bound::Unbounded,
    ))
}

fn at_most(field: Field, value: u64) -> Box<dyn Query> {
    Box::new(RangeQuery::new(
        Bound::Unbounded,
        Bound::Included(Term::from_field_u64(field, value)),
    ))
}

fn above(field: Field, value: u64) -> Box<dyn Query> {
    Box::new(RangeQuery::new(
        Bound::Excluded(Term::from_field_u64(field, value)),
        Bound::Unbounded,
    ))
}

fn below(field: Field, value: u64) -> Box<dyn Query> {
    Box::new(RangeQuery::new(
        Bound::Unbounded,
        Bound::Excluded(Term::from_field_u64(field, value)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_words_and_phrases_parse() {
        let parsed = parse(r#"kind:incident  state:new "disk full" printer sla:breached"#).unwrap();
        assert_eq!(parsed.filter.kind.as_deref(), Some("incident"));
        assert_eq!(parsed.filter.state.as_deref(), Some("new"));
        assert_eq!(parsed.filter.sla, Some(SlaFilter::Breached));
        assert_eq!(parsed.terms, ["disk full", "printer"]);
        let parsed = parse(r#""error: disk" group:network-ops"#).unwrap();
        assert_eq!(parsed.terms, ["error: disk"]);
        assert_eq!(
            parsed.filter.assignment_group.as_deref(),
            Some("network-ops")
        );
        assert_eq!(parse("").unwrap(), Parsed::default());
    }

    #[test]
    fn broken_search_text_is_refused_with_a_reason() {
        for (text, says) in [
            (r#""disk full"#, "not closed"),
            ("colour:blue", "not a filter"),
            ("kind:", "no value"),
            ("kind:a kind:b", "twice"),
            ("sla:late", "breached, warning or running"),
            (r#"dis"k"#, "whole phrase"),
        ] {
            match parse(text) {
                Err(SearchError::Syntax(message)) => {
                    assert!(message.contains(says), "{text}: {message}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(&"a ".repeat(MAX_QUERY_BYTES)),
            Err(SearchError::Syntax(_))
        ));
        assert!(matches!(
            parse(&"w ".repeat(MAX_TERMS + 1)),
            Err(SearchError::Syntax(_))
        ));
    }

    #[test]
    fn sorts_read_and_print_the_same() {
        for text in ["created_at", "-updated_at", "priority", "-sla_due"] {
            assert_eq!(text.parse::<Sort>().unwrap().to_string(), text);
        }
        assert!("due".parse::<Sort>().is_err());
        assert!("--priority".parse::<Sort>().is_err());
    }

    #[test]
    fn places_put_the_first_record_of_either_direction_highest() {
        let asc: Sort = "priority".parse().unwrap();
        let desc: Sort = "-priority".parse().unwrap();
        assert!(
            place(asc, 1, 5, 0) > place(asc, 2, 1, 0),
            "P1 before P2 ascending"
        );
        assert!(
            place(asc, 1, 1, 0) > place(asc, 1, 2, 0),
            "then older first"
        );
        assert!(
            place(desc, 2, 1, 0) > place(desc, 1, 5, 0),
            "P2 before P1 descending"
        );
    }
}
