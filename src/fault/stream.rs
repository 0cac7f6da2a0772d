//! Faults below TLS: a wrapper over a byte stream that makes writes short, returns
//! `Ok(0)`, stalls (for a while or for good), resets after N bytes, and corrupts reads.
//! Off unless a plan asks for it; the TLS failure cases of DESIGN §4 run through it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Byte-stream faults. Every field is off when `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamFaults {
    /// At most this many bytes are accepted per write call.
    pub max_write: Option<usize>,
    /// Every n-th write call accepts nothing: `Ok(0)`.
    pub write_zero_every: Option<u64>,
    /// Once this many bytes are written, writes stall...
    pub stall_after: Option<u64>,
    /// ...for this long (forever when `None`).
    #[serde(default, with = "crate::config::units::duration::option")]
    pub stall_for: Option<Duration>,
    /// Once this many bytes are written, the stream fails with `ConnectionReset`.
    pub reset_after: Option<u64>,
    /// The byte at this offset of the read stream has its bits flipped.
    pub corrupt_read_at: Option<u64>,
}

impl StreamFaults {
    pub fn is_empty(&self) -> bool {
        *self == StreamFaults::default()
    }
}

/// `inner` with `faults` applied.
#[derive(Debug)]
pub struct FaultyStream<S> {
    inner: S,
    faults: StreamFaults,
    written: u64,
    read: u64,
    write_calls: u64,
    stall: Stall,
}

#[derive(Debug)]
enum Stall {
    NotYet,
    Until(Pin<Box<tokio::time::Sleep>>),
    Forever,
    Over,
}

impl<S> FaultyStream<S> {
    pub fn new(inner: S, faults: StreamFaults) -> FaultyStream<S> {
        FaultyStream {
            inner,
            faults,
            written: 0,
            read: 0,
            write_calls: 0,
            stall: Stall::NotYet,
        }
    }

    /// Bytes the inner stream accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FaultyStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let got = buf.filled().len() - before;
            if let Some(at) = this.faults.corrupt_read_at {
                if at >= this.read && at < this.read + got as u64 {
                    let index = before + (at - this.read) as usize;
                    if let Some(byte) = buf.filled_mut().get_mut(index) {
                        *byte = !*byte;
                    }
                }
            }
            this.read += got as u64;
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FaultyStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this
            .faults
            .reset_after
            .is_some_and(|limit| this.written >= limit)
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fault plan: reset",
            )));
        }
        if let Some(limit) = this.faults.stall_after {
            if this.written >= limit {
                match &mut this.stall {
                    Stall::NotYet => {
                        this.stall = match this.faults.stall_for {
                            Some(d) => Stall::Until(Box::pin(tokio::time::sleep(d))),
                            None => Stall::Forever,
                        };
                        // Poll the new state below.
                        return Pin::new(this).poll_write(cx, buf);
                    }
                    Stall::Until(sleep) => {
                        if sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        this.stall = Stall::Over;
                    }
                    // Never woken: the stream stays stalled until dropped.
                    Stall::Forever => return Poll::Pending,
                    Stall::Over => {}
                }
            }
        }
        this.write_calls += 1;
        if this
            .faults
            .write_zero_every
            .is_some_and(|n| n > 0 && this.write_calls.is_multiple_of(n))
        {
            return Poll::Ready(Ok(0));
        }
        let mut len = buf.len();
        if let Some(max) = this.faults.max_write {
            len = len.min(max.max(1));
        }
        if let Some(limit) = this.faults.reset_after {
            len = len.min(
                usize::try_from(limit - this.written)
                    .unwrap_or(usize::MAX)
                    .max(1),
            );
        }
        let result = Pin::new(&mut this.inner).poll_write(cx, &buf[..len]);
        if let Poll::Ready(Ok(n)) = result {
            this.written += n as u64;
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn short_writes_and_write_zero_are_injected() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut s = FaultyStream::new(
            a,
            StreamFaults {
                max_write: Some(3),
                write_zero_every: Some(2),
                ..StreamFaults::default()
            },
        );
        assert_eq!(s.write(b"hello").await.expect("write"), 3);
        assert_eq!(
            s.write(b"lo").await.expect("write"),
            0,
            "every 2nd write is Ok(0)"
        );
        assert_eq!(s.write(b"lo").await.expect("write"), 2);
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_holds_writes_for_its_duration() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut s = FaultyStream::new(
            a,
            StreamFaults {
                stall_after: Some(2),
                stall_for: Some(Duration::from_secs(5)),
                ..StreamFaults::default()
            },
        );
        s.write_all(b"ab").await.expect("before the stall");
        let start = tokio::time::Instant::now();
        s.write_all(b"c").await.expect("after the stall");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn reset_after_n_bytes_and_read_corruption() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut s = FaultyStream::new(
            a,
            StreamFaults {
                reset_after: Some(4),
                corrupt_read_at: Some(1),
                ..StreamFaults::default()
            },
        );
        assert_eq!(s.write(b"abcdef").await.expect("first write"), 4);
        let err = s.write(b"ef").await.expect_err("reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        b.write_all(&[0x00, 0x0F, 0x00]).await.expect("peer write");
        let mut got = [0u8; 3];
        s.read_exact(&mut got).await.expect("read");
        assert_eq!(got, [0x00, 0xF0, 0x00]);
    }
}
