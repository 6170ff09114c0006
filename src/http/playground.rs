//! The GraphiQL playground at `GET /graphql` for browsers, with its assets compiled
//! into the binary so it works offline (SPEC 6). The assets are vendored under
//! `assets/playground/` (see its README). The page runs no inline script, so its
//! Content-Security-Policy allows scripts from this origin only.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::auth::TokenMinter;
use crate::ids::SafeId;

const INDEX: &str = include_str!("../../assets/playground/index.html");

/// Where [`page_with`] puts the development token's `<meta>` element.
const DEV_TOKEN_SLOT: &str = "<!-- attache-dev-token -->";

/// What the page may load and do: its own scripts, styles and fetches, the data: fonts
/// and images of GraphiQL's stylesheet; no frames around it, no forms, no `<base>`.
/// GraphiQL 3 (CodeMirror 5) needs no eval, workers or blob: URLs.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
    font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Lifetime of the development token a page carries, as the one `serve` prints.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// (name, content type, bytes) of every asset the page loads.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/playground/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/playground/react-dom.production.min.js"),
    ),
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/playground/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/playground/graphiql.min.css"),
    ),
    (
        "init.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/playground/init.js"),
    ),
];

/// The page; in development mode (`dev_minter`: `App::dev_minter`) it carries a fresh
/// 24 h token for tenant `dev`, so the Docs panel and a first query work at once,
/// when it was asked for by a loopback name. Without one, the Headers tab shows
/// where to paste a token.
pub fn page_with(dev_minter: Option<&TokenMinter>, host: Option<&str>) -> Response {
    let token = dev_minter
        .filter(|_| is_loopback_name(host))
        .and_then(|minter| {
            let tenant = SafeId::parse("dev")?;
            minter
                .mint(&tenant, "dev", DEV_TOKEN_TTL, None)
                .inspect_err(|err| tracing::warn!(error = %err, "cannot mint a playground token"))
                .ok()
        });
    let html = match token {
        Some(token) => INDEX.replacen(
            DEV_TOKEN_SLOT,
            &format!(
                "<meta name=\"attache-dev-token\" content=\"{}\">",
                escape_html(&token)
            ),
            1,
        ),
        None => INDEX.to_owned(),
    };
    (
        [
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
        .into_response()
}

/// Whether `Host` names this machine's loopback (`localhost`, `127.x.x.x`, `[::1]`).
/// A page that another site's name reaches (DNS rebinding: `evil.example` made to
/// resolve to 127.0.0.1) gets no token, so that site cannot read one from it.
pub(crate) fn is_loopback_name(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let address = name.trim_start_matches('[').trim_end_matches(']');
    address
        .parse::<std::net::IpAddr>()
        .is_ok_and(|address| address.is_loopback())
}

/// Text safe inside an HTML attribute value or element.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// An asset, revalidated at each use by its ETag (a hash of its contents): the
/// names stay across versions, and a day's `max-age` paired a new page with the
/// old scripts after an upgrade. An unchanged asset costs a 304.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(at) = ASSETS.iter().position(|(asset, _, _)| *asset == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (_, content_type, bytes) = ASSETS[at];
    let etag = etags()[at].as_str();
    let revalidated = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| crate::http::download::etag_matches(value, etag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, revalidated).into_response();
    }
    (revalidated, [(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

/// Each asset's ETag: the first 16 bytes of its sha256, made once.
fn etags() -> &'static [String; ASSETS.len()] {
    static ETAGS: OnceLock<[String; ASSETS.len()]> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS.map(|(_, _, bytes)| format!("\"{}\"", hex::encode(&Sha256::digest(bytes)[..16])))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::JwtVerifier;
    use crate::config::{AuthConfig, Secret};

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    /// The value of the `attache-dev-token` meta element, if the page has one.
    fn dev_token(html: &str) -> Option<&str> {
        let rest = html
            .split("<meta name=\"attache-dev-token\" content=\"")
            .nth(1)?;
        rest.split('"').next()
    }

    #[tokio::test]
    async fn the_page_runs_no_inline_script_and_carries_its_policy() {
        let response = page_with(None, None);
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], PAGE_CSP);
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let html = body(response).await;
        assert_eq!(html.matches("<script").count(), 4);
        assert_eq!(
            html.matches("<script src=\"graphql/assets/").count(),
            4,
            "every script is an asset: {html}"
        );
        assert_eq!(html.matches("></script>").count(), 4, "and has no body");
        assert_eq!(dev_token(&html), None);
        for (name, _, _) in ASSETS {
            assert!(
                html.contains(&format!("\"graphql/assets/{name}\"")),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn in_development_mode_the_page_carries_a_working_token() {
        let config = AuthConfig {
            jwt_secret: None,
            jwt_previous_secret: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            tenant_claim: "tenant_id".into(),
        };
        let secret: Secret = "playground-test-secret".parse().expect("secret");
        let minter = TokenMinter::new(&secret, &config);
        let html = body(page_with(Some(&minter), Some("localhost:8080"))).await;
        let token = dev_token(&html).expect("a token in the page");
        let principal = JwtVerifier::hmac(secret.expose().as_bytes(), &config)
            .verify(token)
            .expect("the token verifies");
        assert_eq!(principal.tenant.as_str(), "dev");
        assert!(!html.contains(DEV_TOKEN_SLOT));
    }

    #[test]
    fn only_loopback_names_are_trusted_with_a_token() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback_name(Some(host)), "{host}");
        }
        for host in [
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:8080",
            "[::2]:8080",
            "",
        ] {
            assert!(!is_loopback_name(Some(host)), "{host}");
        }
        assert!(!is_loopback_name(None));
    }

    #[test]
    fn html_escaping_covers_attribute_quotes() {
        assert_eq!(escape_html(r#"a"b'<c>&"#), "a&quot;b&#39;&lt;c&gt;&amp;");
    }
}
