//! Kernel receive timestamps: when a subscriber's bytes reached its socket,
//! as opposed to when the driver got round to reading them.
//!
//! One driver core reads for thousands of subscribers, so the time a task
//! reads an event includes the queue of other sockets ahead of it on the
//! driver's core: that is the driver's latency, not the server's. With
//! `SO_TIMESTAMPNS` the kernel stamps each segment as it arrives (on
//! loopback: as the server's write hands it over), in `CLOCK_REALTIME`, the
//! clock the publisher writes into each event. `recvmsg` on TCP reports the
//! stamp of the last segment it read, so several events in one read are
//! all given the latest of their arrival times.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Asks the kernel to stamp what arrives on `s`.
pub fn enable(s: &TcpStream) -> io::Result<()> {
    setsockopt(s, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Reads what is there into `buf`: the byte count (0 at the end of the
/// stream) and, when the kernel stamped it, the arrival time in µs since the
/// Unix epoch.
pub async fn read(s: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    loop {
        s.readable().await?;
        match s.try_io(Interest::READABLE, || recv(s, buf)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

fn recv(s: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(TimeSpec);
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let mut at = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(t) = c {
            let us = t.tv_sec() as i128 * 1_000_000 + t.tv_nsec() as i128 / 1000;
            at = u64::try_from(us).ok();
        }
    }
    Ok((msg.bytes, at))
}
