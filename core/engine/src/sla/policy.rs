//! An SLA policy as an agreement record writes it, read strictly: every part that cannot be used
//! is refused with the JSON pointer of the field, so nothing is silently dropped.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use usm_model::{FieldError, Kind, Record, RecordId, State};

use super::calendar::{Calendar, CalendarSpec};
use crate::conversation::{AWAITING_CUSTOMER, HOLD_STATE};

/// In `pause_reasons`: every hold stops the clocks, whatever its reason (or none).
pub const ANY_REASON: &str = "*";

/// The longest hold reason, as the `hold_reason` field's schema allows.
const MAX_REASON_CHARS: usize = 100;

/// The priorities a target may be set for, besides `default`.
pub const PRIORITIES: [&str; 5] = ["P1", "P2", "P3", "P4", "P5"];

/// Targets for one priority, in minutes of business time (fractions allowed).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Until the first agent action.
    #[serde(default)]
    pub response_minutes: Option<f64>,
    /// Until resolution (a stop state).
    #[serde(default)]
    pub resolution_minutes: Option<f64>,
    /// Counted around the clock (24×7, no holidays) instead of on the agreement's calendar.
    /// Unset, P1 runs around the clock and every other priority on the calendar.
    #[serde(default)]
    pub around_the_clock: Option<bool>,
}

/// An SLA policy, read from an agreement record.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The agreement it comes from.
    pub agreement: RecordId,
    /// Targets by priority (`P1` … `P5`, or `default`).
    pub targets: BTreeMap<String, Target>,
    /// When the clocks run.
    pub calendar: Calendar,
    /// States in which the clocks stand still (`on_hold` by default); in the hold state only
    /// for one of `pause_reasons`.
    pub pause_states: BTreeSet<State>,
    /// The hold reasons (`fields.hold_reason`) for which the hold state stops the clocks:
    /// `awaiting_customer` by default; [`ANY_REASON`] stands for every hold, with or without a
    /// reason.
    pub pause_reasons: BTreeSet<String>,
    /// States in which the resolution clock has stopped.
    pub stop_states: BTreeSet<State>,
    /// Percentage of a target at which a warning fires.
    pub warning_percent: f64,
    /// Kinds the policy applies to.
    pub kinds: BTreeSet<Kind>,
    /// The service it covers; every service when absent.
    pub service: Option<String>,
    /// The first day it covers records created on (`fields.valid_from`).
    pub valid_from: Option<jiff::civil::Date>,
    /// The last day it covers records created on (`fields.valid_to`).
    pub valid_to: Option<jiff::civil::Date>,
}

fn refusal(field: &str, message: impl std::fmt::Display) -> FieldError {
    FieldError {
        field: format!("/fields/{field}"),
        message: message.to_string(),
    }
}

/// `fields[key]` read as `T`, or `None` when absent.
fn read<T: DeserializeOwned>(
    fields: &Map<String, Value>,
    key: &str,
) -> Result<Option<T>, FieldError> {
    fields
        .get(key)
        .map(|value| serde_json::from_value(value.clone()).map_err(|e| refusal(key, e)))
        .transpose()
}

fn names<T>(
    fields: &Map<String, Value>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<BTreeSet<T>>, FieldError>
where
    T: Ord,
{
    let Some(list) = read::<Vec<String>>(fields, key)? else {
        return Ok(None);
    };
    list.iter()
        .enumerate()
        .map(|(index, name)| parse(name).map_err(|e| refusal(&format!("{key}/{index}"), e)))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn states(names: &[&str]) -> BTreeSet<State> {
    names.iter().filter_map(|n| State::new(*n).ok()).collect()
}

impl Policy {
    /// Reads a policy from an agreement: `fields.targets`, `fields.calendar`,
    /// `fields.pause_states`, `fields.pause_reasons`, `fields.stop_states`,
    /// `fields.warning_percent`, `fields.applies_to`, `fields.service`, `fields.valid_from`,
    /// `fields.valid_to`. Refuses
    /// what cannot be used, naming the field: a target for anything but P1 … P5 or `default`, a
    /// target that is not a positive number of minutes, an empty or overlong hold reason, and
    /// whatever the calendar refuses.
    pub fn from_agreement(record: &Record) -> Result<Self, FieldError> {
        let fields = &record.fields;
        let targets: BTreeMap<String, Target> = read(fields, "targets")?.unwrap_or_default();
        for (key, target) in &targets {
            if key != "default" && !PRIORITIES.contains(&key.as_str()) {
                return Err(refusal(
                    &format!("targets/{key}"),
                    format!("{key:?} is not a priority; use P1 … P5 or default"),
                ));
            }
            for (name, minutes) in [
                ("response_minutes", target.response_minutes),
                ("resolution_minutes", target.resolution_minutes),
            ] {
                if minutes.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
                    return Err(refusal(
                        &format!("targets/{key}/{name}"),
                        "a target is a positive number of minutes",
                    ));
                }
            }
        }
        let calendar = match read::<CalendarSpec>(fields, "calendar")? {
            Some(spec) => Calendar::from_spec(&spec).map_err(|e| FieldError {
                field: format!("/fields/calendar{}", e.at),
                message: e.message,
            })?,
            None => Calendar::always(),
        };
        let state = |n: &str| State::new(n).map_err(|e| e.to_string());
        let reason = |n: &str| {
            if n.trim().is_empty() || n.chars().count() > MAX_REASON_CHARS {
                Err(format!(
                    "a hold reason is a text of 1 to {MAX_REASON_CHARS} characters"
                ))
            } else {
                Ok(n.to_owned())
            }
        };
        let warning_percent: f64 = read(fields, "warning_percent")?.unwrap_or(75.0);
        if !(warning_percent > 0.0 && warning_percent <= 100.0) {
            return Err(refusal(
                "warning_percent",
                "a percentage above 0, at most 100",
            ));
        }
        Ok(Self {
            agreement: record.id.clone(),
            targets,
            calendar,
            pause_states: names(fields, "pause_states", state)?
                .unwrap_or_else(|| states(&[HOLD_STATE])),
            pause_reasons: names(fields, "pause_reasons", reason)?
                .unwrap_or_else(|| BTreeSet::from([AWAITING_CUSTOMER.to_owned()])),
            stop_states: names(fields, "stop_states", state)?.unwrap_or_else(|| {
                states(&["resolved", "fulfilled", "closed", "cancelled", "done"])
            }),
            warning_percent,
            kinds: names(fields, "applies_to", |n| {
                Kind::new(n).map_err(|e| e.to_string())
            })?
            .unwrap_or_else(|| {
                ["incident", "request"]
                    .iter()
                    .filter_map(|k| Kind::new(*k).ok())
                    .collect()
            }),
            service: fields
                .get("service")
                .and_then(Value::as_str)
                .map(str::to_owned),
            valid_from: read(fields, "valid_from")?,
            valid_to: read(fields, "valid_to")?,
        })
    }

    /// Whether the agreement is one with a customer: operational level agreements and
    /// underpinning contracts bind suppliers and teams, and run no customer's clocks.
    pub fn is_customer_agreement(record: &Record) -> bool {
        !matches!(
            record.fields.get("agreement_type").and_then(Value::as_str),
            Some("ola" | "uc")
        )
    }

    /// Whether the clocks stand still in `state` while the record's hold reason is
    /// `hold_reason`: in a pause state, and in the hold state only for a pausing reason (an
    /// agent waiting on a vendor keeps the customer's clock running).
    pub fn pauses(&self, state: &State, hold_reason: Option<&str>) -> bool {
        self.pause_states.contains(state)
            && (state.as_str() != HOLD_STATE
                || self.pause_reasons.contains(ANY_REASON)
                || hold_reason.is_some_and(|r| self.pause_reasons.contains(r)))
    }

    /// Whether the policy covers `record`.
    pub fn covers(&self, record: &Record) -> bool {
        let created = record
            .created_at
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .date();
        self.kinds.contains(&record.kind)
            && self.valid_from.is_none_or(|from| from <= created)
            && self.valid_to.is_none_or(|to| created <= to)
            && self.service.as_deref().is_none_or(|service| {
                record.fields.get("service").and_then(Value::as_str) == Some(service)
            })
    }

    /// The target for `priority` (else `default`), and the calendar it is counted on.
    pub(crate) fn target(&self, priority: Option<&str>) -> Option<(Target, Calendar)> {
        let target = priority
            .and_then(|p| self.targets.get(p))
            .or_else(|| self.targets.get("default"))
            .copied()?;
        // A P1 is an outage someone works through the night: unless the agreement says
        // otherwise, its clocks run around the clock.
        let around_the_clock = target.around_the_clock.unwrap_or(priority == Some("P1"));
        let calendar = if around_the_clock {
            Calendar::always()
        } else {
            self.calendar.clone()
        };
        Some((target, calendar))
    }
}
