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

/// Reads run on connections of their own (SQLite: held outside the pool): each sees
/// the upload committed just before it, more of them run at once than there are
/// connections, and clients that give up leave them sound (a read cut off midway:
/// the unit test in `src/db/reader.rs`).
async fn reads_see_every_commit_and_survive_abandoned_clients(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let listing = json!({ "ownerType": "contract", "ownerId": "c-1", "first": 100 });
    let mut newest = Value::Null;
    for count in 1..=6 {
        let att = app
            .upload(&bearer, &pdf(), "contract", Some("c-1"), "a.pdf")
            .await;
        let pages = futures::future::join_all(
            (0..12).map(|_| app.gql(LIST, listing.clone(), Some(&bearer))),
        )
        .await;
        for body in pages {
            let page = data(&body, "attachments");
            assert_eq!(page["totalCount"], count, "{body}");
            assert_eq!(ids(&page).len(), count);
            assert_eq!(page["nodes"][0]["id"], att["id"], "the newest upload first");
        }
        newest = att["id"].clone();
    }

    let impatient = crate::helpers::http_client_with(
        reqwest::Client::builder().timeout(std::time::Duration::from_micros(300)),
    );
    let abandoned = (0..60).map(|_| {
        impatient
            .post(app.url("/graphql"))
            .bearer_auth(&bearer)
            .json(&json!({ "query": LIST, "variables": listing }))
            .send()
    });
    let _ = futures::future::join_all(abandoned).await;

    let pages =
        futures::future::join_all((0..12).map(|_| app.gql(LIST, listing.clone(), Some(&bearer))))
            .await;
    for body in pages {
        assert_eq!(data(&body, "attachments")["totalCount"], 6, "{body}");
    }
    let one = app.gql(GET, json!({ "id": newest }), Some(&bearer)).await;
    assert_eq!(data(&one, "attachment")["filename"], "a.pdf");
}

crate::matrix!(
    reads_see_every_commit_and_survive_abandoned_clients,
    pages_walk_newest_first_with_opaque_cursors,
    page_size_and_cursor_are_checked,
    a_malformed_or_unknown_id_is_null,
);
