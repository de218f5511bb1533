//! scenecast: a real-time push server. Browsers keep a WebSocket open tagged with a
//! page and optionally a user id; back offices push to a page, a user or everyone.
//!
//! Data path: ingress → [`push::Push`] → [`bus::Bus`] → [`bus::Fanout`] (one per HTTP
//! worker) → [`hub::Hub`] lookup → each connection's [`hub::Outbox`] → its socket.
//! Connection metadata goes to the [`registry`] on the side.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod bus;
pub mod config;
pub mod edge;
pub mod error;
pub mod gateway;
pub mod history;
pub mod hub;
pub mod idempotency;
pub mod ingress;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod push;
pub mod pusher;
pub mod redis;
pub mod registry;
pub mod scenes;
pub mod server;
pub mod web;

pub use config::Settings;
pub use server::{Running, StartError, start};

/// Starts the server and runs it until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> Result<(), StartError> {
    let running = start(settings).await?;
    running
        .serve_until_signal()
        .await
        .map_err(|e| StartError::Setup(format!("signal handling: {e}")))
}
