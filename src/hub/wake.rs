//! Writers woken in batches on their own thread.
//!
//! A fan-out runs on one thread and the writers it wakes live on the HTTP workers.
//! Waking a task on another thread costs a lock on that thread's run queue and, when
//! the thread is between two rounds of tasks, a syscall to rouse it: measured, 10k
//! such wake-ups made one 10k fan-out last 20–60 ms, one wake-up at a time. So a
//! writer that waits registers in its thread's [`WakeBatch`]; the fan-out only
//! appends the writer to that list and rouses the thread's flusher once per batch,
//! and the flusher wakes the writers from inside their own thread (a plain queue
//! push), a chunk at a time so that requests arriving meanwhile are not stuck
//! behind thousands of writes.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Mutex;
use std::task::{Poll, Waker};

/// Writers woken per turn of the flusher before it lets other tasks run.
const CHUNK: usize = 64;

#[derive(Default)]
struct State {
    pending: VecDeque<Waker>,
    /// The flusher, when it found nothing to do.
    flusher: Option<Waker>,
}

/// The writers of one thread waiting to be woken there.
#[derive(Default)]
pub struct WakeBatch {
    state: Mutex<State>,
}

impl WakeBatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `writer` to the flusher; rouses the flusher if it was idle.
    pub fn defer(&self, writer: Waker) {
        let mut state = self.lock();
        state.pending.push_back(writer);
        let flusher = state.flusher.take();
        drop(state);
        if let Some(flusher) = flusher {
            flusher.wake();
        }
    }

    /// The flusher: runs for as long as the thread does, waking deferred writers a
    /// chunk at a time. Spawn it on the thread whose writers defer here.
    pub async fn flush(&self) {
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            poll_fn(|cx| {
                let mut state = self.lock();
                if state.pending.is_empty() {
                    state.flusher = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                let n = state.pending.len().min(CHUNK);
                chunk.extend(state.pending.drain(..n));
                Poll::Ready(())
            })
            .await;
            chunk.drain(..).for_each(Waker::wake);
            // Let the writers just woken, and whatever else is queued, run first.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn every_deferred_writer_is_woken_once() {
        let batch = Arc::new(WakeBatch::default());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let flusher = tokio::spawn({
            let batch = batch.clone();
            async move { batch.flush().await }
        });
        for _ in 0..(3 * CHUNK + 5) {
            batch.defer(Waker::from(count.clone()));
        }
        for _ in 0..100 {
            if count.0.load(Ordering::Relaxed) == 3 * CHUNK + 5 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(count.0.load(Ordering::Relaxed), 3 * CHUNK + 5);
        flusher.abort();
    }
}
