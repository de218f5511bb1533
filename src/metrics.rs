//! Prometheus metrics, served as text at `/metrics`.
//!
//! Counters are plain atomics bumped once per push (never per delivered frame on a
//! lock); connections per page are read from the hub at scrape time.
//!
//! Page names are chosen by clients, so two rules keep the exposition valid and
//! small whatever they choose:
//! - label values are escaped (`\\`, `\"`, `\n`, as the text format requires;
//!   prometheus-client 0.24 writes them verbatim), see [`LabelText`];
//! - only the pages operators named get their own `scenecast_page_connections`
//!   series: the literal pages of `[[scenes]]` and `ops.metrics_pages`. Every other
//!   page is summed under `page="_other"`, so clients cannot add series.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::Settings;
use crate::hub::Hub;
use crate::push::Ingress;

/// The `page` label under which every page without its own series is summed.
pub const OTHER_PAGES: &str = "_other";

/// A label value escaped for the text exposition format (`\` → `\\`, `"` → `\"`,
/// newline → `\n`; Prometheus "Exposition formats", text format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LabelText<'a>(pub &'a str);

impl EncodeLabelValue for LabelText<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut rest = self.0;
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            let (plain, special) = rest.split_at(at);
            encoder.write_str(plain)?;
            let mut chars = special.chars();
            encoder.write_str(match chars.next() {
                Some('\\') => "\\\\",
                Some('"') => "\\\"",
                _ => "\\n",
            })?;
            rest = chars.as_str();
        }
        encoder.write_str(rest)
    }
}

/// The pages that get their own series: the literal pages of the scenes in force
/// (a page with a `{param}` hole is chosen per trigger, so it has none) and
/// `ops.metrics_pages`.
pub fn labelled_pages(settings: &Settings) -> HashSet<Box<str>> {
    let scenes = settings.scene_configs().into_iter().filter_map(|s| s.page);
    scenes
        .filter(|page| !page.contains('{'))
        .chain(settings.ops.metrics_pages.iter().cloned())
        .filter(|page| page != OTHER_PAGES)
        .map(String::into_boxed_str)
        .collect()
}

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
    /// `?recover=1` reconnects by outcome (`recovered`, `lost`).
    recoveries: Family<Labels, Counter>,
    /// Pushes replayed to reconnecting connections.
    pub replayed: Counter,
    /// Pushes the history holds (embedded: this node's ring; redis: the stream's
    /// length at this node's last publish).
    pub history_size: prometheus_client::metrics::gauge::Gauge,
    /// Repeated idempotency keys answered with the first reply (nothing pushed).
    pub idempotent_duplicates: Counter,
    /// The Pusher channel state's gauges and counters, once it is set.
    pub pusher_state: crate::pusher::state::StateCollector,
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
    /// Pages with their own series; see [`labelled_pages`].
    pages: HashSet<Box<str>>,
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
        let mut other = 0;
        for (page, count) in self.hub.0.page_counts() {
            let page: &str = &page;
            if !self.pages.contains(page) {
                other += count;
                continue;
            }
            let labels = [("page", LabelText(page))];
            let gauge = ConstGauge::new(count as i64);
            gauge.encode(family.encode_family(&labels)?)?;
        }
        let labels = [("page", LabelText(OTHER_PAGES))];
        ConstGauge::new(other as i64).encode(family.encode_family(&labels)?)?;
        Ok(())
    }
}

impl Metrics {
    /// Metrics whose page series are only the default scenes' pages.
    pub fn new(hub: Hub) -> Arc<Self> {
        Self::with_pages(hub, labelled_pages(&Settings::default()))
    }

    /// Metrics with their own `scenecast_page_connections` series for `pages`
    /// (see [`labelled_pages`]); every other page is summed as [`OTHER_PAGES`].
    pub fn with_pages(hub: Hub, pages: HashSet<Box<str>>) -> Arc<Self> {
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
        let recoveries = Family::<Labels, Counter>::default();
        registry.register(
            "scenecast_recoveries",
            "Reconnects with a position (?recover=1&epoch=&since=), by outcome: recovered or lost",
            recoveries.clone(),
        );
        let replayed = Counter::default();
        registry.register(
            "scenecast_replayed",
            "Pushes replayed from the history to reconnecting connections",
            replayed.clone(),
        );
        let history_size = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "scenecast_history_size",
            "Pushes held by the history for recovery",
            history_size.clone(),
        );
        let idempotent_duplicates = Counter::default();
        registry.register(
            "scenecast_idempotent_duplicates",
            "Repeated idempotency keys answered with the first reply, nothing pushed",
            idempotent_duplicates.clone(),
        );
        let pusher_state = crate::pusher::state::StateCollector::default();
        registry.register_collector(Box::new(pusher_state.clone()));
        registry.register_collector(Box::new(HubCollector {
            hub: HubHandle(hub),
            pages,
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
            recoveries,
            replayed,
            history_size,
            idempotent_duplicates,
            pusher_state,
        })
    }

    /// Counts a reconnect's recovery: `recovered` true, or lost (`recovered:false`).
    pub fn recovery(&self, recovered: bool, replayed: usize) {
        let outcome = if recovered { "recovered" } else { "lost" };
        self.recoveries.get_or_create(&[("outcome", outcome)]).inc();
        self.replayed.inc_by(replayed as u64);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &str) -> String {
        let family = Family::<[(&'static str, LabelText<'static>); 1], Counter>::default();
        let leaked: &'static str = Box::leak(value.to_string().into_boxed_str());
        family.get_or_create(&[("page", LabelText(leaked))]).inc();
        let mut registry = Registry::default();
        registry.register("t", "t", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find(|l| l.starts_with("t_total{"))
            .unwrap()
            .to_string()
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        assert_eq!(encoded("home"), r#"t_total{page="home"} 1"#);
        assert_eq!(encoded("a\"b"), r#"t_total{page="a\"b"} 1"#);
        assert_eq!(encoded("x\\y"), r#"t_total{page="x\\y"} 1"#);
        assert_eq!(encoded("l1\nl2"), r#"t_total{page="l1\nl2"} 1"#);
        assert_eq!(encoded("é\"\"\\"), r#"t_total{page="é\"\"\\"} 1"#);
    }

    #[test]
    fn scene_pages_with_holes_and_the_other_label_get_no_series() {
        let mut settings = Settings::default();
        settings.ops.metrics_pages = vec!["promo".into(), OTHER_PAGES.into()];
        settings.scenes = Some(vec![crate::config::SceneConfig {
            event: None,
            func: "f".into(),
            page: Some("{page}".into()),
            uid: None,
            all: false,
            message: serde_json::json!({}),
        }]);
        let pages = labelled_pages(&settings);
        assert_eq!(pages, HashSet::from(["promo".into()]));
    }
}
