//! What one client, or many, can hold of the server: connection slots (in all, and per
//! address), and how long a response may wait for a client that stopped reading.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Open connections, in all and per client address.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One connection's slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    addr: IpAddr,
}

impl Slots {
    pub(crate) fn new(max: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Slots {
            max: max.max(1),
            per_address: per_address.max(1),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `addr`, if the server has one free and that address
    /// does not hold its share already.
    pub(crate) fn take(self: &Arc<Self>, addr: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().ok()?;
        let (total, by_addr) = &mut *open;
        let mine = by_addr.get(&addr).copied().unwrap_or(0);
        if *total >= self.max || mine >= self.per_address {
            return None;
        }
        *total += 1;
        by_addr.insert(addr, mine + 1);
        Some(Slot {
            slots: Arc::clone(self),
            addr,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock() {
            let (total, by_addr) = &mut *open;
            *total = total.saturating_sub(1);
            if let Some(n) = by_addr.get_mut(&self.addr) {
                *n -= 1;
                if *n == 0 {
                    by_addr.remove(&self.addr);
                }
            }
        }
    }
}

/// A connection whose writes fail once one has made no progress for `limit`: a client
/// that stops reading cannot hold its connection (and the file it is sent) for ever.
pub(crate) struct StallGuard<IO> {
    io: IO,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Arc<super::Metrics>,
}

impl<IO> StallGuard<IO> {
    pub(crate) fn new(io: IO, limit: Duration, metrics: Arc<super::Metrics>) -> Self {
        StallGuard {
            io,
            limit,
            stalled: None,
            metrics,
        }
    }

    /// After a pending write: starts the clock if it is not running, and says whether
    /// the time is up.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        let up = sleep.as_mut().poll(cx).is_ready();
        if up {
            self.metrics.stalled();
        }
        up
    }
}

fn stalled_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(stalled_error())),
            Poll::Pending => Poll::Pending,
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(stalled_error())),
            Poll::Pending => Poll::Pending,
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_in_all_and_per_address() {
        let s = Slots::new(3, 2);
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        let a1 = s.take(a).expect("a1");
        let _a2 = s.take(a).expect("a2");
        assert!(s.take(a).is_none(), "a holds its share");
        let _b1 = s.take(b).expect("b1");
        assert!(s.take(b).is_none(), "the server is full");
        drop(a1);
        assert!(s.take(b).is_some(), "a slot came back");
    }
}
