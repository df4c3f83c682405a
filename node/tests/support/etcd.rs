//! A real `etcd` (3.4+, Debian's etcd-server) on loopback with free ports and a temp data dir,
//! killed when dropped. Fails loudly if `etcd` is not installed.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Etcd {
    pub async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path())
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}"), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd must be installed for these tests (apt-get install -y etcd-server)");
        let etcd = Etcd { child, url, _dir: dir };
        let deadline = tokio::time::Instant::now() + super::WAIT_MAX;
        loop {
            let health = reqwest::get(format!("{}/health", etcd.url)).await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return etcd;
            }
            assert!(tokio::time::Instant::now() < deadline, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
