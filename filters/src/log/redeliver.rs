//! Records a sink handed on and got back as failed (a Kafka broker that answered a produce with
//! an error its client does not retry), kept to be handed on again after a pause: the broker
//! that refused them answers at once, so without one the sink would spin on them. Shared
//! between the thread that learns of failures and the one that sends.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One record as sent: its key and payload.
pub type Sent = (Vec<u8>, Vec<u8>);

#[derive(Debug, Default)]
pub struct Redeliveries {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: Vec<Sent>,
    last_failure: Option<Instant>,
}

/// Records wait for redelivery: none is due yet.
#[derive(Debug, PartialEq, Eq)]
pub struct Waiting;

impl Redeliveries {
    /// How long after the last failure records are sent again.
    pub const AFTER: Duration = Duration::from_millis(500);

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keep a failed record (failed `at`); true for the first of a batch, to say so once.
    pub fn failed(&self, key: &[u8], payload: &[u8], at: Instant) -> bool {
        let mut r = self.lock();
        r.records.push((key.to_vec(), payload.to_vec()));
        r.last_failure = Some(at);
        r.records.len() == 1
    }

    /// The records to send again, oldest first: all of them once [`Self::AFTER`] has passed
    /// since the last failure (or at once with `now_or_never`), `Waiting` before.
    pub fn due(&self, now: Instant, now_or_never: bool) -> Result<Vec<Sent>, Waiting> {
        let mut r = self.lock();
        let waited = r
            .last_failure
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::AFTER);
        if !r.records.is_empty() && !waited && !now_or_never {
            return Err(Waiting);
        }
        Ok(std::mem::take(&mut r.records))
    }

    /// Put back what could not be sent, ahead of what failed since.
    pub fn put_back(&self, mut left: Vec<Sent>) {
        if left.is_empty() {
            return;
        }
        let mut r = self.lock();
        left.append(&mut r.records);
        r.records = left;
    }

    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_records_wait_then_come_back_oldest_first() {
        let r = Redeliveries::default();
        let t0 = Instant::now();
        assert_eq!(r.due(t0, false), Ok(vec![]), "nothing to send");
        assert!(r.failed(b"u1", b"a", t0), "the first of a batch");
        assert!(!r.failed(b"u2", b"b", t0));
        assert_eq!(r.due(t0 + Duration::from_millis(100), false), Err(Waiting));
        let due = r.due(t0 + Redeliveries::AFTER, false).expect("due");
        assert_eq!(
            due,
            vec![
                (b"u1".to_vec(), b"a".to_vec()),
                (b"u2".to_vec(), b"b".to_vec())
            ]
        );
        assert!(r.is_empty());
        // One could not be sent; another failed meanwhile: the older goes first.
        r.failed(b"u3", b"c", t0);
        r.put_back(vec![(b"u2".to_vec(), b"b".to_vec())]);
        assert_eq!(r.len(), 2);
        let due = r.due(t0, true).expect("at once when asked");
        assert_eq!(due[0].1, b"b".to_vec());
        assert_eq!(due[1].1, b"c".to_vec());
    }
}
