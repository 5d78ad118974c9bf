//! What one record adds to the KPIs, and sums of such contributions.
//!
//! Durations are kept in whole milliseconds so that adding a record's new contribution and taking
//! away its old one is exact: sums kept for years never drift.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use usm_engine::{Catalogs, sla_ledger, timeline};
use usm_model::{Domain, Record, State, StateCategory};
use usm_store::{Store, StoreError};

use crate::Kpis;

/// States that count as resolved for the time to resolve and reopens.
const RESOLVED: [&str; 3] = ["resolved", "fulfilled", "done"];

/// What one record adds to the KPIs, as it stood when it was last counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// When the record was created (what `from` and `to` select on).
    #[serde(rename = "t")]
    pub created_at: Timestamp,
    /// `kind/state`, for the backlog.
    #[serde(rename = "s")]
    pub kind_state: String,
    /// Milliseconds from creation to the first resolution, once resolved.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub resolve_ms: Option<i64>,
    /// Business milliseconds the resolution clock ran until the first resolution under an SLA.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub business_ms: Option<i64>,
    /// Measured against an SLA: whether it stayed within it.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub within_sla: Option<bool>,
    /// A closed change's outcome.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub change_outcome: Option<ChangeOutcome>,
    /// Reopened after resolution.
    #[serde(rename = "o", default, skip_serializing_if = "std::ops::Not::not")]
    pub reopened: bool,
}

/// How a closed change ended, as its `outcome` field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOutcome {
    #[serde(rename = "s")]
    Successful,
    #[serde(rename = "f")]
    Other,
    /// No outcome recorded: neither a success nor a failure.
    #[serde(rename = "u")]
    Unknown,
}

impl Contribution {
    /// The record's contribution now, from the record, its SLA ledger and its history.
    pub fn of(store: &dyn Store, record: &Record) -> Result<Self, StoreError> {
        let closed_change = record.kind.as_str() == "change" && record.state.as_str() == "closed";
        let change_outcome =
            closed_change.then(
                || match record.fields.get("outcome").and_then(Value::as_str) {
                    Some("successful") => ChangeOutcome::Successful,
                    Some(_) => ChangeOutcome::Other,
                    None => ChangeOutcome::Unknown,
                },
            );
        let ledger = sla_ledger(store, &record.id)?;
        let resolution = |level: &'static str| {
            ledger
                .iter()
                .filter(move |e| e.clock == "resolution" && e.level == level)
        };
        let breached = resolution("breach").next().is_some();
        let resolved_under_sla = resolution("stop").any(|e| e.met == Some(true));
        let within_sla = (breached || resolved_under_sla).then_some(!breached);
        let business_ms = resolution("stop")
            .find(|e| e.cycle == 1 && e.met == Some(true))
            .and_then(|e| e.elapsed_minutes)
            .map(minutes_to_ms);
        let line = timeline(store, &record.id)?.states;
        let resolved_at = line
            .iter()
            .find(|(_, s)| RESOLVED.contains(&s.as_str()))
            .map(|(at, _)| *at);
        let resolve_ms = resolved_at.map(|at| {
            let span = at.duration_since(record.created_at);
            i64::try_from(span.as_millis()).unwrap_or(i64::MAX)
        });
        Ok(Self {
            created_at: record.created_at,
            kind_state: format!("{}/{}", record.kind, record.state),
            resolve_ms,
            business_ms,
            within_sla,
            change_outcome,
            reopened: resolve_ms.is_some() && reopened(&line),
        })
    }
}

fn minutes_to_ms(minutes: f64) -> i64 {
    // Saturating: a ledger's minutes are finite and far below i64's range.
    (minutes * 60_000.0).round() as i64
}

/// Whether the timeline leaves a resolved state for a working one.
fn reopened(line: &[(Timestamp, State)]) -> bool {
    line.windows(2).any(|w| {
        RESOLVED.contains(&w[0].1.as_str()) && !matches!(w[1].1.as_str(), "closed" | "cancelled")
    })
}

/// Sums of contributions. Counts are signed so that a delta (new minus old) is a `Sums` too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sums {
    #[serde(default)]
    pub records: i64,
    #[serde(default)]
    pub resolved: i64,
    #[serde(default)]
    pub resolve_ms: i64,
    #[serde(default)]
    pub business_resolved: i64,
    #[serde(default)]
    pub business_ms: i64,
    #[serde(default)]
    pub sla_measured: i64,
    #[serde(default)]
    pub sla_within: i64,
    #[serde(default)]
    pub changes_closed: i64,
    #[serde(default)]
    pub changes_unknown: i64,
    #[serde(default)]
    pub changes_successful: i64,
    #[serde(default)]
    pub reopened: i64,
    /// Records by `kind/state`.
    #[serde(default)]
    pub backlog: BTreeMap<String, i64>,
}

impl Sums {
    /// Adds (`sign` 1) or takes away (`sign` -1) one contribution.
    pub fn apply(&mut self, c: &Contribution, sign: i64) {
        self.records += sign;
        if let Some(ms) = c.resolve_ms {
            self.resolved += sign;
            self.resolve_ms += sign * ms;
            self.reopened += sign * i64::from(c.reopened);
        }
        if let Some(ms) = c.business_ms {
            self.business_resolved += sign;
            self.business_ms += sign * ms;
        }
        if let Some(within) = c.within_sla {
            self.sla_measured += sign;
            self.sla_within += sign * i64::from(within);
        }
        if let Some(outcome) = c.change_outcome {
            self.changes_closed += sign;
            match outcome {
                ChangeOutcome::Successful => self.changes_successful += sign,
                ChangeOutcome::Other => {}
                ChangeOutcome::Unknown => self.changes_unknown += sign,
            }
        }
        let count = self.backlog.entry(c.kind_state.clone()).or_default();
        *count += sign;
        if *count == 0 {
            self.backlog.remove(&c.kind_state);
        }
    }

    /// Adds other sums' counts, leaving the backlog out.
    fn add_counts(&mut self, other: &Sums) {
        self.records += other.records;
        self.resolved += other.resolved;
        self.resolve_ms += other.resolve_ms;
        self.business_resolved += other.business_resolved;
        self.business_ms += other.business_ms;
        self.sla_measured += other.sla_measured;
        self.sla_within += other.sla_within;
        self.changes_closed += other.changes_closed;
        self.changes_unknown += other.changes_unknown;
        self.changes_successful += other.changes_successful;
        self.reopened += other.reopened;
    }

    /// Adds other sums.
    pub fn add(&mut self, other: &Sums) {
        self.add_counts(other);
        for (key, count) in &other.backlog {
            let sum = self.backlog.entry(key.clone()).or_default();
            *sum += count;
            if *sum == 0 {
                self.backlog.remove(key);
            }
        }
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self == &Sums::default()
    }
}

/// Sums on their way to KPIs: the backlog by state is resolved against each domain's
/// lifecycles as they are now, so a module swap that makes a state final is reflected at once.
#[derive(Debug, Default)]
pub struct Totals {
    sums: Sums,
    backlog: BTreeMap<String, usize>,
}

impl Totals {
    /// Adds the sums of one domain.
    pub fn add(&mut self, catalogs: &Catalogs, domain: &Domain, sums: &Sums) {
        let catalog = catalogs.domain(domain);
        for (kind_state, &count) in &sums.backlog {
            let Some((kind, state)) = kind_state.split_once('/') else {
                continue;
            };
            let category = usm_model::Kind::new(kind)
                .ok()
                .and_then(|kind| catalog.get(&kind))
                .and_then(|def| {
                    State::new(state)
                        .ok()
                        .and_then(|s| def.lifecycle.state(&s).map(|s| s.category))
                });
            if category != Some(StateCategory::Inactive) && count > 0 {
                *self.backlog.entry(state.to_owned()).or_default() += to_usize(count);
            }
        }
        self.sums.add_counts(sums);
    }

    /// The KPIs.
    pub fn finish(self, truncated: bool) -> Kpis {
        let s = self.sums;
        let mean_minutes = |ms: i64, n: i64| (n > 0).then(|| ms as f64 / 60_000.0 / n as f64);
        Kpis {
            records: to_usize(s.records),
            truncated,
            resolved: to_usize(s.resolved),
            mean_time_to_resolve_minutes: mean_minutes(s.resolve_ms, s.resolved),
            mean_time_to_resolve_business_minutes: mean_minutes(s.business_ms, s.business_resolved),
            sla_measured: to_usize(s.sla_measured),
            sla_compliance_percent: percent(s.sla_within, s.sla_measured),
            changes_closed: to_usize(s.changes_closed),
            changes_outcome_unknown: to_usize(s.changes_unknown),
            change_success_rate_percent: percent(s.changes_successful, s.changes_closed),
            backlog_by_state: self.backlog,
            reopened: to_usize(s.reopened),
            reopen_rate_percent: percent(s.reopened, s.resolved),
        }
    }
}

fn to_usize(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

fn percent(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| 100.0 * part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contribution(kind_state: &str) -> Contribution {
        Contribution {
            created_at: Timestamp::UNIX_EPOCH,
            kind_state: kind_state.into(),
            resolve_ms: Some(90_000),
            business_ms: Some(30_000),
            within_sla: Some(false),
            change_outcome: Some(ChangeOutcome::Unknown),
            reopened: true,
        }
    }

    #[test]
    fn taking_away_what_was_added_leaves_nothing() {
        let mut sums = Sums::default();
        let a = contribution("incident/resolved");
        let b = Contribution {
            within_sla: Some(true),
            ..contribution("incident/new")
        };
        sums.apply(&a, 1);
        sums.apply(&b, 1);
        assert_eq!(sums.records, 2);
        assert_eq!(sums.sla_within, 1);
        assert_eq!(sums.backlog.len(), 2);
        sums.apply(&a, -1);
        sums.apply(&b, -1);
        assert!(sums.is_empty(), "{sums:?}");
    }

    #[test]
    fn every_contribution_reads_back_as_written() {
        for outcome in [
            None,
            Some(ChangeOutcome::Successful),
            Some(ChangeOutcome::Other),
            Some(ChangeOutcome::Unknown),
        ] {
            let written = Contribution {
                change_outcome: outcome,
                ..contribution("change/closed")
            };
            let read: Contribution =
                serde_json::from_slice(&serde_json::to_vec(&written).unwrap()).unwrap();
            assert_eq!(read, written);
        }
    }

    #[test]
    fn a_contribution_is_stored_compactly() {
        let bytes = serde_json::to_vec(&Contribution {
            resolve_ms: None,
            business_ms: None,
            within_sla: None,
            change_outcome: None,
            reopened: false,
            ..contribution("incident/new")
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"t":"1970-01-01T00:00:00Z","s":"incident/new"}"#
        );
    }
}
