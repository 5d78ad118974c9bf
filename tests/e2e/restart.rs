use serde_json::{Value, json};
use usm_tests::TestServer;

#[tokio::test(flavor = "multi_thread")]
async fn records_history_and_lists_survive_a_restart() {
    let server = TestServer::start().unwrap();
    for i in 0..12 {
        let kind = ["incident", "change", "request"][i % 3];
        let domain = ["it", "hr"][i % 2];
        server
            .create(json!({"kind": kind, "domain": domain, "title": format!("record {i}"), "fields": {"category": format!("c{i}")}}))
            .await
            .unwrap();
    }
    // Several versions per record: transitions, patches and an approval.
    server.transition("INC-1", "in_progress").await.unwrap();
    server.transition("INC-1", "resolved").await.unwrap();
    server
        .patch(
            "/api/v1/records/CHG-2",
            &json!({"fields": {"risk": "high"}}),
        )
        .await
        .unwrap();
    server
        .post(
            "/api/v1/records/CHG-2/approvals",
            &json!({"decision": "approve"}),
        )
        .await
        .unwrap();
    server.transition("REQ-3", "in_progress").await.unwrap();

    async fn everything(server: &TestServer) -> Vec<(Value, Value, Value)> {
        let mut out = Vec::new();
        for record in server.list_all("").await.unwrap() {
            let id = record["id"].as_str().unwrap().to_owned();
            let history = server
                .get(&format!("/api/v1/records/{id}/history"))
                .await
                .unwrap()
                .body;
            let approvals = server
                .get(&format!("/api/v1/records/{id}/approvals"))
                .await
                .unwrap()
                .body;
            out.push((record, history, approvals));
        }
        out
    }
    let lists = [
        "kind=incident",
        "domain=hr",
        "kind=request&state=in_progress",
        "state=new",
    ];
    let before = everything(&server).await;
    let mut lists_before = Vec::new();
    for query in lists {
        lists_before.push(server.list_all(query).await.unwrap());
    }

    let server = server.restart().await.unwrap();
    assert_eq!(everything(&server).await, before);
    for (query, expected) in lists.iter().zip(lists_before) {
        assert_eq!(server.list_all(query).await.unwrap(), expected, "{query}");
    }
    // Numbering continues where it stopped.
    let next = server
        .create(json!({"kind": "incident", "title": "after restart"}))
        .await
        .unwrap();
    assert_eq!(next["id"], "INC-5");
}
