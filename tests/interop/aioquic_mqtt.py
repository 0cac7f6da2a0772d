#!/usr/bin/env python3
"""An MQTT client on aioquic, a QUIC stack twinmq did not write.

Connects to a broker's QUIC port with ALPN "mqtt", verifying the server certificate
against --cafile for --server-name, opens ONE bidirectional stream (the EMQX
single-stream convention) and speaks MQTT 3.1.1 (--version 4) or 5.0 (--version 5) on
it, encoded by hand:

    CONNECT -> CONNACK, SUBSCRIBE --filter QoS 1 -> SUBACK,
    PUBLISH QoS 1 on --topic -> PUBACK, and --expect PUBLISHes received (each acked),
    DISCONNECT.

Prints one JSON line {"event": "subscribed"} once the SUBACK is in (so a test can publish
from elsewhere), then one JSON line {"event": "done", ...} with what it saw, keys sorted
and messages sorted by topic, so a run's report is one exact line; then exits 0.
On any failure it prints "aioquic_mqtt: <reason>" on stderr and exits 1; every wait is
bounded by --timeout.

Used by tests/quic_interop.rs with the venv that .ci/run creates (target/pyenv).
"""

import argparse
import asyncio
import json
import ssl
import struct
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, DISCONNECT = 8, 9, 14


class Failure(Exception):
    """The broker did something this client did not expect."""


# --- MQTT encoding: just the packets this client sends ---------------------------------


def varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text):
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def packet(first_byte, body):
    return bytes([first_byte]) + varint(len(body)) + body


class Codec:
    """Encodes and decodes for one protocol level (4 = 3.1.1, 5 = 5.0)."""

    def __init__(self, level):
        self.level = level
        # v5 packets carry a property block; an empty one is a single zero byte.
        self.no_props = b"\x00" if level == 5 else b""

    def connect(self, client_id, keep_alive):
        clean = 0x02  # clean session / clean start
        body = utf8("MQTT") + bytes([self.level, clean]) + struct.pack("!H", keep_alive)
        return packet(CONNECT << 4, body + self.no_props + utf8(client_id))

    def subscribe(self, packet_id, topic_filter, qos):
        body = struct.pack("!H", packet_id) + self.no_props + utf8(topic_filter) + bytes([qos])
        return packet(SUBSCRIBE << 4 | 0x02, body)

    def publish_qos1(self, packet_id, topic, payload):
        body = utf8(topic) + struct.pack("!H", packet_id) + self.no_props + payload
        return packet(PUBLISH << 4 | 0x02, body)

    def puback(self, packet_id):
        # v5: a PUBACK of two bytes means reason Success with no properties.
        return packet(PUBACK << 4, struct.pack("!H", packet_id))

    def disconnect(self):
        return packet(DISCONNECT << 4, b"")

    def skip_props(self, body, at):
        """Returns the offset after the property block at `at` (v5), or `at` (3.1.1)."""
        if self.level != 5:
            return at
        length, at = read_varint(body, at)
        return at + length


# --- MQTT decoding ----------------------------------------------------------------------


def read_varint(data, at):
    value, shift = 0, 0
    for _ in range(4):
        if at >= len(data):
            raise Failure("truncated variable byte integer")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    raise Failure("variable byte integer longer than 4 bytes")


async def read_packet(reader):
    """One packet: (type, flags, body)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    for _ in range(4):
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    else:
        raise Failure("remaining length longer than 4 bytes")
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body


def parse_publish(codec, flags, body):
    qos = (flags >> 1) & 0x03
    (topic_len,) = struct.unpack_from("!H", body, 0)
    topic = body[2 : 2 + topic_len].decode("utf-8")
    at = 2 + topic_len
    packet_id = None
    if qos:
        (packet_id,) = struct.unpack_from("!H", body, at)
        at += 2
    at = codec.skip_props(body, at)
    return {"topic": topic, "qos": qos, "packet_id": packet_id, "payload": body[at:]}


# --- the session ------------------------------------------------------------------------


class Protocol(QuicConnectionProtocol):
    """Records the ALPN the server chose and why the connection ended."""

    alpn = None
    # aioquic's ConnectionError carries no reason; the last connection's is kept here.
    last_close = None

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated):
            self.alpn = event.alpn_protocol
        elif isinstance(event, ConnectionTerminated):
            Protocol.last_close = event
        super().quic_event_received(event)


def describe_close(event):
    if event is None:
        return "no CONNECTION_CLOSE received"
    code = event.error_code
    # QUIC carries a TLS alert as a CRYPTO_ERROR, 0x100 + alert (RFC 9001 section 4.8).
    what = f"TLS alert {code - 0x100}" if 0x100 <= code < 0x200 else f"error {code:#x}"
    return f"closed with {what}: {event.reason_phrase or 'no reason given'}"


def emit(record):
    print(json.dumps(record, sort_keys=True), flush=True)


async def session(args):
    codec = Codec(args.version)
    config = QuicConfiguration(is_client=True, alpn_protocols=[args.alpn])
    config.server_name = args.server_name
    config.verify_mode = ssl.CERT_REQUIRED
    config.load_verify_locations(cafile=args.cafile)

    async with connect(
        args.host, args.port, configuration=config, create_protocol=Protocol
    ) as quic:
        reader, writer = await quic.create_stream()
        seen = {"event": "done", "alpn": quic.alpn, "version": args.version}

        writer.write(codec.connect(args.client_id, args.keep_alive))
        kind, _, body = await read_packet(reader)
        if kind != CONNACK or len(body) < 2:
            raise Failure(f"expected CONNACK, got packet type {kind}")
        seen["connack"] = {"session_present": bool(body[0] & 1), "code": body[1]}
        if body[1] != 0:
            raise Failure(f"CONNACK refused the connection: code {body[1]:#x}")

        writer.write(codec.subscribe(1, args.filter or args.topic, 1))
        kind, _, body = await read_packet(reader)
        if kind != SUBACK or struct.unpack_from("!H", body, 0)[0] != 1:
            raise Failure(f"expected SUBACK for packet id 1, got packet type {kind}")
        granted = list(body[codec.skip_props(body, 2) :])
        seen["suback"] = granted
        if any(code >= 0x80 for code in granted):
            raise Failure(f"subscription refused: {granted}")
        emit({"event": "subscribed"})

        own_id = 2
        writer.write(codec.publish_qos1(own_id, args.topic, args.payload.encode()))
        received = []
        while "puback" not in seen or len(received) < args.expect:
            kind, flags, body = await read_packet(reader)
            if kind == PUBLISH:
                message = parse_publish(codec, flags, body)
                if message["packet_id"] is not None:
                    writer.write(codec.puback(message["packet_id"]))
                message["payload"] = message["payload"].decode("utf-8", "replace")
                del message["packet_id"]
                received.append(message)
            elif kind == PUBACK:
                (packet_id,) = struct.unpack_from("!H", body, 0)
                # 3.1.1 and a short v5 PUBACK: success; else the v5 reason code.
                code = body[2] if len(body) > 2 else 0
                if packet_id != own_id:
                    raise Failure(f"PUBACK for unknown packet id {packet_id}")
                seen["puback"] = {"packet_id": packet_id, "code": code}
            else:
                raise Failure(f"unexpected packet type {kind}")
        # Sorted, so the report of a run is one exact line whatever the arrival order.
        seen["received"] = sorted(received, key=lambda m: (m["topic"], m["payload"]))

        writer.write(codec.disconnect())
        writer.write_eof()
        # The broker ends its side of the stream once it has processed the DISCONNECT.
        if await reader.read() != b"":
            raise Failure("data after DISCONNECT")
        seen["stream_finished_by_broker"] = reader.at_eof()
        return seen


async def bounded(work, timeout):
    # aioquic leaves the failed handshake's future unretrieved; asyncio would print it.
    asyncio.get_running_loop().set_exception_handler(quiet_unretrieved)
    return await asyncio.wait_for(work, timeout)


def quiet_unretrieved(loop, context):
    if context.get("message") != "Future exception was never retrieved":
        loop.default_exception_handler(context)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--alpn", default="mqtt")
    parser.add_argument("--version", type=int, choices=(4, 5), default=4)
    parser.add_argument("--client-id", default="aioquic")
    parser.add_argument("--keep-alive", type=int, default=30)
    parser.add_argument("--topic", default="interop/aioquic")
    parser.add_argument("--filter", help="subscription filter (default: --topic)")
    parser.add_argument("--payload", default="hello from aioquic")
    parser.add_argument("--expect", type=int, default=1, help="PUBLISHes to receive")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds, overall")
    args = parser.parse_args()

    try:
        seen = asyncio.run(bounded(session(args), args.timeout))
    except asyncio.TimeoutError:
        sys.exit(f"aioquic_mqtt: timed out after {args.timeout} s")
    except asyncio.IncompleteReadError:
        sys.exit("aioquic_mqtt: the broker ended the stream")
    except Failure as failure:
        sys.exit(f"aioquic_mqtt: {failure}")
    except ConnectionError:
        sys.exit(f"aioquic_mqtt: connection failed: {describe_close(Protocol.last_close)}")
    except (OSError, ssl.SSLError) as error:
        sys.exit(f"aioquic_mqtt: connection failed: {type(error).__name__}: {error}")
    emit(seen)


if __name__ == "__main__":
    main()
