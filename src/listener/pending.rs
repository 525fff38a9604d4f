//! Connections that are not served yet, in accept order, under a cap.
//!
//! Each accepted connection runs its handshake on its own task; this set
//! holds their abort handles. Admitting one more when the set is full drops
//! the oldest: a flood of silent sockets then mostly evicts itself, while a
//! real client, whose handshake takes a round trip or two, is done long
//! before it becomes the oldest.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::AbortHandle;

/// The pending connections and their cap.
pub struct Pending {
    cap: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    next_id: u64,
    /// Keyed by accept order: the first entry is the oldest.
    tasks: BTreeMap<u64, AbortHandle>,
}

/// A pending connection's place in the set; dropping it (the handshake
/// ended, or its task was aborted) frees the place.
pub struct Ticket {
    id: u64,
    pending: Arc<Pending>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.lock().tasks.remove(&self.id);
    }
}

impl Pending {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Pending {
            cap,
            inner: Mutex::new(Inner {
                next_id: 0,
                tasks: BTreeMap::new(),
            }),
        })
    }

    /// Spawns `handshake` as the newest pending connection, first dropping
    /// the oldest if the set is full. The task holds its `Ticket` for as
    /// long as it counts as pending.
    pub fn spawn<F, Fut>(self: &Arc<Self>, handshake: F)
    where
        F: FnOnce(Ticket) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Spawning under the lock keeps a task that ends at once from
        // removing its entry before it is inserted. Neither `abort` nor
        // `spawn` runs a task inline, so nothing here waits on this lock.
        let mut inner = self.lock();
        while inner.tasks.len() >= self.cap {
            let Some((_, oldest)) = inner.tasks.pop_first() else {
                break;
            };
            oldest.abort();
            tracing::debug!(
                event = "pending_connection_dropped",
                reason = "max_pending_handshakes"
            );
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let ticket = Ticket {
            id,
            pending: self.clone(),
        };
        let task = tokio::spawn(handshake(ticket));
        inner.tasks.insert(id, task.abort_handle());
    }

    /// How many connections are pending.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().tasks.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code path panics under this lock; if one ever did, the map is
        // still consistent enough to go on with.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// A pending connection that never finishes; `alive` reports its end.
    fn stuck(pending: &Arc<Pending>) -> oneshot::Receiver<()> {
        let (alive, ended) = oneshot::channel::<()>();
        pending.spawn(|ticket| async move {
            let _held = (ticket, alive);
            std::future::pending::<()>().await;
        });
        ended
    }

    #[tokio::test]
    async fn a_full_set_drops_its_oldest_for_the_newest() {
        let pending = Pending::new(2);
        let first = stuck(&pending);
        let mut second = stuck(&pending);
        assert_eq!(pending.len(), 2);
        let mut third = stuck(&pending);
        // The oldest task is aborted: its sender is dropped.
        assert!(first.await.is_err());
        assert_eq!(pending.len(), 2);
        assert!(
            second
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        assert!(
            third
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        let fourth = stuck(&pending);
        assert!(second.await.is_err());
        assert_eq!(pending.len(), 2);
        drop((third, fourth));
    }

    #[tokio::test]
    async fn a_finished_handshake_frees_its_place() {
        let pending = Pending::new(1);
        let (done, finished) = oneshot::channel();
        pending.spawn(|ticket| async move {
            drop(ticket);
            let _ = done.send(());
        });
        finished.await.unwrap();
        assert_eq!(pending.len(), 0);
        // The next one is admitted without dropping anything.
        let mut next = stuck(&pending);
        assert_eq!(pending.len(), 1);
        assert!(
            next.try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
    }
}
