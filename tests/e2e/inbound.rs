//! Inbound e-mail (issue 12): real `.eml` messages (multipart with an attachment, HTML only,
//! ISO-8859-1, an auto-reply, a bounce, a reply known only by `In-Reply-To`) handed to a real
//! server, over HTTP and through `usm mailgate` as an MTA runs it.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{ADMIN_TOKEN, TestServer, repo_path};

fn eml(name: &str) -> Vec<u8> {
    std::fs::read(repo_path(&format!("tests/e2e/mail/{name}"))).unwrap()
}

async fn deliver(server: &TestServer, token: &str, message: Vec<u8>) -> (StatusCode, Value) {
    let reply = server
        .client()
        .post(format!("{}/api/v1/inbound/email?domain=it", server.base))
        .bearer_auth(token)
        .header("content-type", "message/rfc822")
        .body(message)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap_or_default())
}

async fn person(server: &TestServer, id: &str, email: &str) {
    let made = server
        .post(
            "/api/v1/people",
            &json!({"id": id, "name": format!("{id} Lee"), "email": email, "domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_become_records_and_replies_and_automatic_mail_makes_nothing() {
    let server = TestServer::start().unwrap();
    person(&server, "rob", "rob@example.org").await;
    let mailer = server
        .token("mta", &["automation"], Some(&["it"]))
        .await
        .unwrap();

    // A new message with an attachment: a record from rob, the file attached.
    let (status, first) = deliver(&server, &mailer, eml("multipart-with-attachment.eml")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["outcome"], "created");
    assert_eq!(first["attachments"], 1, "{first}");
    let id = first["record"].as_str().unwrap().to_owned();
    let record = server.get(&format!("/api/v1/records/{id}")).await.unwrap();
    assert_eq!(record.body["title"], "Printer on fire");
    assert_eq!(record.body["kind"], "incident");
    assert_eq!(record.body["created_by"], "rob", "{}", record.body);
    assert!(
        record.body["fields"]["description"]
            .as_str()
            .unwrap()
            .contains("floor 3 is smoking"),
        "{}",
        record.body
    );
    let files = server
        .get(&format!("/api/v1/records/{id}/attachments"))
        .await
        .unwrap();
    let file = &files.body["attachments"][0];
    assert_eq!(file["filename"], "printer.log", "{}", files.body);
    let download = server
        .client()
        .get(format!(
            "{}/api/v1/records/{id}/attachments/{}",
            server.base,
            file["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        download.text().await.unwrap(),
        "ERROR 421: fuser overheat\n"
    );

    // The same message again (an MTA retrying) is not processed twice.
    let (status, again) = deliver(&server, &mailer, eml("multipart-with-attachment.eml")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["outcome"], "duplicate");
    assert_eq!(again["record"], id.as_str());

    // A reply known only by In-Reply-To (the acknowledgement's Message-ID) is a public comment.
    let (status, reply) = deliver(&server, &mailer, eml("reply-by-in-reply-to.eml")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["outcome"], "commented");
    assert_eq!(reply["record"], id.as_str());
    let comments = server
        .get(&format!("/api/v1/records/{id}/comments"))
        .await
        .unwrap();
    let comment = &comments.body["comments"][0];
    assert_eq!(comment["body"], "It is still smoking.", "{}", comments.body);
    assert_eq!(comment["visibility"], "public");
    assert_eq!(comment["author"], "rob");

    // HTML only, and ISO-8859-1 in quoted-printable, come out as text.
    let (status, html) = deliver(&server, &mailer, eml("html-only.eml")).await;
    assert_eq!(status, StatusCode::CREATED, "{html}");
    let vpn = server
        .get(&format!(
            "/api/v1/records/{}",
            html["record"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let text = vpn.body["fields"]["description"].as_str().unwrap();
    assert!(text.contains("The VPN drops every ten minutes."), "{text}");
    assert!(!text.contains('<'), "{text}");
    let (status, latin) = deliver(&server, &mailer, eml("iso-8859-1.eml")).await;
    assert_eq!(status, StatusCode::CREATED, "{latin}");
    let drucker = server
        .get(&format!(
            "/api/v1/records/{}",
            latin["record"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(drucker.body["title"], "Drucker fällt aus");
    assert!(
        drucker.body["fields"]["description"]
            .as_str()
            .unwrap()
            .contains("Büro druckt nicht mehr.\r\nGrüße")
            || drucker.body["fields"]["description"]
                .as_str()
                .unwrap()
                .contains("Büro druckt nicht mehr.\nGrüße"),
        "{}",
        drucker.body
    );

    // Auto-replies and bounces make nothing, though the auto-reply carries the record's tag.
    for (name, why) in [
        ("auto-reply.eml", "Auto-Submitted"),
        ("bounce.eml", "null sender"),
    ] {
        let (status, ignored) = deliver(&server, &mailer, eml(name)).await;
        assert_eq!(status, StatusCode::OK, "{name}: {ignored}");
        assert_eq!(ignored["outcome"], "ignored", "{name}: {ignored}");
        assert!(
            ignored["reason"].as_str().unwrap().contains(why),
            "{name}: {ignored}"
        );
    }
    let comments = server
        .get(&format!("/api/v1/records/{id}/comments"))
        .await
        .unwrap();
    assert_eq!(comments.body["comments"].as_array().unwrap().len(), 1);
    let all = server.list_all("kind=incident").await.unwrap();
    assert_eq!(all.len(), 3, "three messages made records");

    // Refusals: an unknown sender, a token that is not the domain's admin or automation, a
    // body that is not a message, one that is not message/rfc822.
    let (status, stranger) = deliver(&server, &mailer, eml("unknown-sender.eml")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{stranger}");
    assert_eq!(stranger["code"], "sender_unknown");
    let agent = server
        .token("ann", &["agent"], Some(&["it"]))
        .await
        .unwrap();
    let (status, _) = deliver(&server, &agent, eml("html-only.eml")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let hr_mailer = server
        .token("hr-mta", &["automation"], Some(&["hr"]))
        .await
        .unwrap();
    let (status, _) = deliver(&server, &hr_mailer, eml("html-only.eml")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another domain's mailer");
    let (status, garbage) = deliver(&server, &mailer, b"\x00\x01 not mail".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{garbage}");
    assert_eq!(garbage["code"], "inbound_unparsable");
    let json_body = server
        .act(
            &mailer,
            Method::POST,
            "/api/v1/inbound/email?domain=it",
            Some(json!({})),
        )
        .await;
    assert_eq!(json_body.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_senders_are_added_when_the_setting_says_so() {
    let server =
        TestServer::start_with(|config| config.inbound_unknown_senders = "create".into()).unwrap();
    let (status, taken) = deliver(&server, ADMIN_TOKEN, eml("unknown-sender.eml")).await;
    assert_eq!(status, StatusCode::CREATED, "{taken}");
    let stranger = server.get("/api/v1/people/stranger").await.unwrap();
    assert_eq!(stranger.status, StatusCode::OK, "{}", stranger.body);
    assert_eq!(stranger.body["email"], "stranger@elsewhere.example");
    assert_eq!(stranger.body["name"], "Stranger");
    assert_eq!(stranger.body["domains"], json!(["it"]));
    let record = server
        .get(&format!(
            "/api/v1/records/{}",
            taken["record"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(record.body["created_by"], "stranger");
}

/// Runs `usm mailgate` as an MTA would: the message on standard input.
fn mailgate(base: &str, token: &str, message: Vec<u8>) -> (i32, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_usm-under-test"))
        .args(["mailgate", "--url", base, "--domain", "it"])
        .env("USM_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&message).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mailgate_command_tells_the_mta_to_retry_or_bounce() {
    let server = TestServer::start().unwrap();
    person(&server, "rob", "rob@example.org").await;
    let base = server.base.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        mailgate(&base, ADMIN_TOKEN, eml("multipart-with-attachment.eml"))
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    let taken: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(taken["outcome"], "created");
    let base = server.base.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        mailgate(&base, ADMIN_TOKEN, eml("unknown-sender.eml"))
    })
    .await
    .unwrap();
    assert_eq!(code, 65, "refused: the MTA bounces it: {out}");
    // Nothing listens on this port: the MTA keeps the message and tries again.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (code, out) =
        tokio::task::spawn_blocking(move || mailgate(&closed, ADMIN_TOKEN, eml("html-only.eml")))
            .await
            .unwrap();
    assert_eq!(code, 75, "unreachable: the MTA retries: {out}");
}
