//! A real `llama-server` (llama.cpp's OpenAI-compatible server, built from the pinned
//! llama-cpp-python source tree by `scripts/yardstick.sh server`, which `make test` runs first)
//! on loopback, for the tests of the `openai` backend.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `llama-server`; killed when dropped.
#[derive(Debug)]
pub struct LlamaServer {
    child: Option<Child>,
    /// Its loopback port.
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl LlamaServer {
    /// The binary: `DRIFTWATCH_LLAMA_SERVER`, else the yardstick build in driftwatch's cache.
    pub fn binary() -> PathBuf {
        let bin = std::env::var_os("DRIFTWATCH_LLAMA_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| driftwatch::setup::cache_dir().join("yardstick/build/bin/llama-server"));
        assert!(
            bin.is_file(),
            "{} is missing: `scripts/yardstick.sh server` builds it (the README's test command runs it first)",
            bin.display()
        );
        bin
    }

    /// Starts a server of `model` with `slots` parallel slots on one thread, plus `extra`
    /// arguments, its output in `log`; waits (up to two minutes) until `/health` answers 200.
    pub fn start(model: &Path, slots: u32, extra: &[&str], log: &Path) -> LlamaServer {
        let port = crate::free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(Self::binary())
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-t", "1", "-np", &slots.to_string()])
            .args(["-c", &(1024 * slots).to_string(), "--no-webui"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start llama-server");
        let mut server = LlamaServer { child: Some(child), port, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.health() != Some(200) {
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("llama-server exited at its start ({status})");
            }
            assert!(Instant::now() < deadline, "llama-server on port {port} did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// The status of `GET /health`, `None` when nothing answers.
    pub fn health(&self) -> Option<u16> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut head = String::new();
        s.read_to_string(&mut head).ok()?;
        head.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGKILL: the server dies with its requests in flight.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
