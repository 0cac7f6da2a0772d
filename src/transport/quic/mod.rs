//! MQTT over QUIC (quinn), ALPN `mqtt`, the conventions of EMQX's listener and its clients:
//! client-initiated bidirectional streams, UDP port 14567 by default.
//!
//! ```text
//!   client                                   twinmq
//!   ──────                                   ──────
//!   stream 0 (bidi) ── CONNECT ... ───────►  control stream: the whole session in
//!                   ◄── CONNACK ... ───────  single-stream mode; CONNECT, PINGREQ,
//!                                            DISCONNECT, AUTH in multi-stream mode
//!   stream 4 (bidi) ── SUBSCRIBE a/# ─────►  data stream: SUBACK here, and every PUBLISH
//!                   ◄── SUBACK, PUBLISH ───  for a/# goes out here (acks expected here)
//!   stream 8 (bidi) ── PUBLISH b/1 ───────►  data stream: PUBACK here
//! ```
//!
//! The accept loop only accepts: each incoming connection is handshaken in its own task
//! under the handshake timeout. The endpoint's UDP buffers are enlarged (a connection
//! storm overflows the default ones and stalls handshakes for a second).

pub mod multi;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use serve::serve_connection;

use super::listener::{Limits, Service};
use crate::config::{Congestion, QuicListenerSettings};
use crate::fault::udp::{FaultyUdpSocket, UdpFaults};

/// Why the QUIC endpoint could not be built.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("QUIC TLS configuration: {0}")]
    Crypto(String),
    #[error("cannot bind the QUIC endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid QUIC setting {key}: {reason}")]
    Setting { key: &'static str, reason: String },
}

/// Builds the server endpoint: TLS 1.3 crypto from `crypto`, transport limits from
/// `settings`, migration on, UDP buffers enlarged.
pub fn endpoint(
    settings: &QuicListenerSettings,
    crypto: Arc<rustls::ServerConfig>,
    faults: Option<(UdpFaults, u64)>,
) -> Result<quinn::Endpoint, QuicError> {
    let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
    server.transport_config(Arc::new(transport_config(settings)?));
    // Clients keep their session across NAT rebinding and network changes.
    server.migration(true);
    let socket = udp_socket(
        settings.bind,
        settings.socket_receive_buffer,
        settings.socket_send_buffer,
    )
    .map_err(|source| QuicError::Bind {
        addr: settings.bind,
        source,
    })?;
    let bind_error = |source| QuicError::Bind {
        addr: settings.bind,
        source,
    };
    match faults {
        None => quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error),
        Some((faults, seed)) => {
            let socket = FaultyUdpSocket::wrap(socket, faults, seed).map_err(bind_error)?;
            quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(bind_error)
        }
    }
}

/// The transport parameters both sides of a twinmq QUIC connection use.
pub fn transport_config(
    settings: &QuicListenerSettings,
) -> Result<quinn::TransportConfig, QuicError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = settings.handshake_idle_timeout();
    let idle = quinn::IdleTimeout::try_from(idle).map_err(|e| QuicError::Setting {
        key: "listeners.quic.idle_timeout",
        reason: e.to_string(),
    })?;
    transport.max_idle_timeout(Some(idle));
    // PINGs keep a live but quiet client's path (and its NAT binding) from idling out, so
    // MQTT keep-alive, not the QUIC idle timeout, decides when a client is gone.
    transport.keep_alive_interval(Some(settings.keep_alive_interval));
    transport.max_concurrent_bidi_streams(settings.max_bidi_streams.into());
    // MQTT over QUIC uses bidirectional streams only.
    transport.max_concurrent_uni_streams(0u8.into());
    transport.stream_receive_window(varint(
        settings.stream_receive_window,
        "listeners.quic.stream_receive_window",
    )?);
    transport.receive_window(varint(
        settings.receive_window,
        "listeners.quic.receive_window",
    )?);
    match settings.congestion {
        Congestion::Cubic => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Congestion::Bbr => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default())),
        Congestion::NewReno => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
    };
    Ok(transport)
}

fn varint(value: u64, key: &'static str) -> Result<quinn::VarInt, QuicError> {
    quinn::VarInt::from_u64(value).map_err(|e| QuicError::Setting {
        key,
        reason: e.to_string(),
    })
}

/// A UDP socket with the given buffer sizes (the kernel may cap them; the effective sizes
/// are logged).
pub fn udp_socket(
    bind: SocketAddr,
    recv_buffer: usize,
    send_buffer: usize,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    if let Err(err) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::warn!(error = %err, "cannot set the UDP receive buffer size");
    }
    if let Err(err) = socket.set_send_buffer_size(send_buffer) {
        tracing::warn!(error = %err, "cannot set the UDP send buffer size");
    }
    socket.bind(&bind.into())?;
    tracing::debug!(
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    Ok(socket.into())
}

/// Accepts QUIC connections until `shutdown` turns true; each is handshaken and served in
/// its own task.
pub async fn run(
    endpoint: quinn::Endpoint,
    service: Arc<dyn Service>,
    limits: Limits,
    enable_0rtt: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { return };
                let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
                    tracing::warn!(peer = %incoming.remote_address(), transport = "quic", "connection refused: max_connections reached");
                    incoming.refuse();
                    continue;
                };
                let service = Arc::clone(&service);
                let timeout = limits.handshake_timeout;
                tokio::spawn(async move {
                    handshake_and_serve(incoming, service, timeout, enable_0rtt).await;
                    drop(permit);
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    // Connections end through the broker's shutdown; stop accepting.
                    endpoint.set_server_config(None);
                    return;
                }
            }
        }
    }
}

async fn handshake_and_serve(
    incoming: quinn::Incoming,
    service: Arc<dyn Service>,
    timeout: Duration,
    enable_0rtt: bool,
) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => {
            log_handshake_error(peer, &err);
            return;
        }
    };
    let connection = if enable_0rtt {
        // With 0-RTT on, the connection (and a CONNECT in early data) is served at once;
        // the handshake must still finish within the timeout or the connection is closed.
        match connecting.into_0rtt() {
            Ok((connection, accepted)) => {
                let watched = connection.clone();
                tokio::spawn(async move {
                    if tokio::time::timeout(timeout, accepted).await.is_err() {
                        tracing::info!(%peer, transport = "quic", "QUIC handshake timed out");
                        watched.close(0u32.into(), b"handshake timeout");
                    }
                });
                Ok(connection)
            }
            Err(connecting) => finish_handshake(peer, connecting, timeout).await,
        }
    } else {
        finish_handshake(peer, connecting, timeout).await
    };
    if let Ok(connection) = connection {
        serve_connection(connection, service, timeout).await;
    }
}

async fn finish_handshake(
    peer: SocketAddr,
    connecting: quinn::Connecting,
    timeout: Duration,
) -> Result<quinn::Connection, ()> {
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => {
            log_handshake_error(peer, &err);
            Err(())
        }
        Err(_) => {
            tracing::info!(%peer, transport = "quic", "QUIC handshake timed out");
            Err(())
        }
    }
}

fn log_handshake_error(peer: SocketAddr, err: &quinn::ConnectionError) {
    let text = err.to_string();
    if text.contains("no_application_protocol")
        || text.contains("NoApplicationProtocol")
        || text.contains("120")
    {
        tracing::warn!(%peer, transport = "quic", error = %err, "QUIC handshake failed: ALPN mismatch (the client must offer \"mqtt\")");
    } else {
        tracing::info!(%peer, transport = "quic", error = %err, "QUIC handshake failed");
    }
}
