//! Service level clocks. A policy comes from an agreement record: targets per priority for first
//! response and resolution, a business-hours calendar (weekly hours in a time zone, holidays) and
//! pause states. Elapsed time is always recomputed from the record's immutable state history, so
//! pauses, repeated pauses, nights, weekends, holidays and a priority or policy change mid-flight
//! all come out right: nothing is accumulated that could drift.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{
    SignedDuration, Timestamp,
    civil::{Date, Weekday},
    tz::TimeZone,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use usm_model::{Kind, Record, RecordId, State};

/// Business hours: weekly windows in a time zone, minus holidays (or around the clock).
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    always: bool,
    /// Monday first; each window as (start, end) minutes after midnight.
    week: [Vec<(u32, u32)>; 7],
    holidays: BTreeSet<Date>,
}

/// How a calendar is written in an agreement's `fields.calendar`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSpec {
    /// IANA time zone, e.g. `Europe/Amsterdam` (UTC when absent).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Around the clock, every day (holidays still apply when listed).
    #[serde(default)]
    pub always: bool,
    /// `mon` … `sun` → windows such as `"08:00-18:00"`; a missing day is closed.
    #[serde(default)]
    pub weekly: BTreeMap<String, Vec<String>>,
    /// Dates with no business hours.
    #[serde(default)]
    pub holidays: Vec<Date>,
    /// An iCalendar document whose all-day events are holidays too (e.g. a public-holiday feed).
    #[serde(default)]
    pub ical: Option<String>,
}

fn parse_minute(text: &str) -> Result<u32, String> {
    let (h, m) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not HH:MM"))?;
    let h: u32 = h.parse().map_err(|_| format!("{text:?} is not HH:MM"))?;
    let m: u32 = m.parse().map_err(|_| format!("{text:?} is not HH:MM"))?;
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        return Err(format!("{text:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(weekday: Weekday) -> usize {
    usize::from(weekday.to_monday_zero_offset().unsigned_abs())
}

impl Calendar {
    /// Around the clock in UTC.
    pub fn always() -> Self {
        Self {
            tz: TimeZone::UTC,
            always: true,
            week: Default::default(),
            holidays: BTreeSet::new(),
        }
    }

    /// Monday to Friday, 08:00–18:00, in `tz`.
    pub fn office_hours(tz: TimeZone) -> Self {
        let mut week: [Vec<(u32, u32)>; 7] = Default::default();
        for day in week.iter_mut().take(5) {
            day.push((8 * 60, 18 * 60));
        }
        Self {
            tz,
            always: false,
            week,
            holidays: BTreeSet::new(),
        }
    }

    /// Builds a calendar from its written form.
    pub fn from_spec(spec: &CalendarSpec) -> Result<Self, String> {
        let tz = match &spec.timezone {
            Some(name) => TimeZone::get(name).map_err(|e| format!("time zone {name:?}: {e}"))?,
            None => TimeZone::UTC,
        };
        let mut week: [Vec<(u32, u32)>; 7] = Default::default();
        for (day, windows) in &spec.weekly {
            let index = DAYS
                .iter()
                .position(|d| d == day)
                .ok_or_else(|| format!("unknown day {day:?}; use mon … sun"))?;
            for window in windows {
                let (start, end) = window
                    .split_once('-')
                    .ok_or_else(|| format!("{window:?} is not HH:MM-HH:MM"))?;
                let (start, end) = (parse_minute(start)?, parse_minute(end)?);
                if start >= end {
                    return Err(format!("{window:?} ends before it starts"));
                }
                week[index].push((start, end));
            }
            week[index].sort_unstable();
        }
        let mut holidays: BTreeSet<Date> = spec.holidays.iter().copied().collect();
        if let Some(ical) = &spec.ical {
            holidays.extend(holidays_from_ical(ical)?);
        }
        Ok(Self {
            tz,
            always: spec.always,
            week,
            holidays,
        })
    }

    /// Adds holidays (e.g. imported from an iCalendar file).
    pub fn with_holidays(mut self, holidays: impl IntoIterator<Item = Date>) -> Self {
        self.holidays.extend(holidays);
        self
    }

    /// The business windows of one civil day, as instants.
    fn windows(&self, date: Date) -> Vec<(Timestamp, Timestamp)> {
        if self.holidays.contains(&date) {
            return Vec::new();
        }
        let at = |minutes: u32| -> Option<Timestamp> {
            let (hour, minute) = (minutes / 60, minutes % 60);
            let civil = if hour == 24 {
                date.tomorrow().ok()?.at(0, 0, 0, 0)
            } else {
                date.at(i8::try_from(hour).ok()?, i8::try_from(minute).ok()?, 0, 0)
            };
            civil
                .to_zoned_datetime(self.tz.clone())
                .ok()
                .map(|z| z.timestamp())
        };
        if self.always {
            return at(0).zip(at(24 * 60)).into_iter().collect();
        }
        self.week[day_index(date.weekday())]
            .iter()
            .filter_map(|(start, end)| at(*start).zip(at(*end)))
            .collect()
    }

    fn date_of(&self, at: Timestamp) -> Date {
        at.to_zoned_datetime(self.tz.clone()).date()
    }

    /// Business time in `[from, to)`.
    pub fn business_time(&self, from: Timestamp, to: Timestamp) -> SignedDuration {
        if to <= from {
            return SignedDuration::ZERO;
        }
        let mut total = SignedDuration::ZERO;
        let (mut day, last) = (self.date_of(from), self.date_of(to));
        while day <= last {
            for (start, end) in self.windows(day) {
                let (start, end) = (start.max(from), end.min(to));
                if end > start {
                    total += end.duration_since(start);
                }
            }
            match day.tomorrow() {
                Ok(next) => day = next,
                Err(_) => break,
            }
        }
        total
    }

    /// The instant at which `amount` of business time has passed after `from`; `None` when the
    /// calendar has no business hours in the next ~3 years.
    pub fn add_business_time(&self, from: Timestamp, amount: SignedDuration) -> Option<Timestamp> {
        let mut left = amount;
        let mut day = self.date_of(from);
        for _ in 0..1100 {
            for (start, end) in self.windows(day) {
                let start = start.max(from);
                if end <= start {
                    continue;
                }
                let available = end.duration_since(start);
                if left <= available {
                    return start.checked_add(left).ok();
                }
                left -= available;
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

/// Targets for one priority, in minutes of business time (fractions allowed).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Until the first move out of the initial state.
    #[serde(default)]
    pub response_minutes: Option<f64>,
    /// Until resolution (a stop state).
    #[serde(default)]
    pub resolution_minutes: Option<f64>,
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
    /// States in which the clocks stand still (e.g. `on_hold`).
    pub pause_states: BTreeSet<State>,
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

fn date(
    fields: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<jiff::civil::Date>, String> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .map(|text| text.parse().map_err(|e| format!("{key}: {e}")))
        .transpose()
}

fn states(names: &[&str]) -> BTreeSet<State> {
    names.iter().filter_map(|n| State::new(*n).ok()).collect()
}

impl Policy {
    /// Reads a policy from an agreement: `fields.targets`, `fields.calendar`,
    /// `fields.pause_states`, `fields.warning_percent`, `fields.applies_to`, `fields.service`.
    pub fn from_agreement(record: &Record) -> Result<Self, String> {
        let fields = &record.fields;
        let targets: BTreeMap<String, Target> = match fields.get("targets") {
            Some(value) => {
                serde_json::from_value(value.clone()).map_err(|e| format!("targets: {e}"))?
            }
            None => BTreeMap::new(),
        };
        let calendar = match fields.get("calendar") {
            Some(value) => {
                let spec: CalendarSpec =
                    serde_json::from_value(value.clone()).map_err(|e| format!("calendar: {e}"))?;
                Calendar::from_spec(&spec)?
            }
            None => Calendar::always(),
        };
        let names = |key: &str, default: &[&str]| -> Result<BTreeSet<State>, String> {
            match fields.get(key) {
                Some(value) => {
                    let names: Vec<String> =
                        serde_json::from_value(value.clone()).map_err(|e| format!("{key}: {e}"))?;
                    names
                        .iter()
                        .map(|n| State::new(n.as_str()).map_err(|e| e.to_string()))
                        .collect()
                }
                None => Ok(states(default)),
            }
        };
        let kinds = match fields.get("applies_to") {
            Some(value) => {
                let names: Vec<String> = serde_json::from_value(value.clone())
                    .map_err(|e| format!("applies_to: {e}"))?;
                names
                    .iter()
                    .map(|n| Kind::new(n.as_str()).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?
            }
            None => ["incident", "request"]
                .iter()
                .filter_map(|k| Kind::new(*k).ok())
                .collect(),
        };
        Ok(Self {
            agreement: record.id.clone(),
            targets,
            calendar,
            pause_states: names("pause_states", &["on_hold"])?,
            stop_states: names(
                "stop_states",
                &["resolved", "fulfilled", "closed", "cancelled", "done"],
            )?,
            warning_percent: fields
                .get("warning_percent")
                .and_then(Value::as_f64)
                .unwrap_or(75.0),
            kinds,
            service: fields
                .get("service")
                .and_then(Value::as_str)
                .map(str::to_owned),
            valid_from: date(fields, "valid_from")?,
            valid_to: date(fields, "valid_to")?,
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

    fn target(&self, priority: Option<&str>) -> Option<Target> {
        priority
            .and_then(|p| self.targets.get(p))
            .or_else(|| self.targets.get("default"))
            .copied()
    }
}

/// One clock's state at an instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Clock {
    /// The target, in minutes of business time.
    pub target_minutes: f64,
    /// Business minutes elapsed.
    pub elapsed_minutes: f64,
    /// Business minutes left (negative once breached).
    pub remaining_minutes: f64,
    /// The clock stands still in a pause state.
    pub paused: bool,
    /// The clock has stopped for good (responded / resolved).
    pub stopped: bool,
    /// Elapsed reached the target.
    pub breached: bool,
    /// When the target is reached if the clock keeps running.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub due_at: Option<Timestamp>,
    /// When the warning threshold is reached if the clock keeps running.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub warning_at: Option<Timestamp>,
}

/// A record's SLA at an instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlaStatus {
    /// The agreement the policy comes from.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub policy: RecordId,
    /// The priority whose targets apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Time to first response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Clock>,
    /// Time to resolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Clock>,
}

/// The record's states over time: `(since, state)`, oldest first, starting at creation.
pub type Timeline = [(Timestamp, State)];

fn minutes(duration: SignedDuration) -> f64 {
    duration.as_secs_f64() / 60.0
}

fn from_minutes(minutes: f64) -> SignedDuration {
    SignedDuration::from_secs_f64((minutes * 60.0).max(0.0))
}

/// Computes a clock from the timeline: it runs in every interval whose state `runs` allows, and
/// has stopped once `stopped` holds for the current state.
fn clock(
    policy: &Policy,
    timeline: &Timeline,
    now: Timestamp,
    target_minutes: f64,
    runs: impl Fn(&State, usize) -> bool,
    stopped: bool,
) -> Clock {
    let mut elapsed = SignedDuration::ZERO;
    for (index, (since, state)) in timeline.iter().enumerate() {
        let until = timeline
            .get(index + 1)
            .map_or(now, |(next, _)| *next)
            .min(now);
        if runs(state, index) {
            elapsed += policy.calendar.business_time(*since, until);
        }
    }
    let current = timeline.last().map(|(_, s)| s);
    let paused = !stopped && current.is_some_and(|s| policy.pause_states.contains(s));
    let target = from_minutes(target_minutes);
    let warning = from_minutes(target_minutes * policy.warning_percent / 100.0);
    let running = !stopped && !paused;
    let schedule = |threshold: SignedDuration| {
        if !running {
            return None;
        }
        if elapsed >= threshold {
            // Already past it: it happened at `now` at the latest.
            return Some(now);
        }
        policy.calendar.add_business_time(now, threshold - elapsed)
    };
    Clock {
        target_minutes,
        elapsed_minutes: minutes(elapsed),
        remaining_minutes: minutes(target - elapsed),
        paused,
        stopped,
        breached: elapsed >= target,
        due_at: schedule(target),
        warning_at: schedule(warning),
    }
}

/// The SLA of `record` under `policy` at `now`, from its state timeline.
pub fn status(policy: &Policy, record: &Record, timeline: &Timeline, now: Timestamp) -> SlaStatus {
    let priority = record
        .fields
        .get("priority")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let target = policy.target(priority.as_deref()).unwrap_or_default();
    let stop = |s: &State| policy.stop_states.contains(s);
    let pause = |s: &State| policy.pause_states.contains(s);
    // The response clock runs in the initial state only (the first entry of the timeline) and
    // stops at the first move out of it.
    let responded = timeline.len() > 1;
    let response = target.response_minutes.map(|minutes| {
        clock(
            policy,
            timeline,
            now,
            minutes,
            |s, index| index == 0 && !pause(s),
            responded,
        )
    });
    let resolved = timeline.last().is_some_and(|(_, s)| stop(s));
    let resolution = target.resolution_minutes.map(|minutes| {
        clock(
            policy,
            timeline,
            now,
            minutes,
            |s, _| !stop(s) && !pause(s),
            resolved,
        )
    });
    SlaStatus {
        policy: policy.agreement.clone(),
        priority,
        response,
        resolution,
    }
}

/// Parses the all-day events (`DTSTART;VALUE=DATE:YYYYMMDD`) of an iCalendar file as holidays.
pub fn holidays_from_ical(text: &str) -> Result<Vec<Date>, String> {
    let mut dates = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("DTSTART") else {
            continue;
        };
        let value = rest.rsplit(':').next().unwrap_or_default();
        let digits: String = value.chars().take(8).collect();
        if digits.len() != 8 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("unreadable DTSTART {line:?}"));
        }
        let date = Date::new(
            digits[0..4]
                .parse()
                .map_err(|_| format!("bad year in {line:?}"))?,
            digits[4..6]
                .parse()
                .map_err(|_| format!("bad month in {line:?}"))?,
            digits[6..8]
                .parse()
                .map_err(|_| format!("bad day in {line:?}"))?,
        )
        .map_err(|e| format!("{line:?}: {e}"))?;
        dates.push(date);
    }
    Ok(dates)
}

#[cfg(test)]
mod tests;
