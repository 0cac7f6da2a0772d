//! A running broker: the [`Broker`] and its listeners, assembled from a [`Config`]. Used by
//! `twinmq serve` and by the integration tests (which bind ephemeral ports).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::broker::auth::{Acl, AuthError, Authenticator};
use crate::broker::{Broker, BrokerConfig, BrokerService};
use crate::config::{self, Config, ConfigError};
use crate::fault::udp::UdpFaults;
use crate::fault::FaultPlan;
use crate::store::{
    Durability as StoreDurability, GroupCommitConfig, GroupCommitter, Now, Recovered, Store,
    StoreError, StoreOptions,
};
use crate::transport::listener::{self, Limits, Service};
use crate::transport::quic;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Quic(#[from] quic::QuicError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot bind {key} to {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started broker with its bound addresses.
pub struct Server {
    pub broker: Arc<Broker>,
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    /// The QUIC endpoint's UDP address.
    pub quic_addr: Option<SocketAddr>,
    /// The development CA, when the TLS listener uses generated certificates.
    pub dev_ca: Option<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every enabled listener and starts accepting.
    pub async fn start(config: &Config) -> Result<Server, ServerError> {
        Server::start_with_faults(config, &FaultPlan::default()).await
    }

    /// As [`Server::start`], with the faults of `plan` injected at the IO seams: below TLS
    /// on accepted TCP/TLS connections, below quinn on the QUIC endpoint's socket.
    pub async fn start_with_faults(
        config: &Config,
        plan: &FaultPlan,
    ) -> Result<Server, ServerError> {
        if !plan.is_empty() {
            tracing::warn!(
                ?plan,
                "FAULT INJECTION IS ON: this broker misbehaves on purpose"
            );
        }
        let (committer, recovered) = open_store(config)?;
        let broker = Broker::with_store(broker_config(config)?, committer);
        if let Some(recovered) = recovered {
            broker.restore(recovered, std::time::Instant::now());
        }
        broker.start();
        let service: Arc<dyn Service> = Arc::new(BrokerService(Arc::clone(&broker)));
        let limits = Limits {
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            handshake_timeout: config.limits.handshake_timeout,
            stream_faults: (!plan.stream.is_empty()).then(|| plan.stream.clone()),
        };
        let mut tasks = Vec::new();
        let mut tcp_addr = None;
        let mut tls_addr = None;
        let mut dev_ca = None;

        if config.listeners.tcp.enabled {
            let listener = bind("listeners.tcp", config.listeners.tcp.bind).await?;
            tcp_addr = listener.local_addr().ok();
            tasks.push(tokio::spawn(listener::run_tcp(
                listener,
                Arc::clone(&service),
                limits.clone(),
                broker.shutdown_signal(),
            )));
        }
        if config.listeners.tls.enabled {
            let tls = &config.listeners.tls;
            if tls.cert.is_none() || tls.key.is_none() {
                dev_ca = Some(config::certs::ensure_dev_certs(&config.data_dir)?.ca_cert);
            }
            let settings = config.tls_settings()?;
            let acceptor = TlsAcceptor::from(config::tls::server_tls_config(&settings)?);
            let listener = bind("listeners.tls", tls.bind).await?;
            tls_addr = listener.local_addr().ok();
            tasks.push(tokio::spawn(listener::run_tls(
                listener,
                acceptor,
                Arc::clone(&service),
                limits.clone(),
                broker.shutdown_signal(),
            )));
        }
        let mut quic_addr = None;
        if config.listeners.quic.enabled {
            let quic = &config.listeners.quic;
            if quic.cert.is_none() || quic.key.is_none() {
                dev_ca = Some(config::certs::ensure_dev_certs(&config.data_dir)?.ca_cert);
            }
            let settings = config.quic_tls_settings()?;
            let crypto = config::tls::quic_server_crypto(&settings, quic.enable_0rtt)?;
            let endpoint = quic::endpoint(
                quic,
                crypto,
                (plan.udp != UdpFaults::default()).then(|| (plan.udp.clone(), plan.seed)),
            )?;
            quic_addr = endpoint.local_addr().ok();
            tasks.push(tokio::spawn(quic::run(
                endpoint,
                Arc::clone(&service),
                limits.clone(),
                quic.enable_0rtt,
                broker.shutdown_signal(),
            )));
        }
        Ok(Server {
            broker,
            tcp_addr,
            tls_addr,
            quic_addr,
            dev_ca,
            tasks,
        })
    }

    /// Stops accepting, tells connected clients the server is going away (v5: 0x8B) and
    /// waits up to `wait` for them to leave. Sessions are kept.
    pub async fn shutdown(self, wait: Duration) {
        self.broker.shutdown(wait).await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The broker settings a configuration implies.
pub fn broker_config(config: &Config) -> Result<BrokerConfig, ServerError> {
    let connection = config.connection_config();
    Ok(BrokerConfig {
        // A takeover waits for the old connection's last write at most its send timeout.
        takeover_wait: connection.send_timeout + Duration::from_secs(5),
        connection,
        sys_interval: (!config.sys.interval.is_zero()).then_some(config.sys.interval),
        authenticator: Arc::new(Authenticator::load(
            &config.auth,
            config.anonymous_allowed(),
        )?),
        acl: Acl::from_settings(&config.auth)?,
        max_store_bytes: config.storage.max_store_bytes,
        store_full_policy: match config.storage.full_policy {
            config::StoreFullPolicy::Reject => crate::protocol::QueuePolicy::DropNew,
            config::StoreFullPolicy::DropOldest => crate::protocol::QueuePolicy::DropOldest,
        },
        ..BrokerConfig::default()
    })
}

/// Opens the store under `data_dir` and recovers it, unless `storage.durability = none`.
fn open_store(config: &Config) -> Result<(Option<GroupCommitter>, Option<Recovered>), ServerError> {
    let durability = match config.storage.durability {
        config::Durability::None => return Ok((None, None)),
        config::Durability::Sync => StoreDurability::Sync,
        config::Durability::Group => StoreDurability::Group,
    };
    let store = Arc::new(Store::open(&config.data_dir, StoreOptions::default())?);
    let recovered = store.recover(Now::from_clocks())?;
    let window = Duration::from_millis(config.storage.group_commit_ms);
    let (committer, _task) =
        GroupCommitter::spawn(store, GroupCommitConfig::new(durability, window));
    Ok((Some(committer), Some(recovered)))
}

/// Pending connections the kernel may hold per listener. tokio's default (128) drops SYNs
/// in a reconnect storm, and each dropped client waits out a 1 s SYN retry.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let error = |source| ServerError::Bind { key, addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    socket.listen(LISTEN_BACKLOG).map_err(error)
}
