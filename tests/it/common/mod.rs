//! Test support shared by every integration module: a real redis-server per test,
//! a scenecast server started in-process on port 0, WebSocket and HTTP clients.

#![allow(dead_code)]

pub mod capture;
pub mod chrome;
pub mod clients;
pub mod node;
pub mod proxy;
pub mod redis;
pub mod server;
pub mod text;
pub mod ws;

pub use self::chrome::Chrome;
pub use self::node::Node;
pub use self::proxy::Proxy;
pub use self::redis::RedisServer;
pub use self::server::{API_TOKEN, CLIENT_TOKEN, TestServer};
pub use self::text::{TextClient, php_push, udp_send};
pub use self::ws::{SilentClient, WsClient};

use std::time::Duration;

/// Upper bound for anything a test waits on; generous because CI machines are noisy.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` every 50 ms until it returns `Some`, or panics after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}
