//! The sans-IO MQTT protocol layer: bytes, completions, deliveries and `now` in; frames,
//! timers and events out. Nothing here reads a clock, touches a socket or knows tokio.

pub mod codec;
pub mod packet;
pub mod types;

pub use packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Properties, Publish, SubAck,
    Subscribe, UnsubAck, Unsubscribe, Will,
};
pub use types::{
    MqttString, PacketId, ProtocolVersion, QoS, QosPid, ReasonCode, RetainHandling, StringError,
    SubscriptionOptions, TopicFilter, TopicName,
};
