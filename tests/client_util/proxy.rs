//! A TCP proxy between a client and the broker that the test controls: it records the
//! MQTT packets the client sends, can swallow one direction of a connection (acks that
//! never arrive), and can cut every connection at once (an abrupt network loss).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use twinmq::protocol::codec::Decoder;
use twinmq::protocol::{Packet, PacketType};

use super::within;

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to broker.
    Up,
    /// Broker to client.
    Down,
}

#[derive(Default)]
struct Flags {
    hold_up: AtomicBool,
    hold_down: AtomicBool,
}

impl Flags {
    fn held(&self, dir: Dir) -> &AtomicBool {
        match dir {
            Dir::Up => &self.hold_up,
            Dir::Down => &self.hold_down,
        }
    }
}

struct State {
    upstream: SocketAddr,
    /// Packets the client sent, in order, over every connection.
    seen: Mutex<Vec<Packet>>,
    seen_changed: Notify,
    open: Mutex<Vec<Arc<Flags>>>,
    /// When the client sends this packet type, that connection's `Dir` is held from then on
    /// (the packet itself still goes through).
    trigger: Mutex<Option<(PacketType, Dir)>>,
    cut: watch::Sender<u64>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, _) = watch::channel(0);
        let state = Arc::new(State {
            upstream,
            seen: Mutex::new(Vec::new()),
            seen_changed: Notify::new(),
            open: Mutex::new(Vec::new()),
            trigger: Mutex::new(None),
            cut,
        });
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = Arc::clone(&accept_state);
                tokio::spawn(serve(client, state));
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// Swallows (or lets through again) `dir` on every open connection; new connections
    /// are not held.
    pub fn hold(&self, dir: Dir, held: bool) {
        for flags in self.state.open.lock().expect("lock").iter() {
            flags.held(dir).store(held, Ordering::SeqCst);
        }
    }

    /// Holds `dir` of a connection right after the client sends a `packet_type` on it.
    pub fn hold_after(&self, packet_type: PacketType, dir: Dir) {
        *self.state.trigger.lock().expect("lock") = Some((packet_type, dir));
    }

    /// Closes every open connection on both sides, like a network that drops.
    pub fn cut(&self) {
        *self.state.trigger.lock().expect("lock") = None;
        self.state.cut.send_modify(|n| *n += 1);
    }

    /// Stops accepting (new connections are refused) and cuts the open ones.
    pub fn stop(&self) {
        self.accept.abort();
        self.cut();
    }

    /// Every packet the client has sent so far.
    pub fn seen(&self) -> Vec<Packet> {
        self.state.seen.lock().expect("lock").clone()
    }

    /// Waits (bounded) until the client's packets satisfy `check`.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&[Packet]) -> bool) -> Vec<Packet> {
        within(what, async {
            loop {
                let notified = self.state.seen_changed.notified();
                {
                    let seen = self.state.seen.lock().expect("lock");
                    if check(&seen) {
                        return seen.clone();
                    }
                }
                notified.await;
            }
        })
        .await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(client: TcpStream, state: Arc<State>) {
    let Ok(broker) = TcpStream::connect(state.upstream).await else {
        return;
    };
    let flags = Arc::new(Flags::default());
    state.open.lock().expect("lock").push(Arc::clone(&flags));
    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = broker.into_split();
    let mut cut = state.cut.subscribe();
    let up = pump(
        client_read,
        broker_write,
        Dir::Up,
        Arc::clone(&flags),
        Arc::clone(&state),
    );
    let down = pump(
        broker_read,
        client_write,
        Dir::Down,
        Arc::clone(&flags),
        Arc::clone(&state),
    );
    tokio::select! {
        _ = up => {}
        client_write = down => {
            // A black-holed path does not pass the broker's close on either: the client
            // must find out by itself (keep-alive), until the test cuts.
            if flags.hold_down.load(Ordering::SeqCst) {
                let _ = cut.changed().await;
            }
            drop(client_write);
        }
        _ = cut.changed() => {}
    }
    state
        .open
        .lock()
        .expect("lock")
        .retain(|f| !Arc::ptr_eq(f, &flags));
    // Both halves of both sockets drop here: the client and the broker see the close.
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Dir,
    flags: Arc<Flags>,
    state: Arc<State>,
) -> OwnedWriteHalf {
    let mut decoder = Decoder::new(u32::MAX);
    let mut parsed = BytesMut::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return to,
            Ok(n) => n,
        };
        let data = &chunk[..n];
        let mut hold_after_forward = false;
        if dir == Dir::Up {
            parsed.extend_from_slice(data);
            while let Ok(Some(packet)) = decoder.decode(&mut parsed) {
                let trigger = *state.trigger.lock().expect("lock");
                if let Some((packet_type, held_dir)) = trigger {
                    if packet.packet_type() == packet_type {
                        if held_dir == Dir::Up {
                            hold_after_forward = true;
                        } else {
                            flags.held(held_dir).store(true, Ordering::SeqCst);
                        }
                    }
                }
                state.seen.lock().expect("lock").push(packet);
                state.seen_changed.notify_waiters();
            }
        }
        if !flags.held(dir).load(Ordering::SeqCst) && to.write_all(data).await.is_err() {
            return to;
        }
        if hold_after_forward {
            flags.hold_up.store(true, Ordering::SeqCst);
        }
    }
}
