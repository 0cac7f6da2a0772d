//! Shared by the integration tests: a broker on ephemeral loopback ports with certificates
//! generated for the test, and a raw MQTT peer built on the codec for protocol-level
//! assertions that a full client library would hide.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twinmq::config::{Config, Overrides};
use twinmq::protocol::codec::{encode_to_bytes, Decoder};
use twinmq::protocol::{Connect, MqttString, Packet, Properties, ProtocolVersion};
use twinmq::server::Server;

/// Bounds every wait in the tests: a broken broker fails a test, never hangs it.
pub const WAIT: Duration = Duration::from_secs(20);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir, unique per test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("twinmq-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(err) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {err}", dir.display());
    }
    dir
}

/// A running broker for one test.
pub struct TestBroker {
    pub server: Server,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub quic: SocketAddr,
    /// The CA that signed the server certificate (for `localhost`, 127.0.0.1, ::1).
    pub ca: PathBuf,
    pub data_dir: PathBuf,
}

impl TestBroker {
    pub async fn start(tag: &str) -> TestBroker {
        TestBroker::start_with(tag, &[]).await
    }

    /// Starts with extra `key=value` overrides (e.g. `mqtt.max_keepalive=2s`).
    pub async fn start_with(tag: &str, extra: &[&str]) -> TestBroker {
        TestBroker::start_with_faults(tag, extra, &twinmq::fault::FaultPlan::default()).await
    }

    /// Starts with a fault plan applied at the IO seams.
    pub async fn start_with_faults(
        tag: &str,
        extra: &[&str],
        plan: &twinmq::fault::FaultPlan,
    ) -> TestBroker {
        let data_dir = temp_dir(tag);
        let mut settings = vec![
            format!("data_dir={}", data_dir.display()),
            "listeners.tcp.bind=127.0.0.1:0".to_string(),
            "listeners.tls.bind=127.0.0.1:0".to_string(),
            "listeners.quic.bind=127.0.0.1:0".to_string(),
        ];
        settings.extend(extra.iter().map(|s| s.to_string()));
        let overrides = Overrides::from_assignments(&settings).expect("valid overrides");
        let config = twinmq::config::Loader::new()
            .without_env()
            .overrides(overrides)
            .load()
            .expect("test config loads");
        let server = Server::start_with_faults(&config, plan)
            .await
            .expect("broker starts");
        let tcp = server.tcp_addr.expect("tcp listener");
        let tls = server.tls_addr.expect("tls listener");
        let quic = server.quic_addr.expect("quic listener");
        // Empty when the test configured its own certificates.
        let ca = server.dev_ca.clone().unwrap_or_default();
        TestBroker {
            server,
            tcp,
            tls,
            quic,
            ca,
            data_dir,
        }
    }

    /// Options for a `twinmq::client` over TLS to this broker, trusting its CA, without
    /// reconnecting.
    pub fn tls_client(&self, id: &str) -> twinmq::client::ClientOptions {
        twinmq::client::ClientOptions::new("localhost")
            .port(self.tls.port())
            .transport(twinmq::client::Transport::Tls)
            .ca_file(&self.ca)
            .client_id(id)
            .reconnect(None)
    }

    pub fn config_for(tag: &str) -> Config {
        Config::defaults().unwrap_or_else(|e| panic!("{tag}: {e}"))
    }
}

/// Connects with `options` (a persistent session), subscribes to `filter` at `qos` and
/// goes away: the session waits offline for what is published next.
pub async fn park_subscriber(
    options: twinmq::client::ClientOptions,
    filter: &str,
    qos: twinmq::protocol::QoS,
) {
    let (sub, _) = twinmq::client::Client::connect(options)
        .await
        .expect("subscriber connects");
    sub.subscribe(filter, qos).await.expect("subscribed");
    sub.disconnect().await.expect("disconnect");
}

/// A raw MQTT client over plain TCP: sends packets, reads packets, nothing else.
pub struct RawClient {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    decoder: Decoder,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("tcp connect");
        RawClient {
            stream,
            version,
            decoder: Decoder::with_version(version, u32::MAX),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, packet: &Packet) {
        let bytes = encode_to_bytes(packet, self.version).expect("test packet encodes");
        self.stream.write_all(&bytes).await.expect("write");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` if the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("a packet or EOF in time")
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = self
                .decoder
                .decode(&mut self.buf)
                .expect("broker sends valid packets")
            {
                return Some(p);
            }
            let n = self.stream.read_buf(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until EOF; returns what arrived before it. Fails if the socket stays open.
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv().await {
            seen.push(p);
        }
        seen
    }

    /// CONNECT with `client_id` and the given fields, and returns the CONNACK.
    pub async fn handshake(&mut self, connect: Connect) -> Packet {
        self.send(&Packet::Connect(Box::new(connect))).await;
        self.recv().await.expect("CONNACK")
    }
}

pub fn connect(
    version: ProtocolVersion,
    client_id: &str,
    clean_start: bool,
    keep_alive: u16,
) -> Connect {
    Connect {
        protocol: version,
        clean_start,
        keep_alive,
        client_id: MqttString::new(client_id).expect("valid id"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// A rustls client config trusting `ca` (ring provider), for clients that take one.
pub fn tls_client_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in twinmq::config::tls::load_certs(ca).expect("CA loads") {
        roots.add(cert).expect("CA is a trust anchor");
    }
    let config = rustls::ClientConfig::builder_with_provider(twinmq::config::tls::ring_provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

pub mod quic;

/// A packet id for tests.
pub fn pid(n: u16) -> twinmq::protocol::PacketId {
    twinmq::protocol::PacketId::new(n).expect("test packet ids are non-zero")
}

/// A PUBLISH with no properties.
pub fn publish_packet(
    topic: &str,
    qos_pid: twinmq::protocol::QosPid,
    payload: impl Into<bytes::Bytes>,
    retain: bool,
) -> Packet {
    Packet::Publish(twinmq::protocol::Publish {
        dup: false,
        qos_pid,
        retain,
        topic: twinmq::protocol::TopicName::new(topic).expect("valid test topic"),
        payload: payload.into(),
        properties: Properties::default(),
    })
}

/// A SUBSCRIBE to one filter with the given options.
pub fn subscribe_with(
    filter: &str,
    options: twinmq::protocol::SubscriptionOptions,
    id: u16,
) -> Packet {
    Packet::Subscribe(twinmq::protocol::Subscribe {
        packet_id: pid(id),
        filters: vec![(
            twinmq::protocol::TopicFilter::new(filter).expect("valid test filter"),
            options,
        )],
        properties: Properties::default(),
    })
}

/// A SUBSCRIBE to one filter at `qos`.
pub fn subscribe_packet(filter: &str, qos: twinmq::protocol::QoS, id: u16) -> Packet {
    subscribe_with(filter, twinmq::protocol::SubscriptionOptions::qos(qos), id)
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        TempDir(temp_dir(name))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
