//! [`PublisherSink`]: member events published through the bus ([`Publisher`]), so
//! every node's subscribers of the channel get them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

impl PublisherSink {
    /// Starts the publishing task on the current runtime (outside one, events are
    /// dropped and counted).
    pub fn start(publisher: Publisher, settings: &PusherSettings) -> Arc<Self> {
        let (queue, mut rx) = mpsc::channel::<Queued>(QUEUE);
        let runtime = tokio::runtime::Handle::try_current();
        if let Ok(runtime) = runtime {
            runtime.spawn(async move {
                while let Some(q) = rx.recv().await {
                    let Ok(event) = EventName::try_from(q.event) else {
                        continue;
                    };
                    publisher
                        .publish_event(&q.app, &q.channel, event, q.data.into(), q.exclude)
                        .await;
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
        if self.queue.try_send(queued).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
