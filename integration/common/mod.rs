//! Shared helpers for the end-to-end tests: the real `sluice` binary, test OTLP backends that
//! record what they receive, and waits on real signals.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

pub mod backends;
pub mod gateway;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen quickly before failing.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1. The OS does not hand it out again until it has cycled
/// through the ephemeral range, so the race with other tests is negligible.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 works on any test machine")
}

/// Output of a child process, collected by a thread as it is written.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<String>>);

impl Output {
    fn collect(self, stream: impl Read + Send + 'static) -> Self {
        let sink = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut text = sink.0.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        self
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// A running `sluice run` process with its own config file, stopped when dropped.
pub struct Sluice {
    child: Child,
    pub admin: SocketAddr,
    pub stdout: Output,
    pub stderr: Output,
    _dir: tempfile::TempDir,
}

/// The path of the binary under test.
pub fn sluice_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

impl Sluice {
    /// Starts `sluice run` with `config`, whose `[service] admin` must be `admin`, and waits
    /// until the admin server and every address in `listening` accept connections.
    pub fn start(config: &str, admin: SocketAddr, listening: &[SocketAddr]) -> Sluice {
        Sluice::start_with_env(config, admin, listening, &[])
    }

    /// [`Sluice::start`] with extra environment variables set for the process.
    pub fn start_with_env(
        config: &str,
        admin: SocketAddr,
        listening: &[SocketAddr],
        env: &[(&str, &str)],
    ) -> Sluice {
        Sluice::start_with(config, admin, listening, env, &[])
    }

    /// [`Sluice::start`] with extra arguments to `sluice run`.
    pub fn start_with_args(
        config: &str,
        admin: SocketAddr,
        listening: &[SocketAddr],
        args: &[&str],
    ) -> Sluice {
        Sluice::start_with(config, admin, listening, &[], args)
    }

    fn start_with(
        config: &str,
        admin: SocketAddr,
        listening: &[SocketAddr],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(&file, config).unwrap();
        let mut child = Command::new(sluice_binary())
            .args(["run", "--config"])
            .arg(&file)
            .args(args)
            .env("SLUICE_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sluice binary was built by cargo for this test");
        let stdout = Output::default().collect(child.stdout.take().unwrap());
        let stderr = Output::default().collect(child.stderr.take().unwrap());
        let mut sluice = Sluice {
            child,
            admin,
            stdout,
            stderr,
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        for address in std::iter::once(&admin).chain(listening) {
            while TcpStream::connect(address).is_err() {
                if let Ok(Some(status)) = sluice.child.try_wait() {
                    panic!(
                        "sluice exited with {status} before listening:\n{}",
                        sluice.stderr.text()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "sluice did not listen on {address}:\n{}",
                    sluice.stderr.text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        sluice
    }

    /// The admin server's `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
    }

    /// The value of one internal metric series (the sum of every series whose line starts
    /// with `series`, e.g. `sluice_exporter_sent_items_total{exporter="a",signal="traces"}`).
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// The process id of the running binary.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory in bytes, from `VmRSS` in `/proc/PID/status` (Linux).
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the process is running and /proc is mounted");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("/proc/PID/status has a VmRSS line in kB");
        kib * 1024
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The config file the process runs, to rewrite it before a reload.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("sluice.toml")
    }

    /// Sends SIGHUP: reload the configuration.
    pub fn hangup(&self) {
        signal(self.child.id(), "HUP");
    }

    /// Kills the process with SIGKILL, as a crash or the OOM killer would, and waits for it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The sum of the values of the series in Prometheus `text` whose line starts with `series`.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A blocking HTTP/1.1 GET, enough for the admin endpoints.
pub fn http_get(address: SocketAddr, path: &str) -> String {
    use std::io::Write;
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap_or(("", ""));
    body.to_string()
}

/// Polls `check` until it returns true, failing the test with `what` after [`PATIENCE`].
pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
