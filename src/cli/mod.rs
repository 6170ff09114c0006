//! The command line: one file per subcommand; `anyhow` only at this boundary.

mod db;
mod schema;
mod serve;
mod storage;
mod token;

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
}

impl Cli {
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
        }
    }
}
