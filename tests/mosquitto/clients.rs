//! Drives `mosquitto_pub` and `mosquitto_sub` (Debian `mosquitto-clients` 2.x) against a test
//! broker over TLS with `--cafile`: commands built per protocol version, subscribers whose
//! output is read line by line, every wait bounded.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::common::{TestBroker, WAIT};

/// The `-F` format every subscriber prints with; [`Msg::parse`] reads it back. Tabs, not
/// spaces: topics may hold spaces (`$SYS/broker/retained messages/count`).
pub const FORMAT: &str = "%t\t%q\t%r\t%p";

/// The topic of the retained readiness marker (see [`Mosq::mark_ready`]).
pub const READY: &str = "ready";

/// A protocol version, as mosquitto's `-V` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mqtt {
    V311,
    V5,
}

impl Mqtt {
    pub fn flag(self) -> &'static str {
        match self {
            Mqtt::V311 => "mqttv311",
            Mqtt::V5 => "mqttv5",
        }
    }

    /// A short tag for client ids and topics.
    pub fn tag(self) -> &'static str {
        match self {
            Mqtt::V311 => "311",
            Mqtt::V5 => "5",
        }
    }
}

/// One message as a subscriber printed it with [`FORMAT`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Msg {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: String,
}

impl Msg {
    pub fn new(topic: &str, qos: u8, retain: bool, payload: &str) -> Msg {
        Msg {
            topic: topic.to_string(),
            qos,
            retain,
            payload: payload.to_string(),
        }
    }

    /// Reads a line printed with [`FORMAT`]; `None` for anything else (e.g. `-d` output).
    pub fn parse(line: &str) -> Option<Msg> {
        let mut parts = line.splitn(4, '\t');
        let topic = parts.next()?;
        let qos = parts.next()?.parse().ok().filter(|q| *q <= 2)?;
        let retain = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let payload = parts.next()?;
        Some(Msg::new(topic, qos, retain, payload))
    }
}

/// mosquitto clients pointed at one test broker's TLS listener with one protocol version.
pub struct Mosq {
    pub broker: TestBroker,
    pub version: Mqtt,
}

impl Mosq {
    pub async fn start(tag: &str, version: Mqtt) -> Mosq {
        let broker = TestBroker::start(&format!("mosq-{tag}-{}", version.tag())).await;
        Mosq { broker, version }
    }

    /// `program --cafile CA -h localhost -p PORT -V VERSION`, killed when dropped.
    pub fn command(&self, program: &str) -> Command {
        tls_command(
            program,
            &self.broker.ca,
            self.broker.tls.port(),
            self.version,
        )
    }

    /// Starts `mosquitto_sub` with `args` after the connection flags.
    pub fn sub(&self, label: &str, args: &[&str]) -> Sub {
        let mut cmd = self.command("mosquitto_sub");
        cmd.args(args);
        Sub::spawn(label, cmd)
    }

    /// Runs `mosquitto_pub` with `args` (and `stdin`, for `-l` or `-s`) to completion.
    pub async fn try_publish(&self, args: &[&str], stdin: Option<String>) -> Finished {
        let mut cmd = self.command("mosquitto_pub");
        cmd.args(args);
        run(cmd, stdin).await
    }

    /// Runs `mosquitto_pub` with `args` to completion and fails the test unless it succeeds.
    pub async fn publish(&self, args: &[&str]) {
        let out = self.try_publish(args, None).await;
        assert!(out.status.success(), "mosquitto_pub {args:?}: {out:?}");
    }

    /// Publishes each of `lines` as one message over a single connection (`-l`).
    pub async fn publish_lines(&self, args: &[&str], lines: &[&str]) {
        let input = lines.iter().map(|l| format!("{l}\n")).collect();
        let out = self
            .try_publish(&[args, &["-l"]].concat(), Some(input))
            .await;
        assert!(out.status.success(), "mosquitto_pub -l {args:?}: {out:?}");
    }

    /// Publishes a retained message on [`READY`]. A subscriber that includes `-t ready`
    /// prints it once its SUBSCRIBE has been handled: the broker handles the filters of one
    /// SUBSCRIBE in order and sends retained messages when a filter is added
    /// [MQTT-3.8.4-4, MQTT-3.3.1-6], so when the marker arrives every filter listed before it
    /// is in place and anything published afterwards reaches the subscriber. This is how the
    /// tests know a subscriber is subscribed, without sleeping.
    pub async fn mark_ready(&self) {
        self.publish(&["-r", "-q", "1", "-t", READY, "-m", READY])
            .await;
    }
}

/// Splits `args` at whitespace, for argument lists whose arguments hold no spaces.
pub fn words(args: &str) -> Vec<&str> {
    args.split_whitespace().collect()
}

/// `program --cafile CA -h localhost -p PORT -V VERSION`: `-h localhost` so that hostname
/// verification against the server certificate's SAN passes.
pub fn tls_command(program: &str, ca: &Path, port: u16, version: Mqtt) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("--cafile").arg(ca).args([
        "-h",
        "localhost",
        "-p",
        &port.to_string(),
        "-V",
        version.flag(),
    ]);
    cmd.kill_on_drop(true);
    cmd
}

/// What a finished client process left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion within [`WAIT`], feeding it `stdin` if given.
pub async fn run(mut cmd: Command, stdin: Option<String>) -> Finished {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .expect("write the client's stdin");
        // Dropping the pipe closes it: the client sees end of input.
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {WAIT:?}"))
        .expect("wait for the client");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `mosquitto_sub` whose stdout is read line by line.
pub struct Sub {
    label: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Sub {
    pub fn spawn(label: &str, mut cmd: Command) -> Sub {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // Drained concurrently so a chatty client never blocks on a full pipe.
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Sub {
            label: label.to_string(),
            child,
            lines: BufReader::new(stdout).lines(),
            stderr,
            seen: Vec::new(),
        }
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The next line of output, or `None` at end of output; fails after [`WAIT`].
    pub async fn next_line(&mut self) -> Option<String> {
        let line = match tokio::time::timeout(WAIT, self.lines.next_line()).await {
            Ok(Ok(line)) => line,
            Ok(Err(err)) => panic!("{}: reading output: {err}", self.label),
            Err(_) => panic!(
                "{}: no output within {WAIT:?}; so far: {:?}",
                self.label, self.seen
            ),
        };
        if let Some(line) = &line {
            self.seen.push(line.clone());
        }
        line
    }

    /// Reads lines until one satisfies `done`; returns the lines before it and that line.
    pub async fn lines_until(&mut self, done: impl Fn(&str) -> bool) -> (Vec<String>, String) {
        let mut before = Vec::new();
        loop {
            match self.next_line().await {
                Some(line) if done(&line) => return (before, line),
                Some(line) => before.push(line),
                None => {
                    let stderr = self.stderr_after_exit().await;
                    panic!(
                        "{}: output ended before the expected line; saw {:?}; stderr: {stderr}",
                        self.label, self.seen
                    )
                }
            }
        }
    }

    /// Reads messages until `done` holds for all of them; returns them all.
    pub async fn msgs_until(&mut self, done: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
        let mut msgs = Vec::new();
        while !done(&msgs) {
            let Some(line) = self.next_line().await else {
                let stderr = self.stderr_after_exit().await;
                panic!(
                    "{}: output ended early; messages {msgs:?}; stderr: {stderr}",
                    self.label
                );
            };
            match Msg::parse(&line) {
                Some(msg) => msgs.push(msg),
                None => panic!("{}: unexpected output line {line:?}", self.label),
            }
        }
        msgs
    }

    /// Reads messages until one on `topic`; returns those before it and that one.
    pub async fn msgs_until_topic(&mut self, topic: &str) -> (Vec<Msg>, Msg) {
        let mut msgs = self
            .msgs_until(|m| m.last().is_some_and(|m| m.topic == topic))
            .await;
        let last = msgs.pop().expect("at least the one on the topic");
        (msgs, last)
    }

    /// The next message; fails if the output is anything else.
    pub async fn next_msg(&mut self) -> Msg {
        self.msgs_until(|m| !m.is_empty()).await.remove(0)
    }

    /// Waits for the retained [`READY`] marker: the subscription is in place. Fails if
    /// anything else arrives first.
    pub async fn wait_ready(&mut self) {
        let msg = self.next_msg().await;
        assert_eq!(
            msg,
            Msg::new(READY, msg.qos, true, READY),
            "{}: expected the ready marker first",
            self.label
        );
    }

    /// Waits (bounded) for the process to exit; returns its status and remaining output.
    pub async fn finish(mut self) -> Finished {
        let mut rest = Vec::new();
        while let Some(line) = self.next_line().await {
            rest.push(line);
        }
        let status = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait for mosquitto_sub"),
            Err(_) => panic!("{}: did not exit within {WAIT:?}", self.label),
        };
        let stderr = self.stderr_after_exit().await;
        Finished {
            status,
            stdout: rest.join("\n"),
            stderr,
        }
    }

    /// SIGKILLs the process (no DISCONNECT: the broker sees the socket close) and reaps it.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("send SIGKILL");
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("killed process exits in time")
            .expect("reap killed process");
    }

    /// The client's stderr once it has closed it (at exit); bounded.
    async fn stderr_after_exit(&mut self) -> String {
        match tokio::time::timeout(WAIT, &mut self.stderr).await {
            Ok(Ok(text)) => text,
            Ok(Err(err)) => format!("(stderr reader failed: {err})"),
            Err(_) => "(stderr still open)".to_string(),
        }
    }
}

/// Bounds a future by [`WAIT`], naming what it was waiting for on failure.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {WAIT:?}"))
}
