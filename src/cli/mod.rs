//! The command line: one file per subcommand; `anyhow` only at this boundary.

mod backup;
mod db;
mod events;
mod schema;
mod serve;
mod storage;
mod tenant;
mod token;

use std::error::Error as _;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "attache",
    version,
    about = "GraphQL API server for the file attachments of multi-tenant business applications"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (applies pending database migrations first).
    Serve(Box<serve::ServeArgs>),
    /// Database maintenance.
    Db(db::DbArgs),
    /// Print the GraphQL SDL.
    Schema,
    /// Mint a client token signed with JWT_SECRET.
    Token(token::TokenArgs),
    /// Storage maintenance.
    Storage(storage::StorageArgs),
    /// Database backups in storage under backups/.
    Backup(backup::BackupArgs),
    /// Webhook deliveries: list them, send failed ones again.
    Events(events::EventsArgs),
    /// Tenants: usage, quotas, and the recount that repairs usage.
    Tenant(tenant::TenantArgs),
}

impl Cli {
    /// Parses the command line; a bad setting ends the process with one line that
    /// names its variable (clap's own format spans several lines).
    pub fn parse_or_exit() -> Self {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        let err = match Self::try_parse() {
            Ok(cli) => return cli,
            Err(err) => err,
        };
        let bad_value = matches!(
            err.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        );
        let argument = match err.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(argument)) if bad_value => argument.clone(),
            _ => err.exit(),
        };
        // "--max-upload-bytes <MAX_UPLOAD_BYTES>": the variable is the value name.
        let variable = argument
            .split_once('<')
            .and_then(|(_, rest)| rest.strip_suffix('>'))
            .unwrap_or(&argument);
        let value = match err.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(value)) => value.clone(),
            _ => String::new(),
        };
        let detail = err
            .source()
            .map(|source| format!(": {source}"))
            .or_else(|| match err.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(valid)) => {
                    Some(format!(": expected one of {}", valid.join(", ")))
                }
                _ => None,
            })
            .unwrap_or_default();
        eprintln!("error: {variable}: invalid value '{value}'{detail}");
        std::process::exit(2);
    }

    /// `serve`'s `LOG_FORMAT`; other commands read the variable alone.
    pub fn log_format(&self) -> crate::config::LogFormat {
        use clap::ValueEnum;
        match &self.command {
            Command::Serve(args) => args.config.log_format,
            _ => std::env::var("LOG_FORMAT")
                .ok()
                .and_then(|value| crate::config::LogFormat::from_str(&value, true).ok())
                .unwrap_or(crate::config::LogFormat::Text),
        }
    }

    /// Warns about each environment variable that looks like one of attache's (its
    /// prefixes) but names no setting, with the closest real name: a typo such as
    /// `S3_BUCKET` for `S3_BUCKET_NAME` is said, not silently ignored.
    pub fn warn_unknown_variables() {
        use clap::CommandFactory;
        let mut known = std::collections::BTreeSet::new();
        let mut commands = vec![Self::command()];
        while let Some(command) = commands.pop() {
            known.extend(
                command
                    .get_arguments()
                    .filter_map(|arg| arg.get_env())
                    .filter_map(|env| env.to_str().map(str::to_owned)),
            );
            commands.extend(command.get_subcommands().cloned());
        }
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if known.contains(name) || !OUR_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
                continue;
            }
            let closest = known
                .iter()
                .min_by_key(|real| edit_distance(name, real))
                .map_or("", String::as_str);
            tracing::warn!(
                "{name} is not a setting of attache and is ignored: did you mean {closest}?"
            );
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Db(args) => db::run(args).await,
            Command::Schema => {
                schema::run();
                Ok(())
            }
            Command::Token(args) => token::run(args),
            Command::Storage(args) => storage::run(args).await,
            Command::Backup(args) => backup::run(args).await,
            Command::Events(args) => events::run(args).await,
            Command::Tenant(args) => tenant::run(args).await,
        }
    }
}

/// The prefixes of attache's variables; others (PATH, TEST_DATABASE_URL) are not its
/// business.
const OUR_PREFIXES: [&str; 25] = [
    "S3_",
    "JWT_",
    "WEBHOOK_",
    "MAX_",
    "MIN_",
    "URL_",
    "STORAGE_",
    "DATABASE_",
    "SQLITE_",
    "EVENTS_",
    "UPLOAD_",
    "BODY_",
    "HEADER_",
    "SEND_",
    "SIGNING_",
    "TENANT_",
    "CORS_",
    "PUBLIC_",
    "LISTEN_",
    "METRICS_",
    "SHUTDOWN_",
    "AUTO_MIGRATE",
    "COLLECTIONS_",
    "FSYNC_",
    "LOG_FORMAT",
];

/// The Levenshtein distance between two names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_counts_single_changes() {
        assert_eq!(super::edit_distance("S3_BUCKET", "S3_BUCKET_NAME"), 5);
        assert_eq!(super::edit_distance("JWT_SECERT", "JWT_SECRET"), 2);
        assert_eq!(super::edit_distance("SAME", "SAME"), 0);
    }
}
