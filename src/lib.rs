//! attache: a GraphQL API server that keeps the file attachments of multi-tenant
//! business applications. Data flows one way: request -> auth -> validation ->
//! storage -> database.

pub mod app;
pub mod attachments;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod collections;
pub mod config;
pub mod count_slots;
pub mod db;
pub mod disposition;
pub mod error;
pub mod events;
pub mod graphql;
pub mod http;
pub mod http_date;
pub mod ids;
pub mod media;
pub mod quotas;
pub mod recent_urls;
pub mod storage;
pub mod telemetry;
pub mod upload_slots;
pub mod workers;
