//! The ack-burst schedule of tests/ack_wedge.rs, live: bursts of QoS 1 publishes from one
//! client while the broker's writes are short and stalled (below TLS) or its datagrams are
//! lost (below quinn). Every PUBACK must arrive; nothing may wedge.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{connect, tls_client_config, TestBroker, WAIT};
use twinmq::fault::schedule::Rng;
use twinmq::fault::stream::StreamFaults;
use twinmq::fault::udp::{FaultyUdpSocket, UdpFaults};
use twinmq::fault::FaultPlan;
use twinmq::protocol::codec::{encode_to_bytes, Decoder};
use twinmq::protocol::{Packet, PacketId, Properties, ProtocolVersion, Publish, QosPid, TopicName};

const V5: ProtocolVersion = ProtocolVersion::V5;
const MESSAGES: u16 = 300;

fn publish(id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(PacketId::new(id).expect("non-zero")),
        retain: false,
        topic: TopicName::new("burst/x").expect("topic"),
        payload: Bytes::from(format!("message {id}")),
        properties: Properties::default(),
    })
}

/// Sends `MESSAGES` QoS 1 publishes in seeded bursts over `io`, reading acks between
/// bursts; returns the packet ids acknowledged.
async fn bursts<S>(io: &mut S, seed: u64) -> Vec<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut decoder = Decoder::with_version(V5, u32::MAX);
    let mut buf = BytesMut::new();
    let bytes = encode_to_bytes(
        &Packet::Connect(Box::new(connect(V5, "burster", true, 60))),
        V5,
    )
    .expect("encodes");
    io.write_all(&bytes).await.expect("CONNECT");
    let mut rng = Rng::new(seed);
    let mut acked = Vec::new();
    let mut next = 1u16;
    let outcome = tokio::time::timeout(WAIT * 3, async {
        loop {
            // A burst: up to 24 publishes written back to back (receive maximum is 1024).
            let burst = 1 + rng.below(24) as u16;
            let mut out = Vec::new();
            for _ in 0..burst {
                if next <= MESSAGES {
                    out.extend_from_slice(&encode_to_bytes(&publish(next), V5).expect("encodes"));
                    next += 1;
                }
            }
            if !out.is_empty() {
                io.write_all(&out).await.expect("write burst");
            }
            // Read whatever acks are ready (at least one read).
            let n = io.read_buf(&mut buf).await.expect("read");
            assert!(n > 0, "the broker closed the connection");
            while let Some(p) = decoder.decode(&mut buf).expect("valid packets") {
                if let Packet::PubAck(a) = p {
                    acked.push(a.packet_id.get());
                }
            }
            if acked.len() == usize::from(MESSAGES) {
                return;
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "acks stopped: {} of {MESSAGES} arrived (a wedge)",
        acked.len()
    );
    acked
}

#[tokio::test]
async fn every_ack_arrives_over_tls_with_short_and_stalled_writes_below_tls() {
    let plan = FaultPlan {
        seed: 11,
        stream: StreamFaults {
            max_write: Some(7),
            stall_after: Some(2_000),
            stall_for: Some(Duration::from_millis(300)),
            ..StreamFaults::default()
        },
        ..FaultPlan::default()
    };
    let broker = TestBroker::start_with_faults("faults-tls", &[], &plan).await;
    let tcp = tokio::net::TcpStream::connect(broker.tls)
        .await
        .expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(&broker.ca));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake through the faults");
    let acked = bursts(&mut tls, 11).await;
    let expected: Vec<u16> = (1..=MESSAGES).collect();
    assert_eq!(acked, expected, "every PUBACK, in order");
}

#[tokio::test]
async fn every_ack_arrives_over_quic_with_ten_percent_loss_both_ways() {
    let plan = FaultPlan {
        seed: 12,
        udp: UdpFaults {
            loss: 0.10,
            delay: None,
        },
        ..FaultPlan::default()
    };
    let broker = TestBroker::start_with_faults("faults-quic", &[], &plan).await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let faulty = FaultyUdpSocket::wrap(
        socket,
        UdpFaults {
            loss: 0.10,
            delay: None,
        },
        13,
    )
    .expect("wrap");
    let stats = faulty.stats.clone();
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        faulty,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("endpoint");
    let mut tls = (*tls_client_config(&broker.ca)).clone();
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("TLS 1.3");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = tokio::time::timeout(
        WAIT,
        endpoint.connect(broker.quic, "localhost").expect("config"),
    )
    .await
    .expect("in time")
    .expect("handshake through loss");
    let (send, recv) = connection.open_bi().await.expect("stream");
    let mut io = tokio::io::join(recv, send);
    let acked = bursts(&mut io, 12).await;
    let expected: Vec<u16> = (1..=MESSAGES).collect();
    assert_eq!(acked, expected, "every PUBACK, in order");
    assert!(
        stats.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the client really lost datagrams"
    );
}
