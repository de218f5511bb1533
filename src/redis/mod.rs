//! Everything that talks to Redis: key names ([`keys`]) and the one kind of
//! connection every user holds ([`link`]): health-checked, reconnecting by itself
//! with jittered backoff. The bus and the registry are its two users; nothing else
//! in the crate opens a Redis connection.
//!
//! Whatever comes back from Redis (envelopes on the bus channel, registry values,
//! replies) is untrusted input: it is parsed without panicking, and a value that
//! does not parse is counted and skipped.

pub mod keys;
pub mod link;
#[cfg(test)]
pub mod test_server;

pub use self::keys::RedisKeys;
pub use self::link::{Link, LinkDown};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A random number for this process's start: tells two processes apart that
/// claim the same node id, and marks this process's bus envelopes.
pub fn instance_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_micros());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Unix time in microseconds (0 before 1970).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Lets one log line through per `every`; the ones in between are counted and the
/// count goes with the next line. Lock-free: a lost race logs one line fewer.
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    last_micros: AtomicU64,
    suppressed: AtomicU64,
}

impl LogEvery {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last_micros: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        let now = unix_micros();
        let last = self.last_micros.load(Ordering::Relaxed);
        let every = u64::try_from(self.every.as_micros()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) >= every
            && self
                .last_micros
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}
