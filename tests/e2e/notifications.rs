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
use usm_tests::{ADMIN_TOKEN, ServerProcess, TestServer};

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
    /// Milliseconds each message takes to be accepted (a slow mail server).
    accept_ms: Arc<AtomicUsize>,
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

    #[allow(clippy::disallowed_methods)] // a slow SMTP server: it has nothing to wait on
    fn data_end(&mut self) -> Response {
        let slow = self.accept_ms.load(Ordering::SeqCst);
        if slow > 0 {
            std::thread::sleep(Duration::from_millis(slow as u64));
        }
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
    person_in(server, id, role, None).await
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
    assert_eq!(ack.header("Auto-Submitted"), Some("auto-generated"));
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

/// Creates a person of `it` with an address, and a token acting as them.
async fn person_in(server: &TestServer, id: &str, role: &str, locale: Option<&str>) -> String {
    let mut person = json!({"id": id, "name": format!("{id} Lee"),
                            "email": format!("{id}@example.org"), "domains": ["it"]});
    if let Some(locale) = locale {
        person["locale"] = json!(locale);
    }
    server.person_with_token(person, role).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domains_rules_choose_who_hears_of_what_in_their_language() {
    let sink = Sink::default();
    let server = server_mailing_to(&sink);
    let rob = person_in(&server, "rob", "requester", Some("de-AT")).await;
    let ann = person_in(&server, "ann", "agent", None).await;
    person_in(&server, "bo", "agent", None).await;
    person_in(&server, "cy", "agent", None).await;
    let group = server
        .post(
            "/api/v1/groups",
            &json!({"id": "network", "name": "Network", "domain": "it", "members": ["ann", "bo"]}),
        )
        .await
        .unwrap();
    assert_eq!(group.status, StatusCode::CREATED, "{}", group.body);

    let put = |path: String, body: Value| {
        let server = &server;
        async move {
            server
                .call(Method::PUT, &path, Some(&body), &[])
                .await
                .unwrap()
        }
    };
    // A rule naming a template set the domain does not have is refused; once it has it, kept.
    let team_rule = json!({"id": "team-on-assignment", "on": "assigned", "kinds": ["incident"],
                           "recipients": ["group", "watchers"], "template": "new-for-team"});
    let refused = put(
        "/api/v1/notifications/rules/it/team-on-assignment".into(),
        team_rule.clone(),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["code"], "notification_invalid");
    assert_eq!(refused.body["field"], "/template");
    let set = put(
        "/api/v1/notifications/templates/it/new-for-team".into(),
        json!({"name": "new-for-team", "subject": "[usm {{ record.id }}] For {{ record.group }}: {{ record.title }}",
               "text": "{{ record.id }} is with {{ record.group }}.", "html": "<p>{{ record.id }}</p>"}),
    )
    .await;
    assert_eq!(set.status, StatusCode::CREATED, "{}", set.body);
    let broken = put(
        "/api/v1/notifications/templates/it/created".into(),
        json!({"name": "created", "locale": "de", "subject": "{% if %}", "text": "", "html": ""}),
    )
    .await;
    assert_eq!(
        broken.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        broken.body
    );
    assert_eq!(broken.body["field"], "/subject");
    let german = put(
        "/api/v1/notifications/templates/it/created".into(),
        json!({"name": "created", "locale": "de",
               "subject": "[usm {{ record.id }}] Eingegangen: {{ record.title }}",
               "text": "Hallo {{ recipient.name }}, wir haben {{ record.id }} erhalten.",
               "html": "<p>Hallo {{ recipient.name }}</p>"}),
    )
    .await;
    assert_eq!(german.status, StatusCode::CREATED, "{}", german.body);
    for (id, rule) in [
        ("team-on-assignment", team_rule),
        (
            "requester-reply",
            json!({"id": "requester-reply", "enabled": false, "on": "commented",
                                   "recipients": ["requester"], "template": "replied"}),
        ),
        (
            "team-notes",
            json!({"id": "team-notes", "on": "commented", "internal": true,
                              "recipients": ["group", "requester"], "template": "replied"}),
        ),
        (
            "started",
            json!({"id": "started", "on": "transitioned", "states": ["in_progress"],
                           "recipients": ["watchers", "requester"], "template": "transitioned"}),
        ),
    ] {
        let kept = put(format!("/api/v1/notifications/rules/it/{id}"), rule).await;
        assert_eq!(kept.status, StatusCode::CREATED, "{id}: {}", kept.body);
    }
    let rules = server
        .get("/api/v1/notifications/rules?domain=it")
        .await
        .unwrap();
    let source = |id: &str| {
        rules.body["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"]["id"] == id)
            .map(|r| r["source"].clone())
    };
    assert_eq!(source("requester-reply"), Some(json!("replaced")));
    assert_eq!(source("requester-acknowledgement"), Some(json!("default")));
    assert_eq!(source("started"), Some(json!("domain")));

    // rob asks; ann routes it to network with bo as assignee and cy watching, replies in
    // public and in private, and starts work.
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
    let record = format!("/api/v1/records/{id}");
    let unknown = server
        .act(
            &ann,
            Method::PATCH,
            &record,
            Some(json!({"fields": {"watchers": ["cy", "zed"]}})),
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unknown.body
    );
    assert_eq!(unknown.body["field"], "/fields/watchers/1");
    let routed = server
        .act(&ann, Method::PATCH, &record,
             Some(json!({"fields": {"assignment_group": "network", "assignee": "bo", "watchers": ["cy"]}})))
        .await;
    assert_eq!(routed.status, StatusCode::OK, "{}", routed.body);
    for (body, visibility) in [
        ("We are on it.", "public"),
        ("Vendor ticket 4711", "internal"),
    ] {
        let reply = server
            .act(
                &ann,
                Method::POST,
                &format!("{record}/comments"),
                Some(json!({"body": body, "visibility": visibility})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let started = server
        .act(
            &ann,
            Method::POST,
            &format!("{record}/transitions"),
            Some(json!({"to": "in_progress"})),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);

    // `team-notes` hears of public comments as well as internal ones: the group of both, the
    // requester (whom it also names) of the public one only.
    let log = deliveries(&server, 8).await;
    server.settle().await.unwrap();
    let mut mails: Vec<(String, String)> = sink
        .received()
        .iter()
        .map(|m| {
            (
                m.to.join(","),
                m.header("Subject").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    mails.sort();
    let mail =
        |to: &str, subject: &str| (format!("{to}@example.org"), format!("[usm {id}] {subject}"));
    assert_eq!(
        mails,
        [
            mail("bo", "Assigned to you: Printer on fire"),
            mail("bo", "Printer on fire"),
            mail("bo", "Printer on fire"),
            mail("cy", "For network: Printer on fire"),
            mail("cy", "Printer on fire: in_progress"),
            mail("rob", "Eingegangen: Printer on fire"),
            mail("rob", "Printer on fire"),
            mail("rob", "Printer on fire: in_progress"),
        ],
        "{log:#?}"
    );
    let note = sink
        .received()
        .into_iter()
        .find(|m| m.to == ["bo@example.org"] && m.message.contains("4711"));
    assert!(note.is_some(), "the group hears of the internal note");
    assert!(
        sink.received()
            .iter()
            .all(|m| m.to != ["rob@example.org"] || !m.message.contains("4711")),
        "the requester never does, though the rule names them"
    );
    let about = server
        .get(&format!("/api/v1/notifications/deliveries?record={id}"))
        .await
        .unwrap();
    assert_eq!(about.body["deliveries"].as_array().unwrap().len(), 8);
    let none = server
        .get("/api/v1/notifications/deliveries?record=INC-999")
        .await
        .unwrap();
    assert_eq!(none.body["deliveries"], json!([]));

    // Removing a replaced default puts it back as shipped; an unknown rule is not found.
    let removed = server
        .call(
            Method::DELETE,
            "/api/v1/notifications/rules/it/requester-reply",
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let again = server
        .call(
            Method::DELETE,
            "/api/v1/notifications/rules/it/requester-reply",
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.body["code"], "notification_not_found");
    // A scoped admin of another domain neither reads nor writes its rules.
    let hr_admin = server
        .token("hana", &["admin"], Some(&["hr"]))
        .await
        .unwrap();
    let read = server
        .act(
            &hr_admin,
            Method::GET,
            "/api/v1/notifications/rules?domain=it",
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::FORBIDDEN, "{}", read.body);
    let own = server
        .act(
            &hr_admin,
            Method::GET,
            "/api/v1/notifications/rules?domain=hr",
            None,
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    let unknown_domain = server
        .get("/api/v1/notifications/rules?domain=nowhere")
        .await
        .unwrap();
    assert_eq!(unknown_domain.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn approvers_module_audiences_and_sla_breaches_are_mailed_as_rules_say() {
    let sink = Sink::default();
    let url = sink.serve();
    let server = TestServer::start_with(move |config| {
        config.smtp_url = Some(url);
        config.smtp_from = Some("Service desk <desk@usm.test>".into());
        config.auto_close_after_business_minutes = 0.0;
    })
    .unwrap();
    let ann = person_in(&server, "ann", "agent", None).await;
    person_in(&server, "bo", "agent", None).await;
    person_in(&server, "cy", "agent", None).await;
    // (A real server creates the group, empty, on a fresh data directory; tests start bare.)
    let authority = server
        .post(
            "/api/v1/groups",
            &json!({"id": "change-authority", "name": "Change authority", "domain": "it",
                    "members": ["bo"]}),
        )
        .await
        .unwrap();
    assert_eq!(authority.status, StatusCode::CREATED, "{}", authority.body);
    let network = server
        .post(
            "/api/v1/groups",
            &json!({"id": "network", "name": "Network", "domain": "it", "members": ["cy"]}),
        )
        .await
        .unwrap();
    assert_eq!(network.status, StatusCode::CREATED, "{}", network.body);
    let breach_rule = server
        .call(
            Method::PUT,
            "/api/v1/notifications/rules/it/breach-to-assignee",
            Some(&json!({"id": "breach-to-assignee", "on": "sla_breach",
                         "recipients": ["assignee"], "template": "sla_breach"})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        breach_rule.status,
        StatusCode::CREATED,
        "{}",
        breach_rule.body
    );

    // A change entering assessment asks the change authority (the default approval-request).
    let change = server
        .act(
            &ann,
            Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "change", "title": "Patch the core switch"})),
        )
        .await;
    assert_eq!(change.status, StatusCode::CREATED, "{}", change.body);
    let change_id = change.body["id"].as_str().unwrap().to_owned();
    let assess = server
        .act(
            &ann,
            Method::POST,
            &format!("/api/v1/records/{change_id}/transitions"),
            Some(json!({"to": "assess"})),
        )
        .await;
    assert_eq!(assess.status, StatusCode::OK, "{}", assess.body);

    // A script's notify effect reaches the team it names (the default module-notice).
    let automation = server
        .post("/api/v1/automations", &json!({"id": "tell-network", "trigger": {"type": "manual"},
            "script": format!("fn run(ctx) {{ notify(\"{change_id}\", \"team:network\", \"Mind the window\") }}")}))
        .await
        .unwrap();
    assert_eq!(
        automation.status,
        StatusCode::CREATED,
        "{}",
        automation.body
    );
    let run = server
        .post("/api/v1/automations/tell-network/run", &json!({}))
        .await
        .unwrap();
    assert_eq!(run.status, StatusCode::OK, "{}", run.body);

    // An incident breaching its 3 s resolution target tells its assignee.
    server
        .create(json!({"kind": "agreement", "title": "Fast", "fields": {
            "targets": {"P1": {"resolution_minutes": 0.05}}, "calendar": {"always": true}}}))
        .await
        .unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    let incident = server
        .create(json!({"kind": "incident", "title": "Core switch down",
                       "fields": {"priority": "P1", "assignee": "cy"}}))
        .await
        .unwrap();
    let incident_id = incident["id"].as_str().unwrap().to_owned();

    let wanted = [
        (
            "bo@example.org".to_owned(),
            format!("[usm {change_id}] Approval requested: Patch the core switch"),
        ),
        (
            "cy@example.org".to_owned(),
            format!("[usm {change_id}] Patch the core switch"),
        ),
        (
            "cy@example.org".to_owned(),
            format!("[usm {incident_id}] SLA breached: Core switch down"),
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mails = loop {
        server.settle().await.unwrap();
        let mails: Vec<(String, String, String)> = sink
            .received()
            .iter()
            .map(|m| {
                (
                    m.to.join(","),
                    m.header("Subject").unwrap_or_default().to_owned(),
                    m.message.clone(),
                )
            })
            .collect();
        let has = |(to, subject): &(String, String)| {
            mails.iter().any(|(t, s, _)| t == to && s == subject)
        };
        if wanted.iter().all(has) {
            break mails;
        }
        assert!(Instant::now() < deadline, "{mails:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let notice = mails
        .iter()
        .find(|(to, subject, _)| to == "cy@example.org" && *subject == wanted[1].1)
        .unwrap();
    assert!(notice.2.contains("Mind the window"), "{}", notice.2);
    assert_eq!(
        mails
            .iter()
            .filter(|(to, ..)| to == "bo@example.org")
            .count(),
        1,
        "the change authority hears once: {mails:#?}"
    );
    // The SLA's events name the record's version without writing one: they are not its
    // assignment again.
    assert_eq!(
        mails
            .iter()
            .filter(|(_, subject, _)| subject.contains("Assigned to you"))
            .count(),
        1,
        "{mails:#?}"
    );
}

/// A server process mailing to `smtp_url`, over `dir`.
fn mailing_process(dir: &std::path::Path, smtp_url: &str) -> ServerProcess {
    let config = dir.join("usm.toml");
    let text = format!(
        "data_dir = {:?}\nbundled_modules = false\ndefault_agreements = false\nadmin_token = {:?}\n\
         rate_limit_per_second = 0\nsmtp_url = {smtp_url:?}\nsmtp_from = \"Service desk <desk@usm.test>\"\n",
        dir.join("data").display().to_string(),
        ADMIN_TOKEN,
    );
    std::fs::write(&config, text).unwrap();
    ServerProcess::spawn(env!("CARGO_BIN_EXE_usm-under-test"), &config).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_loses_no_mail_and_a_resent_one_keeps_its_message_id() {
    let sink = Sink::default();
    // Each message takes 40 ms to be accepted: the kill lands with mail still queued.
    sink.accept_ms.store(40, Ordering::SeqCst);
    let url = sink.serve();
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = mailing_process(dir.path(), &url);
    let call = |base: String, token: String, path: &'static str, body: Value| {
        let client = client.clone();
        async move {
            let reply = client
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = reply.status();
            (status, reply.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, _) = call(
        server.base.clone(),
        ADMIN_TOKEN.into(),
        "/api/v1/people",
        json!({"id": "rob", "name": "Rob Lee", "email": "rob@example.org", "domains": ["it"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, token) = call(
        server.base.clone(),
        ADMIN_TOKEN.into(),
        "/api/v1/tokens",
        json!({"name": "rob-token", "roles": ["requester"], "person": "rob"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let rob = token["token"].as_str().unwrap().to_owned();
    const RECORDS: usize = 20;
    for n in 0..RECORDS {
        let (status, body) = call(
            server.base.clone(),
            rob.clone(),
            "/api/v1/records",
            json!({"kind": "incident", "title": format!("Problem {n}")}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let before_kill = sink.received().len();
    server.kill().unwrap();
    assert!(
        before_kill < RECORDS,
        "the kill came after every mail: {before_kill}"
    );

    sink.accept_ms.store(0, Ordering::SeqCst);
    let server = mailing_process(dir.path(), &url);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids_per_record = loop {
        usm_tests::settle(&server.base).await.unwrap();
        let mut ids: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for mail in sink.received() {
            let subject = mail.header("Subject").unwrap_or_default().to_owned();
            let record = subject
                .strip_prefix("[usm ")
                .and_then(|s| s.split(']').next())
                .unwrap_or_default()
                .to_owned();
            ids.entry(record)
                .or_default()
                .push(mail.header("Message-ID").unwrap_or_default().to_owned());
        }
        if ids.len() >= RECORDS {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {RECORDS} records mailed: {ids:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // None lost: every record's acknowledgement arrived, with the record's own Message-ID. A
    // mail the server handed over just before the kill, and had not yet noted, is sent again
    // — at most that one, and under the same Message-ID, so the receiving side sees one message.
    let mut resent = 0;
    for n in 1..=RECORDS {
        let record = format!("INC-{n}");
        let ids = &ids_per_record[&record];
        assert!(
            ids.iter().all(|id| *id == format!("<{record}@usm.test>")),
            "{record}: {ids:?}"
        );
        resent += ids.len() - 1;
    }
    assert!(resent <= 1, "{resent} mails sent twice: {ids_per_record:?}");
    assert_eq!(ids_per_record.len(), RECORDS, "{ids_per_record:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_smtp_url_the_server_says_once_that_it_mails_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("usm.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nbundled_modules = false\ndefault_agreements = false\nadmin_token = {:?}\n",
            dir.path().join("data").display().to_string(),
            ADMIN_TOKEN
        ),
    )
    .unwrap();
    let server = ServerProcess::spawn(env!("CARGO_BIN_EXE_usm-under-test"), &config).unwrap();
    let created = reqwest::Client::new()
        .post(format!("{}/api/v1/records", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"kind": "incident", "title": "No mail"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    usm_tests::settle(&server.base).await.unwrap();
    let said = server
        .log()
        .iter()
        .filter(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no smtp_url"))
        })
        .count();
    assert_eq!(said, 1, "{:#?}", server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_orders_approvers_are_asked_by_mail_and_only_they() {
    let sink = Sink::default();
    let server = server_mailing_to(&sink);
    person_in(&server, "mia", "requester", None).await;
    person_in(&server, "ann", "agent", None).await;
    let rob = person_in(&server, "rob", "requester", None).await;
    let managed = server
        .patch("/api/v1/people/rob", &json!({"manager": "mia"}))
        .await
        .unwrap();
    assert_eq!(managed.status, StatusCode::OK, "{}", managed.body);
    let group = server
        .post(
            "/api/v1/groups",
            &json!({"id": "it-identity", "name": "Identity", "domain": "it", "members": ["ann"]}),
        )
        .await
        .unwrap();
    assert_eq!(group.status, StatusCode::CREATED);
    let item = server
        .post(
            "/api/v1/catalog/items",
            &json!({"id": "vpn", "domain": "it", "name": "VPN access",
                    "approval": {"by": "manager"},
                    "fulfilment": [{"title": "Grant VPN access to {{ requester }}", "domain": "it", "group": "it-identity"}]}),
        )
        .await
        .unwrap();
    assert_eq!(item.status, StatusCode::CREATED, "{}", item.body);
    let ordered = server
        .act(
            &rob,
            Method::POST,
            "/api/v1/catalog/items/vpn/order",
            Some(json!({})),
        )
        .await;
    assert_eq!(ordered.status, StatusCode::CREATED, "{}", ordered.body);
    let id = ordered.body["id"].as_str().unwrap().to_owned();

    let entries = deliveries(&server, 2).await;
    let mut sent: Vec<(String, String)> = entries
        .iter()
        .map(|d| {
            (
                d["person"].as_str().unwrap().to_owned(),
                d["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            (
                "mia".to_owned(),
                format!("[usm {id}] Approval requested: VPN access")
            ),
            ("rob".to_owned(), format!("[usm {id}] Received: VPN access")),
        ]
    );
    // The group that fulfils it hears nothing until there is a task for it.
    assert!(sink.received().iter().all(|m| m.to != ["ann@example.org"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_modules_rules_and_templates_apply_where_it_is_enabled_under_the_domains_own() {
    let sink = Sink::default();
    let url = sink.serve();
    let server = TestServer::start_with(move |config| {
        config.smtp_url = Some(url);
        config.smtp_from = Some("Service desk <desk@usm.test>".into());
        config.bundled_modules = true;
    })
    .unwrap();
    for (id, domains) in [("fay", ["facilities"]), ("sam", ["facilities"])] {
        let made = server
            .post(
                "/api/v1/people",
                &json!({"id": id, "name": format!("{id} Lee"), "email": format!("{id}@example.org"), "domains": domains}),
            )
            .await
            .unwrap();
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    }
    let team = server
        .patch("/api/v1/groups/site-hq", &json!({"members": ["sam"]}))
        .await
        .unwrap();
    assert_eq!(team.status, StatusCode::OK, "{}", team.body);

    let rules = server
        .get("/api/v1/notifications/rules?domain=facilities")
        .await
        .unwrap();
    let fault_rule = rules.body["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"]["id"] == "site-team-fault")
        .cloned()
        .unwrap();
    assert_eq!(fault_rule["source"], "module:facilities");
    let elsewhere = server
        .get("/api/v1/notifications/rules?domain=it")
        .await
        .unwrap();
    assert!(
        elsewhere.body["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["rule"]["id"] != "site-team-fault")
    );

    // The desk records what fay reports on her behalf.
    let report = |title: &'static str| {
        let server = &server;
        async move {
            let made = server
                .post(
                    "/api/v1/records",
                    &json!({
                    "kind": "incident", "domain": "facilities", "title": title,
                    "fields": {"building": "HQ", "requester": "fay"}}),
                )
                .await
                .unwrap();
            assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
            made.body["id"].as_str().unwrap().to_owned()
        }
    };
    let first = report("Door jammed").await;
    let sent = |count: usize| {
        let server = &server;
        async move {
            deliveries(server, count)
                .await
                .iter()
                .map(|d| {
                    (
                        d["person"].as_str().unwrap().to_owned(),
                        d["subject"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<std::collections::BTreeSet<_>>()
        }
    };
    let mails = sent(2).await;
    assert!(
        mails.contains(&(
            "sam".to_owned(),
            format!("[usm {first}] New fault for site-hq: Door jammed")
        )),
        "{mails:?}"
    );
    assert!(
        mails.contains(&(
            "fay".to_owned(),
            format!("[usm {first}] The facilities desk has your report: Door jammed")
        )),
        "{mails:?}"
    );

    // The domain's admins have the last word: their own set of the same name replaces the module's.
    let own = server
        .call(
            Method::PUT,
            "/api/v1/notifications/templates/facilities/created",
            Some(&json!({"name": "created", "subject": "[usm {{ record.id }}] Got it: {{ record.title }}",
                         "text": "Got it.", "html": "<p>Got it.</p>"})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.body);
    let second = report("Light out").await;
    let mails = sent(4).await;
    assert!(
        mails.contains(&(
            "fay".to_owned(),
            format!("[usm {second}] Got it: Light out")
        )),
        "{mails:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_whose_notification_rule_is_wrong_is_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("module.toml"),
        "id = \"noisy\"\nversion = \"0.1.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\n\
         [[notification_rules]]\nid = \"everyone\"\non = \"created\"\nrecipients = [\"everybody\"]\ntemplate = \"created\"\n",
    )
    .unwrap();
    let path = dir.path().to_owned();
    let outcome = TestServer::start_with(move |config| {
        config.modules = vec![usm_server::ModuleConfig {
            path,
            domains: vec!["it".into()],
            grant: Vec::new(),
        }];
    });
    let error = format!(
        "{:#}",
        outcome.err().expect("the server refuses the module")
    );
    assert!(error.contains("notification_rules[0]"), "{error}");
    assert!(
        error.contains("\"everybody\" is not a recipient"),
        "{error}"
    );
}
