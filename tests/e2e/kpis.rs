//! KPIs kept as sums by the KPI worker: the same figures whatever bounds a request uses, and
//! the sums rebuilt from the records when a store has none.

use serde_json::{Value, json};
use usm_tests::TestServer;

/// Four incidents (one resolved, one resolved and reopened, one closed, one new) and three
/// closed changes (successful, failed, no outcome), created in that order.
async fn desk(server: &TestServer) -> Vec<String> {
    let mut created_at = Vec::new();
    for i in 0..4 {
        let record = server
            .create(json!({"kind": "incident", "title": format!("i{i}")}))
            .await
            .unwrap();
        created_at.push(record["created_at"].as_str().unwrap().to_owned());
    }
    for (id, path) in [
        ("INC-1", &["in_progress", "resolved"][..]),
        ("INC-2", &["in_progress", "resolved", "in_progress"][..]),
        ("INC-3", &["in_progress", "resolved", "closed"][..]),
    ] {
        for to in path {
            server.transition(id, to).await.unwrap();
        }
    }
    for outcome in [json!("successful"), json!("failed"), Value::Null] {
        let fields = if outcome.is_null() {
            json!({})
        } else {
            json!({ "outcome": outcome })
        };
        server
            .create(json!({"kind": "change", "title": "c", "fields": fields}))
            .await
            .unwrap();
    }
    for id in ["CHG-1", "CHG-2", "CHG-3"] {
        for to in ["implement", "review", "closed"] {
            server.transition(id, to).await.unwrap();
        }
    }
    server.settle().await.unwrap();
    created_at
}

async fn kpis(server: &TestServer, query: &str) -> Value {
    let reply = server.get(&format!("/api/v1/kpis{query}")).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

fn encode(instant: &str) -> String {
    instant.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread")]
async fn sums_give_the_same_figures_for_any_bounds() {
    let server = TestServer::start().unwrap();
    let created_at = desk(&server).await;
    let all = kpis(&server, "").await;
    assert_eq!(all["records"], 7, "{all}");
    assert_eq!(all["resolved"], 3, "{all}");
    assert_eq!(all["reopened"], 1, "{all}");
    assert_eq!(all["changes_closed"], 3, "{all}");
    assert_eq!(all["changes_outcome_unknown"], 1, "{all}");
    assert_eq!(all["change_success_rate_percent"], 100.0 / 3.0, "{all}");
    assert_eq!(
        all["backlog_by_state"],
        json!({"new": 1, "in_progress": 1, "resolved": 1}),
        "{all}"
    );
    let recover = kpis(&server, "?process=recover").await;
    assert_eq!(recover["records"], 4, "{recover}");
    assert_eq!(recover["changes_closed"], 0, "{recover}");

    // Bounds inside an hour read that hour's contributions one by one; whole hours read sums.
    let first = jiff::Timestamp::from_second(
        created_at[0]
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second()
            / 3600
            * 3600,
    )
    .unwrap();
    let whole_hours = kpis(&server, &format!("?from={}", encode(&first.to_string()))).await;
    assert_eq!(whole_hours, all);
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let bounded = kpis(
        &server,
        &format!(
            "?from={}&to={}",
            encode(&created_at[0]),
            encode(&later.to_string())
        ),
    )
    .await;
    assert_eq!(bounded, all);
    let before_third = kpis(&server, &format!("?to={}", encode(&created_at[2]))).await;
    assert_eq!(before_third["records"], 2, "{before_third}");
    let from_third = kpis(&server, &format!("?from={}", encode(&created_at[2]))).await;
    assert_eq!(from_third["records"], 5, "{from_third}");
    let nothing = kpis(&server, &format!("?from={}", encode(&later.to_string()))).await;
    assert_eq!(nothing["records"], 0, "{nothing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_without_sums_has_them_rebuilt_from_its_records() {
    let mut server = TestServer::start().unwrap();
    desk(&server).await;
    let before = kpis(&server, "").await;
    server.stop().await.unwrap();
    {
        let store = server.open_store().unwrap();
        let kept: Vec<String> = store
            .settings("kpi/")
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(
            kept.iter().filter(|k| k.starts_with("kpi/r/")).count(),
            7,
            "one contribution per record: {kept:?}"
        );
        store.write_settings(&[], &kept).unwrap();
    }
    let server = server.restart().await.unwrap();
    server.settle().await.unwrap();
    assert_eq!(kpis(&server, "").await, before);
    let mut server = server;
    server.stop().await.unwrap();
    let store = server.open_store().unwrap();
    assert!(store.setting("kpi/position").unwrap().is_some());
    assert_eq!(store.settings("kpi/r/").unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requester_gets_the_figures_of_their_own_records() {
    let server = TestServer::start().unwrap();
    desk(&server).await;
    let rob = server
        .person_with_token(
            json!({"id": "rob", "name": "Rob Lee", "email": "rob@example.org", "domains": ["it"]}),
            "requester",
        )
        .await;
    let created = server
        .act(
            &rob,
            reqwest::Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "incident", "title": "VPN drops"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    server.settle().await.unwrap();
    let own = server
        .act(&rob, reqwest::Method::GET, "/api/v1/kpis", None)
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["records"], 1, "{}", own.body);
    assert_eq!(
        own.body["backlog_by_state"],
        json!({"new": 1}),
        "{}",
        own.body
    );
    assert_eq!(kpis(&server, "").await["records"], 8);
}

/// After a crash the KPI cursor (not flushed with the sums) may lag behind the sums with no
/// event left to move it; the worker moves it up when it starts, so nothing looks behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_left_behind_the_sums_is_moved_up_at_start() {
    let mut server = TestServer::start().unwrap();
    desk(&server).await;
    server.settle().await.unwrap();
    server.stop().await.unwrap();
    {
        let store = server.open_store().unwrap();
        let position = store.cursor("kpis").unwrap();
        assert!(position >= 2);
        store.set_cursor("kpis", position - 2).unwrap();
        store.flush().unwrap();
    }
    let server = server.restart().await.unwrap();
    server.settle().await.unwrap();
}
