//! Dialing: resolve the host, open the transport (TCP, TLS or QUIC), send CONNECT and wait
//! for CONNACK, all under the connect timeout. Failures become the typed errors a user can
//! act on: refused, unknown CA, wrong name, ALPN mismatch, CONNACK refusal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::error::{CertificateProblem, ClientError};
use super::lane::{stream_error, BoxRead, BoxWrite};
use super::options::{ClientOptions, Transport};
use super::tls::{self, TlsSetup, VerifyLog};
use crate::config::tls::MQTT_ALPN;
use crate::protocol::codec::{encode_to_bytes, Decoder};
use crate::protocol::{ConnAck, Connect, Packet};

/// Interval of QUIC PING frames: keeps NAT bindings and an idle path alive between MQTT
/// keep-alives (the broker's default too).
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A connected, handshaken MQTT byte stream (the control stream over multi-stream QUIC).
pub(crate) struct Link {
    pub connack: ConnAck,
    pub read: BoxRead,
    pub write: BoxWrite,
    /// Bytes read past the CONNACK.
    pub leftover: BytesMut,
    pub quic: Option<quinn::Connection>,
}

/// Everything needed to dial, built once per client: TLS configuration, and for QUIC the
/// endpoint (kept across reconnections, and rebindable).
pub(crate) struct Dialer {
    options: ClientOptions,
    server_name: String,
    tls: Option<TlsSetup>,
    quic: Option<QuicSetup>,
}

struct QuicSetup {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    ipv6: bool,
}

impl Dialer {
    pub fn new(options: &ClientOptions) -> Result<Dialer, ClientError> {
        let server_name = options
            .tls
            .server_name
            .clone()
            .unwrap_or_else(|| options.host.clone());
        let (tls, quic) = match options.transport {
            Transport::Tcp => (None, None),
            Transport::Tls => {
                let alpn = options.tls.alpn.clone().unwrap_or_default();
                let setup = tls::client_config(&options.tls, &alpn, false)?;
                tls::server_name(&server_name)?;
                (Some(setup), None)
            }
            Transport::Quic => {
                let alpn = options
                    .tls
                    .alpn
                    .clone()
                    .unwrap_or_else(|| vec![MQTT_ALPN.to_string()]);
                let setup = tls::client_config(&options.tls, &alpn, true)?;
                tls::server_name(&server_name)?;
                let quic = quic_setup(options, &setup)?;
                (Some(setup), Some(quic))
            }
        };
        Ok(Dialer {
            options: options.clone(),
            server_name,
            tls,
            quic,
        })
    }

    pub fn endpoint(&self) -> Option<&quinn::Endpoint> {
        self.quic.as_ref().map(|q| &q.endpoint)
    }

    /// Moves the QUIC endpoint to a new local UDP socket (same address family, new port):
    /// what a phone does moving from Wi-Fi to cellular. Open connections migrate.
    pub fn rebind(&self) -> Result<SocketAddr, ClientError> {
        let quic = self.quic.as_ref().ok_or(ClientError::NotQuic)?;
        let socket = udp_socket(quic.ipv6).map_err(|e| ClientError::Rebind(Arc::new(e)))?;
        quic.endpoint
            .rebind(socket)
            .map_err(|e| ClientError::Rebind(Arc::new(e)))?;
        quic.endpoint
            .local_addr()
            .map_err(|e| ClientError::Rebind(Arc::new(e)))
    }

    /// One connection attempt, bounded by the connect timeout as a whole.
    pub async fn dial(&self, connect: &Connect) -> Result<Link, ClientError> {
        let timeout = self.options.connect_timeout;
        let addrs = tokio::time::timeout(timeout, self.resolve())
            .await
            .map_err(|_| ClientError::Resolve {
                host: self.options.host.clone(),
                reason: format!("no answer within {timeout:?}"),
            })??;
        let Some(&first) = addrs.first() else {
            return Err(ClientError::Resolve {
                host: self.options.host.clone(),
                reason: "no address".into(),
            });
        };
        if let Some(tls) = &self.tls {
            tls.rejections.clear();
        }
        match tokio::time::timeout(timeout, self.dial_addrs(&addrs, connect)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                addr: first,
                timeout,
                transport: self.options.transport.name(),
            }),
        }
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, ClientError> {
        let host = self
            .options
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = self.options.port_or_default();
        let resolve_error = |reason: String| ClientError::Resolve {
            host: host.to_string(),
            reason,
        };
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| resolve_error(e.to_string()))?
            .collect();
        if let Some(quic) = &self.quic {
            if !quic.ipv6 {
                addrs.retain(SocketAddr::is_ipv4);
            }
        }
        if addrs.is_empty() {
            return Err(resolve_error("no usable address".into()));
        }
        Ok(addrs)
    }

    async fn dial_addrs(
        &self,
        addrs: &[SocketAddr],
        connect: &Connect,
    ) -> Result<Link, ClientError> {
        match (&self.quic, &self.tls) {
            (Some(quic), Some(tls)) => self.dial_quic(quic, tls, addrs, connect).await,
            (None, tls) => self.dial_tcp(tls.as_ref(), addrs, connect).await,
            (Some(_), None) => Err(ClientError::InvalidOption(
                "QUIC without a TLS configuration".into(),
            )),
        }
    }

    /// TCP addresses are tried in order (a refused one fails at once); once one accepts,
    /// its TLS and MQTT handshakes decide.
    async fn dial_tcp(
        &self,
        tls: Option<&TlsSetup>,
        addrs: &[SocketAddr],
        connect: &Connect,
    ) -> Result<Link, ClientError> {
        let mut last = None;
        for &addr in addrs {
            let tcp = match TcpStream::connect(addr).await {
                Ok(tcp) => tcp,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last = Some(ClientError::ConnectionRefused { addr });
                    continue;
                }
                Err(e) => {
                    last = Some(ClientError::Connect {
                        addr,
                        source: Arc::new(e),
                    });
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls else {
                let (read, write) = tcp.into_split();
                return self
                    .handshake(Box::new(read), Box::new(write), None, connect)
                    .await;
            };
            let name = tls::server_name(&self.server_name)?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| self.tls_error(addr, tls, e))?;
            let (read, write) = tokio::io::split(stream);
            return self
                .handshake(Box::new(read), Box::new(write), None, connect)
                .await
                .map_err(|e| match e {
                    // TLS 1.3 reports a rejected client certificate after the handshake.
                    ClientError::Io(io) => match Arc::try_unwrap(io) {
                        Ok(io) => self.tls_error(addr, tls, io),
                        Err(io) => ClientError::Io(io),
                    },
                    other => other,
                });
        }
        Err(last.unwrap_or(ClientError::Resolve {
            host: self.options.host.clone(),
            reason: "no address".into(),
        }))
    }

    /// QUIC handshakes start to every address at once (`localhost` is often `::1` first,
    /// and a silent UDP port only shows as a timeout); the first to answer decides.
    async fn dial_quic(
        &self,
        quic: &QuicSetup,
        tls: &TlsSetup,
        addrs: &[SocketAddr],
        connect: &Connect,
    ) -> Result<Link, ClientError> {
        let Some(&first) = addrs.first() else {
            return Err(ClientError::Resolve {
                host: self.options.host.clone(),
                reason: "no address".into(),
            });
        };
        let mut attempts = JoinSet::new();
        for &addr in addrs {
            let connecting = quic
                .endpoint
                .connect_with(quic.config.clone(), addr, &self.server_name)
                .map_err(|e| ClientError::Quic {
                    addr,
                    reason: e.to_string(),
                })?;
            attempts.spawn(async move { (addr, connecting.await) });
        }
        let mut timed_out = None;
        let (addr, connection) = loop {
            match attempts.join_next().await {
                Some(Ok((addr, Ok(connection)))) => break (addr, connection),
                Some(Ok((addr, Err(quinn::ConnectionError::TimedOut)))) => {
                    timed_out = Some(addr);
                }
                Some(Ok((addr, Err(err)))) => {
                    return Err(self.quic_error(addr, err, &tls.rejections))
                }
                Some(Err(join)) => {
                    return Err(ClientError::Quic {
                        addr: first,
                        reason: join.to_string(),
                    })
                }
                None => {
                    return Err(ClientError::Timeout {
                        addr: timed_out.unwrap_or(first),
                        timeout: self.options.connect_timeout,
                        transport: "quic",
                    })
                }
            }
        };
        drop(attempts);
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| self.quic_error(addr, e, &tls.rejections))?;
        self.handshake(
            Box::new(recv),
            Box::new(send),
            Some(connection.clone()),
            connect,
        )
        .await
        .map_err(|e| match e {
            ClientError::QuicLost(err) => self.quic_error(addr, err, &tls.rejections),
            other => other,
        })
    }

    /// CONNECT, then the first packet must be CONNACK.
    async fn handshake(
        &self,
        mut read: BoxRead,
        mut write: BoxWrite,
        quic: Option<quinn::Connection>,
        connect: &Connect,
    ) -> Result<Link, ClientError> {
        let version = connect.protocol;
        let bytes = encode_to_bytes(&Packet::Connect(Box::new(connect.clone())), version)
            .map_err(ClientError::Encode)?;
        write.write_all(&bytes).await.map_err(stream_error)?;
        write.flush().await.map_err(stream_error)?;
        let mut decoder = Decoder::with_version(version, self.options.max_packet_size);
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if let Some(packet) = decoder.decode(&mut buf).map_err(ClientError::Decode)? {
                return match packet {
                    Packet::ConnAck(connack) if connack.reason.is_error() => {
                        Err(ClientError::Refused {
                            reason: connack.reason,
                            reason_string: connack.properties.reason_string.map(|s| s.to_string()),
                        })
                    }
                    Packet::ConnAck(connack) => Ok(Link {
                        connack,
                        read,
                        write,
                        leftover: buf,
                        quic,
                    }),
                    Packet::Disconnect(d) => Err(ClientError::ServerDisconnect {
                        reason: d.reason,
                        reason_string: d.properties.reason_string.map(|s| s.to_string()),
                    }),
                    other => Err(ClientError::Protocol(format!(
                        "expected CONNACK, got {:?}",
                        other.packet_type()
                    ))),
                };
            }
            match read.read_buf(&mut buf).await {
                Ok(0) => return Err(ClientError::ConnectionClosed),
                Ok(_) => {}
                Err(e) => return Err(stream_error(e)),
            }
        }
    }

    /// The broker's certificate, as our verifier rejected it during the handshake (the
    /// TLS or QUIC error itself only says the handshake failed).
    fn rejected_certificate(&self, log: &VerifyLog) -> Option<ClientError> {
        let problem = log
            .take()
            .as_ref()
            .and_then(CertificateProblem::from_rustls)?;
        Some(ClientError::Certificate {
            server: self.server_name.clone(),
            problem,
        })
    }

    fn tls_error(&self, addr: SocketAddr, tls: &TlsSetup, err: std::io::Error) -> ClientError {
        if let Some(rejected) = self.rejected_certificate(&tls.rejections) {
            return rejected;
        }
        let Some(rustls_err) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return stream_error(err);
        };
        if let Some(problem) = CertificateProblem::from_rustls(rustls_err) {
            return ClientError::Certificate {
                server: self.server_name.clone(),
                problem,
            };
        }
        match rustls_err {
            rustls::Error::NoApplicationProtocol
            | rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
                ClientError::AlpnMismatch {
                    addr,
                    alpn: self.offered_alpn(),
                }
            }
            rustls::Error::AlertReceived(alert) if is_client_cert_alert(u8::from(*alert)) => {
                ClientError::ClientCertificateRejected {
                    addr,
                    alert: format!("{alert:?}"),
                }
            }
            other => ClientError::Tls {
                addr,
                reason: other.to_string(),
            },
        }
    }

    /// Turns a QUIC connection error into what went wrong, in TLS terms where it was TLS.
    fn quic_error(
        &self,
        addr: SocketAddr,
        err: quinn::ConnectionError,
        log: &VerifyLog,
    ) -> ClientError {
        let alpn_alert =
            quinn::TransportErrorCode::crypto(u8::from(AlertDescription::NoApplicationProtocol));
        if let Some(rejected) = self.rejected_certificate(log) {
            return rejected;
        }
        match err {
            quinn::ConnectionError::ConnectionClosed(close) if close.error_code == alpn_alert => {
                ClientError::AlpnMismatch {
                    addr,
                    alpn: self.offered_alpn(),
                }
            }
            quinn::ConnectionError::TransportError(te) if te.code == alpn_alert => {
                ClientError::AlpnMismatch {
                    addr,
                    alpn: self.offered_alpn(),
                }
            }
            quinn::ConnectionError::ConnectionClosed(close)
                if crypto_alert(close.error_code).is_some_and(is_client_cert_alert) =>
            {
                ClientError::ClientCertificateRejected {
                    addr,
                    alert: format!("{:?}", close.error_code),
                }
            }
            quinn::ConnectionError::TransportError(te) if crypto_alert(te.code).is_some() => {
                ClientError::Tls {
                    addr,
                    reason: te.reason,
                }
            }
            quinn::ConnectionError::TimedOut => ClientError::Timeout {
                addr,
                timeout: self.options.connect_timeout,
                transport: "quic",
            },
            other => ClientError::Quic {
                addr,
                reason: other.to_string(),
            },
        }
    }

    fn offered_alpn(&self) -> String {
        match &self.options.tls.alpn {
            Some(alpn) => alpn.join(","),
            None if self.options.transport == Transport::Quic => MQTT_ALPN.to_string(),
            None => String::new(),
        }
    }
}

/// The TLS alert inside a QUIC CRYPTO_ERROR code (0x100 + alert).
fn crypto_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let raw = u64::from(code);
    (0x100..0x200).contains(&raw).then(|| (raw - 0x100) as u8)
}

/// Alerts a server sends when it does not accept the client's certificate (or its absence).
fn is_client_cert_alert(alert: u8) -> bool {
    [
        AlertDescription::CertificateRequired,
        AlertDescription::BadCertificate,
        AlertDescription::UnknownCA,
        AlertDescription::CertificateUnknown,
        AlertDescription::CertificateExpired,
        AlertDescription::AccessDenied,
    ]
    .into_iter()
    .any(|a| u8::from(a) == alert)
}

fn quic_setup(options: &ClientOptions, tls: &TlsSetup) -> Result<QuicSetup, ClientError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::clone(&tls.config))
        .map_err(|e| ClientError::TlsConfig(format!("QUIC needs TLS 1.3: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // MQTT keep-alive decides liveness; the QUIC idle timeout is a backstop above it.
    let idle = options
        .keep_alive
        .saturating_mul(2)
        .max(Duration::from_secs(30));
    let idle = quinn::IdleTimeout::try_from(idle)
        .map_err(|e| ClientError::InvalidOption(format!("QUIC idle timeout: {e}")))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(QUIC_KEEP_ALIVE));
    // The broker never opens streams towards a client (DESIGN §8).
    transport.max_concurrent_bidi_streams(0u8.into());
    transport.max_concurrent_uni_streams(0u8.into());
    config.transport_config(Arc::new(transport));
    // Dual-stack where the system has IPv6, so `localhost` works whichever way it resolves.
    let (socket, ipv6) = match udp_socket(true) {
        Ok(socket) => (socket, true),
        Err(_) => (
            udp_socket(false).map_err(|e| ClientError::Io(Arc::new(e)))?,
            false,
        ),
    };
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| ClientError::Io(Arc::new(e)))?;
    Ok(QuicSetup {
        endpoint,
        config,
        ipv6,
    })
}

/// A UDP socket on an ephemeral port of the unspecified address (dual-stack for IPv6).
fn udp_socket(ipv6: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = if ipv6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if ipv6 {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
