//! Service level clocks. A policy comes from an agreement record: targets per priority for first
//! response and resolution, a business-hours calendar (weekly hours in a time zone, holidays) and
//! what pauses the clocks: pause states, the hold state only for a pausing hold reason
//! (`awaiting_customer` by default). Elapsed time is always recomputed from the record's immutable
//! history of states and hold reasons, so pauses, repeated pauses, a reason changed mid-hold,
//! nights, weekends, holidays and a priority or policy change mid-flight all come out right:
//! nothing is accumulated that could drift.

mod calendar;
mod ledger;
mod policy;
pub mod validate;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde_json::Value;
use usm_model::{Action, Actor, HistoryEntry, Record, RecordId, Role, State};

pub use calendar::{Calendar, CalendarError, CalendarSpec, DAYS, holidays_from_ical};
pub use ledger::LedgerEntry;
pub use policy::{ANY_REASON, PRIORITIES, Policy, Target};

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
    /// The clock stands still: a pause state (the hold state only for a pausing hold reason).
    pub paused: bool,
    /// The clock has stopped for good (responded, resolved or cancelled).
    pub stopped: bool,
    /// Stopped by meeting its goal (an agent's first action; a resolution), not by a cancel.
    pub met: bool,
    /// Elapsed reached the target, now or (by the record's SLA ledger) earlier in the cycle
    /// under the target then in force.
    pub breached: bool,
    /// When elapsed reached the warning threshold, from the history.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub warned_at: Option<Timestamp>,
    /// When elapsed reached the target, from the history (however late anyone noticed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub breached_at: Option<Timestamp>,
    /// When the clock stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub stopped_at: Option<Timestamp>,
    /// When the target is reached if the clock keeps running.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub due_at: Option<Timestamp>,
    /// When the warning threshold is reached if the clock keeps running.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub warning_at: Option<Timestamp>,
}

/// A record's SLA at an instant: a view computed from its history and the agreement, never
/// stored in the record.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlaStatus {
    /// The agreement the policy comes from.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub policy: RecordId,
    /// The priority whose targets apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// The resolution cycle: 1 from creation, one more after each reopen.
    pub cycle: u32,
    /// Time to first response (an agent's first action).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Clock>,
    /// Time to resolution in this cycle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Clock>,
}

/// What the clocks are computed from: the record's states and hold reasons over time and its
/// first response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// `(since, state)`, oldest first, starting at creation.
    pub states: Vec<(Timestamp, State)>,
    /// `(since, hold_reason)`, oldest first, one per change of the field (`None` once removed).
    pub holds: Vec<(Timestamp, Option<String>)>,
    /// The first write after creation by an agent that meets the response target.
    pub responded_at: Option<Timestamp>,
}

/// States that end a record without meeting anything: they stop the clocks, and meet neither.
pub const CANCEL_STATES: [&str; 1] = ["cancelled"];

/// Whether `actor`'s own write (not a step's effect) counts as an agent's action: agents and
/// admins act on records; requesters and automations do not respond to anyone.
pub fn acts_as_agent(actor: &Actor, caused_by_step: bool) -> bool {
    !caused_by_step && (actor.has_role(Role::Agent) || actor.has_role(Role::Admin))
}

/// Whether a history entry meets the response target: an agent's write after creation, unless
/// it cancels the record (cancelling stops the clock without answering anyone) or is an
/// internal note (the requester hears nothing of it).
pub fn meets_response(entry: &HistoryEntry) -> bool {
    if entry.visibility == Some(usm_model::Visibility::Internal) {
        return false;
    }
    let cancels = entry.action == Action::Transition
        && entry.changes.iter().any(|change| {
            change.path == "/state"
                && change
                    .to
                    .as_ref()
                    .and_then(Value::as_str)
                    .is_some_and(|s| CANCEL_STATES.contains(&s))
        });
    entry.version > 1 && entry.by_agent && !cancels
}

fn minutes(duration: SignedDuration) -> f64 {
    duration.as_secs_f64() / 60.0
}

fn from_minutes(minutes: f64) -> SignedDuration {
    SignedDuration::from_secs_f64((minutes * 60.0).max(0.0))
}

/// How a clock ran: the intervals it ran in (up to now) and how it ended, if it did.
struct Run {
    intervals: Vec<(Timestamp, Timestamp)>,
    paused: bool,
    stopped_at: Option<Timestamp>,
    met: bool,
}

/// The instant the running intervals accumulate `threshold` of business time, if they do.
fn crossing(
    calendar: &Calendar,
    intervals: &[(Timestamp, Timestamp)],
    threshold: SignedDuration,
) -> Option<Timestamp> {
    let mut before = SignedDuration::ZERO;
    for (start, end) in intervals {
        let here = calendar.business_time(*start, *end);
        if before + here >= threshold {
            return calendar
                .add_business_time(*start, threshold - before)
                .map(|at| at.min(*end));
        }
        before += here;
    }
    None
}

fn clock(
    calendar: &Calendar,
    run: &Run,
    now: Timestamp,
    target_minutes: f64,
    warning_percent: f64,
) -> Clock {
    let elapsed: SignedDuration = run
        .intervals
        .iter()
        .map(|(start, end)| calendar.business_time(*start, *end))
        .sum();
    let target = from_minutes(target_minutes);
    let warning = from_minutes(target_minutes * warning_percent / 100.0);
    let (warned_at, breached_at) = (
        crossing(calendar, &run.intervals, warning),
        crossing(calendar, &run.intervals, target),
    );
    let stopped = run.stopped_at.is_some();
    let running = !stopped && !run.paused;
    let schedule = |threshold: SignedDuration, reached: Option<Timestamp>| {
        if !running {
            return None;
        }
        reached.or_else(|| calendar.add_business_time(now, threshold - elapsed))
    };
    Clock {
        target_minutes,
        elapsed_minutes: minutes(elapsed),
        remaining_minutes: minutes(target - elapsed),
        paused: run.paused,
        stopped,
        met: run.met,
        breached: breached_at.is_some(),
        warned_at,
        breached_at,
        stopped_at: run.stopped_at,
        due_at: schedule(target, breached_at),
        warning_at: schedule(warning, warned_at),
    }
}

/// From `since` on, the record is in `state`, and the clocks stand still if `paused`.
struct Phase<'a> {
    since: Timestamp,
    state: &'a State,
    paused: bool,
}

/// The timeline as phases, oldest first: one at each change of state and each change of hold
/// reason (a write that changes both makes two, the first lasting no time).
fn phases<'a>(policy: &Policy, timeline: &'a Timeline) -> Vec<Phase<'a>> {
    let (states, holds) = (&timeline.states, &timeline.holds);
    let mut phases = Vec::with_capacity(states.len() + holds.len());
    let (mut next_state, mut next_hold) = (0, 0);
    let (mut state, mut reason): (Option<&State>, Option<&str>) = (None, None);
    loop {
        let since = match (states.get(next_state), holds.get(next_hold)) {
            (None, None) => return phases,
            (Some((at, new)), None) => {
                next_state += 1;
                state = Some(new);
                *at
            }
            (Some((at, new)), Some((held, _))) if at <= held => {
                next_state += 1;
                state = Some(new);
                *at
            }
            (_, Some((at, new))) => {
                next_hold += 1;
                reason = new.as_deref();
                *at
            }
        };
        // A reason written before any state (never, from a history) waits for the first state.
        if let Some(state) = state {
            phases.push(Phase {
                since,
                state,
                paused: policy.pauses(state, reason),
            });
        }
    }
}

/// The index ranges of the phases' cycles: the first starts at creation, each later one at a
/// reopen (leaving a stop state for one that is not).
fn cycles(policy: &Policy, phases: &[Phase<'_>]) -> Vec<std::ops::Range<usize>> {
    let stop = |s: &State| policy.stop_states.contains(s);
    let mut starts = vec![0];
    for (index, pair) in phases.windows(2).enumerate() {
        if stop(pair[0].state) && !stop(pair[1].state) {
            starts.push(index + 1);
        }
    }
    let ends = starts.iter().skip(1).copied().chain([phases.len()]);
    starts.iter().zip(ends).map(|(s, e)| *s..e).collect()
}

/// The intervals in which `phases` let a clock run, each ending at the next phase (or at
/// `end`), clipped to `end`.
fn runs_in(
    phases: &[Phase<'_>],
    end: Timestamp,
    runs: impl Fn(&Phase<'_>) -> bool,
) -> Vec<(Timestamp, Timestamp)> {
    phases
        .iter()
        .enumerate()
        .filter(|(_, phase)| runs(phase))
        .filter_map(|(index, phase)| {
            let until = phases
                .get(index + 1)
                .map_or(end, |next| next.since)
                .min(end);
            (until > phase.since).then_some((phase.since, until))
        })
        .collect()
}

/// The SLA of `record` under `policy` at `now`, in its current cycle.
pub fn status(policy: &Policy, record: &Record, timeline: &Timeline, now: Timestamp) -> SlaStatus {
    let cycle = cycle_count(policy, timeline);
    status_in_cycle(policy, record, timeline, now, cycle)
}

/// The number of cycles the timeline has (at least 1).
pub fn cycle_count(policy: &Policy, timeline: &Timeline) -> usize {
    cycles(policy, &phases(policy, timeline)).len().max(1)
}

/// The SLA of `record` under `policy` at `now` in cycle `cycle` (1-based; the last one when
/// out of range). The response clock belongs to the first cycle and is the same in every one.
pub fn status_in_cycle(
    policy: &Policy,
    record: &Record,
    timeline: &Timeline,
    now: Timestamp,
    cycle: usize,
) -> SlaStatus {
    let priority = record
        .fields
        .get("priority")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let stop = |s: &State| policy.stop_states.contains(s);
    let phases = phases(policy, timeline);
    let all = cycles(policy, &phases);
    let index = cycle.clamp(1, all.len().max(1)) - 1;
    let Some((target, calendar)) = policy.target(priority.as_deref()) else {
        return SlaStatus {
            policy: policy.agreement.clone(),
            priority,
            cycle: u32::try_from(index + 1).unwrap_or(u32::MAX),
            response: None,
            resolution: None,
        };
    };
    let states = &timeline.states;
    let current = phases.last();

    // Response: runs while the record is neither paused nor stopped, until an agent's first
    // action; a stop state before that (a cancel) stops it unmet.
    let response = target.response_minutes.map(|minutes| {
        let end = timeline.responded_at.unwrap_or(now).min(now);
        let stopped_at = timeline
            .responded_at
            .or_else(|| states.last().filter(|(_, s)| stop(s)).map(|(at, _)| *at));
        let run = Run {
            intervals: runs_in(&phases, end, |p| !stop(p.state) && !p.paused),
            paused: stopped_at.is_none() && current.is_some_and(|p| p.paused),
            stopped_at,
            met: timeline.responded_at.is_some(),
        };
        clock(&calendar, &run, now, minutes, policy.warning_percent)
    });

    // Resolution: runs within the cycle while neither paused nor stopped; the cycle ends at its
    // first stop state.
    let range = all.get(index).cloned().unwrap_or(0..phases.len());
    let entries = &phases[range];
    let stop_entry = entries.iter().find(|p| stop(p.state));
    let resolution = target.resolution_minutes.map(|minutes| {
        let end = stop_entry.map_or(now, |p| p.since).min(now);
        let run = Run {
            intervals: runs_in(entries, end, |p| !stop(p.state) && !p.paused),
            paused: stop_entry.is_none() && entries.last().is_some_and(|p| p.paused),
            stopped_at: stop_entry.map(|p| p.since),
            met: stop_entry.is_some_and(|p| !CANCEL_STATES.contains(&p.state.as_str())),
        };
        clock(&calendar, &run, now, minutes, policy.warning_percent)
    });
    SlaStatus {
        policy: policy.agreement.clone(),
        priority,
        cycle: u32::try_from(index + 1).unwrap_or(u32::MAX),
        response,
        resolution,
    }
}

#[cfg(test)]
mod tests;
