//! The sluice process under test: its configuration, its start, and its end.

use std::fmt;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

/// The exporter's compression setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            other => Err(format!(
                "unknown compression {other:?}; expected none or gzip"
            )),
        }
    }
}

/// The addresses a benchmark configuration wires together.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub receiver: SocketAddr,
    pub admin: SocketAddr,
    pub sink: SocketAddr,
}

/// The pipeline under test: `otlp` gRPC receiver, `batch` with its defaults, `otlp_grpc`
/// exporter to the sink. The exporter's queue blocks when full, so under overload the
/// receiver answers UNAVAILABLE instead of dropping and memory stays bounded by the queue.
/// `queue_max_items` overrides the queue's bound (sluice's default when None).
pub fn config(ports: Ports, compression: Compression, queue_max_items: Option<usize>) -> String {
    let max_items = queue_max_items.map_or(String::new(), |n| format!(", max_items = {n}"));
    format!(
        r#"# Written by sluice-bench: OTLP/gRPC in, batch, OTLP/gRPC out to the benchmark's sink.
[service]
admin = "{admin}"

[receivers.otlp]
grpc = "{receiver}"

[processors.batch]

[exporters.sink]
type = "otlp_grpc"
endpoint = "http://{sink}"
compression = "{compression}"
queue = {{ when_full = "block"{max_items} }}

[pipelines.traces]
receivers = ["otlp"]
processors = ["batch"]
exporters = ["sink"]
"#,
        admin = ports.admin,
        receiver = ports.receiver,
        sink = ports.sink,
    )
}

/// A free port on 127.0.0.1, for a process that must be told its port in advance.
pub fn free_local_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

/// Errors starting sluice.
#[derive(Debug, thiserror::Error)]
pub enum SluiceError {
    #[error("cannot prepare the run directory: {0}")]
    RunDir(std::io::Error),
    #[error("cannot start {binary}: {source} (build it with `cargo build --release --bin sluice`)")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("sluice exited with {status} before opening {addr}; its log:\n{log}")]
    Exited {
        status: ExitStatus,
        addr: SocketAddr,
        log: String,
    },
    #[error("sluice did not open {addr} within {timeout:?}; its log:\n{log}")]
    NoPort {
        addr: SocketAddr,
        timeout: Duration,
        log: String,
    },
}

/// A running sluice, killed (and reaped) when dropped. Its config and logs live in a
/// temporary directory that goes with it.
pub struct SluiceProcess {
    child: Child,
    dir: tempfile::TempDir,
}

impl SluiceProcess {
    /// Writes `config` to a fresh directory and runs `binary run --config FILE` with stdout
    /// and stderr going to files next to it.
    pub fn start(binary: &Path, config: &str) -> Result<SluiceProcess, SluiceError> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench.")
            .tempdir()
            .map_err(SluiceError::RunDir)?;
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config).map_err(SluiceError::RunDir)?;
        let stdout = File::create(dir.path().join("stdout.log")).map_err(SluiceError::RunDir)?;
        let stderr = File::create(dir.path().join("stderr.log")).map_err(SluiceError::RunDir)?;
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| SluiceError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        Ok(SluiceProcess { child, dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if sluice has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What sluice wrote to stderr (its log) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log"))
            .unwrap_or_else(|error| format!("(cannot read the log: {error})"))
    }

    /// Waits until `addr` accepts TCP connections, failing early if sluice exits.
    pub async fn wait_for_port(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(), SluiceError> {
        let give_up = Instant::now() + timeout;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(SluiceError::Exited {
                    status,
                    addr,
                    log: self.log(),
                });
            }
            if Instant::now() >= give_up {
                return Err(SluiceError::NoPort {
                    addr,
                    timeout,
                    log: self.log(),
                });
            }
            // Nothing signals that a listener is up; poll the port at a short interval.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        // Killing a process that already exited fails harmlessly; reaping it avoids a zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_wires_receiver_batch_and_a_blocking_exporter_queue() {
        let ports = Ports {
            receiver: "127.0.0.1:1001".parse().unwrap(),
            admin: "127.0.0.1:1002".parse().unwrap(),
            sink: "127.0.0.1:1003".parse().unwrap(),
        };
        let text = config(ports, Compression::Gzip, None);
        assert!(text.contains("grpc = \"127.0.0.1:1001\""));
        assert!(text.contains("admin = \"127.0.0.1:1002\""));
        assert!(text.contains("endpoint = \"http://127.0.0.1:1003\""));
        assert!(text.contains("compression = \"gzip\""));
        assert!(text.contains("queue = { when_full = \"block\" }"));
        let bounded = config(ports, Compression::None, Some(20_000));
        assert!(bounded.contains("queue = { when_full = \"block\", max_items = 20000 }"));
    }

    #[test]
    fn compression_parses_only_the_two_known_names() {
        assert_eq!("none".parse(), Ok(Compression::None));
        assert_eq!("gzip".parse(), Ok(Compression::Gzip));
        assert!("zstd".parse::<Compression>().is_err());
    }
}
