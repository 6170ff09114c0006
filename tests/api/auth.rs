//! Every token fault of SPEC 5, the key families, scopes, and two tenants that cannot
//! see, link, download or delete each other's files.

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::helpers::{
    DELETE, GET, SECRET, Setup, TestApp, codes, data, fixture, hs256, now, pdf, sign, tenant,
};

const LIST: &str = "query { attachments(ownerType: \"contract\") { totalCount } }";

fn unsigned(claims: &Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(json!({ "alg": "none", "typ": "JWT" }).to_string()),
        b64.encode(claims.to_string())
    )
}

async fn assert_accepted(app: &TestApp, token: &str, case: &str) {
    let body = app.gql(LIST, json!({}), Some(token)).await;
    assert_eq!(
        data(&body, "attachments")["totalCount"],
        0,
        "{case}: {body}"
    );
}

async fn assert_unauthenticated(app: &TestApp, token: Option<&str>, case: &str) {
    let body = app.gql(LIST, json!({}), token).await;
    assert_eq!(codes(&body), vec!["UNAUTHENTICATED"], "{case}: {body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(!message.contains(SECRET), "{case}: leaks the secret");
}

async fn every_token_fault_is_unauthenticated(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let valid = json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 });
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).expect("key"))
        .expect("rsa");
    let other_secret = EncodingKey::from_secret(b"another secret entirely");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("garbage".into())),
        (
            "expired",
            Some(hs256(
                json!({ "sub": "u", "tenant_id": acme, "exp": now() - 120 }),
            )),
        ),
        (
            "not yet valid",
            Some(hs256(
                json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600, "nbf": now() + 300 }),
            )),
        ),
        (
            "no exp",
            Some(hs256(json!({ "sub": "u", "tenant_id": acme }))),
        ),
        (
            "wrong key",
            Some(sign(Algorithm::HS256, &other_secret, valid.clone())),
        ),
        ("alg none", Some(unsigned(&valid))),
        (
            "RS256 where HS256 is configured",
            Some(sign(Algorithm::RS256, &rsa, valid.clone())),
        ),
        (
            "no sub",
            Some(hs256(json!({ "tenant_id": acme, "exp": now() + 600 }))),
        ),
        (
            "sub longer than OpenID Connect's 255",
            Some(hs256(
                json!({ "sub": "u".repeat(256), "tenant_id": acme, "exp": now() + 600 }),
            )),
        ),
        (
            // Stored as `createdBy`: PostgreSQL refused the NUL with a 500.
            "NUL in sub",
            Some(hs256(
                json!({ "sub": "a\u{0}b", "tenant_id": acme, "exp": now() + 600 }),
            )),
        ),
        (
            "newline in sub",
            Some(hs256(
                json!({ "sub": "a\nb", "tenant_id": acme, "exp": now() + 600 }),
            )),
        ),
        (
            "no tenant",
            Some(hs256(json!({ "sub": "u", "exp": now() + 600 }))),
        ),
        (
            "tenant not a string",
            Some(hs256(
                json!({ "sub": "u", "tenant_id": 42, "exp": now() + 600 }),
            )),
        ),
        (
            "hostile tenant",
            Some(hs256(
                json!({ "sub": "u", "tenant_id": "../other", "exp": now() + 600 }),
            )),
        ),
        (
            "the folder of database backups for a tenant",
            Some(hs256(
                json!({ "sub": "u", "tenant_id": "backups", "exp": now() + 600 }),
            )),
        ),
    ];
    for (case, token) in cases {
        assert_unauthenticated(&app, token.as_deref(), case).await;
    }
    let fine = app.gql(LIST, json!({}), Some(&hs256(valid))).await;
    assert_eq!(data(&fine, "attachments")["totalCount"], 0);
    let hs512 = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 }),
    );
    assert_eq!(
        data(&app.gql(LIST, json!({}), Some(&hs512)).await, "attachments")["totalCount"],
        0,
        "the HS family"
    );
}

async fn issuer_and_audience_are_required_when_configured(setup: Setup) {
    let app = TestApp::spawn_with(
        setup,
        &[
            "--jwt-issuer",
            "https://idp.example",
            "--jwt-audience",
            "attache",
        ],
    )
    .await;
    let acme = tenant();
    let claims = |extra: Value| {
        let mut claims = json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 });
        claims
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        hs256(claims)
    };
    for (case, token) in [
        ("no iss", claims(json!({ "aud": "attache" }))),
        ("no aud", claims(json!({ "iss": "https://idp.example" }))),
        (
            "wrong iss",
            claims(json!({ "iss": "https://evil.example", "aud": "attache" })),
        ),
        (
            "wrong aud",
            claims(json!({ "iss": "https://idp.example", "aud": "other" })),
        ),
    ] {
        assert_unauthenticated(&app, Some(&token), case).await;
    }
    // A missing claim is named, so the identity provider's setup can be fixed.
    for (claim, token) in [
        ("iss", claims(json!({ "aud": "attache" }))),
        ("aud", claims(json!({ "iss": "https://idp.example" }))),
    ] {
        let body = app.gql(LIST, json!({}), Some(&token)).await;
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("`{claim}`")),
            "{claim}: {message}"
        );
    }
    let good = claims(json!({ "iss": "https://idp.example", "aud": "attache" }));
    assert_eq!(
        data(&app.gql(LIST, json!({}), Some(&good)).await, "attachments")["totalCount"],
        0
    );
}

/// Keys rotate without a cutover: a token signed with `JWT_PREVIOUS_SECRET`, or with
/// any key of a `JWT_PUBLIC_KEY_FILE` that holds several, is accepted; a token of
/// any other key is not. Before, one key only: a change refused every token in use.
async fn keys_rotate_without_a_cutover(setup: Setup) {
    let acme = tenant();
    let claims = json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 });
    let previous = "the-previous-secret-0123456789abcdef0123";
    let app = TestApp::spawn_with(setup, &["--jwt-previous-secret", previous]).await;
    let signed_with = |secret: &str| {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret.as_bytes()),
            claims.clone(),
        )
    };
    assert_accepted(&app, &hs256(claims.clone()), "JWT_SECRET").await;
    assert_accepted(&app, &signed_with(previous), "JWT_PREVIOUS_SECRET").await;
    let other = signed_with("some-other-secret-0123456789abcdef012345");
    assert_unauthenticated(&app, Some(&other), "another secret").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let both = dir.path().join("keys.pem");
    let mut pem = std::fs::read(fixture("rsa_public.pem")).expect("RSA key");
    pem.extend(std::fs::read(fixture("ec_public.pem")).expect("EC key"));
    std::fs::write(&both, &pem).expect("write keys");
    let path = both.to_str().expect("utf-8");
    let app = TestApp::spawn_with(setup, &["--jwt-public-key-file", path]).await;
    let private = |name: &str| std::fs::read(fixture(name)).expect("private key");
    let rsa = EncodingKey::from_rsa_pem(&private("rsa_private.pem")).expect("RSA");
    let ec = EncodingKey::from_ec_pem(&private("ec_private.pem")).expect("EC");
    let ed = EncodingKey::from_ed_pem(&private("ed_private.pem")).expect("Ed25519");
    let by_rsa = sign(Algorithm::RS256, &rsa, claims.clone());
    assert_accepted(&app, &by_rsa, "the RSA key").await;
    let by_ec = sign(Algorithm::ES256, &ec, claims.clone());
    assert_accepted(&app, &by_ec, "the EC key").await;
    let outside = sign(Algorithm::EdDSA, &ed, claims.clone());
    assert_unauthenticated(&app, Some(&outside), "a key not in the file").await;
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem),
        claims.clone(),
    );
    assert_unauthenticated(&app, Some(&confused), "HS256 keyed with the file").await;
}

async fn public_key_files_pin_their_family(setup: Setup) {
    let acme = tenant();
    let claims = json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 });
    for (public, private, algorithm) in [
        ("rsa_public.pem", "rsa_private.pem", Algorithm::RS256),
        ("ec_public.pem", "ec_private.pem", Algorithm::ES256),
        ("ed_public.pem", "ed_private.pem", Algorithm::EdDSA),
    ] {
        let public_path = fixture(public);
        let app = TestApp::spawn_with(
            setup,
            &[
                "--jwt-public-key-file",
                public_path.to_str().expect("utf-8"),
            ],
        )
        .await;
        let pem = std::fs::read(fixture(private)).expect("private key");
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("encoding key");
        let good = sign(algorithm, &key, claims.clone());
        assert_eq!(
            data(&app.gql(LIST, json!({}), Some(&good)).await, "attachments")["totalCount"],
            0,
            "{public}"
        );
        // The classic confusion: an HS256 token whose secret is the public key file.
        let public_pem = std::fs::read(&public_path).expect("public key");
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public_pem),
            claims.clone(),
        );
        assert_unauthenticated(&app, Some(&confused), "HS256 signed with the public key").await;
        assert_unauthenticated(
            &app,
            Some(&hs256(claims.clone())),
            "HS256 with the old secret",
        )
        .await;
    }
}

async fn scopes_guard_reads_and_writes(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let with_scope = |scope: &str| {
        hs256(json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600, "scope": scope }))
    };
    let writer = with_scope("attachments:read attachments:write");
    let att = app
        .upload(&writer, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;

    let reader = with_scope("attachments:read");
    assert_eq!(
        data(
            &app.gql(LIST, json!({}), Some(&reader)).await,
            "attachments"
        )["totalCount"],
        1
    );
    assert_eq!(
        codes(
            &app.gql(DELETE, json!({ "id": att["id"] }), Some(&reader))
                .await
        ),
        vec!["FORBIDDEN"]
    );
    let download = app
        .client
        .get(att["downloadUrl"].as_str().expect("url"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("GET");
    assert_eq!(download.status(), 200);

    let nothing = with_scope("");
    assert_eq!(
        codes(&app.gql(LIST, json!({}), Some(&nothing)).await),
        vec!["FORBIDDEN"],
        "an empty scope grants nothing"
    );
    // Even fields no resolver answers: a query needs read, a mutation write.
    for (token, query) in [
        (&nothing, "{ __schema { types { name } } }"),
        (&nothing, "{ __typename }"),
        (&reader, "mutation { __typename }"),
    ] {
        let body = app.gql(query, json!({}), Some(token)).await;
        assert_eq!(codes(&body), vec!["FORBIDDEN"], "{query}: {body}");
        assert!(body.get("data").is_none(), "{query}: {body}");
    }
    assert_eq!(
        data(
            &app.gql("{ __typename }", json!({}), Some(&reader)).await,
            "__typename"
        ),
        "Query"
    );
    let download = app
        .client
        .get(att["downloadUrl"].as_str().expect("url"))
        .bearer_auth(&nothing)
        .send()
        .await
        .expect("GET");
    assert_eq!(download.status(), 403);
    let write_only = with_scope("attachments:write");
    assert_eq!(
        codes(
            &app.gql(GET, json!({ "id": att["id"] }), Some(&write_only))
                .await
        ),
        vec!["FORBIDDEN"]
    );

    // "Completing" a file that is no direct upload answers its maker's retry (it
    // saw the file already), but reads nothing for another write-only caller.
    const COMPLETE: &str = "mutation($id: ID!) { completeDirectUpload(id: $id) { id url } }";
    let maker = app
        .gql(COMPLETE, json!({ "id": att["id"] }), Some(&write_only))
        .await;
    assert_eq!(data(&maker, "completeDirectUpload")["id"], att["id"]);
    let other_writer = hs256(
        json!({ "sub": "w", "tenant_id": acme, "exp": now() + 600, "scope": "attachments:write" }),
    );
    let refused = app
        .gql(COMPLETE, json!({ "id": att["id"] }), Some(&other_writer))
        .await;
    assert_eq!(codes(&refused), vec!["NOT_FOUND"], "{refused}");
    assert!(!refused.to_string().contains("a.pdf"), "{refused}");
}

/// A `scope` of null restricts like an empty one, scopes split on U+0020 only, and a
/// token naming critical header extensions (`crit`, none of which attache knows) is
/// refused whatever its signature.
async fn odd_scopes_restrict_and_critical_headers_are_refused(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let claims =
        |scope: Value| json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600, "scope": scope });
    for (case, scope) in [
        ("scope null", Value::Null),
        (
            "scope split by a no-break space",
            json!("x\u{a0}attachments:read"),
        ),
        ("scope split by a tab", json!("x\tattachments:read")),
        ("scope a number", json!(1)),
        ("scope an array", json!(["attachments:read"])),
    ] {
        let body = app.gql(LIST, json!({}), Some(&hs256(claims(scope)))).await;
        assert_eq!(codes(&body), vec!["FORBIDDEN"], "{case}: {body}");
    }
    let spaced = hs256(claims(json!("x attachments:read")));
    assert_eq!(
        data(
            &app.gql(LIST, json!({}), Some(&spaced)).await,
            "attachments"
        )["totalCount"],
        0,
        "an ASCII space separates"
    );

    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let critical = jsonwebtoken::encode(
        &header,
        &json!({ "sub": "u", "tenant_id": acme, "exp": now() + 600 }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    // SPEC 6: a request without a valid token answers HTTP 200 or 401.
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&critical)
        .json(&json!({ "query": LIST }))
        .send()
        .await
        .expect("POST");
    assert!([200, 401].contains(&response.status().as_u16()));
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(codes(&body), vec!["UNAUTHENTICATED"], "{body}");
    assert_eq!(
        body["errors"][0]["message"],
        "invalid token: unsupported critical header (crit)"
    );
}

async fn tenants_cannot_see_link_download_or_delete_each_other(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let (acme, other) = (tenant(), tenant());
    let (acme_token, other_token) = (app.token(&acme), app.token(&other));
    let att = app
        .upload(&acme_token, &pdf(), "contract", Some("c-1"), "a.pdf")
        .await;
    let id = att["id"].clone();

    assert_eq!(
        data(
            &app.gql(GET, json!({ "id": id }), Some(&other_token)).await,
            "attachment"
        ),
        Value::Null
    );
    let listed = app.gql(LIST, json!({}), Some(&other_token)).await;
    assert_eq!(data(&listed, "attachments")["totalCount"], 0);
    let deleted = app
        .gql(DELETE, json!({ "id": id }), Some(&other_token))
        .await;
    assert_eq!(codes(&deleted), vec!["NOT_FOUND"]);
    let missing = app
        .gql(
            DELETE,
            json!({ "id": uuid::Uuid::now_v7().to_string() }),
            Some(&other_token),
        )
        .await;
    assert_eq!(
        deleted["errors"][0]["message"], missing["errors"][0]["message"],
        "foreign looks like missing"
    );
    let download = app
        .client
        .get(att["downloadUrl"].as_str().expect("url"))
        .bearer_auth(&other_token)
        .send()
        .await
        .expect("GET");
    assert_eq!(download.status(), 404);

    assert_eq!(app.row_count(&acme).await, 1, "still there for its owner");
    assert_eq!(
        data(
            &app.gql(GET, json!({ "id": id }), Some(&acme_token)).await,
            "attachment"
        )["id"],
        id
    );
}

crate::matrix!(
    every_token_fault_is_unauthenticated,
    issuer_and_audience_are_required_when_configured,
    public_key_files_pin_their_family,
    keys_rotate_without_a_cutover,
    scopes_guard_reads_and_writes,
    tenants_cannot_see_link_download_or_delete_each_other,
);

crate::matrix!(db: odd_scopes_restrict_and_critical_headers_are_refused);
