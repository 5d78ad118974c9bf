//! Attachments over HTTP: streamed to content-addressed blobs, listed, downloaded safely and
//! removed by agents; refused uploads and broken-off ones leave nothing referenced.

use std::{
    io::{Read as _, Write as _},
    path::Path,
};

use reqwest::{Method, StatusCode, header};
use serde_json::json;
use sha2::{Digest, Sha256};
use usm_tests::{ADMIN_TOKEN, TestServer};

/// The blob files (not the upload scratch space) under the server's attachment store.
fn blob_files(data: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(fans) = std::fs::read_dir(data.join("attachments")) else {
        return names;
    };
    for fan in fans.flatten() {
        if fan.file_name() == "tmp" {
            continue;
        }
        for blob in std::fs::read_dir(fan.path()).unwrap().flatten() {
            names.push(blob.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    names
}

fn scratch_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("attachments").join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn upload(
    server: &TestServer,
    token: &str,
    id: &str,
    disposition: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v1/records/{id}/attachments", server.base))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, content_type)
        .body(body);
    if let Some(disposition) = disposition {
        request = request.header(header::CONTENT_DISPOSITION, disposition);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn files_attach_download_and_go_with_the_records_rights() {
    let server = TestServer::start().unwrap();
    let rob = server.token("rob", &["requester"], None).await.unwrap();
    let eve = server.token("eve", &["requester"], None).await.unwrap();
    let created = server
        .call_as(
            Some(&rob),
            Method::POST,
            "/api/v1/records",
            Some(&json!({"kind": "incident", "title": "Printer jams"})),
        )
        .await
        .unwrap();
    let id = created.body["id"].as_str().unwrap().to_owned();
    let photo: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (status, attached) = upload(
        &server,
        &rob,
        &id,
        Some("attachment; filename=\"jam.jpg\""),
        "image/jpeg",
        photo.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{attached}");
    assert_eq!(attached["size"], 200_000);
    assert_eq!(attached["sha256"], format!("{:x}", Sha256::digest(&photo)));
    assert_eq!(
        (&attached["filename"], &attached["created_by"]),
        (&json!("jam.jpg"), &json!("rob"))
    );
    // The same file again (with a UTF-8 name) is a second attachment of one stored blob.
    let (status, again) = upload(
        &server,
        ADMIN_TOKEN,
        &id,
        Some("attachment; filename*=UTF-8''jam%20%C3%A9t%C3%A9.jpg"),
        "image/jpeg",
        photo.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["filename"], "jam été.jpg");
    assert_eq!(blob_files(server.data_dir()).len(), 1);

    let listed = server
        .call_as(
            Some(&rob),
            Method::GET,
            &format!("/api/v1/records/{id}/attachments"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        listed.body["attachments"].as_array().unwrap().len(),
        2,
        "{}",
        listed.body
    );
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/records/{id}/attachments/1", server.base))
        .bearer_auth(&rob)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment"),
        "{headers:?}"
    );
    assert_eq!(response.bytes().await.unwrap().to_vec(), photo);

    // Another requester sees nothing and stores nothing.
    let (status, _) = upload(
        &server,
        &eve,
        &id,
        Some("attachment; filename=\"x.txt\""),
        "text/plain",
        b"mine".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let peek = server
        .call_as(
            Some(&eve),
            Method::GET,
            &format!("/api/v1/records/{id}/attachments/1"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(peek.status, StatusCode::NOT_FOUND);
    assert_eq!(blob_files(server.data_dir()).len(), 1);

    // Agents remove attachments, requesters do not; history keeps what was removed.
    let by_rob = server
        .call_as(
            Some(&rob),
            Method::DELETE,
            &format!("/api/v1/records/{id}/attachments/2"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(by_rob.status, StatusCode::FORBIDDEN, "{}", by_rob.body);
    let removed = server
        .call(
            Method::DELETE,
            &format!("/api/v1/records/{id}/attachments/2"),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    let gone = server
        .get(&format!("/api/v1/records/{id}/attachments/2"))
        .await
        .unwrap();
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let history = server
        .get(&format!("/api/v1/records/{id}/history"))
        .await
        .unwrap()
        .body;
    let last = history["entries"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["action"], "attachment", "{last}");
    // No client writes the attachment list itself.
    let forged = server
        .patch(
            &format!("/api/v1/records/{id}"),
            &json!({"fields": {"attachments": []}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (forged.status, &forged.body["code"]),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!("field_not_writable")
        ),
        "{}",
        forged.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_and_broken_uploads_leave_nothing_referenced() {
    let server = TestServer::start_with(|config| config.attachment_max_bytes = 1000).unwrap();
    let record = server
        .create(json!({"kind": "task", "title": "t"}))
        .await
        .unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    for (disposition, content_type, body, status) in [
        (None, "text/plain", b"x".to_vec(), StatusCode::BAD_REQUEST),
        (
            Some("attachment; filename=\"../../etc/passwd\""),
            "text/plain",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("attachment; filename=\"a.txt\""),
            "not a type",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("attachment; filename=\"a.txt\""),
            "multipart/mixed; boundary=x",
            b"--x--".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Some("attachment; filename=\"big.bin\""),
            "application/octet-stream",
            vec![7u8; 1001],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let (got, body) = upload(&server, ADMIN_TOKEN, &id, disposition, content_type, body).await;
        assert_eq!(got, status, "{disposition:?} {content_type}: {body}");
    }
    // An upload that breaks off half way: the connection closes before the declared length.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /api/v1/records/{id}/attachments HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"half.txt\"\r\nContent-Length: 900\r\n\r\n{}",
        "x".repeat(300)
    )
    .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let listed = server
        .get(&format!("/api/v1/records/{id}/attachments"))
        .await
        .unwrap();
    assert_eq!(listed.body["attachments"], json!([]), "{}", listed.body);
    assert!(blob_files(server.data_dir()).is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while scratch_files(server.data_dir()) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        scratch_files(server.data_dir()),
        0,
        "the half upload's scratch file is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pruner_collects_blobs_no_record_references() {
    let server = TestServer::start_with(|config| {
        config.prune_interval_secs = 1;
        config.attachment_grace_secs = 0;
    })
    .unwrap();
    let record = server
        .create(json!({"kind": "task", "title": "t"}))
        .await
        .unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    for name in ["kept.txt", "dropped.txt"] {
        let (status, body) = upload(
            &server,
            ADMIN_TOKEN,
            &id,
            Some(&format!("attachment; filename=\"{name}\"")),
            "text/plain",
            name.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    server
        .call(
            Method::DELETE,
            &format!("/api/v1/records/{id}/attachments/2"),
            None,
            &[],
        )
        .await
        .unwrap();
    let kept = format!("{:x}", Sha256::digest(b"kept.txt"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while blob_files(server.data_dir()).len() > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(blob_files(server.data_dir()), [kept]);
}

/// The boundary of the test's multipart bodies (not in any file they carry).
const BOUNDARY: &str = "usm-XyZzY-boundary";

/// A `multipart/form-data` body with [`BOUNDARY`]: each part is its header lines and content.
fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (headers, content) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(headers.as_bytes());
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// The part `curl -F file=@name;type=…` sends.
fn file_part(name: &str, content_type: &str) -> String {
    format!(
        "Content-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: {content_type}"
    )
}

async fn multipart(
    server: &TestServer,
    id: &str,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    upload(server, ADMIN_TOKEN, id, None, &content_type, body).await
}

async fn listed(server: &TestServer, id: &str) -> serde_json::Value {
    server
        .get(&format!("/api/v1/records/{id}/attachments"))
        .await
        .unwrap()
        .body["attachments"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_upload_attaches_its_one_file_part() {
    let server = TestServer::start().unwrap();
    let record = server
        .create(json!({"kind": "incident", "title": "Report attached"}))
        .await
        .unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    // Larger than the parser's 64 KiB buffer, and with CRLF and dashes inside, so the boundary
    // search runs across chunks.
    let pdf: Vec<u8> = (0..300_000u32)
        .map(|i| match i % 97 {
            0 => b'\r',
            1 => b'\n',
            2 | 3 => b'-',
            _ => (i % 251) as u8,
        })
        .collect();
    let body = form(&[(&file_part("report.pdf", "application/pdf"), &pdf)]);
    let (status, attached) = multipart(&server, &id, body).await;
    assert_eq!(status, StatusCode::CREATED, "{attached}");
    assert_eq!(
        (
            &attached["filename"],
            &attached["content_type"],
            &attached["size"]
        ),
        (
            &json!("report.pdf"),
            &json!("application/pdf"),
            &json!(300_000)
        ),
        "{attached}"
    );
    assert_eq!(attached["sha256"], format!("{:x}", Sha256::digest(&pdf)));
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/records/{id}/attachments/{}",
            server.base,
            attached["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(response.bytes().await.unwrap().to_vec(), pdf);
    // A part without a media type is application/octet-stream; a name in filename* is UTF-8.
    let body = form(&[(
        "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt",
        b"plain",
    )]);
    let (status, attached) = multipart(&server, &id, body).await;
    assert_eq!(status, StatusCode::CREATED, "{attached}");
    assert_eq!(
        (&attached["filename"], &attached["content_type"]),
        (&json!("résumé.txt"), &json!("application/octet-stream"))
    );
    assert_eq!(listed(&server, &id).await.as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_multipart_bodies_are_refused_and_attach_nothing() {
    let server = TestServer::start().unwrap();
    let record = server
        .create(json!({"kind": "task", "title": "t"}))
        .await
        .unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    let good = form(&[(&file_part("a.txt", "text/plain"), b"hello")]);
    let cut = good[..good.len() - 30].to_vec();
    let with_boundary = format!("multipart/form-data; boundary={BOUNDARY}");
    let with_boundary = with_boundary.as_str();
    let cases: [(&str, &str, Vec<u8>); 6] = [
        ("no boundary", "multipart/form-data", good.clone()),
        ("truncated", with_boundary, cut),
        (
            "no file part",
            with_boundary,
            form(&[(
                "Content-Disposition: form-data; name=\"note\"",
                b"just text",
            )]),
        ),
        (
            "two file parts",
            with_boundary,
            form(&[
                (&file_part("a.txt", "text/plain"), b"one"),
                (&file_part("b.txt", "text/plain"), b"two"),
            ]),
        ),
        (
            "no part at all",
            with_boundary,
            format!("--{BOUNDARY}--\r\n").into_bytes(),
        ),
        (
            "not the boundary it declares",
            "multipart/form-data; boundary=other",
            good.clone(),
        ),
    ];
    for (case, content_type, body) in cases {
        let (status, problem) = upload(&server, ADMIN_TOKEN, &id, None, content_type, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {problem}");
        assert_eq!(problem["code"], "multipart_invalid", "{case}: {problem}");
        assert_eq!(listed(&server, &id).await, json!([]), "{case}");
    }
    // A bad file name in a part is refused like one in a header.
    let body = form(&[(&file_part("../etc/passwd", "text/plain"), b"x")]);
    let (status, problem) = multipart(&server, &id, body).await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_input")),
        "{problem}"
    );
    assert_eq!(listed(&server, &id).await, json!([]));
    assert!(blob_files(server.data_dir()).is_empty(), "no blob was kept");
    let history = server
        .get(&format!("/api/v1/records/{id}/history"))
        .await
        .unwrap();
    assert_eq!(
        history.body["entries"].as_array().unwrap().len(),
        1,
        "no write reached the record: {}",
        history.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_files_obey_the_per_file_and_per_record_limits() {
    let server = TestServer::start_with(|config| {
        config.attachment_max_bytes = 1000;
        config.attachment_max_bytes_per_record = 1500;
    })
    .unwrap();
    let record = server
        .create(json!({"kind": "task", "title": "t"}))
        .await
        .unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    // One byte over the per-file limit, found while streaming (the body's length is within
    // what a multipart body of a 1000-byte file may take).
    let body = form(&[(
        &file_part("big.bin", "application/octet-stream"),
        &[7u8; 1001],
    )]);
    let (status, problem) = multipart(&server, &id, body).await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("payload_too_large")),
        "{problem}"
    );
    // A body declared far larger than any file it may carry is refused before it is read.
    let huge = form(&[(
        &file_part("huge.bin", "application/octet-stream"),
        &vec![7u8; 200_000],
    )]);
    let (status, problem) = multipart(&server, &id, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert_eq!(listed(&server, &id).await, json!([]));

    let body = form(&[(
        &file_part("first.bin", "application/octet-stream"),
        &[1u8; 800],
    )]);
    let (status, attached) = multipart(&server, &id, body).await;
    assert_eq!(status, StatusCode::CREATED, "{attached}");
    // 800 more would make 1600 of the record's 1500: as multipart (found while streaming) and
    // as a raw body (refused by its declared length).
    let body = form(&[(
        &file_part("second.bin", "application/octet-stream"),
        &[2u8; 800],
    )]);
    let (status, problem) = multipart(&server, &id, body).await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::CONFLICT, &json!("attachment_quota_exceeded")),
        "{problem}"
    );
    let (status, problem) = upload(
        &server,
        ADMIN_TOKEN,
        &id,
        Some("attachment; filename=\"second.bin\""),
        "application/octet-stream",
        vec![2u8; 800],
    )
    .await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::CONFLICT, &json!("attachment_quota_exceeded")),
        "{problem}"
    );
    // What fits still goes in.
    let body = form(&[(
        &file_part("third.bin", "application/octet-stream"),
        &[3u8; 700],
    )]);
    let (status, attached) = multipart(&server, &id, body).await;
    assert_eq!(status, StatusCode::CREATED, "{attached}");
    let names: Vec<String> = listed(&server, &id)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["filename"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["first.bin", "third.bin"]);
    assert_eq!(blob_files(server.data_dir()).len(), 2);

    // A record holds at most 100 attachments, however small.
    let other = server
        .create(json!({"kind": "task", "title": "many"}))
        .await
        .unwrap();
    let other = other["id"].as_str().unwrap().to_owned();
    for n in 0..100 {
        let body = form(&[(&file_part(&format!("{n}.txt"), "text/plain"), b"x")]);
        let (status, attached) = multipart(&server, &other, body).await;
        assert_eq!(status, StatusCode::CREATED, "{n}: {attached}");
    }
    let body = form(&[(&file_part("101.txt", "text/plain"), b"x")]);
    let (status, problem) = multipart(&server, &other, body).await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::CONFLICT, &json!("attachment_quota_exceeded")),
        "{problem}"
    );
    assert_eq!(listed(&server, &other).await.as_array().unwrap().len(), 100);
}

/// Bytes of upload scratch files on disk: what the server has written of uploads in flight.
fn scratch_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("attachments").join("tmp"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|file| file.metadata().ok())
                .map(|meta| meta.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_reaches_the_disk_before_its_body_has_all_arrived() {
    let server = TestServer::start().unwrap();
    let record = server
        .create(json!({"kind": "task", "title": "t"}))
        .await
        .unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    let (half, total) = (8 << 20, 16 << 20);
    let body: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let addr = server.base.trim_start_matches("http://").to_owned();
    let data = server.data_dir().to_path_buf();
    let (written, answer) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "POST /api/v1/records/{id}/attachments HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        stream.write_all(&body[..half]).unwrap();
        // Half the body is sent and the rest held back: a server that buffers a body until it
        // ends has written nothing yet; one that streams has most of the half on disk.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while scratch_bytes(&data) < 4 << 20 && std::time::Instant::now() < deadline {
            std::thread::park_timeout(std::time::Duration::from_millis(20));
        }
        let written = scratch_bytes(&data);
        stream.write_all(&body[half..]).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        (written, answer)
    })
    .await
    .unwrap();
    assert!(
        written >= 4 << 20,
        "with half of 16 MiB sent, {written} bytes were on disk"
    );
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(scratch_files(server.data_dir()), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_honour_if_match_when_sent() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "incident", "title": "Printer jam"}))
        .await
        .unwrap();
    let send = |method: Method, path: &str, tag: Option<&str>, body: Option<(&str, Vec<u8>)>| {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", server.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(tag) = tag {
            request = request.header(header::IF_MATCH, tag);
        }
        if let Some((content_type, bytes)) = body {
            request = request
                .header(header::CONTENT_TYPE, content_type)
                .header(
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"a.txt\"",
                )
                .body(bytes);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (
                status,
                response
                    .json::<serde_json::Value>()
                    .await
                    .unwrap_or_default(),
            )
        }
    };
    let comment = |text: &str| {
        Some((
            "application/json",
            json!({"body": text}).to_string().into_bytes(),
        ))
    };
    let comments = "/api/v1/records/INC-1/comments";
    // A stale version is refused; the current one, or none, goes through.
    let (stale, problem) = send(Method::POST, comments, Some("\"7\""), comment("late")).await;
    assert_eq!(stale, StatusCode::PRECONDITION_FAILED, "{problem}");
    assert_eq!(problem["code"], "version_mismatch");
    let (current, _) = send(Method::POST, comments, Some("\"1\""), comment("on time")).await;
    assert_eq!(current, StatusCode::CREATED);
    let (unconditioned, _) = send(Method::POST, comments, None, comment("whenever")).await;
    assert_eq!(unconditioned, StatusCode::CREATED);

    let files = "/api/v1/records/INC-1/attachments";
    let file = || Some(("text/plain", b"hello".to_vec()));
    let (stale, _) = send(Method::POST, files, Some("\"1\""), file()).await;
    assert_eq!(stale, StatusCode::PRECONDITION_FAILED);
    assert!(
        blob_files(server.data_dir()).is_empty(),
        "a refused upload stores nothing"
    );
    let (attached, attachment) = send(Method::POST, files, Some("\"3\""), file()).await;
    assert_eq!(attached, StatusCode::CREATED, "{attachment}");
    let one = format!("{files}/{}", attachment["id"].as_str().unwrap());
    let (stale, _) = send(Method::DELETE, &one, Some("\"3\""), None).await;
    assert_eq!(stale, StatusCode::PRECONDITION_FAILED);
    let (removed, _) = send(Method::DELETE, &one, Some("\"4\""), None).await;
    assert_eq!(removed, StatusCode::OK);
}
