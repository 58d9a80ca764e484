//! A real DNS server for tests: Debian's dnsmasq on a loopback port, answering from a hosts
//! file that a test rewrites (then SIGHUP: dnsmasq reads it again).

use std::net::SocketAddr;
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
    /// Serve `hosts` (lines of `ADDRESS NAME`) with a TTL of 1 s. A port another process
    /// took meanwhile (dnsmasq exits) is replaced by another.
    pub fn start(hosts: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).unwrap();
        let log = dir.path().join("dnsmasq.log");
        for _ in 0..5 {
            let port = super::free_port();
            let mut child = Command::new("dnsmasq")
                .args(["-k", "--no-resolv", "--no-hosts", "--bind-interfaces"])
                .args(["--listen-address=127.0.0.1", "--local-ttl=1", "--user=root"])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", file.display()))
                .arg(format!("--pid-file={}", dir.path().join("pid").display()))
                .arg(format!("--log-facility={}", log.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq (`.ci/install test` installs it)");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            // Up once it answers (that a name is unknown is an answer), or gone. (Not by
            // binding its port ourselves: that could take it from dnsmasq.)
            let mut exited = false;
            let up = super::eventually(Duration::from_secs(30), || {
                exited = matches!(child.try_wait(), Ok(Some(_)));
                exited || answers(addr)
            });
            if up && !exited {
                return Self {
                    child: Some(child),
                    hosts: file,
                    addr,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "dnsmasq did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
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

/// Whether a DNS server answers at `addr`.
fn answers(addr: SocketAddr) -> bool {
    let cfg = hydrus_discovery::DiscoveryConfig {
        interval: Duration::from_secs(1),
        resolver: Some(addr),
    };
    let probe = hydrus_discovery::Endpoint::parse("probe.hydrus.test.:1").unwrap();
    match hydrus_discovery::resolve_blocking(&[probe], &cfg) {
        Ok(_) => true,
        Err(e) => e.label() == "empty",
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
