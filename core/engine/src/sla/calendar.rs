//! Business hours: weekly windows in a time zone, minus holidays, or around the clock. Holidays
//! are dates, or all-day events of an iCalendar feed whose `RRULE`s recur (e.g. every
//! 25 December); recurring ones are expanded one year at a time, only for the years a computation
//! touches, and each expansion is bounded.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, PoisonError},
};

use chrono::{Datelike, TimeZone as _};
use jiff::{
    SignedDuration, Timestamp,
    civil::{Date, Weekday},
    tz::TimeZone,
};
use serde::{Deserialize, Serialize};

/// Business hours: weekly windows in a time zone, minus holidays (or around the clock).
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    always: bool,
    /// Monday first; each window as (start, end) minutes after midnight.
    week: [Vec<(u32, u32)>; 7],
    holidays: Holidays,
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
    /// An iCalendar document whose all-day events are holidays too (e.g. a public-holiday feed);
    /// an event with an `RRULE` is a holiday on every date the rule yields.
    #[serde(default)]
    pub ical: Option<String>,
}

/// What is wrong with a calendar, and where (a JSON pointer below the calendar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarError {
    /// Pointer below `fields/calendar`, e.g. `/weekly/mon/0`.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl CalendarError {
    fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            at: at.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CalendarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "calendar{}: {}", self.at, self.message)
    }
}

/// The days of `weekly`, Monday first.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Most events with an `RRULE` in one calendar.
const MAX_RECURRING: usize = 100;
/// Most occurrences one rule yields in one year.
const MAX_PER_YEAR: u16 = 400;
/// Recurring holidays are expanded for these years only; outside them, none fall.
const YEARS: std::ops::RangeInclusive<i16> = 1900..=9000;

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

fn day_index(weekday: Weekday) -> usize {
    usize::from(weekday.to_monday_zero_offset().unsigned_abs())
}

/// Holidays: fixed dates, and recurring ones expanded per year on first use.
#[derive(Debug, Clone, Default)]
struct Holidays {
    dates: BTreeSet<Date>,
    recurring: Vec<rrule::RRuleSet>,
    /// Expanded recurring holidays by year, shared by the clones of a calendar.
    years: Arc<Mutex<BTreeMap<i16, Arc<BTreeSet<Date>>>>>,
}

impl Holidays {
    fn contains(&self, date: Date) -> bool {
        self.dates.contains(&date)
            || (!self.recurring.is_empty() && self.in_year(date.year()).contains(&date))
    }

    fn in_year(&self, year: i16) -> Arc<BTreeSet<Date>> {
        let mut years = self.years.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            years
                .entry(year)
                .or_insert_with(|| Arc::new(expand(&self.recurring, year))),
        )
    }
}

/// The dates the rules yield in `year`, at most [`MAX_PER_YEAR`] per rule.
fn expand(rules: &[rrule::RRuleSet], year: i16) -> BTreeSet<Date> {
    let mut dates = BTreeSet::new();
    if !YEARS.contains(&year) {
        return dates;
    }
    let start = |year: i16| {
        rrule::Tz::UTC
            .with_ymd_and_hms(i32::from(year), 1, 1, 0, 0, 0)
            .single()
    };
    let (Some(from), Some(until)) = (start(year), start(year + 1)) else {
        return dates;
    };
    let until = until - chrono::Duration::seconds(1);
    for rule in rules {
        let found = rule.clone().after(from).before(until).all(MAX_PER_YEAR);
        dates.extend(found.dates.iter().filter_map(|at| civil(at.date_naive())));
    }
    dates
}

fn civil(date: chrono::NaiveDate) -> Option<Date> {
    Date::new(
        i16::try_from(date.year()).ok()?,
        i8::try_from(date.month()).ok()?,
        i8::try_from(date.day()).ok()?,
    )
    .ok()
}

/// Reads an iCalendar feed: the start date of each event is a holiday, and an event with an
/// `RRULE` recurs (yearly, monthly or weekly, from 1900 on).
fn read_ical(text: &str) -> Result<(Vec<Date>, Vec<rrule::RRuleSet>), CalendarError> {
    use icalendar::Component as _;
    let calendar: icalendar::Calendar = text
        .parse()
        .map_err(|e: String| CalendarError::new("/ical", format!("not iCalendar: {e}")))?;
    let (mut dates, mut rules) = (Vec::new(), Vec::new());
    for (index, event) in calendar.events().enumerate() {
        let at = |message: String| CalendarError::new("/ical", format!("event {index}: {message}"));
        let start = event
            .get_start()
            .ok_or_else(|| at("no readable DTSTART".into()))?
            .date_naive();
        let date = civil(start).ok_or_else(|| at(format!("DTSTART {start} is out of range")))?;
        let Some(rule) = event.property_value("RRULE") else {
            dates.push(date);
            continue;
        };
        if rules.len() == MAX_RECURRING {
            return Err(at(format!("more than {MAX_RECURRING} recurring events")));
        }
        if !YEARS.contains(&date.year()) {
            return Err(at(format!(
                "a recurring holiday starts between {} and {}",
                YEARS.start(),
                YEARS.end()
            )));
        }
        let set: rrule::RRuleSet =
            format!("DTSTART:{}T000000Z\nRRULE:{rule}", start.format("%Y%m%d"))
                .parse()
                .map_err(|e: rrule::RRuleError| at(format!("RRULE {rule:?}: {e}")))?;
        let days = set.get_rrule().iter().all(|r| {
            matches!(
                r.get_freq(),
                rrule::Frequency::Yearly | rrule::Frequency::Monthly | rrule::Frequency::Weekly
            )
        });
        if !days {
            return Err(at(format!(
                "RRULE {rule:?}: a holiday recurs yearly, monthly or weekly"
            )));
        }
        rules.push(set);
    }
    Ok((dates, rules))
}

impl Calendar {
    /// Around the clock in UTC.
    pub fn always() -> Self {
        Self {
            tz: TimeZone::UTC,
            always: true,
            week: Default::default(),
            holidays: Holidays::default(),
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
            holidays: Holidays::default(),
        }
    }

    /// Builds a calendar from its written form; refuses an unknown time zone, a malformed,
    /// empty or overlapping window, a week without business hours (unless `always`) and an
    /// unreadable iCalendar feed.
    pub fn from_spec(spec: &CalendarSpec) -> Result<Self, CalendarError> {
        let tz = match &spec.timezone {
            Some(name) => TimeZone::get(name).map_err(|e| {
                CalendarError::new(
                    "/timezone",
                    format!("{name:?} is not an IANA time zone: {e}"),
                )
            })?,
            None => TimeZone::UTC,
        };
        let mut week: [Vec<(u32, u32)>; 7] = Default::default();
        for (day, windows) in &spec.weekly {
            let index = DAYS.iter().position(|d| d == day).ok_or_else(|| {
                CalendarError::new(
                    format!("/weekly/{day}"),
                    format!("unknown day {day:?}; use mon … sun"),
                )
            })?;
            for (n, window) in windows.iter().enumerate() {
                let at = format!("/weekly/{day}/{n}");
                let (start, end) = window.split_once('-').ok_or_else(|| {
                    CalendarError::new(&at, format!("{window:?} is not HH:MM-HH:MM"))
                })?;
                let (start, end) = (
                    parse_minute(start).map_err(|m| CalendarError::new(&at, m))?,
                    parse_minute(end).map_err(|m| CalendarError::new(&at, m))?,
                );
                if start >= end {
                    return Err(CalendarError::new(
                        at,
                        format!("{window:?} ends before it starts"),
                    ));
                }
                if let Some(other) = week[index].iter().find(|(s, e)| start < *e && *s < end) {
                    return Err(CalendarError::new(
                        at,
                        format!(
                            "{window:?} overlaps {:02}:{:02}-{:02}:{:02}",
                            other.0 / 60,
                            other.0 % 60,
                            other.1 / 60,
                            other.1 % 60
                        ),
                    ));
                }
                week[index].push((start, end));
            }
            week[index].sort_unstable();
        }
        if !spec.always && week.iter().all(Vec::is_empty) {
            return Err(CalendarError::new(
                "/weekly",
                "no business hour in the week; give windows or set `always`",
            ));
        }
        let mut holidays = Holidays {
            dates: spec.holidays.iter().copied().collect(),
            ..Holidays::default()
        };
        if let Some(ical) = &spec.ical {
            let (dates, rules) = read_ical(ical)?;
            holidays.dates.extend(dates);
            holidays.recurring = rules;
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
        self.holidays.dates.extend(holidays);
        self
    }

    /// Whether `date` is a holiday, fixed or recurring.
    pub fn is_holiday(&self, date: Date) -> bool {
        self.holidays.contains(date)
    }

    /// The business windows of one civil day, as instants.
    fn windows(&self, date: Date) -> Vec<(Timestamp, Timestamp)> {
        if self.holidays.contains(date) {
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

/// The holidays of an iCalendar file: the start date of each event without an `RRULE`, and the
/// dates of the recurring ones in `years`.
pub fn holidays_from_ical(
    text: &str,
    years: std::ops::RangeInclusive<i16>,
) -> Result<Vec<Date>, CalendarError> {
    let (mut dates, rules) = read_ical(text)?;
    for year in years {
        dates.extend(expand(&rules, year));
    }
    dates.sort_unstable();
    dates.dedup();
    Ok(dates)
}
