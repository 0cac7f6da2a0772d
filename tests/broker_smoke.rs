//! Smoke test of the test harness itself: a raw client connects over TCP.

mod common;

use common::{connect, RawClient, TestBroker};
use twinmq::protocol::{Packet, ProtocolVersion, ReasonCode};

#[tokio::test]
async fn a_raw_v5_client_gets_connack() {
    let broker = TestBroker::start("smoke").await;
    let mut client = RawClient::connect(broker.tcp, ProtocolVersion::V5).await;
    let connack = client
        .handshake(connect(ProtocolVersion::V5, "smoke", true, 30))
        .await;
    assert!(
        matches!(connack, Packet::ConnAck(c) if c.reason == ReasonCode::Success && !c.session_present)
    );
}
