//! Webhooks against a receiver on 127.0.0.1 that fails and delays some deliveries.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use reqwest::StatusCode;
use serde_json::{Value, json};
use usm_tests::TestServer;

#[derive(Default)]
struct Receiver {
    /// (signature header, body) of every request, in arrival order.
    received: Mutex<Vec<(String, Value)>>,
    /// Answer 500 to this many requests first.
    fail_first: Mutex<usize>,
    /// Answer 500 to everything.
    always_fail: Mutex<bool>,
}

async fn receive(
    state: web::Data<Receiver>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let signature = request
        .headers()
        .get("x-usm-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Slow down every third request a little: delays must not reorder anything.
    if state.received.lock().unwrap().len() % 3 == 2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    state.received.lock().unwrap().push((signature, value));
    let mut fail_first = state.fail_first.lock().unwrap();
    if *state.always_fail.lock().unwrap() || *fail_first > 0 {
        *fail_first = fail_first.saturating_sub(1);
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok().finish()
}

fn start_receiver(state: web::Data<Receiver>) -> (String, actix_web::dev::ServerHandle) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(state.clone())
                    .default_service(web::to(receive))
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((format!("http://{addr}/hook"), server.handle()))
                .unwrap();
            server.await.unwrap();
        });
    });
    rx.recv().unwrap()
}

async fn wait_until(mut done: impl FnMut() -> bool, within: Duration) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_signed_retried_in_order_and_dead_lettered() {
    let server = TestServer::start_with(|config| {
        config.webhook_retry_base_ms = 50;
        config.webhook_allowed_networks = vec!["127.0.0.0/8".into(), "::1/128".into()];
    })
    .unwrap();
    let state = web::Data::new(Receiver::default());
    *state.fail_first.lock().unwrap() = 2;
    let (url, receiver) = start_receiver(state.clone());
    let created = server
        .post("/api/v1/webhooks", &json!({"url": url, "events": ["record.created", "record.transitioned"], "kinds": ["incident"], "secret": "s3cret-s3cret-s3cret"}))
        .await
        .unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        server.get("/api/v1/webhooks").await.unwrap().body["webhooks"][0]["secret"],
        "(hidden)"
    );

    server
        .create(json!({"kind": "task", "title": "not subscribed"}))
        .await
        .unwrap();
    server
        .create(json!({"kind": "incident", "title": "first"}))
        .await
        .unwrap();
    for to in ["in_progress", "on_hold", "in_progress"] {
        server.transition("INC-1", to).await.unwrap();
    }
    // 4 events, the first one answered 500 twice: 6 requests in all.
    wait_until(
        || state.received.lock().unwrap().len() >= 6,
        Duration::from_secs(20),
    )
    .await;
    let received = state.received.lock().unwrap().clone();
    let types: Vec<&str> = received
        .iter()
        .map(|(_, body)| body["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "usm.record.created",
            "usm.record.created",
            "usm.record.created",
            "usm.record.transitioned",
            "usm.record.transitioned",
            "usm.record.transitioned"
        ]
    );
    let versions: Vec<u64> = received[2..]
        .iter()
        .map(|(_, b)| b["data"]["event"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4],
        "in order per record, retries before the next event"
    );
    for (signature, body) in &received {
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["subject"], "INC-1");
        let expected = format!(
            "sha256={}",
            usm_server::webhooks::signature("s3cret-s3cret-s3cret", body.to_string().as_bytes())
        );
        assert_eq!(signature, &expected, "the signature covers the body");
    }
    let log = server
        .get(&format!("/api/v1/webhooks/{id}/deliveries"))
        .await
        .unwrap()
        .body;
    let first = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["attempts"] == 3)
        .unwrap();
    assert_eq!(first["status"], "delivered");

    // A receiver that keeps failing: the delivery is dead-lettered after max attempts, then
    // delivered by hand once the receiver is back.
    *state.always_fail.lock().unwrap() = true;
    let dying = server
        .post(
            "/api/v1/webhooks",
            &json!({"url": url, "events": ["record.created"], "max_attempts": 2}),
        )
        .await
        .unwrap();
    let dying = dying.body["id"].as_str().unwrap().to_owned();
    let before = state.received.lock().unwrap().len();
    server
        .create(json!({"kind": "incident", "title": "second"}))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let log = server
            .get(&format!("/api/v1/webhooks/{dying}/deliveries"))
            .await
            .unwrap()
            .body;
        if let Some(dead) = log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["status"] == "dead")
        {
            break dead.clone();
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead["attempts"], 2);
    *state.always_fail.lock().unwrap() = false;
    let event = dead["event"].as_u64().unwrap();
    let redeliver = server
        .post(
            &format!("/api/v1/webhooks/{dying}/deliveries/{event}/redeliver"),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(redeliver.status, StatusCode::ACCEPTED);
    wait_until(
        || {
            state.received.lock().unwrap()[before..]
                .iter()
                .filter(|(_, b)| b["data"]["event"]["seq"] == event)
                .count()
                >= 4
        },
        Duration::from_secs(20),
    )
    .await;
    receiver.stop(true).await;
}
