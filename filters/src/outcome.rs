//! How a request ended, as one bounded label: the HTTP status class, or a gRPC call's status by
//! name, or that the client went away. `hydrus_responses_total{class}` counts it per route,
//! group and strategy, and the rollout guard compares the groups' errors with it.

/// The classes, in label order: HTTP status classes, the gRPC status names (by code), and a
/// client that went away before an answer reached it.
pub const CLASSES: [&str; 23] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
    "client_gone",
];

/// Where the gRPC status names start in [`CLASSES`] (code 0, `OK`).
const GRPC: usize = 5;
/// The class of a client that went away.
pub const CLIENT_GONE: usize = CLASSES.len() - 1;

/// The gRPC statuses that are the server's failure, not the caller's: what the rollout guard
/// counts as errors by default (with every 5xx).
pub const DEFAULT_ERROR_STATUSES: [&str; 5] = [
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
    "UNKNOWN",
    "RESOURCE_EXHAUSTED",
];

/// How one request ended, as the edge saw it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestEnd {
    /// The status sent to the client (0 when none was).
    pub status: u16,
    /// A gRPC call's status, as its client got it.
    pub grpc_status: Option<u8>,
    /// Whether the client went away before its answer was sent.
    pub client_gone: bool,
    /// Whether the upstream failed after the answer began (the client got it cut short, with
    /// the status it had begun with): an error whatever that status.
    pub upstream_failed: bool,
    /// The whole request's time in the proxy, in seconds.
    pub seconds: f64,
}

impl RequestEnd {
    /// Its class: an index into [`CLASSES`].
    pub fn class(&self) -> usize {
        if self.client_gone || self.status == 0 {
            return CLIENT_GONE;
        }
        match self.grpc_status {
            Some(code) if usize::from(code) < CLIENT_GONE - GRPC => GRPC + usize::from(code),
            // (A code beyond the protocol's: the call failed, as UNKNOWN.)
            Some(_) => GRPC + 2,
            None => match self.status {
                100..=199 => 0,
                200..=299 => 1,
                300..=399 => 2,
                400..=499 => 3,
                _ => 4,
            },
        }
    }
}

/// The class named `name`, if it is one.
pub fn class_named(name: &str) -> Option<usize> {
    CLASSES.iter().position(|c| *c == name)
}

/// Which classes are errors: 5xx, and the gRPC statuses named (by default
/// [`DEFAULT_ERROR_STATUSES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClasses(u32);

impl ErrorClasses {
    /// 5xx and the gRPC statuses `names`; a name that is not a gRPC status comes back.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut bits = 1 << 4;
        for n in names {
            match class_named(n).filter(|&c| (GRPC..CLIENT_GONE).contains(&c)) {
                Some(c) => bits |= 1 << c,
                None => return Err(n.to_string()),
            }
        }
        Ok(Self(bits))
    }

    pub fn is_error(&self, class: usize) -> bool {
        class < 32 && self.0 & (1 << class) != 0
    }
}

impl Default for ErrorClasses {
    fn default() -> Self {
        // (The default names are all gRPC statuses.)
        Self::new(DEFAULT_ERROR_STATUSES).unwrap_or(Self(1 << 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(status: u16, grpc: Option<u8>) -> RequestEnd {
        RequestEnd {
            status,
            grpc_status: grpc,
            ..RequestEnd::default()
        }
    }

    #[test]
    fn classes() {
        assert_eq!(CLASSES[end(204, None).class()], "2xx");
        assert_eq!(CLASSES[end(431, None).class()], "4xx");
        assert_eq!(CLASSES[end(504, None).class()], "5xx");
        assert_eq!(CLASSES[end(200, Some(0)).class()], "OK");
        assert_eq!(CLASSES[end(200, Some(14)).class()], "UNAVAILABLE");
        assert_eq!(CLASSES[end(200, Some(16)).class()], "UNAUTHENTICATED");
        assert_eq!(CLASSES[end(200, Some(99)).class()], "UNKNOWN");
        assert_eq!(CLASSES[end(0, None).class()], "client_gone");
        let gone = RequestEnd {
            client_gone: true,
            ..end(200, None)
        };
        assert_eq!(CLASSES[gone.class()], "client_gone");
    }

    #[test]
    fn errors_are_5xx_and_the_named_statuses() {
        let e = ErrorClasses::default();
        let is = |s, g| e.is_error(end(s, g).class());
        assert!(is(503, None) && is(200, Some(14)) && is(200, Some(4)));
        assert!(!is(404, None) && !is(200, Some(5)) && !is(200, Some(0)) && !is(0, None));
        assert_eq!(ErrorClasses::new(["NOT_FOUND", "2xx"]), Err("2xx".into()));
        let only = ErrorClasses::new(["NOT_FOUND"]).expect("valid");
        assert!(only.is_error(end(200, Some(5)).class()) && only.is_error(end(500, None).class()));
    }
}
