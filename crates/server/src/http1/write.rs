//! Writing a queue of shared buffers to something that takes what it can
//! now and no more (a non-blocking socket): the buffers go out in order,
//! many per call, and what did not fit stays queued for the next call.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};

/// Most buffers handed to one vectored write.
pub const MAX_SLICES: usize = 64;

/// Takes bytes without waiting: `Ok(n)` for the first `n` bytes of `bufs`
/// taken, `WouldBlock` when it has no room now.
pub trait TryWrite {
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// Writes as much of `parts` as `w` takes now. `Ok(true)`: all of it went
/// out; `Ok(false)`: `w` has no room, and what is left is still in `parts`.
/// An error means the connection is lost.
pub fn write_now(w: &mut impl TryWrite, parts: &mut VecDeque<Bytes>) -> io::Result<bool> {
    drop_empty(parts);
    while !parts.is_empty() {
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = slices.len().min(parts.len());
            for (slot, part) in slices.iter_mut().zip(parts.iter()) {
                *slot = IoSlice::new(part);
            }
            w.try_write_vectored(&slices[..count])
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => consume(parts, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Drops the first `n` bytes of `parts`, and any empty buffers left in
/// front.
pub fn consume(parts: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = parts.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            parts.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
    drop_empty(parts);
}

fn drop_empty(parts: &mut VecDeque<Bytes>) {
    while parts.front().is_some_and(Bytes::is_empty) {
        parts.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink with `room` bytes free per turn: it takes at most that much
    /// per call, then says it would block until the next turn.
    struct Capped {
        taken: Vec<u8>,
        room: usize,
        left: usize,
        calls: usize,
    }

    impl Capped {
        fn new(room: usize) -> Capped {
            Capped {
                taken: Vec::new(),
                room,
                left: room,
                calls: 0,
            }
        }
    }

    impl TryWrite for Capped {
        fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            assert!(bufs.len() <= MAX_SLICES);
            if self.left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.left - n);
                self.taken.extend_from_slice(&b[..take]);
                n += take;
            }
            self.left -= n;
            Ok(n)
        }
    }

    fn parts(sizes: &[usize]) -> (VecDeque<Bytes>, Vec<u8>) {
        let mut all = Vec::new();
        let mut out = VecDeque::new();
        for (i, &size) in sizes.iter().enumerate() {
            let part: Vec<u8> = (0..size).map(|k| (i * 31 + k) as u8).collect();
            all.extend_from_slice(&part);
            out.push_back(Bytes::from(part));
        }
        (out, all)
    }

    #[test]
    fn every_short_write_keeps_the_rest_in_order() {
        // Empty buffers between, and more buffers than one call takes.
        let mut sizes = vec![3, 0, 1, 17, 0, 0, 5, 64];
        sizes.extend(std::iter::repeat_n(2, 100));
        let total: usize = sizes.iter().sum();
        for room in 1..=total + 1 {
            let (mut queue, want) = parts(&sizes);
            let mut sink = Capped::new(room);
            let mut turns = 0;
            while !write_now(&mut sink, &mut queue).unwrap() {
                let left: usize = queue.iter().map(Bytes::len).sum();
                assert_eq!(left, total - sink.taken.len(), "room {room}");
                assert!(queue.front().is_some_and(|b| !b.is_empty()));
                sink.left = sink.room;
                turns += 1;
            }
            assert!(queue.is_empty());
            assert_eq!(sink.taken, want, "room {room}");
            assert_eq!(turns, total.div_ceil(room).saturating_sub(1), "room {room}");
        }
    }

    #[test]
    fn nothing_to_write_is_done_without_a_call_and_a_zero_write_is_an_error() {
        let mut sink = Capped::new(10);
        let mut empty = VecDeque::from([Bytes::new(), Bytes::new()]);
        assert!(write_now(&mut sink, &mut empty).unwrap());
        assert_eq!(sink.calls, 0);
        struct Zero;
        impl TryWrite for Zero {
            fn try_write_vectored(&mut self, _: &[IoSlice<'_>]) -> io::Result<usize> {
                Ok(0)
            }
        }
        let (mut queue, _) = parts(&[4]);
        assert!(write_now(&mut Zero, &mut queue).is_err());
    }

    #[test]
    fn consume_walks_across_buffers() {
        let mut parts: VecDeque<Bytes> = [&b"abc"[..], b"", b"de", b"fgh"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        consume(&mut parts, 4);
        assert_eq!(parts, [&b"e"[..], b"fgh"]);
        consume(&mut parts, 1);
        assert_eq!(parts, [&b"fgh"[..]]);
        consume(&mut parts, 3);
        assert!(parts.is_empty());
    }
}
