//! Scrape-time metrics of the channel state and its webhooks (`/metrics`):
//!
//! - `scenecast_pusher_channels_occupied`, `scenecast_pusher_presence_members`:
//!   gauges of what this node holds (its own subscribers);
//! - `scenecast_pusher_transitions{kind}`: occupied, vacated, member_added,
//!   member_removed carried out by this node (in Redis mode each is carried out by
//!   one node of the cluster: sum them over nodes);
//! - `scenecast_pusher_webhooks{outcome}`: batches delivered / failed, retries, and
//!   events dropped (queue full).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::ChannelState;

/// Reads the channel state set at start (nothing before it is set).
#[derive(Debug, Default, Clone)]
pub struct StateCollector {
    state: Arc<OnceLock<ChannelState>>,
}

impl std::fmt::Debug for ChannelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelState({})", self.mode())
    }
}

impl StateCollector {
    /// Starts reporting `state` (once; later calls are ignored).
    pub fn watch(&self, state: ChannelState) {
        let _ = self.state.set(state);
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(state) = self.state.get() else {
            return Ok(());
        };
        let (channels, members) = state.local_counts();
        for (name, help, value) in [
            (
                "scenecast_pusher_channels_occupied",
                "Pusher channels with a subscriber on this node",
                channels,
            ),
            (
                "scenecast_pusher_presence_members",
                "Presence members (users per channel) with a connection on this node",
                members,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let stats = state.stats();
        let mut family = encoder.encode_descriptor(
            "scenecast_pusher_transitions",
            "Channel transitions carried out by this node, by kind",
            None,
            MetricType::Counter,
        )?;
        for (kind, counter) in [
            ("occupied", &stats.occupied),
            ("vacated", &stats.vacated),
            ("member_added", &stats.members_added),
            ("member_removed", &stats.members_removed),
        ] {
            ConstCounter::new(counter.load(Relaxed))
                .encode(family.encode_family(&[("kind", kind)])?)?;
        }
        if let Some(webhooks) = state.webhooks() {
            let hooks = webhooks.stats();
            let mut family = encoder.encode_descriptor(
                "scenecast_pusher_webhooks",
                "Webhook batches delivered or failed, retries, and events dropped (queue full)",
                None,
                MetricType::Counter,
            )?;
            for (outcome, counter) in [
                ("delivered", &hooks.delivered),
                ("failed", &hooks.failed),
                ("retries", &hooks.retries),
                ("dropped", &hooks.dropped),
            ] {
                ConstCounter::new(counter.load(Relaxed))
                    .encode(family.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        Ok(())
    }
}
