//! The broker under test: a `twinmq serve` child process, fresh for every case, so its CPU
//! time and memory are its own (bench clients in the same process would blur both). It
//! listens on loopback, or inside the impairment link's server namespace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::BenchError;
use crate::config::units::format_duration;
use crate::fault::link::{ImpairedLink, SERVER_ADDR};
use crate::fault::FaultPlan;

/// Longest wait for a started broker to report its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the child listens.
pub(crate) enum Place<'a> {
    /// 127.0.0.1, ephemeral ports.
    Loopback,
    /// The link's server namespace, on these ports of [`SERVER_ADDR`].
    Link {
        link: &'a ImpairedLink,
        tls_port: u16,
        quic_port: u16,
    },
}

/// A running `twinmq serve`. Dropping it kills the process.
pub(crate) struct ChildBroker {
    child: Child,
    pid: u32,
    pub tls: SocketAddr,
    pub quic: SocketAddr,
    /// The development CA the child's certificates chain to.
    pub ca: PathBuf,
    /// Kept open: the child may still print (a closed pipe would fail its writes).
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl ChildBroker {
    /// Starts `binary serve` with its data in `data_dir` and `plan` at its seams, and
    /// waits until it reports both listeners.
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        plan: &FaultPlan,
        place: Place<'_>,
    ) -> Result<ChildBroker, BenchError> {
        std::fs::create_dir_all(data_dir)
            .map_err(BenchError::io(format!("create {}", data_dir.display())))?;
        // Generated here, so the bench knows the CA; the child finds and reuses them.
        let ca = crate::config::certs::ensure_dev_certs(data_dir)?.ca_cert;
        let mut settings = vec![
            format!("data_dir={}", data_dir.display()),
            "listeners.tcp.enabled=false".to_string(),
            "sys.interval=0s".to_string(),
            "log.level=warn".to_string(),
        ];
        match &place {
            Place::Loopback => settings.extend([
                "listeners.tls.bind=127.0.0.1:0".to_string(),
                "listeners.quic.bind=127.0.0.1:0".to_string(),
            ]),
            Place::Link {
                tls_port,
                quic_port,
                ..
            } => settings.extend([
                format!("listeners.tls.bind={SERVER_ADDR}:{tls_port}"),
                format!("listeners.quic.bind={SERVER_ADDR}:{quic_port}"),
                // A documentation-range address inside a namespace of its own: anonymous
                // access is no wider than on loopback.
                "auth.allow_anonymous=true".to_string(),
            ]),
        }
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("serve");
        for s in &settings {
            cmd.arg("--set").arg(s);
        }
        if !plan.is_empty() {
            let file = data_dir.join("fault-plan.toml");
            std::fs::write(&file, plan_toml(plan))
                .map_err(BenchError::io(format!("write {}", file.display())))?;
            cmd.arg("--fault-plan").arg(file);
        }
        // The child's configuration is the bench's, not the environment's.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TWINMQ_") {
                cmd.env_remove(key);
            }
        }
        let log = data_dir.join("broker.log");
        let stderr = std::fs::File::create(&log)
            .map_err(BenchError::io(format!("create {}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        if let Place::Link { link, .. } = &place {
            link.run_in_server_ns(&mut cmd)
                .map_err(|e| BenchError::Task(e.to_string()))?;
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(BenchError::io(format!("start {} serve", binary.display())))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Task("the broker's stdout is not piped".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut tls, mut quic) = (None, None);
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while tls.is_none() || quic.is_none() {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        tls = tls.or_else(|| address_after(&line, "MQTT over TLS on "));
                        quic = quic.or_else(|| address_after(&line, "MQTT over QUIC on "));
                    }
                    _ => return false,
                }
            }
            true
        })
        .await;
        match (ready, tls, quic) {
            (Ok(true), Some(tls), Some(quic)) => Ok(ChildBroker {
                child,
                pid,
                tls,
                quic,
                ca,
                _stdout: lines,
            }),
            _ => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                Err(BenchError::Task(format!(
                    "the broker did not report its listeners within {START_TIMEOUT:?}: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the process and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// `127.0.0.1:8883` out of `twinmq: MQTT over TLS on 127.0.0.1:8883` (or `.../udp (…)`).
fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let end = rest.find(['/', ' ']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The plan as the TOML `twinmq serve --fault-plan` reads (the seams the bench uses).
fn plan_toml(plan: &FaultPlan) -> String {
    let mut toml = format!("seed = {}\n", plan.seed);
    let s = &plan.stream;
    if !s.is_empty() {
        toml.push_str("[stream]\n");
        let fields = [
            ("max_write", s.max_write.map(|v| v as u64)),
            ("write_zero_every", s.write_zero_every),
            ("stall_after", s.stall_after),
            ("reset_after", s.reset_after),
            ("corrupt_read_at", s.corrupt_read_at),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                toml.push_str(&format!("{key} = {v}\n"));
            }
        }
        if let Some(d) = s.stall_for {
            toml.push_str(&format!("stall_for = \"{}\"\n", format_duration(d)));
        }
    }
    let u = &plan.udp;
    if u.loss > 0.0 || u.delay.is_some() {
        toml.push_str(&format!("[udp]\nloss = {}\n", u.loss));
        if let Some(d) = u.delay {
            toml.push_str(&format!("delay = \"{}\"\n", format_duration(d)));
        }
    }
    toml
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::stream::StreamFaults;
    use crate::fault::udp::UdpFaults;

    #[test]
    fn reads_the_listener_lines_of_serve() {
        assert_eq!(
            address_after(
                "twinmq: MQTT over TLS on 127.0.0.1:41234",
                "MQTT over TLS on "
            ),
            Some("127.0.0.1:41234".parse().expect("addr"))
        );
        assert_eq!(
            address_after(
                "twinmq: MQTT over QUIC on 192.0.2.1:14567/udp (ALPN mqtt)",
                "MQTT over QUIC on "
            ),
            Some("192.0.2.1:14567".parse().expect("addr"))
        );
        assert_eq!(
            address_after("twinmq: shutting down", "MQTT over TLS on "),
            None
        );
    }

    #[test]
    fn the_plan_round_trips_through_toml() {
        let plan = FaultPlan {
            seed: 9,
            stream: StreamFaults {
                max_write: Some(7),
                stall_after: Some(2000),
                stall_for: Some(Duration::from_millis(300)),
                ..StreamFaults::default()
            },
            udp: UdpFaults {
                loss: 0.1,
                delay: Some(Duration::from_millis(5)),
            },
        };
        let dir = std::env::temp_dir().join(format!("twinmq-plan-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("plan.toml");
        std::fs::write(&file, plan_toml(&plan)).expect("write");
        let back = FaultPlan::load(&file).expect("loads");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(back, plan);
    }
}
