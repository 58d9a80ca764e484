//! Against a real DNS server: Debian's dnsmasq on a loopback port, serving a hosts file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hydrus_discovery::{resolve_blocking, DiscoveryConfig, Endpoint};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Dnsmasq {
    child: Child,
    hosts: std::path::PathBuf,
    port: u16,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Dnsmasq {
    fn start(hosts: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hydrus-dnsmasq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hosts");
        std::fs::write(&file, hosts).unwrap();
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("dnsmasq")
            .args(["-k", "--no-resolv", "--no-hosts", "--bind-interfaces"])
            .args(["--listen-address=127.0.0.1", "--local-ttl=1", "--user=root"])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", file.display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (.ci/install test installs it)");
        let d = Self {
            child,
            hosts: file,
            port,
            _dir: tempdir::Dir(dir),
        };
        // Up once it answers (an unknown name is an answer).
        let probe = [Endpoint::parse("probe.test.:1").unwrap()];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Err(e) = resolve_blocking(&probe, &d.config()) {
            if e.label() == "empty" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dnsmasq did not answer: {e}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn serve(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }

    fn config(&self) -> DiscoveryConfig {
        DiscoveryConfig {
            interval: Duration::from_secs(1),
            resolver: Some(SocketAddr::from(([127, 0, 0, 1], self.port))),
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addrs(d: &Dnsmasq, eps: &[Endpoint]) -> Vec<String> {
    resolve_blocking(eps, &d.config())
        .unwrap()
        .addrs
        .iter()
        .map(|(a, _)| a.to_string())
        .collect()
}

#[test]
fn every_address_of_a_name_and_a_fresh_answer_after_it_changes() {
    let d = Dnsmasq::start("127.0.0.2 ranker.test\n127.0.0.3 ranker.test\n");
    let eps = [Endpoint::parse("ranker.test:8080").unwrap()];
    assert_eq!(addrs(&d, &eps), ["127.0.0.2:8080", "127.0.0.3:8080"]);
    let found = resolve_blocking(&eps, &d.config()).unwrap();
    assert_eq!(
        found.addrs[0].1, "ranker.test",
        "the server name is the name written"
    );
    assert!(
        found.ttl.unwrap() <= Duration::from_secs(1),
        "{:?}",
        found.ttl
    );

    d.serve(
        "127.0.0.2 ranker.test\n127.0.0.3 ranker.test\n127.0.0.4 ranker.test\n::1 ranker.test\n",
    );
    assert_eq!(
        addrs(&d, &eps),
        [
            "127.0.0.2:8080",
            "127.0.0.3:8080",
            "127.0.0.4:8080",
            "[::1]:8080"
        ]
    );

    // A name with only an A record: the AAAA query's empty answer is not a failure.
    d.serve("127.0.0.5 ranker.test\n");
    assert_eq!(addrs(&d, &eps), ["127.0.0.5:8080"]);

    // A name gone is an empty answer, told apart from a resolver that does not answer.
    d.serve("127.0.0.5 other.test\n");
    let e = resolve_blocking(&eps, &d.config()).unwrap_err();
    assert_eq!(e.label(), "empty", "{e}");
}
