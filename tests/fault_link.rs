//! The packet-level impairment link (DESIGN §4) with the kernel's own TCP and UDP on both
//! sides: two network namespaces joined through the relay.
//!
//! These tests need root, `/dev/net/tun` and iproute2 (CI has all three). Without them
//! they fail and say why, unless `TWINMQ_ALLOW_NO_NETNS=1` is set: then they print why and
//! pass without testing anything.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use twinmq::fault::link::{
    cleanup_dead, Directions, ImpairedLink, LinkError, LinkPlan, LinkStats, Window, CLIENT_ADDR,
    SERVER_ADDR,
};

const PREFIX: &str = "tmqt";

/// Deletes namespaces left by earlier runs of these tests whose process is gone.
fn clean_dead_runs() {
    let deleted = cleanup_dead(PREFIX);
    if !deleted.is_empty() {
        eprintln!("deleted stale namespaces {deleted:?}");
    }
}

/// A link with a name unique to this process and test, or `None` when the machine cannot
/// host one and `TWINMQ_ALLOW_NO_NETNS=1` says that is acceptable.
fn link(plan: LinkPlan) -> Option<ImpairedLink> {
    static CLEAN: Once = Once::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    CLEAN.call_once(clean_dead_runs);
    let prefix = format!(
        "{PREFIX}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    match ImpairedLink::create(&prefix, plan) {
        Ok(link) => Some(link),
        Err(LinkError::Unavailable { why }) => {
            if std::env::var("TWINMQ_ALLOW_NO_NETNS").as_deref() == Ok("1") {
                eprintln!("SKIPPED (TWINMQ_ALLOW_NO_NETNS=1): {why}");
                None
            } else {
                panic!(
                    "the impairment link is unavailable: {why}\n\
                     (run as root with /dev/net/tun and iproute2, or set \
                     TWINMQ_ALLOW_NO_NETNS=1 to skip these tests)"
                );
            }
        }
        Err(e) => panic!("{e}"),
    }
}

fn server_listener(link: &ImpairedLink) -> TcpListener {
    link.in_server_ns(|| TcpListener::bind((SERVER_ADDR, 0)))
        .expect("enter server namespace")
        .expect("bind in server namespace")
}

fn client_connect(link: &ImpairedLink, to: SocketAddr) -> TcpStream {
    client_connect_within(link, to, Duration::from_secs(8), Duration::from_secs(10))
}

/// Connects from the client namespace within `connect`; reads and writes fail after `io`.
fn client_connect_within(
    link: &ImpairedLink,
    to: SocketAddr,
    connect: Duration,
    io: Duration,
) -> TcpStream {
    let stream = link
        .in_client_ns(|| TcpStream::connect_timeout(&to, connect))
        .expect("enter client namespace")
        .expect("connect through the link");
    stream.set_read_timeout(Some(io)).expect("timeout");
    stream.set_write_timeout(Some(io)).expect("timeout");
    stream
}

/// Accepts one connection, with a deadline, so no test thread can hang forever.
fn accept_one(listener: &TcpListener, within: Duration) -> io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                stream.set_write_timeout(Some(Duration::from_secs(10)))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn udp_pair(link: &ImpairedLink) -> (UdpSocket, UdpSocket) {
    let server = link
        .in_server_ns(|| UdpSocket::bind((SERVER_ADDR, 0)))
        .expect("enter server namespace")
        .expect("bind udp in server namespace");
    let client = link
        .in_client_ns(|| UdpSocket::bind((CLIENT_ADDR, 0)))
        .expect("enter client namespace")
        .expect("bind udp in client namespace");
    for s in [&server, &client] {
        // Long enough that a stalled relay thread on a loaded machine is not "silence".
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
    }
    (server, client)
}

/// Waits (bounded) until the relay's counters satisfy `done`: it counts a packet just
/// after handling it, on its own thread.
fn wait_for_stats(link: &ImpairedLink, what: &str, done: impl Fn(&LinkStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&link.stats()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", link.stats());
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (bounded) until the relay has applied `n` rebindings.
fn wait_for_rebinds(link: &ImpairedLink, n: u64) {
    wait_for_stats(link, &format!("rebinding {n} never applied"), |s| {
        s.rebinds >= n
    });
}

/// The numbers (4-byte datagrams) that reach `server`, reading at most `max` datagrams
/// and stopping at the first silence of the socket's read timeout.
fn receive_numbered(server: &UdpSocket, max: usize) -> std::collections::BTreeSet<u32> {
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = [0u8; 64];
    for _ in 0..max {
        match server.recv_from(&mut buf) {
            Ok((4, _)) => {
                seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    seen
}

#[test]
fn tcp_bytes_flow_through_a_clean_link() {
    let Some(link) = link(LinkPlan::default()) else {
        return;
    };
    // A command placed in the server namespace sees the server's address.
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "-4", "addr", "show"]);
    let out = link
        .run_in_server_ns(&mut cmd)
        .expect("namespace")
        .output()
        .expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("192.0.2.1/24"), "{text}");

    let listener = server_listener(&link);
    let addr = listener.local_addr().expect("addr");
    let echo = thread::spawn(move || -> io::Result<u64> {
        let mut stream = accept_one(&listener, Duration::from_secs(10))?;
        let mut copied = 0u64;
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(copied);
            }
            stream.write_all(&buf[..n])?;
            copied += n as u64;
        }
    });
    let mut client = client_connect(&link, addr);
    let message: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut client = client.try_clone().expect("clone");
        let message = message.clone();
        thread::spawn(move || -> io::Result<()> {
            client.write_all(&message)?;
            client.shutdown(std::net::Shutdown::Write)
        })
    };
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).expect("read the echo");
    writer.join().expect("writer").expect("write");
    assert_eq!(echoed, message);
    assert_eq!(echo.join().expect("echo thread").expect("echo"), 65_536);
    let stats = link.stats();
    assert_eq!(stats.to_server.dropped + stats.to_client.dropped, 0);
    assert!(stats.to_server.packets_forwarded > 10, "{stats:?}");
    assert!(stats.to_client.packets_forwarded > 10, "{stats:?}");
}

/// An order-sensitive checksum, continued from `sum` over `bytes` (so chunks add up).
fn checksum(sum: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)))
}

/// Liveness bound through a lossy link. TCP backs off exponentially (SYN from 1 s, data
/// from 200 ms): six lost round trips in a row on one segment already cost 12.6 s, which
/// 20 % loss each way made a few-percent event per run (CI once hit it with a 15 s bound).
/// At 10 % loss, reaching 60 s takes eight lost round trips in a row (p ≈ 2e-6).
const LOSSY_BOUND: Duration = Duration::from_secs(60);

#[test]
fn tcp_completes_a_transfer_through_10_percent_loss() {
    let Some(link) = link(LinkPlan {
        seed: Some(20),
        loss: 0.1,
        ..LinkPlan::default()
    }) else {
        return;
    };
    const SIZE: usize = 200 * 1024;
    let listener = server_listener(&link);
    let addr = listener.local_addr().expect("addr");
    let sink = thread::spawn(move || -> io::Result<(u64, u64)> {
        let mut stream = accept_one(&listener, LOSSY_BOUND)?;
        stream.set_read_timeout(Some(LOSSY_BOUND))?;
        let (mut count, mut sum) = (0u64, 0u64);
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            count += n as u64;
            sum = checksum(sum, &buf[..n]);
        }
        stream.write_all(&count.to_be_bytes())?;
        Ok((count, sum))
    });
    let started = Instant::now();
    let mut client = client_connect_within(&link, addr, LOSSY_BOUND, LOSSY_BOUND);
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 256) as u8).collect();
    client.write_all(&data).expect("send 200 KiB");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut reply = [0u8; 8];
    client.read_exact(&mut reply).expect("the server's count");
    let (count, sum) = sink.join().expect("sink thread").expect("sink");
    let expected = checksum(0, &data);
    assert_eq!(u64::from_be_bytes(reply), SIZE as u64);
    assert_eq!(
        (count, sum),
        (SIZE as u64, expected),
        "every byte, in order"
    );
    let stats = link.stats();
    let dropped = stats.to_server.dropped + stats.to_client.dropped;
    eprintln!(
        "200 KiB through 10 % loss in {:?}: {stats:?}",
        started.elapsed()
    );
    assert!(dropped > 0, "the link really dropped packets: {stats:?}");
}

#[test]
fn about_half_the_udp_datagrams_cross_50_percent_loss() {
    let Some(link) = link(LinkPlan {
        seed: Some(50),
        loss: 0.5,
        directions: Directions::ToServer,
        ..LinkPlan::default()
    }) else {
        return;
    };
    let (server, client) = udp_pair(&link);
    let to = server.local_addr().expect("addr");
    const SENT: u32 = 400;
    for i in 0..SENT {
        client.send_to(&i.to_be_bytes(), to).expect("send");
        if i % 20 == 19 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    let got = receive_numbered(&server, SENT as usize).len() as u64;
    let stats = link.stats();
    assert!((140..=260).contains(&got), "{got} of {SENT}: {stats:?}");
    assert_eq!(got + stats.to_server.dropped, u64::from(SENT), "{stats:?}");
}

#[test]
fn rebinding_changes_the_udp_source_port_the_server_sees() {
    let Some(link) = link(LinkPlan::default()) else {
        return;
    };
    let (server, client) = udp_pair(&link);
    let to = server.local_addr().expect("addr");
    let own_port = client.local_addr().expect("addr").port();
    let mut buf = [0u8; 64];
    // One round trip: returns the source the server saw; the reply must come back.
    let mut round_trip = |payload: &[u8]| -> SocketAddr {
        client.send_to(payload, to).expect("send");
        let (n, from) = server.recv_from(&mut buf).expect("the server receives");
        assert_eq!(&buf[..n], payload);
        server.send_to(payload, from).expect("reply");
        let (n, reply_from) = client.recv_from(&mut buf).expect("the reply comes back");
        assert_eq!(&buf[..n], payload);
        assert_eq!(reply_from, to);
        from
    };
    let before = round_trip(b"before");
    assert_eq!(before.ip(), CLIENT_ADDR);
    assert_eq!(before.port(), own_port, "no rebinding yet");

    link.rebind_now();
    wait_for_rebinds(&link, 1);
    let first = round_trip(b"after one");
    assert_eq!(first.ip(), CLIENT_ADDR);
    assert_ne!(first.port(), own_port, "the NAT gave a new port");
    assert_eq!(client.local_addr().expect("addr").port(), own_port);

    // A timed rebinding from a live plan update.
    link.set_plan(LinkPlan {
        rebind_at: vec![Duration::ZERO],
        ..LinkPlan::default()
    })
    .expect("plan");
    wait_for_rebinds(&link, 2);
    let second = round_trip(b"after two");
    assert_ne!(second.port(), first.port());
    assert_ne!(second.port(), own_port);

    // Whatever the server still sends to the old binding is lost.
    let dropped_before = link.stats().to_client.dropped;
    server.send_to(b"stale", first).expect("send to old port");
    // Wait for the relay's verdict, then check nothing reached the client.
    wait_for_stats(&link, "the stale reply was never handled", |s| {
        s.to_client.dropped > dropped_before
    });
    client.set_nonblocking(true).expect("nonblocking");
    assert!(client.recv_from(&mut buf).is_err(), "stale reply delivered");
    assert_eq!(link.stats().to_client.dropped, dropped_before + 1);
    assert!(link.stats().to_server.rewritten >= 2);
}

#[test]
fn rebinding_breaks_a_tcp_connection() {
    let Some(link) = link(LinkPlan::default()) else {
        return;
    };
    let listener = server_listener(&link);
    let addr = listener.local_addr().expect("addr");
    let mut client = client_connect(&link, addr);
    let mut accepted = accept_one(&listener, Duration::from_secs(5)).expect("accept");
    client.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");

    link.rebind_now();
    wait_for_rebinds(&link, 1);
    // The server's kernel sees a segment of a connection it does not know and resets it.
    client.write_all(b"lost").expect("the write is only queued");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = [0u8; 16];
    let outcome = client.read(&mut rest);
    assert!(
        matches!(&outcome, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "expected a reset, got {outcome:?}"
    );
}

#[test]
fn a_blackhole_window_drops_everything_inside_it() {
    let Some(link) = link(LinkPlan::default()) else {
        return;
    };
    let (server, client) = udp_pair(&link);
    let to = server.local_addr().expect("addr");
    let start = Instant::now();
    // The relay times packets as it reads them, the test as it sends them: the bands
    // asserted below keep 300 ms clear of the window's edges so a stalled thread on a
    // loaded machine cannot move a datagram across an edge.
    link.set_plan(LinkPlan {
        blackholes: vec![Window {
            from: Duration::from_millis(500),
            to: Duration::from_millis(1500),
        }],
        ..LinkPlan::default()
    })
    .expect("plan");
    let mut sent = Vec::new();
    for i in 0..400u32 {
        let at = start.elapsed();
        if at > Duration::from_millis(2100) {
            break;
        }
        client.send_to(&i.to_be_bytes(), to).expect("send");
        sent.push((i, at));
        thread::sleep(Duration::from_millis(10));
    }
    let got = receive_numbered(&server, sent.len());
    let ms = |m| Duration::from_millis(m);
    let (mut inside, mut outside) = (0, 0);
    for (i, at) in &sent {
        if *at >= ms(800) && *at < ms(1200) {
            inside += 1;
            assert!(
                !got.contains(i),
                "datagram {i} sent at {at:?} crossed the blackhole"
            );
        }
        if *at < ms(200) || *at >= ms(1800) {
            outside += 1;
            assert!(got.contains(i), "datagram {i} sent at {at:?} was lost");
        }
    }
    assert!(
        inside > 0 && outside > 0,
        "{inside} inside, {outside} outside"
    );
    let stats = link.stats();
    assert!(stats.to_server.dropped >= inside, "{stats:?}");
    assert_eq!(
        got.len() as u64 + stats.to_server.dropped,
        sent.len() as u64
    );
}

#[test]
fn delay_and_duplication_reach_the_kernel() {
    let Some(link) = link(LinkPlan {
        delay: Some(Duration::from_millis(40)),
        duplicate: 1.0,
        directions: Directions::ToServer,
        ..LinkPlan::default()
    }) else {
        return;
    };
    let (server, client) = udp_pair(&link);
    let to = server.local_addr().expect("addr");
    let mut buf = [0u8; 16];
    let sent_at = Instant::now();
    client.send_to(b"twice", to).expect("send");
    let (n, _) = server.recv_from(&mut buf).expect("first copy");
    assert!(sent_at.elapsed() >= Duration::from_millis(40), "delayed");
    assert_eq!(&buf[..n], b"twice");
    let (n, _) = server.recv_from(&mut buf).expect("second copy");
    assert_eq!(&buf[..n], b"twice");
    wait_for_stats(&link, "both copies counted", |s| {
        s.to_server.packets_forwarded >= 2
    });
    let stats = link.stats();
    assert_eq!(stats.to_server.duplicated, 1, "{stats:?}");
    assert_eq!(stats.to_server.delayed, 1, "{stats:?}");
    assert_eq!(stats.to_server.packets_forwarded, 2, "{stats:?}");
}
