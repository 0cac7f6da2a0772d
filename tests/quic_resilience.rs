//! MQTT over QUIC when the network misbehaves, over real loopback UDP with the test's own
//! CA: a client whose address changes (connection migration), resumption with and without
//! 0-RTT, a client that vanishes without a word, and a storm of concurrent handshakes.
//!
//! No sleep synchronises anything: every step waits for the packet that proves the
//! previous one, and every wait is bounded by `common::WAIT`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::client::{Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use twinmq::broker::Stats;
use twinmq::protocol::codec::{encode_to_bytes, Decoder};
use twinmq::protocol::{
    Ack, ConnAck, Disconnect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, QosPid,
    ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName, Will,
};

use common::{connect, tls_client_config, RawClient, TestBroker, WAIT};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A client whose local address changes twice (a NAT rebinding, then Wi-Fi to cellular)
/// keeps its connection, stream and session: messages published while it is on each new
/// address arrive on the same stream, with no second CONNECT.
#[tokio::test]
async fn migration_keeps_the_session_on_the_same_stream() {
    let broker = TestBroker::start("quic-migrate").await;
    let endpoint = client_endpoint(plain_tls(&broker.ca));
    let connection = quic_connect(&endpoint, broker.quic).await;
    let mut s = QuicStream::open(&connection).await;
    s.send(&connect_packet(connect(V5, "mover", true, 30)))
        .await;
    expect_connack(s.recv().await);
    s.send(&subscribe("move/#", QoS::AtLeastOnce)).await;
    assert!(matches!(s.recv().await, Some(Packet::SubAck(_))));

    let mut publisher = RawClient::connect(broker.tcp, V5).await;
    expect_connack(Some(
        publisher.handshake(connect(V5, "pub", true, 30)).await,
    ));
    let stats = &broker.server.broker.stats;
    assert_eq!(Stats::get(&stats.connections_total), 2);

    let server = connection.remote_address();
    let mut local = endpoint.local_addr().expect("local address");
    for (hop, payload) in [(1u16, "after rebinding"), (2, "after changing networks")] {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a new socket");
        endpoint.rebind(socket).expect("rebind");
        let moved_to = endpoint.local_addr().expect("local address");
        assert_ne!(moved_to, local, "hop {hop}: a new local port");
        assert_eq!(
            connection.remote_address(),
            server,
            "hop {hop}: same server"
        );
        local = moved_to;

        // The server learns the new path only from a packet sent on it. The PINGRESP
        // proves it has: quinn drops the old socket at the first packet that arrives on
        // the new one, so everything after it travels the new path. This round trip is
        // the stall a migrating client sees (issue 5 measures it).
        s.send(&Packet::PingReq).await;
        assert!(matches!(s.recv().await, Some(Packet::PingResp)));

        publisher
            .send(&publish("move/x", QosPid::AtLeastOnce(pid(hop)), payload))
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
        // Only the delivery: a CONNACK or DISCONNECT here would mean a new session.
        match s.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.payload, Bytes::from(payload), "hop {hop}");
                s.send(&Packet::PubAck(Ack::new(
                    p.qos_pid.packet_id().expect("QoS 1 has an id"),
                )))
                .await;
            }
            other => panic!("hop {hop}: expected the PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(Stats::get(&stats.connections_total), 2, "no second CONNECT");
    assert_eq!(Stats::get(&stats.clients_connected), 2);
    assert!(
        connection.close_reason().is_none(),
        "the connection lives on"
    );
}

/// With `listeners.quic.enable_0rtt`, a client holding a session ticket sends its CONNECT
/// in 0-RTT early data; the server accepts the early data and answers with a CONNACK.
#[tokio::test]
async fn zero_rtt_connect_is_accepted_when_enabled() {
    let broker = TestBroker::start_with("quic-0rtt-on", &["listeners.quic.enable_0rtt=true"]).await;
    let tickets = TicketStore::new();
    let endpoint = client_endpoint(early_data_tls(&broker.ca, &tickets));
    first_session(&endpoint, broker.quic, "early-bird").await;
    let ticket = tickets.first().await;
    assert_eq!(ticket, u32::MAX, "the ticket allows 0-RTT (QUIC: u32::MAX)");

    let connecting = endpoint
        .connect(broker.quic, "localhost")
        .expect("connect config");
    let Ok((connection, accepted)) = connecting.into_0rtt() else {
        panic!("a resumable ticket that allows early data must allow into_0rtt");
    };
    let mut s = QuicStream::open(&connection).await;
    // Written before the handshake completes: it leaves in 0-RTT packets.
    s.send(&connect_packet(connect(V5, "early-bird", true, 30)))
        .await;
    let accepted = tokio::time::timeout(WAIT, accepted)
        .await
        .expect("handshake in time");
    assert!(accepted, "the server accepts the early data");
    expect_connack(s.recv().await);
    s.close().await;
}

/// By default (0-RTT off) tickets are still issued, but they allow no early data: the
/// client cannot send its CONNECT in 0-RTT (or, if it tries, the server rejects it) and
/// the session works after the full handshake.
#[tokio::test]
async fn zero_rtt_is_refused_by_default_and_the_full_handshake_still_serves() {
    let broker = TestBroker::start("quic-0rtt-off").await;
    let tickets = TicketStore::new();
    let endpoint = client_endpoint(early_data_tls(&broker.ca, &tickets));
    first_session(&endpoint, broker.quic, "patient").await;
    let ticket = tickets.first().await;
    assert_eq!(ticket, 0, "the ticket allows no early data");

    let connecting = endpoint
        .connect(broker.quic, "localhost")
        .expect("connect config");
    let connection = match connecting.into_0rtt() {
        // What rustls does with a ticket that allows no early data.
        Err(connecting) => tokio::time::timeout(WAIT, connecting)
            .await
            .expect("handshake in time")
            .expect("QUIC handshake"),
        // Had the client sent early data anyway, the server must have rejected it.
        Ok((connection, accepted)) => {
            let mut s = QuicStream::open(&connection).await;
            s.send(&connect_packet(connect(V5, "patient", true, 30)))
                .await;
            let accepted = tokio::time::timeout(WAIT, accepted)
                .await
                .expect("handshake in time");
            assert!(!accepted, "0-RTT is off: early data must be rejected");
            connection
        }
    };
    let mut s = QuicStream::open(&connection).await;
    s.send(&connect_packet(connect(V5, "patient", true, 30)))
        .await;
    expect_connack(s.recv().await);
    s.close().await;
}

/// A client that vanishes (its packets stop, no CONNECTION_CLOSE arrives) is detected by
/// MQTT keep-alive (1 s: the broker gives up after 1.5 s) long before the QUIC idle
/// timeout (30 s by default), and its will is published.
#[tokio::test]
async fn a_vanished_client_is_detected_by_keep_alive_and_its_will_published() {
    let broker = TestBroker::start("quic-vanish").await;
    let mut watcher = RawClient::connect(broker.tcp, V5).await;
    expect_connack(Some(
        watcher.handshake(connect(V5, "watcher", true, 30)).await,
    ));
    watcher.send(&subscribe("will/#", QoS::AtLeastOnce)).await;
    assert!(matches!(watcher.recv().await, Some(Packet::SubAck(_))));

    // quinn closes a connection whose last handle is dropped (an implicit
    // CONNECTION_CLOSE), so "vanishing" is done where it happens in life: on the path.
    let path = Blackhole::start(broker.quic).await;
    let endpoint = client_endpoint(plain_tls(&broker.ca));
    let connection = quic_connect(&endpoint, path.addr).await;
    let mut s = QuicStream::open(&connection).await;
    let mut c = connect(V5, "vanisher", true, 1);
    c.will = Some(Will {
        topic: TopicName::new("will/vanisher").expect("topic"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    s.send(&connect_packet(c)).await;
    expect_connack(s.recv().await);
    // The last packet the broker will hear from this client; timed before it is sent, so
    // the lower bound below holds however late this task runs.
    let gone = Instant::now();
    s.send(&Packet::PingReq).await;
    assert!(matches!(s.recv().await, Some(Packet::PingResp)));
    path.cut();
    drop(s);
    drop(connection);
    drop(endpoint);

    let will = match watcher.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected the will, got {other:?}"),
    };
    let detected = gone.elapsed();
    assert_eq!(will.topic.as_str(), "will/vanisher");
    assert_eq!(will.payload.as_ref(), b"gone");
    eprintln!("vanished client's will published after {detected:?}");
    assert!(
        detected >= Duration::from_millis(1500),
        "not before the keep-alive: {detected:?}"
    );
    assert!(
        detected < Duration::from_secs(10),
        "keep-alive (1.5 s), not the QUIC idle timeout, must detect it: {detected:?}"
    );
}

/// A live client that stays quiet within its MQTT keep-alive (10 s here) keeps its QUIC
/// connection even when that is longer than the endpoint's idle timeout (3 s here, from
/// `keep_alive_interval=1s`): the server's QUIC PINGs keep the path busy, so liveness is
/// MQTT keep-alive's call. The client sends no QUIC keep-alive of its own, as a minimal
/// EMQX-style client may not.
#[tokio::test]
async fn a_quiet_client_within_its_keep_alive_outlives_the_quic_idle_timeout() {
    let broker =
        TestBroker::start_with("quic-quiet", &["listeners.quic.keep_alive_interval=1s"]).await;
    let endpoint = client_endpoint(plain_tls(&broker.ca));
    let connection = quic_connect(&endpoint, broker.quic).await;
    let mut s = QuicStream::open(&connection).await;
    s.send(&connect_packet(connect(V5, "quiet", true, 10)))
        .await;
    expect_connack(s.recv().await);

    // Twice the idle timeout of silence from the client: well within its keep-alive.
    let quiet = Duration::from_secs(6);
    if let Ok(reason) = tokio::time::timeout(quiet, connection.closed()).await {
        panic!("the connection was closed while the client was within its keep-alive: {reason}");
    }
    s.send(&Packet::PingReq).await;
    assert!(matches!(s.recv().await, Some(Packet::PingResp)));
    s.close().await;
}

/// 50 clients, each on its own UDP socket, handshake at once: all get their CONNACK.
#[tokio::test]
async fn a_storm_of_concurrent_handshakes_all_get_connack() {
    const CLIENTS: usize = 50;
    let broker = TestBroker::start("quic-storm").await;
    let ca = broker.ca.clone();
    let server = broker.quic;
    let started = Instant::now();
    let mut storm = JoinSet::new();
    for i in 0..CLIENTS {
        let tls = plain_tls(&ca);
        storm.spawn(async move {
            let t0 = Instant::now();
            let endpoint = client_endpoint(tls);
            let connection = quic_connect(&endpoint, server).await;
            let mut s = QuicStream::open(&connection).await;
            s.send(&connect_packet(connect(
                V5,
                &format!("storm-{i}"),
                true,
                30,
            )))
            .await;
            expect_connack(s.recv().await);
            // Kept open until every client is in, so the count below sees them all.
            (t0.elapsed(), endpoint, connection, s)
        });
    }
    let mut clients = Vec::with_capacity(CLIENTS);
    while let Some(joined) = tokio::time::timeout(WAIT, storm.join_next())
        .await
        .expect("the storm settles in time")
    {
        clients.push(joined.expect("every client gets its CONNACK"));
    }
    let total = started.elapsed();
    assert_eq!(clients.len(), CLIENTS);
    let stats = &broker.server.broker.stats;
    assert_eq!(Stats::get(&stats.clients_connected), CLIENTS as u64);

    let mut latencies: Vec<Duration> = clients.iter().map(|c| c.0).collect();
    latencies.sort();
    eprintln!(
        "{CLIENTS} QUIC handshakes + CONNACK: median {:?}, max {:?}, all in {total:?}",
        latencies[CLIENTS / 2],
        latencies[CLIENTS - 1]
    );
}

/// A client endpoint on an ephemeral loopback port, with `tls` (ALPN set to `mqtt` here).
fn client_endpoint(mut tls: rustls::ClientConfig) -> quinn::Endpoint {
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("TLS 1.3 config");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// TLS trusting the test CA (ring provider), rustls' default resumption, no early data.
fn plain_tls(ca: &std::path::Path) -> rustls::ClientConfig {
    (*tls_client_config(ca)).clone()
}

/// TLS that resumes from `tickets` and sends early data when a ticket allows it.
fn early_data_tls(ca: &std::path::Path, tickets: &TicketStore) -> rustls::ClientConfig {
    let mut tls = plain_tls(ca);
    tls.enable_early_data = true;
    tls.resumption = Resumption::store(Arc::new(tickets.clone()));
    tls
}

async fn quic_connect(endpoint: &quinn::Endpoint, server: SocketAddr) -> quinn::Connection {
    tokio::time::timeout(
        WAIT,
        endpoint
            .connect(server, "localhost")
            .expect("connect config"),
    )
    .await
    .expect("handshake in time")
    .expect("QUIC handshake")
}

/// A full handshake and a clean MQTT session, so the endpoint holds a session ticket.
async fn first_session(endpoint: &quinn::Endpoint, server: SocketAddr, client_id: &str) {
    let connection = quic_connect(endpoint, server).await;
    let mut s = QuicStream::open(&connection).await;
    s.send(&connect_packet(connect(V5, client_id, true, 30)))
        .await;
    expect_connack(s.recv().await);
    s.close().await;
}

/// The client session store of rustls' default resumption (an in-memory cache), noting
/// the `max_early_data_size` of every TLS 1.3 ticket it is given.
#[derive(Debug, Clone)]
struct TicketStore {
    cache: Arc<ClientSessionMemoryCache>,
    early_data_sizes: Arc<watch::Sender<Vec<u32>>>,
}

impl TicketStore {
    fn new() -> TicketStore {
        TicketStore {
            cache: Arc::new(ClientSessionMemoryCache::new(32)),
            early_data_sizes: Arc::new(watch::Sender::new(Vec::new())),
        }
    }

    /// The early data the first ticket allows, once one has arrived (tickets follow the
    /// handshake, so they may land after the CONNACK).
    async fn first(&self) -> u32 {
        let mut seen = self.early_data_sizes.subscribe();
        let sizes = tokio::time::timeout(WAIT, seen.wait_for(|sizes| !sizes.is_empty()))
            .await
            .expect("a session ticket in time")
            .expect("store alive");
        sizes[0]
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.cache.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.cache.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.cache.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let size = value.max_early_data_size();
        self.early_data_sizes.send_modify(|sizes| sizes.push(size));
        self.cache.insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.cache.take_tls13_ticket(server_name)
    }
}

/// A UDP relay between one client and the broker that can be cut: after `cut` every
/// datagram in either direction is dropped, as when a phone leaves coverage.
struct Blackhole {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    relay: JoinHandle<()>,
}

impl Blackhole {
    async fn start(server: SocketAddr) -> Blackhole {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind relay");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind relay");
        back.connect(server).await.expect("relay to the broker");
        let addr = front.local_addr().expect("relay address");
        let cut = Arc::new(AtomicBool::new(false));
        let is_cut = Arc::clone(&cut);
        let client = Mutex::new(None::<SocketAddr>);
        let relay = tokio::spawn(async move {
            let mut up = vec![0u8; 65_536];
            let mut down = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        *client.lock().expect("lock") = Some(from);
                        if !is_cut.load(Ordering::Relaxed) {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    Ok(n) = back.recv(&mut down) => {
                        let to = *client.lock().expect("lock");
                        if let (Some(to), false) = (to, is_cut.load(Ordering::Relaxed)) {
                            let _ = front.send_to(&down[..n], to).await;
                        }
                    }
                    else => return,
                }
            }
        });
        Blackhole { addr, cut, relay }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// One MQTT byte stream over a QUIC bidirectional stream.
struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl QuicStream {
    async fn open(connection: &quinn::Connection) -> QuicStream {
        let (send, recv) = tokio::time::timeout(WAIT, connection.open_bi())
            .await
            .expect("stream credit in time")
            .expect("open stream");
        QuicStream {
            send,
            recv,
            decoder: Decoder::with_version(V5, u32::MAX),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, packet: &Packet) {
        let bytes = encode_to_bytes(packet, V5).expect("encodes");
        tokio::time::timeout(WAIT, self.send.write_all(&bytes))
            .await
            .expect("stream write in time")
            .expect("stream write");
    }

    /// The next packet, or `None` at the end of the stream.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = self.decoder.decode(&mut self.buf).expect("valid packets") {
                    return Some(p);
                }
                let mut chunk = [0u8; 4096];
                match self.recv.read(&mut chunk).await {
                    Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
        })
        .await
        .expect("a packet or the end of the stream in time")
    }

    /// DISCONNECT, then wait for the broker to end the stream.
    async fn close(mut self) {
        self.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            .await;
        let _ = self.send.finish();
        assert!(self.recv().await.is_none(), "nothing after DISCONNECT");
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

fn connect_packet(c: twinmq::protocol::Connect) -> Packet {
    Packet::Connect(Box::new(c))
}

fn expect_connack(packet: Option<Packet>) -> ConnAck {
    match packet {
        Some(Packet::ConnAck(c)) if c.reason == ReasonCode::Success => c,
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

fn publish(topic: &str, qos_pid: QosPid, payload: &'static str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain: false,
        topic: TopicName::new(topic).expect("topic"),
        payload: Bytes::from_static(payload.as_bytes()),
        properties: Properties::default(),
    })
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(
            TopicFilter::new(filter).expect("filter"),
            SubscriptionOptions::qos(qos),
        )],
        properties: Properties::default(),
    })
}
