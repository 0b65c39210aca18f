//! When a tick woken by a write runs: at once when the database was quiet, else at most once
//! per `QUANTUM` while commits keep coming. Pure (instants in, a wait out); the db thread's
//! loop (`Db::run`) asks it before each woken tick and tells it what each tick did.
//!
//! Why: every commit of the application wakes the db thread (the watch coalesces only within
//! 2 ms), and each tick that copies fsyncs the shadow. A writer of 100k+ commits a second
//! cost 500 ticks and fsyncs a second; batched per quantum it costs at most 100, and the
//! frames of a quantum go in one read and one write. A quiet database must keep its
//! event-driven capture (issue 23: lag p50 ≤ 50 ms; today a few ms), so only a tick that
//! found frames to copy makes the next one wait: a commit after a quiet spell, or after a
//! polling tick that found nothing, is copied at once.

use std::time::{Duration, Instant};

/// The least time from the start of a tick that copied frames to the next woken tick. 10 ms
/// keeps lag far below the 50 ms p50 target and bounds a storm to 100 ticks a second.
pub(super) const QUANTUM: Duration = Duration::from_millis(10);

/// What the pacing remembers of the ticks so far.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// The start of the last tick, if it copied frames (or moved the shadow on otherwise).
    last_busy_tick: Option<Instant>,
}

impl Pace {
    /// How long a tick woken by a write at `now` waits before it runs: until a quantum after
    /// the start of the last tick if that tick copied frames, else not at all.
    pub(super) fn wait(&self, now: Instant) -> Duration {
        match self.last_busy_tick {
            Some(started) => (started + QUANTUM).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Records a tick that began at `started`; `busy`: it copied frames (the shadow moved).
    pub(super) fn ticked(&mut self, started: Instant, busy: bool) {
        self.last_busy_tick = busy.then_some(started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_write_and_one_after_a_quiet_spell_are_copied_at_once() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        assert_eq!(pace.wait(t0), Duration::ZERO);
        // A tick that copied, long ago.
        pace.ticked(t0, true);
        assert_eq!(pace.wait(t0 + 2 * QUANTUM), Duration::ZERO);
        assert_eq!(pace.wait(t0 + QUANTUM), Duration::ZERO);
    }

    #[test]
    fn a_commit_storm_is_copied_once_per_quantum() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        // Commits every 10 µs for 100 ms: the thread ticks whenever its wait is over, and is
        // woken again by the next commit.
        let mut ticks = Vec::new();
        let mut now = t0;
        while now < t0 + 100 * MS {
            let wait = pace.wait(now);
            let started = now + wait;
            ticks.push(started);
            pace.ticked(started, true);
            // The tick takes 1 ms, then the next commit's wake-up is already waiting.
            now = started + MS;
        }
        assert_eq!(ticks[0], t0, "the first commit of the storm goes at once");
        for pair in ticks.windows(2) {
            assert_eq!(pair[1] - pair[0], QUANTUM);
        }
        // At most 100 ticks (and fsyncs) a second: 10 in these 100 ms.
        assert_eq!(ticks.iter().filter(|t| **t < t0 + 100 * MS).count(), 10);
    }

    #[test]
    fn a_tick_that_copied_nothing_leaves_the_next_write_unpaced() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        pace.ticked(t0, true);
        assert_eq!(pace.wait(t0 + 3 * MS), 7 * MS);
        // A polling tick (or one woken by our own write) that found nothing to copy: the
        // next commit is the first after a quiet spell.
        pace.ticked(t0 + 4 * MS, false);
        assert_eq!(pace.wait(t0 + 5 * MS), Duration::ZERO);
    }
}
