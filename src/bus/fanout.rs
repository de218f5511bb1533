//! Embedded mode's delivery: one task, on the runtime's own threads, fans the pushes
//! out in the order they were published; a publish queues its push and returns.
//!
//! Why not fan out inline: an HTTP push arrives on an actix worker, which also owns a
//! share of the WebSocket connections. Waking that share from the worker itself puts
//! their writes in its local run queue, ahead of everything else, and the caller's
//! reply behind them: the next HTTP push waited ~100 ms at 10k connections, one push
//! at a time, each frame written alone. Woken from this task, the writers go to each
//! worker's remote queue, which it serves after the requests and frames arriving
//! meanwhile; pushes keep coming while writers drain, and frames that meet in a queue
//! leave in one write.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::deliver_local;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::push::Push;

/// Pushes waiting for their fan-out; beyond this a publish waits (back-pressure on
/// the ingress, never on the clients).
const QUEUE: usize = 1024;

/// Handle to the fan-out task.
#[derive(Clone)]
pub struct Fanout {
    queue: mpsc::Sender<Push>,
}

impl Fanout {
    /// Spawns the task on the current runtime; it ends when every handle is dropped.
    pub fn start(hub: Hub, metrics: Arc<Metrics>) -> Self {
        let (queue, mut pushes) = mpsc::channel::<Push>(QUEUE);
        tokio::spawn(async move {
            while let Some(push) = pushes.recv().await {
                deliver_local(&hub, &metrics, &push);
            }
        });
        Self { queue }
    }

    /// Queues `push`; `false` when the task is gone (the server is stopping).
    pub async fn push(&self, push: Push) -> bool {
        self.queue.send(push).await.is_ok()
    }
}
