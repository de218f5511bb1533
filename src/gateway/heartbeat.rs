//! The heartbeat of every connection of this node, in one task: once a second it
//! takes the open connections from the hub (briefly under its lock) and walks them
//! outside the lock:
//! - closes with 4001 those from which nothing arrived for `idle_timeout_secs`;
//! - closes with 4008 those whose queued frames have not moved for
//!   `send_timeout_secs` (a client that stopped reading, before its queue is full);
//! - pings the connections whose turn it is, so each gets a ping every
//!   `interval_secs`, spread evenly over the interval rather than all at once.
//!
//! One walk replaces two timers per connection (a ping interval and an idle
//! deadline, each a timer entry and a share of the connection task's memory).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::hub::{CloseReason, Hub, Offer, frame};
use crate::metrics::Metrics;

const TICK: Duration = Duration::from_secs(1);

/// Runs for as long as the server does.
pub async fn run(hub: Hub, settings: Arc<Settings>, metrics: Arc<Metrics>) {
    let ping_every = settings.heartbeat.interval_secs.max(1);
    let idle_after = u32::try_from(settings.heartbeat.idle_timeout_secs).unwrap_or(u32::MAX);
    let stalled_after = u32::try_from(settings.server.send_timeout_secs).unwrap_or(u32::MAX);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Reused from tick to tick; emptied after each walk, so a closed connection's
    // outbox (and socket) is not kept until the next tick.
    let mut outboxes = Vec::new();
    for tick in 0u64.. {
        ticks.tick().await;
        let (mut idle, mut stalled) = (0u64, 0u64);
        hub.outboxes(&mut outboxes);
        for (id, outbox) in outboxes.drain(..) {
            if outbox.closing().is_some() {
                continue;
            }
            // Whole seconds on both sides: `>` never closes early.
            if outbox.idle_secs() > idle_after {
                outbox.close(CloseReason::IdleTimeout);
                idle += 1;
            } else if outbox.stalled_checks() >= stalled_after {
                outbox.close(CloseReason::SlowConsumer);
                stalled += 1;
            } else if id % ping_every == tick % ping_every
                && outbox.offer(&frame::PING) == Offer::Overflowed
            {
                stalled += 1;
            }
        }
        if idle > 0 {
            log::info!(
                "closed {idle} connection(s) idle for {idle_after}s (heartbeat.idle_timeout_secs)"
            );
        }
        if stalled > 0 {
            metrics.slow_consumers.inc_by(stalled);
            log::warn!(
                "closed {stalled} connection(s) that stopped reading for {stalled_after}s \
                 (server.send_timeout_secs)"
            );
        }
    }
}
