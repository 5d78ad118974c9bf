//! Notifications over a real SMTP exchange (issue 12, first part): the requester's
//! acknowledgement, public replies to the requester, assignments to the assignee, threaded by
//! `Message-ID`; internal notes and one's own writes mail no one; a refused delivery is retried.

use std::{
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use mailin_embedded::{Handler, Response, Server, SslConfig, response};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::TestServer;

/// One mail as the SMTP server received it.
#[derive(Debug, Clone)]
struct Received {
    to: Vec<String>,
    message: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}: ", name.to_ascii_lowercase());
        self.message
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim())
    }
}

/// An SMTP server on 127.0.0.1 that keeps what it receives; it refuses the first `refuse`
/// messages with a temporary failure.
#[derive(Clone, Default)]
struct Sink {
    received: Arc<Mutex<Vec<Received>>>,
    refuse: Arc<AtomicUsize>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Sink {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        let refused = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            return response::INTERNAL_ERROR;
        }
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.received.lock().unwrap().push(Received {
            to: std::mem::take(&mut self.to),
            message: String::from_utf8_lossy(&self.data).replace("\r\n", "\n"),
        });
        response::OK
    }
}

impl Sink {
    /// Serves on a free loopback port; returns the `smtp_url`.
    fn serve(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = Server::new(self.clone());
        server
            .with_name("smtp.test")
            .with_ssl(SslConfig::None)
            .unwrap()
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            if let Err(error) = server.serve() {
                panic!("the test SMTP server stopped: {error}");
            }
        });
        format!("smtp://127.0.0.1:{port}")
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn person_with_token(server: &TestServer, id: &str, role: &str) -> String {
    let made = server
        .post(
            "/api/v1/people",
            &json!({"id": id, "name": format!("{id} Lee"), "email": format!("{id}@example.org"),
                    "domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let token = server
        .post(
            "/api/v1/tokens",
            &json!({"name": format!("{id}-token"), "roles": [role], "person": id}),
        )
        .await
        .unwrap();
    assert_eq!(token.status, StatusCode::CREATED, "{}", token.body);
    token.body["token"].as_str().unwrap().to_owned()
}

/// The delivery log once it holds `count` entries.
async fn deliveries(server: &TestServer, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.settle().await.unwrap();
        let log = server
            .get("/api/v1/notifications/deliveries")
            .await
            .unwrap();
        assert_eq!(log.status, StatusCode::OK, "{}", log.body);
        let entries = log.body["deliveries"].as_array().unwrap().clone();
        if entries.len() >= count {
            return entries;
        }
        assert!(Instant::now() < deadline, "{}", log.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn server_mailing_to(sink: &Sink) -> TestServer {
    let url = sink.serve();
    TestServer::start_with(move |config| {
        config.smtp_url = Some(url);
        config.smtp_from = Some("Service desk <desk@usm.test>".into());
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn requesters_and_assignees_are_mailed_in_one_thread_per_record() {
    let sink = Sink::default();
    let server = server_mailing_to(&sink);
    let rob = person_with_token(&server, "rob", "requester").await;
    let ann = person_with_token(&server, "ann", "agent").await;
    let group = server
        .post(
            "/api/v1/groups",
            &json!({"id": "network", "name": "Network", "domain": "it", "members": ["ann"]}),
        )
        .await
        .unwrap();
    assert_eq!(group.status, StatusCode::CREATED);

    let created = server
        .act(
            &rob,
            Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "incident", "title": "Printer on fire"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let comments = format!("/api/v1/records/{id}/comments");
    for (token, body, visibility) in [
        (&ann, "We are on it.", "public"),
        (&ann, "Vendor ticket 4711", "internal"),
        (&rob, "Thanks!", "public"),
    ] {
        let reply = server
            .act(
                token,
                Method::POST,
                &comments,
                Some(json!({"body": body, "visibility": visibility})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let assigned = server
        .patch(
            &format!("/api/v1/records/{id}"),
            &json!({"fields": {"assignment_group": "network", "assignee": "ann"}}),
        )
        .await
        .unwrap();
    assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.body);

    let log = deliveries(&server, 3).await;
    assert!(log.iter().all(|d| d["status"] == "delivered"), "{log:?}");
    let received = sink.received();
    assert_eq!(received.len(), 3, "{received:#?}");
    let thread = format!("<{id}@usm.test>");

    let ack = &received[0];
    assert_eq!(ack.to, ["rob@example.org"]);
    assert_eq!(
        ack.header("Subject"),
        Some(format!("[usm {id}] Received: Printer on fire").as_str())
    );
    assert_eq!(ack.header("Message-ID"), Some(thread.as_str()));
    assert!(ack.header("From").unwrap().contains("desk@usm.test"));
    assert!(
        ack.message.contains("multipart/alternative"),
        "{}",
        ack.message
    );

    let reply = &received[1];
    assert_eq!(reply.to, ["rob@example.org"]);
    assert_eq!(reply.header("In-Reply-To"), Some(thread.as_str()));
    assert_eq!(reply.header("References"), Some(thread.as_str()));
    assert!(reply.message.contains("We are on it."), "{}", reply.message);
    assert!(
        !reply.message.contains("4711"),
        "an internal note mails no one"
    );

    let assignment = &received[2];
    assert_eq!(assignment.to, ["ann@example.org"]);
    assert!(
        assignment
            .header("Subject")
            .unwrap()
            .contains("Assigned to you"),
        "{}",
        assignment.message
    );
    assert!(
        received.iter().all(|m| !m.message.contains("Thanks!")),
        "no mail about one's own reply"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_delivery_is_retried_until_the_server_takes_it() {
    let sink = Sink::default();
    sink.refuse.store(1, Ordering::SeqCst);
    let server = server_mailing_to(&sink);
    let rob = person_with_token(&server, "rob", "requester").await;
    let created = server
        .act(
            &rob,
            Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "incident", "title": "VPN drops"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let log = deliveries(&server, 1).await;
    assert_eq!(log[0]["status"], "delivered", "{log:?}");
    assert_eq!(log[0]["attempts"], 2, "{log:?}");
    assert_eq!(sink.received().len(), 1);
    assert_eq!(
        sink.refuse.load(Ordering::SeqCst),
        0,
        "the first attempt was refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_delivery_log_is_for_admins() {
    let server = TestServer::start().unwrap();
    let agent = server.token("ann", &["agent"], None).await.unwrap();
    let reply = server
        .act(
            &agent,
            Method::GET,
            "/api/v1/notifications/deliveries",
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    // Without smtp_url nothing is mailed, and the outbox is not held back for it.
    let rob = person_with_token(&server, "rob", "requester").await;
    let created = server
        .act(
            &rob,
            Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "incident", "title": "VPN drops"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    server.settle().await.unwrap();
    let empty = server
        .get("/api/v1/notifications/deliveries")
        .await
        .unwrap();
    assert_eq!(empty.body["deliveries"], json!([]));
}
