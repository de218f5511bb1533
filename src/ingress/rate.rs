//! Per-source rate limits on pushes (`ingress.push_rate_per_sec`, `ingress.push_burst`):
//! one source — a peer IP on the text and UDP ports, one publisher WebSocket — may
//! push at most `push_rate_per_sec` on average, with bursts of up to `push_burst`.
//! A push over the limit is refused (text `fail\n`, UDP dropped, publisher close
//! 1008) and counted as `scenecast_rejected_total{reason="rate_limited"}`.
//!
//! The arithmetic is governor's GCRA (one atomic word per source, no timer, no
//! background task). Per-IP state lives in one map per port; entries whose budget
//! is full again are dropped every [`SWEEP_EVERY`], so spoofed UDP sources cannot
//! grow it for ever.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::config::IngressSettings;

/// How often a per-IP limiter forgets sources whose budget is full again.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The configured quota; `None` when `push_rate_per_sec` is 0 (no limit).
pub fn quota(settings: &IngressSettings) -> Option<Quota> {
    let rate = NonZeroU32::new(settings.push_rate_per_sec)?;
    // A burst below the rate would make the rate unreachable within one second.
    let burst = NonZeroU32::new(settings.push_burst).map_or(rate, |burst| burst.max(rate));
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// A limit per peer IP, shared by every connection of one port.
#[derive(Debug)]
pub struct PerIp {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    last_sweep: Mutex<Instant>,
}

impl PerIp {
    pub fn new(settings: &IngressSettings) -> Self {
        Self {
            limiter: quota(settings).map(DefaultKeyedRateLimiter::keyed),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Takes one push from `ip`'s budget; false when `ip` is over its limit.
    pub fn admit(&self, ip: IpAddr) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        self.sweep(limiter);
        limiter.check_key(&ip).is_ok()
    }

    fn sweep(&self, limiter: &DefaultKeyedRateLimiter<IpAddr>) {
        let now = Instant::now();
        let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(*last) >= SWEEP_EVERY {
            *last = now;
            drop(last);
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The limit of one publisher WebSocket. Built only when a connection publishes
/// for the first time, so connections that never publish carry one null pointer.
#[derive(Debug, Default)]
pub struct PerConnection(Option<Box<DefaultDirectRateLimiter>>);

impl PerConnection {
    /// Takes one push from this connection's budget; false when over the limit.
    pub fn admit(&mut self, settings: &IngressSettings) -> bool {
        if self.0.is_none() {
            let Some(quota) = quota(settings) else {
                return true;
            };
            self.0 = Some(Box::new(DefaultDirectRateLimiter::direct(quota)));
        }
        self.0
            .as_ref()
            .is_none_or(|limiter| limiter.check().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: u32, burst: u32) -> IngressSettings {
        IngressSettings {
            push_rate_per_sec: rate,
            push_burst: burst,
            ..IngressSettings::default()
        }
    }

    #[test]
    fn a_burst_passes_then_the_source_is_refused_and_others_are_not() {
        let limit = PerIp::new(&settings(1, 3));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!((0..3).all(|_| limit.admit(a)));
        assert!(!limit.admit(a));
        assert!(limit.admit(b));
    }

    #[test]
    fn zero_means_no_limit() {
        let limit = PerIp::new(&settings(0, 0));
        assert!((0..100_000).all(|_| limit.admit([10, 0, 0, 1].into())));
        let mut connection = PerConnection::default();
        assert!((0..100_000).all(|_| connection.admit(&settings(0, 0))));
        assert!(connection.0.is_none());
    }

    #[test]
    fn a_publisher_connection_has_its_own_budget() {
        let s = settings(1, 2);
        let (mut one, mut two) = (PerConnection::default(), PerConnection::default());
        assert!(one.admit(&s) && one.admit(&s));
        assert!(!one.admit(&s));
        assert!(two.admit(&s));
    }
}
