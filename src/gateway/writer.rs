//! The writer of one connection is its HTTP response body. actix's dispatcher owns
//! the socket and polls the body whenever the socket can take more; the body hands
//! over the outbox's frames (already encoded, shared with every other connection) one
//! by one, and the dispatcher gathers all it got in one wake-up into one write.
//!
//! So a push costs each connection one queue push and one wake-up of the task that
//! owns its socket: no writer task, no channel, no per-connection encoding. Frames
//! that pile up while a client is slow leave together in the next write. The
//! wake-ups go through the worker's [`WakeBatch`], so a fan-out from another thread
//! rouses each worker once, not once per connection.

use std::cell::OnceCell;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::Bytes;

use crate::hub::{Outbox, WakeBatch};

thread_local! {
    /// This worker's batch; its flusher is spawned with the first connection.
    static WAKE_BATCH: OnceCell<Arc<WakeBatch>> = const { OnceCell::new() };
}

/// The calling actix worker's batch, starting its flusher on first use.
fn wake_batch() -> Arc<WakeBatch> {
    WAKE_BATCH.with(|cell| {
        cell.get_or_init(|| {
            let batch = Arc::new(WakeBatch::default());
            let flusher = batch.clone();
            actix_web::rt::spawn(async move { flusher.flush().await });
            batch
        })
        .clone()
    })
}

/// Response body streaming a connection's outbox to its socket.
pub struct Writer {
    outbox: Arc<Outbox>,
    /// actix-ws ends the inbound message stream when its own response body is
    /// dropped; that body is kept here, never polled, so the reader sees the end of
    /// the connection exactly when the dispatcher drops this writer.
    _inbound_guard: BoxBody,
}

impl Writer {
    /// Must be called on the actix worker that serves the connection.
    pub fn new(outbox: Arc<Outbox>, inbound_guard: BoxBody) -> Self {
        outbox.wake_writer_through(wake_batch());
        Self {
            outbox,
            _inbound_guard: inbound_guard,
        }
    }
}

impl MessageBody for Writer {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.outbox.poll_next(cx).map(|frame| frame.map(Ok))
    }
}
