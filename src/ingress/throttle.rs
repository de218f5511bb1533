//! A warning budget for every door: a flood of bad lines, datagrams or refused HTTP
//! requests must not fill the log (or the disk under it). Each door (one throttle
//! per port, one for all HTTP refusals, one for slow-consumer closes) gets a few
//! lines per second;
//! the rest are counted and the count is reported with the next warning let through.
//! Metrics still count every refusal.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Warnings let through per window.
const BURST: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// Shared by every connection of one port. A `std::sync::Mutex` because it is held
/// for a few arithmetic operations, never across an `.await`.
#[derive(Debug)]
pub struct WarnThrottle {
    /// The log target, i.e. the ingress module the warnings are about.
    target: &'static str,
    window: Mutex<Window>,
}

impl WarnThrottle {
    /// A throttle logging under `target` (pass `module_path!()`).
    pub fn new(target: &'static str) -> Self {
        Self {
            target,
            window: Mutex::new(Window {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Logs `message` at warn level unless this window's budget is spent.
    pub fn warn(&self, message: std::fmt::Arguments<'_>) {
        self.log(log::Level::Warn, message);
    }

    /// Logs `message` at `level` unless this window's budget is spent.
    pub fn log(&self, level: log::Level, message: std::fmt::Arguments<'_>) {
        if !log::log_enabled!(target: self.target, level) {
            return;
        }
        if let Some(suppressed) = self.admit(Instant::now()) {
            let target = self.target;
            if suppressed > 0 {
                log::log!(target: target, level, "{message} ({suppressed} similar lines suppressed)");
            } else {
                log::log!(target: target, level, "{message}");
            }
        }
    }

    /// `Some(warnings suppressed since the last one logged)` when one may be logged.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(window.started) >= WINDOW {
            window.started = now;
            window.logged = 0;
        }
        if window.logged < BURST {
            window.logged += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rest_is_counted_until_the_next_window() {
        let throttle = WarnThrottle::new(module_path!());
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(throttle.admit(start), Some(0));
        }
        assert_eq!(throttle.admit(start), None);
        assert_eq!(throttle.admit(start + WINDOW / 2), None);
        assert_eq!(throttle.admit(start + WINDOW), Some(2));
        assert_eq!(throttle.admit(start + WINDOW), Some(0));
    }
}
