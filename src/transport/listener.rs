//! TCP and TLS accept loops.
//!
//! The loop only accepts: it takes a connection permit (refusing the socket when the
//! maximum is reached), sets `TCP_NODELAY` and spawns a task. The TLS handshake runs in
//! that task under the handshake timeout, so a slow or silent client never holds up the
//! loop (rumqttd awaited handshakes inline; rmqtt did the same for QUIC).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::fault::stream::{FaultyStream, StreamFaults};

/// Which transport a connection came in on; shown in every log line of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Tcp,
    Tls,
    /// QUIC: single-stream until the client opens a data stream.
    Quic,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Quic => "quic",
        })
    }
}

/// What the broker learns about a connection from its transport.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub transport: TransportKind,
    pub peer: SocketAddr,
    /// The client certificate the TLS layer verified (mTLS), DER-encoded.
    pub client_cert: Option<rustls_pki_types::CertificateDer<'static>>,
}

/// A byte stream of any transport.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub type BoxedIo = Box<dyn Io>;

/// An accepted, handshaken connection.
pub enum Accepted {
    /// One byte stream: TCP or TLS.
    Stream(BoxedIo),
    /// A QUIC connection and the first bidirectional stream the client opened (the
    /// control stream); further streams are accepted by the driver.
    Quic {
        connection: quinn::Connection,
        control: (quinn::SendStream, quinn::RecvStream),
    },
}

/// Serves one accepted connection until it ends.
pub trait Service: Send + Sync + 'static {
    fn serve(&self, accepted: Accepted, info: PeerInfo)
        -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Limits shared by a broker's listeners.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connections: Arc<Semaphore>,
    pub handshake_timeout: Duration,
    /// Faults injected below TLS on every accepted connection (a fault plan); `None` in
    /// normal operation.
    pub stream_faults: Option<StreamFaults>,
}

/// Accepts plain TCP connections until `shutdown` turns true.
pub async fn run_tcp(
    listener: TcpListener,
    service: Arc<dyn Service>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    accept_loop(
        listener,
        limits,
        shutdown,
        TransportKind::Tcp,
        move |io, info, _| {
            let service = service.clone();
            async move { service.serve(Accepted::Stream(io), info).await }
        },
    )
    .await;
}

/// Accepts TLS connections until `shutdown` turns true. The handshake runs in the
/// connection's own task under `limits.handshake_timeout`.
pub async fn run_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: Arc<dyn Service>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    accept_loop(
        listener,
        limits,
        shutdown,
        TransportKind::Tls,
        move |io, info, handshake_timeout| {
            let service = service.clone();
            let acceptor = acceptor.clone();
            async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => {
                        let mut info = info;
                        info.client_cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map(|cert| cert.clone().into_owned());
                        service.serve(Accepted::Stream(Box::new(tls)), info).await
                    }
                    Ok(Err(err)) => {
                        tracing::info!(peer = %info.peer, transport = %info.transport, error = %err, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::info!(peer = %info.peer, transport = %info.transport, "TLS handshake timed out");
                    }
                }
            }
        },
    )
    .await;
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    kind: TransportKind,
    handle: F,
) where
    F: Fn(BoxedIo, PeerInfo, Duration) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(transport = %kind, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, transport = %kind, "connection refused: max_connections reached");
                    drop(tcp);
                    continue;
                };
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
                }
                let info = PeerInfo {
                    transport: kind,
                    peer,
                    client_cert: None,
                };
                let io: BoxedIo = match &limits.stream_faults {
                    Some(faults) => Box::new(FaultyStream::new(tcp, faults.clone())),
                    None => Box::new(tcp),
                };
                let task = handle(io, info, limits.handshake_timeout);
                tokio::spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}
