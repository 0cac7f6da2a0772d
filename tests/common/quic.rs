//! A quinn client for the QUIC tests: an endpoint trusting the test CA, and one MQTT byte
//! stream over a bidirectional QUIC stream.

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use twinmq::protocol::codec::{encode_to_bytes, Decoder};
use twinmq::protocol::{Packet, ProtocolVersion};

use super::{tls_client_config, TestBroker, WAIT};

/// A client endpoint on 127.0.0.1 trusting `ca`, offering `alpn`; `stream_window` sets the
/// per-stream receive window (to make a stream block under flow control).
pub fn client_endpoint(ca: &Path, alpn: &[&str], stream_window: Option<u32>) -> quinn::Endpoint {
    let mut tls = (*tls_client_config(ca)).clone();
    tls.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("TLS 1.3 config");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    if let Some(window) = stream_window {
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(window.into());
        config.transport_config(Arc::new(transport));
    }
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(config);
    endpoint
}

/// Connects to the broker's QUIC listener as `localhost`.
pub async fn connect(broker: &TestBroker, endpoint: &quinn::Endpoint) -> quinn::Connection {
    tokio::time::timeout(
        WAIT,
        endpoint
            .connect(broker.quic, "localhost")
            .expect("connect config"),
    )
    .await
    .expect("handshake in time")
    .expect("QUIC handshake")
}

/// One MQTT v5 byte stream over a QUIC bidirectional stream.
pub struct QuicStream {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl QuicStream {
    pub async fn open(connection: &quinn::Connection) -> QuicStream {
        let (send, recv) = connection.open_bi().await.expect("open stream");
        QuicStream {
            send,
            recv,
            decoder: Decoder::with_version(ProtocolVersion::V5, u32::MAX),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, packet: &Packet) {
        let bytes = encode_to_bytes(packet, ProtocolVersion::V5).expect("test packet encodes");
        self.send.write_all(&bytes).await.expect("stream write");
    }

    /// The next packet, or `None` at the end of the stream.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = self.decoder.decode(&mut self.buf).expect("valid packets") {
                    return Some(p);
                }
                let mut chunk = [0u8; 8192];
                match self.recv.read(&mut chunk).await {
                    Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
        })
        .await
        .expect("a packet or the end of the stream in time")
    }

    /// The next packet; the stream must not end.
    pub async fn expect(&mut self) -> Packet {
        self.recv().await.expect("the stream is still open")
    }
}
