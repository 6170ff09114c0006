//! `attache token`: mints a client token with the configured `JWT_SECRET`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::auth::TokenMinter;
use crate::auth::jwt::MAX_SUBJECT_BYTES;
use crate::config::AuthConfig;
use crate::ids::SafeId;

#[derive(Args)]
pub struct TokenArgs {
    /// Tenant the token is for.
    #[arg(long)]
    tenant: String,
    /// Subject (`sub`): who acts; `attache-cli` when unset.
    #[arg(long)]
    sub: Option<String>,
    /// Lifetime, such as 1h, 30m or 7d.
    #[arg(long, default_value = "1h", value_parser = parse_lifetime)]
    ttl: Duration,
    /// Space-separated scopes, such as "attachments:read"; none: every scope.
    #[arg(long)]
    scope: Option<String>,
    #[command(flatten)]
    auth: AuthConfig,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let secret = args
        .auth
        .jwt_secret
        .as_ref()
        .context("JWT_SECRET: required to mint tokens (tokens of a JWT_PUBLIC_KEY_FILE come from your identity provider)")?;
    secret.long_enough("JWT_SECRET")?;
    let tenant = SafeId::tenant(&args.tenant).with_context(|| {
        format!(
            "--tenant must match [A-Za-z0-9_-]{{1,64}} and not be `{}`",
            SafeId::RESERVED_TENANT
        )
    })?;
    // With TENANT_CLAIM=sub the subject is the tenant: another --sub would be lost.
    anyhow::ensure!(
        args.auth.tenant_claim != "sub"
            || args.sub.as_deref().is_none_or(|sub| sub == tenant.as_str()),
        "--sub: with TENANT_CLAIM=sub the subject is the tenant; leave --sub out"
    );
    let sub = args.sub.as_deref().unwrap_or("attache-cli");
    anyhow::ensure!(
        (1..=MAX_SUBJECT_BYTES).contains(&sub.len()),
        "--sub must be 1 to {MAX_SUBJECT_BYTES} bytes, not {}: the server refuses others",
        sub.len()
    );
    let token =
        TokenMinter::new(secret, &args.auth).mint(&tenant, sub, args.ttl, args.scope.as_deref())?;
    println!("{token}");
    Ok(())
}

/// A token's lifetime: a duration of at least a second (`0s` would mint a token
/// that has expired when it is made).
fn parse_lifetime(text: &str) -> Result<Duration, String> {
    match crate::config::parse_age(text)? {
        ttl if ttl < Duration::from_secs(1) => Err("must be at least 1s".into()),
        ttl => Ok(ttl),
    }
}
