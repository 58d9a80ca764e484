//! Whether the proxy's listener is bound yet. pingora reports its running phase before a
//! service binds its listeners (that happens in the service's own runtime, a moment later), so
//! `/ready` waits for the socket itself: a load balancer told "ready" must not meet a refusal.
//!
//! Linux's socket tables say it without touching the socket; a connection would count as a
//! client's (and, with TLS, as a failed handshake).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::State;

/// How long start-up may take to bind before `/ready` is left to say not ready, with a warning.
const GIVE_UP: Duration = Duration::from_secs(60);

/// Watch, on its own thread, for `addr` to be listening, then set `state.listening`. Where the
/// socket tables cannot be read (not Linux), readiness does not wait for the bind.
pub fn watch(state: &Arc<State>, addr: SocketAddr) -> std::io::Result<()> {
    let state = state.clone();
    std::thread::Builder::new()
        .name("hydrus-listening".into())
        .spawn(move || {
            let start = Instant::now();
            loop {
                match is_listening(addr.port()) {
                    Some(false) if start.elapsed() < GIVE_UP => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Some(false) => {
                        log::warn!(
                            "the proxy's listener {addr} is not listening {}s after start: /ready stays 503",
                            GIVE_UP.as_secs()
                        );
                        return;
                    }
                    Some(true) | None => {
                        state.listening.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        })
        .map(drop)
}

/// `Some(true)` when a TCP socket of this machine listens on `port`; `None` when the tables
/// cannot be read. (Start-up made sure the port was free, so a listener on it is ours.)
fn is_listening(port: u16) -> Option<bool> {
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            readable = true;
            if listens_on(&text, port) {
                return Some(true);
            }
        }
    }
    readable.then_some(false)
}

/// Whether a `/proc/net/tcp`-format table has a socket in state LISTEN (`0A`) on `port`.
fn listens_on(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let st = fields.nth(1);
        st == Some("0A")
            && local
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:D431 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";

    #[test]
    fn a_listening_socket_is_found_by_its_port_and_state() {
        assert!(listens_on(TABLE, 8080));
        // Connected to 8081, not listening on it; nothing at all on 9090.
        assert!(!listens_on(TABLE, 8081));
        assert!(!listens_on(TABLE, 0xD431));
        assert!(!listens_on(TABLE, 9090));
        assert!(!listens_on("", 8080));
    }

    #[test]
    fn this_process_s_own_listener_is_seen() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = l.local_addr().expect("its address").port();
        if let Some(seen) = is_listening(port) {
            assert!(seen);
            drop(l);
            assert_eq!(is_listening(port), Some(false));
        }
    }
}
