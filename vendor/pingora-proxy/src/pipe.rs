// hydrus patch: the task pipe between a request's downstream and upstream halves.
//
// `proxy_1to1` (HTTP/1.x upstreams) made two `tokio::sync::mpsc` channels of capacity
// `TASK_BUFFER_SIZE` (4) for every request, and `proxy_to_h2_upstream` one: each an `Arc`'d channel
// with a semaphore and a first block of 32 slots, for at most 4 tasks in flight between two
// futures that `try_join!` polls in the same task. This is the same interface (the part pingora
// uses) over a `VecDeque` of the pipe's capacity behind a mutex that is never contended: one
// sender, one receiver, FIFO, bounded, cancel safe where tokio's is (`recv`, `reserve`, `closed`).
// One waker a kind: at most one pending `reserve`/`send` and one pending `closed` at a time (as
// pingora's two halves, polled by one `try_join!`, have them); unlike tokio's, `recv` and `reserve`
// take nothing from the task's coop budget (every loop that polls them also does socket I/O).
// Measured in hydrus's vendor/README.md.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// A bounded pipe of `capacity` (at least 1) for one sender and one receiver.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let capacity = capacity.max(1);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(capacity),
            reserved: 0,
            capacity,
            sender_alive: true,
            receiver_alive: true,
            receiver: None,
            room: None,
            closed: None,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    queue: VecDeque<T>,
    /// Slots held by permits not yet used or dropped.
    reserved: usize,
    capacity: usize,
    sender_alive: bool,
    receiver_alive: bool,
    /// The receiver waiting for a task or for the sender to go.
    receiver: Option<Waker>,
    /// The sender waiting for room.
    room: Option<Waker>,
    /// The sender waiting for the receiver to go.
    closed: Option<Waker>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; if something did, the state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keep `cx`'s waker in `slot`; the one it replaces is returned, to be dropped after the lock
/// (dropping a waker may drop a task, whose output may hold an end of this pipe).
#[must_use]
fn wait(slot: &mut Option<Waker>, cx: &Context<'_>) -> Option<Waker> {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => None,
        _ => slot.replace(cx.waker().clone()),
    }
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

/// The sending half: [`Sender::send`], or a slot reserved first ([`Sender::reserve`]).
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A reserved slot: [`Permit::send`] fills it without waiting; dropped unused, it is given back.
pub(crate) struct Permit<'a, T> {
    sender: &'a Sender<T>,
}

/// The receiver is gone; the value that could not be sent.
#[derive(PartialEq, Eq)]
pub(crate) struct SendError<T>(pub T);

/// Why [`Sender::try_reserve`] reserved nothing.
#[derive(PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    Full(T),
    Closed(T),
}

impl<T> Sender<T> {
    /// Send `value`, waiting for room; the value back if the receiver is gone.
    pub(crate) async fn send(&self, value: T) -> Result<(), SendError<T>> {
        match self.reserve().await {
            Ok(permit) => {
                permit.send(value);
                Ok(())
            }
            Err(_) => Err(SendError(value)),
        }
    }

    /// Wait for room and hold a slot for one value.
    pub(crate) async fn reserve(&self) -> Result<Permit<'_, T>, SendError<()>> {
        poll_fn(|cx| self.poll_reserve(Some(cx))).await
    }

    /// A slot for one value if there is room now.
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        match self.poll_reserve(None) {
            Poll::Ready(Ok(permit)) => Ok(permit),
            Poll::Ready(Err(_)) => Err(TrySendError::Closed(())),
            Poll::Pending => Err(TrySendError::Full(())),
        }
    }

    fn poll_reserve(&self, cx: Option<&Context<'_>>) -> Poll<Result<Permit<'_, T>, SendError<()>>> {
        let mut s = self.shared.lock();
        if !s.receiver_alive {
            return Poll::Ready(Err(SendError(())));
        }
        if s.queue.len() + s.reserved < s.capacity {
            s.reserved += 1;
            return Poll::Ready(Ok(Permit { sender: self }));
        }
        if let Some(cx) = cx {
            let old = wait(&mut s.room, cx);
            drop(s);
            drop(old);
        }
        Poll::Pending
    }

    /// Whether the receiver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        !self.shared.lock().receiver_alive
    }

    /// Wait for the receiver to go.
    pub(crate) async fn closed(&self) {
        poll_fn(|cx| {
            let mut s = self.shared.lock();
            if !s.receiver_alive {
                return Poll::Ready(());
            }
            let old = wait(&mut s.closed, cx);
            drop(s);
            drop(old);
            Poll::Pending
        })
        .await
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.sender_alive = false;
        let w = s.receiver.take();
        drop(s);
        wake(w);
    }
}

impl<T> Permit<'_, T> {
    /// Fill the slot (the value is dropped with the pipe if the receiver is gone, as tokio's).
    pub(crate) fn send(self, value: T) {
        let mut s = self.sender.shared.lock();
        s.reserved -= 1;
        s.queue.push_back(value);
        let w = s.receiver.take();
        drop(s);
        std::mem::forget(self);
        wake(w);
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        let mut s = self.sender.shared.lock();
        s.reserved -= 1;
        let w = s.room.take();
        drop(s);
        wake(w);
    }
}

impl<T> Receiver<T> {
    /// The next value; `None` once the sender is gone and every value sent was received.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut s = self.shared.lock();
            if let Some(value) = s.queue.pop_front() {
                let w = s.room.take();
                drop(s);
                wake(w);
                return Poll::Ready(Some(value));
            }
            if !s.sender_alive {
                return Poll::Ready(None);
            }
            let old = wait(&mut s.receiver, cx);
            drop(s);
            drop(old);
            Poll::Pending
        })
        .await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.receiver_alive = false;
        let left = std::mem::take(&mut s.queue);
        let (room, closed) = (s.room.take(), s.closed.take());
        drop(s);
        drop(left);
        wake(room);
        wake(closed);
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Permit<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("channel closed")
    }
}

impl<T> std::error::Error for SendError<T> {}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("no available capacity"),
            TrySendError::Closed(_) => f.write_str("channel closed"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn values_arrive_in_order_and_none_after_the_sender_goes() {
        let (tx, mut rx) = channel(4);
        for i in 0..4 {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        for i in 0..4 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn capacity_counts_queued_values_and_held_permits() {
        let (tx, mut rx) = channel::<u32>(2);
        let permit = tx.try_reserve().unwrap();
        tx.send(1).await.unwrap();
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        assert!(tx.send(2).now_or_never().is_none(), "full: send waits");
        drop(permit);
        let permit = tx
            .try_reserve()
            .expect("a dropped permit gives its slot back");
        permit.send(2);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn a_full_sender_is_woken_by_a_receive() {
        let (tx, mut rx) = channel(1);
        tx.send(1u32).await.unwrap();
        let sender = tokio::spawn(async move {
            tx.send(2).await.unwrap();
            tx.send(3).await.unwrap();
        });
        let received = async {
            assert_eq!(rx.recv().await, Some(1));
            assert_eq!(rx.recv().await, Some(2));
            assert_eq!(rx.recv().await, Some(3));
            assert_eq!(rx.recv().await, None);
        };
        tokio::time::timeout(Duration::from_secs(5), received)
            .await
            .expect("the sender was woken");
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_and_by_the_sender_going() {
        let (tx, mut rx) = channel(4);
        let receiver = tokio::spawn(async move { (rx.recv().await, rx.recv().await) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(7u32).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(tx);
        assert_eq!(receiver.await.unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn the_receiver_going_closes_the_pipe_wakes_the_sender_and_drops_what_was_queued() {
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel(1);
        tx.send(Counted(dropped.clone())).await.unwrap();
        let tx = Arc::new(tx);
        let (t1, t2) = (tx.clone(), tx.clone());
        let waiting = tokio::spawn(async move {
            t1.send(Counted(Arc::new(AtomicUsize::new(0))))
                .await
                .is_err()
        });
        let closed = tokio::spawn(async move { t2.closed().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!tx.is_closed());
        drop(rx);
        assert!(waiting.await.unwrap(), "the waiting send fails");
        closed.await.unwrap();
        assert!(tx.is_closed());
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "the queued value is dropped"
        );
        assert!(tx.reserve().await.is_err());
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
    }

    /// As pingora's halves use the pipe: one `join!`ed future reserving (`try_reserve`, else
    /// waiting in `reserve`), the other receiving, in one task: nothing else wakes it.
    #[tokio::test]
    async fn two_halves_joined_in_one_task_pass_every_value_through_a_small_pipe() {
        let (tx, mut rx) = channel(2);
        let send = async move {
            for i in 0..200u32 {
                let permit = match tx.try_reserve() {
                    Ok(p) => p,
                    Err(_) => tx.reserve().await.unwrap(),
                };
                permit.send(i);
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        };
        let recv = async {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
                if v % 5 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            got
        };
        let joined = async { tokio::join!(send, recv).1 };
        let got = tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .expect("no wake-up lost");
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }

    /// As proxy_h2's upstream half: a read raced against `closed()`, the receiver joined.
    #[tokio::test]
    async fn closed_raced_in_a_select_sees_the_joined_receiver_go() {
        let (tx, mut rx) = channel::<u32>(4);
        let upstream = async {
            let mut reads = 0;
            loop {
                tokio::select! {
                    _ = tx.closed() => return reads,
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {
                        reads += 1;
                        if tx.send(reads).await.is_err() {
                            return reads;
                        }
                    }
                }
            }
        };
        let downstream = async move {
            assert_eq!(rx.recv().await, Some(1));
            assert_eq!(rx.recv().await, Some(2));
            drop(rx);
        };
        let joined = async { tokio::join!(upstream, downstream).0 };
        let reads = tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .expect("the receiver's going was seen");
        assert!((2..=3).contains(&reads), "{reads}");
    }

    #[tokio::test]
    async fn a_cancelled_reserve_holds_no_slot() {
        let (tx, mut rx) = channel(1);
        tx.send(1u32).await.unwrap();
        assert!(tx.reserve().now_or_never().is_none());
        assert_eq!(rx.recv().await, Some(1));
        let permit = tx
            .try_reserve()
            .expect("the cancelled reserve took nothing");
        permit.send(2);
        assert_eq!(rx.recv().await, Some(2));
    }
}
