//! `twinmq pub` and `twinmq sub`, shaped like mosquitto_pub and mosquitto_sub, plus
//! `--transport tcp|tls|quic` and `--streams single|multi`. Every failure prints one line
//! (`twinmq: ...`) and exits non-zero.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgAction, Args};

use super::{Client, ClientError, ClientOptions, Event, Reconnect, StreamMode, Transport};
use crate::protocol::{ProtocolVersion, QoS};

/// Connection flags shared by `pub` and `sub`.
#[derive(Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// Broker host name or IP address.
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// Broker port. Default: 1883 (tcp), 8883 (tls), 14567 (quic).
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// Client id. Default: twinmq- and random hex.
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// User name.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (needs -u).
    #[arg(short = 'P', long = "pw")]
    pub password: Option<String>,
    /// MQTT version: 5 or 311.
    #[arg(short = 'V', long = "protocol-version", default_value = "5", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// Keep-alive in seconds (0: off).
    #[arg(short = 'k', long, default_value_t = 60)]
    pub keepalive: u16,
    /// Persistent session: clean start off (needs -i). With MQTT 5 the session never
    /// expires unless -x says otherwise.
    #[arg(short = 'c', long = "disable-clean-session")]
    pub persistent: bool,
    /// Session expiry in seconds (MQTT 5, with -c).
    #[arg(short = 'x', long = "session-expiry")]
    pub session_expiry: Option<u32>,
    /// QoS 0, 1 or 2.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// CA certificates (PEM) to verify the broker with.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Do not verify the broker's certificate. For testing only: anyone on the path can
    /// impersonate the broker.
    #[arg(long)]
    pub insecure: bool,
    /// tcp, tls or quic. Default: tls when --cafile, --cert or --insecure is given, tcp
    /// otherwise.
    #[arg(long)]
    pub transport: Option<Transport>,
    /// QUIC only: single (one stream, the EMQX convention) or multi (a control stream and
    /// data streams).
    #[arg(long, default_value = "single")]
    pub streams: StreamMode,
    /// Print connection progress to stderr.
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// `twinmq pub`: publish one message, or one per line of stdin.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["message", "lines", "null", "stdin_whole", "file"])))]
pub struct PubArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Topic to publish to.
    #[arg(short = 't', long)]
    pub topic: String,
    /// The message.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Each line of stdin is a message (blank lines are skipped).
    #[arg(short = 'l', long = "stdin-line")]
    pub lines: bool,
    /// An empty message.
    #[arg(short = 'n', long = "null-message")]
    pub null: bool,
    /// All of stdin is one message.
    #[arg(short = 's', long = "stdin-file")]
    pub stdin_whole: bool,
    /// The contents of a file are the message.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Retain the message.
    #[arg(short = 'r', long)]
    pub retain: bool,
}

/// `twinmq sub`: print the messages of one or more topic filters.
#[derive(Args, Debug, Clone)]
pub struct SubArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Topic filter to subscribe to (repeatable).
    #[arg(short = 't', long, required = true)]
    pub topic: Vec<String>,
    /// Exit after this many messages.
    #[arg(short = 'C', long)]
    pub count: Option<u64>,
    /// Print "topic payload" instead of the payload alone.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Stop after this many seconds; with -C, not having received the count by then is an
    /// error.
    #[arg(short = 'W', long)]
    pub timeout: Option<u64>,
}

/// Runs `twinmq pub`.
pub fn run_pub(args: PubArgs) -> ExitCode {
    run(async move { publish(args).await })
}

/// Runs `twinmq sub`.
pub fn run_sub(args: SubArgs) -> ExitCode {
    run(async move { subscribe(args).await })
}

fn run(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err.to_string()),
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("twinmq: {message}");
    ExitCode::FAILURE
}

async fn publish(args: PubArgs) -> Result<(), String> {
    let conn = &args.connection;
    // Read what is to be sent before connecting, so a missing file fails first.
    let single = if args.lines {
        None
    } else if let Some(message) = &args.message {
        Some(Bytes::from(message.clone()))
    } else if args.null {
        Some(Bytes::new())
    } else if let Some(file) = &args.file {
        let data =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        Some(Bytes::from(data))
    } else {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        Some(Bytes::from(data))
    };
    let options = options(conn)?.reconnect(None);
    let (client, _incoming) = connect(conn, options).await?;
    let qos = qos(conn.qos);
    let result = match single {
        Some(payload) => client
            .publish(&args.topic, payload, qos, args.retain)
            .await
            .map_err(|e| e.to_string()),
        None => publish_lines(&client, &args.topic, qos, args.retain).await,
    };
    let _ = client.disconnect().await;
    result
}

async fn publish_lines(client: &Client, topic: &str, qos: QoS, retain: bool) -> Result<(), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(64);
    // stdin is blocking: read it on a thread of its own.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let line = line.map_err(|e| format!("cannot read stdin: {e}"))?;
        if line.is_empty() {
            continue;
        }
        client
            .publish(topic, line, qos, retain)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn subscribe(args: SubArgs) -> Result<(), String> {
    let conn = &args.connection;
    let options = options(conn)?;
    let deadline = args
        .timeout
        .map(|secs| tokio::time::Instant::now() + Duration::from_secs(secs));
    let (client, mut incoming) = connect(conn, options).await?;
    for filter in &args.topic {
        let granted = client
            .subscribe(filter, qos(conn.qos))
            .await
            .map_err(|e| e.to_string())?;
        debug(
            conn,
            format_args!("subscribed to {filter} (granted QoS {})", granted as u8),
        );
    }
    let mut received = 0u64;
    let mut stdout = std::io::stdout();
    let outcome = loop {
        if args.count.is_some_and(|count| received >= count) {
            break Ok(());
        }
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            event = incoming.recv() => event,
            () = sleep => {
                break match args.count {
                    Some(count) => Err(format!(
                        "timed out after {}s with {received} of {count} messages",
                        args.timeout.unwrap_or(0)
                    )),
                    None => Ok(()),
                };
            }
        };
        match event {
            Some(Event::Message(m)) => {
                received += 1;
                let mut line = Vec::with_capacity(m.topic.len() + m.payload.len() + 2);
                if args.verbose {
                    line.extend_from_slice(m.topic.as_str().as_bytes());
                    line.push(b' ');
                }
                line.extend_from_slice(&m.payload);
                line.push(b'\n');
                if let Err(e) = stdout.write_all(&line).and_then(|()| stdout.flush()) {
                    break Err(format!("cannot write to stdout: {e}"));
                }
            }
            Some(Event::ConnectionLost {
                error,
                reconnecting: true,
            }) => debug(
                conn,
                format_args!("connection lost ({error}), reconnecting"),
            ),
            Some(Event::ConnectionLost { error, .. }) => break Err(error.to_string()),
            Some(Event::Reconnected { session_present }) => debug(
                conn,
                format_args!("reconnected (session present: {session_present})"),
            ),
            None => break Err(ClientError::Closed.to_string()),
        }
    };
    let _ = client.disconnect().await;
    outcome
}

async fn connect(
    conn: &ConnectionArgs,
    options: ClientOptions,
) -> Result<(Client, super::Incoming), String> {
    let transport = options.transport_kind();
    let port = options.port_or_default();
    let (client, incoming) = Client::connect(options).await.map_err(|e| e.to_string())?;
    debug(
        conn,
        format_args!(
            "connected to {}:{port} over {transport} as {} (session present: {})",
            conn.host,
            client.client_id(),
            client.session_present()
        ),
    );
    Ok((client, incoming))
}

fn options(conn: &ConnectionArgs) -> Result<ClientOptions, String> {
    let transport = conn.transport.unwrap_or(
        if conn.cafile.is_some() || conn.cert.is_some() || conn.insecure {
            Transport::Tls
        } else {
            Transport::Tcp
        },
    );
    let mut options = ClientOptions::new(conn.host.clone())
        .transport(transport)
        .streams(conn.streams)
        .version(conn.version)
        .keep_alive(Duration::from_secs(u64::from(conn.keepalive)))
        .insecure(conn.insecure)
        .reconnect(Some(Reconnect::new(
            Duration::from_millis(200),
            Duration::from_secs(30),
        )));
    if let Some(port) = conn.port {
        options = options.port(port);
    }
    if let Some(id) = &conn.id {
        options = options.client_id(id.clone());
    }
    if conn.persistent {
        if conn.id.is_none() {
            return Err("-c (persistent session) needs a client id (-i)".into());
        }
        let expiry = conn.session_expiry.unwrap_or(u32::MAX);
        options = options.persistent_session(Duration::from_secs(u64::from(expiry)));
    } else if let Some(expiry) = conn.session_expiry {
        options = options.session_expiry(Duration::from_secs(u64::from(expiry)));
    }
    match (&conn.username, &conn.password) {
        (Some(user), password) => {
            options = options.username(user.clone());
            if let Some(password) = password {
                options = options.password(password.clone());
            }
        }
        (None, Some(_)) => return Err("-P (password) needs -u (user name)".into()),
        (None, None) => {}
    }
    if let Some(ca) = &conn.cafile {
        options = options.ca_file(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&conn.cert, &conn.key) {
        options = options.client_cert(cert.clone(), key.clone());
    }
    Ok(options)
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s.to_ascii_lowercase().as_str() {
        "5" | "mqttv5" | "5.0" => Ok(ProtocolVersion::V5),
        "311" | "mqttv311" | "3.1.1" | "4" => Ok(ProtocolVersion::V311),
        other => Err(format!(
            "unknown MQTT version {other:?} (expected 5 or 311)"
        )),
    }
}

fn qos(level: u8) -> QoS {
    QoS::from_bits(level).unwrap_or(QoS::AtMostOnce)
}

fn debug(conn: &ConnectionArgs, message: std::fmt::Arguments<'_>) {
    if conn.debug {
        eprintln!("twinmq: {message}");
    }
}
