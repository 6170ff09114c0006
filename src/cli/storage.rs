//! `attache storage check`: writes, reads, stats and deletes a probe object and says
//! which step works; the exit status tells whether all did.

use clap::{Args, Subcommand};

use crate::config::StorageConfig;
use crate::storage::Storage;

#[derive(Args)]
pub struct StorageArgs {
    #[command(subcommand)]
    command: StorageCommand,
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Write, read, stat and delete a probe object; say what works and what does not.
    Check {
        #[command(flatten)]
        storage: StorageConfig,
    },
}

pub async fn run(args: StorageArgs) -> anyhow::Result<()> {
    match args.command {
        StorageCommand::Check { storage: config } => {
            let storage = Storage::from_config(&config)?;
            let target = match &config.s3_bucket_name {
                Some(bucket) if storage.backend() == crate::config::StorageBackend::S3 => {
                    format!("s3 bucket {bucket}")
                }
                _ => format!("folder {}", config.storage_root.display()),
            };
            println!("checking {target}");
            let mut failed = 0;
            for (step, result) in storage.check_steps().await {
                match result {
                    Ok(()) => println!("  {step:<6} ok"),
                    Err(err) => {
                        failed += 1;
                        println!("  {step:<6} FAILED: {}", err.kind());
                        tracing::debug!(step, error = %err, "storage check step failed");
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("storage check failed: see the steps above");
            }
            println!("storage works");
            Ok(())
        }
    }
}
