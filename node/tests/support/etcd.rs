//! A real `etcd` (3.4+, Debian's etcd-server) on loopback with free ports and a temp data dir,
//! killed when dropped. Fails loudly if `etcd` is not installed. It can be stopped and started
//! again on the same ports and data (a restart of the lease service).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ports::free_port;

pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    peer_url: String,
    dir: tempfile::TempDir,
}


impl Etcd {
    pub async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut etcd = Etcd { child: None, url, peer_url, dir };
        etcd.restart().await;
        etcd
    }

    /// Kills the process (SIGKILL); the data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process (again) on the same ports and data, and waits until it is healthy.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let (url, peer_url) = (&self.url, &self.peer_url);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path())
            .args(["--listen-client-urls", url, "--advertise-client-urls", url])
            .args(["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}"), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd must be installed for these tests (apt-get install -y etcd-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + super::WAIT_MAX;
        loop {
            let health = reqwest::get(format!("{}/health", self.url)).await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
