//! `attache tenant`: what each tenant stores, its quota, and the recount that
//! repairs a usage that drifted.

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::{DatabaseConfig, QuotaConfig, parse_byte_size};
use crate::db::Database;
use crate::ids::SafeId;
use crate::quotas;

#[derive(Args)]
pub struct TenantArgs {
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Every tenant that stores something or has a quota: usage, quota, percentage.
    List {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        quotas: QuotaConfig,
    },
    /// A tenant's own quota, in place of TENANT_QUOTA_BYTES and TENANT_QUOTA_FILES.
    Quota {
        #[command(subcommand)]
        command: QuotaCommand,
    },
    /// A tenant's usage; with --recompute, counted again from the attachment rows.
    Usage {
        /// Count every tenant's files again and correct the usage that drifted.
        #[arg(long)]
        recompute: bool,
        /// Only this tenant.
        tenant: Option<String>,
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        quotas: QuotaConfig,
    },
}

#[derive(Subcommand)]
enum QuotaCommand {
    /// Set the tenant's limits; a limit not given stays as it is.
    Set {
        tenant: String,
        /// Bytes the tenant may store: `5GiB`, `500MB` or a number.
        #[arg(long, value_parser = parse_byte_size)]
        bytes: Option<u64>,
        /// Files the tenant may store.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::config::MOST_QUOTA_FILES))]
        files: Option<u64>,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Put the tenant back on the default limits.
    Unset {
        tenant: String,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

pub async fn run(args: TenantArgs) -> anyhow::Result<()> {
    match args.command {
        TenantCommand::List { database, quotas } => {
            let db = open(&database).await?;
            print_usage(&quotas::list(&db, &quotas).await?);
        }
        TenantCommand::Quota {
            command:
                QuotaCommand::Set {
                    tenant,
                    bytes,
                    files,
                    database,
                },
        } => {
            let tenant = tenant_id(&tenant)?;
            if bytes.is_none() && files.is_none() {
                anyhow::bail!("say --bytes, --files or both (`--bytes 5GiB --files 10000`)");
            }
            let stored = |limit: u64| i64::try_from(limit).unwrap_or(i64::MAX);
            let db = open(&database).await?;
            quotas::set_quota(&db, tenant.as_str(), bytes.map(stored), files.map(stored)).await?;
            println!("quota of {tenant} set");
        }
        TenantCommand::Quota {
            command: QuotaCommand::Unset { tenant, database },
        } => {
            let tenant = tenant_id(&tenant)?;
            let db = open(&database).await?;
            if quotas::unset_quota(&db, tenant.as_str()).await? {
                println!("{tenant} is back on the default quota");
            } else {
                println!("{tenant} had no quota of its own");
            }
        }
        TenantCommand::Usage {
            recompute,
            tenant,
            database,
            quotas,
        } => {
            let tenant = tenant.as_deref().map(tenant_id).transpose()?;
            let tenant = tenant.as_ref().map(SafeId::as_str);
            let db = open(&database).await?;
            if recompute {
                let corrections = quotas::recompute(&db, tenant).await?;
                if corrections.is_empty() {
                    println!("usage matches the stored files: nothing to correct");
                }
                for fixed in corrections {
                    let (bytes, files) = fixed.recorded.unwrap_or_default();
                    println!(
                        "{}: corrected {bytes} bytes / {files} files to {} bytes / {} files",
                        fixed.tenant_id, fixed.counted.0, fixed.counted.1
                    );
                }
            }
            let all = quotas::list(&db, &quotas).await?;
            let shown: Vec<_> = all
                .into_iter()
                .filter(|usage| tenant.is_none_or(|tenant| usage.tenant_id == tenant))
                .collect();
            match tenant {
                Some(tenant) if shown.is_empty() => {
                    println!("tenant {tenant} stores nothing and has no quota of its own");
                }
                _ => print_usage(&shown),
            }
        }
    }
    Ok(())
}

/// The database, migrated (the usage table may be new).
async fn open(database: &DatabaseConfig) -> anyhow::Result<Database> {
    let db = Database::open_existing(database).await?;
    db.migrate()
        .await
        .context("DATABASE_URL: applying database migrations failed")?;
    Ok(db)
}

fn tenant_id(tenant: &str) -> anyhow::Result<SafeId> {
    SafeId::tenant(tenant).with_context(|| {
        format!(
            "`{tenant}` is not a tenant id: letters, digits, `-` and `_`, at most 64, not `{}`",
            SafeId::RESERVED_TENANT
        )
    })
}

fn print_usage(tenants: &[quotas::Usage]) {
    if tenants.is_empty() {
        println!("no tenant stores anything yet");
        return;
    }
    let limit =
        |limit: Option<i64>| limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
    println!(
        "{:<36}  {:>14}  {:>8}  {:>14}  {:>10}  {:>6}",
        "TENANT", "BYTES", "FILES", "QUOTA_BYTES", "QUOTA_FILES", "USED"
    );
    for usage in tenants {
        let used = usage
            .percent()
            .map_or_else(|| "-".to_owned(), |percent| format!("{percent:.0}%"));
        println!(
            "{:<36}  {:>14}  {:>8}  {:>14}  {:>10}  {:>6}{}",
            usage.tenant_id,
            usage.bytes,
            usage.files,
            limit(usage.quota_bytes),
            limit(usage.quota_files),
            used,
            if usage.own_quota { "  (own quota)" } else { "" },
        );
    }
}
