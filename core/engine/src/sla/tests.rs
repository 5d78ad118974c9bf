use jiff::{SignedDuration, Timestamp, civil::date, tz::TimeZone};
use serde_json::json;
use usm_model::{
    Action, Actor, Domain, HistoryEntry, Kind, Process, Record, RecordId, Role, State,
};

use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn state(name: &str) -> State {
    State::new(name).unwrap()
}

fn incident(priority: &str, created: &str) -> Record {
    Record {
        id: RecordId::parse("INC-1").unwrap(),
        kind: Kind::new("incident").unwrap(),
        process: Process::Recover,
        domain: Domain::default(),
        state: state("new"),
        title: "x".into(),
        fields: json!({"priority": priority}).as_object().unwrap().clone(),
        links: vec![],
        version: 1,
        created_at: at(created),
        created_by: "ann".into(),
        updated_at: at(created),
        updated_by: "ann".into(),
    }
}

fn agreement(fields: serde_json::Value) -> Record {
    Record {
        id: RecordId::parse("AGR-1").unwrap(),
        kind: Kind::new("agreement").unwrap(),
        process: Process::Agree,
        domain: Domain::default(),
        state: state("active"),
        title: "SLA".into(),
        fields: fields.as_object().unwrap().clone(),
        links: vec![],
        version: 1,
        created_at: Timestamp::UNIX_EPOCH,
        created_by: "a".into(),
        updated_at: Timestamp::UNIX_EPOCH,
        updated_by: "a".into(),
    }
}

/// Mon–Fri 08:00–18:00 UTC; P1: respond in 30 min, resolve in 4 h (explicitly in business
/// hours); P3: 2 h / 8 h; `extra` fields besides.
fn policy_with(holidays: &[jiff::civil::Date], extra: serde_json::Value) -> Policy {
    let mut fields = json!({
        "targets": {"P1": {"response_minutes": 30, "resolution_minutes": 240, "around_the_clock": false},
                    "P3": {"response_minutes": 120, "resolution_minutes": 480}},
        "calendar": {"timezone": "UTC", "weekly": {"mon": ["08:00-18:00"], "tue": ["08:00-18:00"],
                     "wed": ["08:00-18:00"], "thu": ["08:00-18:00"], "fri": ["08:00-18:00"]}},
        "pause_states": ["on_hold"],
    });
    fields
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let mut policy = Policy::from_agreement(&agreement(fields)).unwrap();
    policy.calendar = policy.calendar.with_holidays(holidays.iter().copied());
    policy
}

/// The test policy with the default pause reasons.
fn policy(holidays: &[jiff::civil::Date]) -> Policy {
    policy_with(holidays, json!({}))
}

/// The states over time; an agent made the second entry's move (the first response).
fn timeline(entries: &[(&str, &str)]) -> Timeline {
    let states: Vec<(Timestamp, State)> = entries.iter().map(|(t, s)| (at(t), state(s))).collect();
    Timeline {
        responded_at: states.get(1).map(|(at, _)| *at),
        states,
        holds: vec![],
    }
}

/// `line` with every hold given `reason` as it starts, cleared as it ends (as the engine does).
fn held(mut line: Timeline, reason: &str) -> Timeline {
    let mut on_hold = false;
    for (at, state) in &line.states {
        let now_on_hold = state.as_str() == "on_hold";
        if now_on_hold != on_hold {
            line.holds
                .push((*at, now_on_hold.then(|| reason.to_owned())));
        }
        on_hold = now_on_hold;
    }
    line
}

/// `line` as the history held it at `moment`.
fn as_of(line: &Timeline, moment: &str) -> Timeline {
    let moment = at(moment);
    Timeline {
        states: line
            .states
            .iter()
            .filter(|(t, _)| *t <= moment)
            .cloned()
            .collect(),
        holds: line
            .holds
            .iter()
            .filter(|(t, _)| *t <= moment)
            .cloned()
            .collect(),
        responded_at: line.responded_at.filter(|t| *t <= moment),
    }
}

fn elapsed(clock: Option<Clock>) -> f64 {
    clock.unwrap().elapsed_minutes
}

#[test]
fn a_pause_across_midnight_and_a_holiday_stops_the_clock() {
    // 2026-12-21 is a Monday; Tuesday 22nd is a holiday.
    let policy = policy(&[date(2026, 12, 22)]);
    let record = incident("P3", "2026-12-21T16:00:00Z");
    let line = held(
        timeline(&[
            ("2026-12-21T16:00:00Z", "new"),
            ("2026-12-21T16:30:00Z", "in_progress"),
            ("2026-12-21T17:00:00Z", "on_hold"),
            ("2026-12-23T09:00:00Z", "in_progress"),
        ]),
        "awaiting_customer",
    );
    let status = status(&policy, &record, &line, at("2026-12-23T10:00:00Z"));
    let resolution = status.resolution.unwrap();
    // Mon 16:00–17:00 and Wed 09:00–10:00: the pause, the night, the holiday and Wed 08–09 don't count.
    assert!(
        (resolution.elapsed_minutes - 120.0).abs() < 1e-6,
        "{resolution:?}"
    );
    assert!(!resolution.paused && !resolution.breached);
    // 8 h target, 6 h left: Wed 10:00 + 6 h of business time = Wed 16:00.
    assert_eq!(resolution.due_at, Some(at("2026-12-23T16:00:00Z")));
    let response = status.response.unwrap();
    assert!(response.stopped);
    assert!((response.elapsed_minutes - 30.0).abs() < 1e-6);

    // While paused, nothing is due and the clock reads the same at any later time.
    let paused_line = &Timeline {
        states: line.states[..3].to_vec(),
        responded_at: line.responded_at,
        holds: line.holds[..1].to_vec(),
    };
    let early = super::status(&policy, &record, paused_line, at("2026-12-21T18:00:00Z"))
        .resolution
        .unwrap();
    let late = super::status(&policy, &record, paused_line, at("2026-12-24T12:00:00Z"))
        .resolution
        .unwrap();
    assert!(early.paused && early.due_at.is_none());
    assert_eq!(early.elapsed_minutes, late.elapsed_minutes);
}

#[test]
fn a_priority_change_mid_flight_applies_the_new_target_to_the_whole_history() {
    let policy = policy(&[]);
    let line = timeline(&[
        ("2026-12-21T08:00:00Z", "new"),
        ("2026-12-21T08:10:00Z", "in_progress"),
    ]);
    let now = at("2026-12-21T13:00:00Z");
    let as_p3 = status(&policy, &incident("P3", "2026-12-21T08:00:00Z"), &line, now)
        .resolution
        .unwrap();
    assert!(!as_p3.breached);
    assert!((as_p3.remaining_minutes - 180.0).abs() < 1e-6);
    let as_p1 = status(&policy, &incident("P1", "2026-12-21T08:00:00Z"), &line, now)
        .resolution
        .unwrap();
    assert!(as_p1.breached, "5 h elapsed against the P1 target of 4 h");
    assert!((as_p1.remaining_minutes + 60.0).abs() < 1e-6);
}

#[test]
fn five_pauses_and_resumes_count_only_running_time() {
    let policy = policy(&[]);
    let mut entries = vec![("2026-12-21T09:00:00Z".to_owned(), "new")];
    // Every 10 minutes: on_hold, in_progress, … five times.
    for i in 0..10 {
        let minute = 10 * (i + 1);
        entries.push((
            format!("2026-12-21T{:02}:{:02}:00Z", 9 + minute / 60, minute % 60),
            if i % 2 == 0 { "on_hold" } else { "in_progress" },
        ));
    }
    let states: Vec<(Timestamp, State)> = entries.iter().map(|(t, s)| (at(t), state(s))).collect();
    let line = held(
        Timeline {
            responded_at: Some(states[1].0),
            states,
            holds: vec![],
        },
        "awaiting_customer",
    );
    let status = status(
        &policy,
        &incident("P1", "2026-12-21T09:00:00Z"),
        &line,
        at("2026-12-21T11:00:00Z"),
    );
    let resolution = status.resolution.unwrap();
    // Running: 09:00–09:10, then 09:20–09:30, 09:40–09:50, 10:00–10:10, 10:20–10:30, 10:40–11:00.
    assert!(
        (resolution.elapsed_minutes - 70.0).abs() < 1e-6,
        "{resolution:?}"
    );
}

#[test]
fn a_breach_after_hours_falls_on_the_next_business_moment() {
    // Created Friday 2026-12-18 at 17:00 with 4 h to resolve: 1 h on Friday, 3 h on Monday.
    let weekdays = policy(&[]);
    let record = incident("P1", "2026-12-18T17:00:00Z");
    let line = timeline(&[("2026-12-18T17:00:00Z", "new")]);
    let status = status(&weekdays, &record, &line, at("2026-12-18T17:00:00Z"));
    assert_eq!(
        status.resolution.as_ref().unwrap().due_at,
        Some(at("2026-12-21T11:00:00Z"))
    );
    // The warning at 75 % (3 h): Monday 10:00, not Saturday.
    assert_eq!(
        status.resolution.unwrap().warning_at,
        Some(at("2026-12-21T10:00:00Z"))
    );
    // With Monday a holiday, Tuesday 11:00.
    let holiday = policy(&[date(2026, 12, 21)]);
    let shifted = super::status(&holiday, &record, &line, at("2026-12-18T17:00:00Z"));
    assert_eq!(
        shifted.resolution.unwrap().due_at,
        Some(at("2026-12-22T11:00:00Z"))
    );
}

#[test]
fn business_hours_follow_the_time_zone_across_daylight_saving() {
    // Amsterdam office hours; 2026-03-29 is the spring-forward Sunday.
    let calendar = Calendar::office_hours(TimeZone::get("Europe/Amsterdam").unwrap());
    // Friday 27 March 08:00 CET = 07:00 UTC; Monday 30 March 08:00 CEST = 06:00 UTC.
    let friday = calendar.business_time(at("2026-03-27T00:00:00Z"), at("2026-03-28T00:00:00Z"));
    assert_eq!(friday.as_secs(), 10 * 3600);
    let due = calendar.add_business_time(
        at("2026-03-27T16:00:00Z"),
        jiff::SignedDuration::from_hours(2),
    );
    // Friday 17:00–18:00 CET (16:00–17:00 UTC), then Monday 08:00–09:00 CEST (06:00–07:00 UTC).
    assert_eq!(due, Some(at("2026-03-30T07:00:00Z")));
}

#[test]
fn holidays_come_from_icalendar() {
    let ics = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20261225\r\nSUMMARY:Christmas\r\nEND:VEVENT\r\n\
               BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    assert_eq!(
        holidays_from_ical(ics, 2026..=2027).unwrap(),
        vec![date(2026, 12, 25), date(2027, 1, 1)]
    );
    let garbage =
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART:garbage\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    assert_eq!(
        holidays_from_ical(garbage, 2026..=2026).unwrap_err().at,
        "/ical"
    );
    // A calendar can carry an iCalendar feed directly.
    let spec: CalendarSpec = serde_json::from_value(json!({"always": true, "ical": ics})).unwrap();
    let calendar = Calendar::from_spec(&spec).unwrap();
    assert_eq!(
        calendar
            .business_time(at("2026-12-25T00:00:00Z"), at("2026-12-26T00:00:00Z"))
            .as_secs(),
        0
    );
    assert_eq!(
        calendar
            .business_time(at("2026-12-24T00:00:00Z"), at("2026-12-25T00:00:00Z"))
            .as_secs(),
        86400
    );
}

const CHRISTMAS_EVERY_YEAR: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//usm//test//EN\r\n\
    BEGIN:VEVENT\r\nUID:xmas@usm\r\nDTSTART;VALUE=DATE:20201225\r\n\
    RRULE:FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=25\r\nSUMMARY:Christmas\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

#[test]
fn a_yearly_rrule_holiday_pauses_the_clock_in_a_later_year() {
    let spec: CalendarSpec = serde_json::from_value(json!({
        "timezone": "UTC",
        "weekly": {"mon": ["08:00-18:00"], "tue": ["08:00-18:00"], "wed": ["08:00-18:00"],
                   "thu": ["08:00-18:00"], "fri": ["08:00-18:00"]},
        "ical": CHRISTMAS_EVERY_YEAR,
    }))
    .unwrap();
    let calendar = Calendar::from_spec(&spec).unwrap();
    // Friday 25 December 2026 (six years after DTSTART) and Monday 25 December 2028.
    for (day, next) in [("2026-12-25", "2026-12-26"), ("2028-12-25", "2028-12-26")] {
        let (day, next) = (
            at(&format!("{day}T00:00:00Z")),
            at(&format!("{next}T00:00:00Z")),
        );
        assert!(calendar.is_holiday(day.to_zoned_datetime(TimeZone::UTC).date()));
        assert_eq!(calendar.business_time(day, next).as_secs(), 0, "{day}");
    }
    // Thursday 24 December 2026 is a working day; with 4 h left at 16:00 it is due Monday 28th.
    assert_eq!(
        calendar
            .business_time(at("2026-12-24T00:00:00Z"), at("2026-12-25T00:00:00Z"))
            .as_secs(),
        10 * 3600
    );
    assert_eq!(
        calendar.add_business_time(at("2026-12-24T16:00:00Z"), SignedDuration::from_hours(4)),
        Some(at("2026-12-28T10:00:00Z"))
    );
    assert_eq!(
        holidays_from_ical(CHRISTMAS_EVERY_YEAR, 2030..=2031).unwrap(),
        vec![date(2030, 12, 25), date(2031, 12, 25)]
    );
}

#[test]
fn recurring_holidays_are_bounded() {
    let rule = |rrule: &str, start: &str| {
        format!(
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;VALUE=DATE:{start}\r\nRRULE:{rrule}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        )
    };
    // Sub-daily rules make no holidays and are refused, as are starts before 1900.
    for (rrule, start) in [
        ("FREQ=HOURLY", "20260101"),
        ("FREQ=YEARLY", "00010101"),
        ("FREQ=NONSENSE", "20260101"),
    ] {
        let refused = holidays_from_ical(&rule(rrule, start), 2026..=2026).unwrap_err();
        assert_eq!(refused.at, "/ical", "{rrule}");
    }
    // A weekly rule yields at most one year's Mondays per year asked for.
    let mondays =
        holidays_from_ical(&rule("FREQ=WEEKLY;BYDAY=MO", "19000101"), 2026..=2026).unwrap();
    assert_eq!(mondays.len(), 52);
}

#[test]
fn calendars_refuse_what_they_cannot_count_naming_the_place() {
    let refused = |calendar: serde_json::Value| {
        let spec: CalendarSpec = serde_json::from_value(calendar).unwrap();
        Calendar::from_spec(&spec).unwrap_err().at
    };
    assert_eq!(
        refused(json!({"timezone": "Mars/Olympus", "always": true})),
        "/timezone"
    );
    assert_eq!(
        refused(json!({"weekly": {"mon": ["08:00-12:00", "11:00-13:00"]}})),
        "/weekly/mon/1"
    );
    assert_eq!(
        refused(json!({"weekly": {"tue": ["18:00-08:00"]}})),
        "/weekly/tue/0"
    );
    assert_eq!(
        refused(json!({"weekly": {"wed": ["8h-12h"]}})),
        "/weekly/wed/0"
    );
    assert_eq!(
        refused(json!({"weekly": {"someday": ["08:00-12:00"]}})),
        "/weekly/someday"
    );
    assert_eq!(refused(json!({"weekly": {}})), "/weekly");
    // Adjacent windows are fine, and `always` needs no windows.
    let spec: CalendarSpec =
        serde_json::from_value(json!({"weekly": {"mon": ["08:00-12:00", "12:00-13:00"]}})).unwrap();
    assert!(Calendar::from_spec(&spec).is_ok());
    assert!(
        Calendar::from_spec(&CalendarSpec {
            always: true,
            ..CalendarSpec::default()
        })
        .is_ok()
    );
}

#[test]
fn p1_runs_around_the_clock_unless_the_agreement_says_otherwise() {
    let mut around = policy(&[]);
    around.targets.get_mut("P1").unwrap().around_the_clock = None;
    // Created Friday 17:00 with 4 h to resolve: 21:00 the same night, not Monday.
    let record = incident("P1", "2026-12-18T17:00:00Z");
    let line = timeline(&[("2026-12-18T17:00:00Z", "new")]);
    let due = status(&around, &record, &line, at("2026-12-18T17:00:00Z"))
        .resolution
        .unwrap()
        .due_at;
    assert_eq!(due, Some(at("2026-12-18T21:00:00Z")));
    // A P3 on the same policy keeps business hours (8 h: 1 h Friday, 7 h Monday).
    let p3 = status(
        &around,
        &incident("P3", "2026-12-18T17:00:00Z"),
        &line,
        at("2026-12-18T17:00:00Z"),
    );
    assert_eq!(
        p3.resolution.unwrap().due_at,
        Some(at("2026-12-21T15:00:00Z"))
    );
}

#[test]
fn a_breach_is_dated_when_it_happened_however_late_it_is_computed() {
    // P1 in business hours: 4 h. In progress from Monday 08:00, resolved at 14:00; computed
    // a week later the breach still happened Monday 12:00 and the clock stopped at 14:00.
    let policy = policy(&[]);
    let line = timeline(&[
        ("2026-12-21T08:00:00Z", "new"),
        ("2026-12-21T08:10:00Z", "in_progress"),
        ("2026-12-21T14:00:00Z", "resolved"),
    ]);
    let record = incident("P1", "2026-12-21T08:00:00Z");
    let resolution = status(&policy, &record, &line, at("2026-12-28T09:00:00Z"))
        .resolution
        .unwrap();
    assert_eq!(resolution.breached_at, Some(at("2026-12-21T12:00:00Z")));
    assert_eq!(resolution.warned_at, Some(at("2026-12-21T11:00:00Z")));
    assert_eq!(resolution.stopped_at, Some(at("2026-12-21T14:00:00Z")));
    assert!(resolution.stopped && resolution.met && resolution.due_at.is_none());
}

#[test]
fn a_reopen_starts_a_new_resolution_cycle() {
    let policy = policy(&[]);
    let line = timeline(&[
        ("2026-12-21T08:00:00Z", "new"),
        ("2026-12-21T08:10:00Z", "in_progress"),
        ("2026-12-21T13:00:00Z", "resolved"),
        ("2026-12-22T09:00:00Z", "in_progress"),
    ]);
    let record = incident("P1", "2026-12-21T08:00:00Z");
    assert_eq!(cycle_count(&policy, &line), 2);
    let first = status_in_cycle(&policy, &record, &line, at("2026-12-22T10:00:00Z"), 1);
    assert_eq!(first.cycle, 1);
    assert_eq!(
        first.resolution.unwrap().breached_at,
        Some(at("2026-12-21T12:00:00Z"))
    );
    // The second cycle counts from the reopen: 1 h in, due at 13:00.
    let second = status(&policy, &record, &line, at("2026-12-22T10:00:00Z"));
    assert_eq!(second.cycle, 2);
    let resolution = second.resolution.unwrap();
    assert!(
        (resolution.elapsed_minutes - 60.0).abs() < 1e-6,
        "{resolution:?}"
    );
    assert!(resolution.breached_at.is_none() && !resolution.stopped);
    assert_eq!(resolution.due_at, Some(at("2026-12-22T13:00:00Z")));
}

fn entry(version: u64, by_agent: bool, to: Option<&str>) -> HistoryEntry {
    HistoryEntry {
        version,
        at: at("2026-12-21T09:00:00Z"),
        actor: "x".into(),
        action: if to.is_some() {
            Action::Transition
        } else {
            Action::Update
        },
        comment: None,
        visibility: None,
        changes: to
            .map(|to| usm_model::Change {
                path: "/state".into(),
                from: Some(json!("new")),
                to: Some(json!(to)),
            })
            .into_iter()
            .collect(),
        approval: None,
        steps: vec![],
        cause: None,
        stale_approvals: vec![],
        by_agent,
    }
}

#[test]
fn the_response_is_an_agents_first_action_and_not_a_cancel() {
    assert!(meets_response(&entry(2, true, None)), "an agent's update");
    assert!(meets_response(&entry(2, true, Some("in_progress"))));
    assert!(
        !meets_response(&entry(1, true, None)),
        "creating is not responding"
    );
    assert!(
        !meets_response(&entry(2, false, Some("in_progress"))),
        "the requester's own move"
    );
    assert!(
        !meets_response(&entry(2, true, Some("cancelled"))),
        "cancelling answers no one"
    );
    let agent = Actor::new("ann", [Role::Agent]);
    assert!(acts_as_agent(&agent, false));
    assert!(
        !acts_as_agent(&agent, true),
        "a step's effect is not the agent's action"
    );
    assert!(!acts_as_agent(
        &Actor::new("bot", [Role::Automation]),
        false
    ));
    assert!(!acts_as_agent(&Actor::new("rob", [Role::Requester]), false));

    // Cancelled before anyone answered: the response clock stops, unmet.
    let policy = policy(&[]);
    let line = Timeline {
        states: vec![
            (at("2026-12-21T08:00:00Z"), state("new")),
            (at("2026-12-21T08:20:00Z"), state("cancelled")),
        ],
        responded_at: None,
        holds: vec![],
    };
    let response = status(
        &policy,
        &incident("P1", "2026-12-21T08:00:00Z"),
        &line,
        at("2026-12-21T12:00:00Z"),
    )
    .response
    .unwrap();
    assert!(
        response.stopped && !response.met && !response.breached,
        "{response:?}"
    );
    assert!((response.elapsed_minutes - 20.0).abs() < 1e-6);
}

/// Monday: new at 09:00, in progress at 09:10, on hold 10:00–12:00, in progress until 13:00.
fn a_two_hour_hold() -> Timeline {
    timeline(&[
        ("2026-12-21T09:00:00Z", "new"),
        ("2026-12-21T09:10:00Z", "in_progress"),
        ("2026-12-21T10:00:00Z", "on_hold"),
        ("2026-12-21T12:00:00Z", "in_progress"),
    ])
}

#[test]
fn only_a_hold_awaiting_the_customer_stops_the_clock_by_default() {
    let policy = policy(&[]);
    let record = incident("P3", "2026-12-21T09:00:00Z");
    let now = at("2026-12-21T13:00:00Z");
    // Awaiting the customer: 09:00–10:00 and 12:00–13:00 run, the hold does not.
    let customer = status(
        &policy,
        &record,
        &held(a_two_hour_hold(), "awaiting_customer"),
        now,
    );
    assert!((elapsed(customer.resolution) - 120.0).abs() < 1e-6);
    // Waiting for a vendor, or on hold with no reason: the customer's clock runs throughout.
    for line in [
        held(a_two_hour_hold(), "awaiting_vendor"),
        a_two_hour_hold(),
    ] {
        let other = status(&policy, &record, &line, now);
        assert!((elapsed(other.resolution) - 240.0).abs() < 1e-6, "{line:?}");
    }
    // While on hold for the vendor the clock is due; for the customer it stands still.
    let during = "2026-12-21T11:00:00Z";
    let vendor = as_of(&held(a_two_hour_hold(), "awaiting_vendor"), during);
    let vendor = status(&policy, &record, &vendor, at(during))
        .resolution
        .unwrap();
    assert!(!vendor.paused, "{vendor:?}");
    assert_eq!(vendor.due_at, Some(at("2026-12-21T17:00:00Z")));
    let customer = as_of(&held(a_two_hour_hold(), "awaiting_customer"), during);
    let customer = status(&policy, &record, &customer, at(during));
    let (response, resolution) = (customer.response.unwrap(), customer.resolution.unwrap());
    assert!(
        resolution.paused && resolution.due_at.is_none(),
        "{resolution:?}"
    );
    assert!(response.stopped, "answered at 09:10");
}

#[test]
fn a_reason_changed_mid_hold_moves_the_clock() {
    let policy = policy(&[]);
    let record = incident("P3", "2026-12-21T09:00:00Z");
    // On hold for a vendor at 10:00; at 11:00 the desk asks the customer; back at 12:00.
    let mut line = a_two_hour_hold();
    line.holds = vec![
        (at("2026-12-21T10:00:00Z"), Some("awaiting_vendor".into())),
        (at("2026-12-21T11:00:00Z"), Some("awaiting_customer".into())),
        (at("2026-12-21T12:00:00Z"), None),
    ];
    let now = at("2026-12-21T13:00:00Z");
    // Running 09:00–11:00 and 12:00–13:00.
    assert!((elapsed(status(&policy, &record, &line, now).resolution) - 180.0).abs() < 1e-6);
    // Still on hold at 11:30, waiting for the customer: it stands at 2 h.
    let moment = "2026-12-21T11:30:00Z";
    let waiting = status(&policy, &record, &as_of(&line, moment), at(moment))
        .resolution
        .unwrap();
    assert!(waiting.paused && (waiting.elapsed_minutes - 120.0).abs() < 1e-6);

    // The other way round: the customer answers the hold's question at 11:00 but the record
    // stays on hold for a vendor: paused 10:00–11:00 only, and due again from 11:00.
    line.holds[0].1 = Some("awaiting_customer".into());
    line.holds[1].1 = Some("awaiting_vendor".into());
    assert!((elapsed(status(&policy, &record, &line, now).resolution) - 180.0).abs() < 1e-6);
    let waiting = status(&policy, &record, &as_of(&line, moment), at(moment))
        .resolution
        .unwrap();
    assert!(!waiting.paused && (waiting.elapsed_minutes - 90.0).abs() < 1e-6);
    // 8 h target, 6.5 h left at 11:30: the end of Monday's hours.
    assert_eq!(waiting.due_at, Some(at("2026-12-21T18:00:00Z")));
}

#[test]
fn an_agreement_lists_the_hold_reasons_that_pause() {
    let record = incident("P3", "2026-12-21T09:00:00Z");
    let now = at("2026-12-21T13:00:00Z");
    let vendor_hold = held(a_two_hour_hold(), "awaiting_vendor");
    // Listed: a vendor's hold pauses too.
    let both = policy_with(
        &[],
        json!({"pause_reasons": ["awaiting_customer", "awaiting_vendor"]}),
    );
    assert!((elapsed(status(&both, &record, &vendor_hold, now).resolution) - 120.0).abs() < 1e-6);
    // "*": every hold, with a reason or none.
    let any = policy_with(&[], json!({"pause_reasons": ["*"]}));
    for line in [vendor_hold.clone(), a_two_hour_hold()] {
        assert!((elapsed(status(&any, &record, &line, now).resolution) - 120.0).abs() < 1e-6);
    }
    // None: no hold pauses, the customer's neither.
    let none = policy_with(&[], json!({"pause_reasons": []}));
    let customer_hold = held(a_two_hour_hold(), "awaiting_customer");
    assert!((elapsed(status(&none, &record, &customer_hold, now).resolution) - 240.0).abs() < 1e-6);
    // A pause state of its own pauses whatever the hold reason says.
    let own = policy_with(&[], json!({"pause_states": ["on_hold", "awaiting_parts"]}));
    assert!(own.pauses(&state("awaiting_parts"), None));
    assert!(!own.pauses(&state("on_hold"), None));
    assert!(!own.pauses(&state("on_hold"), Some("awaiting_vendor")));
    assert!(own.pauses(&state("on_hold"), Some("awaiting_customer")));

    // An agreement without the field (older ones) pauses for the customer only.
    assert_eq!(
        policy(&[]).pause_reasons.iter().collect::<Vec<_>>(),
        ["awaiting_customer"]
    );
    // What cannot be a hold reason is refused, naming the place.
    for (reasons, pointer) in [
        (json!([""]), "/fields/pause_reasons/0"),
        (
            json!(["awaiting_customer", "x".repeat(101)]),
            "/fields/pause_reasons/1",
        ),
        (json!("awaiting_customer"), "/fields/pause_reasons"),
    ] {
        let refused =
            Policy::from_agreement(&agreement(json!({"pause_reasons": reasons}))).unwrap_err();
        assert_eq!(refused.field, pointer, "{refused:?}");
    }
}
