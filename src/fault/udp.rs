//! Faults below quinn: a wrapper over its UDP socket that drops and delays datagrams on
//! send, so QUIC meets loss in-process, without privileges (the namespace link of DESIGN
//! §4 is for kernel TCP). Both endpoints of a test can wrap their sockets.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use serde::Deserialize;

use super::schedule::Rng;

/// Datagram faults, applied to what this socket sends.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpFaults {
    /// Probability that a datagram (a whole GSO batch) is dropped.
    #[serde(default)]
    pub loss: f64,
    /// Extra one-way delay.
    #[serde(default, with = "crate::config::units::duration::option")]
    pub delay: Option<Duration>,
}

/// Counters of what the wrapper did.
#[derive(Debug, Default)]
pub struct UdpFaultStats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub delayed: AtomicU64,
}

/// A quinn socket with [`UdpFaults`] applied on send.
pub struct FaultyUdpSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: UdpFaults,
    rng: Mutex<Rng>,
    pub stats: Arc<UdpFaultStats>,
}

impl fmt::Debug for FaultyUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyUdpSocket")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl FaultyUdpSocket {
    /// Wraps a bound std socket for use with `quinn::Endpoint::new_with_abstract_socket`.
    pub fn wrap(
        socket: std::net::UdpSocket,
        faults: UdpFaults,
        seed: u64,
    ) -> io::Result<Arc<FaultyUdpSocket>> {
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        Ok(Arc::new(FaultyUdpSocket {
            inner,
            faults,
            rng: Mutex::new(Rng::new(seed)),
            stats: Arc::new(UdpFaultStats::default()),
        }))
    }
}

impl AsyncUdpSocket for FaultyUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        let drop_it = self.faults.loss > 0.0
            && self
                .rng
                .lock()
                .map(|mut rng| rng.chance(self.faults.loss))
                .unwrap_or(false);
        if drop_it {
            // Lost on the wire: the sender believes it went out.
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match self.faults.delay {
            Some(delay) if !delay.is_zero() => {
                self.stats.delayed.fetch_add(1, Ordering::Relaxed);
                let inner = Arc::clone(&self.inner);
                let contents = transmit.contents.to_vec();
                let destination = transmit.destination;
                let ecn = transmit.ecn;
                let segment_size = transmit.segment_size;
                let src_ip = transmit.src_ip;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let later = Transmit {
                        destination,
                        ecn,
                        contents: &contents,
                        segment_size,
                        src_ip,
                    };
                    // A full socket buffer loses the datagram, as a congested link would.
                    let _ = inner.try_send(&later);
                });
                Ok(())
            }
            _ => self.inner.try_send(transmit),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
