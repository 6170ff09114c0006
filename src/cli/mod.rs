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
    /// names its variable (clap's own format spans several lines), a bad flag of a
    /// command with one that names the flag.
    pub fn parse_or_exit() -> Self {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        let err = match Self::try_parse() {
            Ok(cli) => return cli,
            Err(err) => err,
        };
        let settings = Settings::of_every_command();
        let names = |context: ContextKind| match err.get(context) {
            Some(ContextValue::String(argument)) => vec![settings.name(argument)],
            Some(ContextValue::Strings(arguments)) => {
                arguments.iter().map(|arg| settings.name(arg)).collect()
            }
            _ => Vec::new(),
        };
        let line = match err.kind() {
            ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
                let [name] = names(ContextKind::InvalidArg)
                    .try_into()
                    .unwrap_or_else(|_| err.exit());
                let value = match err.get(ContextKind::InvalidValue) {
                    Some(ContextValue::String(value)) => value.clone(),
                    _ => String::new(),
                };
                let detail = match err.source() {
                    Some(source) => format!(": {}", explain(source)),
                    None => match err.get(ContextKind::ValidValue) {
                        Some(ContextValue::Strings(valid)) if !valid.is_empty() => {
                            format!(": expected one of {}", valid.join(", "))
                        }
                        _ if value.is_empty() => ": is empty".into(),
                        _ => String::new(),
                    },
                };
                match settings.hides(&name) {
                    true => format!("{name}: invalid value{detail}"),
                    false => format!("{name}: invalid value '{value}'{detail}"),
                }
            }
            ErrorKind::ArgumentConflict => {
                let mut both = names(ContextKind::InvalidArg);
                both.extend(names(ContextKind::PriorArg));
                both.dedup();
                match both.as_slice() {
                    [once] => format!("{once}: given twice"),
                    _ => format!("{}: set one, not both", both.join(" and ")),
                }
            }
            ErrorKind::MissingRequiredArgument => {
                let missing = names(ContextKind::InvalidArg);
                // A command's own argument (`<NAME>`): clap's usage line shows where.
                if missing.iter().any(|name| name.starts_with(['<', '['])) {
                    err.exit();
                }
                let settings_only = missing.iter().all(|name| settings.variables.contains(name));
                match settings_only {
                    true => format!("{}: required with the settings given", missing.join(", ")),
                    false => format!("{}: required", missing.join(", ")),
                }
            }
            _ => err.exit(),
        };
        let json = crate::config::LogFormat::from_env() == crate::config::LogFormat::Json;
        crate::telemetry::fatal(&line, json);
        std::process::exit(2);
    }

    /// Whether a closed pipe may end it as it ends other tools (`attache events list
    /// | head`), with SIGPIPE: not the server (a closed socket is an error of one
    /// client), nor a command that writes into a tool it runs (`pg_restore` ending
    /// early must be reported with what it said).
    pub fn ends_on_a_closed_pipe(&self) -> bool {
        match &self.command {
            Command::Serve(_) => false,
            Command::Backup(args) => !args.feeds_a_tool(),
            _ => true,
        }
    }

    /// `serve`'s `LOG_FORMAT`; other commands read the variable alone.
    pub fn log_format(&self) -> crate::config::LogFormat {
        match &self.command {
            Command::Serve(args) => args.config.log_format,
            _ => crate::config::LogFormat::from_env(),
        }
    }

    /// Warns about each environment variable that looks like one of attache's (its
    /// prefixes) but names no setting, with the closest real name: a typo such as
    /// `S3_BUCKET` for `S3_BUCKET_NAME` is said, not silently ignored.
    pub fn warn_unknown_variables() {
        let known = Settings::of_every_command().variables;
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

/// The settings of every command: their variables, and those whose values are secret.
struct Settings {
    variables: std::collections::BTreeSet<String>,
    hidden: std::collections::BTreeSet<String>,
}

impl Settings {
    fn of_every_command() -> Self {
        use clap::CommandFactory;
        let mut settings = Self {
            variables: Default::default(),
            hidden: Default::default(),
        };
        let mut commands = vec![Cli::command()];
        while let Some(command) = commands.pop() {
            for arg in command.get_arguments() {
                let Some(variable) = arg.get_env().and_then(|env| env.to_str()) else {
                    continue;
                };
                if arg.is_hide_env_values_set() {
                    settings.hidden.insert(variable.to_owned());
                }
                settings.variables.insert(variable.to_owned());
            }
            commands.extend(command.get_subcommands().cloned());
        }
        settings
    }

    /// What clap calls "--max-upload-bytes <MAX_UPLOAD_BYTES>", as users know it:
    /// the variable of a setting, else the flag (`--ttl`) or the argument (`[ID]`).
    fn name(&self, argument: &str) -> String {
        let value_name = argument
            .split_once('<')
            .and_then(|(_, rest)| rest.strip_suffix('>'));
        match (value_name, argument.split_once(' ')) {
            (Some(variable), _) if self.variables.contains(variable) => variable.to_owned(),
            (_, Some((flag, _))) if flag.starts_with("--") => flag.to_owned(),
            _ => argument.to_owned(),
        }
    }

    /// Whether a value of this setting is never printed (a URL with its password).
    fn hides(&self, name: &str) -> bool {
        self.hidden.contains(name)
    }
}

/// A value parser's complaint, with what to write where the standard library's
/// says only what is wrong ("invalid digit found in string").
fn explain(source: &(dyn std::error::Error + 'static)) -> String {
    let not_digits = source
        .downcast_ref::<std::num::ParseIntError>()
        .is_some_and(|err| {
            matches!(
                err.kind(),
                std::num::IntErrorKind::InvalidDigit | std::num::IntErrorKind::Empty
            )
        });
    if not_digits {
        format!("{source}: write a whole number, in digits")
    } else if source.is::<std::net::AddrParseError>() {
        format!("{source}: write IP:PORT, such as 127.0.0.1:8080")
    } else {
        source.to_string()
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
