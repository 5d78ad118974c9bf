//! `/metrics` in the Prometheus text format: the one place the HTTP layer's metrics are defined.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{HttpRequest, HttpResponse, web};

use crate::{Services, principal};

/// Request counters by status class, and their summed duration.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    by_class: [AtomicU64; 5],
    micros: AtomicU64,
}

impl HttpMetrics {
    /// Records one finished request.
    pub fn observe(&self, status: u16, micros: u64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Serves the metrics; needs a token unless `public_metrics` is set.
pub async fn metrics(services: web::Data<Services>, request: HttpRequest) -> HttpResponse {
    use actix_web::{FromRequest as _, ResponseError as _};
    if !services.config.public_metrics
        && let Err(error) = principal::Principal::extract(&request).await
    {
        return error.error_response();
    }
    let http = &services.http_metrics;
    let mut text = String::new();
    text.push_str("# HELP usm_http_requests_total HTTP requests answered, by status class.\n");
    text.push_str("# TYPE usm_http_requests_total counter\n");
    for (i, counter) in http.by_class.iter().enumerate() {
        text.push_str(&format!(
            "usm_http_requests_total{{class=\"{}xx\"}} {}\n",
            i + 1,
            counter.load(Ordering::Relaxed)
        ));
    }
    text.push_str("# HELP usm_http_request_seconds_total Time spent answering HTTP requests.\n");
    text.push_str("# TYPE usm_http_request_seconds_total counter\n");
    text.push_str(&format!(
        "usm_http_request_seconds_total {:.6}\n",
        http.micros.load(Ordering::Relaxed) as f64 / 1e6
    ));
    let store = services.engine.store().clone();
    let pending = web::block(move || store.timer_count())
        .await
        .ok()
        .and_then(Result::ok);
    if let Some(pending) = pending {
        text.push_str("# HELP usm_sla_timers_pending SLA timers armed and not yet fired.\n");
        text.push_str("# TYPE usm_sla_timers_pending gauge\n");
        text.push_str(&format!("usm_sla_timers_pending {pending}\n"));
    }
    let store = services.engine.store().clone();
    let outbox = web::block(move || {
        // Cursors first: a consumer finishes an event's effects (new events) before it moves,
        // so a head read afterwards that equals every cursor means the outbox is drained.
        let consumers = [
            usm_engine::AfterStepWorker::CONSUMER,
            usm_engine::SlaWorker::CONSUMER,
            usm_script_host::automation::AutomationWorker::CONSUMER,
            usm_search::SearchWorker::CONSUMER,
            usm_notify::NotificationWorker::CONSUMER,
            usm_service_catalog::FulfilmentWorker::CONSUMER,
        ]
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
        text.push_str("# HELP usm_outbox_head The sequence number of the newest outbox event.\n");
        text.push_str("# TYPE usm_outbox_head gauge\n");
        text.push_str(&format!("usm_outbox_head {head}\n"));
        text.push_str(
            "# HELP usm_outbox_consumed The last outbox event each worker has finished; the lag is the head minus this.\n",
        );
        text.push_str("# TYPE usm_outbox_consumed gauge\n");
        for (name, position) in consumers {
            text.push_str(&format!(
                "usm_outbox_consumed{{consumer=\"{name}\"}} {position}\n"
            ));
        }
    }
    let modules = services.registry.list();
    text.push_str("# HELP usm_modules_installed Installed modules, by status.\n");
    text.push_str("# TYPE usm_modules_installed gauge\n");
    for status in ["enabled", "installed"] {
        let count = modules.iter().filter(|m| m.status == status).count();
        text.push_str(&format!(
            "usm_modules_installed{{status=\"{status}\"}} {count}\n"
        ));
    }
    let pipelines = services.engine.pipelines().describe();
    let steps: usize = pipelines.iter().map(|p| p.steps.len()).sum();
    text.push_str("# HELP usm_pipeline_steps Steps in the composed pipelines.\n");
    text.push_str("# TYPE usm_pipeline_steps gauge\n");
    text.push_str(&format!("usm_pipeline_steps {steps}\n"));
    step_health(&mut text, &pipelines);
    let (running, waiting) = services.engine.pipeline_load();
    text.push_str("# HELP usm_pipeline_writes Client writes running their pipeline steps, and waiting for a turn.\n");
    text.push_str("# TYPE usm_pipeline_writes gauge\n");
    text.push_str(&format!(
        "usm_pipeline_writes{{state=\"running\"}} {running}\nusm_pipeline_writes{{state=\"waiting\"}} {waiting}\n"
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// Failures and suspensions of each step (a step enabled in several domains is one step with
/// one breaker, listed once).
fn step_health(text: &mut String, pipelines: &[usm_engine::PipelineView]) {
    let mut seen = std::collections::BTreeMap::new();
    for step in pipelines.iter().flat_map(|p| &p.steps) {
        seen.entry((step.module.as_str(), step.step.as_str()))
            .or_insert(&step.breaker);
    }
    text.push_str("# HELP usm_step_failures_total Failed step calls since start, by kind (timeout: the step's own CPU budget; stalled: the host could not finish the call).\n");
    text.push_str("# TYPE usm_step_failures_total counter\n");
    for ((module, step), breaker) in &seen {
        for (kind, count) in &breaker.failures {
            text.push_str(&format!(
                "usm_step_failures_total{{module=\"{module}\",step=\"{step}\",kind=\"{kind}\"}} {count}\n"
            ));
        }
    }
    text.push_str("# HELP usm_step_suspensions_total Times the circuit breaker suspended a step since start.\n");
    text.push_str("# TYPE usm_step_suspensions_total counter\n");
    for ((module, step), breaker) in &seen {
        text.push_str(&format!(
            "usm_step_suspensions_total{{module=\"{module}\",step=\"{step}\"}} {}\n",
            breaker.suspensions
        ));
    }
    text.push_str("# HELP usm_step_suspended Whether a step is suspended now (1) or runs (0).\n");
    text.push_str("# TYPE usm_step_suspended gauge\n");
    for ((module, step), breaker) in &seen {
        text.push_str(&format!(
            "usm_step_suspended{{module=\"{module}\",step=\"{step}\"}} {}\n",
            u8::from(breaker.suspended_for_secs.is_some())
        ));
    }
}
