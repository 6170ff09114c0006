//! The GraphiQL page: its Content-Security-Policy and framing headers, no inline
//! script (its start-up is the asset init.js), and in development mode a token that
//! works without pasting.

use serde_json::json;

use crate::helpers::{Setup, TestApp, data, http_client};

/// GETs the page as a browser does; returns its headers and HTML.
async fn get_page(client: &reqwest::Client, url: &str) -> (reqwest::header::HeaderMap, String) {
    let response = client
        .get(url)
        .header("accept", "text/html")
        .send()
        .await
        .expect("GET /graphql");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, response.text().await.expect("html"))
}

/// Every `<script>` of `html` loads a file of this origin and has no body.
fn assert_no_inline_script(html: &str) {
    let scripts: Vec<&str> = html.split("<script").skip(1).collect();
    assert!(!scripts.is_empty(), "{html}");
    for script in scripts {
        let (attributes, rest) = script.split_once('>').expect("a tag");
        assert!(
            // Relative to the page: under a proxy's path prefix too.
            attributes.trim().starts_with("src=\"graphql/assets/"),
            "<script{attributes}>"
        );
        assert!(rest.starts_with("</script>"), "an inline script: {script}");
    }
    let handler = html
        .split_whitespace()
        .find(|word| word.starts_with("on") && word.contains('='));
    assert_eq!(handler, None, "an inline event handler");
}

/// The development token of the page, if it has one.
fn dev_token(html: &str) -> Option<String> {
    let rest = html
        .split("<meta name=\"attache-dev-token\" content=\"")
        .nth(1)?;
    Some(rest.split('"').next()?.to_owned())
}

async fn the_page_runs_only_its_own_scripts(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let (headers, html) = get_page(&app.client, &app.url("/graphql")).await;
    let csp = headers["content-security-policy"].to_str().expect("ascii");
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_no_inline_script(&html);
    assert!(html.contains("\"graphql/assets/init.js\""));
    assert_eq!(
        dev_token(&html),
        None,
        "a configured key: no token in the page"
    );

    let init = app
        .client
        .get(app.url("/graphql/assets/init.js"))
        .send()
        .await
        .expect("GET init.js");
    assert_eq!(init.status(), 200);
    let content_type = init.headers()["content-type"].to_str().expect("ascii");
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );
    assert_eq!(init.headers()["x-content-type-options"], "nosniff");
    // Revalidated at each use (the names stay across versions: a day's max-age
    // paired a new page with an old script), an unchanged one answered 304.
    assert_eq!(init.headers()["cache-control"], "no-cache");
    let etag = init.headers()["etag"].clone();
    let script = init.text().await.expect("init.js");
    assert!(script.contains("attache-dev-token") && script.contains("GraphiQL"));
    let again = app
        .client
        .get(app.url("/graphql/assets/init.js"))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .expect("GET init.js again");
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag);
    assert!(again.text().await.expect("no body").is_empty());
}

async fn in_development_mode_the_page_carries_a_working_token(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let (mut child, _, playground) =
        tokio::task::spawn_blocking(move || crate::cli::dev_mode_banner(&path))
            .await
            .expect("join");
    let client = http_client();
    let (headers, html) = get_page(&client, &playground).await;
    let token = dev_token(&html);
    // Another site's name resolved to this machine (DNS rebinding) reads no token.
    let rebound = client
        .get(&playground)
        .header("accept", "text/html")
        .header("host", "evil.example:8080")
        .send()
        .await
        .expect("GET /graphql")
        .text()
        .await
        .expect("html");
    let list = json!({ "query": "{ attachments(ownerType: \"contract\") { totalCount } }" });
    let body: Option<serde_json::Value> = match &token {
        Some(token) => Some(
            client
                .post(&playground)
                .bearer_auth(token)
                .json(&list)
                .send()
                .await
                .expect("POST")
                .json()
                .await
                .expect("JSON"),
        ),
        None => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(headers.contains_key("content-security-policy"));
    assert_no_inline_script(&html);
    assert!(token.is_some(), "a token in the page: {html}");
    assert!(rebound.contains("GraphiQL"), "{rebound}");
    assert_eq!(
        dev_token(&rebound),
        None,
        "a token for another name: {rebound}"
    );
    assert_eq!(
        data(&body.expect("an answer"), "attachments")["totalCount"],
        0
    );
}

crate::matrix!(db: the_page_runs_only_its_own_scripts);
crate::matrix!(once: in_development_mode_the_page_carries_a_working_token);
