//! `/metrics` in the OpenMetrics text format, encoded by prometheus-client: the one place the
//! server's metrics are defined. Request metrics live as long as the server; the rest is read
//! at each scrape from where it is kept (the store's cursors and timers, the pipelines'
//! breakers, the module registry).

use actix_web::{HttpRequest, HttpResponse, web};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{Services, principal};

/// The outbox consumers whose positions `/metrics` reports (and `settle` in the tests waits on).
const CONSUMERS: [&str; 7] = [
    usm_engine::AfterStepWorker::CONSUMER,
    usm_engine::SlaWorker::CONSUMER,
    usm_script_host::automation::AutomationWorker::CONSUMER,
    usm_search::SearchWorker::CONSUMER,
    usm_notify::NotificationWorker::CONSUMER,
    usm_service_catalog::FulfilmentWorker::CONSUMER,
    usm_kpis::KpiWorker::CONSUMER,
];

/// A request's route (the matched pattern, so ids do not multiply the series), method and
/// status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The HTTP layer's metrics, kept for the server's life.
#[derive(Debug)]
pub struct HttpMetrics {
    by_class: Family<ClassLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        let by_class = Family::<ClassLabels, Counter>::default();
        // Every class from the start: a scrape shows `5xx 0` rather than no series at all.
        for class in 1..=5 {
            by_class
                .get_or_create(&ClassLabels {
                    class: format!("{class}xx"),
                })
                .inc_by(0);
        }
        Self {
            by_class,
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl HttpMetrics {
    /// Records one finished request; `route` is the pattern it matched, if any.
    pub fn observe(&self, route: Option<&str>, method: &str, status: u16, seconds: f64) {
        let class = format!("{}xx", (status / 100).clamp(1, 5));
        self.by_class.get_or_create(&ClassLabels { class }).inc();
        // Only the methods the API has: anything else a client invents is `other`.
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
            _ => "other",
        };
        self.latency
            .get_or_create(&RequestLabels {
                route: route.unwrap_or("unmatched").to_owned(),
                method: method.to_owned(),
                status,
            })
            .observe(seconds);
    }
}

/// A gauge family with one label, filled at scrape time.
fn labelled_gauge(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (String, i64)>,
) {
    let family = Family::<Vec<(&'static str, String)>, Gauge>::default();
    for (value, count) in values {
        family.get_or_create(&vec![(label, value)]).set(count);
    }
    registry.register(name, help, family);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Serves the metrics; needs a token unless `public_metrics` is set.
pub async fn metrics(services: web::Data<Services>, request: HttpRequest) -> HttpResponse {
    use actix_web::{FromRequest as _, ResponseError as _};
    if !services.config.public_metrics
        && let Err(error) = principal::Principal::extract(&request).await
    {
        return error.error_response();
    }
    let mut registry = Registry::with_prefix("usm");
    let http = &services.http_metrics;
    registry.register(
        "http_requests",
        "HTTP requests answered, by status class",
        http.by_class.clone(),
    );
    registry.register(
        "http_request_duration_seconds",
        "Time to answer HTTP requests, by route, method and status",
        http.latency.clone(),
    );

    if let Some(store) = services.engine.store().metrics() {
        registry.register(
            "store_commit_duration_seconds",
            "Time from a commit's call to its acknowledgement (durable, with durable acks)",
            store.commit_seconds.clone(),
        );
        registry.register(
            "store_flush_duration_seconds",
            "Time one group-commit flush (fsync) takes",
            store.flush_seconds.clone(),
        );
        registry.register(
            "store_writes_per_flush",
            "Writes one group-commit flush made durable",
            store.writes_per_flush.clone(),
        );
        registry.register(
            "store_writes_per_transaction",
            "Record writes the write combiner applied in one transaction",
            store.writes_per_transaction.clone(),
        );
    }
    let store = services.engine.store().clone();
    let pending = web::block(move || store.timer_count())
        .await
        .ok()
        .and_then(Result::ok);
    if let Some(pending) = pending {
        gauge(
            &mut registry,
            "sla_timers_pending",
            "SLA timers armed and not yet fired",
            signed(pending as u64),
        );
    }
    let store = services.engine.store().clone();
    let outbox = web::block(move || {
        // Cursors first: a consumer finishes an event's effects (new events) before it moves,
        // so a head read afterwards that equals every cursor means the outbox is drained.
        let consumers = CONSUMERS
            .into_iter()
            .map(|name| Ok((name, store.cursor(name)?)))
            .collect::<Result<Vec<_>, usm_store::StoreError>>()?;
        let head = usm_engine::outbox_head(store.as_ref())?;
        Ok::<_, usm_store::StoreError>((head, consumers))
    })
    .await
    .ok()
    .and_then(Result::ok);
    if let Some((head, consumers)) = outbox {
        gauge(
            &mut registry,
            "outbox_head",
            "The sequence number of the newest outbox event",
            signed(head),
        );
        labelled_gauge(
            &mut registry,
            "outbox_consumed",
            "The last outbox event each worker has finished",
            "consumer",
            consumers
                .iter()
                .map(|(name, position)| ((*name).to_owned(), signed(*position))),
        );
        labelled_gauge(
            &mut registry,
            "outbox_lag",
            "Outbox events each worker has still to finish (the search index's staleness among them)",
            "consumer",
            consumers.iter().map(|(name, position)| {
                ((*name).to_owned(), signed(head.saturating_sub(*position)))
            }),
        );
    }
    let modules = services.registry.list();
    labelled_gauge(
        &mut registry,
        "modules_installed",
        "Installed modules, by status",
        "status",
        ["enabled", "installed"].map(|status| {
            let count = modules.iter().filter(|m| m.status == status).count();
            (status.to_owned(), signed(count as u64))
        }),
    );
    let pipelines = services.engine.pipelines().describe();
    let steps: usize = pipelines.iter().map(|p| p.steps.len()).sum();
    gauge(
        &mut registry,
        "pipeline_steps",
        "Steps in the composed pipelines",
        signed(steps as u64),
    );
    step_health(&mut registry, &pipelines);
    let latencies = services
        .engine
        .pipelines()
        .step_latencies()
        .into_iter()
        .map(|(module, step, latency)| (StepLabels { module, step }, latency))
        .collect();
    registry.register_collector(Box::new(StepLatencies(latencies)));
    let (running, waiting) = services.engine.pipeline_load();
    labelled_gauge(
        &mut registry,
        "pipeline_writes",
        "Client writes running their pipeline steps, and waiting for a turn",
        "state",
        [
            ("running".to_owned(), signed(running as u64)),
            ("waiting".to_owned(), signed(waiting as u64)),
        ],
    );

    let mut text = String::new();
    if let Err(error) = encode(&mut text, &registry) {
        tracing::error!(%error, "cannot encode the metrics");
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    module: String,
    step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    module: String,
    step: String,
    kind: String,
}

/// Failures and suspensions of each step (a step enabled in several domains is one step with
/// one breaker, listed once).
fn step_health(registry: &mut Registry, pipelines: &[usm_engine::PipelineView]) {
    let mut seen = std::collections::BTreeMap::new();
    for step in pipelines.iter().flat_map(|p| &p.steps) {
        seen.entry((step.module.as_str(), step.step.as_str()))
            .or_insert(&step.breaker);
    }
    let failures = Family::<FailureLabels, Counter>::default();
    let suspensions = Family::<StepLabels, Counter>::default();
    let suspended = Family::<StepLabels, Gauge>::default();
    for ((module, step), breaker) in &seen {
        let labels = StepLabels {
            module: (*module).to_owned(),
            step: (*step).to_owned(),
        };
        for (kind, count) in &breaker.failures {
            failures
                .get_or_create(&FailureLabels {
                    module: labels.module.clone(),
                    step: labels.step.clone(),
                    kind: kind.clone(),
                })
                .inc_by(*count);
        }
        suspensions
            .get_or_create(&labels)
            .inc_by(breaker.suspensions);
        suspended
            .get_or_create(&labels)
            .set(i64::from(breaker.suspended_for_secs.is_some()));
    }
    registry.register(
        "step_failures",
        "Failed step calls since start, by kind (timeout: the step's own CPU budget; stalled: the host could not finish the call)",
        failures,
    );
    registry.register(
        "step_suspensions",
        "Times the circuit breaker suspended a step since start",
        suspensions,
    );
    registry.register(
        "step_suspended",
        "Whether a step is suspended now (1) or runs (0)",
        suspended,
    );
}

/// Each step's latency histogram, labelled by module and step, read from the pipelines in force
/// at the scrape (an upgraded module's step starts a new histogram).
#[derive(Debug)]
struct StepLatencies(Vec<(StepLabels, usm_engine::StepLatency)>);

impl prometheus_client::collector::Collector for StepLatencies {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let mut family = encoder.encode_descriptor(
            "step_duration_seconds",
            "Time each pipeline step's calls take, by module and step",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (labels, latency) in &self.0 {
            latency.0.encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}
