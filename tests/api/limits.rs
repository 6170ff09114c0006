//! Request limits and the HTTP rules around GraphQL: 413 before parsing, depth and
//! complexity, CSRF, GET queries, the playground, health checks.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::helpers::{Setup, TestApp, UPLOAD, codes, data, pdf, tenant};

async fn oversize_bodies_get_413_before_parsing(setup: Setup) {
    let app = TestApp::spawn_with(setup, &["--max-request-bytes", "65536"]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let mut big = pdf();
    big.resize(60_000, b' ');
    let body = json!({ "query": UPLOAD, "variables": { "input": {
        "ownerType": "contract", "ownerId": "c-1", "filename": "big.pdf", "base64": STANDARD.encode(&big) }}});
    // In GraphQL's media type for a client that asks for it (Apollo Client 4 reads
    // a 4xx's code only from that type).
    for (accept, media_type) in [
        ("application/json", "application/json"),
        (
            "application/graphql-response+json, application/json;q=0.9",
            "application/graphql-response+json",
        ),
    ] {
        let response = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(&bearer)
            .header("accept", accept)
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 413);
        assert_eq!(
            response.headers()["connection"],
            "close",
            "the unread body ends the connection"
        );
        assert_eq!(response.headers()["content-type"], media_type);
        let answer: Value = response.json().await.expect("GraphQL-shaped body");
        assert_eq!(codes(&answer), vec!["PAYLOAD_TOO_LARGE"]);
    }

    // Without Content-Length (chunked), the limit still holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .to_string()
        .into_bytes()
        .chunks(8192)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let streamed = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&bearer)
        .header("content-type", "application/json")
        .body(streamed)
        .send()
        .await
        .expect("POST chunked");
    assert_eq!(response.status(), 413);
    assert_eq!(app.row_count(&acme).await, 0);
    assert!(app.stored_keys().is_empty());
}

async fn depth_and_complexity_are_limited(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    // 600 aliases: 1,201 of complexity, 1,800 expanded fields and argument values.
    let aliases: String = (0..600)
        .map(|i| format!("a{i}: attachment(id: \"x\") {{ id }} "))
        .collect();
    let body = app
        .gql(&format!("query {{ {aliases} }}"), json!({}), Some(&bearer))
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("complex"),
        "{body}"
    );
    let deep = format!(
        "query {{ __schema {{ types {{ fields {{ type {{ {} name {} }} }} }} }} }}",
        "ofType { ".repeat(14),
        "} ".repeat(14)
    );
    let body = app.gql(&deep, json!({}), Some(&bearer)).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nested"),
        "{body}"
    );
}

async fn simple_requests_need_a_preflight_header(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let query = "{ attachments(ownerType: \"contract\") { totalCount } }";
    let get = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", query)])
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 400);
    let said = get.text().await.expect("body");
    // A GET has no content type to change: the advice is the header alone.
    assert!(
        said.contains("A GET must carry") && !said.contains("use the content type"),
        "{said}"
    );
    let text_plain = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&bearer)
        .header("content-type", "text/plain")
        .body(json!({ "query": query }).to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(text_plain.status(), 400);

    let allowed = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", query)])
        .bearer_auth(&bearer)
        .header("apollo-require-preflight", "true")
        .send()
        .await
        .expect("GET");
    assert_eq!(allowed.status(), 200);
    let body: Value = allowed.json().await.expect("JSON");
    assert_eq!(data(&body, "attachments")["totalCount"], 0);

    let mutation = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", "mutation { deleteAttachment(id: \"x\") }")])
        .bearer_auth(&bearer)
        .header("apollo-require-preflight", "true")
        .send()
        .await
        .expect("GET");
    assert_eq!(mutation.status(), 405, "GET may only query");
    assert_eq!(mutation.headers()["allow"], "POST");
    let body: Value = mutation.json().await.expect("a GraphQL-shaped body");
    assert_eq!(codes(&body), vec!["BAD_USER_INPUT"], "{body}");
}

async fn browsers_get_the_playground_and_probes_answer(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let page = app
        .client
        .get(app.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("GET");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("GraphiQL"));
    assert!(
        !html.contains("https://"),
        "the playground loads nothing from the internet"
    );
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|part| part.starts_with("graphql/assets/"))
        .collect();
    assert_eq!(assets.len(), 5, "{assets:?}");
    for asset in assets {
        // Relative to the page, `/graphql`.
        let response = app
            .client
            .get(app.url(&format!("/{asset}")))
            .send()
            .await
            .expect("GET asset");
        assert_eq!(response.status(), 200, "{asset}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            content_type.starts_with("text/javascript") || content_type.starts_with("text/css"),
            "{asset}: {content_type}"
        );
        assert!(
            response.bytes().await.expect("body").len() > 1000,
            "{asset}"
        );
    }
    assert_eq!(app.status_of("/graphql/assets/other.js").await, 404);
    assert_eq!(app.status_of("/healthz").await, 200);
    let ready = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.expect("JSON");
    assert_eq!(ready, json!({ "database": "ok", "storage": "ok" }));
}

async fn cors_answers_only_the_configured_origins(setup: Setup) {
    let app = TestApp::spawn_with(
        setup,
        &[
            "--cors-allowed-origins",
            "https://app.example,https://admin.example",
        ],
    )
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-request-id",
            )
            .send()
    };
    let allowed = preflight("https://admin.example").await.expect("OPTIONS");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://admin.example"
    );
    // An app that sends its own request id passes the preflight, and browsers keep
    // the answer instead of asking before every request.
    let headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .expect("text")
        .to_ascii_lowercase();
    assert!(headers.contains("x-request-id"), "{headers}");
    assert_eq!(allowed.headers()["access-control-max-age"], "7200");
    let refused = preflight("https://evil.example").await.expect("OPTIONS");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // A resumable download from the app: its preflight allows the conditional
    // headers, and the answer shows the app that ranges work.
    let resume = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            app.url("/api/attachments/x/download"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,range,if-range,if-match,if-modified-since",
        )
        .send()
        .await
        .expect("OPTIONS");
    let allowed = resume.headers()["access-control-allow-headers"]
        .to_str()
        .expect("text")
        .to_ascii_lowercase();
    for header in ["range", "if-range", "if-match", "if-modified-since"] {
        assert!(allowed.contains(header), "{header}: {allowed}");
    }
    let answer = app
        .client
        .get(app.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("GET");
    let exposed = answer.headers()["access-control-expose-headers"]
        .to_str()
        .expect("text")
        .to_ascii_lowercase();
    // The app can read a busy server's wait, the id to report and a 401's scheme.
    for header in [
        "accept-ranges",
        "retry-after",
        "x-request-id",
        "www-authenticate",
    ] {
        assert!(exposed.contains(header), "{header}: {exposed}");
    }

    let plain = TestApp::spawn(setup).await;
    let response = plain
        .client
        .get(plain.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("GET");
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "no CORS unless configured"
    );
}

/// GraphQL over HTTP: request errors have a code and no `data`; with
/// `application/graphql-response+json` they are 4xx; a body that is not a GraphQL
/// request is 400 or 415.
async fn request_errors_follow_graphql_over_http(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let post = |body: String, content_type: &'static str, accept: &'static str| {
        app.client
            .post(app.url("/graphql"))
            .bearer_auth(&bearer)
            .header("content-type", content_type)
            .header("accept", accept)
            .body(body)
    };
    let json = "application/json";
    let graphql_response = "application/graphql-response+json";
    for (case, query, code) in [
        ("parse", "{ attachment(", "GRAPHQL_PARSE_FAILED"),
        ("validation", "{ nope }", "GRAPHQL_VALIDATION_FAILED"),
    ] {
        let body = json!({ "query": query }).to_string();
        let answer = post(body.clone(), json, json).send().await.expect("POST");
        assert_eq!(answer.status(), 200, "{case}");
        let value: Value = answer.json().await.expect("JSON");
        assert_eq!(codes(&value), vec![code], "{case}: {value}");
        let said = value["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            !said.is_empty() && !said.contains("Error {"),
            "{case}: {said}"
        );
        assert!(value.get("data").is_none(), "{case}: no data: {value}");
        // Where it went wrong, for GraphiQL and editors to point at.
        let at = &value["errors"][0]["locations"][0];
        assert_eq!(at["line"], 1, "{case}: {value}");
        assert!(
            at["column"].as_u64().is_some_and(|column| column > 1),
            "{case}: {value}"
        );
        let answer = post(body, json, graphql_response)
            .send()
            .await
            .expect("POST");
        assert_eq!(answer.status(), 400, "{case}");
        assert_eq!(answer.headers()["content-type"], graphql_response, "{case}");
    }
    let no_query = post("{}".into(), json, json).send().await.expect("POST");
    assert_eq!(no_query.status(), 400);
    let message = |body: Value| {
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let said = message(no_query.json().await.expect("JSON"));
    assert!(said.contains("no `query`"), "{said}");
    let xml = post("<query/>".into(), "application/xml", json)
        .send()
        .await
        .expect("POST");
    assert_eq!(xml.status(), 415);
    let said = message(xml.json().await.expect("JSON"));
    assert!(
        said.contains("application/json"),
        "what is accepted: {said}"
    );
    // Refusals made before the body is read are in the media type asked for too:
    // Apollo Client 4 reads a 4xx's code only from GraphQL's.
    for (case, body, content_type, status) in [
        ("415", "<query/>", "application/xml", 415),
        ("400 malformed", "{", json, 400),
        ("400 CSRF", "{}", "text/plain", 400),
        ("400 empty", "", json, 400),
    ] {
        let answer = post(body.into(), content_type, graphql_response)
            .send()
            .await
            .expect("POST");
        assert_eq!(answer.status(), status, "{case}");
        assert_eq!(answer.headers()["content-type"], graphql_response, "{case}");
        let value: Value = answer.json().await.expect("JSON");
        assert!(!codes(&value).is_empty(), "{case}: {value}");
        let said = message(value);
        if case == "400 empty" {
            assert!(
                said.contains("the JSON is empty: send an object with `query`"),
                "{case}: {said}"
            );
        }
    }
    let fine = post(
        json!({ "query": "{ __typename }" }).to_string(),
        json,
        graphql_response,
    )
    .send()
    .await
    .expect("POST");
    assert_eq!(fine.status(), 200);
    assert_eq!(fine.headers()["content-type"], graphql_response);
    let refused = post(
        json!({ "query": "{ __typename }" }).to_string(),
        json,
        "application/graphql-response+json;q=0, application/json",
    )
    .send()
    .await
    .expect("POST");
    assert_eq!(
        refused.headers()["content-type"],
        json,
        "q=0 refuses the media type"
    );
    // The higher `q` wins, a tie goes to GraphQL's type, and media types have no case.
    for (accept, answered) in [
        (
            "application/json, application/graphql-response+json;q=0.1",
            json,
        ),
        (
            "application/graphql-response+json, application/json;q=0.9",
            graphql_response,
        ),
        ("Application/GraphQL-Response+JSON", graphql_response),
        (
            "application/graphql-response+json;q=0.5, */*;q=0.4",
            graphql_response,
        ),
        ("*/*", json),
    ] {
        let answer = post(json!({ "query": "{ nope }" }).to_string(), json, accept)
            .send()
            .await
            .expect("POST");
        assert_eq!(answer.headers()["content-type"], answered, "{accept}");
        let status = if answered == json { 200 } else { 400 };
        assert_eq!(answer.status(), status, "{accept}");
        // An answer is for one bearer, and its form depends on `Accept`.
        assert_eq!(answer.headers()["cache-control"], "no-store", "{accept}");
        assert_eq!(answer.headers()["vary"], "accept", "{accept}");
    }
    // A request without a token is a 401 that names the scheme, as on every route.
    let anonymous = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", json)
        .header("accept", graphql_response)
        .body(json!({ "query": "{ __typename }" }).to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
}

/// GraphQL over HTTP's GET: `operationName` picks the operation of a document with
/// several (async-graphql's own parser reads `operation_name`, so the first ran).
async fn a_get_runs_the_operation_it_names(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let ask = |method: reqwest::Method, params: Vec<(&'static str, &'static str)>| {
        app.client
            .request(method, app.url("/graphql"))
            .query(&params)
            .bearer_auth(&bearer)
            .header("apollo-require-preflight", "true")
            .send()
    };
    let get = |params| ask(reqwest::Method::GET, params);
    let document = "query A { __typename } \
                    query B { attachments(ownerType: \"contract\") { totalCount } } \
                    mutation M { deleteAttachment(id: \"x\") }";
    let answer = get(vec![("query", document), ("operationName", "B")])
        .await
        .expect("GET");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("JSON");
    assert_eq!(data(&body, "attachments")["totalCount"], 0, "{body}");
    assert!(
        body["data"].get("__typename").is_none(),
        "B ran, not A: {body}"
    );

    let unknown = get(vec![("query", document), ("operationName", "Z")])
        .await
        .expect("GET");
    let body: Value = unknown.json().await.expect("JSON");
    assert!(body.get("data").is_none(), "no operation Z: {body}");
    assert!(!codes(&body).is_empty(), "{body}");

    let mutation = get(vec![("query", document), ("operationName", "M")])
        .await
        .expect("GET");
    assert_eq!(mutation.status(), 405, "a mutation picked over GET");

    // An empty name names none: one operation runs as if none were given.
    let single = get(vec![("query", "{ __typename }"), ("operationName", "")])
        .await
        .expect("GET");
    let body: Value = single.json().await.expect("JSON");
    assert_eq!(body["data"]["__typename"], "Query", "{body}");

    let twice = get(vec![
        ("query", document),
        ("operationName", "A"),
        ("operationName", "B"),
    ])
    .await
    .expect("GET");
    assert_eq!(twice.status(), 400);
    let body: Value = twice.json().await.expect("JSON");
    let said = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(said.contains("given twice"), "{said}");

    // HEAD is answered as GET, without the body (it fell through to the POST rules).
    let head = ask(reqwest::Method::HEAD, vec![("query", "{ __typename }")])
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200);
    let page = app
        .client
        .head(app.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(page.status(), 200, "the playground");
    assert!(page.text().await.expect("body").is_empty());
}

/// A large body refused from its headers (no valid token) is read to its end before
/// the answer, as a proxy needs: nginx writes the whole body before it reads the
/// answer, and attache closed the connection after 1 MiB, so the client behind it
/// got nginx's HTML 502 instead of UNAUTHENTICATED. Here a client that does the
/// same, all of 16 MiB, then reads.
async fn a_large_body_refused_from_its_headers_still_gets_the_answer(setup: Setup) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn(setup).await;
    let host = app.base_url.trim_start_matches("http://").to_owned();
    let body = vec![b' '; 16 * 1024 * 1024];
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer not.a.token\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&body)
        .await
        .expect("the whole body is taken before the answer");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .expect("the answer, then the end");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("UNAUTHENTICATED"), "{answer}");
}

/// A path no route serves, or a method a route does not take, is answered like
/// every other refusal: a GraphQL-shaped JSON body with a code (axum's own answers
/// are empty), and `Allow` on a 405.
async fn unknown_routes_and_methods_are_answered_in_json(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    for (case, method, path, status, allow) in [
        ("no route", "GET", "/nope", 404, None),
        (
            "no route under /api",
            "GET",
            "/api/attachments/x",
            404,
            None,
        ),
        (
            "POST a download",
            "POST",
            "/api/attachments/x/download",
            405,
            Some("GET,HEAD"),
        ),
        (
            "PUT /graphql",
            "PUT",
            "/graphql",
            405,
            Some("GET,HEAD,POST"),
        ),
        ("POST /healthz", "POST", "/healthz", 405, Some("GET,HEAD")),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let answer = app
            .client
            .request(method, app.url(path))
            .bearer_auth(&bearer)
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status(), status, "{case}");
        let allowed = answer
            .headers()
            .get("allow")
            .map(|value| value.to_str().expect("ascii").to_owned());
        assert_eq!(allowed.as_deref(), allow, "{case}");
        assert!(
            answer.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("application/json"),
            "{case}"
        );
        let body: Value = answer.json().await.expect("a JSON body");
        let said = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            !said.is_empty() && !codes(&body).is_empty(),
            "{case}: {body}"
        );
    }
}

crate::matrix!(
    once: unknown_routes_and_methods_are_answered_in_json,
    a_large_body_refused_from_its_headers_still_gets_the_answer,
);

crate::matrix!(
    a_get_runs_the_operation_it_names,
    cors_answers_only_the_configured_origins,
    oversize_bodies_get_413_before_parsing,
    depth_and_complexity_are_limited,
    simple_requests_need_a_preflight_header,
    browsers_get_the_playground_and_probes_answer,
    request_errors_follow_graphql_over_http,
);
