//! One clock for every stream's keep-alive, and the signal that ends them.
//!
//! Instead of a timer per subscriber, one task ticks a watch channel every
//! keep-alive interval; each stream waits on the channel alongside its
//! events. On shutdown the ticker wakes every stream one last time and stops,
//! so an idle server holds one timer however many clients it has.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

/// A handle on the shared keep-alive clock.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    rx: watch::Receiver<u64>,
    shutdown: CancellationToken,
}

/// What a stream should do after [`Beat::wait`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Send a keep-alive.
    KeepAlive,
    /// The server is stopping: end the stream.
    Shutdown,
}

impl Heartbeat {
    /// Starts the ticker; it stops when `shutdown` is cancelled. Must be
    /// called inside a tokio runtime.
    pub fn start(every: Duration, shutdown: CancellationToken) -> Heartbeat {
        let (tx, rx) = watch::channel(0_u64);
        let token = shutdown.clone();
        let every = every.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut ticks = interval_at(Instant::now() + every, every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => tx.send_modify(|n| *n += 1),
                    () = token.cancelled() => break,
                }
            }
            // Dropping the sender wakes every waiting stream.
        });
        Heartbeat { rx, shutdown }
    }

    /// A receiver for one stream; it waits for the next tick from now.
    pub fn beats(&self) -> Beats {
        let mut rx = self.rx.clone();
        rx.mark_unchanged();
        Beats {
            rx,
            shutdown: self.shutdown.clone(),
        }
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// One stream's view of the clock.
#[derive(Debug)]
pub struct Beats {
    rx: watch::Receiver<u64>,
    shutdown: CancellationToken,
}

impl Beats {
    /// Waits for the next tick or for shutdown. Cancel-safe.
    pub async fn wait(&mut self) -> Beat {
        if self.shutdown.is_cancelled() {
            return Beat::Shutdown;
        }
        match self.rx.changed().await {
            Ok(()) if !self.shutdown.is_cancelled() => Beat::KeepAlive,
            _ => Beat::Shutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_then_ends_on_shutdown() {
        let token = CancellationToken::new();
        let hb = Heartbeat::start(Duration::from_secs(15), token.clone());
        let mut beats = hb.beats();
        let started = Instant::now();
        assert_eq!(beats.wait().await, Beat::KeepAlive);
        assert_eq!(started.elapsed(), Duration::from_secs(15));
        token.cancel();
        assert_eq!(beats.wait().await, Beat::Shutdown);
    }
}
