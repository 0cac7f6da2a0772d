//! The sans-IO MQTT protocol layer: bytes, completions, deliveries and `now` in; frames,
//! timers and events out. Nothing here reads a clock, touches a socket or knows tokio.

pub mod codec;
pub mod connection;
pub mod error;
pub mod frame;
pub mod packet;
pub mod session;
#[cfg(test)]
mod snapshot;
pub mod types;
pub mod writer;

pub use codec::{DecodeError, Decoder, EncodeError, Encoded};
pub use connection::{
    CloseReport, ConnectAccept, Connection, ConnectionConfig, DeliverOutcome, Event, FlowStep,
    InboundAck, LaneId,
};
pub use error::{CloseReason, ConnectionError, Initiator, Violation};
pub use frame::{
    FrameBatch, FrameError, FrameMeta, OutboundFrame, SendCompletion, SendTicket, Transmit,
    TransportFault,
};
pub use packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Properties, Publish, SubAck,
    Subscribe, UnsubAck, Unsubscribe, Will,
};
pub use session::{
    Delivery, DropCounts, DropReason, InflightMessage, QueueLimit, QueuePolicy, SessionSnapshot,
    SessionState,
};
pub use types::{
    MqttString, PacketId, ProtocolVersion, QoS, QosPid, ReasonCode, RetainHandling, StringError,
    SubscriptionOptions, TopicFilter, TopicName,
};
pub use writer::CompletionError;
