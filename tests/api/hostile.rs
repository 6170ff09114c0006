//! Hostile requests against the real binary (its memory is its own to measure): each
//! shape an attacker can send for a few kilobytes, with and without a token, gets a
//! refusal while the process stays up, `/healthz` answers, its RSS stays under a
//! stated bound and `/metrics` stays small. Issue 21; SPEC 6.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    Served, Setup, UPLOAD, codes, data, hs256, http_client, now, pdf, post_multipart,
};

/// How much a hostile request may grow the server's resident memory.
const RSS_GROWTH_MIB: f64 = 64.0;
/// How large `/metrics` may be after every flood here.
const METRICS_BYTES: usize = 64 * 1024;

fn token(tenant: &str) -> String {
    hs256(json!({ "sub": "attacker", "tenant_id": tenant, "exp": now() + 600 }))
}

fn rss_mib(served: &Served) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", served.child.id()))
        .expect("the server is alive");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

async fn post(served: &Served, bearer: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = http_client()
        .post(format!("{}/graphql", served.base_url))
        .json(body);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The server is alive, answers `/healthz`, grew less than [`RSS_GROWTH_MIB`] since
/// `before`, and `/metrics` is small.
async fn assert_unharmed(served: &mut Served, before: f64, what: &str) {
    assert!(
        served.child.try_wait().expect("wait").is_none(),
        "{what}: the server exited\n{}",
        served.log()
    );
    let client = http_client();
    let health = client
        .get(format!("{}/healthz", served.base_url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("/healthz answers");
    assert_eq!(health.status(), 200, "{what}");
    let grown = rss_mib(served) - before;
    assert!(grown < RSS_GROWTH_MIB, "{what}: RSS grew by {grown:.0} MiB");
    let metrics = client
        .get(format!("{}/metrics", served.base_url))
        .send()
        .await
        .expect("/metrics")
        .bytes()
        .await
        .expect("metrics body");
    assert!(
        metrics.len() < METRICS_BYTES,
        "{what}: /metrics has {} bytes",
        metrics.len()
    );
}

/// How many contract attachments `bearer`'s tenant has (of `owner`, when given).
async fn contracts_stored(served: &Served, bearer: &str, owner: Option<&str>) -> u64 {
    let query = "query($owner: String) { attachments(ownerType: \"contract\", ownerId: $owner) { totalCount } }";
    let listed = post(
        served,
        Some(bearer),
        &json!({ "query": query, "variables": { "owner": owner } }),
    )
    .await
    .1;
    data(&listed, "attachments")["totalCount"]
        .as_u64()
        .unwrap_or_else(|| panic!("a count: {listed}"))
}

/// `query`, sent with `bearer`, is refused as BAD_USER_INPUT.
async fn refuses(served: &Served, bearer: &str, query: &str, what: &str) {
    let (status, body) = post(served, Some(bearer), &json!({ "query": query })).await;
    assert_refused(status, &body, "BAD_USER_INPUT", what);
}

/// A refusal: a GraphQL error with `code` (HTTP 200), without `data`.
fn assert_refused(status: u16, body: &Value, code: &str, what: &str) {
    assert_eq!(status, 200, "{what}: {body}");
    assert_eq!(codes(body), vec![code.to_owned()], "{what}: {body}");
    assert!(
        body.get("data").is_none(),
        "{what}: a request error has no data: {body}"
    );
}

/// `/healthz` answers 200 within `within` while `what` goes on.
async fn assert_healthy_within(served: &Served, within: Duration, what: &str) {
    let started = Instant::now();
    let health = http_client()
        .get(format!("{}/healthz", served.base_url))
        .timeout(within + Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|err| panic!("/healthz answers while {what}: {err}"));
    assert_eq!(health.status(), 200, "{what}");
    assert!(
        started.elapsed() < within,
        "{what}: {:?}",
        started.elapsed()
    );
}

/// POSTs `body` as it is to `/graphql`; the status, the answer's text and how long
/// it took.
async fn post_raw(served: &Served, bearer: &str, body: String) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = http_client()
        .post(format!("{}/graphql", served.base_url))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, text, started.elapsed())
}

/// The validator walks every operation of a document, whichever runs, and reports
/// each variable a fragment reads once per operation that spreads it: 999
/// operations spreading a fragment that reads 500 undefined variables made half a
/// million errors (tens of MB) from 17 KB. Directives and argument values now count
/// toward MAX_EXPANDED_FIELDS. An unknown name is measured against every known one
/// and echoed: a name is at most 256 bytes. Messages that quote the client's input
/// (a line that does not parse, serde's "invalid type") are cut at 1,000 characters.
async fn answers_to_hostile_documents_stay_small(_: Setup) {
    let mut served = Served::start(&[]).await;
    let bearer = token("hostile");
    let before = rss_mib(&served);
    let variables: Vec<String> = (0..500).map(|i| format!("$a{i}")).collect();
    let operations: String = (0..999)
        .map(|i| format!("query Q{i} {{ ...F }} "))
        .collect();
    let query = format!(
        "{operations} fragment F on Query @skip(if: [{}]) {{ __typename }}",
        variables.join(",")
    );
    let fanned = json!({ "query": query, "operationName": "Q0" });
    let long_name = "A".repeat(100_000);
    let cases = [
        (
            "undefined variables in 999 operations",
            fanned.to_string(),
            "MAX_EXPANDED_FIELDS",
        ),
        (
            "a 100 KB field name",
            json!({ "query": format!("{{ attachment(id: \"x\") {{ {long_name} }} }}") })
                .to_string(),
            "longer than 256 bytes",
        ),
        (
            "a 100 KB argument name",
            json!({ "query": format!("{{ attachment({long_name}: \"x\") {{ id }} }}") })
                .to_string(),
            "longer than 256 bytes",
        ),
        (
            "a 1 MB line that does not parse",
            json!({ "query": format!("{{ attachment(id: \"{}\") ", "x".repeat(1 << 20)) })
                .to_string(),
            "line 1, column",
        ),
        (
            "a 1 MB string where variables go",
            json!({ "query": "{ __typename }", "variables": "v".repeat(1 << 20) }).to_string(),
            "invalid",
        ),
    ];
    for (what, body, says) in cases {
        let (status, text, took) = post_raw(&served, &bearer, body).await;
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
        assert!(
            text.len() < 4096,
            "{what}: a {} byte answer ({status})",
            text.len()
        );
        assert!(text.contains(says), "{what}: {text}");
        assert!(
            text.contains("BAD_USER_INPUT") || text.contains("GRAPHQL_PARSE_FAILED"),
            "{what}: {text}"
        );
    }
    assert_unharmed(&mut served, before, "hostile documents").await;
}

/// Parsed documents are kept for the next request that sends the same text, within
/// a budget of nodes: 600 distinct documents of 2,000 fields each (4 KB of text,
/// refused by complexity once parsed) once held 250 MB of syntax trees.
async fn kept_documents_hold_bounded_memory(_: Setup) {
    let mut served = Served::start(&[]).await;
    let bearer = token("hostile");
    let before = rss_mib(&served);
    let fields = "a ".repeat(1999);
    for i in 0..600 {
        let query = format!("{{{fields}}} # {i}");
        let (status, body) = post(&served, Some(&bearer), &json!({ "query": query })).await;
        assert_refused(status, &body, "BAD_USER_INPUT", "2,000 fields");
    }
    assert_unharmed(&mut served, before, "kept documents").await;
}

/// A request's method is the client's to choose, as long as the request's head:
/// the log names one outside the standard ones `other`, as the metrics do (a 10 KB
/// method made a 10 KB log line).
async fn log_lines_stay_short_whatever_the_method(_: Setup) {
    let mut served = Served::start(&[]).await;
    let before = rss_mib(&served);
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&address).await.expect("connect");
    let method = "X".repeat(10_000);
    tcp.write_all(
        format!("{method} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let answered = answer(&mut tcp, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert!(answered.starts_with("HTTP/1.1 "), "{answered}");
    assert_unharmed(&mut served, before, "a long method").await;
    let log = served.log();
    let longest = log.lines().map(str::len).max().unwrap_or_default();
    assert!(longest < 2048, "a {longest} byte log line");
    assert!(log.contains("method=other"), "named `other`");
}

/// A file of byte-order marks and nothing else (valid UTF-8, so it reaches type
/// detection) is text: markup is looked for behind one mark, not behind each, which
/// was a recursion per mark, deep enough to overflow a worker's stack and end the
/// process for every tenant.
async fn a_file_of_byte_order_marks_is_text(_: Setup) {
    let mut served = Served::start(&[]).await;
    let before = rss_mib(&served);
    let marks = b"\xEF\xBB\xBF".repeat(500_000);
    let (status, body) = post(
        &served,
        Some(&token("marks")),
        &json!({ "query": UPLOAD, "variables": { "input": {
            "ownerType": "contract", "ownerId": "c", "filename": "marks.txt",
            "base64": STANDARD.encode(&marks) }}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data(&body, "uploadAttachment")["contentType"], "text/plain");
    assert_unharmed(&mut served, before, "a file of byte-order marks").await;
}

/// Long query texts are parsed beside the runtime's workers: four 3 MB documents
/// (a comment, which the parser reads at some 10 MB a second in a release build)
/// held both workers, and `/healthz` waited seconds behind them.
async fn long_documents_leave_the_workers_free(_: Setup) {
    let served = Served::start(&[]).await;
    let bearer = token("long");
    let body =
        json!({ "query": format!("{{ __typename }}\n#{}", "x".repeat(3_000_000)) }).to_string();
    // `/healthz`, again and again, until the parses are answered.
    let parsed = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn({
        let (url, parsed) = (format!("{}/healthz", served.base_url), parsed.clone());
        async move {
            let client = http_client();
            let mut slowest = Duration::ZERO;
            while !parsed.load(Ordering::Relaxed) {
                let started = Instant::now();
                let health = client.get(&url).send().await.expect("/healthz");
                assert_eq!(health.status(), 200);
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        }
    });
    let posts = (0..4).map(|_| post_raw(&served, &bearer, body.clone()));
    let answers = futures::future::join_all(posts).await;
    parsed.store(true, Ordering::Relaxed);
    let slowest = watch.await.expect("the watch");
    for (status, answered, _) in answers {
        assert_eq!(status, 200);
        assert!(answered.contains("\"__typename\":\"Query\""), "{answered}");
    }
    assert!(
        slowest < Duration::from_secs(2),
        "/healthz waited {slowest:?} behind the parses"
    );
}

/// A client that asks `Expect: 100-continue` and is refused from its headers (no
/// token, a body over the limit) hears the refusal at once, without `100 Continue`:
/// it was invited to send, then its bytes were drained and thrown away (up to 1 s
/// and 1 MiB anonymously, 10 s and tens of MB over the limit). An HTTP/1.1 request
/// with no `Host`, or two, is refused (RFC 9112 §3.2).
async fn refusals_from_the_head_are_final_answers(_: Setup) {
    let served = Served::start(&["--max-request-bytes", "65536"]).await;
    let bearer = token("expecting");
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let with_token = format!("Authorization: Bearer {bearer}\r\n");
    for (case, auth, length, status) in [
        ("no token", "", 100_000_000, "HTTP/1.1 200"),
        (
            "over the limit",
            with_token.as_str(),
            100_000,
            "HTTP/1.1 413",
        ),
    ] {
        let mut tcp = TcpStream::connect(&address).await.expect("connect");
        let head = format!(
            "POST /graphql HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.expect("send");
        let started = Instant::now();
        let said = answer(&mut tcp, Duration::from_secs(5))
            .await
            .expect("answered, and the connection closed");
        assert!(said.starts_with(status), "{case}: {said}");
        assert!(!said.contains("100 Continue"), "{case}: {said}");
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "{case}: answered at once, not after a drain"
        );
    }
    for (case, hosts) in [("no Host", ""), ("two", "Host: a\r\nHost: b\r\n")] {
        let mut tcp = TcpStream::connect(&address).await.expect("connect");
        let head = format!("GET /healthz HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.expect("send");
        let said = answer(&mut tcp, Duration::from_secs(5))
            .await
            .expect("answered");
        assert!(said.starts_with("HTTP/1.1 400"), "{case}: {said}");
        assert!(said.contains("one `Host` header"), "{case}: {said}");
    }
}

/// Every refusal's code is in its request's summary log line, those answered before
/// `/graphql` ran (a 413) and the REST routes' (a 401) too: they were missing.
async fn every_refusal_names_its_code_in_the_log(_: Setup) {
    let served = Served::start(&["--max-request-bytes", "65536"]).await;
    let bearer = token("logged");
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&address).await.expect("connect");
    // Past what a refusal drains (64 MiB): answered at once.
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("send");
    let mut status = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut status))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(&status, b"HTTP/1.1 413");
    let missing = format!(
        "{}/api/attachments/{}/download",
        served.base_url,
        uuid::Uuid::nil()
    );
    let refused = http_client().get(missing).send().await.expect("GET");
    assert_eq!(refused.status(), 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = served.log();
    for (status, code) in [
        ("status=413", "PAYLOAD_TOO_LARGE"),
        ("status=401", "UNAUTHENTICATED"),
    ] {
        let line = log
            .lines()
            .find(|line| line.contains(status))
            .unwrap_or_else(|| panic!("no {status} line:\n{log}"));
        assert!(line.contains(code), "{line}");
    }
}

async fn nesting_through_every_construct_is_refused(_: Setup) {
    let mut served = Served::start(&[]).await;
    let bearer = token("hostile");
    let before = rss_mib(&served);
    for depth in [1_500, 5_000, 50_000] {
        let (open, close) = ("[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth));
        let documents = [
            format!("{{__typename @skip(if: {open}{close})}}"),
            format!("{{attachment(id: {objects}) {{ id }}}}"),
            format!("query($v: [ID] = {open}{close}) {{ __typename }}"),
            format!("query($v: {open}ID{close}) {{ __typename }}"),
            format!(
                "{{{}__typename{}}}",
                "__schema { types { ".repeat(depth),
                "} }".repeat(depth)
            ),
        ];
        for document in &documents {
            let what = format!("nesting {depth}: {}", &document[..40]);
            let (status, body) = post(&served, Some(&bearer), &json!({ "query": document })).await;
            assert_refused(status, &body, "BAD_USER_INPUT", &what);
            let (status, body) = post(&served, None, &json!({ "query": document })).await;
            assert_refused(status, &body, "UNAUTHENTICATED", &what);
        }
        // The query string of a GET goes through the same scan (URLs stay short).
        if depth > 5_000 {
            continue;
        }
        let response = http_client()
            .get(format!("{}/graphql", served.base_url))
            .query(&[("query", documents[0].as_str())])
            .bearer_auth(&bearer)
            .header("apollo-require-preflight", "1")
            .send()
            .await
            .map_err(|err| err.without_url())
            .expect("GET");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(codes(&body), vec!["BAD_USER_INPUT"], "GET nesting {depth}");
    }
    // Deep JSON variables stop at serde_json's recursion limit.
    let variables = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let raw = format!(
        r#"{{"query": "query($v: ID) {{ __typename }}", "variables": {{"v": {variables}}}}}"#
    );
    let response = http_client()
        .post(format!("{}/graphql", served.base_url))
        .bearer_auth(&bearer)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    assert_unharmed(&mut served, before, "nesting").await;
}

async fn fragment_expansion_is_refused_early(_: Setup) {
    let mut served = Served::start(&[]).await;
    let bearer = token("hostile");
    let before = rss_mib(&served);
    let doubling = |levels: usize, spread: &dyn Fn(usize) -> String| {
        let fragments: String = (0..levels)
            .map(|i| format!("fragment F{i} on Query {{ {} }} ", spread(i + 1)))
            .collect();
        format!("{{ ...F0 }} {fragments} fragment F{levels} on Query {{ __typename }}")
    };
    let twice = |next: usize| format!("...F{next} ...F{next}");
    let inline = |next: usize| format!("... on Query {{ ...F{next} }} ... {{ ...F{next} }}");
    let aliased = |next: usize| format!("a: __typename b: __typename ...F{next} ...F{next}");
    for levels in [22, 24, 30] {
        for (shape, spread) in [
            ("spreads", &twice as &dyn Fn(usize) -> String),
            ("inline fragments", &inline),
            ("aliases", &aliased),
        ] {
            let query = doubling(levels, spread);
            let what = format!("{levels} levels of {shape}");
            let started = Instant::now();
            let (status, body) = post(&served, Some(&bearer), &json!({ "query": query })).await;
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{what}: {:?}",
                started.elapsed()
            );
            assert_refused(status, &body, "BAD_USER_INPUT", &what);
        }
    }
    // A flood of introspection fields and `__typename` aliases counts like any field.
    let typenames: String = (0..780_000).map(|i| format!("a{i}:__typename ")).collect();
    refuses(
        &served,
        &bearer,
        &format!("{{{typenames}}}"),
        "780,000 __typename aliases",
    )
    .await;
    let thousand: String = (0..1000).map(|i| format!("a{i}:__typename ")).collect();
    refuses(
        &served,
        &bearer,
        &format!("{{{thousand}}}"),
        "a thousand __typename aliases",
    )
    .await;
    let schema: String = (0..400)
        .map(|i| format!("s{i}: __schema {{ queryType {{ name }} }} "))
        .collect();
    refuses(
        &served,
        &bearer,
        &format!("{{{schema}}}"),
        "400 introspection aliases",
    )
    .await;
    let fits: String = (0..900).map(|i| format!("a{i}:__typename ")).collect();
    let (_, body) = post(
        &served,
        Some(&bearer),
        &json!({ "query": format!("{{{fits}}}") }),
    )
    .await;
    assert_eq!(body["data"]["a899"], "Query", "900 aliases fit the budget");
    assert_unharmed(&mut served, before, "fragments").await;
}

async fn batches_are_bounded(_: Setup) {
    let mut served = Served::start(&[]).await;
    let bearer = token("hostile");
    let before = rss_mib(&served);
    let eleven: Vec<Value> = (0..11)
        .map(|_| json!({ "query": "{ __typename }" }))
        .collect();
    let (status, body) = post(&served, Some(&bearer), &json!(eleven)).await;
    assert_refused(status, &body, "BAD_USER_INPUT", "11 operations");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("MAX_BATCH_OPERATIONS")
    );
    // One complexity budget for the whole array.
    let listing: String = (0..240)
        .map(|i| {
            format!("l{i}: attachments(ownerType: \"contract\", first: 100) {{ totalCount }} ")
        })
        .collect();
    let ten: Vec<Value> = (0..10)
        .map(|_| json!({ "query": format!("{{{listing}}}") }))
        .collect();
    let started = Instant::now();
    let (status, body) = post(&served, Some(&bearer), &json!(ten)).await;
    assert_refused(
        status,
        &body,
        "BAD_USER_INPUT",
        "10 copies of a 240-alias listing",
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Made-up operation names and methods mint no series.
    for round in 0..50 {
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({ "query": format!("query op{round}_{i} {{ __typename }}"), "operationName": format!("op{round}_{i}") }))
            .collect();
        let (status, _) = post(&served, Some(&bearer), &json!(batch)).await;
        assert_eq!(status, 200);
        let anonymous: Vec<Value> = (0..10)
            .map(|i| json!({ "query": "{ __typename }", "operationName": format!("anon{round}_{i}") }))
            .collect();
        post(&served, None, &json!(anonymous)).await;
    }
    let client = http_client();
    for i in 0..200 {
        let method = reqwest::Method::from_bytes(format!("M{i}").as_bytes()).expect("a method");
        let _ = client
            .request(method, format!("{}/nowhere/{i}", served.base_url))
            .send()
            .await;
    }
    let metrics = client
        .get(format!("{}/metrics", served.base_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(!metrics.contains("M199"), "methods are a bounded label");
    assert!(
        !metrics.contains("op49_9"),
        "the 500th name has no series of its own"
    );
    assert!(
        !metrics.contains("anon"),
        "refused operations name no series"
    );
    assert!(metrics.contains("operation=\"other\""));
    assert_unharmed(&mut served, before, "batches").await;
}

/// Files per request: aliases, batch arrays and multipart parts all count.
async fn files_are_counted_across_the_request(_: Setup) {
    let mut served = Served::start(&["--max-batch-files", "20"]).await;
    let bearer = token("files");
    let before = rss_mib(&served);
    let input = |i: usize| json!({ "ownerType": "contract", "ownerId": "c-1", "filename": format!("f{i}.txt"), "base64": STANDARD.encode(format!("{i}\n")) });
    let eleven: Vec<Value> = (0..11).map(input).collect();
    let aliases = "mutation($a: [UploadAttachmentInput!]!, $b: [UploadAttachmentInput!]!) { a: uploadAttachments(input: $a) { id } b: uploadAttachments(input: $b) { id } }";
    let (status, body) = post(
        &served,
        Some(&bearer),
        &json!({ "query": aliases, "variables": { "a": eleven, "b": eleven } }),
    )
    .await;
    assert_refused(status, &body, "BAD_USER_INPUT", "2 aliases x 11 files");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("MAX_BATCH_FILES")
    );
    let ops: Vec<Value> = (0..3)
        .map(|i| json!({ "query": "mutation($a: [UploadAttachmentInput!]!) { uploadAttachments(input: $a) { id } }", "variables": { "a": (0..8).map(|j| input(i * 8 + j)).collect::<Vec<_>>() } }))
        .collect();
    let (status, body) = post(&served, Some(&bearer), &json!(ops)).await;
    assert_refused(status, &body, "BAD_USER_INPUT", "3 operations x 8 files");
    let literal: String = (0..21)
        .map(|i| format!("u{i}: uploadAttachment(input: {{ownerType: \"contract\", ownerId: \"c\", filename: \"x.txt\", base64: \"eA==\"}}) {{ id }} "))
        .collect();
    let (status, body) = post(
        &served,
        Some(&bearer),
        &json!({ "query": format!("mutation {{{literal}}}") }),
    )
    .await;
    assert_refused(status, &body, "BAD_USER_INPUT", "21 literal aliases");
    // A list that the operation's own default for its variable holds.
    let preset: String = (0..21)
        .map(|i| format!("{{ownerType: \"contract\", ownerId: \"c\", filename: \"{i}.txt\", base64: \"eA==\"}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (status, body) = post(
        &served,
        Some(&bearer),
        &json!({ "query": format!("mutation($a: [UploadAttachmentInput!]! = [{preset}]) {{ uploadAttachments(input: $a) {{ id }} }}") }),
    )
    .await;
    assert_refused(
        status,
        &body,
        "BAD_USER_INPUT",
        "21 files in a variable's default",
    );
    // A named operation sent without `operationName` runs all the same: before, it
    // was counted as none (300 files stored by one request).
    let named =
        "mutation Named($a: [UploadAttachmentInput!]!) { uploadAttachments(input: $a) { id } }";
    let (status, body) = post(
        &served,
        Some(&bearer),
        &json!({ "query": named, "variables": { "a": (0..21).map(input).collect::<Vec<_>>() } }),
    )
    .await;
    assert_refused(
        status,
        &body,
        "BAD_USER_INPUT",
        "21 files in a named operation without its name",
    );

    // 21 multipart parts, one alias each.
    let fields: String = (0..21)
        .map(|i| format!("u{i}: uploadAttachmentFile(input: {{ownerType: \"contract\", ownerId: \"c\", file: $f{i}}}) {{ id }} "))
        .collect();
    let variables: String = (0..21)
        .map(|i| format!("$f{i}: Upload!"))
        .collect::<Vec<_>>()
        .join(", ");
    let operations = json!({ "query": format!("mutation({variables}) {{{fields}}}"), "variables": (0..21).map(|i| (format!("f{i}"), Value::Null)).collect::<serde_json::Map<_, _>>() });
    let map: serde_json::Map<String, Value> = (0..21)
        .map(|i| (i.to_string(), json!([format!("variables.f{i}")])))
        .collect();
    let mut form = reqwest::multipart::Form::new()
        .text("operations", operations.to_string())
        .text("map", Value::Object(map).to_string());
    for i in 0..21 {
        form = form.part(
            i.to_string(),
            reqwest::multipart::Part::bytes(format!("{i}\n").into_bytes())
                .file_name("p.txt")
                .mime_str("text/plain")
                .expect("mime"),
        );
    }
    let (status, body) = post_multipart(&served.base_url, &bearer, form).await;
    assert_eq!(status, 200, "a GraphQL error, as SPEC 6 has it: {body}");
    assert_eq!(
        codes(&body),
        vec!["BAD_USER_INPUT"],
        "21 multipart parts: {body}"
    );

    assert_eq!(
        contracts_stored(&served, &bearer, None).await,
        0,
        "nothing stored by a refused request"
    );
    assert_unharmed(&mut served, before, "files").await;
}

/// async-graphql copies a variable's value for every argument that reads it: a
/// large string read by hundreds of aliases cost its size hundreds of times (a
/// 14 MB cursor read by 499 aliases took 4.9 s of CPU). A variable now counts at
/// each of its uses, and a literal at each spread of its fragment, against
/// MAX_REQUEST_BYTES, before anything runs.
async fn a_variable_counts_at_each_use(_: Setup) {
    let mut served = Served::start(&["--max-request-bytes", "2000000"]).await;
    let bearer = token("copies");
    let before = rss_mib(&served);
    let large = "A".repeat(1_100_000);
    let page = "attachments(ownerType: \"contract\", first: 0, after: $c) { __typename }";
    // One use passes the bound (and the cursor is no cursor).
    let (status, body) = post(
        &served,
        Some(&bearer),
        &json!({ "query": format!("query($c: String) {{ {page} }}"), "variables": { "c": large } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(codes(&body), vec!["BAD_USER_INPUT".to_owned()], "{body}");
    assert!(
        body.to_string().contains("invalid cursor") && body.to_string().contains("endCursor"),
        "what a cursor is: {body}"
    );
    let aliases = |count: usize, field: &str| -> String {
        (0..count).map(|i| format!("a{i}: {field} ")).collect()
    };
    let refused = [
        (
            "a cursor read twice",
            format!("query($c: String) {{ {} }}", aliases(2, page)),
            json!({ "c": large }),
        ),
        (
            "an id read by 400 aliases",
            format!(
                "query($c: ID!) {{ {} }}",
                aliases(400, "attachment(id: $c) { id }")
            ),
            json!({ "c": "B".repeat(10_000) }),
        ),
        (
            "a variable's default read twice",
            format!(
                "query($c: String = \"{}\") {{ {} }}",
                "C".repeat(1_100_000),
                aliases(2, page)
            ),
            json!({}),
        ),
        (
            "a literal in a fragment spread twice",
            format!(
                "{{ ...F ... on Query {{ ...F }} }} fragment F on Query {{ attachment(id: \"{}\") {{ id }} }}",
                "D".repeat(1_100_000)
            ),
            json!({}),
        ),
        (
            "a named operation sent without its name",
            format!("query Named($c: String) {{ {} }}", aliases(2, page)),
            json!({ "c": large }),
        ),
        (
            "the operation's own directives",
            format!(
                "query($c: Boolean) {} {{ __typename }}",
                "@skip(if: $c) ".repeat(300)
            ),
            json!({ "c": "F".repeat(10_000) }),
        ),
        (
            "a fragment defined and never spread",
            format!(
                "query($c: ID!) {{ __typename }} fragment Unused on Query {{ {} }}",
                aliases(300, "attachment(id: $c) { id }")
            ),
            json!({ "c": "G".repeat(10_000) }),
        ),
        (
            "a directive's argument read by 300 aliases",
            format!(
                "query($c: String) {{ {} }}",
                aliases(300, "__typename @include(if: $c)")
            ),
            json!({ "c": "E".repeat(10_000) }),
        ),
    ];
    for (what, query, variables) in refused {
        let (status, body) = post(
            &served,
            Some(&bearer),
            &json!({ "query": query, "variables": variables }),
        )
        .await;
        assert_refused(status, &body, "BAD_USER_INPUT", what);
        assert!(
            body.to_string().contains("MAX_REQUEST_BYTES"),
            "{what}: the message names the setting: {body}"
        );
    }
    assert_unharmed(&mut served, before, "copies").await;
}

/// Complexity counts a page of 100 rows as one field: the rows a request lists are
/// counted on their own, pages and counts, through aliases, fragments, variables
/// and batches, before anything runs.
async fn listed_rows_are_counted_before_anything_runs(_: Setup) {
    let mut served = Served::start(&[]).await;
    let bearer = token("rows");
    let store = "mutation($a: [UploadAttachmentInput!]!) { uploadAttachments(input: $a) { id } }";
    for batch in 0..5 {
        let files: Vec<Value> = (0..20)
            .map(|i| json!({ "ownerType": "contract", "ownerId": "c-1", "filename": format!("{batch}-{i}.txt"), "base64": "eA==" }))
            .collect();
        let (status, body) = post(
            &served,
            Some(&bearer),
            &json!({ "query": store, "variables": { "a": files } }),
        )
        .await;
        assert_eq!((status, codes(&body).len()), (200, 0), "{body}");
    }
    let before = rss_mib(&served);
    let pages = |count: usize, page: &str| -> String {
        (0..count)
            .map(|i| format!("l{i}: attachments(ownerType: \"contract\", {page}) {{ nodes {{ id filename url }} }} "))
            .collect()
    };
    // 20 full pages are the most a request lists; the server answered 90 before.
    let (status, body) = post(
        &served,
        Some(&bearer),
        &json!({ "query": format!("{{{}}}", pages(20, "first: 100")) }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["l19"]["nodes"].as_array().map(Vec::len),
        Some(100),
        "{body}"
    );
    let refused = [
        (
            "21 pages of 100",
            format!("{{{}}}", pages(21, "first: 100")),
            json!({}),
        ),
        (
            "101 pages of 20 by default",
            format!("{{{}}}", pages(101, "ownerId: \"c-1\"")),
            json!({}),
        ),
        (
            "21 pages of a variable's 100",
            format!("query($n: Int) {{{}}}", pages(21, "first: $n")),
            json!({ "n": 100 }),
        ),
        (
            "21 pages in a named operation sent without its name",
            format!("query Named {{{}}}", pages(21, "first: 100")),
            json!({}),
        ),
        (
            "21 pages of a variable's default",
            format!("query($n: Int = 100) {{{}}}", pages(21, "first: $n")),
            json!({}),
        ),
        (
            "21 counts in a fragment",
            format!(
                "{{ {} }} fragment C on AttachmentConnection {{ totalCount }}",
                (0..21)
                    .map(|i| format!(
                        "c{i}: attachments(ownerType: \"contract\", first: 0) {{ ...C }} "
                    ))
                    .collect::<String>()
            ),
            json!({}),
        ),
    ];
    for (what, query, variables) in refused {
        let (status, body) = post(
            &served,
            Some(&bearer),
            &json!({ "query": query, "variables": variables }),
        )
        .await;
        assert_refused(status, &body, "BAD_USER_INPUT", what);
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("MAX_QUERY_ROWS"), "{what}: {message}");
    }
    // One budget for a batch: ten pages of 100 with their counts fit, one more does not.
    let page = json!({ "query": "{ attachments(ownerType: \"contract\", first: 100) { totalCount nodes { id } } }" });
    let ten: Vec<Value> = (0..10).map(|_| page.clone()).collect();
    let (status, body) = post(&served, Some(&bearer), &json!(ten)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[9]["data"]["attachments"]["totalCount"], 100, "{body}");
    let mut eleven_pages = ten.clone();
    eleven_pages[9] = json!({ "query": "{ a: attachments(ownerType: \"contract\", first: 100) { totalCount } b: attachments(ownerType: \"contract\", first: 1) { nodes { id } } }" });
    let (status, body) = post(&served, Some(&bearer), &json!(eleven_pages)).await;
    assert_refused(status, &body, "BAD_USER_INPUT", "a batch one row over");
    assert_unharmed(&mut served, before, "rows").await;
}

/// An `Upload` names a part of a multipart body by a placeholder that the `map`
/// writes. A client that wrote one itself, with no number after it, panicked the
/// request before its scope was even checked (async-graphql unwraps the number): the
/// connection dropped without an answer. Now it is a clear error however often it is
/// sent: FORBIDDEN for a read-only token, before any argument is read, and
/// BAD_USER_INPUT for a writer (a field's error: the mutations before it have run,
/// so it is no request error, which GraphQL over HTTP answers 400 without data).
async fn a_forged_file_placeholder_is_an_error(_: Setup) {
    let mut served = Served::start(&[]).await;
    let reader = hs256(
        json!({ "sub": "attacker", "tenant_id": "forged", "exp": now() + 600, "scope": "attachments:read" }),
    );
    let writer = token("forged");
    let mutation = "mutation($f: Upload!) { uploadAttachmentFile(input: {ownerType: \"contract\", ownerId: \"c\", file: $f}) { id } }";
    let literal = "mutation { uploadAttachmentFile(input: {ownerType: \"contract\", ownerId: \"c\", file: \"#__graphql_file__:x\"}) { id } }";
    let preset = "mutation($f: Upload! = \"#__graphql_file__:\") { uploadAttachmentFile(input: {ownerType: \"contract\", ownerId: \"c\", file: $f}) { id } }";
    let forged = [
        json!({ "query": mutation, "variables": { "f": "#__graphql_file__:x" } }),
        json!({ "query": mutation, "variables": { "f": "#__graphql_file__:99999999999999999999999" } }),
        json!({ "query": literal }),
        json!({ "query": preset }),
    ];
    let before = rss_mib(&served);
    for round in 0..50 {
        for body in &forged {
            let (status, answer) = post(&served, Some(&reader), body).await;
            assert_eq!(status, 200, "round {round}, {body}: {answer}");
            assert_eq!(codes(&answer), vec!["FORBIDDEN"], "{body}: {answer}");
            let (status, answer) = post(&served, Some(&writer), body).await;
            assert_eq!(status, 200, "round {round}, {body}: {answer}");
            assert_eq!(codes(&answer), vec!["BAD_USER_INPUT"], "{body}: {answer}");
            let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("Upload") || message.contains("multipart"),
                "{body}: {answer}"
            );
        }
    }
    let ran_first = json!({ "query": "mutation { a: __typename b: uploadAttachmentFile(input: {ownerType: \"contract\", ownerId: \"c\", file: \"x\"}) { id } }" });
    let answer = http_client()
        .post(format!("{}/graphql", served.base_url))
        .bearer_auth(&writer)
        .header("accept", "application/graphql-response+json")
        .json(&ran_first)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 200, "a field's error, not a request's");
    let answer: Value = answer.json().await.expect("JSON");
    assert_eq!(codes(&answer), vec!["BAD_USER_INPUT"], "{answer}");
    // A placeholder with a number names no part of a JSON request: the same answer
    // as a missing part.
    let (status, answer) = post(
        &served,
        Some(&token("forged")),
        &json!({ "query": mutation, "variables": { "f": "#__graphql_file__:0" } }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(codes(&answer), vec!["BAD_USER_INPUT"], "{answer}");
    assert!(!served.log().contains("panicked"), "{}", served.log());
    assert_unharmed(&mut served, before, "forged placeholders").await;
}

/// Small JSON values within `MAX_REQUEST_BYTES`, parsed, would take about a hundred
/// bytes each: they are counted first, in a JSON body and in a multipart body's
/// `operations` and `map`.
async fn json_values_are_counted_before_parsing(_: Setup) {
    let mut served = Served::start(&[]).await;
    let bearer = token("values");
    let before = rss_mib(&served);
    // 2 million zeros: 4 MB of text, some 200 MB once parsed.
    let zeros = format!("[{}0]", "0,".repeat(2_000_000));
    let body = format!(r#"{{"query": "{{ __typename }}", "variables": {{"v": {zeros}}}}}"#);
    let sends = (0..4).map(|_| {
        http_client()
            .post(format!("{}/graphql", served.base_url))
            .bearer_auth(&bearer)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    });
    for answer in futures::future::join_all(sends).await {
        let answer = answer.expect("an answer");
        assert_eq!(answer.status(), 400);
        let body: Value = answer.json().await.expect("JSON");
        assert_eq!(codes(&body), vec!["BAD_USER_INPUT"], "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("MAX_JSON_VALUES"), "{message}");
    }
    let many_paths = format!(r#"{{"0": {zeros}}}"#);
    for (operations, map) in [
        (body.as_str(), "{}"),
        (r#"{"query": "{ __typename }"}"#, many_paths.as_str()),
    ] {
        let form = reqwest::multipart::Form::new()
            .text("operations", operations.to_owned())
            .text("map", map.to_owned());
        let (status, body) = post_multipart(&served.base_url, &bearer, form).await;
        assert_eq!(status, 400, "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("MAX_JSON_VALUES"), "{message}");
    }
    // A GET's query string: its variables and extensions are counted too (a head of
    // 64 KiB held some 30,000 values before).
    let encoded = format!("[{}0]", "0%2C".repeat(12_000));
    for name in ["variables", "extensions"] {
        let answer = http_client()
            .get(format!(
                "{}/graphql?query=%7B__typename%7D&{name}={encoded}",
                served.base_url
            ))
            .bearer_auth(&bearer)
            .header("apollo-require-preflight", "1")
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 400, "{name}");
        let body: Value = answer.json().await.expect("JSON");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("MAX_JSON_VALUES"), "{name}: {message}");
    }
    // Malformed JSON is named once, whichever part holds it.
    for (operations, map) in [("{", "{}"), (r#"{"query": "{ __typename }"}"#, "[")] {
        let form = reqwest::multipart::Form::new()
            .text("operations", operations)
            .text("map", map);
        let (status, body) = post_multipart(&served.base_url, &bearer, form).await;
        assert_eq!(status, 400, "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert_eq!(
            message.matches("invalid GraphQL request").count(),
            1,
            "{message}"
        );
    }
    assert_unharmed(&mut served, before, "JSON values").await;
    let fits = json!({ "query": "{ __typename }", "variables": { "v": vec![0; 9_000] } });
    let (status, body) = post(&served, Some(&bearer), &fits).await;
    assert_eq!(
        (status, &body["data"]["__typename"]),
        (200, &json!("Query")),
        "{body}"
    );
}

/// apollo-upload-client sends one part for a `File` passed twice: both uses store it.
async fn one_part_for_two_variables_stores_both(_: Setup) {
    let served = Served::start(&[]).await;
    let bearer = token("twice");
    let content = pdf();
    let map = json!({ "0": ["variables.a", "variables.b"] });
    let form = crate::helpers::two_files_form("byteSize sha256", map).part(
        "0",
        crate::helpers::file_part(&content, "c.pdf", "application/pdf"),
    );
    let (_, body) = post_multipart(&served.base_url, &bearer, form).await;
    assert!(body.get("errors").is_none(), "{body}");
    for alias in ["a", "b"] {
        assert_eq!(
            body["data"][alias]["byteSize"],
            content.len(),
            "{alias}: {body}"
        );
    }
}

/// Sends the head of a POST with a large announced body and one byte of it.
async fn half_sent_post(base: &str, path: &str, bearer: Option<&str>) -> TcpStream {
    let address = base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n{auth}Content-Length: 100000\r\n\r\n{{"
    );
    tcp.write_all(head.as_bytes()).await.expect("send");
    tcp
}

/// Connections at `MAX_CONNECTIONS` are kept while no other client waits. The cap
/// asked the oldest to close as soon as the last slot was taken, before the next
/// client came: the eighth keep-alive client of eight cut the first one off, with
/// no one waiting (and a cap of one, under a low open-file limit, cut nearly every
/// connection in turn).
async fn connections_at_the_cap_stay_open_until_another_client_comes(_: Setup) {
    let served = Served::start(&["--max-connections", "8"]).await;
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(TcpStream::connect(&address).await.expect("connect"));
    }
    for round in 0..4 {
        for (client, tcp) in clients.iter_mut().enumerate() {
            let said = kept_alive_get(tcp, "/healthz").await;
            assert!(
                said.as_deref()
                    .is_some_and(|said| said.starts_with("HTTP/1.1 200")),
                "round {round}, client {client}: {said:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The harness's own client may have kept a connection from the start, which the
    // eighth client made room for.
    let series = |text: &Option<String>, name: &str| {
        let text = text.as_deref().unwrap_or_default();
        let value = text.lines().find_map(|line| line.strip_prefix(name));
        value.and_then(|value| value.trim().parse::<u32>().ok())
    };
    let before = kept_alive_get(&mut clients[7], "/metrics").await;
    let open = series(&before, "attache_http_connections ");
    assert!(
        open.is_some_and(|open| (8..=9).contains(&open)),
        "{before:?}"
    );
    let closed_before = series(&before, "attache_http_connections_closed_for_room_total ");
    let closed_before = closed_before.expect("the counter, from the start");
    // A ninth client still gets in: the oldest connection is asked to close for it,
    // which the metrics count and the log says.
    let mut ninth = TcpStream::connect(&address).await.expect("connect");
    let said = kept_alive_get(&mut ninth, "/healthz").await;
    assert!(
        said.as_deref()
            .is_some_and(|said| said.starts_with("HTTP/1.1 200")),
        "the ninth client: {said:?}"
    );
    let after = kept_alive_get(&mut ninth, "/metrics").await;
    assert_eq!(
        series(&after, "attache_http_connections_closed_for_room_total "),
        Some(closed_before + 1)
    );
    let log = served.log();
    let warned = log
        .lines()
        .filter(|line| line.contains("every connection slot is taken"));
    assert_eq!(warned.count(), 1, "{log}");
}

/// One GET on a kept-alive connection: its answer, head and `Content-Length` body,
/// or `None` if the connection ended first (or nothing came within 5 s).
async fn kept_alive_get(tcp: &mut TcpStream, path: &str) -> Option<String> {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let complete = |received: &[u8]| {
        let text = String::from_utf8_lossy(received);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|n| n.trim().to_owned())
            })?
            .parse()
            .ok()?;
        (body.len() >= length).then(|| text.into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(answer) = complete(&received) {
                return Some(answer);
            }
            match tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Reads what the server answers on `tcp` within `within`; the text so far when it
/// closes the connection.
async fn answer(tcp: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

/// A multipart part's head that does not end (an endless header line, or text
/// before the first boundary) is refused once it passes 64 KiB, named as such:
/// multer searches all it holds again for each piece, so a head as long as the
/// body may be (15 MB) cost seconds of a core.
async fn endless_part_heads_are_cut_early(_: Setup) {
    let mut served = Served::start(&[]).await;
    let before = rss_mib(&served);
    let bearer = token("heads");
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let filler = "\r\n\ra".repeat(25_000);
    for (what, body) in [
        (
            "an endless header",
            format!("--b\r\nContent-Disposition: form-data; name=\"operations\"\r\nX: {filler}"),
        ),
        (
            "text before the first boundary",
            format!("{filler}\r\n--b\r\n"),
        ),
    ] {
        let head = format!(
            "POST /graphql HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {bearer}\r\n\
             Apollo-Require-Preflight: 1\r\nContent-Type: multipart/form-data; boundary=b\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut tcp = TcpStream::connect(&address).await.expect("connect");
        tcp.write_all(head.as_bytes()).await.expect("the head");
        // The server stops reading at the bound: what it leaves may not all go.
        let _ = tcp.write_all(body.as_bytes()).await;
        let said = answer(&mut tcp, Duration::from_secs(10))
            .await
            .expect("an answer in time");
        assert!(said.starts_with("HTTP/1.1 400"), "{what}: {said}");
        assert!(
            said.contains("headers (with any text before the first boundary) exceed 64 KiB"),
            "{what}: {said}"
        );
    }
    assert_unharmed(&mut served, before, "endless part heads").await;
}

/// An `uploadAttachment` of a 200,000-byte PDF to `owner_id`: over 64 KiB, so it
/// takes an upload slot.
fn slot_taking_upload(owner_id: &str) -> Value {
    let mut big = pdf();
    big.resize(200_000, b' ');
    json!({ "query": UPLOAD, "variables": { "input": {
        "ownerType": "contract", "ownerId": owner_id, "filename": "big.pdf", "base64": STANDARD.encode(&big) }}})
}

/// When every upload slot is taken, the next one given back goes to the tenant that
/// holds the fewest: with one queue for all, first come first served, one tenant's
/// burst of slow uploads made every other tenant wait behind all of it, then hear
/// "busy".
async fn a_tenant_s_burst_of_uploads_waits_for_itself(_: Setup) {
    let mut served = Served::start(&[
        "--max-concurrent-uploads",
        "2",
        "--upload-queue-timeout-seconds",
        "30",
    ])
    .await;
    let before = rss_mib(&served);
    let burst = token("burst");
    let mut holding = Vec::new();
    for _ in 0..2 {
        holding.push(half_sent_post(&served.base_url, "/graphql", Some(&burst)).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The burst's third upload waits for a slot; then another tenant's comes.
    let queued = half_sent_post(&served.base_url, "/graphql", Some(&burst)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let request = slot_taking_upload("fair");
    let (base, other) = (served.base_url.clone(), token("other"));
    let other = tokio::spawn(async move {
        let response = http_client()
            .post(format!("{base}/graphql"))
            .bearer_auth(other)
            .json(&request)
            .send()
            .await
            .expect("POST");
        response.json::<Value>().await.expect("JSON")
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!other.is_finished(), "every slot is taken");
    drop(holding.remove(0));
    let answer = tokio::time::timeout(Duration::from_secs(5), other)
        .await
        .expect("the slot given back goes to the tenant holding none")
        .expect("join");
    assert_eq!(
        data(&answer, "uploadAttachment")["byteSize"],
        200_000,
        "{answer}"
    );
    drop((holding, queued));
    assert_unharmed(&mut served, before, "a burst of one tenant").await;
}

/// One tenant's slow bodies cannot take every upload slot: a quarter is kept for
/// tenants that hold none. A slot cannot be taken back and a body may take
/// `BODY_TIMEOUT_SECONDS`, so eight trickled bodies of one tenant held every slot
/// while every other tenant's upload waited `UPLOAD_QUEUE_TIMEOUT_SECONDS`, then
/// heard "busy".
async fn slow_bodies_of_one_tenant_leave_slots_for_the_others(_: Setup) {
    let mut served = Served::start(&[
        "--max-concurrent-uploads",
        "4",
        "--upload-queue-timeout-seconds",
        "30",
    ])
    .await;
    let before = rss_mib(&served);
    let noisy = token("noisy");
    let mut trickling = Vec::new();
    for _ in 0..4 {
        trickling.push(half_sent_post(&served.base_url, "/graphql", Some(&noisy)).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let quiet = slot_taking_upload("quiet");
    let (status, answer) = post(&served, Some(&token("quiet")), &quiet).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(data(&answer, "uploadAttachment")["byteSize"], 200_000);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a reserved slot at once, not after {:?}",
        started.elapsed()
    );
    drop(trickling);
    assert_unharmed(&mut served, before, "one tenant's slow bodies").await;
}

async fn anonymous_requests_cost_no_upload_slot(_: Setup) {
    let mut served = Served::start(&[
        "--max-concurrent-uploads",
        "2",
        "--upload-queue-timeout-seconds",
        "1",
    ])
    .await;
    let before = rss_mib(&served);
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut tcp = half_sent_post(&served.base_url, "/graphql", None).await;
        let refused = answer(&mut tcp, Duration::from_secs(3))
            .await
            .expect("answered at once");
        assert!(refused.contains("UNAUTHENTICATED"), "{refused}");
        assert!(
            refused.to_ascii_lowercase().contains("connection: close"),
            "{refused}"
        );
        held.push(tcp);
    }
    // A real upload above the small-request threshold still gets a slot.
    let (_, body) = post(&served, Some(&token("real")), &slot_taking_upload("c")).await;
    assert_eq!(data(&body, "uploadAttachment")["byteSize"], 200_000);

    // With every slot taken by slow token holders, the next one hears 503 at once.
    let bearer = token("slow");
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(half_sent_post(&served.base_url, "/graphql", Some(&bearer)).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut third = half_sent_post(&served.base_url, "/graphql", Some(&bearer)).await;
    let busy = answer(&mut third, Duration::from_secs(5))
        .await
        .expect("answered");
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(
        busy.to_ascii_lowercase().contains("connection: close"),
        "{busy}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "503 after {:?}",
        started.elapsed()
    );
    drop((held, slow));
    assert_unharmed(&mut served, before, "slots").await;
}

/// A multipart file trickled faster than `MIN_BODY_BYTES_PER_SECOND` (a megabyte in
/// eight minutes) still ends at `BODY_TIMEOUT_SECONDS`: the one upload slot it held
/// serves the next upload, and nothing of it is stored.
async fn a_trickled_file_frees_its_upload_slot(_: Setup) {
    let mut served = Served::start(&[
        "--max-concurrent-uploads",
        "1",
        "--upload-queue-timeout-seconds",
        "30",
        "--body-timeout-seconds",
        "3",
    ])
    .await;
    let before = rss_mib(&served);
    let bearer = token("trickle");
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let operations = r#"{"query": "mutation($f: Upload!) { uploadAttachmentFile(input: {ownerType: \"contract\", ownerId: \"slow\", file: $f}) { id } }", "variables": {"f": null}}"#;
    let part = |name: &str, extra: &str| {
        format!("--b\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n")
    };
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {bearer}\r\n\
         Apollo-Require-Preflight: 1\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: 1000000\r\n\r\n{}{operations}\r\n{}{{\"0\": [\"variables.f\"]}}\r\n{}",
        part("operations", ""),
        part("map", ""),
        part("0", "; filename=\"slow.txt\"\r\nContent-Type: text/plain"),
    );
    let tcp = TcpStream::connect(&address).await.expect("connect");
    let (mut reader, mut writer) = tcp.into_split();
    writer.write_all(head.as_bytes()).await.expect("the head");
    let trickle = tokio::spawn(async move {
        for _ in 0..120 {
            if writer.write_all(&[b'a'; 1000]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (_, body) = post(&served, Some(&bearer), &slot_taking_upload("fast")).await;
    assert_eq!(
        data(&body, "uploadAttachment")["byteSize"],
        200_000,
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the slot was held {:?}",
        started.elapsed()
    );
    let mut cut = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut cut)).await;
    trickle.abort();
    let cut = String::from_utf8_lossy(&cut);
    assert!(cut.contains("BODY_TIMEOUT_SECONDS"), "{cut}");
    assert_eq!(contracts_stored(&served, &bearer, Some("slow")).await, 0);
    assert_unharmed(&mut served, before, "a trickled file").await;
}

/// A direct upload of `content` announced with `bearer`: the upload and its URL.
async fn announce_direct_upload(served: &Served, bearer: &str, content: &[u8]) -> (Value, String) {
    let announced = post(served, Some(bearer), &json!({ "query": "mutation($i: DirectUploadInput!) { createDirectUpload(input: $i) { id uploadUrl } }",
        "variables": { "i": { "ownerType": "contract", "ownerId": "c", "filename": "d.pdf", "contentType": "application/pdf",
            "byteSize": content.len(), "sha256": crate::helpers::sha256_hex(content) }}})).await.1;
    let direct = data(&announced, "createDirectUpload").clone();
    let upload_url = direct["uploadUrl"].as_str().expect("url").to_owned();
    (direct, upload_url)
}

/// A PUT to `upload_url` that has sent its head, announcing `length` bytes, and
/// nothing of its body yet; the server closes the connection after its answer.
async fn started_put(served: &Served, upload_url: &str, length: usize) -> TcpStream {
    let address = served.base_url.trim_start_matches("http://");
    let path = upload_url.trim_start_matches(&served.base_url);
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("the head");
    tcp
}

/// A direct upload's PUT holds chunks in memory like any upload: it takes one of
/// the `MAX_CONCURRENT_UPLOADS` slots (before, any number of PUTs ran at once,
/// bounded only by `MAX_CONNECTIONS`), and a body announced larger than the
/// upload declared is refused before a byte of it is read.
async fn direct_upload_puts_take_an_upload_slot(_: Setup) {
    let mut served = Served::start(&[
        "--max-concurrent-uploads",
        "1",
        "--upload-queue-timeout-seconds",
        "1",
    ])
    .await;
    let before = rss_mib(&served);
    let bearer = token("put-slots");
    let mut content = pdf();
    content.resize(100_000, b' ');
    let (_, first_url) = announce_direct_upload(&served, &bearer, &content).await;
    let (_, second_url) = announce_direct_upload(&served, &bearer, &content).await;
    // The first PUT holds the only slot while its body is slow to come.
    let mut first = started_put(&served, &first_url, content.len()).await;
    first
        .write_all(&content[..1000])
        .await
        .expect("a little body");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let put = || http_client().put(&second_url).body(content.clone()).send();
    let busy = put().await.expect("an answer");
    assert_eq!(
        busy.status(),
        503,
        "the second PUT waits for a slot, then hears busy"
    );
    assert_eq!(busy.headers()["retry-after"], "2");
    first.write_all(&content[1000..]).await.expect("the rest");
    let done = answer(&mut first, Duration::from_secs(5))
        .await
        .expect("answered");
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    assert_eq!(
        put().await.expect("an answer").status(),
        200,
        "the slot is free again"
    );
    // A body announced one byte larger than declared: refused on its head.
    let (_, third_url) = announce_direct_upload(&served, &bearer, &content).await;
    let mut oversized = started_put(&served, &third_url, content.len() + 1).await;
    let refused = answer(&mut oversized, Duration::from_secs(5))
        .await
        .expect("answered without the body");
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    assert!(refused.contains("declared"), "{refused}");
    assert_unharmed(&mut served, before, "direct upload slots").await;
}

/// A direct upload's signed PUT that trickles (fast enough for the minimum rate) is
/// cut once waited for BODY_TIMEOUT_SECONDS, like a GraphQL body: before, a 1 MB PUT
/// at 2 KB/s held its connection for 8 minutes, and no flood of new connections
/// closes a busy one. The upload stays, for a PUT that comes whole.
async fn a_trickled_direct_upload_is_cut(_: Setup) {
    let mut served = Served::start(&["--body-timeout-seconds", "3"]).await;
    let before = rss_mib(&served);
    let bearer = token("trickled-put");
    let mut content = pdf();
    content.resize(1_000_000, b' ');
    let (direct, upload_url) = announce_direct_upload(&served, &bearer, &content).await;
    let tcp = started_put(&served, &upload_url, content.len()).await;
    let (mut reader, mut writer) = tcp.into_split();
    let started = Instant::now();
    let first = content.clone();
    let trickle = tokio::spawn(async move {
        for piece in first.chunks(1000).take(120) {
            if writer.write_all(piece).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut cut = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), reader.read_to_end(&mut cut)).await;
    trickle.abort();
    let cut = String::from_utf8_lossy(&cut);
    assert!(cut.contains("BODY_TIMEOUT_SECONDS"), "{cut}");
    assert!(cut.starts_with("HTTP/1.1 408"), "{cut}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "held {:?}",
        started.elapsed()
    );
    let status = http_client()
        .put(&upload_url)
        .body(content)
        .send()
        .await
        .expect("a PUT")
        .status();
    assert_eq!(status, 200, "the upload takes a PUT that comes whole");
    let completed = post(
        &served,
        Some(&bearer),
        &json!({ "query": "mutation($id: ID!) { completeDirectUpload(id: $id) { byteSize } }",
        "variables": { "id": direct["id"] } }),
    )
    .await
    .1;
    assert_eq!(
        data(&completed, "completeDirectUpload")["byteSize"],
        1_000_000
    );
    assert_unharmed(&mut served, before, "a trickled PUT").await;
}

async fn idle_and_slow_connections_are_closed(_: Setup) {
    let mut served = Served::start(&[
        "--max-connections",
        "32",
        "--body-idle-timeout-seconds",
        "1",
    ])
    .await;
    let before = rss_mib(&served);
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for i in 0..120 {
        let mut tcp = TcpStream::connect(&address).await.expect("connect");
        if i % 2 == 0 {
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("half a head");
        }
        idle.push(tcp);
    }
    assert_healthy_within(&served, Duration::from_secs(3), "120 idle connections wait").await;
    for tcp in idle.iter_mut().take(20) {
        assert!(
            answer(tcp, Duration::from_secs(8)).await.is_some(),
            "an idle connection is closed"
        );
    }

    // The signed PUT route: one byte of 1,009, then nothing.
    let bearer = token("slow-put");
    let content = pdf();
    let announced = post(&served, Some(&bearer), &json!({ "query": "mutation($i: DirectUploadInput!) { createDirectUpload(input: $i) { uploadUrl } }",
        "variables": { "i": { "ownerType": "contract", "ownerId": "c", "filename": "d.pdf", "contentType": "application/pdf",
            "byteSize": 1009, "sha256": crate::helpers::sha256_hex(&content) }}})).await.1;
    let upload_url = data(&announced, "createDirectUpload")["uploadUrl"]
        .as_str()
        .expect("url")
        .to_owned();
    let path = upload_url.trim_start_matches(&served.base_url);
    let mut tcp = TcpStream::connect(&address).await.expect("connect");
    tcp.write_all(
        format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1009\r\n\r\n%").as_bytes(),
    )
    .await
    .expect("send");
    let started = Instant::now();
    let cut = answer(&mut tcp, Duration::from_secs(10))
        .await
        .expect("the stalled PUT ends");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // 408 naming the setting, as a GraphQL body gets (it was 400).
    assert!(cut.starts_with("HTTP/1.1 408"), "{cut}");
    assert!(cut.contains("BODY_IDLE_TIMEOUT_SECONDS"), "{cut}");
    drop(idle);
    assert_unharmed(&mut served, before, "connections").await;
}

async fn stalled_downloads_hold_bounded_memory(_: Setup) {
    let mut served = Served::start(&["--send-timeout-seconds", "2"]).await;
    let bearer = token("downloads");
    let id = big_download(&served, &bearer, 10 * 1024 * 1024).await;
    let before = rss_mib(&served);
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..64 {
        let mut tcp = TcpStream::connect(&address).await.expect("connect");
        let head = format!(
            "GET /api/attachments/{id}/download HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.expect("send");
        stalled.push(tcp);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = rss_mib(&served) - before;
    assert!(during < 64.0, "64 stalled downloads hold {during:.0} MiB");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The server gave up on them: reading now ends (after what the socket buffered),
    // before the file's end.
    for tcp in stalled.iter_mut().take(10) {
        let read = answer(tcp, Duration::from_secs(5)).await;
        let read = read.expect("a stalled download is closed");
        assert!(
            read.len() < 10 * 1024 * 1024,
            "cut short: {} bytes",
            read.len()
        );
    }
    drop(stalled);
    assert_unharmed(&mut served, before, "downloads").await;
}

/// Stores a PDF of `size` bytes for `bearer`'s tenant; its id.
async fn big_download(served: &Served, bearer: &str, size: usize) -> String {
    let mut content = pdf();
    content.resize(size, b' ');
    let form = reqwest::multipart::Form::new()
        .text(
            "operations",
            json!({ "query": "mutation($f: Upload!) { uploadAttachmentFile(input: {ownerType: \"contract\", ownerId: \"c\", file: $f}) { id } }",
                "variables": { "f": null } })
            .to_string(),
        )
        .text("map", json!({ "0": ["variables.f"] }).to_string())
        .part(
            "0",
            reqwest::multipart::Part::bytes(content)
                .file_name("big.pdf")
                .mime_str("application/pdf")
                .expect("mime"),
        );
    let (_, body) = post_multipart(&served.base_url, bearer, form).await;
    data(&body, "uploadAttachmentFile")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Asks for `id`'s download and reads it steadily, 16 KiB every 20 ms (about
/// 800 KiB/s), until the server ends it, `enough` says so (checked every 250 ms) or
/// `within` passes; whether the server ended it.
async fn steady_download(
    address: &str,
    bearer: &str,
    id: &str,
    within: Duration,
    enough: impl Fn() -> bool,
) -> bool {
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "GET /api/attachments/{id}/download HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("send");
    let started = Instant::now();
    let mut checked = Instant::now();
    let mut buffer = vec![0u8; 16 * 1024];
    while started.elapsed() < within {
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buffer)).await
        {
            return true;
        }
        if checked.elapsed() > Duration::from_millis(250) {
            if enough() {
                return false;
            }
            checked = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A client that reads a download steadily but slower than
/// MIN_SEND_BYTES_PER_SECOND is cut once the writes have waited SEND_TIMEOUT_SECONDS
/// (any progress used to keep it open for the whole download); and downloads read
/// steadily in every connection slot cannot keep a new client out: a busy
/// connection asked to close may wait SEND_TIMEOUT_SECONDS more for its client (it
/// was waited for until its response ended).
async fn trickled_downloads_are_cut_and_cannot_keep_clients_out(_: Setup) {
    const SIZE: usize = 24 * 1024 * 1024;
    let bearer = token("trickles");
    // Larger than socket buffers grow (up to 16 MiB on some hosts).
    let dir = tempfile::tempdir().expect("dir");
    let collections = dir.path().join("collections.toml");
    let toml = "[contract]\nkey = \"{tenant}/contracts/{owner}/{id}{ext}\"\nmax_bytes = 33554432\naccept = [\"pdf\"]\n";
    std::fs::write(&collections, toml).expect("write");
    let collections = collections.to_str().expect("utf-8");
    let settings = [
        "--send-timeout-seconds",
        "3",
        "--max-upload-bytes",
        "33554432",
        "--collections-file",
        collections,
    ];
    let mut served =
        Served::start_with_env(&settings, &[("MIN_SEND_BYTES_PER_SECOND", "4000000")]).await;
    let id = big_download(&served, &bearer, SIZE).await;
    let before = rss_mib(&served);
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let floor = "slower than MIN_SEND_BYTES_PER_SECOND";
    steady_download(&address, &bearer, &id, Duration::from_secs(25), || {
        served.log().contains(floor)
    })
    .await;
    assert!(
        served.log().contains(floor),
        "a download read at 800 KiB/s is cut"
    );
    assert_unharmed(&mut served, before, "trickled download").await;
    drop(served);

    // No floor, eight slots: eight steady downloads hold them all.
    let mut served = Served::start_with_env(
        &[&settings[..], &["--max-connections", "8"]].concat(),
        &[("MIN_SEND_BYTES_PER_SECOND", "0")],
    )
    .await;
    let id = big_download(&served, &bearer, SIZE).await;
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (address, bearer, id) = (address.clone(), bearer.clone(), id.clone());
        readers.push(tokio::spawn(async move {
            steady_download(&address, &bearer, &id, Duration::from_secs(40), || false).await
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        readers.iter().all(|reader| !reader.is_finished()),
        "every slot is held when the new client comes"
    );
    let held = "eight steady downloads hold every slot";
    assert_healthy_within(&served, Duration::from_secs(15), held).await;
    assert!(
        served.log().contains("asked to close"),
        "the oldest download was cut"
    );
    readers.iter().for_each(tokio::task::JoinHandle::abort);
    let before = rss_mib(&served);
    assert_unharmed(&mut served, before, "slow downloads in every slot").await;
}

async fn metrics_can_have_a_listener_of_their_own(_: Setup) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let address = format!("127.0.0.1:{port}");
    let served = Served::start(&["--metrics-addr", &address]).await;
    let client = http_client();
    let public = client
        .get(format!("{}/metrics", served.base_url))
        .send()
        .await
        .expect("GET");
    assert_eq!(public.status(), 404, "not on the public listener");
    let mut metrics = None;
    for _ in 0..50 {
        if let Ok(response) = client.get(format!("http://{address}/metrics")).send().await {
            metrics = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = metrics.expect("the metrics listener answers");
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.expect("text").contains("attache_"));
}

/// A client that hangs up once its upload's body is sent does not free the upload
/// slot while the store it started runs on: it did, so a client that sent bodies
/// and hung up, over and over, had stores (and their spools) running without
/// bound. Here the store is stuck on a stalled bucket and the only slot stays
/// taken: the next upload is told "busy".
async fn a_client_that_hangs_up_keeps_its_store_in_a_slot(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = crate::helpers::S3Server::start(dir.path()).await;
    let (endpoint, stalled) = crate::helpers::stalling_forwarder(s3.addr).await;
    let mut flags = crate::helpers::s3_flags(&endpoint);
    flags.extend(
        [
            "--max-concurrent-uploads",
            "1",
            "--upload-queue-timeout-seconds",
            "1",
        ]
        .map(str::to_owned),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let served = Served::start(&flags).await;
    let bearer =
        hs256(json!({ "sub": "u", "tenant_id": crate::helpers::tenant(), "exp": now() + 600 }));
    let upload = |name: &str| {
        let mut content = pdf();
        content.resize(300 * 1024, b'%');
        json!({ "query": UPLOAD, "variables": { "input": { "ownerType": "contract",
            "ownerId": "c-1", "filename": name, "base64": STANDARD.encode(&content) } } })
        .to_string()
    };
    stalled.store(true, std::sync::atomic::Ordering::Relaxed);
    let host = served.base_url.trim_start_matches("http://").to_owned();
    let body = upload("hung-up.pdf");
    let mut socket = TcpStream::connect(&host).await.expect("connect");
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {bearer}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    socket
        .write_all(body.as_bytes())
        .await
        .expect("the whole body");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let next = http_client()
        .post(format!("{}/graphql", served.base_url))
        .bearer_auth(&bearer)
        .header("Content-Type", "application/json")
        .body(upload("next.pdf"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let next = next.expect("an answer within 10 s, not a wait on the stalled bucket");
    assert_eq!(next.status(), 503, "{}", served.log());
    assert!(next.headers().contains_key("retry-after"));
    stalled.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// A completion in a request that took a slot for its body (past 64 KiB, here
/// padded) uses that slot: it waited for a second one, so with one slot it was
/// always "busy", and N such requests held every slot until their queue timeout.
async fn a_completion_uses_its_requests_upload_slot(_setup: Setup) {
    let served = Served::start(&[
        "--max-concurrent-uploads",
        "1",
        "--upload-queue-timeout-seconds",
        "1",
    ])
    .await;
    let bearer =
        hs256(json!({ "sub": "u", "tenant_id": crate::helpers::tenant(), "exp": now() + 600 }));
    let content = pdf();
    let declared = crate::helpers::declaration(&content, "application/pdf");
    let (direct, status) =
        crate::helpers::announce_and_put(&served, &bearer, declared, content).await;
    assert_eq!(status, 200, "PUT to uploadUrl");
    let padded = format!(
        "{{\"query\": {}, \"variables\": {{\"id\": {}}}}}{}",
        json!(crate::helpers::COMPLETE_DIRECT),
        direct["id"],
        " ".repeat(70 * 1024)
    );
    let (_, completed, _) = post_raw(&served, &bearer, padded).await;
    let completed: Value = serde_json::from_str(&completed).expect("JSON");
    let attachment = data(&completed, "completeDirectUpload");
    assert_eq!(attachment["id"], direct["id"]);
}

crate::matrix!(
    once: nesting_through_every_construct_is_refused,
    a_client_that_hangs_up_keeps_its_store_in_a_slot,
    a_completion_uses_its_requests_upload_slot,
    answers_to_hostile_documents_stay_small,
    kept_documents_hold_bounded_memory,
    log_lines_stay_short_whatever_the_method,
    every_refusal_names_its_code_in_the_log,
    refusals_from_the_head_are_final_answers,
    long_documents_leave_the_workers_free,
    a_file_of_byte_order_marks_is_text,
    fragment_expansion_is_refused_early,
    batches_are_bounded,
    files_are_counted_across_the_request,
    listed_rows_are_counted_before_anything_runs,
    a_variable_counts_at_each_use,
    a_forged_file_placeholder_is_an_error,
    json_values_are_counted_before_parsing,
    endless_part_heads_are_cut_early,
    one_part_for_two_variables_stores_both,
    anonymous_requests_cost_no_upload_slot,
    a_tenant_s_burst_of_uploads_waits_for_itself,
    slow_bodies_of_one_tenant_leave_slots_for_the_others,
    a_trickled_file_frees_its_upload_slot,
    a_trickled_direct_upload_is_cut,
    direct_upload_puts_take_an_upload_slot,
    idle_and_slow_connections_are_closed,
    connections_at_the_cap_stay_open_until_another_client_comes,
    stalled_downloads_hold_bounded_memory,
    trickled_downloads_are_cut_and_cannot_keep_clients_out,
    metrics_can_have_a_listener_of_their_own,
);
