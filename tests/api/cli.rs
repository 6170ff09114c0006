//! The command line as an operator meets it: a bad setting is one line naming its
//! variable, and `token` mints what the server accepts.

use crate::helpers::{SECRET, Setup, TestApp, data, run_attache, tenant};

async fn a_bad_value_is_one_line_naming_its_variable(_setup: Setup) {
    for (flag, value, variable) in [
        ("--max-upload-bytes", "ten", "MAX_UPLOAD_BYTES"),
        ("--storage-backend", "ftp", "STORAGE_BACKEND"),
        ("--url-ttl-seconds", "0", "URL_TTL_SECONDS"),
        ("--listen-addr", "nowhere", "LISTEN_ADDR"),
        (
            "--jwt-public-key-file",
            "/no/such/key.pem",
            "JWT_PUBLIC_KEY_FILE",
        ),
    ] {
        let output = run_attache(vec!["serve".into(), flag.into(), value.into()]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|line| line.contains("error"))
            .collect();
        assert!(!output.status.success(), "{flag}: exits non-zero");
        assert_eq!(errors.len(), 1, "{flag}: one line: {stderr}");
        assert!(
            errors[0].starts_with(&format!("error: {variable}: ")),
            "{flag}: {}",
            errors[0]
        );
    }
}

async fn the_token_command_mints_what_the_server_accepts(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let output = run_attache(vec![
        "token".into(),
        "--tenant".into(),
        acme.clone(),
        "--scope".into(),
        "attachments:read".into(),
        "--jwt-secret".into(),
        SECRET.into(),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let list = "query { attachments(ownerType: \"contract\") { totalCount } }";
    let body = app.gql(list, serde_json::json!({}), Some(&token)).await;
    assert_eq!(data(&body, "attachments")["totalCount"], 0);
    let write = "mutation { deleteAttachment(id: \"x\") }";
    let body = app.gql(write, serde_json::json!({}), Some(&token)).await;
    assert_eq!(
        crate::helpers::codes(&body),
        vec!["FORBIDDEN"],
        "the scope is in the token"
    );
    let without_secret = run_attache(vec!["token".into(), "--tenant".into(), acme]).await;
    assert!(String::from_utf8_lossy(&without_secret.stderr).contains("JWT_SECRET"));
}

crate::matrix!(once: a_bad_value_is_one_line_naming_its_variable);
crate::matrix!(the_token_command_mints_what_the_server_accepts);
