//! A real DNS server for tests: Debian's dnsmasq on a loopback port, answering from a hosts
//! file that a test rewrites (then SIGHUP: dnsmasq reads it again).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Dns {
    child: Option<Child>,
    hosts: PathBuf,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dns {
    /// Serve `hosts` (lines of `ADDRESS NAME`) with a TTL of 1 s.
    pub fn start(hosts: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).unwrap();
        let port = super::free_port();
        let child = Command::new("dnsmasq")
            .args(["-k", "--no-resolv", "--no-hosts", "--bind-interfaces"])
            .args(["--listen-address=127.0.0.1", "--local-ttl=1", "--user=root"])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", file.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (`.ci/install test` installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(
            super::eventually(Duration::from_secs(10), || {
                // A bound UDP port refuses nothing: wait for dnsmasq's own socket instead.
                UdpSocket::bind(addr).is_err()
            }),
            "dnsmasq did not start"
        );
        drop(probe);
        Self {
            child: Some(child),
            hosts: file,
            addr,
            _dir: dir,
        }
    }

    /// Answer from these lines from now on.
    pub fn serve(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        if let Some(c) = &self.child {
            Command::new("kill")
                .args(["-HUP", &c.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// Stop answering (the resolver goes away).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ADDRESS NAME` lines for `name` at each address.
pub fn hosts(name: &str, addrs: &[&str]) -> String {
    addrs.iter().map(|a| format!("{a} {name}\n")).collect()
}
