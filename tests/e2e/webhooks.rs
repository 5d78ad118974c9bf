//! Webhooks against a receiver on 127.0.0.1 that fails and delays some deliveries.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use reqwest::StatusCode;
use serde_json::{Value, json};
use usm_tests::TestServer;

/// A webhook receiver on 127.0.0.1 that records what it gets.
#[derive(Default)]
pub(crate) struct Receiver {
    /// Every request, in arrival order.
    pub(crate) received: Mutex<Vec<Received>>,
    /// Answer 500 to this many requests first.
    fail_first: Mutex<usize>,
    /// Answer 500 to everything.
    always_fail: Mutex<bool>,
}

/// One request the receiver got.
#[derive(Clone)]
pub(crate) struct Received {
    /// The URL path: each subscription posts to its own.
    pub(crate) path: String,
    /// The `X-Usm-Signature` header.
    signature: String,
    /// The body as sent.
    raw: Vec<u8>,
    /// The body as JSON.
    pub(crate) body: Value,
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
    let received = Received {
        path: request.path().to_owned(),
        signature,
        raw: body.to_vec(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    // Slow down every third request a little: delays must not reorder anything.
    if state.received.lock().unwrap().len() % 3 == 2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    state.received.lock().unwrap().push(received);
    let mut fail_first = state.fail_first.lock().unwrap();
    if *state.always_fail.lock().unwrap() || *fail_first > 0 {
        *fail_first = fail_first.saturating_sub(1);
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok().finish()
}

/// Starts the receiver; returns its base URL (any path is accepted) and a handle to stop it.
pub(crate) fn start_receiver(state: web::Data<Receiver>) -> (String, actix_web::dev::ServerHandle) {
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
            tx.send((format!("http://{addr}"), server.handle()))
                .unwrap();
            server.await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// HMAC-SHA256 (RFC 2104) written out from SHA-256, independent of the server's signing code.
fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_reference_hmac_matches_rfc_4231() {
    // Test case 2 of RFC 4231.
    assert_eq!(
        hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

pub(crate) async fn wait_until(mut done: impl FnMut() -> bool, within: Duration) {
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
        .post("/api/v1/webhooks", &json!({"url": format!("{url}/steady"), "events": ["record.created", "record.transitioned"], "kinds": ["incident"], "secret": "s3cret-s3cret-s3cret"}))
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
        .map(|r| r.body["type"].as_str().unwrap())
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
        .map(|r| r.body["data"]["event"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4],
        "in order per record, retries before the next event"
    );
    for request in &received {
        assert_eq!(request.body["specversion"], "1.0");
        assert_eq!(request.body["subject"], "INC-1");
        assert_eq!(
            request.signature,
            format!(
                "sha256={}",
                hmac_sha256(b"s3cret-s3cret-s3cret", &request.raw)
            ),
            "the signature covers the body as sent"
        );
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
    // delivered by hand once the receiver is back. The first subscription retries the same
    // event meanwhile, so only what reached the dying subscription's own path counts.
    *state.always_fail.lock().unwrap() = true;
    let dying = server
        .post(
            "/api/v1/webhooks",
            &json!({"url": format!("{url}/dying"), "events": ["record.created"], "max_attempts": 2}),
        )
        .await
        .unwrap();
    let dying = dying.body["id"].as_str().unwrap().to_owned();
    server
        .create(json!({"kind": "incident", "title": "second"}))
        .await
        .unwrap();
    let dying_path = format!("/api/v1/webhooks/{dying}/deliveries");
    let dying_log = || server.get(&dying_path);
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let log = dying_log().await.unwrap().body;
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
    let event = dead["event"].as_u64().unwrap();
    let to_dying = || {
        state
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == "/dying" && r.body["data"]["event"]["seq"] == event)
            .count()
    };
    assert_eq!(to_dying(), 2, "two attempts, then dead");
    *state.always_fail.lock().unwrap() = false;
    let redeliver = server
        .post(
            &format!("/api/v1/webhooks/{dying}/deliveries/{event}/redeliver"),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(redeliver.status, StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = dying_log().await.unwrap().body;
        let delivered = log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["event"] == event && d["status"] == "delivered");
        if delivered {
            break;
        }
        assert!(Instant::now() < deadline, "never redelivered: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        to_dying(),
        3,
        "the redelivery reached the dying subscription"
    );
    receiver.stop(true).await;
}
