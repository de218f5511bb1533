//! A private `redis-server` for unit tests that need a real one (the registry's and
//! the Pusher channel state's scripts): on a free port, nothing saved, killed on drop.

use std::time::Duration;

/// A private redis-server, killed on drop.
pub struct TestRedis {
    child: std::process::Child,
    /// `redis://127.0.0.1:{port}/`.
    pub url: String,
}

impl TestRedis {
    /// Starts one on a free port; panics when `redis-server` is not on PATH.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        Self::start_on(port)
    }

    /// Starts one on `port` (a restart on the port a node already knows).
    pub fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let url = format!("redis://127.0.0.1:{port}/");
        let redis = TestRedis { child, url };
        for _ in 0..200 {
            if redis.conn().is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start");
    }

    /// A fresh blocking connection that answered PING.
    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        let mut conn = redis::Client::open(self.url.as_str())?.get_connection()?;
        redis::cmd("PING").query::<()>(&mut conn)?;
        Ok(conn)
    }

    /// Runs `cmd` on a fresh connection; panics on any error.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.conn().unwrap()).unwrap()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
