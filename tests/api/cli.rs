//! The command line as an operator meets it: a bad setting is one line naming its
//! variable, and `token` mints what the server accepts.

use crate::helpers::{SECRET, Setup, TestApp, data, fixture, output_within, run_attache, tenant};

async fn a_bad_value_is_one_line_naming_its_variable(_setup: Setup) {
    for (flag, value, variable) in [
        ("--max-upload-bytes", "ten", "MAX_UPLOAD_BYTES"),
        // A tenant claim that a token holds for another purpose.
        ("--tenant-claim", "exp", "TENANT_CLAIM"),
        ("--tenant-claim", "scope", "TENANT_CLAIM"),
        // `byteSize` is a GraphQL Int: 32 bits.
        ("--max-upload-bytes", "2147483648", "MAX_UPLOAD_BYTES"),
        ("--storage-backend", "ftp", "STORAGE_BACKEND"),
        ("--url-ttl-seconds", "0", "URL_TTL_SECONDS"),
        ("--listen-addr", "nowhere", "LISTEN_ADDR"),
        (
            "--jwt-public-key-file",
            "/no/such/key.pem",
            "JWT_PUBLIC_KEY_FILE",
        ),
        ("--webhook-secret", "whsec_not*base64", "WEBHOOK_SECRET"),
        ("--webhook-secret", "c2VjcmV0LWtleQ==", "WEBHOOK_SECRET"),
        (
            "--webhook-secret",
            "whsec_c2VjcmV0LWtleQ==",
            "WEBHOOK_SECRET",
        ),
        ("--jwt-secret", "too-short-a-secret", "JWT_SECRET"),
        ("--signing-key", "too-short-a-key", "SIGNING_KEY"),
        (
            "--webhook-urls",
            "http://127.0.0.1:9/hooks",
            "WEBHOOK_SECRET",
        ),
        ("--webhook-urls", "ftp://127.0.0.1/hooks", "WEBHOOK_URLS"),
        ("--webhook-max-attempts", "0", "WEBHOOK_MAX_ATTEMPTS"),
        (
            "--database-max-connections",
            "0",
            "DATABASE_MAX_CONNECTIONS",
        ),
        // A storage migration's lock holds one connection, and its run needs another.
        (
            "--database-max-connections",
            "1",
            "DATABASE_MAX_CONNECTIONS",
        ),
        ("--database-url", "sqlite::memory:", "DATABASE_URL"),
        ("--public-base-url", "files.example.com", "PUBLIC_BASE_URL"),
        (
            "--public-base-url",
            "https://files.example.com/?v=1",
            "PUBLIC_BASE_URL",
        ),
        (
            "--s3-public-base-url",
            "cdn.example.com",
            "S3_PUBLIC_BASE_URL",
        ),
        ("--cors-allowed-origins", "*", "CORS_ALLOWED_ORIGINS"),
        ("--s3-prefix", "team files/2026", "S3_PREFIX"),
        ("--s3-prefix", "a/../b", "S3_PREFIX"),
        ("--max-url-ttl-seconds", "60", "URL_TTL_SECONDS"),
        // A date past 9999 sorts before today's on SQLite: the file would go at once.
        (
            "--deleted-files-retention",
            "10000y",
            "DELETED_FILES_RETENTION",
        ),
        (
            "--cors-allowed-origins",
            "https://app.example.com,app.example.com",
            "CORS_ALLOWED_ORIGINS",
        ),
        (
            "--cors-allowed-origins",
            "https://app.example.com/login",
            "CORS_ALLOWED_ORIGINS",
        ),
        // The driver's complaints about these quoted the URL back, or garbled it.
        ("--database-url", "", "DATABASE_URL"),
        ("--database-url", "e", "DATABASE_URL"),
        (
            "--database-url",
            "postgress://attache:hunter2@db/attache",
            "DATABASE_URL",
        ),
        // Every token would be refused.
        ("--jwt-issuer", "", "JWT_ISSUER"),
        ("--jwt-audience", " ", "JWT_AUDIENCE"),
        ("--max-upload-bytes", "10MiB", "MAX_UPLOAD_BYTES"),
        ("--listen-addr", "127.0.0.1:99999", "LISTEN_ADDR"),
        ("--storage-root", "", "STORAGE_ROOT"),
        (
            "--deleted-files-retention",
            "forever",
            "DELETED_FILES_RETENTION",
        ),
        // Spaces are not separators: two receivers became one, and one origin never matched.
        (
            "--webhook-urls",
            "http://127.0.0.1:9/a http://127.0.0.1:9/b",
            "WEBHOOK_URLS",
        ),
        (
            "--cors-allowed-origins",
            "https://*.example.com",
            "CORS_ALLOWED_ORIGINS",
        ),
        // Read as URLs only when a request was signed, in the store's words.
        ("--s3-endpoint-url", "notaurl", "S3_ENDPOINT_URL"),
        (
            "--s3-public-endpoint-url",
            "http://files.example.com/?x=1",
            "S3_PUBLIC_ENDPOINT_URL",
        ),
        // Named S3_BUCKET_NAME, with OpenDAL's advice to call S3::detect_region().
        ("--s3-region", "", "S3_REGION"),
    ] {
        let mut args = vec!["serve".to_owned(), flag.to_owned(), value.to_owned()];
        if flag != "--listen-addr" {
            args.extend(["--listen-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        let output = run_attache(args).await;
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
        // The helpful part: what is accepted, and how to make one.
        let hint = match (flag, value) {
            ("--jwt-secret" | "--signing-key", _) => {
                Some("at least 32 are needed (`openssl rand -hex 32`")
            }
            ("--webhook-secret", "whsec_c2VjcmV0LWtleQ==") => Some("asks for 24 to 64"),
            ("--database-url", "sqlite::memory:") => None,
            ("--database-url", _) => Some("expected sqlite://PATH?mode=rwc or postgres://"),
            ("--jwt-issuer" | "--jwt-audience", _) => Some("is empty: unset it"),
            ("--max-upload-bytes", "10MiB") => Some("write a whole number"),
            ("--listen-addr", _) => Some("write IP:PORT"),
            ("--storage-root", _) => Some("is empty"),
            ("--deleted-files-retention", "forever") => Some("a duration such as"),
            ("--webhook-urls", "http://127.0.0.1:9/a http://127.0.0.1:9/b") => {
                Some("separate receivers with commas")
            }
            ("--cors-allowed-origins", "https://*.example.com") => Some("wildcards"),
            _ => None,
        };
        if let Some(hint) = hint {
            assert!(errors[0].contains(hint), "{flag}: {}", errors[0]);
        }
        if matches!(
            flag,
            "--webhook-secret" | "--jwt-secret" | "--signing-key" | "--database-url"
        ) && value.len() > 8
        {
            assert!(
                !stderr.contains(value),
                "the secret is not echoed: {stderr}"
            );
        }
    }
}

/// Settings that conflict or need another, and commands' own flags, are refused in
/// one line too, naming the variables or the flag (clap's own text spans five lines
/// of usage, or panicked on a number the database cannot hold).
async fn a_bad_combination_or_flag_is_one_line(_setup: Setup) {
    for (args, starts, says) in [
        (
            vec!["serve", "--jwt-previous-secret", SECRET],
            "error: JWT_SECRET: ",
            "required",
        ),
        (
            vec![
                "serve",
                "--jwt-secret",
                SECRET,
                "--jwt-public-key-file",
                "k.pem",
            ],
            "error: ",
            "set one, not both",
        ),
        (
            vec!["events", "list", "--limit", "9223372036854775808"],
            "error: --limit: ",
            "1..=100000",
        ),
        // The previous secret is HS256's: beside a key file it was silently unused.
        (
            vec![
                "serve",
                "--jwt-previous-secret",
                SECRET,
                "--jwt-public-key-file",
                "k.pem",
            ],
            "error: ",
            "set one, not both",
        ),
        (
            vec![
                "token",
                "--tenant",
                "a",
                "--tenant",
                "b",
                "--jwt-secret",
                SECRET,
            ],
            "error: --tenant: ",
            "given twice",
        ),
        (
            vec!["token", "--jwt-secret", SECRET],
            "error: --tenant: ",
            "required",
        ),
        (
            vec![
                "token",
                "--tenant",
                "acme",
                "--ttl",
                "0s",
                "--jwt-secret",
                SECRET,
            ],
            "error: --ttl: ",
            "at least 1s",
        ),
        (
            vec![
                "token",
                "--tenant",
                "acme",
                "--ttl",
                "soon",
                "--jwt-secret",
                SECRET,
            ],
            "error: --ttl: ",
            "a duration such as",
        ),
    ] {
        let output = run_attache(args.iter().map(ToString::to_string).collect()).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {stderr}"
        );
        assert!(
            stderr.starts_with(starts) && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
}

/// A database that cannot be opened is refused with the reason: PostgreSQL's pool
/// said only that it timed out (after 10 s) where the server refused the
/// connection; a SQLite file without `mode=rwc`, or in a folder that does not
/// exist, said "unable to open database file", or its cause twice.
async fn a_database_that_cannot_be_opened_says_why(_setup: Setup) {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("none.db");
    let elsewhere = dir.path().join("no/such/folder/x.db");
    for (url, says) in [
        // Nothing listens on port 1.
        (
            "postgres://postgres@127.0.0.1:1/attache".to_owned(),
            "refused",
        ),
        (
            format!("sqlite://{}", missing.display()),
            "does not exist: add ?mode=rwc",
        ),
        (
            format!("sqlite://{}?mode=rwc", elsewhere.display()),
            "does not exist",
        ),
    ] {
        let output = run_attache(vec![
            "serve".into(),
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
            "--jwt-secret".into(),
            SECRET.into(),
            "--storage-root".into(),
            dir.path().join("uploads").display().to_string(),
            "--database-url".into(),
            url.clone(),
        ])
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let error = stderr
            .lines()
            .find(|line| line.starts_with("error: "))
            .unwrap_or_default();
        assert!(!output.status.success(), "{url}: {stderr}");
        assert!(error.contains(says), "{url}: {stderr}");
        let cause = error.rsplit(": ").next().unwrap_or_default();
        assert_eq!(error.matches(cause).count(), 1, "{url}: said once: {error}");
    }
    assert!(!missing.exists(), "no database is made without mode=rwc");
}

/// The commands say what is wrong in the user's terms: `storage check` without a
/// bucket named OpenDAL's "ConfigInvalid (permanent) at , context", a file for
/// STORAGE_ROOT was "File exists", and `tenant usage` of an unknown tenant said that
/// no tenant stores anything.
async fn commands_name_what_is_wrong(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"not a folder").expect("a file");
    let a_file = a_file.display().to_string();
    let upload = format!("{}/uploads", dir.path().display());
    let typo = format!("{}/uplaods", dir.path().display());
    let newer = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("newer.db").display()
    );
    let migrated = run_attache(
        ["db", "migrate", "--database-url", &newer]
            .map(str::to_owned)
            .to_vec(),
    )
    .await;
    assert!(migrated.status.success(), "{migrated:?}");
    {
        use sea_orm::ConnectionTrait;
        let db = sea_orm::Database::connect(&newer).await.expect("connect");
        db.execute_unprepared(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m20991231_000001_future', 0)",
        )
        .await
        .expect("a migration of a newer version");
        db.close().await.expect("close");
    }
    let setup = run_attache(
        ["db", "migrate", "--database-url", &database]
            .map(str::to_owned)
            .to_vec(),
    )
    .await;
    assert!(setup.status.success(), "{setup:?}");
    let quota = run_attache(
        [
            "tenant",
            "quota",
            "set",
            "busy",
            "--files",
            "5",
            "--database-url",
            &database,
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    assert!(quota.status.success(), "{quota:?}");
    for (args, says, succeeds) in [
        (
            vec!["storage", "check", "--storage-backend", "s3"],
            "S3_BUCKET_NAME",
            false,
        ),
        (
            vec!["storage", "check", "--storage-root", &a_file],
            "is a file, not a folder",
            false,
        ),
        (
            vec!["tenant", "usage", "nosuch", "--database-url", &database],
            "tenant nosuch stores nothing and has no quota of its own",
            true,
        ),
        (
            vec!["storage", "check", "--storage-root", &upload],
            "ok",
            true,
        ),
        // A mistyped STORAGE_ROOT is not made, to be found holding no backups.
        (
            vec!["backup", "list", "--storage-root", &typo],
            "is not a folder",
            false,
        ),
        // A database a newer attache migrated: sea-orm said "Custom Error: Migration
        // file of version ... is missing".
        (
            vec!["db", "migrate", "--database-url", &newer],
            "set up by a newer attache (it has migration m20991231_000001_future",
            false,
        ),
    ] {
        let output = run_attache(args.iter().map(ToString::to_string).collect()).await;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.success(), succeeds, "{args:?}: {said}");
        assert!(said.contains(says), "{args:?}: {said}");
    }
    assert!(!std::path::Path::new(&typo).exists(), "no folder is made");
}

/// A command whose output goes to a closed pipe (`attache events list | head`)
/// ends as other tools do, killed by SIGPIPE: it panicked ("failed printing to
/// stdout: Broken pipe") with exit status 101.
async fn a_command_piped_into_a_closed_pipe_ends_quietly(_setup: Setup) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_attache"))
        .arg("schema")
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run attache schema");
    // Closed before the command writes: `head` that has read enough.
    drop(child.stdout.take());
    let output = child.wait_with_output().await.expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}",
        output.status
    );
}

/// A variable that looks like attache's but names no setting is said, with the
/// closest real name, not silently ignored.
async fn a_mistyped_variable_is_named_with_the_closest_setting(_setup: Setup) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_attache"))
        .arg("schema")
        .env_clear()
        .env("NO_COLOR", "1")
        .env("JWT_SECERT", "a value never echoed")
        .env("S3_BUCKET", "attachments")
        .env("TEST_DATABASE_URL", "not ours")
        .output()
        .await
        .expect("run attache schema");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("JWT_SECERT is not a setting of attache")
            && stderr.contains("did you mean JWT_SECRET?"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean S3_BUCKET_NAME?"), "{stderr}");
    assert!(!stderr.contains("TEST_DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("never echoed"), "{stderr}");
}

/// Under `LOG_FORMAT=json` the line that says why attache stopped is a JSON object
/// like every log line (it was plain text, which log pipelines drop), whether the
/// command line did not parse or the start failed.
async fn under_json_logs_the_fatal_line_is_json(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = format!("sqlite://{}/no/such/folder/a.db", dir.path().display());
    for (args, said) in [
        (
            vec!["serve", "--max-connections", "4"],
            "MAX_CONNECTIONS: invalid value '4'",
        ),
        (
            vec![
                "serve",
                "--listen-addr",
                "127.0.0.1:0",
                "--database-url",
                &missing,
            ],
            "DATABASE_URL",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_attache"))
            .args(&args)
            .env_clear()
            .env("NO_COLOR", "1")
            .env("LOG_FORMAT", "json")
            .env("JWT_SECRET", SECRET)
            .output()
            .await
            .expect("run attache");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect();
        let last = lines
            .last()
            .unwrap_or_else(|| panic!("{args:?}: nothing said"));
        let raw = stderr.lines().last().unwrap_or_default();
        assert!(
            raw.starts_with(r#"{"timestamp":""#),
            "keys as the log's: {raw}"
        );
        assert_eq!(last["level"], "ERROR", "{last}");
        let message = last["fields"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(said), "{args:?}: {last}");
    }
}

/// A token of `tenant` from `attache token` with the tests' secret and `flags`.
async fn minted(tenant: &str, flags: &[&str]) -> String {
    let args = ["token", "--tenant", tenant, "--jwt-secret", SECRET]
        .iter()
        .chain(flags)
        .map(ToString::to_string)
        .collect();
    let output = run_attache(args).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

async fn the_token_command_mints_what_the_server_accepts(setup: Setup) {
    let app = TestApp::spawn(setup).await;
    let acme = tenant();
    let token = minted(&acme, &["--scope", "attachments:read"]).await;
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
    let long_sub = run_attache(vec![
        "token".into(),
        "--tenant".into(),
        acme.clone(),
        "--sub".into(),
        "u".repeat(256),
        "--jwt-secret".into(),
        SECRET.into(),
    ])
    .await;
    assert!(
        !long_sub.status.success(),
        "a token the server would refuse"
    );
    assert!(String::from_utf8_lossy(&long_sub.stderr).contains("--sub must be 1 to 255 bytes"));
    let without_secret = run_attache(vec!["token".into(), "--tenant".into(), acme.clone()]).await;
    assert!(String::from_utf8_lossy(&without_secret.stderr).contains("JWT_SECRET"));
    // A secret `serve` would refuse mints nothing.
    let short_secret = run_attache(vec![
        "token".into(),
        "--tenant".into(),
        acme.clone(),
        "--jwt-secret".into(),
        "too-short-a-secret".into(),
    ])
    .await;
    assert!(!short_secret.status.success());
    let stderr = String::from_utf8_lossy(&short_secret.stderr);
    assert!(stderr.contains("JWT_SECRET: has 18 bytes"), "{stderr}");

    // A claim that is not text is named as such.
    let numbered = crate::helpers::hs256(serde_json::json!({
        "sub": "u", "tenant_id": 42, "exp": crate::helpers::now() + 600
    }));
    let body = app.gql(list, serde_json::json!({}), Some(&numbered)).await;
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`tenant_id` claim is not a string"),
        "{body}"
    );
}

/// `TENANT_CLAIM=sub`: each subject is a tenant of its own. The server read the
/// tenant among the other claims, where `sub` never is, and refused every token.
async fn the_subject_may_be_the_tenant(setup: Setup) {
    let app = TestApp::spawn_with(setup, &["--tenant-claim", "sub"]).await;
    let acme = tenant();
    let token = minted(&acme, &["--tenant-claim", "sub"]).await;
    let args = [
        "token",
        "--tenant",
        &acme,
        "--tenant-claim",
        "sub",
        "--sub",
        "u",
        "--jwt-secret",
        SECRET,
    ];
    let lost_sub = run_attache(args.iter().map(ToString::to_string).collect()).await;
    assert!(!lost_sub.status.success(), "a --sub that would be lost");
    let stderr = String::from_utf8_lossy(&lost_sub.stderr);
    assert!(stderr.contains("leave --sub out"), "{stderr}");
    let att = app
        .upload(
            &token,
            &crate::helpers::pdf(),
            "contract",
            Some("c-1"),
            "a.pdf",
        )
        .await;
    assert_eq!(att["createdBy"], acme.as_str());
    let other = crate::helpers::hs256(serde_json::json!({
        "sub": tenant(), "exp": crate::helpers::now() + 600
    }));
    let list = "query { attachments(ownerType: \"contract\") { totalCount } }";
    for (bearer, files) in [(&token, 1), (&other, 0)] {
        let body = app.gql(list, serde_json::json!({}), Some(bearer)).await;
        assert_eq!(data(&body, "attachments")["totalCount"], files, "{body}");
    }
}

async fn a_collections_file_replaces_the_built_in_ones(setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("collections.toml");
    let toml = "[purchase_order]\nkey = \"{tenant}/orders/{owner}/{id}{ext}\"\nmax_bytes = 4096\naccept = [\"pdf\", \"csv\"]\n";
    std::fs::write(&file, toml).expect("write");
    let path = file.to_str().expect("utf-8");
    let app = TestApp::spawn_with(setup, &["--collections-file", path]).await;
    let acme = tenant();
    let bearer = app.token(&acme);
    let att = app
        .upload(
            &bearer,
            b"a,b\n1,2\n",
            "purchase_order",
            Some("po-1"),
            "lines.csv",
        )
        .await;
    assert_eq!(att["contentType"], "text/csv");
    let key = format!("{acme}/orders/po-1/{}.csv", att["id"].as_str().expect("id"));
    assert_eq!(app.stored_keys(), vec![key]);
    let pdf = crate::helpers::pdf();
    let body = app
        .gql(
            crate::helpers::UPLOAD,
            serde_json::json!({ "input": { "ownerType": "contract", "ownerId": "c-1", "filename": "a.pdf",
                "base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pdf) }}),
            Some(&bearer),
        )
        .await;
    assert_eq!(
        crate::helpers::codes(&body),
        vec!["BAD_USER_INPUT"],
        "built-ins are replaced"
    );

    for (toml, refusal) in [
        (
            "[bad]\nkey = \"../{id}\"\nmax_bytes = 1\naccept = [\"pdf\"]\n",
            "[bad] key must start with `{tenant}/`",
        ),
        (
            "[big]\nkey = \"{tenant}/{id}{ext}\"\nmax_bytes = 2147483648\naccept = [\"pdf\"]\n",
            "[big] max_bytes is at most 2147483647",
        ),
        // Keys past the database's 1,024 characters: PostgreSQL refused each upload.
        (
            format!(
                "[deep]\nkey = \"{{tenant}}/{}{{id}}\"\nmax_bytes = 1\naccept = [\"pdf\"]\n",
                "{owner}-".repeat(16)
            )
            .as_str(),
            "[deep] key makes keys of up to 1141 bytes",
        ),
        // Where: the error's own text spans several lines.
        (
            "[broken]\nkey = \"{tenant}/{id}{ext}\"\nmax_bytes = \n",
            "invalid TOML at line 3, column 13",
        ),
    ] {
        std::fs::write(&file, toml).expect("write");
        // A database and port of its own: the other cells of this test run at once.
        let database = format!("sqlite://{}?mode=rwc", file.with_extension("db").display());
        let output = run_attache(vec![
            "serve".into(),
            "--collections-file".into(),
            path.into(),
            "--database-url".into(),
            database,
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
        ])
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains(&format!("error: COLLECTIONS_FILE: {refusal}")),
            "{stderr}"
        );
    }
}

/// What `attache serve` prints with no JWT key: the token and the playground URL.
pub(crate) fn dev_mode_banner(dir: &std::path::Path) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_attache"))
        .args(["serve", "--listen-addr", "127.0.0.1:0"])
        .current_dir(dir)
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve");
    let stdout = child.stdout.take().expect("stdout");
    let (mut token, mut playground) = (String::new(), String::new());
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if line.starts_with("eyJ") {
            token = line.trim().to_owned();
        }
        if let Some(url) = line.strip_prefix("Playground: ") {
            playground = url.split_whitespace().next().unwrap_or_default().to_owned();
            break;
        }
    }
    (child, token, playground)
}

async fn development_mode_prints_a_working_token(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let (mut child, token, playground) =
        tokio::task::spawn_blocking(move || dev_mode_banner(&path))
            .await
            .expect("join");
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = token.split('.').nth(1).expect("payload");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64"),
        )
        .expect("json")
    };
    assert_eq!(claims["tenant_id"], "dev");
    let lifetime = claims["exp"].as_u64().expect("exp") - crate::helpers::now();
    assert!((23 * 3600..=24 * 3600).contains(&lifetime), "{lifetime}");
    assert!(playground.ends_with("/graphql"), "{playground}");
    let list =
        serde_json::json!({ "query": "{ attachments(ownerType: \"contract\") { totalCount } }" });
    let response = crate::helpers::http_client()
        .post(&playground)
        .bearer_auth(&token)
        .json(&list)
        .send()
        .await
        .expect("POST");
    let body: serde_json::Value = response.json().await.expect("JSON");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(data(&body, "attachments")["totalCount"], 0);
    assert!(
        dir.path().join("attache.db").exists() && dir.path().join("uploads").is_dir(),
        "SQLite and ./uploads"
    );
}

/// A key that could never verify a token stops the start, naming it: jsonwebtoken
/// reads a key's contents only at each token, so each of these started, and every
/// token then failed "bad signature" (or verified against a key of 1024 bits).
async fn a_key_file_that_cannot_verify_stops_the_start(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    for (file, reason) in [
        (
            "rsa_private.pem",
            "`-----BEGIN PRIVATE KEY-----` is not a public key",
        ),
        (
            "rsa_1024_public.pem",
            "an RSA key of 1024 bits: use 2048 to 4096",
        ),
        ("p521_public.pem", "an EC key on a curve other than P-256"),
        (
            "secp256k1_public.pem",
            "an EC key on a curve other than P-256",
        ),
    ] {
        let output = run_attache(vec![
            "serve".into(),
            "--jwt-public-key-file".into(),
            fixture(file).display().to_string(),
            "--database-url".into(),
            database.clone(),
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
        ])
        .await;
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{file}: {said}");
        assert!(
            said.contains("error: JWT_PUBLIC_KEY_FILE: key 1 of ") && said.contains(reason),
            "{file}: {said}"
        );
    }
}

/// Development mode hands a token to whoever opens the playground: on an address
/// that other machines reach (a container's `0.0.0.0` with its secrets forgotten),
/// behind a proxy (a public `PUBLIC_BASE_URL`; the proxy forwards any `Host`), or
/// on production's PostgreSQL or S3, `serve` refuses to start and says what to set.
async fn development_mode_stays_on_loopback(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    for (flags, reason) in [
        (vec!["--listen-addr", "0.0.0.0:0"], "listen on 127.0.0.1"),
        (
            vec!["--public-base-url", "https://files.example.com"],
            "PUBLIC_BASE_URL https://files.example.com is not this machine",
        ),
        (
            vec!["--database-url", "postgres://postgres@127.0.0.1:1/prod"],
            "DATABASE_URL is PostgreSQL",
        ),
        (
            vec!["--storage-backend", "s3", "--s3-bucket-name", "prod"],
            "STORAGE_BACKEND is s3",
        ),
    ] {
        let mut args = vec!["serve".to_owned()];
        args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        let uploads = dir.path().join("uploads").display().to_string();
        let defaults = [
            ("--listen-addr", "127.0.0.1:0"),
            ("--database-url", database.as_str()),
            ("--storage-root", uploads.as_str()),
        ];
        for (flag, value) in defaults {
            if !flags.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        let output = run_attache(args).await;
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{reason}: {said}");
        assert!(
            said.contains("JWT_SECRET") && said.contains(reason),
            "{reason}: {said}"
        );
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("eyJ"),
            "no token printed"
        );
    }
    assert!(
        !dir.path().join("a.db").exists(),
        "refused before the database"
    );
}

/// A migration cut before its record (here a trigger refuses the record, as a kill
/// between the two would) leaves nothing of itself: the pending migrations land in
/// one transaction (SQLite's DDL is transactional too), so the next run applies
/// them whole. Made but unrecorded, a migration failed every later start ("index
/// ... already exists").
async fn a_migration_cut_before_its_record_is_applied_again_whole(_setup: Setup) {
    use sea_orm::sqlx::{self, Connection};
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    sqlx::raw_sql(
        "CREATE TABLE seaql_migrations (version VARCHAR NOT NULL PRIMARY KEY, \
             applied_at BIGINT NOT NULL); \
         CREATE TRIGGER cut BEFORE INSERT ON seaql_migrations \
             WHEN NEW.version LIKE '%_000015_%' \
             BEGIN SELECT RAISE(ABORT, 'cut before its record'); END;",
    )
    .execute(&mut db)
    .await
    .expect("the cut");
    let migrate = || {
        ["db", "migrate", "--database-url", &url]
            .map(str::to_owned)
            .to_vec()
    };
    let cut = run_attache(migrate()).await;
    let said = String::from_utf8_lossy(&cut.stderr);
    assert!(
        !cut.status.success() && said.contains("cut before its record"),
        "{said}"
    );
    sqlx::raw_sql("DROP TRIGGER cut")
        .execute(&mut db)
        .await
        .expect("the cut mended");
    db.close().await.expect("close");
    let again = run_attache(migrate()).await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// `attache serve` on `listen`, its database and files in `dir`, its environment
/// empty but for `NO_COLOR`, its stderr piped.
fn serve_in(dir: &std::path::Path, listen: &str) -> std::process::Command {
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_attache"));
    serve
        .args(["serve", "--listen-addr", listen, "--database-url"])
        .arg(format!("sqlite://{}?mode=rwc", dir.join("a.db").display()))
        .arg("--storage-root")
        .arg(dir.join("up"))
        .env_clear()
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    serve
}

/// A temporary folder that cannot be written stops the start in one line naming
/// `TMPDIR`: spooled uploads would otherwise fail one by one after a healthy start.
async fn an_unwritable_temporary_folder_stops_the_start(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = serve_in(dir.path(), "127.0.0.1:0")
        .env("TMPDIR", dir.path().join("no-such-folder"))
        .spawn()
        .expect("attache serve");
    let (status, said) = exited(serve);
    assert!(!status.success());
    assert!(
        said.contains("error: TMPDIR: cannot write a temporary file in"),
        "{said}"
    );
}

/// A server on every interface without `PUBLIC_BASE_URL` says at start that the
/// URLs it hands out name `localhost`, which other machines cannot open.
async fn an_open_address_without_a_public_base_url_is_warned_of(_setup: Setup) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve = serve_in(dir.path(), "0.0.0.0:0")
        .args(["--jwt-secret", SECRET, "--signing-key", SECRET])
        .spawn()
        .expect("attache serve");
    let stderr = serve.stderr.take().expect("stderr");
    let mut said = String::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("a line");
        said.push_str(&line);
        said.push('\n');
        if line.contains("attache is listening") {
            break;
        }
    }
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        said.contains("PUBLIC_BASE_URL is unset: the URLs handed out start with http://localhost:"),
        "{said}"
    );
}

/// An age past a century is refused by every flag that takes one, in one line: it
/// made `storage sweep` panic on a date it could not hold.
async fn ages_past_a_century_are_refused(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let root = dir.path().join("files").display().to_string();
    let migrated = run_attache(
        ["db", "migrate", "--database-url", &database]
            .map(str::to_owned)
            .to_vec(),
    )
    .await;
    assert!(migrated.status.success(), "{migrated:?}");
    for args in [
        vec![
            "storage",
            "sweep",
            "--older-than",
            "300000y",
            "--database-url",
            &database,
            "--storage-root",
            &root,
        ],
        vec!["token", "--tenant", "acme", "--ttl", "300000y"],
    ] {
        let output = run_attache(args.iter().map(|arg| arg.to_string()).collect()).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: a usage error: {stderr}"
        );
        assert!(
            stderr.contains("300000y is longer than 100 years, the most allowed"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A mistyped STORAGE_ROOT is not made, empty, and reported as nothing to sweep.
    let mistyped = dir.path().join("filez");
    let output = run_attache(
        [
            "storage",
            "sweep",
            "--dry-run",
            "--database-url",
            &database,
            "--storage-root",
            &mistyped.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("STORAGE_ROOT: ") && stderr.contains("is not a folder"),
        "{stderr}"
    );
    assert!(!mistyped.exists(), "no folder is made");
}

/// Waits for `serve` to exit (at most 10 s); its status and stderr.
fn exited(serve: std::process::Child) -> (std::process::ExitStatus, String) {
    let output = output_within(serve, std::time::Duration::from_secs(10), "attache serve");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `METRICS_ADDR` that cannot be bound stops the start before anything was
/// migrated or claimed, as `LISTEN_ADDR` does (it failed only after migrations and
/// the workers had started).
async fn a_busy_metrics_address_stops_the_start_before_the_database(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = taken.local_addr().expect("address").to_string();
    let serve = serve_in(dir.path(), "127.0.0.1:0")
        .args(["--jwt-secret", SECRET, "--signing-key", SECRET])
        .args(["--metrics-addr", &address])
        .spawn()
        .expect("attache serve");
    let (status, said) = exited(serve);
    assert!(!status.success());
    assert!(
        said.contains(&format!("error: METRICS_ADDR: cannot listen on {address}")),
        "{said}"
    );
    assert!(!said.contains("database migrations applied"), "{said}");
    assert!(!dir.path().join("a.db").exists(), "no database was made");
}

/// SIGTERM while the server starts (here: its database does not answer) stops it
/// cleanly: the handler is in place from the first moment. Without one the signal
/// killed it outright, and as PID 1 in a container it was dropped: the start went
/// on, and the container's stop waited for its timeout.
async fn sigterm_during_the_start_stops_it(_setup: Setup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = silent.local_addr().expect("address");
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_attache"))
        .args(["serve", "--listen-addr", "127.0.0.1:0"])
        .args(["--jwt-secret", SECRET, "--signing-key", SECRET])
        .args([
            "--database-url",
            &format!("postgres://attache@{address}/attache"),
        ])
        .arg("--storage-root")
        .arg(dir.path().join("up"))
        .env_clear()
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("attache serve");
    silent.set_nonblocking(true).expect("nonblocking");
    let started = std::time::Instant::now();
    let _database = loop {
        match silent.accept() {
            Ok((socket, _)) => break socket,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(10),
                    "the server never connected to its database"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(err) => panic!("accept: {err}"),
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    let (status, said) = exited(serve);
    assert!(status.success(), "a clean exit: {status:?} {said}");
    assert!(said.contains("attache stopped before it served"), "{said}");
}

crate::matrix!(
    once: a_bad_value_is_one_line_naming_its_variable,
    a_bad_combination_or_flag_is_one_line,
    a_database_that_cannot_be_opened_says_why,
    commands_name_what_is_wrong,
    a_command_piped_into_a_closed_pipe_ends_quietly,
    ages_past_a_century_are_refused,
    a_busy_metrics_address_stops_the_start_before_the_database,
    sigterm_during_the_start_stops_it,
    development_mode_prints_a_working_token,
    development_mode_stays_on_loopback,
    a_key_file_that_cannot_verify_stops_the_start,
    a_mistyped_variable_is_named_with_the_closest_setting,
    a_migration_cut_before_its_record_is_applied_again_whole,
    an_unwritable_temporary_folder_stops_the_start,
    an_open_address_without_a_public_base_url_is_warned_of,
    under_json_logs_the_fatal_line_is_json,
);
crate::matrix!(
    the_token_command_mints_what_the_server_accepts,
    the_subject_may_be_the_tenant,
    a_collections_file_replaces_the_built_in_ones,
);
