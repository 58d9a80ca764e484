//! W3C Trace Context (`traceparent`): read from a request, written for each attempt.
//!
//! Parsed by hand rather than through `opentelemetry`'s propagator: that one builds a
//! `Context` (a map behind an `Arc`) per request, and this header is a fixed 55-byte form
//! read on every request of a traced proxy.

use http::HeaderValue;

/// The `traceparent` header's name.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The `tracestate` header's name (passed on as the client sent it).
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The `sampled` bit of the trace flags.
pub const SAMPLED: u8 = 0x01;
/// Trace Context level 2's `random` bit: the trace id's right 7 bytes are random.
pub const RANDOM: u8 = 0x02;

/// A valid `traceparent`: the trace, the caller's span, its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// The header's value as W3C Trace Context level 1 reads it: `00-` 32 hex `-` 16 hex `-`
    /// 2 hex, lowercase; a later version may append `-...` after the same four fields; version
    /// `ff` and all-zero ids are invalid. `None`: start a new trace.
    pub fn parse(v: &[u8]) -> Option<Self> {
        if v.len() < 55 || (v.len() > 55 && (v[..2] == *b"00" || v[55] != b'-')) {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&v[0..2])?;
        if version[0] == 0xff {
            return None;
        }
        let trace_id = hex::<16>(&v[3..35])?;
        let parent_id = hex::<8>(&v[36..52])?;
        let flags = hex::<1>(&v[53..55])?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// Lowercase hex digits to bytes (uppercase is invalid in `traceparent`).
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    if s.len() != 2 * N {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// `traceparent` for a child span `span_id` of `trace_id`.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut v[3..35], trace_id);
    put_hex(&mut v[36..52], span_id);
    put_hex(&mut v[53..55], &[flags]);
    // (Hex digits and dashes only: always a valid header value.)
    HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A trace id as 32 lowercase hex digits (the log record's `trace_id`).
pub fn trace_id_hex(trace_id: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    put_hex(&mut out, trace_id);
    out
}

/// A new random trace id (never all zeros).
pub fn new_trace_id() -> [u8; 16] {
    rand::random::<u128>().max(1).to_be_bytes()
}

/// A new random span id (never all zeros).
pub fn new_span_id() -> [u8; 8] {
    rand::random::<u64>().max(1).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_specs_example() {
        let t = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.trace_id[15], 0x36);
        assert_eq!(
            t.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(t.sampled());
        assert_eq!(
            traceparent(&t.trace_id, &t.parent_id, t.flags).as_bytes(),
            EXAMPLE
        );
        assert_eq!(
            &trace_id_hex(&t.trace_id),
            b"4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        let bad: &[&[u8]] = &[
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for v in bad {
            assert_eq!(
                TraceParent::parse(v),
                None,
                "{}",
                String::from_utf8_lossy(v)
            );
        }
        // A later version may carry more after the four fields.
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what";
        let t = TraceParent::parse(later).expect("valid");
        assert!(!t.sampled());
    }

    #[test]
    fn new_ids_are_never_zero() {
        for _ in 0..100 {
            assert_ne!(new_trace_id(), [0; 16]);
            assert_ne!(new_span_id(), [0; 8]);
        }
    }
}
