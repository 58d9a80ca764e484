//! The Kafka log sink: records as JSON values keyed by user id, through librdkafka's own queue.
//! `message.timeout.ms` is 0 (retry until delivered), so a record librdkafka took is not lost
//! while the broker is away; when its queue is full the sink thread holds the record and the
//! proxy's queue fills, dropping (and counting) new records instead.

use super::record::Pending;
use super::{Encoder, Sink, SinkError};
use crate::metrics::Metrics;
use hydrus_filters::log::KafkaSinkConfig;
use prometheus::IntCounter;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::Arc;
use std::time::Duration;

/// Counts deliveries as librdkafka reports them.
pub struct DeliveryCounter {
    written: IntCounter,
    failed: IntCounter,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.written.inc(),
            Err((e, _)) => {
                log::error!("kafka delivery failed: {e}");
                self.failed.inc();
            }
        }
    }
}

pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    buf: Vec<u8>,
    dropped: IntCounter,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaSinkConfig, metrics: &Arc<Metrics>) -> Result<Self, super::StartError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("message.timeout.ms", "0")
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "100000")
            .set("compression.type", "lz4")
            .set("enable.idempotence", "false");
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let ctx = DeliveryCounter {
            written: metrics.log_records.with_label_values(&["written"]),
            failed: metrics.log_sink_errors.with_label_values(&["delivery"]),
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
            dropped: metrics.log_records.with_label_values(&["dropped"]),
        })
    }
}

impl Sink for KafkaSink {
    fn accept(&mut self, record: &Pending, enc: &mut Encoder) -> Result<(), SinkError> {
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

    fn has_buffered(&self) -> bool {
        false
    }

    fn buffered(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    fn close(&mut self, within: Duration) -> Result<(), SinkError> {
        self.producer
            .flush(within)
            .map_err(|e| SinkError::KafkaFlush(e.to_string()))
    }
}
