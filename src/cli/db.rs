//! `attache db migrate`: applies the database migrations.

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::DatabaseConfig;

#[derive(Args)]
pub struct DbArgs {
    #[command(subcommand)]
    command: DbCommand,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply pending database migrations.
    Migrate {
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

pub async fn run(args: DbArgs) -> anyhow::Result<()> {
    match args.command {
        DbCommand::Migrate { database } => {
            crate::db::Database::open(&database)
                .await?
                .migrate()
                .await
                .context("DATABASE_URL: applying database migrations failed")?;
            println!("database migrations applied");
            Ok(())
        }
    }
}
