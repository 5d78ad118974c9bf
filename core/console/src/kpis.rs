//! The Improve process's KPIs as charts: week by week over the last eight weeks, drawn on the
//! server as SVG (no script, no charting library in the browser).

use actix_web::{HttpResponse, web};
use minijinja::context;
use serde::Serialize;
use usm_api::{ApiError, Services};
use usm_kpis::{KpiRequest, Kpis};
use usm_model::Timestamp;

use crate::{
    render::{Refusal, value_of},
    signin::{Visitor, page_for},
};

/// Weeks charted.
const WEEKS: i64 = 8;
/// The chart's drawing height, in SVG units.
const HEIGHT: f64 = 120.0;

/// One bar of a chart, placed.
#[derive(Debug, Serialize)]
struct Bar {
    label: String,
    value: String,
    x: f64,
    y: f64,
    height: f64,
}

/// A bar chart: its title and bars scaled to the largest value (or to `max` when given).
#[derive(Debug, Serialize)]
struct Chart {
    title: &'static str,
    bars: Vec<Bar>,
    width: f64,
}

fn chart(title: &'static str, points: &[(String, Option<f64>)], max: Option<f64>) -> Chart {
    let top = max
        .unwrap_or_else(|| points.iter().filter_map(|(_, v)| *v).fold(0.0, f64::max))
        .max(1.0);
    let bars = points
        .iter()
        .enumerate()
        .map(|(index, (label, value))| {
            let height = value.map_or(0.0, |v| (v / top * HEIGHT).clamp(0.0, HEIGHT));
            #[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
            let x = index as f64 * 40.0 + 4.0;
            Bar {
                label: label.clone(),
                value: value.map_or_else(|| "–".to_owned(), |v| format!("{v:.0}")),
                x,
                y: HEIGHT - height + 14.0,
                height,
            }
        })
        .collect::<Vec<_>>();
    #[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
    let width = bars.len() as f64 * 40.0 + 8.0;
    Chart { title, bars, width }
}

/// Query of the KPI page.
#[derive(Debug, serde::Deserialize)]
pub struct KpiQuery {
    domain: Option<String>,
}

/// `GET /ui/kpis?domain=…`: records created, SLA compliance and mean time to resolve per week,
/// and the backlog by state, as the caller may see them.
pub async fn kpis(
    services: web::Data<Services>,
    visitor: Visitor,
    query: web::Query<KpiQuery>,
) -> Result<HttpResponse, Refusal> {
    let domain = query.into_inner().domain.filter(|d| !d.is_empty());
    let (service, actor) = (services.kpis.clone(), visitor.actor.clone());
    let chosen = domain.clone();
    let (weeks, overall) = web::block(move || -> Result<(Vec<(String, Kpis)>, Kpis), ApiError> {
        let now = Timestamp::now();
        let week = jiff::SignedDuration::from_hours(24 * 7);
        let mut weeks = Vec::new();
        for back in (0..WEEKS).rev() {
            let to = now - week * i32::try_from(back).unwrap_or(0);
            let from = to - week;
            let kpis = service.compute(
                &actor,
                &KpiRequest {
                    domain: chosen.clone(),
                    process: None,
                    from: Some(from),
                    to: Some(to),
                },
            )?;
            weeks.push((from.strftime("%m-%d").to_string(), kpis));
        }
        let overall = service.compute(
            &actor,
            &KpiRequest {
                domain: chosen,
                process: None,
                from: None,
                to: None,
            },
        )?;
        Ok((weeks, overall))
    })
    .await
    .map_err(ApiError::from)??;
    #[expect(clippy::cast_precision_loss, reason = "record counts")]
    let created: Vec<(String, Option<f64>)> = weeks
        .iter()
        .map(|(label, k)| (label.clone(), Some(k.records as f64)))
        .collect();
    let compliance: Vec<(String, Option<f64>)> = weeks
        .iter()
        .map(|(label, k)| (label.clone(), k.sla_compliance_percent))
        .collect();
    let resolve: Vec<(String, Option<f64>)> = weeks
        .iter()
        .map(|(label, k)| (label.clone(), k.mean_time_to_resolve_minutes))
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "record counts")]
    let backlog: Vec<(String, Option<f64>)> = overall
        .backlog_by_state
        .iter()
        .map(|(state, count)| (state.clone(), Some(*count as f64)))
        .collect();
    let charts = [
        chart("chart_created", &created, None),
        chart("chart_sla", &compliance, Some(100.0)),
        chart("chart_resolve", &resolve, None),
        chart("chart_backlog", &backlog, None),
    ];
    let domains: Vec<String> = services
        .engine
        .domains()
        .iter()
        .filter(|d| visitor.actor.in_domain(d))
        .map(ToString::to_string)
        .collect();
    page_for(
        &visitor,
        "kpis.html",
        context! {
            charts => value_of(&charts),
            overall => value_of(&overall),
            domain => domain,
            domains => domains,
            height => HEIGHT + 34.0,
            baseline => HEIGHT + 14.0,
        },
    )
}
