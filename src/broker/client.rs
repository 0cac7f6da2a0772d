//! One client connection as the broker sees it: the [`EventSink`] that answers a
//! connection's events, and the task that serves an accepted byte stream from CONNECT to
//! the session's hand-back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::auth::{certificate_common_name, Action, ClientAcl};
use super::core::will_delay;
use super::core::{Broker, Stats};
use super::index::ClientId;
use super::persist::{AfterCommit, CommitSequencer, Pending};
use super::session::SessionKey;
use crate::protocol::{
    ConnectAccept, Connection, Event, FlowStep, InboundAck, MqttString, ProtocolVersion, QoS,
    ReasonCode, SessionState,
};
use crate::store::{Commit, Now, PendingWill, WriteBatch};
use crate::transport::listener::{Accepted, PeerInfo, Service};
use crate::transport::{drive, Command, EventSink};

/// Serves accepted connections for a broker.
#[derive(Debug, Clone)]
pub struct BrokerService(pub Arc<Broker>);

impl Service for BrokerService {
    fn serve(
        &self,
        accepted: Accepted,
        info: PeerInfo,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(serve(Arc::clone(&self.0), accepted, info))
    }
}

/// Serves one connection until it ends, then hands its session back to the registry and
/// publishes its will if the close calls for one.
pub async fn serve(broker: Arc<Broker>, accepted: Accepted, info: PeerInfo) {
    let span = tracing::info_span!(
        "client",
        transport = %info.transport,
        peer = %info.peer,
        client_id = tracing::field::Empty
    );
    let (mailbox_tx, mut mailbox) = mpsc::unbounded_channel();
    let generation = broker.next_generation();
    let conn = Connection::new(broker.config.connection.clone(), crate::transport::now());
    let mut handler = ClientHandler {
        broker: Arc::clone(&broker),
        mailbox: mailbox_tx.clone(),
        generation,
        key: None,
        connecting: None,
        span: span.clone(),
        client_cert: info.client_cert.clone(),
        acl: Arc::new(ClientAcl::allow_all()),
        commits: broker
            .committer
            .is_some()
            .then(|| CommitSequencer::spawn(mailbox_tx.clone(), span.clone())),
    };
    let conn = match accepted {
        Accepted::Stream(io) => {
            let (reader, writer) = tokio::io::split(io);
            drive(reader, writer, conn, &mut handler, &mut mailbox)
                .instrument(span.clone())
                .await
        }
        Accepted::Quic {
            connection,
            control,
        } => {
            crate::transport::quic::multi::drive(
                connection,
                control,
                conn,
                &mut handler,
                &mut mailbox,
            )
            .instrument(span.clone())
            .await
        }
    };
    handler.finish(conn, &mut mailbox).instrument(span).await;
}

struct ClientHandler {
    broker: Arc<Broker>,
    mailbox: mpsc::UnboundedSender<Command>,
    generation: u64,
    /// The session, once CONNECT named it.
    key: Option<SessionKey>,
    /// The task resolving takeover and resuming the session.
    connecting: Option<JoinHandle<bool>>,
    span: tracing::Span,
    /// The verified client certificate (mTLS), whose common name is an identity.
    client_cert: Option<rustls_pki_types::CertificateDer<'static>>,
    /// What this client may do, from the ACL, once authenticated.
    acl: Arc<ClientAcl>,
    /// With a store: releases publish acknowledgements once their writes are durable.
    commits: Option<CommitSequencer>,
}

impl EventSink for ClientHandler {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, event: Event) {
        match event {
            Event::Connect(connect) => self.on_connect(conn, now, *connect),
            Event::Publish { message, ack } => {
                let topic = message.topic.as_str();
                // $SYS is the broker's own; clients may not publish there (as in mosquitto).
                if topic.starts_with("$SYS") || !self.acl.check(Action::Publish, topic) {
                    tracing::info!(%topic, "publish refused by the ACL");
                    if let Some(ack) = ack {
                        conn.accept_publish(now, ack, ReasonCode::NotAuthorized);
                    }
                    return;
                }
                // A persistent publisher's QoS 2 id is stored with the message, so a resend
                // after a restart is recognised and not routed again [MQTT-4.3.3-9].
                let inbound = ack
                    .as_ref()
                    .filter(|a| a.qos() == QoS::ExactlyOnce)
                    .map(InboundAck::packet_id);
                let routed = self.broker.route(self.key.as_ref(), &message, now, inbound);
                if let Some(ack) = ack {
                    if !routed.durable.is_refused() {
                        conn.publish_routed(&ack);
                    }
                    let reason =
                        if routed.matched == 0 && conn.version() == Some(ProtocolVersion::V5) {
                            ReasonCode::NoMatchingSubscribers
                        } else {
                            ReasonCode::Success
                        };
                    match &self.commits {
                        // Acknowledged once what it changed is durable, in arrival order.
                        Some(commits) => {
                            commits.push(routed.durable, AfterCommit::Ack(ack, reason))
                        }
                        None => conn.accept_publish(now, ack, reason),
                    }
                }
            }
            Event::Subscribe(subscribe) => {
                let Some(key) = &self.key else { return };
                let (suback, mut retained) = self.broker.subscribe(key, &self.acl, subscribe, now);
                // A persistent session's subscriptions (and the retained messages they
                // bring) are stored before the SUBACK says they exist.
                let mut batch = WriteBatch::new(Now::from_clocks());
                for delivery in &mut retained {
                    self.broker.stamp_row(key, delivery, &mut batch);
                }
                let commit = self.broker.write_meta(key, None, None, batch);
                // Retained messages go at once, ahead of anything routed to the new
                // subscription from here on, so no client takes an older retained value
                // for news. Without a commit to wait for, the SUBACK goes first; with one,
                // it follows them once the subscription is stored [MQTT-3.8.4-4].
                match commit {
                    None => {
                        conn.send_suback(now, suback);
                        for delivery in retained {
                            conn.deliver(now, delivery);
                        }
                    }
                    Some(commit) => {
                        for delivery in retained {
                            conn.deliver(now, delivery);
                        }
                        self.after_commit(Some(commit), Command::SubAck(suback));
                    }
                }
            }
            Event::Unsubscribe(unsubscribe) => {
                let Some(key) = &self.key else { return };
                let unsuback = self.broker.unsubscribe(key, unsubscribe);
                let commit =
                    self.broker
                        .write_meta(key, None, None, WriteBatch::new(Now::from_clocks()));
                self.after_commit(commit, Command::UnsubAck(unsuback));
            }
            Event::Flow(step) => {
                let Some(key) = &self.key else { return };
                let commit = self
                    .broker
                    .record_flow(key.entry().client_id().as_str(), step);
                match step {
                    FlowStep::Sending { row, packet_id }
                    | FlowStep::Received { row, packet_id } => {
                        self.after_commit(commit, Command::FlowRecorded(packet_id, row));
                    }
                    // Nothing waits for a finished row to go.
                    FlowStep::Finished { .. } => {}
                }
            }
            Event::Released { packet_id } => {
                let Some(key) = &self.key else { return };
                let commit = self
                    .broker
                    .record_release(key.entry().client_id().as_str(), packet_id);
                self.after_commit(commit, Command::ReleaseRecorded(packet_id));
            }
            Event::Auth(_) => {
                // No enhanced authentication method is supported.
                conn.disconnect(now, ReasonCode::BadAuthenticationMethod);
            }
            Event::Dropped { topic, qos, reason } => {
                Stats::add(&self.broker.stats.messages_dropped, 1);
                tracing::debug!(%topic, ?qos, ?reason, "message for the client dropped");
            }
            Event::Closed(reason) => {
                tracing::info!(%reason, initiator = ?reason.initiator(), "connection closed");
            }
        }
    }

    fn on_bytes_read(&mut self, bytes: usize) {
        Stats::add(&self.broker.stats.bytes_received, bytes as u64);
    }

    fn on_bytes_written(&mut self, bytes: usize) {
        Stats::add(&self.broker.stats.bytes_sent, bytes as u64);
    }
}

impl ClientHandler {
    /// Sends `then` to the connection once `commit` is durable (at once without one), in
    /// order with its other waits ([`AfterCommit::Then`]).
    fn after_commit(&self, commit: Option<Commit>, then: Command) {
        // A commit exists only with a store, and so does the sequencer.
        match (commit, &self.commits) {
            (Some(commit), Some(commits)) => {
                commits.push(Pending::Commit(commit), AfterCommit::Then(Box::new(then)));
            }
            _ => {
                let _ = self.mailbox.send(then);
            }
        }
    }

    fn on_connect(
        &mut self,
        conn: &mut Connection,
        now: Instant,
        connect: crate::protocol::Connect,
    ) {
        if connect.properties.authentication_method.is_some() {
            let _ = conn.reject_connect(now, ReasonCode::BadAuthenticationMethod);
            return;
        }
        let assigned = connect
            .client_id
            .is_empty()
            .then(|| assigned_client_id(self.generation));
        let id = match &assigned {
            Some(id) => ClientId::from(id),
            None => ClientId::from(&connect.client_id),
        };
        self.span.record("client_id", id.as_str());
        let cert_name = self
            .client_cert
            .as_ref()
            .and_then(|cert| certificate_common_name(cert.as_ref()));
        let identity = match self.broker.config.authenticator.authenticate(
            connect.username.as_ref().map(|u| u.as_str()),
            connect.password.as_deref(),
            cert_name.as_deref(),
        ) {
            Ok(identity) => identity,
            Err(code) => {
                tracing::info!(reason = %code, "CONNECT refused: authentication");
                let _ = conn.reject_connect(now, code);
                return;
            }
        };
        let acl = Arc::new(self.broker.config.acl.for_client(&identity, id.as_str()));
        if let Some(will) = &connect.will {
            if !acl.check(Action::Publish, will.topic.as_str()) {
                tracing::info!(topic = %will.topic, "CONNECT refused: the ACL forbids the will topic");
                let _ = conn.reject_connect(now, ReasonCode::NotAuthorized);
                return;
            }
        }
        self.acl = Arc::clone(&acl);
        tracing::info!(version = %connect.protocol, clean_start = connect.clean_start, keep_alive = connect.keep_alive, "CONNECT");
        let entry = self.broker.registry.entry(&id);
        entry.set_acl(acl);
        // v3.1.1 sessions without clean session last until a clean connect.
        entry.set_expiry(match connect.protocol {
            ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
            ProtocolVersion::V311 if connect.clean_start => 0,
            ProtocolVersion::V311 => u32::MAX,
        });
        let key = SessionKey::new(Arc::clone(&entry));
        self.key = Some(key.clone());
        // A stored session's inbound QoS 2 ids are forgotten in the store before PUBCOMP.
        conn.record_releases(self.broker.committer.is_some() && entry.is_persistent());
        let broker = Arc::clone(&self.broker);
        let mailbox = self.mailbox.clone();
        let generation = self.generation;
        let clean_start = connect.clean_start;
        // v5 clients only learn an assigned id from CONNACK; v3.1.1 ones never see it.
        let assigned_for_connack = assigned.filter(|_| connect.protocol == ProtocolVersion::V5);
        self.connecting = Some(tokio::spawn(
            async move {
                let _turn = entry.connect_lock.lock().await;
                let wait = broker.config.takeover_wait;
                let Some((state, present)) = entry
                    .take_for_connect(generation, mailbox.clone(), wait)
                    .await
                else {
                    tracing::warn!("the previous connection did not hand its session back in time");
                    let _ = mailbox.send(Command::RejectConnect(ReasonCode::ServerBusy));
                    return false;
                };
                let id = key.entry().client_id().as_str();
                let (session, session_present) = if clean_start || !present {
                    // A fresh session starts without the old one's subscriptions.
                    broker.index.remove_client(&key);
                    if present {
                        wait_for(broker.forget_session(id)).await;
                    }
                    (SessionState::new(), false)
                } else {
                    if !key.entry().is_persistent() {
                        // Resumed, but it ends with this connection: nothing of it stays.
                        wait_for(broker.forget_session(id)).await;
                    }
                    (state, true)
                };
                // Stored (online) before the CONNACK, so a crash from here on finds it.
                let empty = WriteBatch::new(Now::from_clocks());
                if let Some(Err(err)) = wait_for(broker.write_meta(&key, None, None, empty)).await {
                    // Publishes will be refused (their commits fail too); the client learns
                    // from those rather than being kept out.
                    tracing::error!(error = %err, "cannot store the session");
                }
                broker.index.set_online(&key, true);
                Stats::add(&broker.stats.clients_connected, 1);
                Stats::add(&broker.stats.connections_total, 1);
                let accept = ConnectAccept {
                    session,
                    session_present,
                    assigned_client_id: assigned_for_connack,
                };
                let _ = mailbox.send(Command::AcceptConnect(accept));
                true
            }
            .instrument(self.span.clone()),
        ));
    }

    /// After the connection has ended: wait for a connect still resolving, hand the session
    /// back (or drop it if it does not outlive the connection), and publish the will.
    async fn finish(self, conn: Connection, mailbox: &mut mpsc::UnboundedReceiver<Command>) {
        let online = match self.connecting {
            Some(task) => task.await.unwrap_or(false),
            None => false,
        };
        let (state, report) = conn.into_session();
        let Some(key) = self.key else { return };
        if !online {
            // The session was never taken: nothing to hand back, and no will, since a
            // will belongs to an accepted connection.
            return;
        }
        let now = crate::transport::now();
        let expiry = report.session_expiry;
        let expires_at = match expiry {
            u32::MAX => None,
            secs => now.checked_add(Duration::from_secs(u64::from(secs))),
        };
        // Only a session that was persistent can have anything in the store to forget.
        let stored = key.entry().is_persistent();
        key.entry().set_expiry(expiry);
        let will = report.will.map(|will| {
            let delay = will_delay(&will, expiry);
            (will, delay)
        });
        // A delayed will of a stored session is stored with it (a restart still sends it).
        let pending = will
            .as_ref()
            .filter(|(_, delay)| !delay.is_zero() && key.entry().is_persistent())
            .map(|(will, delay)| PendingWill {
                will: will.clone(),
                due: std::time::Instant::now() + *delay,
            });
        // Stored as offline before it is handed back, so whatever a reconnect writes next
        // lands after this.
        let offline = WriteBatch::new(Now::from_clocks());
        let commit =
            self.broker
                .write_meta(&key, Some(std::time::Instant::now()), pending, offline);
        if let Some(Err(err)) = wait_for(commit).await {
            tracing::error!(error = %err, "cannot store the session going offline");
        }
        key.entry()
            .go_offline(self.generation, state, mailbox, expires_at);
        self.broker.index.set_online(&key, false);
        self.broker
            .stats
            .clients_connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // The will is scheduled after the hand-back: its delay is measured against this
        // disconnection, and a reconnect must be able to cancel it.
        if let Some((will, delay)) = will {
            tracing::info!(topic = %will.topic, "publishing will");
            self.broker.schedule_will_after(key.clone(), will, delay);
        }
        if expiry == 0 && self.broker.registry.remove_if_expired(key.entry(), now) {
            self.broker.end_session(&key, stored);
        }
    }
}

/// Waits for a commit, if there is one, logging nothing (callers decide).
async fn wait_for(commit: Option<Commit>) -> Option<Result<(), crate::store::StoreError>> {
    Some(commit?.await)
}

/// A client id for a client that sent none: unique per broker run.
fn assigned_client_id(generation: u64) -> MqttString {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(generation);
    let id = format!("twinmq-{generation}-{:016x}", hasher.finish());
    MqttString::new(&id).unwrap_or_default()
}
