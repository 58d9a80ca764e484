//! The Kafka log sink: records as JSON values keyed by user id, through librdkafka's own queue.
//! `message.timeout.ms` is 0 (retry until delivered), so a record librdkafka took is not lost
//! while the broker is away; when its queue is full the sink thread holds the record and the
//! proxy's queue fills, dropping (and counting) new records instead.
//!
//! librdkafka still fails a delivery when the broker answers a produce with an error it does not
//! retry itself (a broker that came back before its topics answers "unknown"): such a record is
//! kept and produced again, after half a second, before any new record is taken. Only a
//! record the broker can never take (too large, malformed) is dropped and counted. Topic
//! metadata is refreshed every 10 s (librdkafka's default is 5 minutes) so that a topic that is
//! back is seen soon.

use super::record::Pending;
use super::{Encoder, Sink, SinkError};
use crate::metrics::Metrics;
use hydrus_filters::log::redeliver::Redeliveries;
use hydrus_filters::log::KafkaSinkConfig;
use prometheus::IntCounter;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts deliveries as librdkafka reports them, and keeps the failed ones for redelivery.
pub struct DeliveryCounter {
    written: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    redeliver: Arc<Redeliveries>,
}

/// Whether the broker can never take this record: then retrying cannot help.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.written.inc(),
            Err((e, _)) if permanent(e) => {
                log::error!("kafka refused a record for good, dropping it: {e}");
                self.failed.inc();
                self.dropped.inc();
            }
            Err((e, msg)) => {
                self.failed.inc();
                let (key, payload) = (msg.key().unwrap_or_default(), msg.payload());
                if self
                    .redeliver
                    .failed(key, payload.unwrap_or_default(), Instant::now())
                {
                    // Once per batch of failures: a broker error fails many records at once.
                    log::error!("kafka delivery failed, producing the record again: {e}");
                }
            }
        }
    }
}

pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    buf: Vec<u8>,
    dropped: IntCounter,
    redeliver: Arc<Redeliveries>,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaSinkConfig, metrics: &Arc<Metrics>) -> Result<Self, super::StartError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("message.timeout.ms", "0")
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "100000")
            .set("compression.type", "lz4")
            .set("enable.idempotence", "false")
            .set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let redeliver = Arc::new(Redeliveries::default());
        let dropped = metrics.log_records.with_label_values(&["dropped"]);
        let ctx = DeliveryCounter {
            written: metrics.log_records.with_label_values(&["written"]),
            failed: metrics.log_sink_errors.with_label_values(&["delivery"]),
            dropped: dropped.clone(),
            redeliver: Arc::clone(&redeliver),
        };
        let producer: ThreadedProducer<DeliveryCounter> =
            cc.create_with_context(ctx).map_err(|e| {
                // librdkafka quotes bad property values in its errors: keep secrets out of logs.
                let mut why = e.to_string();
                for (k, v) in &cfg.properties {
                    if super::secret_property(k) && !v.is_empty() {
                        why = why.replace(v.as_str(), "<redacted>");
                    }
                }
                super::StartError::Kafka(format!("kafka producer for {}: {why}", cfg.brokers))
            })?;
        Ok(Self {
            producer,
            topic: cfg.topic.clone(),
            buf: Vec::with_capacity(1024),
            dropped,
            redeliver,
        })
    }

    /// Produce the failed records again once they are due (at once with `now_or_never`):
    /// `QueueFull` while some wait or are left.
    fn send_again(&mut self, now_or_never: bool) -> Result<(), SinkError> {
        let records = self
            .redeliver
            .due(Instant::now(), now_or_never)
            .map_err(|_| SinkError::QueueFull)?;
        let mut records = records.into_iter();
        while let Some((key, payload)) = records.next() {
            let record = BaseRecord::<[u8], [u8]>::to(&self.topic)
                .key(&key)
                .payload(&payload);
            match self.producer.send(record) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.redeliver
                        .put_back(std::iter::once((key, payload)).chain(records).collect());
                    return Err(SinkError::QueueFull);
                }
                Err((e, _)) => {
                    log::error!("kafka refused a record of {} bytes: {e}", payload.len());
                    self.dropped.inc();
                }
            }
        }
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn accept(&mut self, record: &Pending, enc: &mut Encoder) -> Result<(), SinkError> {
        // Records already accepted and waiting for redelivery go first (and keep the proxy's
        // queue, not librdkafka's, as the place where new records wait and are dropped).
        self.send_again(false)?;
        self.buf.clear();
        enc.encode(record, &mut self.buf);
        let payload = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        let sent = self.producer.send(
            BaseRecord::<[u8], [u8]>::to(&self.topic)
                .key(record.key())
                .payload(payload),
        );
        match sent {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SinkError::QueueFull)
            }
            Err((e, _)) => {
                // Not transient (e.g. a record over message.max.bytes): retrying cannot help.
                log::error!("kafka refused a record of {} bytes: {e}", payload.len());
                self.dropped.inc();
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        self.send_again(false)
    }

    fn has_buffered(&self) -> bool {
        !self.redeliver.is_empty()
    }

    fn buffered(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize + self.redeliver.len()
    }

    fn close(&mut self, within: Duration) -> Result<(), SinkError> {
        let deadline = Instant::now() + within;
        loop {
            // A record can fail while others are flushed: produce it again until the deadline.
            let _ = self.send_again(true);
            let left = deadline.saturating_duration_since(Instant::now());
            let flushed = self.producer.flush(left.min(Redeliveries::AFTER));
            if flushed.is_ok() && self.redeliver.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SinkError::KafkaFlush(match flushed {
                    Err(e) => e.to_string(),
                    Ok(()) => format!("{} records failed delivery", self.redeliver.len()),
                }));
            }
        }
    }
}
