//! Which reason codes each packet type may carry (the tables of §3.2.2.2, §3.4.2.1 to
//! §3.15.2.1), and how v3.1.1 CONNACK return codes and SUBACK results map onto them.

use super::error::{DecodeError, EncodeError};
use crate::protocol::packet::PacketType;
use crate::protocol::types::ReasonCode;

const CONNACK: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_PUBREC: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_PUBCOMP: &[u8] = &[0x00, 0x92];
const SUBACK: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH: &[u8] = &[0x00, 0x18, 0x19];

/// The MQTT 5 codes `packet_type` may carry; empty for packets without a reason code.
pub(crate) fn table(packet_type: PacketType) -> &'static [u8] {
    match packet_type {
        PacketType::ConnAck => CONNACK,
        PacketType::PubAck | PacketType::PubRec => PUBACK_PUBREC,
        PacketType::PubRel | PacketType::PubComp => PUBREL_PUBCOMP,
        PacketType::SubAck => SUBACK,
        PacketType::UnsubAck => UNSUBACK,
        PacketType::Disconnect => DISCONNECT,
        PacketType::Auth => AUTH,
        _ => &[],
    }
}

/// Parses a v5 reason code byte, accepting only the codes `packet_type` defines.
pub(crate) fn decode(packet_type: PacketType, code: u8) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(code)
        .filter(|_| table(packet_type).contains(&code))
        .ok_or(DecodeError::InvalidReasonCode { packet_type, code })
}

/// Refuses to encode a reason code `packet_type` does not define.
pub(crate) fn check(packet_type: PacketType, reason: ReasonCode) -> Result<u8, EncodeError> {
    let code = reason.to_u8();
    if table(packet_type).contains(&code) {
        Ok(code)
    } else {
        Err(EncodeError::InvalidReasonCode {
            packet_type,
            reason,
        })
    }
}

/// The v3.1.1 CONNACK return code for a CONNACK reason (already checked against the v5
/// table). v3.1.1 has six codes, and a broker must be able to refuse a v3.1.1 client for
/// any reason it would refuse a v5 one, so every v5 code maps somewhere:
///
/// | v3 | meaning                       | v5 reasons                                        |
/// |----|-------------------------------|---------------------------------------------------|
/// | 0  | accepted                      | Success                                           |
/// | 1  | unacceptable protocol version | UnsupportedProtocolVersion                        |
/// | 2  | identifier rejected           | ClientIdentifierNotValid                          |
/// | 3  | server unavailable            | ServerUnavailable, ServerBusy, UseAnotherServer, ServerMoved, ConnectionRateExceeded, QuotaExceeded, UnspecifiedError, ImplementationSpecificError |
/// | 4  | bad user name or password     | BadUserNameOrPassword, BadAuthenticationMethod    |
/// | 5  | not authorized                | NotAuthorized, Banned, and refusals of what the client asked for: MalformedPacket, ProtocolError, TopicNameInvalid, PacketTooLarge, PayloadFormatInvalid, RetainNotSupported, QoSNotSupported |
///
/// Code 3 reads as "try again later" to v3.1.1 clients, so it takes the transient, server
/// side conditions; code 5 takes the permanent refusals. (3.1.1 [MQTT-3.2.2-6] would have
/// the server close without CONNACK when no code fits; answering 3 or 5 tells the client
/// more and is what the connection asks for.)
pub(crate) fn connack_to_v3(reason: ReasonCode) -> u8 {
    use ReasonCode::*;
    match reason {
        Success => 0,
        UnsupportedProtocolVersion => 1,
        ClientIdentifierNotValid => 2,
        ServerUnavailable
        | ServerBusy
        | UseAnotherServer
        | ServerMoved
        | ConnectionRateExceeded
        | QuotaExceeded
        | UnspecifiedError
        | ImplementationSpecificError => 3,
        BadUserNameOrPassword | BadAuthenticationMethod => 4,
        _ => 5,
    }
}

/// The reason for a v3.1.1 CONNACK return code; 6..=255 are reserved (3.1.1 §3.2.2.3).
pub(crate) fn connack_from_v3(code: u8) -> Result<ReasonCode, DecodeError> {
    Ok(match code {
        0 => ReasonCode::Success,
        1 => ReasonCode::UnsupportedProtocolVersion,
        2 => ReasonCode::ClientIdentifierNotValid,
        3 => ReasonCode::ServerUnavailable,
        4 => ReasonCode::BadUserNameOrPassword,
        5 => ReasonCode::NotAuthorized,
        _ => {
            return Err(DecodeError::InvalidReasonCode {
                packet_type: PacketType::ConnAck,
                code,
            })
        }
    })
}

/// The v3.1.1 SUBACK result: the granted QoS, or 0x80 for any failure.
pub(crate) fn suback_to_v3(reason: ReasonCode) -> u8 {
    if reason.is_error() {
        0x80
    } else {
        reason.to_u8()
    }
}

pub(crate) fn suback_from_v3(code: u8) -> Result<ReasonCode, DecodeError> {
    Ok(match code {
        0x00 => ReasonCode::Success,
        0x01 => ReasonCode::GrantedQoS1,
        0x02 => ReasonCode::GrantedQoS2,
        0x80 => ReasonCode::UnspecifiedError,
        _ => {
            return Err(DecodeError::InvalidReasonCode {
                packet_type: PacketType::SubAck,
                code,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_is_a_defined_reason_code() {
        for packet_type in [
            PacketType::ConnAck,
            PacketType::PubAck,
            PacketType::PubRel,
            PacketType::SubAck,
            PacketType::UnsubAck,
            PacketType::Disconnect,
            PacketType::Auth,
        ] {
            for &code in table(packet_type) {
                assert!(
                    ReasonCode::from_u8(code).is_some(),
                    "{packet_type:?} {code:#x}"
                );
            }
        }
    }

    #[test]
    fn every_connack_reason_refuses_a_v3_client_with_the_same_outcome() {
        for &code in CONNACK {
            let reason = ReasonCode::from_u8(code).expect("table entry");
            let v3 = connack_to_v3(reason);
            assert_eq!(v3 == 0, reason == ReasonCode::Success, "{reason}");
            let back = connack_from_v3(v3).expect("0..=5");
            assert_eq!(back.is_error(), reason.is_error(), "{reason}");
            // The six v3.1.1 codes survive the round trip unchanged.
            if code == 0 || (0x84..=0x87).contains(&code) || code == 0x88 {
                assert_eq!(back, reason);
            }
        }
    }

    #[test]
    fn v3_suback_failure_is_unspecified_error() {
        assert_eq!(suback_to_v3(ReasonCode::QuotaExceeded), 0x80);
        assert_eq!(suback_from_v3(0x80), Ok(ReasonCode::UnspecifiedError));
        assert_eq!(suback_to_v3(ReasonCode::GrantedQoS2), 0x02);
        assert_eq!(
            suback_from_v3(0x03),
            Err(DecodeError::InvalidReasonCode {
                packet_type: PacketType::SubAck,
                code: 3
            })
        );
    }
}
