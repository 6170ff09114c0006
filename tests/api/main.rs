//! The one integration test binary: the real server on 127.0.0.1:0, real HTTP.

mod helpers;

mod architecture;
mod auth;
mod backup;
mod cli;
mod downloads;
mod events;
mod hostile;
mod limits;
mod listing;
mod migrate;
mod operations;
mod playground;
mod providers;
mod quotas;
mod reliability;
mod schema;
mod storage;
mod uploads;
