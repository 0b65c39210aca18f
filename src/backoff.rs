//! The one shape of "wait longer after each failure": every retry site (a replica's sync loop,
//! S3 requests, restore's reopened downloads, the db thread's RESTART back-off, lock spins)
//! holds a `Backoff` and says beside it why its numbers are what they are.
//!
//! Pure apart from the jitter, which is drawn from the clock's nanoseconds: good enough to
//! keep replicas of one process from retrying in step, and no source of randomness to fail.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How the wait grows from one failure to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// The same wait every time.
    Fixed,
    /// `first`, `2 × first`, `3 × first`, …
    Linear,
    /// `first`, `2 × first`, `4 × first`, …
    Doubling,
}

/// Waits after consecutive failures: `first`, growing by `growth`, never more than `max`, and
/// with `jitter` each drawn within ±25 % of that (still at most `max`).
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    growth: Growth,
    jitter: bool,
    failures: u32,
}

impl Backoff {
    /// No jitter; see `with_jitter`.
    pub const fn new(first: Duration, max: Duration, growth: Growth) -> Backoff {
        Backoff {
            first,
            max,
            growth,
            jitter: false,
            failures: 0,
        }
    }

    /// Each wait within ±25 % of its nominal value, so that many retriers do not retry in step.
    pub const fn with_jitter(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// Failures since the last `reset`.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts a failure and returns how long to wait before the next try.
    pub fn next_wait(&mut self) -> Duration {
        let n = self.failures;
        self.failures = self.failures.saturating_add(1);
        let nominal = match self.growth {
            Growth::Fixed => self.first,
            Growth::Linear => self.first.saturating_mul(n.saturating_add(1)),
            Growth::Doubling => self.first.saturating_mul(1u32 << n.min(20)),
        }
        .min(self.max);
        if self.jitter {
            jittered(nominal).min(self.max)
        } else {
            nominal
        }
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `d` scaled by a factor in [0.75, 1.25).
fn jittered(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let jitter = f64::from(nanos % 1000) / 1000.0 * 0.5 - 0.25;
    d.mul_f64(1.0 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn waits(b: &mut Backoff, n: usize) -> Vec<Duration> {
        (0..n).map(|_| b.next_wait()).collect()
    }

    #[test]
    fn each_growth_and_the_cap() {
        let mut fixed = Backoff::new(50 * MS, 60 * MS, Growth::Fixed);
        assert_eq!(waits(&mut fixed, 3), [50 * MS, 50 * MS, 50 * MS]);
        let mut linear = Backoff::new(250 * MS, 600 * MS, Growth::Linear);
        assert_eq!(waits(&mut linear, 3), [250 * MS, 500 * MS, 600 * MS]);
        let mut doubling = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Growth::Doubling,
        );
        let secs: Vec<u64> = waits(&mut doubling, 8)
            .iter()
            .map(Duration::as_secs)
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(doubling.failures(), 8);
        doubling.reset();
        assert_eq!(doubling.next_wait(), Duration::from_secs(1));
        // Far past any shift width: still capped, no overflow.
        let late: Vec<Duration> = waits(&mut doubling, 100).split_off(6);
        assert!(late.iter().all(|w| *w == Duration::from_secs(60)));
    }

    #[test]
    fn jitter_stays_within_a_quarter_and_the_cap() {
        let max = Duration::from_secs(30);
        let mut b = Backoff::new(Duration::from_secs(1), max, Growth::Doubling).with_jitter();
        let mut nominal = Duration::from_secs(1);
        for _ in 0..10 {
            let w = b.next_wait();
            assert!(
                w >= nominal.mul_f64(0.75) && w <= nominal.mul_f64(1.25).min(max),
                "{w:?}"
            );
            nominal = (nominal * 2).min(max);
        }
    }
}
