//! `attachment(id)` and the `attachments` connection: newest first, opaque cursors,
//! `first` at most 100, `totalCount`.

use serde_json::{Value, json};

use crate::helpers::{GET, Setup, TestApp, codes, data, pdf, tenant};

const LIST: &str = "query($ownerType: String!, $ownerId: String, $first: Int, $after: String) {
  attachments(ownerType: $ownerType, ownerId: $ownerId, first: $first, after: $after) {
    totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { cursor node { id } } nodes { id } } }";

fn ids(page: &Value) -> Vec<String> {
    page["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| node["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn pages_walk_newest_first_with_opaque_cursors(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let mut uploaded = Vec::new();
    for _ in 0..5 {
        let att = app
            .upload(&bearer, &pdf(), "contract", Some("c-1"), "a.pdf")
            .await;
        uploaded.push(att["id"].as_str().expect("id").to_owned());
    }
    app.upload(&bearer, &pdf(), "contract", Some("c-2"), "other.pdf")
        .await;
    uploaded.reverse();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let body = app
            .gql(
                LIST,
                json!({ "ownerType": "contract", "ownerId": "c-1", "first": 2, "after": after }),
                Some(&bearer),
            )
            .await;
        let page = data(&body, "attachments");
        assert_eq!(page["totalCount"], 5);
        assert_eq!(page["pageInfo"]["hasPreviousPage"], after.is_some());
        assert_eq!(page["edges"][0]["cursor"], page["pageInfo"]["startCursor"]);
        seen.extend(ids(&page));
        if page["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = page["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, uploaded, "newest first, each once");

    let all = app
        .gql(LIST, json!({ "ownerType": "contract" }), Some(&bearer))
        .await;
    assert_eq!(
        data(&all, "attachments")["totalCount"],
        6,
        "no ownerId: the whole owner type"
    );
}

async fn page_size_and_cursor_are_checked(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    for variables in [
        json!({ "ownerType": "contract", "first": 101 }),
        json!({ "ownerType": "contract", "first": -1 }),
        json!({ "ownerType": "contract", "after": "not a cursor" }),
        json!({ "ownerType": "spaceship" }),
        json!({ "ownerType": "contract", "ownerId": "../x" }),
    ] {
        let body = app.gql(LIST, variables.clone(), Some(&bearer)).await;
        assert_eq!(codes(&body), vec!["BAD_USER_INPUT"], "{variables}: {body}");
    }
    let body = app
        .gql(
            LIST,
            json!({ "ownerType": "contract", "first": 100 }),
            Some(&bearer),
        )
        .await;
    assert_eq!(data(&body, "attachments")["totalCount"], 0);
}

async fn a_malformed_or_unknown_id_is_null(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    for id in ["not-a-uuid".to_owned(), uuid::Uuid::now_v7().to_string()] {
        let body = app.gql(GET, json!({ "id": id }), Some(&bearer)).await;
        assert_eq!(data(&body, "attachment"), Value::Null);
    }
}

crate::matrix!(
    pages_walk_newest_first_with_opaque_cursors,
    page_size_and_cursor_are_checked,
    a_malformed_or_unknown_id_is_null,
);
