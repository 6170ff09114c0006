//! The command line: one file per subcommand; `anyhow` only at this boundary.

mod backup;
mod db;
mod events;
mod schema;
mod serve;
mod storage;
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
        }
    }
}
