use std::io::IsTerminal;

use attache::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// mimalloc: a GraphQL request is many small allocations, and glibc's malloc took
/// some 15% of the server's cycles in a listing benchmark. Built without
/// transparent huge pages (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = attache::cli::Cli::parse_or_exit();
    if cli.ends_on_a_closed_pipe() {
        // `attache events list | head`: ended by the closed pipe, as `ls` is, not
        // by a panic.
        sigpipe::reset();
    }
    let log_format = cli.log_format();
    init_logs(log_format);
    attache::cli::Cli::warn_unknown_variables();
    match cli.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            attache::telemetry::fatal(&one_line(&err), log_format == LogFormat::Json);
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: a driver's message often
/// repeats its source's, and a tool's (`pg_dump`) spans several lines.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Logs go to stderr: colored text on a terminal, or one JSON object per line.
fn init_logs(format: LogFormat) {
    const DEFAULT: &str = "info,sqlx=warn";
    // A RUST_LOG that does not parse is said once logging runs, not silently replaced.
    let (filter, unread) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(err) if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() => {
            (EnvFilter::new(DEFAULT), Some(err))
        }
        Err(_) => (EnvFilter::new(DEFAULT), None),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            let colors = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            logs.with_ansi(colors).init();
        }
    }
    if let Some(err) = unread {
        tracing::warn!("RUST_LOG is not a log filter ({err}); logging at {DEFAULT}");
    }
}
