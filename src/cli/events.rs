//! `attache events list [--failed | --stuck]` and `attache events retry ID|--all-failed`: what
//! an operator sees of webhook deliveries, and how failed ones are sent again. Needs
//! `DATABASE_URL` only; a running server's dispatcher picks retried deliveries up.

use anyhow::Context;
use clap::{Args, Subcommand};
use entity::webhook_delivery::DeliveryStatus;
use sea_orm::ActiveEnum;
use uuid::Uuid;

use crate::config::DatabaseConfig;
use crate::events::admin::{self, Listed, RetryTarget};

#[derive(Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// List webhook deliveries, newest first: one line per event and receiver.
    List {
        /// Only deliveries given up (`failed`: a 410, or WEBHOOK_MAX_ATTEMPTS spent).
        #[arg(long, conflicts_with = "stuck")]
        failed: bool,
        /// Only deliveries still retried after a failed attempt (they hold back
        /// their attachment's later events for their receiver).
        #[arg(long)]
        stuck: bool,
        /// Most lines shown, 1 to 100000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Send failed deliveries again: those of one event, or all of them.
    Retry {
        /// The event's id (the `webhook-id` receivers see; `events list` shows it).
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        id: Option<Uuid>,
        /// Every failed delivery.
        #[arg(long)]
        all_failed: bool,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    match args.command {
        EventsCommand::List {
            failed,
            stuck,
            limit,
            database,
        } => {
            let which = match (failed, stuck) {
                (true, _) => Listed::Failed,
                (_, true) => Listed::Stuck,
                _ => Listed::All,
            };
            let db = crate::db::Database::open_existing(&database).await?;
            let deliveries = admin::list(db.read(), which, limit).await.context(
                "DATABASE_URL: cannot read the deliveries (has `attache db migrate` run?)",
            )?;
            if deliveries.is_empty() {
                println!(
                    "{}",
                    match which {
                        Listed::Failed => "no failed deliveries",
                        Listed::Stuck => "no deliveries being retried",
                        Listed::All => "no deliveries",
                    }
                );
                return Ok(());
            }
            // TYPE as wide as the longest type (`tenant.quota_warning`): the columns
            // stay aligned for tools that cut them.
            println!(
                "{:<36}  {:<20}  {:<36}  {:<9}  {:>8}  {:<20}  RECEIVER / LAST ERROR",
                "EVENT", "TYPE", "ATTACHMENT", "STATUS", "ATTEMPTS", "DELIVERED / NEXT"
            );
            for delivery in deliveries {
                let when = match delivery.status {
                    DeliveryStatus::Delivered => delivery.delivered_at,
                    DeliveryStatus::Pending => Some(delivery.next_attempt_at),
                    DeliveryStatus::Failed => None,
                }
                .map_or_else(
                    || "-".to_owned(),
                    |when| when.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                );
                println!(
                    "{:<36}  {:<20}  {:<36}  {:<9}  {:>8}  {:<20}  {}{}",
                    delivery.event_id,
                    delivery.event_type.to_value(),
                    delivery.attachment_id,
                    delivery.status.to_value(),
                    delivery.attempts,
                    when,
                    delivery.receiver,
                    delivery
                        .last_error
                        .map(|error| format!(" ({error})"))
                        .unwrap_or_default(),
                );
            }
            Ok(())
        }
        EventsCommand::Retry {
            id,
            all_failed: _,
            database,
        } => {
            let db = crate::db::Database::open_existing(&database).await?;
            let target = id.map_or(RetryTarget::AllFailed, RetryTarget::Event);
            let cannot =
                "DATABASE_URL: cannot update the deliveries (has `attache db migrate` run?)";
            let txn = db.begin().await.context(cannot)?;
            let retried = admin::retry(&txn, target).await.context(cannot)?;
            txn.commit().await.context(cannot)?;
            match (target, retried) {
                (RetryTarget::Event(id), 0) => {
                    anyhow::bail!("event {id} has no failed delivery")
                }
                (_, retried) => println!("{retried} failed deliveries will be sent again"),
            }
            Ok(())
        }
    }
}
