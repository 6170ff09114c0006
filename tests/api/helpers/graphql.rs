//! GraphQL requests and answers: the operations tests send, the data or error codes
//! they read, multipart and direct uploads from start to end.

use serde_json::{Value, json};

use super::{Api, http_client, sha256_hex};

/// The field of a response that must have no errors.
pub fn data(body: &Value, field: &str) -> Value {
    assert!(
        body.get("errors").is_none_or(Value::is_null),
        "{field}: {body}"
    );
    body["data"][field].clone()
}

/// The `extensions.code` of every error.
pub fn codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    error["extensions"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

pub const UPLOAD: &str = "mutation($input: UploadAttachmentInput!) { uploadAttachment(input: $input) { id ownerType ownerId filename contentType byteSize sha256 url downloadUrl createdAt createdBy } }";
pub const GET: &str =
    "query($id: ID!) { attachment(id: $id) { id filename sha256 url downloadUrl } }";
pub const DELETE: &str = "mutation($id: ID!) { deleteAttachment(id: $id) }";

pub const CREATE_DIRECT: &str = "mutation($input: DirectUploadInput!) { createDirectUpload(input: $input) { id uploadUrl headers { name value } expiresAt } }";
pub const COMPLETE_DIRECT: &str = "mutation($id: ID!) { completeDirectUpload(id: $id) { id filename contentType byteSize sha256 url } }";

pub fn declaration(content: &[u8], content_type: &str) -> Value {
    json!({ "ownerType": "contract", "ownerId": "c-7", "filename": "Direkt.pdf", "contentType": content_type,
            "byteSize": content.len(), "sha256": sha256_hex(content) })
}

/// `createDirectUpload`, then the client's PUT with the given headers.
pub async fn announce_and_put(
    app: &Api,
    bearer: &str,
    declared: Value,
    body: Vec<u8>,
) -> (Value, u16) {
    let direct = announce(app, bearer, declared).await;
    let status = put_to(app, &direct, body).await;
    (direct, status)
}

/// `createDirectUpload` of `declared`: the direct upload, which the client PUTs next.
pub async fn announce(app: &Api, bearer: &str, declared: Value) -> Value {
    let created = app
        .gql(CREATE_DIRECT, json!({ "input": declared }), Some(bearer))
        .await;
    data(&created, "createDirectUpload")
}

/// The head of a multipart request that sends `operations` with one file mapped to
/// `variables.input.file`, up to where the file's bytes begin.
pub fn multipart_head(boundary: &str, operations: &Value, filename: &str, mime: &str) -> Vec<u8> {
    format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{operations}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n{{\"0\":[\"variables.input.file\"]}}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"0\"; filename=\"{filename}\"\r\nContent-Type: {mime}\r\n\r\n"
    )
    .into_bytes()
}

/// A PDF's direct upload from start to end: announced, PUT (which must succeed) and
/// completed; the direct upload and the attachment it became.
pub async fn direct_upload(app: &Api, bearer: &str, content: &[u8]) -> (Value, Value) {
    let declared = declaration(content, "application/pdf");
    let (direct, status) = announce_and_put(app, bearer, declared, content.to_vec()).await;
    assert_eq!(status, 200, "PUT to uploadUrl");
    let done = complete_direct(app, bearer, &direct).await;
    let attachment = data(&done, "completeDirectUpload");
    (direct, attachment)
}

/// `completeDirectUpload` of a direct upload `createDirectUpload` answered; the
/// response's body, for its data or its error codes.
pub async fn complete_direct(api: &Api, bearer: &str, direct: &Value) -> Value {
    api.gql(COMPLETE_DIRECT, json!({ "id": direct["id"] }), Some(bearer))
        .await
}

/// POSTs a GraphQL multipart request (with the preflight header of SPEC 6's CSRF
/// rule) to `base`; its status and JSON body.
pub async fn post_multipart(
    base: &str,
    bearer: &str,
    form: reqwest::multipart::Form,
) -> (u16, Value) {
    let response = http_client()
        .post(format!("{base}/graphql"))
        .bearer_auth(bearer)
        .header("apollo-require-preflight", "1")
        .multipart(form)
        .send()
        .await
        .expect("POST multipart");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// The client's PUT to a direct upload's `uploadUrl`, with its `headers`; as a
/// browser's, its `Content-Length` is its body's.
pub async fn put_to(app: &Api, direct: &Value, body: Vec<u8>) -> u16 {
    let mut put = app
        .client
        .put(direct["uploadUrl"].as_str().expect("uploadUrl"))
        .body(body);
    let headers = direct["headers"].as_array().expect("headers");
    for header in headers.iter().filter(|h| h["name"] != "content-length") {
        put = put.header(
            header["name"].as_str().expect("name"),
            header["value"].as_str().expect("value"),
        );
    }
    put.send().await.expect("PUT").status().as_u16()
}

/// The body of a GET of `url` without headers.
pub async fn fetch(url: &Value) -> Vec<u8> {
    let response = reqwest::get(url.as_str().expect("url")).await.expect("GET");
    response.bytes().await.expect("body").to_vec()
}

/// A multipart file part.
pub fn file_part(content: &[u8], filename: &str, mime: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(content.to_vec())
        .file_name(filename.to_owned())
        .mime_str(mime)
        .expect("mime")
}

/// The `operations` and `map` of a multipart request storing the files `$a` and
/// `$b` in the `contract` collection (owner `c`), aliased `a` and `b`, each
/// answering `fields`; `map` says which part each reads. The parts go after.
pub fn two_files_form(fields: &str, map: Value) -> reqwest::multipart::Form {
    let store = |variable: &str| {
        format!(
            "{variable}: uploadAttachmentFile(input: {{ownerType: \"contract\", ownerId: \"c\", file: ${variable}}}) {{ {fields} }}"
        )
    };
    let query = format!(
        "mutation($a: Upload!, $b: Upload!) {{ {} {} }}",
        store("a"),
        store("b")
    );
    reqwest::multipart::Form::new()
        .text(
            "operations",
            json!({ "query": query, "variables": { "a": null, "b": null } }).to_string(),
        )
        .text("map", map.to_string())
}

/// A GraphQL multipart request of `uploadAttachmentFile` carrying `content`.
pub fn upload_file_form(
    owner_type: &str,
    owner_id: &str,
    content: &[u8],
    filename: &str,
    mime: &str,
) -> reqwest::multipart::Form {
    let operations = json!({
        "query": "mutation($input: UploadAttachmentFileInput!) { uploadAttachmentFile(input: $input) { id filename contentType sha256 } }",
        "variables": { "input": { "ownerType": owner_type, "ownerId": owner_id, "file": null } }
    });
    reqwest::multipart::Form::new()
        .text("operations", operations.to_string())
        .text("map", json!({ "0": ["variables.input.file"] }).to_string())
        .part("0", file_part(content, filename, mime))
}
