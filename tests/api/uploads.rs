//! Uploads: what is stored where, every validation error with its code and nothing
//! written, hostile input, all-or-nothing batches, multipart, a failing row.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::helpers::{
    Refusal, Setup, TestApp, UPLOAD, Uploaded, codes, data, fetch, file_part, multipart_head, pdf,
    png, post_multipart, sha256_hex, tenant, two_files_form, upload_file_form,
};

async fn upload_stores_the_file_under_its_collection_key(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let Uploaded {
        tenant: acme,
        bearer,
        content,
        att,
        ..
    } = app.upload_contract_pdf("Vertrag März.pdf").await;
    assert_eq!(att["ownerType"], "contract");
    assert_eq!(att["ownerId"], "c-1");
    assert_eq!(att["filename"], "Vertrag März.pdf");
    assert_eq!(att["contentType"], "application/pdf");
    assert_eq!(att["byteSize"], content.len());
    assert_eq!(att["sha256"], sha256_hex(&content));
    assert_eq!(att["createdBy"], "user-1");
    let id = att["id"].as_str().expect("id");
    assert_eq!(
        uuid::Uuid::parse_str(id).expect("uuid").get_version_num(),
        7
    );
    // The createdAt the mutation answers is the one every later read gives (on
    // PostgreSQL it once had nanoseconds that the column does not keep).
    let read = app
        .gql(
            r#"query($id: ID!) { attachment(id: $id) { createdAt }
                 attachments(ownerType: "contract", ownerId: "c-1") { nodes { createdAt } } }"#,
            json!({ "id": id }),
            Some(&bearer),
        )
        .await;
    assert_eq!(
        data(&read, "attachment")["createdAt"],
        att["createdAt"],
        "{read}"
    );
    assert_eq!(
        data(&read, "attachments")["nodes"][0]["createdAt"],
        att["createdAt"]
    );
    let key = format!("{acme}/contracts/c-1/{id}.pdf");
    assert_eq!(app.stored_keys(), vec![key.clone()]);
    assert_eq!(
        std::fs::read(app.storage_root.join(&key)).expect("stored file"),
        content
    );

    let logo = app
        .upload(
            &bearer,
            &png(),
            "invoice_logo",
            Some("ignored-1"),
            "logo.png",
        )
        .await;
    let logo_id = logo["id"].as_str().expect("id");
    assert!(
        app.stored_keys()
            .contains(&format!("{acme}/invoices/logos/{logo_id}.png"))
    );
    assert_eq!(logo["ownerId"], "ignored-1", "kept as metadata");
}

async fn every_tolerated_base64_form_is_accepted(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let content = pdf();
    let standard = STANDARD.encode(&content);
    let wrapped: String = standard
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\r\n", std::str::from_utf8(line).expect("ascii")))
        .collect();
    for encoded in [
        URL_SAFE_NO_PAD.encode(&content),
        format!("data:application/pdf;base64,{standard}"),
        wrapped,
    ] {
        let body = app
            .gql(
                UPLOAD,
                json!({ "input": { "ownerType": "contract", "ownerId": "c-1", "filename": "a.pdf", "base64": encoded }}),
                Some(&bearer),
            )
            .await;
        assert_eq!(
            data(&body, "uploadAttachment")["sha256"],
            sha256_hex(&content)
        );
    }
}

fn input(owner_type: &str, owner_id: Option<&str>, filename: &str, base64: &str) -> Value {
    json!({ "ownerType": owner_type, "ownerId": owner_id, "filename": filename, "base64": base64 })
}

async fn every_validation_error_has_its_code_and_stores_nothing(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let pdf64 = STANDARD.encode(pdf());
    let big_png = {
        let mut bytes = png();
        bytes.resize(2 * 1024 * 1024 + 1, 0);
        STANDARD.encode(bytes)
    };
    let mut declared_png = input("contract", Some("c-1"), "x.pdf", &pdf64);
    declared_png["contentType"] = json!("image/png");
    let mut wrong_sha = input("contract", Some("c-1"), "x.pdf", &pdf64);
    wrong_sha["sha256"] = json!(sha256_hex(b"something else"));
    let mut malformed_sha = input("contract", Some("c-1"), "x.pdf", &pdf64);
    malformed_sha["sha256"] = json!("xyz");
    let mut big_with_bad_sha = input("invoice_logo", None, "x.png", &big_png);
    big_with_bad_sha["sha256"] = json!("xyz");
    let cases = [
        (
            "unknown owner type",
            input("spaceship", Some("c-1"), "x.pdf", &pdf64),
            "BAD_USER_INPUT",
        ),
        (
            "invalid base64",
            input("contract", Some("c-1"), "x.pdf", "not base64 at all!"),
            "BAD_USER_INPUT",
        ),
        (
            "empty file",
            input("contract", Some("c-1"), "x.pdf", ""),
            "BAD_USER_INPUT",
        ),
        (
            "owner id missing",
            input("contract", None, "x.pdf", &pdf64),
            "BAD_USER_INPUT",
        ),
        (
            "owner id with a path",
            input("contract", Some("../../etc"), "x.pdf", &pdf64),
            "BAD_USER_INPUT",
        ),
        (
            "owner id with a slash",
            input("customer", Some("a/b"), "x.pdf", &pdf64),
            "BAD_USER_INPUT",
        ),
        (
            "larger than the collection",
            input("invoice_logo", None, "x.png", &big_png),
            "PAYLOAD_TOO_LARGE",
        ),
        (
            "executable",
            input(
                "contract",
                Some("c-1"),
                "x.pdf",
                &STANDARD.encode(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00"),
            ),
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "pdf as a logo",
            input("invoice_logo", None, "x.png", &pdf64),
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "invalid UTF-8 text",
            input(
                "contract",
                Some("c-1"),
                "x.txt",
                &STANDARD.encode([0xff, 0xfe, 0xfd]),
            ),
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "declared type contradicts",
            declared_png,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            // Markup behind a UTF-8 byte-order mark was stored as text/plain.
            "HTML behind a byte-order mark",
            input(
                "contract",
                Some("c-1"),
                "x.txt",
                &STANDARD.encode(b"\xEF\xBB\xBF<!DOCTYPE html><script>1</script>"),
            ),
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            // Markup `infer` has no matcher for was stored as text/plain.
            "SVG with a script",
            input(
                "contract",
                Some("c-1"),
                "x.svg",
                &STANDARD
                    .encode(b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>"),
            ),
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        ("checksum differs", wrong_sha, "CHECKSUM_MISMATCH"),
        ("malformed checksum", malformed_sha, "CHECKSUM_MISMATCH"),
        (
            "too large and a bad checksum: size first",
            big_with_bad_sha,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (case, input, code) in cases {
        let body = app
            .gql(UPLOAD, json!({ "input": input }), Some(&bearer))
            .await;
        assert_eq!(codes(&body), vec![code], "{case}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        let root = app.storage_root.to_string_lossy();
        assert!(
            !message.contains(root.as_ref()),
            "{case}: message leaks a path: {message}"
        );
        // What to send instead: the owner types there are, the types accepted.
        let says = match case {
            "unknown owner type" => Some("expected one of contract, customer"),
            "pdf as a logo" => {
                Some("its content is application/pdf; it accepts image/png, image/jpeg")
            }
            "executable" => Some("of no type attache knows; it accepts application/pdf"),
            _ => None,
        };
        if let Some(says) = says {
            assert!(message.contains(says), "{case}: {message}");
        }
    }
    assert_eq!(app.row_count(&acme).await, 0);
    assert!(app.stored_keys().is_empty(), "{:?}", app.stored_keys());
}

async fn hostile_filenames_lose_paths_and_control_characters(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let hostile = format!("../../etc/\u{202e}fdp.exe\u{0}\r\n{}", "ü".repeat(200));
    let att = app
        .upload(&bearer, &pdf(), "contract", Some("c-1"), &hostile)
        .await;
    let filename = att["filename"].as_str().expect("filename");
    assert!(filename.starts_with("fdp.exe"), "{filename}");
    assert!(
        filename.len() <= 255 && !filename.contains('/') && !filename.chars().any(char::is_control)
    );
    let id = att["id"].as_str().expect("id");
    assert_eq!(
        app.stored_keys(),
        vec![format!("{acme}/contracts/c-1/{id}.pdf")]
    );
}

async fn a_batch_is_all_or_nothing(setup: Setup) {
    let app = TestApp::spawn_with(setup, &["--max-batch-files", "3"]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let batch = "mutation($input: [UploadAttachmentInput!]!) { uploadAttachments(input: $input) { id filename } }";
    let pdf64 = STANDARD.encode(pdf());
    let good = input("contract", Some("c-1"), "a.pdf", &pdf64);
    let bad = input("contract", Some("c-1"), "b.pdf", "%%%");
    let body = app
        .gql(batch, json!({ "input": [good, good, bad] }), Some(&bearer))
        .await;
    assert_eq!(codes(&body), vec!["BAD_USER_INPUT"], "{body}");
    assert_eq!(body["errors"][0]["extensions"]["index"], 2);
    assert_eq!(app.row_count(&acme).await, 0);
    assert!(app.stored_keys().is_empty());

    let body = app
        .gql(
            batch,
            json!({ "input": [good, good, good, good] }),
            Some(&bearer),
        )
        .await;
    assert_eq!(
        codes(&body),
        vec!["BAD_USER_INPUT"],
        "over MAX_BATCH_FILES: {body}"
    );

    // No files: nothing stored, no error (it was an INTERNAL_SERVER_ERROR, an INSERT
    // of no rows, and a "database failure" in the log).
    let body = app.gql(batch, json!({ "input": [] }), Some(&bearer)).await;
    assert_eq!(body["data"]["uploadAttachments"], json!([]), "{body}");

    let body = app
        .gql(batch, json!({ "input": [good, good, good] }), Some(&bearer))
        .await;
    assert_eq!(
        data(&body, "uploadAttachments").as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(app.row_count(&acme).await, 3);
    assert_eq!(app.stored_keys().len(), 3);
}

async fn multipart_uploads_follow_the_same_rules(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let content = pdf();
    let form = || {
        upload_file_form(
            "customer",
            "k-9",
            &content,
            "Auftrag.pdf",
            "application/pdf",
        )
    };
    let blocked = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&bearer)
        .multipart(form())
        .send()
        .await
        .expect("POST");
    assert_eq!(
        blocked.status(),
        400,
        "multipart without a preflight header is a CSRF risk"
    );
    assert!(
        blocked
            .text()
            .await
            .expect("body")
            .contains("apollo-require-preflight")
    );
    assert_eq!(app.row_count(&acme).await, 0);

    let (_, body) = post_multipart(&app.base_url, &bearer, form()).await;
    let att = data(&body, "uploadAttachmentFile");
    assert_eq!(att["filename"], "Auftrag.pdf");
    assert_eq!(att["sha256"], sha256_hex(&content));
    let id = att["id"].as_str().expect("id");
    assert_eq!(
        app.stored_keys(),
        vec![format!("{acme}/customers/k-9/{id}.pdf")]
    );
}

/// Text files as a browser declares them by extension (`File.type`: text/markdown
/// for `.md`, application/json for `.json`) are stored as text on every path: the
/// multipart and direct paths refused them as declaring a type the bytes
/// contradict, though base64 stored them. A type attache does not know still
/// contradicts other bytes, and a direct upload that names no type is told so.
async fn text_as_browsers_declare_it_is_stored_on_every_path(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let markdown = b"# Minutes\n\n- signed\n".to_vec();
    let form = upload_file_form("contract", "c-1", &markdown, "notes.md", "text/markdown");
    let (_, body) = post_multipart(&app.base_url, &bearer, form).await;
    assert_eq!(
        data(&body, "uploadAttachmentFile")["contentType"],
        "text/plain"
    );
    let json_bytes = br#"{"signed": true}"#;
    let stored = app
        .gql(
            UPLOAD,
            json!({ "input": { "ownerType": "contract", "ownerId": "c-1", "filename": "meta.json",
                "contentType": "application/json", "base64": STANDARD.encode(json_bytes) }}),
            Some(&bearer),
        )
        .await;
    assert_eq!(
        data(&stored, "uploadAttachment")["contentType"],
        "text/plain"
    );
    let mut declared = crate::helpers::declaration(&markdown, "text/markdown");
    declared["filename"] = json!("notes.md");
    let (direct, status) =
        crate::helpers::announce_and_put(&app, &bearer, declared, markdown.clone()).await;
    assert_eq!(status, 200);
    let done = crate::helpers::complete_direct(&app, &bearer, &direct).await;
    assert_eq!(
        data(&done, "completeDirectUpload")["contentType"],
        "text/plain"
    );

    let form = upload_file_form("contract", "c-1", &markdown, "notes.png", "image/png");
    let (_, body) = post_multipart(&app.base_url, &bearer, form).await;
    assert_eq!(codes(&body), ["UNSUPPORTED_MEDIA_TYPE"], "{body}");
    let form = upload_file_form("contract", "c-1", &pdf(), "notes.md", "text/markdown");
    let (_, body) = post_multipart(&app.base_url, &bearer, form).await;
    assert_eq!(codes(&body), ["UNSUPPORTED_MEDIA_TYPE"], "{body}");
    let mut nothing = crate::helpers::declaration(&markdown, "");
    nothing["filename"] = json!("notes.md");
    let refused = app
        .gql(
            crate::helpers::CREATE_DIRECT,
            json!({ "input": nothing }),
            Some(&bearer),
        )
        .await;
    assert_eq!(codes(&refused), ["UNSUPPORTED_MEDIA_TYPE"], "{refused}");
    let message = refused["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("neither `contentType` nor the filename's extension"),
        "{message}"
    );
}

/// Text whose first letters are a weak image signature (`GIF`, `BM`, `WEBP` at byte
/// 8) is text, not a GIF stored as `gifts.csv.gif` nor a BMP refused; a "logo" of
/// twelve letters is no WebP; and the types browsers declare for a CSV (Excel's on
/// Windows) declare a CSV, by base64 and by multipart.
async fn text_is_told_from_images_by_whole_signatures(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let upload = |content: &'static [u8], owner_type: &'static str, filename: &'static str| {
        let bearer = bearer.clone();
        let app = &app;
        async move {
            app.gql(
                UPLOAD,
                json!({ "input": { "ownerType": owner_type, "ownerId": "c-1",
                    "filename": filename, "contentType": "text/csv",
                    "base64": STANDARD.encode(content) }}),
                Some(&bearer),
            )
            .await
        }
    };
    for (content, filename) in [
        (&b"GIFT,amount\nA,1\n"[..], "gifts.csv"),
        (b"BMW,320i\nAudi,A4\n", "cars.csv"),
    ] {
        let stored = upload(content, "contract", filename).await;
        let att = data(&stored, "uploadAttachment");
        assert_eq!(att["contentType"], "text/csv", "{filename}: {stored}");
        assert_eq!(att["filename"], filename);
        let key = format!(
            "{acme}/contracts/c-1/{}.csv",
            att["id"].as_str().expect("id")
        );
        assert!(app.stored_keys().contains(&key), "{key}");
    }
    let logo = upload(b"abcdefghWEBPnot an image", "invoice_logo", "logo.webp").await;
    assert_eq!(codes(&logo), vec!["UNSUPPORTED_MEDIA_TYPE"], "{logo}");

    let (_, body) = post_multipart(
        &app.base_url,
        &bearer,
        upload_file_form(
            "contract",
            "c-1",
            b"a,b\n1,2\n",
            "data.csv",
            "application/vnd.ms-excel",
        ),
    )
    .await;
    assert_eq!(
        data(&body, "uploadAttachmentFile")["contentType"],
        "text/csv",
        "{body}"
    );
}

/// A part mapped to one variable that two fields read streams to the first; the
/// second is told how to map it (it said only "the part was used already").
async fn a_part_read_by_two_fields_says_how_to_map_it(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let store = |alias: &str| {
        format!(
            "{alias}: uploadAttachmentFile(input: {{ownerType: \"contract\", ownerId: \"c\", file: $f}}) {{ id }}"
        )
    };
    let query = format!("mutation($f: Upload!) {{ {} {} }}", store("a"), store("b"));
    let form = reqwest::multipart::Form::new()
        .text(
            "operations",
            json!({ "query": query, "variables": { "f": null } }).to_string(),
        )
        .text("map", json!({ "0": ["variables.f"] }).to_string())
        .part("0", file_part(&pdf(), "a.pdf", "application/pdf"));
    let (_, body) = post_multipart(&app.base_url, &bearer, form).await;
    assert!(body["data"]["a"]["id"].is_string(), "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("map its part to a variable for each field"),
        "{body}"
    );
    assert_eq!(body["errors"][0]["path"], json!(["b"]), "{body}");
}

/// A `map` path that names no variable (a typo) is refused with 400 naming it,
/// before its file is read: it was ignored, the part uploaded and dropped, and the
/// client was told only that `input.file` was not an Upload.
async fn a_map_path_to_no_variable_is_named(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let query = "mutation($input: UploadAttachmentFileInput!) { uploadAttachmentFile(input: $input) { id } }";
    for path in [
        "variables.input.fil",
        "variables.nothing",
        "input.file",
        "variables.input.file.0",
    ] {
        let form = reqwest::multipart::Form::new()
            .text(
                "operations",
                json!({ "query": query, "variables": { "input": {
                    "ownerType": "contract", "ownerId": "c", "file": null } } })
                .to_string(),
            )
            .text("map", json!({ "0": [path] }).to_string())
            .part("0", file_part(&pdf(), "a.pdf", "application/pdf"));
        let (status, body) = post_multipart(&app.base_url, &bearer, form).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("the `map` path `{path}` names no variable")),
            "{path}: {body}"
        );
    }
    assert_eq!(app.row_count(&acme).await, 0);
    assert!(app.stored_keys().is_empty());
}

/// Multipart parts stream to the resolver waiting for them, in any order: a part
/// sent before the one the running resolver needs waits in a temporary file. A part
/// whose first bytes are refused is answered at once, without reading the rest of
/// the body (the connection closes), and nothing is stored.
async fn multipart_parts_stream_in_any_order_and_a_refusal_reads_no_further(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let (first, second) = (pdf(), b"Vertrag, Seite 2\n".repeat(5000));
    // $b's part comes first, while `a` runs first and waits for its own.
    let form = two_files_form(
        "sha256",
        json!({ "0": ["variables.b"], "1": ["variables.a"] }),
    )
    .part("0", file_part(&second, "zwei.txt", "text/plain"))
    .part("1", file_part(&first, "eins.pdf", "application/pdf"));
    let (_, body) = post_multipart(&app.base_url, &bearer, form).await;
    assert_eq!(data(&body, "a")["sha256"], sha256_hex(&first), "{body}");
    assert_eq!(data(&body, "b")["sha256"], sha256_hex(&second), "{body}");
    assert_eq!(app.stored_keys().len(), 2);

    // Refused as soon as the running count passes the collection's limit (2 MiB
    // for an invoice logo), with nothing left of what was written.
    let mut logo = png();
    logo.resize(3 * 1024 * 1024, 0);
    let operations = json!({
        "query": "mutation($input: UploadAttachmentFileInput!) { uploadAttachmentFile(input: $input) { id } }",
        "variables": { "input": { "ownerType": "invoice_logo", "file": null } },
    });
    let form = reqwest::multipart::Form::new()
        .text("operations", operations.to_string())
        .text("map", json!({ "0": ["variables.input.file"] }).to_string())
        .part("0", file_part(&logo, "logo.png", "image/png"));
    let (_, refused) = post_multipart(&app.base_url, &bearer, form).await;
    assert_eq!(codes(&refused), vec!["PAYLOAD_TOO_LARGE"], "{refused}");
    assert_eq!(app.stored_keys().len(), 2);

    // A PNG is no invoice reference (PDF only): refused from its first bytes, while
    // 8 MiB are announced.
    let boundary = "attache-test-boundary";
    let operations = json!({
        "query": "mutation($input: UploadAttachmentFileInput!) { uploadAttachmentFile(input: $input) { id } }",
        "variables": { "input": { "ownerType": "invoice_reference", "file": null } },
    });
    let mut head = multipart_head(boundary, &operations, "logo.png", "image/png");
    let announced = head.len() + 8 * 1024 * 1024;
    head.extend(png());
    head.resize(head.len() + 256 * 1024, 0);
    let url = app.url("");
    let address = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let mut tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {bearer}\r\n\
         apollo-require-preflight: 1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {announced}\r\n\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(request.as_bytes())
        .await
        .expect("send the head");
    tcp.write_all(&head).await.expect("send the first bytes");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        loop {
            match tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok(),
        "no answer while the rest of the body is missing: {answer}"
    );
    assert!(answer.contains("UNSUPPORTED_MEDIA_TYPE"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(
        app.stored_keys().len(),
        2,
        "nothing stored of the refused part"
    );
    assert_eq!(app.row_count(&acme).await, 2);
}

/// A JSON body with more large files than a request may store is refused while it
/// arrives, before the next one is decoded, and nothing is stored.
async fn too_many_large_files_in_one_body_are_refused_as_they_arrive(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let mut content = pdf();
    content.resize(100_000, b'x');
    let encoded = STANDARD.encode(&content);
    let files: Vec<Value> = (0..21)
        .map(|i| input("contract", Some("c-1"), &format!("{i}.pdf"), &encoded))
        .collect();
    let batch =
        "mutation($input: [UploadAttachmentInput!]!) { uploadAttachments(input: $input) { id } }";
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(app.token(&acme))
        .json(&json!({ "query": batch, "variables": { "input": files } }))
        .send()
        .await
        .expect("an answer, not a reset connection");
    assert_eq!(response.status(), 200, "a GraphQL error, as SPEC 6 has it");
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(codes(&body), vec!["BAD_USER_INPUT"], "{body:.300}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("more than 20 files (MAX_BATCH_FILES)"),
        "{message}"
    );
    assert!(app.stored_keys().is_empty());
}

/// A row that cannot be written must not leave its object behind.
async fn a_failing_row_removes_its_object(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let refusal = Refusal::install(&app, "attachments", &acme).await;
    let body = app
        .gql(
            UPLOAD,
            json!({ "input": input("contract", Some("c-1"), "a.pdf", &STANDARD.encode(pdf())) }),
            Some(&app.token(&acme)),
        )
        .await;
    assert_eq!(codes(&body), vec!["INTERNAL_SERVER_ERROR"], "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains("trigger") && !message.to_lowercase().contains("insert"),
        "leaks SQL: {message}"
    );
    assert!(
        app.stored_keys().is_empty(),
        "object left behind: {:?}",
        app.stored_keys()
    );
    refusal.remove(&app).await;
    // The failed transaction is rolled back, not left open for the next upload.
    let stored = app
        .upload(&app.token(&acme), &pdf(), "contract", Some("c-1"), "b.pdf")
        .await;
    assert_eq!(app.stored_keys().len(), 1, "{stored}");
}

/// Files past the sizes where uploads take their fast paths (decoded as the body
/// arrives from 64 KiB of text, spooled to a file past 1.5 MiB, written with
/// `O_DIRECT` from 512 KiB) come back byte for byte: odd sizes, every base64 form, one
/// variable used twice, a checksum sent right and wrong, and a placeholder forged
/// by a client.
async fn large_files_keep_every_byte(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let bearer = app.token(&tenant());
    let file_of = |size: u32| {
        let mut content = pdf();
        content.extend((0..size).map(|i: u32| (i % 251) as u8));
        content
    };
    // Decoded in memory as it arrives, then spooled to a file.
    for size in [300_007, (4 << 20) + 4099] {
        let content = file_of(size);
        let standard = STANDARD.encode(&content);
        for encoded in [
            standard.clone(),
            URL_SAFE_NO_PAD.encode(&content),
            format!("data:application/pdf;base64,{standard}"),
            standard
                .as_bytes()
                .chunks(76)
                .map(|line| format!("{}\n", String::from_utf8_lossy(line)))
                .collect(),
        ] {
            let body = app
                .gql(
                    UPLOAD,
                    json!({ "input": input("contract", Some("c-1"), "big.pdf", &encoded) }),
                    Some(&bearer),
                )
                .await;
            let stored = data(&body, "uploadAttachment");
            assert_eq!(stored["sha256"], sha256_hex(&content));
            assert_eq!(stored["byteSize"], content.len());
            assert_eq!(fetch(&stored["url"]).await, content, "bytes through url");
        }
    }
    let content = file_of((4 << 20) + 4099);
    let standard = STANDARD.encode(&content);
    let twice = "mutation($file: UploadAttachmentInput!) { uploadAttachments(input: [$file, $file]) { sha256 byteSize } }";
    let body = app
        .gql(
            twice,
            json!({ "file": input("contract", Some("c-1"), "big.pdf", &standard) }),
            Some(&bearer),
        )
        .await;
    let stored = data(&body, "uploadAttachments");
    let stored = stored.as_array().expect("list");
    assert_eq!(stored.len(), 2, "one file per item: {body}");
    for file in stored {
        assert_eq!(file["sha256"], sha256_hex(&content));
    }
    let before = app.stored_keys();
    let mut checked = input("contract", Some("c-1"), "big.pdf", &standard);
    checked["sha256"] = json!(sha256_hex(b"another file"));
    let body = app
        .gql(UPLOAD, json!({ "input": checked.clone() }), Some(&bearer))
        .await;
    assert_eq!(codes(&body), vec!["CHECKSUM_MISMATCH"], "{body}");
    assert_eq!(app.stored_keys(), before, "a mismatch stores nothing");
    checked["sha256"] = json!(sha256_hex(&content));
    let body = app
        .gql(UPLOAD, json!({ "input": checked }), Some(&bearer))
        .await;
    assert_eq!(
        data(&body, "uploadAttachment")["sha256"],
        sha256_hex(&content)
    );
    let forged = "\u{0}attache-large-string-00000000-0000-0000-0000-000000000000:0";
    let body = app
        .gql(
            UPLOAD,
            json!({ "input": input("contract", Some("c-1"), "f.pdf", forged) }),
            Some(&bearer),
        )
        .await;
    assert_eq!(codes(&body), vec!["BAD_USER_INPUT"], "{body}");
}

/// Concurrent uploads share their commits on SQLite; a refused one among them fails
/// alone, without its object, and the others are stored.
async fn a_refused_upload_among_concurrent_ones_fails_alone(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let (refused, accepted) = (tenant(), tenant());
    let refusal = Refusal::install(&app, "attachments", &refused).await;
    let (refused_bearer, accepted_bearer) = (app.token(&refused), app.token(&accepted));
    let uploads = (0..24).map(|i| {
        let bearer = if i % 4 == 0 {
            &refused_bearer
        } else {
            &accepted_bearer
        };
        let file = input("contract", Some("c-1"), "a.pdf", &STANDARD.encode(pdf()));
        app.gql(UPLOAD, json!({ "input": file }), Some(bearer))
    });
    let answers = futures::future::join_all(uploads).await;
    for (i, body) in answers.iter().enumerate() {
        match i % 4 {
            0 => assert_eq!(codes(body), vec!["INTERNAL_SERVER_ERROR"], "{body}"),
            _ => assert!(body["errors"].is_null(), "{body}"),
        }
    }
    let keys = app.stored_keys();
    assert_eq!(keys.len(), 18, "{keys:?}");
    assert!(
        keys.iter().all(|key| key.starts_with(accepted.as_str())),
        "{keys:?}"
    );
    refusal.remove(&app).await;
}

crate::matrix!(
    upload_stores_the_file_under_its_collection_key,
    a_part_read_by_two_fields_says_how_to_map_it,
    a_map_path_to_no_variable_is_named,
    a_refused_upload_among_concurrent_ones_fails_alone,
    large_files_keep_every_byte,
    every_tolerated_base64_form_is_accepted,
    every_validation_error_has_its_code_and_stores_nothing,
    hostile_filenames_lose_paths_and_control_characters,
    a_batch_is_all_or_nothing,
    multipart_uploads_follow_the_same_rules,
    text_is_told_from_images_by_whole_signatures,
    text_as_browsers_declare_it_is_stored_on_every_path,
    multipart_parts_stream_in_any_order_and_a_refusal_reads_no_further,
    too_many_large_files_in_one_body_are_refused_as_they_arrive,
    a_failing_row_removes_its_object,
);
crate::matrix!(
    garage: a_refused_upload_among_concurrent_ones_fails_alone,
    large_files_keep_every_byte,
    every_validation_error_has_its_code_and_stores_nothing,
    a_batch_is_all_or_nothing,
    multipart_uploads_follow_the_same_rules,
    a_failing_row_removes_its_object,
);
