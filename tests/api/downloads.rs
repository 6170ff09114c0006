//! The download route: signed links without headers, the bearer route, every header
//! rule (Range, ETag, HEAD, disposition, nosniff, cache), refused links, delete.

use std::time::Duration;

use attache::auth::LinkSigner;
use attache::auth::link::LinkPurpose;
use serde_json::{Value, json};

use crate::helpers::{
    DELETE, Fault, GET, S3_BUCKET, SIGNING_KEY, Setup, TestApp, Uploaded, announce, codes, data,
    declaration, now, pdf, png, put_to, tenant,
};

/// The `url` of an attachment with the given lifetime.
async fn url_with_ttl(app: &TestApp, bearer: &str, id: &Value, ttl: i64) -> String {
    let body = app
        .gql(
            "query($id: ID!, $ttl: Int) { attachment(id: $id) { url(ttlSeconds: $ttl) } }",
            json!({ "id": id, "ttl": ttl }),
            Some(bearer),
        )
        .await;
    data(&body, "attachment")["url"]
        .as_str()
        .expect("url")
        .to_owned()
}

/// The value of a query parameter of `url`.
fn param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

async fn the_url_opens_without_headers(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded {
        tenant: acme,
        bearer,
        content,
        att,
        id,
        url,
        ..
    } = app.upload_contract_pdf("März.pdf").await;
    let key = format!("{acme}/contracts/c-1/{id}.pdf");
    match &app.s3 {
        None => assert!(url.starts_with(&app.base_url), "absolute: {url}"),
        Some(s3) => {
            let object = format!("{}/{S3_BUCKET}/{key}?", s3.endpoint);
            assert!(
                url.starts_with(&object),
                "a presigned URL of the object: {url}"
            );
            let disposition = param(&url, "response-content-disposition").expect("disposition");
            assert!(
                disposition.contains("M%25C3%25A4rz.pdf") || disposition.contains("M%C3%A4rz.pdf"),
                "{disposition}"
            );
        }
    }
    let response = reqwest::get(url).await.expect("GET url");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        content.as_slice()
    );

    let capped = url_with_ttl(&app, &bearer, &att["id"], 100_000_000).await;
    let seven_days = 7 * 24 * 3600;
    match &app.s3 {
        None => {
            let expires: i64 = param(&capped, "expires")
                .and_then(|v| v.parse().ok())
                .expect("expires");
            assert!(
                expires <= i64::try_from(now()).expect("i64") + seven_days + 5,
                "ttl capped at 7 days"
            );
        }
        Some(_) => assert_eq!(
            param(&capped, "X-Amz-Expires"),
            Some(seven_days.to_string())
        ),
    }

    // An operator's cap: a link outlives its token by at most MAX_URL_TTL_SECONDS.
    let short = TestApp::spawn_with(
        setup,
        &["--max-url-ttl-seconds", "600", "--url-ttl-seconds", "300"],
    )
    .await;
    let Uploaded { bearer, att, .. } = short.upload_contract_pdf("a.pdf").await;
    let capped = url_with_ttl(&short, &bearer, &att["id"], 100_000_000).await;
    let lifetime = match &short.s3 {
        None => param(&capped, "expires")
            .and_then(|v| v.parse::<i64>().ok())
            .map(|expires| expires - i64::try_from(now()).expect("i64")),
        Some(_) => param(&capped, "X-Amz-Expires").and_then(|v| v.parse().ok()),
    };
    let lifetime = lifetime.expect("a lifetime");
    assert!((590..=600).contains(&lifetime), "{lifetime}: {capped}");
}

/// Queries a while apart get the same `url`, so a browser's cache keeps the file (an
/// `<img>` of a list revisited): signed anew each second, each was a new URL,
/// downloaded whole again. A URL asked for less than 10 s is made every time.
async fn the_same_url_is_handed_out_for_a_while(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded { bearer, att, .. } = app.upload_contract_pdf("logo.pdf").await;
    let first = url_with_ttl(&app, &bearer, &att["id"], 3600).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = url_with_ttl(&app, &bearer, &att["id"], 3600).await;
    assert_eq!(again, first, "the same URL a second later");
    let opened = reqwest::get(&again).await.expect("GET url");
    assert_eq!(opened.status(), 200);
    // attache's route revalidates (the test S3 server answers conditionals with 200).
    if app.s3.is_none() {
        let etag = opened.headers()["etag"].clone();
        let cached = app
            .client
            .get(&again)
            .header("if-none-match", etag)
            .send()
            .await
            .expect("GET again");
        assert_eq!(cached.status(), 304, "revalidated, not downloaded again");
    }
    let short = url_with_ttl(&app, &bearer, &att["id"], 5).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_ne!(url_with_ttl(&app, &bearer, &att["id"], 5).await, short);
}

/// Content-Type and Content-Disposition of the bearer route with `?inline=1`.
async fn inline_answer(app: &TestApp, bearer: &str, att: &Value) -> (String, String) {
    let route = att["downloadUrl"].as_str().expect("downloadUrl");
    let response = app
        .client
        .get(format!("{route}?inline=1"))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("GET inline");
    let header = |name: &str| response.headers()[name].to_str().expect("ascii").to_owned();
    (header("content-type"), header("content-disposition"))
}

async fn the_bearer_route_follows_every_header_rule(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded {
        bearer,
        content,
        att,
        ..
    } = app.upload_contract_pdf("Vertrag März.pdf").await;
    let route = att["downloadUrl"].as_str().expect("downloadUrl").to_owned();
    let etag = format!("\"{}\"", att["sha256"].as_str().expect("sha256"));
    let get = |headers: &[(&str, &str)]| {
        let mut request = app.client.get(&route).bearer_auth(&bearer);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };

    let whole = get(&[]).await.expect("GET");
    assert_eq!(whole.status(), 200);
    let headers = whole.headers().clone();
    assert_eq!(headers["etag"], etag.as_str());
    assert_eq!(headers["content-type"], "application/pdf");
    assert_eq!(
        headers["content-length"],
        content.len().to_string().as_str()
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "private, no-cache");
    assert_eq!(headers["accept-ranges"], "bytes");
    let disposition = headers["content-disposition"].to_str().expect("ascii");
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(
        disposition.contains("filename*=UTF-8''Vertrag%20M%C3%A4rz.pdf"),
        "{disposition}"
    );
    assert_eq!(
        whole.bytes().await.expect("body").as_ref(),
        content.as_slice()
    );

    let partial = get(&[("range", "bytes=0-3")]).await.expect("GET range");
    assert_eq!(partial.status(), 206);
    assert_eq!(
        partial.headers()["content-range"],
        format!("bytes 0-3/{}", content.len()).as_str()
    );
    assert_eq!(partial.bytes().await.expect("body").as_ref(), b"%PDF");

    let suffix = get(&[("range", "bytes=-6")]).await.expect("GET suffix");
    assert_eq!(suffix.status(), 206);
    assert_eq!(
        suffix.bytes().await.expect("body").as_ref(),
        &content[content.len() - 6..]
    );

    let beyond = get(&[("range", &format!("bytes={}-", content.len()))])
        .await
        .expect("GET 416");
    assert_eq!(beyond.status(), 416);
    assert_eq!(
        beyond.headers()["content-range"],
        format!("bytes */{}", content.len()).as_str()
    );

    let stale_if_range = get(&[("range", "bytes=0-3"), ("if-range", "\"other\"")])
        .await
        .expect("GET if-range");
    assert_eq!(
        stale_if_range.status(),
        200,
        "If-Range with another ETag gets the whole file"
    );

    let cached = get(&[("if-none-match", &etag)]).await.expect("GET 304");
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()["etag"], etag.as_str());

    let head = app
        .client
        .head(&route)
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        content.len().to_string().as_str()
    );
    assert!(head.bytes().await.expect("body").is_empty());

    let pdf_inline = inline_answer(&app, &bearer, &att).await;
    assert!(pdf_inline.1.starts_with("inline;"), "{pdf_inline:?}");

    let text = app
        .upload(&bearer, b"just text", "contract", Some("c-1"), "notes.txt")
        .await;
    let text_inline = inline_answer(&app, &bearer, &text).await;
    assert!(
        text_inline.1.starts_with("attachment;"),
        "inline only for pdf and images: {text_inline:?}"
    );

    let logo = app
        .upload(&bearer, &png(), "invoice_logo", None, "logo.png")
        .await;
    let (content_type, disposition) = inline_answer(&app, &bearer, &logo).await;
    assert_eq!(content_type, "image/png");
    assert!(disposition.starts_with("inline;"), "{disposition}");
}

async fn refused_links_and_tokens_answer_401_403_404(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let att = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    let other = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), "b.pdf")
        .await;
    let id: uuid::Uuid = att["id"].as_str().expect("id").parse().expect("uuid");
    let route = att["downloadUrl"].as_str().expect("downloadUrl").to_owned();
    let url = att["url"].as_str().expect("url").to_owned();
    let status =
        |url: String| async move { reqwest::get(url).await.expect("GET").status().as_u16() };

    assert_eq!(status(route.clone()).await, 401, "no token");
    // What the route cannot read is said in a GraphQL-shaped body, as every error
    // here: a parameter given twice (400), a path that is not UTF-8 (404).
    for (case, url, code) in [
        (
            "a parameter twice",
            format!("{route}?inline=1&inline=1"),
            "BAD_USER_INPUT",
        ),
        (
            "not UTF-8",
            app.url("/api/attachments/%FF/download"),
            "NOT_FOUND",
        ),
    ] {
        let answer = app.get_with(&url, &bearer).await;
        assert_eq!(
            answer.headers()["content-type"],
            "application/json",
            "{case}"
        );
        let body: Value = answer.json().await.expect("JSON");
        assert_eq!(codes(&body), vec![code], "{case}: {body}");
    }
    let forged = app
        .client
        .get(&route)
        .bearer_auth("not.a.token")
        .send()
        .await
        .expect("GET");
    assert_eq!(forged.status(), 401);

    let mut tampered = url.clone();
    let last = tampered.pop().expect("signature");
    tampered.push(if last == '0' { '1' } else { '0' });
    assert_eq!(status(tampered).await, 403, "one changed character");

    match &app.s3 {
        None => {
            let later = url.replace("expires=", "expires=9");
            assert_eq!(status(later).await, 403, "a changed expiry");
            let signer = LinkSigner::new(SIGNING_KEY.as_bytes());
            let link = |purpose, id, tenant: &str, expires: i64| {
                let signature = signer.sign(purpose, id, tenant, expires);
                format!(
                    "{}/api/attachments/{id}/download?tenant={tenant}&expires={expires}&signature={signature}",
                    app.base_url
                )
            };
            let past = i64::try_from(now()).expect("i64") - 10;
            let future = past + 3600;
            assert_eq!(
                status(link(LinkPurpose::Download, id, &acme, past)).await,
                403,
                "expired link"
            );
            // Opened in a browser tab (a bookmark, an email): a page for the app's
            // users, not raw JSON naming a server they never heard of.
            let navigation = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
            let tab = app
                .client
                .get(link(LinkPurpose::Download, id, &acme, past))
                .header("accept", navigation)
                .send()
                .await
                .expect("GET");
            assert_eq!(tab.status(), 403);
            let headers = tab.headers().clone();
            assert_eq!(headers["content-type"], "text/html; charset=utf-8");
            assert_eq!(
                headers["content-security-policy"],
                "default-src 'none'; style-src 'unsafe-inline'"
            );
            let page = tab.text().await.expect("a page");
            assert!(
                page.contains("has expired") && page.contains("open the file again"),
                "{page}"
            );
            assert!(!page.to_lowercase().contains("attache"), "{page}");
            assert_eq!(
                status(link(LinkPurpose::Upload, id, &acme, future)).await,
                403,
                "an upload link is no download link"
            );
            let valid = link(LinkPurpose::Download, id, &acme, future);
            assert_eq!(status(valid.clone()).await, 200);
            let other_tenant = valid.replace(&format!("tenant={acme}"), "tenant=other");
            assert_eq!(status(other_tenant).await, 403, "another tenant's name");
            let missing = uuid::Uuid::now_v7();
            assert_eq!(
                status(link(LinkPurpose::Download, missing, &acme, future)).await,
                404,
                "valid link, no file"
            );
            let forged = link(LinkPurpose::Download, missing, &acme, future)
                .replace("signature=", "signature=00");
            assert_eq!(
                status(forged).await,
                403,
                "a forged link to a missing id looks like any forged link"
            );
            let malformed = format!("{route}?tenant={acme}&expires=12x&signature=00");
            assert_eq!(status(malformed).await, 403, "malformed expiry");
            let other_route = other["downloadUrl"].as_str().expect("downloadUrl");
            let (_, query) = url.split_once('?').expect("query");
            assert_eq!(
                status(format!("{other_route}?{query}")).await,
                403,
                "another file's id"
            );
        }
        Some(_) => {
            let other_url = other["url"].as_str().expect("url");
            let (_, query) = url.split_once('?').expect("query");
            let (other_path, _) = other_url.split_once('?').expect("path");
            assert_eq!(
                status(format!("{other_path}?{query}")).await,
                403,
                "another key"
            );
            let put = app
                .client
                .put(&url)
                .body("overwritten")
                .send()
                .await
                .expect("PUT");
            assert_eq!(put.status(), 403, "a presigned GET is no PUT");
            let delete = app.client.delete(&url).send().await.expect("DELETE");
            assert_eq!(delete.status(), 403, "a presigned GET is no DELETE");
        }
    }

    let short = url_with_ttl(&app, &bearer, &att["id"], 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(status(short).await, 403, "a 1 s link, 2 s later");

    assert_eq!(
        data(
            &app.gql(DELETE, json!({ "id": att["id"] }), Some(&bearer))
                .await,
            "deleteAttachment"
        ),
        att["id"]
    );
    assert_eq!(status(url).await, 404, "a valid link to a deleted file");
    let gone = app
        .client
        .get(&route)
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("GET");
    assert_eq!(gone.status(), 404);
    let bad_id = app
        .client
        .get(app.url("/api/attachments/not-a-uuid/download"))
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("GET");
    assert_eq!(bad_id.status(), 404);
}

/// A request's name, its headers and the status it must get.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);

/// RFC 9110's preconditions in §13.2.2's order, and Range on GET alone.
async fn conditional_requests_follow_rfc_9110(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded {
        bearer,
        content,
        att,
        ..
    } = app.upload_contract_pdf("a.pdf").await;
    let route = app.url(&format!(
        "/api/attachments/{}/download",
        att["id"].as_str().expect("id")
    ));
    let first = app
        .client
        .get(&route)
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("GET");
    let etag = first.headers()["etag"].to_str().expect("etag").to_owned();
    let modified = first.headers()["last-modified"]
        .to_str()
        .expect("last-modified")
        .to_owned();
    let earlier = "Mon, 01 Jan 2001 00:00:00 GMT";
    let later = "Fri, 01 Jan 2100 00:00:00 GMT";
    let weak = format!("W/{etag}");
    let cases: Vec<Case> = vec![
        (
            "If-Match, another tag",
            vec![("if-match", "\"other\"")],
            412,
        ),
        ("If-Match, its tag", vec![("if-match", &etag)], 200),
        ("If-Match, its tag weak", vec![("if-match", &weak)], 412),
        ("If-Match, any", vec![("if-match", "*")], 200),
        (
            "If-Unmodified-Since, earlier",
            vec![("if-unmodified-since", earlier)],
            412,
        ),
        (
            "If-Unmodified-Since, later",
            vec![("if-unmodified-since", later)],
            200,
        ),
        (
            "If-Match wins over If-Unmodified-Since",
            vec![("if-match", &etag), ("if-unmodified-since", earlier)],
            200,
        ),
        (
            "If-Modified-Since, its date",
            vec![("if-modified-since", &modified)],
            304,
        ),
        (
            "If-Modified-Since, earlier",
            vec![("if-modified-since", earlier)],
            200,
        ),
        (
            "If-None-Match, its tag",
            vec![("if-none-match", &etag)],
            304,
        ),
        (
            "If-None-Match wins over If-Modified-Since",
            vec![("if-none-match", "\"other\""), ("if-modified-since", later)],
            200,
        ),
        (
            "If-Modified-Since, not a date",
            vec![("if-modified-since", "yesterday")],
            200,
        ),
        ("Range on GET", vec![("range", "bytes=0-3")], 206),
    ];
    for (case, headers, expected) in cases {
        let mut request = app.client.get(&route).bearer_auth(&bearer);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let status = request.send().await.expect("GET").status().as_u16();
        assert_eq!(status, expected, "{case}");
    }
    let head = app
        .client
        .head(&route)
        .bearer_auth(&bearer)
        .header("range", "bytes=0-3")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200, "Range applies to GET only");
    assert_eq!(
        head.headers()["content-length"].to_str().expect("length"),
        content.len().to_string()
    );
}

async fn delete_removes_row_and_file(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded {
        tenant: acme,
        bearer,
        att,
        ..
    } = app.upload_contract_pdf("a.pdf").await;
    assert_eq!(app.stored_keys().len(), 1);
    let body = app
        .gql(DELETE, json!({ "id": att["id"] }), Some(&bearer))
        .await;
    assert_eq!(data(&body, "deleteAttachment"), att["id"]);
    assert_eq!(
        data(
            &app.gql(GET, json!({ "id": att["id"] }), Some(&bearer))
                .await,
            "attachment"
        ),
        Value::Null
    );
    assert_eq!(app.row_count(&acme).await, 0);
    assert!(app.stored_keys().is_empty(), "file outlived its row");
    let again = app
        .gql(DELETE, json!({ "id": att["id"] }), Some(&bearer))
        .await;
    assert_eq!(codes(&again), vec!["NOT_FOUND"]);
    let malformed = app
        .gql(DELETE, json!({ "id": "nope" }), Some(&bearer))
        .await;
    assert_eq!(codes(&malformed), vec!["NOT_FOUND"]);
}

/// Another spelling of a valid link's expiry, signature or id is another URL for the
/// same signature: refused, so that only the URL attache wrote opens the file.
async fn only_the_canonical_link_opens(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded {
        bearer, id, url, ..
    } = app.upload_contract_pdf("a.pdf").await;
    let expires = param(&url, "expires").expect("expires");
    let signature = param(&url, "signature").expect("signature");
    let status =
        |url: String| async move { reqwest::get(url).await.expect("GET").status().as_u16() };
    let uuid = uuid::Uuid::parse_str(&id).expect("uuid");
    let with_id = |other: String| {
        url.replace(
            &format!("/attachments/{id}/"),
            &format!("/attachments/{other}/"),
        )
    };
    let expiry =
        |other: &str| url.replace(&format!("expires={expires}"), &format!("expires={other}"));
    let cases = [
        ("expires=%2BN", expiry(&format!("%2B{expires}"))),
        ("expires=+N", expiry(&format!("+{expires}"))),
        ("expires=000N", expiry(&format!("000{expires}"))),
        ("expires=%20N", expiry(&format!("%20{expires}"))),
        (
            "uppercase signature",
            url.replace(&signature, &signature.to_uppercase()),
        ),
        ("uppercase id", with_id(id.to_uppercase())),
        ("id without hyphens", with_id(uuid.simple().to_string())),
        ("urn:uuid: id", with_id(uuid.urn().to_string())),
        (
            "braced id",
            with_id(
                uuid.braced()
                    .to_string()
                    .replace('{', "%7B")
                    .replace('}', "%7D"),
            ),
        ),
    ];
    for (case, altered) in cases {
        assert_ne!(altered, url, "{case}: the URL changed");
        assert_eq!(status(altered).await, 403, "{case}");
    }
    assert_eq!(status(url).await, 200, "the link as attache wrote it");

    // The signed upload route of direct uploads follows the same rule.
    let content = pdf();
    let direct = announce(&app, &bearer, declaration(&content, "application/pdf")).await;
    let upload_url = direct["uploadUrl"].as_str().expect("uploadUrl").to_owned();
    let expires = param(&upload_url, "expires").expect("expires");
    let signature = param(&upload_url, "signature").expect("signature");
    for (case, altered) in [
        (
            "expires=000N",
            upload_url.replace(
                &format!("expires={expires}"),
                &format!("expires=000{expires}"),
            ),
        ),
        (
            "uppercase signature",
            upload_url.replace(&signature, &signature.to_uppercase()),
        ),
    ] {
        let mut altered_direct = direct.clone();
        altered_direct["uploadUrl"] = json!(altered);
        assert_eq!(
            put_to(&app, &altered_direct, content.clone()).await,
            403,
            "PUT with {case}"
        );
    }
    assert_eq!(put_to(&app, &direct, content).await, 200);
}

/// A stored file opened from our origin runs no script (CSP sandbox), and saves with
/// the extension of its detected type: `notes.html` holding text is `notes.html.txt`.
async fn downloads_are_sandboxed_and_named_after_their_type(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let att = app
        .upload(
            &bearer,
            b"notes\n<script>alert(document.cookie)</script>\n",
            "contract",
            Some("c-1"),
            "notes.html",
        )
        .await;
    assert_eq!(att["contentType"], "text/plain");
    assert_eq!(att["filename"], "notes.html", "the stored name stays");
    let route = att["downloadUrl"].as_str().expect("downloadUrl").to_owned();
    let saved_as = |disposition: &str| {
        assert!(
            disposition.contains("filename=\"notes.html.txt\"")
                && disposition.contains("filename*=UTF-8''notes.html.txt"),
            "{disposition}"
        );
    };
    let get = app
        .client
        .get(&route)
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("GET");
    let head = app
        .client
        .head(&route)
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("HEAD");
    let range = app
        .client
        .get(&route)
        .bearer_auth(&bearer)
        .header("range", "bytes=0-3")
        .send()
        .await
        .expect("GET range");
    let inline = app
        .client
        .get(format!("{route}?inline=1"))
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("GET inline");
    for (case, response, status) in [
        ("GET", get, 200),
        ("HEAD", head, 200),
        ("Range", range, 206),
        ("?inline=1", inline, 200),
    ] {
        assert_eq!(response.status(), status, "{case}");
        let headers = response.headers();
        assert_eq!(headers["content-security-policy"], "sandbox", "{case}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{case}");
        saved_as(headers["content-disposition"].to_str().expect("ascii"));
    }

    let url = att["url"].as_str().expect("url");
    let by_link = reqwest::get(url).await.expect("GET url");
    assert_eq!(by_link.status(), 200);
    match &app.s3 {
        None => {
            assert_eq!(by_link.headers()["content-security-policy"], "sandbox");
            saved_as(
                by_link.headers()["content-disposition"]
                    .to_str()
                    .expect("ascii"),
            );
        }
        Some(_) => {
            let disposition = param(url, "response-content-disposition").expect("disposition");
            assert!(disposition.contains("notes.html.txt"), "{disposition}");
        }
    }

    let logo = app
        .upload(&bearer, &png(), "invoice_logo", None, "logo")
        .await;
    let response = app
        .client
        .get(logo["downloadUrl"].as_str().expect("downloadUrl"))
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("GET logo");
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .expect("ascii");
    assert!(
        disposition.contains("filename*=UTF-8''logo.png"),
        "no extension gets one: {disposition}"
    );

    // A long name is stored cut before its extension and offered shorter still:
    // 259 bytes offered (255 stored, `.pdf` appended) made Chromium cancel the
    // download and `curl -OJ` fail to write the file.
    let long = format!("{}.pdf", "契".repeat(90));
    let contract = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), &long)
        .await;
    let stored = contract["filename"].as_str().expect("filename");
    assert!(
        stored.len() <= 255 && stored.ends_with("契.pdf"),
        "{stored}"
    );
    let response = app
        .client
        .get(contract["downloadUrl"].as_str().expect("downloadUrl"))
        .bearer_auth(&bearer)
        .send()
        .await
        .expect("GET long name");
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .expect("ascii");
    let offered = disposition
        .split("filename*=UTF-8''")
        .nth(1)
        .expect("filename*");
    let offered = percent_encoding::percent_decode_str(offered)
        .decode_utf8()
        .expect("UTF-8");
    assert!(
        offered.len() <= 200 && offered.ends_with("契.pdf"),
        "{offered}"
    );

    // Shown inline, an image keeps the sandbox; a PDF goes without it, since
    // Chromium refuses to run its PDF viewer in a sandboxed document.
    let contract = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), "signed.pdf")
        .await;
    for (att, inline, sandboxed) in [
        (&logo, true, true),
        (&contract, false, true),
        (&contract, true, false),
    ] {
        let route = att["downloadUrl"].as_str().expect("downloadUrl");
        let url = match inline {
            true => format!("{route}?inline=1"),
            false => route.to_owned(),
        };
        let response = app.get_with(&url, &bearer).await;
        let headers = response.headers();
        let case = format!("{} inline={inline}", att["contentType"]);
        assert_eq!(
            headers.contains_key("content-security-policy"),
            sandboxed,
            "{case}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{case}");
        let disposition = headers["content-disposition"].to_str().expect("ascii");
        assert_eq!(
            disposition.starts_with("inline"),
            inline,
            "{case}: {disposition}"
        );
    }
}

/// A stored file cut short on disk (a failing disk, a hand edit) is a clear 404
/// before any header goes out, never a 200 that ends early and hands the client a
/// broken file as whole. (A file cut while it streams ends the body with an error:
/// `storage::file_read`'s tests.)
async fn a_file_cut_short_on_disk_is_a_clear_404_not_a_truncated_200(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let tenant = tenant();
    let bearer = app.token(&tenant);
    // Several reads long: a PDF with a long comment after its header line.
    let mut content = pdf();
    let rest = content.split_off("%PDF-1.4\n".len());
    content.extend(b"% ");
    content.extend(vec![b'x'; 300 * 1024]);
    content.push(b'\n');
    content.extend(rest);
    let att = app
        .upload(&bearer, &content, "contract", Some("c-1"), "long.pdf")
        .await;
    let route = att["downloadUrl"].as_str().expect("downloadUrl").to_owned();
    let whole = app.client.get(&route).bearer_auth(&bearer).send().await;
    let whole = whole.expect("GET").bytes().await.expect("body");
    assert_eq!(whole.as_ref(), content.as_slice());

    let path = app
        .storage_root
        .join(TestApp::contract_key(&tenant, "c-1", &att));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the stored file");
    file.set_len(100 * 1024).expect("cut it short");
    app.assert_download_lost(&att, &bearer).await;
}

/// An object that goes between its check and its read (a delete racing the
/// download; here the store's 404 to the GET after the HEAD found it) is a clear
/// 404 before any header. Before, the 200 and its headers went out first, and the
/// body broke off.
async fn an_object_gone_before_its_read_is_a_clear_404(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded { bearer, att, .. } = app.upload_contract_pdf("a.pdf").await;
    let faults = &app.s3.as_ref().expect("an s3s cell").faults;
    faults.add(Fault {
        method: http::Method::GET,
        query: "",
        times: 1,
        status: 404,
        code: "NoSuchKey",
    });
    let route = att["downloadUrl"].as_str().expect("downloadUrl");
    let response = app.client.get(route).bearer_auth(&bearer).send().await;
    let response = response.expect("GET");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["errors"][0]["extensions"]["attachmentId"], att["id"]);
    assert_eq!(faults.answered(), 1);
}

crate::matrix!(s3: an_object_gone_before_its_read_is_a_clear_404);

crate::matrix!(
    db: only_the_canonical_link_opens,
    a_file_cut_short_on_disk_is_a_clear_404_not_a_truncated_200,
);

crate::matrix!(
    downloads_are_sandboxed_and_named_after_their_type,
    the_url_opens_without_headers,
    the_same_url_is_handed_out_for_a_while,
    the_bearer_route_follows_every_header_rule,
    refused_links_and_tokens_answer_401_403_404,
    delete_removes_row_and_file,
    conditional_requests_follow_rfc_9110,
);
crate::matrix!(garage: the_bearer_route_follows_every_header_rule, delete_removes_row_and_file);
