//! Whether the proxy's listener is bound: pingora says it runs before a service binds, so
//! `/ready` waits for the socket in Linux's tables (a test connection would count as a client's).

use crate::state::State;
use std::collections::HashSet;
use std::sync::{atomic::Ordering, Arc};
use std::time::Duration;

/// Watch, on its own thread, for `addr` to listen, then set `state.listening`; at once where the
/// tables cannot be read (not Linux) or the port is the system's pick (0). A warning after a
/// minute (5 ms apart), then once a second.
pub fn watch(state: &Arc<State>, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let state = state.clone();
    let run = move || {
        for polls in 0u32.. {
            if addr.port() == 0 || is_listening(addr.port()) != Some(false) {
                return state.listening.store(true, Ordering::SeqCst);
            }
            if polls == 12_000 {
                log::warn!("the proxy's listener {addr} is not listening a minute after start: /ready says 503 until it is");
            }
            std::thread::sleep(Duration::from_millis(if polls < 12_000 { 5 } else { 1000 }));
        }
    };
    let thread = std::thread::Builder::new().name("hydrus-listening".into());
    thread.spawn(run).map(drop)
}

/// `Some(true)` when a socket of this process (by inode: `--upgrade` takes the old one's over)
/// listens on TCP `port`; `None` when the tables cannot be read.
fn is_listening(port: u16) -> Option<bool> {
    let fds = std::fs::read_dir("/proc/self/fd").ok()?;
    let ours: HashSet<String> = fds.flatten().filter_map(socket_inode).collect();
    let tables = ["/proc/net/tcp", "/proc/net/tcp6"].map(std::fs::read_to_string);
    let mut readable = tables.iter().filter_map(|t| t.as_ref().ok()).peekable();
    readable.peek()?;
    Some(readable.any(|t| listens_on(t, port, &ours)))
}

/// The inode of a `socket:[N]` entry of `/proc/self/fd`.
fn socket_inode(fd: std::fs::DirEntry) -> Option<String> {
    let link = std::fs::read_link(fd.path()).ok()?;
    Some(
        link.to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .into(),
    )
}

/// Whether a `/proc/net/tcp`-format table has a socket of `ours` in state LISTEN (`0A`) on `port`.
fn listens_on(table: &str, port: u16, ours: &HashSet<String>) -> bool {
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = f.get(1).and_then(|l| l.rsplit_once(':'));
        f.get(3) == Some(&"0A")
            && local_port.and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) == Some(port)
            && f.get(9).is_some_and(|inode| ours.contains(*inode))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_by_its_port_state_and_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 111 1
   1: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 999 1
   2: 0100007F:D431 0100007F:1F91 01 00000000:00000000 00:00000000 00000000 0 0 222 1\n";
        let ours: HashSet<String> = ["111", "222"].map(String::from).into();
        assert!(listens_on(table, 8080, &ours));
        // Another process's listener; connected to 8081, not listening; nothing on 9090.
        let others = [8082, 8081, 0xD431, 9090].map(|port| listens_on(table, port, &ours));
        assert_eq!(others, [false; 4]);
        // And this process's own listener, where the tables can be read.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = l.local_addr().expect("its address").port();
        if let Some(seen) = is_listening(port) {
            assert!(seen);
            drop(l);
            assert_eq!(is_listening(port), Some(false));
        }
    }
}
