//! A byte-stream relay on loopback: each accepted connection gets its own connection to
//! the broker and two pumps (one per direction) that delay, rate-cap and hold bytes, and
//! optionally write towards the client through [`FaultyStream`].
//!
//! A relay cannot lose bytes of a TCP stream (the kernel below it retransmits), so it
//! offers what a middlebox can do to TCP: slow it, stall it, and reset it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Direction, Impairment, Outage, OutageSchedule, PathStats, Verdict};
use crate::fault::stream::{FaultyStream, StreamFaults};

/// Chunks one pump holds between reading and writing (up to 16 KiB each).
const PUMP_CHUNKS: usize = 16;
/// Connections the kernel queues for the relay's accept loop.
const LISTEN_BACKLOG: u32 = 4096;

/// A running stream relay. Dropping it stops it and resets its connections.
pub struct TcpRelay {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

struct Inner {
    upstream: SocketAddr,
    up: Mutex<Direction>,
    down: Mutex<Direction>,
    down_faults: Option<StreamFaults>,
    stats: Arc<PathStats>,
    outages: OutageSchedule,
    resets: watch::Sender<u64>,
    accepted: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl TcpRelay {
    /// Starts a relay on 127.0.0.1 towards `upstream`. `down_faults`, if any, apply to the
    /// relay's writes towards each client (short writes, stalls: what a slow broker
    /// socket looks like from the client).
    pub async fn start(
        upstream: SocketAddr,
        up: Impairment,
        down: Impairment,
        down_faults: Option<StreamFaults>,
        seed: u64,
    ) -> io::Result<TcpRelay> {
        // A backlog deep enough for a reconnect storm (the default is 128): SYNs dropped
        // here would be the relay's fault, not the broker's.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let addr = listener.local_addr()?;
        let (resets, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            upstream,
            up: Mutex::new(Direction::new(up, seed)),
            down: Mutex::new(Direction::new(down, seed ^ 0x5DEE_CE66)),
            down_faults,
            stats: Arc::new(PathStats::default()),
            outages: OutageSchedule::default(),
            resets,
            accepted: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&inner)));
        Ok(TcpRelay {
            addr,
            inner,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> Arc<PathStats> {
        Arc::clone(&self.inner.stats)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// From `from`, for `len`, no byte moves either way; held bytes flow afterwards. (A
    /// blackhole is the same to a stream relay: it holds.)
    pub fn outage(&self, from: Instant, len: Duration, kind: Outage) {
        self.inner.outages.set(from, len, kind);
    }

    /// Resets every open connection (RST both ways), as a NAT that changed the client's
    /// address does to TCP. New connections are served as before.
    pub fn reset_all(&self) {
        self.inner.resets.send_modify(|g| *g += 1);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        inner.accepted.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(serve(Arc::clone(&inner), client));
        let mut tasks = inner.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

async fn serve(inner: Arc<Inner>, client: TcpStream) {
    let mut resets = inner.resets.subscribe();
    let Ok(server) = TcpStream::connect(inner.upstream).await else {
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
        // Closing then sends RST, not FIN: a reset, as a middlebox that lost the flow.
        let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    }
    // `tokio::io::split` halves do not shut down on drop, so a reset is a bare RST.
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let up = pump(client_read, server_write, &inner, &inner.up);
    let down = async {
        match &inner.down_faults {
            Some(faults) => {
                let write = FaultyStream::new(client_write, faults.clone());
                pump(server_read, write, &inner, &inner.down).await
            }
            None => pump(server_read, client_write, &inner, &inner.down).await,
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = resets.changed() => {}
    }
}

/// Moves bytes from `read` to `write` through `direction`, until EOF or an error; then
/// shuts `write` down (FIN) so the far side sees the end.
async fn pump<R, W>(mut read: R, mut write: W, inner: &Inner, direction: &Mutex<Direction>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(PUMP_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let outage = inner.outages.get();
            let verdict = direction
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .admit(Instant::now(), n, false, outage, &inner.stats);
            let Verdict::Release(at) = verdict else {
                // Streams are never dropped (admit with droppable = false).
                continue;
            };
            if tx
                .send((at, Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn forwards_holds_during_an_outage_and_resets() {
        let server = echo_server().await;
        let relay = TcpRelay::start(
            server,
            Impairment::default(),
            Impairment::default(),
            Some(StreamFaults {
                max_write: Some(3),
                ..StreamFaults::default()
            }),
            1,
        )
        .await
        .expect("relay");
        let mut c = TcpStream::connect(relay.addr()).await.expect("connect");
        c.write_all(b"hello relay").await.expect("write");
        let mut got = [0u8; 11];
        c.read_exact(&mut got)
            .await
            .expect("echo through short writes");
        assert_eq!(&got, b"hello relay");

        tokio::time::pause();
        relay.outage(Instant::now(), Duration::from_secs(5), Outage::Hold);
        c.write_all(b"held").await.expect("write");
        let start = Instant::now();
        let mut held = [0u8; 4];
        c.read_exact(&mut held)
            .await
            .expect("delivered after the outage");
        assert_eq!(&held, b"held");
        assert!(start.elapsed() >= Duration::from_secs(4));
        tokio::time::resume();

        relay.reset_all();
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .expect("the reset arrives");
        assert!(
            end.is_err() || rest.is_empty(),
            "the connection ended: {end:?}"
        );
        assert_eq!(relay.accepted(), 1);
    }
}
