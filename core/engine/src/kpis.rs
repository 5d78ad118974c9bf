//! Improve-process KPIs computed from records, their history and their SLA ledgers: mean time to
//! resolve (wall clock and business time), SLA compliance, change success rate, backlog by state,
//! reopen rate.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use usm_model::{Actor, Domain, Process, Record, State, StateCategory};
use usm_store::ListQuery;

use crate::{
    Engine, EngineError,
    sla_worker::{ledger, timeline},
};

/// Most records one KPI computation reads.
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

const RESOLVED: [&str; 3] = ["resolved", "fulfilled", "done"];

fn percent(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| 100.0 * part as f64 / whole as f64)
}

impl Engine {
    /// Computes the KPIs of the records `actor` may see that match `request`.
    pub fn kpis(&self, actor: &Actor, request: &KpiRequest) -> Result<Kpis, EngineError> {
        let domain = match &request.domain {
            Some(name) => {
                let domain = Domain::new(name.as_str())
                    .ok()
                    .filter(|d| self.domains().contains(d))
                    .ok_or_else(|| {
                        EngineError::invalid("domain", format!("unknown domain {name:?}"))
                    })?;
                if !actor.in_domain(&domain) {
                    return Err(EngineError::Forbidden(format!(
                        "{} may not read domain {domain}",
                        actor.name
                    )));
                }
                Some(domain)
            }
            None => None,
        };
        if let (Some(from), Some(to)) = (request.from, request.to)
            && from >= to
        {
            return Err(EngineError::invalid("from", "must be before `to`"));
        }
        let mut kpis = Kpis {
            records: 0,
            truncated: false,
            resolved: 0,
            mean_time_to_resolve_minutes: None,
            mean_time_to_resolve_business_minutes: None,
            sla_measured: 0,
            sla_compliance_percent: None,
            changes_closed: 0,
            changes_outcome_unknown: 0,
            change_success_rate_percent: None,
            backlog_by_state: BTreeMap::new(),
            reopened: 0,
            reopen_rate_percent: None,
        };
        let (mut resolve_minutes, mut within_sla, mut successful) = (0.0, 0usize, 0usize);
        let (mut business_minutes, mut business_resolved) = (0.0, 0usize);
        let mut query = ListQuery {
            domain,
            within: actor.domains.clone(),
            owner: (!actor.works_records()).then(|| actor.name.clone()),
            limit: 500,
            ..ListQuery::default()
        };
        let store = self.store().as_ref();
        let catalogs = self.catalogs();
        'pages: loop {
            let page = store.list(&query)?;
            for record in &page.records {
                if kpis.records >= MAX_KPI_RECORDS {
                    kpis.truncated = true;
                    break 'pages;
                }
                if !self.counts(record, request) {
                    continue;
                }
                kpis.records += 1;
                let category = catalogs
                    .domain(&record.domain)
                    .get(&record.kind)
                    .and_then(|def| def.lifecycle.state(&record.state))
                    .map(|s| s.category);
                if category != Some(StateCategory::Inactive) {
                    *kpis
                        .backlog_by_state
                        .entry(record.state.to_string())
                        .or_default() += 1;
                }
                if record.kind.as_str() == "change" && record.state.as_str() == "closed" {
                    kpis.changes_closed += 1;
                    match record.fields.get("outcome").and_then(Value::as_str) {
                        Some(outcome) => successful += usize::from(outcome == "successful"),
                        None => kpis.changes_outcome_unknown += 1,
                    }
                }
                let ledger = ledger(store, &record.id)?;
                let resolution = |level: &'static str| {
                    ledger
                        .iter()
                        .filter(move |e| e.clock == "resolution" && e.level == level)
                };
                let breached = resolution("breach").next().is_some();
                let resolved_under_sla = resolution("stop").any(|e| e.met == Some(true));
                if breached || resolved_under_sla {
                    kpis.sla_measured += 1;
                    within_sla += usize::from(!breached);
                }
                if let Some(minutes) = resolution("stop")
                    .find(|e| e.cycle == 1 && e.met == Some(true))
                    .and_then(|e| e.elapsed_minutes)
                {
                    business_minutes += minutes;
                    business_resolved += 1;
                }
                let line = timeline(store, &record.id)?.states;
                let resolved_at = line
                    .iter()
                    .find(|(_, s)| RESOLVED.contains(&s.as_str()))
                    .map(|(at, _)| *at);
                let Some(resolved_at) = resolved_at else {
                    continue;
                };
                kpis.resolved += 1;
                resolve_minutes +=
                    resolved_at.duration_since(record.created_at).as_secs_f64() / 60.0;
                if reopened(&line) {
                    kpis.reopened += 1;
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        kpis.mean_time_to_resolve_minutes =
            (kpis.resolved > 0).then(|| resolve_minutes / kpis.resolved as f64);
        kpis.mean_time_to_resolve_business_minutes =
            (business_resolved > 0).then(|| business_minutes / business_resolved as f64);
        kpis.sla_compliance_percent = percent(within_sla, kpis.sla_measured);
        kpis.change_success_rate_percent = percent(successful, kpis.changes_closed);
        kpis.reopen_rate_percent = percent(kpis.reopened, kpis.resolved);
        Ok(kpis)
    }

    fn counts(&self, record: &Record, request: &KpiRequest) -> bool {
        request.process.is_none_or(|p| p == record.process)
            && request.from.is_none_or(|from| record.created_at >= from)
            && request.to.is_none_or(|to| record.created_at < to)
    }
}

/// Whether the timeline leaves a resolved state for a working one.
fn reopened(line: &[(Timestamp, State)]) -> bool {
    line.windows(2).any(|w| {
        RESOLVED.contains(&w[0].1.as_str()) && !matches!(w[1].1.as_str(), "closed" | "cancelled")
    })
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
