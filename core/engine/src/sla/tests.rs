use jiff::{Timestamp, civil::date, tz::TimeZone};
use serde_json::json;
use usm_model::{Domain, Kind, Process, Record, RecordId, State};

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

/// Mon–Fri 08:00–18:00 UTC; P1: respond in 30 min, resolve in 4 h; P3: 2 h / 8 h.
fn policy(holidays: &[jiff::civil::Date]) -> Policy {
    let mut policy = Policy::from_agreement(&Record {
        id: RecordId::parse("AGR-1").unwrap(),
        kind: Kind::new("agreement").unwrap(),
        process: Process::Agree,
        domain: Domain::default(),
        state: state("active"),
        title: "SLA".into(),
        fields: json!({
            "targets": {"P1": {"response_minutes": 30, "resolution_minutes": 240},
                        "P3": {"response_minutes": 120, "resolution_minutes": 480}},
            "calendar": {"timezone": "UTC", "weekly": {"mon": ["08:00-18:00"], "tue": ["08:00-18:00"],
                         "wed": ["08:00-18:00"], "thu": ["08:00-18:00"], "fri": ["08:00-18:00"]}},
            "pause_states": ["on_hold"],
        })
        .as_object()
        .unwrap()
        .clone(),
        links: vec![],
        version: 1,
        created_at: Timestamp::UNIX_EPOCH,
        created_by: "a".into(),
        updated_at: Timestamp::UNIX_EPOCH,
        updated_by: "a".into(),
    })
    .unwrap();
    policy.calendar = policy.calendar.with_holidays(holidays.iter().copied());
    policy
}

fn timeline(entries: &[(&str, &str)]) -> Vec<(Timestamp, State)> {
    entries.iter().map(|(t, s)| (at(t), state(s))).collect()
}

#[test]
fn a_pause_across_midnight_and_a_holiday_stops_the_clock() {
    // 2026-12-21 is a Monday; Tuesday 22nd is a holiday.
    let policy = policy(&[date(2026, 12, 22)]);
    let record = incident("P3", "2026-12-21T16:00:00Z");
    let line = timeline(&[
        ("2026-12-21T16:00:00Z", "new"),
        ("2026-12-21T16:30:00Z", "in_progress"),
        ("2026-12-21T17:00:00Z", "on_hold"),
        ("2026-12-23T09:00:00Z", "in_progress"),
    ]);
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
    let paused_line = &line[..3];
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
    let line: Vec<(Timestamp, State)> = entries.iter().map(|(t, s)| (at(t), state(s))).collect();
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
        holidays_from_ical(ics).unwrap(),
        vec![date(2026, 12, 25), date(2027, 1, 1)]
    );
    assert!(holidays_from_ical("DTSTART:garbage").is_err());
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
