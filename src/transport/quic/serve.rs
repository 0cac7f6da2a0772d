//! One QUIC connection: its first bidirectional stream is the control stream of the MQTT
//! session; the driver ([`super::multi`]) accepts further streams as data streams.

use std::sync::Arc;
use std::time::Duration;

use crate::transport::listener::{Accepted, PeerInfo, Service, TransportKind};

/// How long a closing connection waits for the client to close first, so the last frames
/// written on the stream (a DISCONNECT) are delivered rather than discarded.
const LINGER: Duration = Duration::from_secs(2);

/// Serves a handshaken QUIC connection: waits (up to `stream_wait`) for the client to
/// open its first bidirectional stream and runs the MQTT session over it.
pub async fn serve_connection(
    connection: quinn::Connection,
    service: Arc<dyn Service>,
    stream_wait: Duration,
) {
    let peer = connection.remote_address();
    let (send, recv) = match tokio::time::timeout(stream_wait, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(err)) => {
            tracing::info!(%peer, transport = "quic", error = %err, "connection ended before its first stream");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, transport = "quic", "no stream opened in time");
            connection.close(0u32.into(), b"no stream");
            return;
        }
    };
    let info = PeerInfo {
        transport: TransportKind::Quic,
        peer,
        client_cert: connection
            .peer_identity()
            .and_then(|identity| {
                identity
                    .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|certs| certs.first().cloned()),
    };
    let accepted = Accepted::Quic {
        connection: connection.clone(),
        control: (send, recv),
    };
    service.serve(accepted, info).await;
    let _ = tokio::time::timeout(LINGER, connection.closed()).await;
    connection.close(0u32.into(), b"");
}
