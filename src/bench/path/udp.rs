//! A datagram relay on loopback: clients send to its front socket; each client address is
//! a flow with its own socket towards the broker, as a NAT gives each device a port.
//!
//! ```text
//!  client A ─┐                    ┌─ flow A: 127.0.0.1:a ─┐
//!  client B ─┴─► front 127.0.0.1:f ┤                        ├─► broker
//!                                  └─ flow B: 127.0.0.1:b ─┘
//! ```
//!
//! Datagrams leave through a delay line (a heap ordered by release time), so a constant
//! delay never reorders and a reordering decision always does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Direction, DropCause, Impairment, Outage, OutageSchedule, PathStats, Verdict};

/// Socket buffers of the relay's sockets: large, so the relay itself drops nothing.
const SOCKET_BUFFER: usize = 4 << 20;

/// A running datagram relay. Dropping it stops it.
pub struct UdpRelay {
    addr: SocketAddr,
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    flows: Mutex<HashMap<SocketAddr, Arc<Flow>>>,
    up: Mutex<Direction>,
    down: Mutex<Direction>,
    up_line: DelayLine,
    down_line: DelayLine,
    stats: Arc<PathStats>,
    outages: OutageSchedule,
    /// Flows created before the current generation are forgotten.
    generation: AtomicU64,
}

struct Flow {
    client: SocketAddr,
    generation: u64,
    socket: Mutex<Arc<UdpSocket>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl UdpRelay {
    /// Starts a relay on 127.0.0.1 towards `upstream`, with `up` applied to what clients
    /// send and `down` to what the broker sends.
    pub async fn start(
        upstream: SocketAddr,
        up: Impairment,
        down: Impairment,
        seed: u64,
    ) -> io::Result<UdpRelay> {
        let front = Arc::new(bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)))?);
        let addr = front.local_addr()?;
        let (up_line, up_task) = DelayLine::start();
        let (down_line, down_task) = DelayLine::start();
        let inner = Arc::new(Inner {
            front,
            upstream,
            flows: Mutex::new(HashMap::new()),
            up: Mutex::new(Direction::new(up, seed)),
            down: Mutex::new(Direction::new(down, seed ^ 0x5DEE_CE66)),
            up_line,
            down_line,
            stats: Arc::new(PathStats::default()),
            outages: OutageSchedule::default(),
            generation: AtomicU64::new(0),
        });
        let front_task = tokio::spawn(front_loop(Arc::clone(&inner)));
        Ok(UdpRelay {
            addr,
            inner,
            tasks: vec![front_task, up_task, down_task],
        })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> Arc<PathStats> {
        Arc::clone(&self.inner.stats)
    }

    /// From `from`, for `len`, every datagram either way is held (then delivered) or
    /// dropped.
    pub fn outage(&self, from: Instant, len: Duration, kind: Outage) {
        self.inner.outages.set(from, len, kind);
    }

    /// NAT rebinding: every flow gets a new source port towards the broker. Clients notice
    /// nothing; the broker sees packets of known connections arrive from new addresses,
    /// but only once a client sends something.
    pub fn rebind_flows(&self) -> io::Result<usize> {
        let flows: Vec<Arc<Flow>> = lock(&self.inner.flows).values().cloned().collect();
        let mut moved = 0;
        for flow in flows {
            if flow.generation < self.inner.generation.load(Ordering::Relaxed) {
                continue;
            }
            let socket = Arc::new(self.inner.bind_upstream()?);
            *lock(&flow.socket) = Arc::clone(&socket);
            let task = tokio::spawn(upstream_loop(
                Arc::clone(&self.inner),
                Arc::clone(&flow),
                socket,
            ));
            if let Some(old) = lock(&flow.task).replace(task) {
                old.abort();
            }
            moved += 1;
        }
        Ok(moved)
    }

    /// Forgets every flow, as a rebooted NAT does: datagrams of existing flows are dropped
    /// both ways from now on; new client addresses get new flows.
    pub fn forget_flows(&self) {
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
        self.inner.stop_flows();
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.inner.stop_flows();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = crate::transport::quic::udp_socket(addr, SOCKET_BUFFER, SOCKET_BUFFER)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

impl Inner {
    /// A fresh socket towards the broker, on the loopback of the broker's family.
    fn bind_upstream(&self) -> io::Result<UdpSocket> {
        bind_udp(match self.upstream {
            SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
        })
    }

    /// Ends every flow's upstream task.
    fn stop_flows(&self) {
        for flow in lock(&self.flows).values() {
            if let Some(task) = lock(&flow.task).take() {
                task.abort();
            }
        }
    }

    fn admit(&self, direction: &Mutex<Direction>, flow: &Flow, len: usize) -> Verdict {
        if flow.generation < self.generation.load(Ordering::Relaxed) {
            let verdict = Verdict::Dropped(DropCause::Forgotten);
            self.stats.count(verdict);
            return verdict;
        }
        let outage = self.outages.get();
        lock(direction).admit(Instant::now(), len, true, outage, &self.stats)
    }

    fn flow(self: &Arc<Self>, client: SocketAddr) -> io::Result<Arc<Flow>> {
        let mut flows = lock(&self.flows);
        if let Some(flow) = flows.get(&client) {
            return Ok(Arc::clone(flow));
        }
        let socket = Arc::new(self.bind_upstream()?);
        let flow = Arc::new(Flow {
            client,
            generation: self.generation.load(Ordering::Relaxed),
            socket: Mutex::new(Arc::clone(&socket)),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(upstream_loop(Arc::clone(self), Arc::clone(&flow), socket));
        *lock(&flow.task) = Some(task);
        flows.insert(client, Arc::clone(&flow));
        Ok(flow)
    }
}

/// Client to broker.
async fn front_loop(inner: Arc<Inner>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, client) = match inner.front.recv_from(&mut buf).await {
            Ok(got) => got,
            // ICMP errors from earlier sends surface here on some systems; keep going.
            Err(_) => continue,
        };
        let Ok(flow) = inner.flow(client) else {
            continue;
        };
        if let Verdict::Release(at) = inner.admit(&inner.up, &flow, len) {
            let socket = Arc::clone(&lock(&flow.socket));
            inner.up_line.push(
                at,
                socket,
                inner.upstream,
                Bytes::copy_from_slice(&buf[..len]),
            );
        }
    }
}

/// Broker to client, for one flow's current socket.
async fn upstream_loop(inner: Arc<Inner>, flow: Arc<Flow>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let len = match socket.recv_from(&mut buf).await {
            Ok((len, _)) => len,
            Err(_) => continue,
        };
        if let Verdict::Release(at) = inner.admit(&inner.down, &flow, len) {
            inner.down_line.push(
                at,
                Arc::clone(&inner.front),
                flow.client,
                Bytes::copy_from_slice(&buf[..len]),
            );
        }
    }
}

/// Datagrams waiting for their release time, sent in (time, arrival) order by one task.
struct DelayLine {
    tx: mpsc::UnboundedSender<Scheduled>,
    seq: AtomicU64,
}

struct Scheduled {
    at: Instant,
    seq: u64,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Bytes,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl DelayLine {
    fn start() -> (DelayLine, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(delay_loop(rx));
        (
            DelayLine {
                tx,
                seq: AtomicU64::new(0),
            },
            task,
        )
    }

    fn push(&self, at: Instant, socket: Arc<UdpSocket>, to: SocketAddr, data: Bytes) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Scheduled {
            at,
            seq,
            socket,
            to,
            data,
        });
    }
}

async fn delay_loop(mut rx: mpsc::UnboundedReceiver<Scheduled>) {
    let mut heap: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    loop {
        let next = heap.peek().map(|Reverse(s)| s.at);
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => heap.push(Reverse(item)),
                None if heap.is_empty() => return,
                None => {}
            },
            () = async { if let Some(at) = next { tokio::time::sleep_until(at).await } },
                if next.is_some() => {
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse(s)| s.at <= now) {
                    if let Some(Reverse(item)) = heap.pop() {
                        // A full socket buffer loses the datagram, as a congested link would.
                        let _ = item.socket.send_to(&item.data, item.to).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let mut reply = from.port().to_be_bytes().to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, from).await;
            }
        });
        (addr, task)
    }

    async fn round_trip(client: &UdpSocket, relay: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
        client.send_to(msg, relay).await.expect("send");
        let mut buf = [0u8; 2048];
        match tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_both_ways_and_rebinding_changes_the_source_port() {
        let (server, _task) = echo_server().await;
        let relay = UdpRelay::start(server, Impairment::default(), Impairment::default(), 1)
            .await
            .expect("relay");
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        let first = round_trip(&client, relay.addr(), b"one")
            .await
            .expect("echo");
        assert_eq!(&first[2..], b"one");
        assert_eq!(relay.rebind_flows().expect("rebind"), 1);
        let second = round_trip(&client, relay.addr(), b"two")
            .await
            .expect("echo");
        assert_eq!(&second[2..], b"two");
        assert_ne!(first[..2], second[..2], "the server saw a new source port");
        relay.forget_flows();
        assert!(round_trip(&client, relay.addr(), b"three").await.is_none());
        assert_eq!(relay.stats().dropped_forgotten.load(Ordering::Relaxed), 1);
        let other = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        assert!(
            round_trip(&other, relay.addr(), b"new").await.is_some(),
            "a new client is a new flow"
        );
    }
}
