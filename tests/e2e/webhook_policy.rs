//! Webhooks go only where the operator allows: internal destinations, URL credentials and other
//! schemes are refused when subscribing and again at every delivery, and redirects are not
//! followed.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use reqwest::StatusCode;
use serde_json::{Value, json};
use usm_tests::{Reply, TestServer};

const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// Paths the receiver was asked for, in order.
#[derive(Default)]
struct Hits(Mutex<Vec<String>>);

async fn receive(hits: web::Data<Hits>, request: HttpRequest) -> HttpResponse {
    let path = request.path().to_owned();
    hits.0.lock().unwrap().push(path.clone());
    if path == "/bounce" {
        return HttpResponse::TemporaryRedirect()
            .insert_header(("location", "/stolen"))
            .finish();
    }
    HttpResponse::Ok().finish()
}

/// A receiver on 127.0.0.1; returns its port.
fn start_receiver(hits: web::Data<Hits>) -> (u16, actix_web::dev::ServerHandle) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(hits.clone())
                    .default_service(web::to(receive))
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
            let port = server.addrs()[0].port();
            let server = server.run();
            tx.send((port, server.handle())).unwrap();
            server.await.unwrap();
        });
    });
    rx.recv().unwrap()
}

async fn subscribe(server: &TestServer, url: &str) -> Reply {
    server
        .post(
            "/api/v1/webhooks",
            &json!({"url": url, "events": ["record.created"], "max_attempts": 1}),
        )
        .await
        .unwrap()
}

/// The last delivery of a subscription once there is one.
async fn delivery(server: &TestServer, id: &str, event_after: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server
            .get(&format!("/api/v1/webhooks/{id}/deliveries"))
            .await
            .unwrap()
            .body;
        if let Some(found) = log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event"].as_u64().unwrap() > event_after && d["status"] != "retrying")
        {
            return found.clone();
        }
        assert!(Instant::now() < deadline, "no delivery: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_destinations_credentials_and_other_schemes_are_refused() {
    let server = TestServer::start().unwrap();
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://192.168.1.20/hook",
        "http://[fd12::1]/hook",
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://metadata.google.internal/computeMetadata/v1/",
        "https://ops:hunter2@hooks.example.com/in",
        "ftp://hooks.example.com/in",
    ] {
        let reply = subscribe(&server, url).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            reply.body
        );
        assert_eq!(reply.body["field"], "/url", "{url}");
    }
    let listed = server.get("/api/v1/webhooks").await.unwrap();
    assert_eq!(listed.body["webhooks"], json!([]));

    // The operator allows loopback: now it is a destination.
    let server = server
        .restart_with(|config| {
            config.webhook_allowed_networks = LOOPBACK.map(str::to_owned).to_vec();
        })
        .await
        .unwrap();
    let reply = subscribe(&server, "http://127.0.0.1:9/hook").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let reply = subscribe(&server, "http://10.0.0.1/hook").await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "other networks stay refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_delivery_checks_its_destination_and_follows_no_redirect() {
    let hits = web::Data::new(Hits::default());
    let (port, receiver) = start_receiver(hits.clone());
    let server = TestServer::start_with(|config| {
        config.webhook_retry_base_ms = 50;
        config.webhook_allowed_networks = LOOPBACK.map(str::to_owned).to_vec();
    })
    .unwrap();
    let mut ids = Vec::new();
    for url in [
        format!("http://127.0.0.1:{port}/bounce"),
        format!("http://localhost:{port}/by-name"),
        format!("http://127.0.0.1:{port}/by-address"),
    ] {
        let reply = subscribe(&server, &url).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        ids.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    server
        .create(json!({"kind": "task", "title": "first"}))
        .await
        .unwrap();
    let bounced = delivery(&server, &ids[0], 0).await;
    assert_eq!(bounced["response_status"], 307, "{bounced}");
    assert_eq!(bounced["status"], "dead");
    for id in &ids[1..] {
        assert_eq!(delivery(&server, id, 0).await["status"], "delivered");
    }
    let first_event = bounced["event"].as_u64().unwrap();
    let mut seen = hits.0.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        ["/bounce", "/by-address", "/by-name"],
        "no redirect followed"
    );

    // The operator withdraws loopback: the same subscriptions may no longer deliver there,
    // whether the URL names the address or a name that resolves to it.
    let server = server
        .restart_with(|config| {
            config.webhook_retry_base_ms = 50;
            config.webhook_allowed_networks = Vec::new();
        })
        .await
        .unwrap();
    server
        .create(json!({"kind": "task", "title": "second"}))
        .await
        .unwrap();
    for id in &ids[1..] {
        let refused = delivery(&server, id, first_event).await;
        assert_eq!(refused["status"], "dead", "{refused}");
        let error = refused["error"].as_str().unwrap();
        assert!(error.contains("internal address"), "{error}");
    }
    assert_eq!(
        hits.0.lock().unwrap().len(),
        3,
        "nothing more reached the receiver"
    );
    receiver.stop(true).await;
}
