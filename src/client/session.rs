//! The client half of an MQTT session, sans IO: packet identifiers, the QoS 1/2 flows in
//! both directions, the send quota, and what to resend when a connection resumes. The
//! driver feeds it commands and packets and drains [`Session::poll_outgoing`]; nothing here
//! touches a socket or a clock.
//!
//! Outbound QoS 1/2 flows (one entry per packet id, kept in first-send order):
//!
//! ```text
//!  publish() ─► waiting ──quota──► AwaitPuback ──PUBACK──────────────────────► done   (QoS 1)
//!  (offline or                 └─► AwaitPubrec ──PUBREC──► AwaitPubcomp ─PUBCOMP─► done (QoS 2)
//!   over quota)                        │ PUBREC >= 0x80: done with the error
//!  reconnect, session present: PUBLISH again with DUP (Await{Puback,Pubrec}), PUBREL again
//!  (AwaitPubcomp), in the original order [MQTT-4.4.0-1]
//! ```
//!
//! Inbound QoS 2 is delivered to the application when the PUBLISH first arrives; its id
//! stays in `inbound_qos2` until PUBREL, so a PUBLISH resent with DUP (after a reconnect or
//! a lost data stream) is acknowledged again but never delivered twice.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::error::ClientError;
use super::StreamKey;
use crate::protocol::codec::encoded_len;
use crate::protocol::{
    Ack, ConnAck, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, QosPid, ReasonCode,
    SubAck, Subscribe, SubscriptionOptions, TopicFilter, TopicName, UnsubAck, Unsubscribe,
};

/// Which stream a packet goes on: `None` is the only stream (TCP, TLS, single-stream QUIC)
/// or the control stream (multi-stream QUIC).
pub(crate) type Route = Option<StreamKey>;

/// Where an operation's result goes.
pub(crate) type Done<T> = oneshot::Sender<Result<T, ClientError>>;

/// A message the application publishes.
#[derive(Debug, Clone)]
pub(crate) struct OutMessage {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

/// A packet for the driver to write on `route`.
pub(crate) struct Outgoing {
    pub route: Route,
    pub packet: Packet,
    /// Told when the packet is written (QoS 0 publishes complete then).
    pub written: Option<Done<()>>,
}

/// The flow states of DESIGN §3, under the same names.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    AwaitPuback,
    AwaitPubrec,
    AwaitPubcomp,
}

struct OutboundPublish {
    publish: Publish,
    flow: Flow,
    route: Route,
    done: Option<Done<()>>,
}

struct Request {
    packet: Packet,
    route: Route,
    /// `None` for the SUBSCRIBEs the client repeats itself when a session was lost.
    done: Option<Done<Vec<ReasonCode>>>,
}

enum InFlight {
    Publish(OutboundPublish),
    Request(Request),
}

struct Waiting {
    message: OutMessage,
    route: Route,
    done: Done<()>,
}

/// What CONNACK told us about the server (v5; v3.1.1 servers allow everything).
#[derive(Debug, Clone, Copy)]
struct ServerLimits {
    max_qos: QoS,
    retain_available: bool,
    max_packet_size: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
            max_packet_size: u32::MAX,
        }
    }
}

pub(crate) struct Session {
    version: ProtocolVersion,
    connected: bool,
    next_id: PacketId,
    /// First-send order of everything holding a packet id.
    seq: u64,
    in_flight: BTreeMap<u64, InFlight>,
    ids: HashMap<PacketId, u64>,
    publishes_in_flight: usize,
    max_inflight: usize,
    quota: usize,
    waiting: VecDeque<Waiting>,
    inbound_qos2: HashSet<PacketId>,
    /// Granted subscriptions, repeated when a reconnection finds the session gone.
    subscriptions: Vec<(TopicFilter, SubscriptionOptions, Route)>,
    limits: ServerLimits,
    outbox: VecDeque<Outgoing>,
}

impl Session {
    pub fn new(version: ProtocolVersion, max_inflight: u16) -> Session {
        Session {
            version,
            connected: false,
            next_id: PacketId::MIN,
            seq: 0,
            in_flight: BTreeMap::new(),
            ids: HashMap::new(),
            publishes_in_flight: 0,
            max_inflight: usize::from(max_inflight.max(1)),
            quota: usize::from(max_inflight.max(1)),
            waiting: VecDeque::new(),
            inbound_qos2: HashSet::new(),
            subscriptions: Vec::new(),
            limits: ServerLimits::default(),
            outbox: VecDeque::new(),
        }
    }

    // ---- getters ----

    /// The stream a filter was subscribed on, if it is subscribed.
    pub fn route_of(&self, filter: &TopicFilter) -> Option<Route> {
        self.subscriptions
            .iter()
            .find(|(f, _, _)| f == filter)
            .map(|(_, _, route)| route.clone())
    }

    #[cfg(test)]
    fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    // ---- commands ----

    /// Publishes `message`; `done` is told when its QoS flow completes (QoS 0: written).
    pub fn publish(&mut self, message: OutMessage, route: Route, done: Done<()>) {
        if let Err(err) = self.check_publish(&message) {
            let _ = done.send(Err(err));
            return;
        }
        if !self.connected {
            self.waiting.push_back(Waiting {
                message,
                route,
                done,
            });
            return;
        }
        if message.qos == QoS::AtMostOnce {
            let publish = to_publish(message, QosPid::AtMostOnce);
            self.outbox.push_back(Outgoing {
                route,
                packet: Packet::Publish(publish),
                written: Some(done),
            });
            return;
        }
        if self.publishes_in_flight < self.quota {
            if let Some(id) = self.allocate_id() {
                self.start_publish(id, message, route, done);
                return;
            }
        }
        self.waiting.push_back(Waiting {
            message,
            route,
            done,
        });
    }

    pub fn subscribe(
        &mut self,
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
        route: Route,
        done: Done<Vec<ReasonCode>>,
    ) {
        self.request(
            |packet_id| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    properties: Properties::default(),
                })
            },
            route,
            Some(done),
        );
    }

    pub fn unsubscribe(
        &mut self,
        filters: Vec<TopicFilter>,
        route: Route,
        done: Done<Vec<ReasonCode>>,
    ) {
        self.request(
            |packet_id| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    properties: Properties::default(),
                })
            },
            route,
            Some(done),
        );
    }

    // ---- connection events ----

    /// A connection was accepted. With the session present, everything unacknowledged is
    /// resent as it was (PUBLISH with DUP, PUBREL); without it, the server has forgotten us:
    /// subscriptions are made again and unacknowledged publishes start over (the
    /// application's `publish` still completes).
    pub fn on_connected(&mut self, connack: &ConnAck, max_packet_size_default: u32) {
        // Still offline while the repeated SUBSCRIBEs are queued: the loop below sends
        // everything in flight, those included, once.
        self.connected = false;
        self.outbox.clear();
        let props = &connack.properties;
        self.limits = ServerLimits {
            max_qos: props.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: props.retain_available.unwrap_or(true),
            max_packet_size: props
                .maximum_packet_size
                .map_or(max_packet_size_default, |m| m.get()),
        };
        self.quota = props.receive_maximum.map_or(self.max_inflight, |r| {
            usize::from(r.get()).min(self.max_inflight)
        });
        if !connack.session_present {
            self.inbound_qos2.clear();
            for (filter, options, route) in std::mem::take(&mut self.subscriptions) {
                let packet = move |packet_id| {
                    Packet::Subscribe(Subscribe {
                        packet_id,
                        filters: vec![(filter, options)],
                        properties: Properties::default(),
                    })
                };
                self.request(packet, route, None);
            }
        }
        self.connected = true;
        let resume = connack.session_present;
        for entry in self.in_flight.values() {
            match entry {
                InFlight::Publish(p) => {
                    let packet = match p.flow {
                        Flow::AwaitPubcomp => Packet::PubRel(Ack::new(packet_id(&p.publish))),
                        Flow::AwaitPuback | Flow::AwaitPubrec => {
                            let mut publish = p.publish.clone();
                            publish.dup = resume;
                            Packet::Publish(publish)
                        }
                    };
                    self.outbox.push_back(Outgoing {
                        route: p.route.clone(),
                        packet,
                        written: None,
                    });
                }
                InFlight::Request(r) => self.outbox.push_back(Outgoing {
                    route: r.route.clone(),
                    packet: r.packet.clone(),
                    written: None,
                }),
            }
        }
        self.pump_waiting();
    }

    /// The connection is gone. Packets not yet handed to a stream are dropped (their
    /// entries stay in flight and go again on the next connection; a QoS 0 publish fails
    /// with [`ClientError::NotWritten`]).
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        for out in self.outbox.drain(..) {
            if let Some(done) = out.written {
                let _ = done.send(Err(ClientError::NotWritten));
            }
        }
    }

    /// A multi-stream data stream died while the connection lives: what was in flight on
    /// it goes again (reopening the stream), as after a reconnect.
    pub fn on_route_lost(&mut self, route: &Route) {
        for entry in self.in_flight.values() {
            match entry {
                InFlight::Publish(p) if &p.route == route => {
                    let packet = match p.flow {
                        Flow::AwaitPubcomp => Packet::PubRel(Ack::new(packet_id(&p.publish))),
                        Flow::AwaitPuback | Flow::AwaitPubrec => {
                            let mut publish = p.publish.clone();
                            publish.dup = true;
                            Packet::Publish(publish)
                        }
                    };
                    self.outbox.push_back(Outgoing {
                        route: route.clone(),
                        packet,
                        written: None,
                    });
                }
                InFlight::Request(r) if &r.route == route => self.outbox.push_back(Outgoing {
                    route: route.clone(),
                    packet: r.packet.clone(),
                    written: None,
                }),
                _ => {}
            }
        }
    }

    /// The client ends: every pending operation fails with `err`.
    pub fn fail_all(&mut self, err: &ClientError) {
        self.on_disconnected();
        for (_, entry) in std::mem::take(&mut self.in_flight) {
            match entry {
                InFlight::Publish(OutboundPublish { done: Some(d), .. }) => {
                    let _ = d.send(Err(err.clone()));
                }
                InFlight::Request(Request { done: Some(d), .. }) => {
                    let _ = d.send(Err(err.clone()));
                }
                _ => {}
            }
        }
        for w in self.waiting.drain(..) {
            let _ = w.done.send(Err(err.clone()));
        }
        self.ids.clear();
        self.publishes_in_flight = 0;
    }

    /// A packet from the server on `route`. Returns a PUBLISH to deliver to the
    /// application (never twice for one QoS 2 message).
    pub fn handle(
        &mut self,
        packet: Packet,
        route: &Route,
    ) -> Result<Option<Publish>, ClientError> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, route),
            Packet::PubRel(ack) => {
                let known = self.inbound_qos2.remove(&ack.packet_id);
                let reason = if known || !self.version.is_v5() {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.outbox.push_back(Outgoing {
                    route: route.clone(),
                    packet: Packet::PubComp(Ack::with_reason(ack.packet_id, reason)),
                    written: None,
                });
                Ok(None)
            }
            Packet::PubAck(ack) => {
                self.on_publish_ack(ack, Flow::AwaitPuback);
                Ok(None)
            }
            Packet::PubRec(ack) => {
                self.on_pubrec(ack);
                Ok(None)
            }
            Packet::PubComp(ack) => {
                self.on_publish_ack(ack, Flow::AwaitPubcomp);
                Ok(None)
            }
            Packet::SubAck(ack) => {
                self.on_suback(ack);
                Ok(None)
            }
            Packet::UnsubAck(ack) => {
                self.on_unsuback(ack);
                Ok(None)
            }
            other => Err(ClientError::Protocol(format!(
                "unexpected {:?} from the server",
                other.packet_type()
            ))),
        }
    }

    /// The next packet to write.
    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.outbox.pop_front()
    }

    // ---- helpers ----

    fn check_publish(&self, message: &OutMessage) -> Result<(), ClientError> {
        if message.qos > self.limits.max_qos {
            return Err(ClientError::QosNotSupported {
                requested: message.qos,
                max: self.limits.max_qos,
            });
        }
        if message.retain && !self.limits.retain_available {
            return Err(ClientError::RetainNotSupported);
        }
        let qos_pid = match message.qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            QoS::AtLeastOnce => QosPid::AtLeastOnce(PacketId::MIN),
            QoS::ExactlyOnce => QosPid::ExactlyOnce(PacketId::MIN),
        };
        let probe = Packet::Publish(to_publish(message.clone(), qos_pid));
        let size = encoded_len(&probe, self.version).map_err(ClientError::Encode)?;
        if size > self.limits.max_packet_size as usize {
            return Err(ClientError::PacketTooLarge {
                size,
                max: self.limits.max_packet_size,
            });
        }
        Ok(())
    }

    fn allocate_id(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            let id = self.next_id;
            self.next_id = id.next();
            if !self.ids.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    fn insert(&mut self, id: PacketId, entry: InFlight) {
        self.seq += 1;
        self.ids.insert(id, self.seq);
        self.in_flight.insert(self.seq, entry);
    }

    fn remove(&mut self, id: PacketId) -> Option<InFlight> {
        let seq = self.ids.remove(&id)?;
        let entry = self.in_flight.remove(&seq);
        if matches!(entry, Some(InFlight::Publish(_))) {
            self.publishes_in_flight = self.publishes_in_flight.saturating_sub(1);
        }
        entry
    }

    fn start_publish(&mut self, id: PacketId, message: OutMessage, route: Route, done: Done<()>) {
        let (qos_pid, flow) = match message.qos {
            QoS::ExactlyOnce => (QosPid::ExactlyOnce(id), Flow::AwaitPubrec),
            _ => (QosPid::AtLeastOnce(id), Flow::AwaitPuback),
        };
        let publish = to_publish(message, qos_pid);
        if self.connected {
            self.outbox.push_back(Outgoing {
                route: route.clone(),
                packet: Packet::Publish(publish.clone()),
                written: None,
            });
        }
        self.publishes_in_flight += 1;
        self.insert(
            id,
            InFlight::Publish(OutboundPublish {
                publish,
                flow,
                route,
                done: Some(done),
            }),
        );
    }

    fn request(
        &mut self,
        packet: impl FnOnce(PacketId) -> Packet,
        route: Route,
        done: Option<Done<Vec<ReasonCode>>>,
    ) {
        let Some(id) = self.allocate_id() else {
            if let Some(done) = done {
                let _ = done.send(Err(ClientError::Protocol(
                    "all 65535 packet identifiers are in use".into(),
                )));
            }
            return;
        };
        let packet = packet(id);
        if self.connected {
            self.outbox.push_back(Outgoing {
                route: route.clone(),
                packet: packet.clone(),
                written: None,
            });
        }
        self.insert(
            id,
            InFlight::Request(Request {
                packet,
                route,
                done,
            }),
        );
    }

    /// Moves waiting publishes into flight while the quota allows (and sends queued QoS 0).
    fn pump_waiting(&mut self) {
        if !self.connected {
            return;
        }
        while let Some(next) = self.waiting.front() {
            if next.message.qos == QoS::AtMostOnce {
                let Some(w) = self.waiting.pop_front() else {
                    break;
                };
                self.outbox.push_back(Outgoing {
                    route: w.route,
                    packet: Packet::Publish(to_publish(w.message, QosPid::AtMostOnce)),
                    written: Some(w.done),
                });
                continue;
            }
            if self.publishes_in_flight >= self.quota {
                break;
            }
            let Some(id) = self.allocate_id() else { break };
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            self.start_publish(id, w.message, w.route, w.done);
        }
    }

    fn on_publish(
        &mut self,
        publish: Publish,
        route: &Route,
    ) -> Result<Option<Publish>, ClientError> {
        if publish.topic.is_empty() {
            // We advertise no topic aliases, so the server may not use one.
            return Err(ClientError::Protocol(
                "PUBLISH with a topic alias the client never allowed".into(),
            ));
        }
        match publish.qos_pid {
            QosPid::AtMostOnce => Ok(Some(publish)),
            QosPid::AtLeastOnce(id) => {
                self.outbox.push_back(Outgoing {
                    route: route.clone(),
                    packet: Packet::PubAck(Ack::new(id)),
                    written: None,
                });
                Ok(Some(publish))
            }
            QosPid::ExactlyOnce(id) => {
                let first = self.inbound_qos2.insert(id);
                self.outbox.push_back(Outgoing {
                    route: route.clone(),
                    packet: Packet::PubRec(Ack::new(id)),
                    written: None,
                });
                Ok(first.then_some(publish))
            }
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) ends a flow. An ack for an id we do not know is
    /// ignored: after a lost session the server may answer a resent PUBREL that way.
    fn on_publish_ack(&mut self, ack: Ack, expected: Flow) {
        let matches = match self
            .ids
            .get(&ack.packet_id)
            .and_then(|s| self.in_flight.get(s))
        {
            Some(InFlight::Publish(p)) => p.flow == expected || expected == Flow::AwaitPubcomp,
            _ => false,
        };
        if !matches {
            tracing::debug!(
                packet_id = ack.packet_id.get(),
                ?expected,
                "ack for no such publish"
            );
            return;
        }
        if let Some(InFlight::Publish(p)) = self.remove(ack.packet_id) {
            let refused = expected == Flow::AwaitPuback && ack.reason.is_error();
            let result = if refused {
                Err(ClientError::PublishRefused {
                    topic: p.publish.topic.to_string(),
                    reason: ack.reason,
                })
            } else {
                Ok(())
            };
            if let Some(done) = p.done {
                let _ = done.send(result);
            }
        }
        self.pump_waiting();
    }

    fn on_pubrec(&mut self, ack: Ack) {
        let Some(seq) = self.ids.get(&ack.packet_id).copied() else {
            tracing::debug!(
                packet_id = ack.packet_id.get(),
                "PUBREC for no such publish"
            );
            return;
        };
        let Some(InFlight::Publish(p)) = self.in_flight.get_mut(&seq) else {
            return;
        };
        if ack.reason.is_error() {
            if let Some(InFlight::Publish(p)) = self.remove(ack.packet_id) {
                if let Some(done) = p.done {
                    let _ = done.send(Err(ClientError::PublishRefused {
                        topic: p.publish.topic.to_string(),
                        reason: ack.reason,
                    }));
                }
            }
            self.pump_waiting();
            return;
        }
        // A repeated PUBREC (after a resend) gets PUBREL again.
        p.flow = Flow::AwaitPubcomp;
        let route = p.route.clone();
        self.outbox.push_back(Outgoing {
            route,
            packet: Packet::PubRel(Ack::new(ack.packet_id)),
            written: None,
        });
    }

    fn on_suback(&mut self, ack: SubAck) {
        let Some(InFlight::Request(request)) = self.remove(ack.packet_id) else {
            tracing::debug!(
                packet_id = ack.packet_id.get(),
                "SUBACK for no such SUBSCRIBE"
            );
            return;
        };
        if let Packet::Subscribe(subscribe) = &request.packet {
            for ((filter, options), reason) in subscribe.filters.iter().zip(&ack.reasons) {
                if reason.is_error() {
                    continue;
                }
                self.subscriptions.retain(|(f, _, _)| f != filter);
                self.subscriptions
                    .push((filter.clone(), *options, request.route.clone()));
            }
        }
        if let Some(done) = request.done {
            let _ = done.send(Ok(ack.reasons));
        }
    }

    fn on_unsuback(&mut self, ack: UnsubAck) {
        let Some(InFlight::Request(request)) = self.remove(ack.packet_id) else {
            tracing::debug!(
                packet_id = ack.packet_id.get(),
                "UNSUBACK for no such UNSUBSCRIBE"
            );
            return;
        };
        if let Packet::Unsubscribe(unsubscribe) = &request.packet {
            self.subscriptions
                .retain(|(f, _, _)| !unsubscribe.filters.contains(f));
        }
        if let Some(done) = request.done {
            let _ = done.send(Ok(ack.reasons));
        }
    }
}

fn to_publish(message: OutMessage, qos_pid: QosPid) -> Publish {
    Publish {
        dup: false,
        qos_pid,
        retain: message.retain,
        topic: message.topic,
        payload: message.payload,
        properties: message.properties,
    }
}

fn packet_id(publish: &Publish) -> PacketId {
    // Only QoS 1/2 publishes are in flight, and those always carry an id.
    publish.qos_pid.packet_id().unwrap_or(PacketId::MIN)
}

#[cfg(test)]
mod tests;
