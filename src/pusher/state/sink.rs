//! [`PublisherSink`]: member events published through the bus ([`Publisher`]), so
//! every node's subscribers of the channel get them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::MemberSink;
use crate::push::{ConnKey, EventName};
use crate::pusher::channel::Channel;
use crate::pusher::publisher::Publisher;
use crate::pusher::{PusherApp, PusherSettings};

/// Member events waiting to be published, at most; past it they are dropped
/// (counted): a stalled bus must not grow memory.
const QUEUE: usize = 16_384;

struct Queued {
    app: Arc<PusherApp>,
    channel: Channel,
    event: &'static str,
    data: String,
    exclude: Option<ConnKey>,
}

/// A [`MemberSink`] over the bus: one task publishes the events in the order they
/// were decided (a quick join and leave must not arrive as leave then join).
pub struct PublisherSink {
    apps: HashMap<Arc<str>, Arc<PusherApp>>,
    queue: mpsc::Sender<Queued>,
    /// Events queued and not yet published.
    unsent: Arc<AtomicUsize>,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

impl PublisherSink {
    /// Starts the publishing task on the current runtime (outside one, events are
    /// dropped and counted).
    pub fn start(publisher: Publisher, settings: &PusherSettings) -> Arc<Self> {
        let (queue, mut rx) = mpsc::channel::<Queued>(QUEUE);
        let unsent = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Handle::try_current();
        let published = unsent.clone();
        if let Ok(runtime) = runtime {
            runtime.spawn(async move {
                while let Some(q) = rx.recv().await {
                    if let Ok(event) = EventName::try_from(q.event) {
                        publisher
                            .publish_event(&q.app, &q.channel, event, q.data.into(), q.exclude)
                            .await;
                    }
                    published.fetch_sub(1, Ordering::Relaxed);
                }
            });
        }
        Arc::new(Self {
            apps: settings
                .apps
                .iter()
                .map(|a| (Arc::from(a.id.as_str()), Arc::new(a.clone())))
                .collect(),
            queue,
            unsent,
            dropped: AtomicU64::new(0),
        })
    }
}

impl MemberSink for PublisherSink {
    fn publish(
        &self,
        app: &str,
        channel: &Channel,
        event: &'static str,
        data: String,
        exclude: Option<ConnKey>,
    ) {
        let Some(app) = self.apps.get(app) else {
            return;
        };
        let queued = Queued {
            app: app.clone(),
            channel: channel.clone(),
            event,
            data,
            exclude,
        };
        self.unsent.fetch_add(1, Ordering::Relaxed);
        if self.queue.try_send(queued).is_err() {
            self.unsent.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn pending(&self) -> usize {
        self.unsent.load(Ordering::Relaxed)
    }
}
