//! Prometheus metrics, served as text at `/metrics`.
//!
//! Counters are plain atomics bumped once per push (never per delivered frame on a
//! lock); connections per page are read from the hub at scrape time, so the page
//! label set is exactly the pages that have connections now and cannot grow forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::hub::Hub;
use crate::push::Ingress;

type Labels = [(&'static str, &'static str); 1];

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pushes: Family<Labels, Counter>,
    pushes_total: AtomicU64,
    pub deliveries: Counter,
    pub slow_consumers: Counter,
    rejected: Family<Labels, Counter>,
    pub redis_errors: Counter,
    pub redis_reconnects: Counter,
    /// Pushes from Redis dropped because this node's fan-out fell behind.
    pub bus_dropped: Counter,
    /// Seconds from a push's publish to its arrival on a node's bus subscriber.
    pub bus_latency: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Scrape-time view of the hub: open connections per page, and in total.
#[derive(Debug)]
struct HubCollector {
    hub: HubHandle,
}

/// `Hub` does not implement Debug (it holds live queues); wrap it for the collector.
struct HubHandle(Hub);

impl std::fmt::Debug for HubHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let total = ConstGauge::new(self.hub.0.len() as i64);
        let metric = encoder.encode_descriptor(
            "scenecast_connections",
            "Open WebSocket connections on this node",
            None,
            total.metric_type(),
        )?;
        total.encode(metric)?;

        let mut family = encoder.encode_descriptor(
            "scenecast_page_connections",
            "Open WebSocket connections on this node by page",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (page, count) in self.hub.0.page_counts() {
            let labels = [("page", &*page)];
            let gauge = ConstGauge::new(count as i64);
            gauge.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Metrics {
    pub fn new(hub: Hub) -> Arc<Self> {
        let mut registry = Registry::default();
        let pushes = Family::<Labels, Counter>::default();
        registry.register(
            "scenecast_pushes",
            "Pushes accepted, by ingress",
            pushes.clone(),
        );
        let deliveries = Counter::default();
        registry.register(
            "scenecast_deliveries",
            "Frames queued to connections on this node",
            deliveries.clone(),
        );
        let slow_consumers = Counter::default();
        registry.register(
            "scenecast_slow_consumers_closed",
            "Connections closed because their send queue overflowed",
            slow_consumers.clone(),
        );
        let rejected = Family::<Labels, Counter>::default();
        registry.register(
            "scenecast_rejected",
            "Inputs refused, by reason",
            rejected.clone(),
        );
        let redis_errors = Counter::default();
        registry.register(
            "scenecast_redis_errors",
            "Failed Redis commands",
            redis_errors.clone(),
        );
        let redis_reconnects = Counter::default();
        registry.register(
            "scenecast_redis_reconnects",
            "Connections (re)established to Redis",
            redis_reconnects.clone(),
        );
        let bus_dropped = Counter::default();
        registry.register(
            "scenecast_bus_dropped",
            "Pushes from Redis dropped because this node's fan-out fell behind",
            bus_dropped.clone(),
        );
        let bus_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "scenecast_bus_latency_seconds",
            "Time from publish to arrival on a node's bus subscriber",
            bus_latency.clone(),
        );
        registry.register_collector(Box::new(HubCollector {
            hub: HubHandle(hub),
        }));
        Arc::new(Self {
            registry,
            pushes,
            pushes_total: AtomicU64::new(0),
            deliveries,
            slow_consumers,
            rejected,
            redis_errors,
            redis_reconnects,
            bus_dropped,
            bus_latency,
        })
    }

    pub fn push_received(&self, ingress: Ingress) {
        self.pushes
            .get_or_create(&[("ingress", ingress.as_str())])
            .inc();
        self.pushes_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Pushes accepted by this node since start, all ingresses together.
    pub fn pushes_total(&self) -> u64 {
        self.pushes_total.load(Ordering::Relaxed)
    }

    /// Counts a refused input; `reason` is a fixed, low-cardinality name.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            log::error!("encoding metrics failed");
        }
        text
    }
}
