//! Improve-process KPIs: mean time to resolve (wall clock and business time), SLA compliance,
//! change success rate, backlog by state, reopen rate.
//!
//! A worker following the outbox keeps each record's contribution and their sums by domain,
//! process and hour of creation ([`book`]), so a request adds up sums instead of reading every
//! record: its cost grows with the span asked for, not with the number of records. Requesters,
//! who see only their own records, and requests made before the first build of the sums
//! finished are answered from the records themselves.

mod book;
mod sums;
mod worker;

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock},
};

use jiff::Timestamp;
use serde::Serialize;
use usm_engine::{Engine, EngineError};
use usm_model::{Actor, Domain, Process};
use usm_store::{ListQuery, StoreError};

use crate::{
    book::{Book, contributions_in, hour_of},
    sums::{Contribution, Sums, Totals},
};
pub use worker::KpiWorker;

/// Most records one KPI computation from records reads.
pub const MAX_KPI_RECORDS: usize = 100_000;

/// Which records the KPIs cover.
#[derive(Debug, Clone, Default)]
pub struct KpiRequest {
    /// Only this domain.
    pub domain: Option<String>,
    /// Only kinds of this process.
    pub process: Option<Process>,
    /// Only records created at or after this instant.
    pub from: Option<Timestamp>,
    /// Only records created before this instant.
    pub to: Option<Timestamp>,
}

/// The KPIs of a set of records.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Kpis {
    /// Records considered.
    pub records: usize,
    /// Whether the record cap cut the computation short.
    pub truncated: bool,
    /// Records resolved at least once.
    pub resolved: usize,
    /// Mean wall-clock minutes from creation to first resolution.
    pub mean_time_to_resolve_minutes: Option<f64>,
    /// Mean business minutes the resolution clock ran until the first resolution, over the
    /// records resolved under an SLA (pauses and hours outside the calendar do not count).
    pub mean_time_to_resolve_business_minutes: Option<f64>,
    /// Records whose ledger holds a resolution breach or a resolution, under whatever agreement
    /// was in force then (expired or terminated since or not).
    pub sla_measured: usize,
    /// Share of those with no resolution breach in any cycle, in percent.
    pub sla_compliance_percent: Option<f64>,
    /// Changes closed.
    pub changes_closed: usize,
    /// Closed changes without an `outcome`: neither a success nor a failure.
    pub changes_outcome_unknown: usize,
    /// Share of closed changes with outcome `successful`, in percent (unknown outcomes count
    /// against it).
    pub change_success_rate_percent: Option<f64>,
    /// Open records (initial or active state) by state.
    pub backlog_by_state: BTreeMap<String, usize>,
    /// Records reopened after resolution.
    pub reopened: usize,
    /// Share of resolved records that were reopened, in percent.
    pub reopen_rate_percent: Option<f64>,
}

impl Kpis {
    /// The KPIs as CSV: a header line and one `metric,value` line each.
    pub fn to_csv(&self) -> String {
        let mut csv = String::from("metric,value\n");
        let mut row = |name: &str, value: String| {
            csv.push_str(name);
            csv.push(',');
            csv.push_str(&value);
            csv.push('\n');
        };
        let number = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.2}"));
        row("records", self.records.to_string());
        row("resolved", self.resolved.to_string());
        row(
            "mean_time_to_resolve_minutes",
            number(self.mean_time_to_resolve_minutes),
        );
        row(
            "mean_time_to_resolve_business_minutes",
            number(self.mean_time_to_resolve_business_minutes),
        );
        row("sla_measured", self.sla_measured.to_string());
        row(
            "sla_compliance_percent",
            number(self.sla_compliance_percent),
        );
        row("changes_closed", self.changes_closed.to_string());
        row(
            "changes_outcome_unknown",
            self.changes_outcome_unknown.to_string(),
        );
        row(
            "change_success_rate_percent",
            number(self.change_success_rate_percent),
        );
        row("reopened", self.reopened.to_string());
        row("reopen_rate_percent", number(self.reopen_rate_percent));
        for (state, count) in &self.backlog_by_state {
            row(&format!("backlog.{state}"), count.to_string());
        }
        csv
    }
}

/// The KPI service: answers requests from the sums its [`KpiWorker`] keeps.
pub struct KpiService {
    engine: Arc<Engine>,
    book: RwLock<Book>,
}

impl KpiService {
    /// Loads the sums kept in the store.
    pub fn open(engine: Arc<Engine>) -> Result<Arc<Self>, StoreError> {
        let book = Book::load(engine.store().as_ref())?;
        Ok(Arc::new(Self {
            engine,
            book: RwLock::new(book),
        }))
    }

    /// The KPIs of the records `actor` may see that match `request`.
    pub fn compute(&self, actor: &Actor, request: &KpiRequest) -> Result<Kpis, EngineError> {
        let domain = self.domain(actor, request)?;
        if let (Some(from), Some(to)) = (request.from, request.to)
            && from >= to
        {
            return Err(EngineError::invalid("from", "must be before `to`"));
        }
        let book = self.book.read().unwrap_or_else(PoisonError::into_inner);
        if !actor.works_records() || book.position.is_none() {
            drop(book);
            return self.record_by_record(actor, domain, request);
        }
        let store = self.engine.store().as_ref();
        let catalogs = self.engine.catalogs();
        let span = Span::new(request.from, request.to);
        let mut totals = Totals::default();
        for (pair_domain, process) in book.pairs() {
            let wanted = domain.as_ref().is_none_or(|d| d == pair_domain)
                && actor.in_domain(pair_domain)
                && request.process.is_none_or(|p| p == *process);
            if !wanted {
                continue;
            }
            let mut sums = book.sum_hours(pair_domain, *process, span.from_hour, span.to_hour);
            for edge in &span.edges {
                for contribution in contributions_in(store, pair_domain, *process, edge.hour)? {
                    if edge.from <= contribution.created_at && contribution.created_at < edge.to {
                        sums.apply(&contribution, 1);
                    }
                }
            }
            totals.add(&catalogs, pair_domain, &sums);
        }
        Ok(totals.finish(false))
    }

    fn domain(&self, actor: &Actor, request: &KpiRequest) -> Result<Option<Domain>, EngineError> {
        let Some(name) = &request.domain else {
            return Ok(None);
        };
        let domain = Domain::new(name.as_str())
            .ok()
            .filter(|d| self.engine.domains().contains(d))
            .ok_or_else(|| EngineError::invalid("domain", format!("unknown domain {name:?}")))?;
        if !actor.in_domain(&domain) {
            return Err(EngineError::Forbidden(format!(
                "{} may not read domain {domain}",
                actor.name
            )));
        }
        Ok(Some(domain))
    }

    /// The KPIs computed record by record (at most [`MAX_KPI_RECORDS`]).
    fn record_by_record(
        &self,
        actor: &Actor,
        domain: Option<Domain>,
        request: &KpiRequest,
    ) -> Result<Kpis, EngineError> {
        let mut query = ListQuery {
            domain,
            within: actor.domains.clone(),
            owner: (!actor.works_records()).then(|| actor.name.clone()),
            limit: 500,
            ..ListQuery::default()
        };
        let store = self.engine.store().as_ref();
        let catalogs = self.engine.catalogs();
        let (mut totals, mut counted, mut truncated) = (Totals::default(), 0, false);
        'pages: loop {
            let page = store.list(&query)?;
            for record in &page.records {
                if counted >= MAX_KPI_RECORDS {
                    truncated = true;
                    break 'pages;
                }
                let selected = request.process.is_none_or(|p| p == record.process)
                    && request.from.is_none_or(|from| record.created_at >= from)
                    && request.to.is_none_or(|to| record.created_at < to);
                if !selected {
                    continue;
                }
                counted += 1;
                let mut sums = Sums::default();
                sums.apply(&Contribution::of(store, record)?, 1);
                totals.add(&catalogs, &record.domain, &sums);
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        Ok(totals.finish(truncated))
    }
}

/// A range of creation instants as whole hours summed from the book, and the parts of at most
/// two hours at its ends whose contributions are read one by one.
struct Span {
    from_hour: i64,
    to_hour: i64,
    edges: Vec<Edge>,
}

struct Edge {
    hour: i64,
    from: Timestamp,
    to: Timestamp,
}

/// Far enough that no record's hour lies beyond it, near enough that day arithmetic on it does
/// not overflow.
const FAR_HOURS: i64 = i64::MAX / 4;

impl Span {
    fn new(from: Option<Timestamp>, to: Option<Timestamp>) -> Self {
        let start_of = |hour: i64| Timestamp::from_second(hour * 3_600).unwrap_or(Timestamp::MAX);
        let mut span = Span {
            from_hour: -FAR_HOURS,
            to_hour: FAR_HOURS,
            edges: Vec::new(),
        };
        if let Some(from) = from {
            let hour = hour_of(from);
            span.from_hour = hour;
            if from != start_of(hour) {
                span.from_hour = hour + 1;
                let end = start_of(hour + 1);
                let to = to.map_or(end, |to| to.min(end));
                span.edges.push(Edge { hour, from, to });
            }
        }
        if let Some(to) = to {
            let hour = hour_of(to);
            span.to_hour = hour;
            if to != start_of(hour) && hour >= span.from_hour {
                let from = from.map_or(start_of(hour), |from| from.max(start_of(hour)));
                span.edges.push(Edge { hour, from, to });
            }
        }
        span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn whole_hours_need_no_edges() {
        let span = Span::new(
            Some(at("2026-12-01T10:00:00Z")),
            Some(at("2026-12-02T00:00:00Z")),
        );
        assert_eq!(span.to_hour - span.from_hour, 14);
        assert!(span.edges.is_empty());
        let open = Span::new(None, None);
        assert!(open.from_hour < 0 && open.to_hour > 1_000_000 && open.edges.is_empty());
    }

    #[test]
    fn bounds_inside_hours_read_those_hours_record_by_record() {
        let span = Span::new(
            Some(at("2026-12-01T10:15:00Z")),
            Some(at("2026-12-01T12:30:00Z")),
        );
        assert_eq!(
            span.to_hour - span.from_hour,
            1,
            "only 11:00-12:00 is whole"
        );
        let edges: Vec<_> = span
            .edges
            .iter()
            .map(|e| (e.from.to_string(), e.to.to_string()))
            .collect();
        assert_eq!(
            edges,
            [
                ("2026-12-01T10:15:00Z".into(), "2026-12-01T11:00:00Z".into()),
                ("2026-12-01T12:00:00Z".into(), "2026-12-01T12:30:00Z".into())
            ]
        );
    }

    #[test]
    fn bounds_inside_one_hour_read_it_once() {
        let span = Span::new(
            Some(at("2026-12-01T10:15:00Z")),
            Some(at("2026-12-01T10:45:00Z")),
        );
        assert!(span.from_hour >= span.to_hour);
        assert_eq!(span.edges.len(), 1);
        assert_eq!(span.edges[0].to, at("2026-12-01T10:45:00Z"));
    }
}
