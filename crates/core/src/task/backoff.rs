//! How long a task queued again waits before it may be claimed: exponential
//! from a base (1 s unless the enqueue said otherwise), capped at 5 min.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A task's retry backoff: the wait before its second attempt; each later
/// attempt waits twice as long as the one before, up to [`Backoff::CAP_MS`].
/// Kept with the task (as its base in ms), so a restart does not change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Backoff {
    /// 0: claimable again at once.
    base_ms: u64,
}

impl Backoff {
    /// The longest wait between two attempts.
    pub const CAP_MS: u64 = 5 * 60 * 1000;
    /// No wait: a task queued again is claimable at once.
    pub const NONE: Backoff = Backoff { base_ms: 0 };
    /// What a task gets when its enqueue names none.
    pub const DEFAULT: Backoff = Backoff { base_ms: 1000 };

    /// Exponential from `base_ms`; `None` if it is 0 or above the cap.
    pub fn from_base_ms(base_ms: u64) -> Option<Backoff> {
        (1..=Self::CAP_MS)
            .contains(&base_ms)
            .then_some(Backoff { base_ms })
    }

    /// How long a task waits after its `attempts`-th attempt (1 = the
    /// first) before it may be claimed again.
    pub fn delay_ms(self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1);
        // Past 63 doublings the factor no longer fits: the cap applies anyway.
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(Self::CAP_MS)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

/// Why a `backoff` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadBackoff {
    #[error("{0:?} is not `none` or a duration such as 200ms, 2s or 1m")]
    Unreadable(String),
    #[error("{0:?} is out of range: from 1ms to 5m (use `none` for no wait)")]
    OutOfRange(String),
}

impl FromStr for Backoff {
    type Err = BadBackoff;

    /// `none`, or a whole number of `ms`, `s` or `m`. A bare number is
    /// refused rather than guessed: elsewhere bare numbers are seconds, and a
    /// reader of `backoff=200` could not tell.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Backoff::NONE);
        }
        let unreadable = || BadBackoff::Unreadable(s.to_owned());
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(unreadable)?;
        let (digits, unit) = s.split_at(split);
        let scale = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            _ => return Err(unreadable()),
        };
        let n: u64 = digits.parse().map_err(|_| unreadable())?;
        n.checked_mul(scale)
            .and_then(Backoff::from_base_ms)
            .ok_or_else(|| BadBackoff::OutOfRange(s.to_owned()))
    }
}

impl fmt::Display for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.base_ms {
            0 => f.write_str("none"),
            ms => write!(f, "{ms}ms"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_doubles_from_one_second_up_to_the_cap() {
        let b = Backoff::default();
        let delays: Vec<u64> = (1..=10).map(|a| b.delay_ms(a)).collect();
        assert_eq!(
            delays,
            [
                1000, 2000, 4000, 8000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000
            ]
        );
        assert_eq!(b.delay_ms(100), Backoff::CAP_MS, "no overflow past the cap");
        assert_eq!(b.delay_ms(u32::MAX), Backoff::CAP_MS);
    }

    #[test]
    fn none_and_a_custom_base() {
        assert_eq!(Backoff::NONE.delay_ms(1), 0);
        assert_eq!(Backoff::NONE.delay_ms(50), 0);
        let b: Backoff = "200ms".parse().unwrap();
        assert_eq!(
            (b.delay_ms(1), b.delay_ms(2), b.delay_ms(3)),
            (200, 400, 800)
        );
        let b: Backoff = "5m".parse().unwrap();
        assert_eq!((b.delay_ms(1), b.delay_ms(2)), (300_000, 300_000));
    }

    #[test]
    fn values_parse_strictly() {
        assert_eq!("none".parse(), Ok(Backoff::NONE));
        assert_eq!("2s".parse::<Backoff>().ok(), Backoff::from_base_ms(2000));
        assert_eq!("1m".parse::<Backoff>().map(|b| b.delay_ms(1)), Ok(60_000));
        for bad in [
            "",
            "200",
            "ms",
            "2h",
            "1.5s",
            "-1s",
            "0ms",
            "0s",
            "6m",
            "NONE",
            " 2s",
            "99999999999999999999ms",
        ] {
            assert!(bad.parse::<Backoff>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "200ms".parse::<Backoff>().map(|b| b.to_string()),
            Ok("200ms".into())
        );
    }
}
