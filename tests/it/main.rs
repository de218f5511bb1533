//! The one integration-test binary: every module below starts real servers on
//! port 0 and talks to them over real sockets. Redis-backed tests start their own
//! `redis-server` on a free port (see `common::redis`).
// Test code: a panic is a failed test (or bench), so unwrapping and indexing are fine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

mod browser;
mod caps;
mod cluster;
mod config;
mod doors;
mod edge;
mod faults;
mod first_hour;
mod idempotency;
mod identity;
mod ingress;
mod pages;
mod profiles;
mod protocol;
mod pusher_api;
mod pusher_config;
mod pusher_presence;
mod pusher_protocol;
mod pusher_sign;
mod pusher_webhook;
mod pusher_webhooks_e2e;
mod pusher_ws;
mod recovery;
mod recovery_attacks;
mod recovery_cluster;
mod router;
mod workers;
