//! The checkpoint policy (SPEC §4.2 step 5): which checkpoint the db thread runs when, and
//! what it does after one. State in, decision out: every instant is an argument, so each rule
//! is tested here with made-up times. It never runs a checkpoint or reads a file; the
//! protocol that carries a decision out safely is `db::checkpoint`.
//!
//! Rules, first match wins:
//! 1. the WAL file holds `truncate-page-count` frames or more: TRUNCATE, at once, unless a
//!    TRUNCATE since that restarted the WAL left the file that long (the application's write
//!    restarted it before ours, so no shrink) and TRUNCATE is backing off; the WAL's own life
//!    reaching `truncate-page-count` frames always fires at once (the hard bound);
//! 2. the shadow's WAL life holds `restart_threshold` frames or more (half
//!    `min-checkpoint-page-count`, at most `max-checkpoint-page-count`), RESTART is not
//!    backing off, and `RESTART_MIN_GAP` (or the monitor-interval, if shorter) has passed:
//!    RESTART (ours never waits on a reader: see `db::checkpoint`);
//! 3. nothing else within a monitor-interval of the last checkpoint;
//! 4. `min-checkpoint-page-count` frames: PASSIVE;
//! 5. `checkpoint-interval` since the last one and more than one frame: PASSIVE.
//!
//! After a checkpoint (`CheckpointPolicy::record`): a RESTART or TRUNCATE that did not
//! restart the WAL (an application reader in the way) backs RESTART off briefly
//! (`RESTART_RETRY`, 100 ms doubling to 200 ms: short enough to catch a reader's pause); SQLite's checkpoint lock found taken is no reason to back off and is tried again
//! soon (`lock_busy_retry`). A TRUNCATE that left the file at or above the threshold backs
//! TRUNCATE-for-the-file's-length off the same way (1 s doubling to 60 s): before, it fired
//! again on every tick, each time taking the write lock and backfilling, until our own write
//! won the race with the application's.
//!
//! The WAL's hard bound is `truncate-page-count` (one config key, default 121,359 frames,
//! ~500 MB at 4 KiB pages): a life that reaches it is truncated at the next tick, whatever
//! the back-offs say. Only an application reader that holds one read transaction open past
//! it can grow the WAL further (SQLite cannot restart under it, and we never wait on it).

use std::time::{Duration, Instant};

use crate::backoff::{Backoff, Growth};
use crate::config::DbConfig;
use crate::sqlite::CheckpointMode;
use crate::wal::WAL_HEADER_SIZE;

/// The least time between two page-count RESTART checkpoints.
///
/// Ticks follow writes (every few ms under load), but a PASSIVE checkpoint by page count runs
/// at most once per monitor-interval: the WAL life (and so the count) only shrinks at a
/// restart, so once past min-checkpoint-page-count every tick would checkpoint again. A
/// RESTART resets the count, which limits it by volume (one per max-checkpoint-page-count
/// frames); it waits only this long. Held to once a second, a writer of 100k small
/// transactions a second grew each WAL life to ~120k frames (~480 MB) between restarts, past
/// truncate-page-count, so every life ended in a TRUNCATE and the application grew the file
/// afresh; at most 100 ms apart, lives stay near max-checkpoint-page-count and the file is
/// reused. Each restart holds the write lock for a few ms, and still the application wrote
/// about 10% more (0.59 → 0.65 of its throughput alone, small rows).
pub(crate) const RESTART_MIN_GAP: Duration = Duration::from_millis(100);

/// The WAL life, in frames, at which we restart the WAL (RESTART): half
/// `min-checkpoint-page-count`, which is the application's `wal_autocheckpoint` (1000 in
/// SQLite and by default here), and never past `max-checkpoint-page-count` (0: no restart by
/// count). Below the application's threshold on purpose: once a life holds that many frames
/// the application runs a PASSIVE checkpoint after every commit, and while our read mark is
/// below its newest frame (always, right after its commit) that checkpoint can neither finish
/// nor restart the WAL; it only fails to lock our slot, commit after commit, while the WAL
/// grows. Restarting first, with the backfill done by us outside the write lock, leaves the
/// application's checkpoint nothing to do. This is the one place the number is derived.
pub fn restart_threshold(cfg: &DbConfig) -> Option<u64> {
    if cfg.max_checkpoint_page_count == 0 {
        return None;
    }
    let below_app = u64::from(cfg.min_checkpoint_page_count / 2).max(1);
    Some(below_app.min(u64::from(cfg.max_checkpoint_page_count)))
}

/// What a TRUNCATE checkpoint shrinks the WAL file to when we restart it.
pub(crate) const TRUNCATED_WAL_BYTES: u64 = 4 * 1024 * 1024;

/// The checkpoint policy of SPEC §4.2 step 5 (first match wins; see the module comment).
/// `since_last_checkpoint` is measured from the last checkpoint as `record` dated it.
pub fn checkpoint_decision(
    cfg: &DbConfig,
    wal_frames: u64,
    shadow_frames: u64,
    since_last_checkpoint: Duration,
    restart_allowed: bool,
    truncate_allowed: bool,
) -> Option<CheckpointMode> {
    let limit = u64::from(cfg.truncate_page_count);
    if limit > 0 && (shadow_frames >= limit || (truncate_allowed && wal_frames >= limit)) {
        return Some(CheckpointMode::Truncate);
    }
    let restart_due = restart_allowed && restart_threshold(cfg).is_some_and(|n| shadow_frames >= n);
    if restart_due && since_last_checkpoint >= cfg.monitor_interval.min(RESTART_MIN_GAP) {
        return Some(CheckpointMode::Restart);
    }
    if since_last_checkpoint < cfg.monitor_interval {
        return None;
    }
    if shadow_frames >= u64::from(cfg.min_checkpoint_page_count) {
        return Some(CheckpointMode::Passive);
    }
    // Counted in the shadow's life, not the file: a restarted WAL keeps its old length, and an
    // idle db must not checkpoint (and upload) again every interval.
    if !cfg.checkpoint_interval.is_zero()
        && since_last_checkpoint >= cfg.checkpoint_interval
        && shadow_frames > 1
    {
        return Some(CheckpointMode::Passive);
    }
    None
}

/// What `PRAGMA wal_checkpoint` answered: (busy, frames in the WAL, frames checkpointed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassCounts {
    /// SQLite reported SQLITE_BUSY.
    pub busy: bool,
    /// Frames in the WAL, or -1.
    pub log: i64,
    /// Frames copied into the db, or -1.
    pub checkpointed: i64,
}

impl PassCounts {
    /// From `sqlite::checkpoint`'s triple.
    pub fn from_triple((busy, log, checkpointed): (bool, i64, i64)) -> PassCounts {
        PassCounts {
            busy,
            log,
            checkpointed,
        }
    }

    /// Busy with no counts: another connection (an application's auto-checkpoint) held
    /// SQLite's checkpoint lock, so nothing was done at all.
    pub fn lock_busy(&self) -> bool {
        self.busy && self.log < 0
    }

    /// The pass copied every frame of a non-empty WAL.
    pub fn emptied(&self) -> bool {
        !self.busy && self.log > 0 && self.checkpointed == self.log
    }
}

/// What follows the PASSIVE pass every checkpoint starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterPass {
    /// Nothing: the pass was all that was asked for, or all that could be done.
    Done,
    /// Restart the WAL (`Db::restart_wal`).
    Restart {
        /// Truncate the WAL file to this many bytes as it restarts (TRUNCATE only).
        shrink_to: Option<u64>,
        /// Asked by a PASSIVE pass that emptied a WAL of this many frames, not by the mode:
        /// frames committed since mean no restart this time, rather than a backfill (and its
        /// fsyncs) while the application waits on our lock.
        unless_beyond: Option<u64>,
    },
}

/// Whether a checkpoint in `mode` goes on to restart the WAL after its PASSIVE pass.
/// RESTART and TRUNCATE restart the WAL even if the application never stops writing; a
/// PASSIVE pass that emptied it may as well (its next writer would, otherwise). Nothing to
/// restart without a WAL header, nor after a pass that found the checkpoint lock taken.
/// `copied` is the frames of the WAL's life the shadow held before the pass, all below the
/// pin's read mark: a pass that did not backfill that far was stopped by an application
/// reader's mark, and the restart's backfill under our write lock could not get past it
/// either, so the write lock (the application's writers waiting on us) is not taken at all.
pub fn after_pass(
    cfg: &DbConfig,
    mode: CheckpointMode,
    pass: PassCounts,
    wal_has_header: bool,
    frame_size: u64,
    copied: u64,
) -> AfterPass {
    if pass.lock_busy() || !wal_has_header {
        return AfterPass::Done;
    }
    let reader_in_way = u64::try_from(pass.checkpointed).map_or(true, |done| done < copied);
    if mode != CheckpointMode::Passive && reader_in_way {
        return AfterPass::Done;
    }
    match mode {
        CheckpointMode::Passive if !pass.emptied() => AfterPass::Done,
        CheckpointMode::Passive => AfterPass::Restart {
            shrink_to: None,
            unless_beyond: u64::try_from(pass.log).ok(),
        },
        CheckpointMode::Restart => AfterPass::Restart {
            shrink_to: None,
            unless_beyond: None,
        },
        CheckpointMode::Truncate => AfterPass::Restart {
            shrink_to: Some(truncate_target(cfg, frame_size)),
            unless_beyond: None,
        },
    }
}

/// What a TRUNCATE shrinks the WAL file to: `TRUNCATED_WAL_BYTES`, and below the threshold
/// that asked for it, or every tick would ask again. Only TRUNCATE shrinks: an application
/// that grows the WAL again after each truncation pays for fresh file blocks and zeroed
/// page-cache pages on every write (measured: +70% of its system time per transaction),
/// where overwriting the existing file costs nothing extra.
pub fn truncate_target(cfg: &DbConfig, frame_size: u64) -> u64 {
    let below = WAL_HEADER_SIZE as u64 + u64::from(cfg.truncate_page_count / 2) * frame_size;
    TRUNCATED_WAL_BYTES.min(below)
}

/// How a checkpoint went, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The mode that ran.
    pub mode: CheckpointMode,
    /// What SQLite answered: the PASSIVE pass's counts, or the restart's backfill.
    pub pass: PassCounts,
    /// The WAL restarted (its header changed) during the checkpoint.
    pub restarted: bool,
    /// The WAL file was below `truncate-page-count` frames afterwards.
    pub shrunk: bool,
}

impl Outcome {
    /// The PASSIVE pass found SQLite's checkpoint lock taken (`PassCounts::lock_busy`).
    pub fn lock_busy(&self) -> bool {
        self.pass.lock_busy()
    }

    /// `ok`, or `busy` for a checkpoint that was busy or that was to restart the WAL and did
    /// not: the `result` of the checkpoint log line.
    pub fn result(&self) -> &'static str {
        let wanted_restart = self.mode != CheckpointMode::Passive;
        if self.pass.busy || (wanted_restart && !self.restarted) {
            "busy"
        } else {
            "ok"
        }
    }
}

/// The back-off of RESTART after one that could not restart the WAL (an application reader's
/// mark in the way, or its writer holding the lock past `sqlite::briefly`): 100 ms, doubling
/// to 200 ms, ±25 % jitter. Short, because the application's own checkpoint cannot restart
/// the WAL either while our read mark lags its commits: only our RESTART can, in a pause of
/// its readers, and a reader that pauses 0.2 s a second (the bench's) must be caught in most
/// pauses, which a period in step with its own (1 s) would miss for ever; the jitter keeps us
/// out of step. A try that finds a reader in the way costs the application nothing: it stops
/// before our write lock (`after_pass`), and its PASSIVE pass backfills only what the
/// application's checkpoint would.
fn restart_backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        Duration::from_millis(200),
        Growth::Doubling,
    )
    .with_jitter()
}

/// The back-off of TRUNCATE for the file's length after one that left the file long: 1 s,
/// doubling to 60 s. No jitter: one db thread, nothing to retry in step with.
fn truncate_backoff() -> Backoff {
    Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(60),
        Growth::Doubling,
    )
}

/// The db thread's checkpoint state: when the last checkpoint was, and RESTART's back-off.
/// The thresholds are the db's config, passed in, not copied.
#[derive(Clone, Debug)]
pub struct CheckpointPolicy {
    last_checkpoint: Instant,
    restart_backoff: Backoff,
    restart_blocked_until: Option<Instant>,
    truncate_backoff: Backoff,
    truncate_blocked_until: Option<Instant>,
    /// RESTART or TRUNCATE tries in a row that did not restart the WAL (`Report`).
    restart_misses: u64,
}

/// How the log reports a checkpoint (`CheckpointPolicy::record`): once per change of state,
/// not once per try. Under an application reader that holds read transactions most of the
/// time, RESTART fails every 100–200 ms (`restart_backoff`), which at INFO was three lines a
/// second saying the same thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// INFO (a change of state, or a checkpoint that did what it was for), else DEBUG.
    pub info: bool,
    /// The tries in a row that had not restarted the WAL before this one, on the line of
    /// the restart that ended them (0 otherwise).
    pub misses_ended: u64,
}

impl CheckpointPolicy {
    /// A policy whose last checkpoint was at `now` (start-up waits a monitor-interval).
    pub fn new(now: Instant) -> CheckpointPolicy {
        CheckpointPolicy {
            last_checkpoint: now,
            restart_backoff: restart_backoff(),
            restart_blocked_until: None,
            truncate_backoff: truncate_backoff(),
            truncate_blocked_until: None,
            restart_misses: 0,
        }
    }

    /// The checkpoint due at `now`, if any (`checkpoint_decision`).
    pub fn decide(
        &self,
        cfg: &DbConfig,
        wal_frames: u64,
        shadow_frames: u64,
        now: Instant,
    ) -> Option<CheckpointMode> {
        let restart_allowed = self.restart_blocked_until.is_none_or(|until| now >= until);
        let truncate_allowed = self.truncate_blocked_until.is_none_or(|until| now >= until);
        checkpoint_decision(
            cfg,
            wal_frames,
            shadow_frames,
            now.saturating_duration_since(self.last_checkpoint),
            restart_allowed,
            truncate_allowed,
        )
    }

    /// Records a checkpoint that ended at `now`.
    ///
    /// A pass that found SQLite's checkpoint lock taken is dated back so that the next try
    /// comes `lock_busy_retry` later rather than a whole interval (which lets the WAL grow),
    /// and not on every tick either: each try releases our read lock and lets the
    /// application's own checkpoint backfill another sliver on its thread. A RESTART, whose
    /// gap is shorter, does retry on the next ticks: under a writer that never pauses the
    /// application's auto-checkpoint holds that lock more often than not, and one try a tenth
    /// of an interval let the WAL life grow to the TRUNCATE threshold.
    ///
    /// The `Report` says how to log it: the SQLite lock found taken (retried soon) at DEBUG; of
    /// the RESTART/TRUNCATE tries that did not restart the WAL only the first in a row at
    /// INFO, and the restart that ends the run says how many there were.
    pub fn record(&mut self, cfg: &DbConfig, outcome: Outcome, now: Instant) -> Report {
        let report = self.report(&outcome);
        self.back_off(cfg, outcome, now);
        report
    }

    /// `record`'s `Report`, and the count of misses in a row it needs.
    fn report(&mut self, outcome: &Outcome) -> Report {
        if outcome.lock_busy() {
            return Report {
                info: false,
                misses_ended: 0,
            };
        }
        if outcome.mode == CheckpointMode::Passive {
            return Report {
                info: true,
                misses_ended: 0,
            };
        }
        if outcome.restarted {
            let ended = std::mem::take(&mut self.restart_misses);
            return Report {
                info: true,
                misses_ended: ended,
            };
        }
        self.restart_misses += 1;
        Report {
            info: self.restart_misses == 1,
            misses_ended: 0,
        }
    }

    /// `record`'s timing: the next checkpoint's date and the back-offs.
    fn back_off(&mut self, cfg: &DbConfig, outcome: Outcome, now: Instant) {
        let interval = cfg.monitor_interval;
        self.last_checkpoint = if outcome.lock_busy() {
            now.checked_sub(interval - lock_busy_retry(interval))
                .unwrap_or(now)
        } else {
            now
        };
        if outcome.mode != CheckpointMode::Passive && !outcome.lock_busy() {
            if outcome.restarted {
                self.restart_backoff.reset();
                self.restart_blocked_until = None;
            } else {
                self.restart_blocked_until = Some(now + self.restart_backoff.next_wait());
            }
        }
        if outcome.mode == CheckpointMode::Truncate && !outcome.lock_busy() {
            if outcome.shrunk {
                self.truncate_backoff.reset();
                self.truncate_blocked_until = None;
            } else {
                self.truncate_blocked_until = Some(now + self.truncate_backoff.next_wait());
            }
        }
    }
}

/// How soon a checkpoint that found SQLite's checkpoint lock taken is tried again: a tenth of
/// the monitor-interval, at least 10 ms, at most the interval.
fn lock_busy_retry(interval: Duration) -> Duration {
    (interval / 10).max(Duration::from_millis(10)).min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg() -> DbConfig {
        DbConfig::with_defaults(PathBuf::from("/tmp/x.db"))
    }

    #[test]
    fn checkpoint_policy_first_match_wins() {
        let c = cfg();
        let minute = Duration::from_secs(60);
        let interval = c.monitor_interval;
        assert_eq!(restart_threshold(&c), Some(500));
        assert_eq!(
            checkpoint_decision(&c, 121_359, 10, Duration::ZERO, true, true),
            Some(CheckpointMode::Truncate)
        );
        assert_eq!(
            checkpoint_decision(&c, 10_000, 10_000, interval, true, true),
            Some(CheckpointMode::Restart)
        );
        // Half the application's wal_autocheckpoint: its own checkpoint never has to fire.
        assert_eq!(
            checkpoint_decision(&c, 500, 500, interval, true, true),
            Some(CheckpointMode::Restart)
        );
        assert_eq!(
            checkpoint_decision(&c, 499, 499, interval, true, true),
            None
        );
        // While RESTART backs off, PASSIVE by count stands in.
        assert_eq!(
            checkpoint_decision(&c, 1000, 1000, interval, false, true),
            Some(CheckpointMode::Passive)
        );
        assert_eq!(checkpoint_decision(&c, 5, 5, interval, true, true), None);
        assert_eq!(
            checkpoint_decision(&c, 5, 5, minute, true, true),
            Some(CheckpointMode::Passive)
        );
        assert_eq!(checkpoint_decision(&c, 1, 1, minute, true, true), None);
        assert_eq!(checkpoint_decision(&c, 500, 1, minute, true, true), None);
        let mut never = cfg();
        never.max_checkpoint_page_count = 0;
        assert_eq!(restart_threshold(&never), None);
        assert_eq!(
            checkpoint_decision(&never, 20_000, 20_000, interval, true, true),
            Some(CheckpointMode::Passive)
        );
        // The threshold follows the config, and max-checkpoint-page-count caps it.
        let mut small = cfg();
        small.max_checkpoint_page_count = 100;
        assert_eq!(restart_threshold(&small), Some(100));
        small.min_checkpoint_page_count = 1;
        assert_eq!(restart_threshold(&small), Some(1));
    }

    #[test]
    fn passive_waits_a_monitor_interval_and_restart_a_short_gap() {
        let c = cfg();
        let soon = c.monitor_interval / 2;
        assert_eq!(checkpoint_decision(&c, 499, 499, soon, true, true), None);
        assert_eq!(checkpoint_decision(&c, 1000, 1000, soon, false, true), None);
        // A RESTART resets the count, so it waits only RESTART_MIN_GAP, or the monitor-interval
        // when that is shorter.
        assert_eq!(
            checkpoint_decision(&c, 500, 500, soon, true, true),
            Some(CheckpointMode::Restart)
        );
        assert_eq!(
            checkpoint_decision(&c, 10_000, 10_000, RESTART_MIN_GAP / 2, true, true),
            None
        );
        let mut fast = cfg();
        fast.monitor_interval = Duration::from_millis(10);
        assert_eq!(
            checkpoint_decision(&fast, 10_000, 10_000, Duration::from_millis(10), true, true),
            Some(CheckpointMode::Restart)
        );
        // While RESTART backs off, PASSIVE stands in at its own pace.
        assert_eq!(
            checkpoint_decision(&c, 10_000, 10_000, soon, false, true),
            None
        );
        assert_eq!(
            checkpoint_decision(&c, 10_000, 10_000, c.monitor_interval, false, true),
            Some(CheckpointMode::Passive)
        );
        // The WAL-size safety valve does not wait.
        assert_eq!(
            checkpoint_decision(&c, 121_359, 10, soon, true, true),
            Some(CheckpointMode::Truncate)
        );
    }

    fn outcome(mode: CheckpointMode, lock_busy: bool, restarted: bool) -> Outcome {
        let pass = if lock_busy {
            PassCounts::from_triple((true, -1, -1))
        } else {
            PassCounts::from_triple((false, 10, 10))
        };
        Outcome {
            mode,
            pass,
            restarted,
            shrunk: true,
        }
    }

    #[test]
    fn a_run_of_failed_restarts_is_reported_once_and_its_end_with_the_count() {
        let c = cfg();
        let t0 = Instant::now();
        let mut p = CheckpointPolicy::new(t0);
        let miss = outcome(CheckpointMode::Restart, false, false);
        let quiet = Report {
            info: false,
            misses_ended: 0,
        };
        let line = Report {
            info: true,
            misses_ended: 0,
        };
        assert_eq!(p.record(&c, miss, t0), line);
        for _ in 0..20 {
            assert_eq!(p.record(&c, miss, t0), quiet);
        }
        // The SQLite lock found taken neither counts nor logs at INFO; PASSIVE logs as before.
        assert_eq!(
            p.record(&c, outcome(CheckpointMode::Restart, true, false), t0),
            quiet
        );
        assert_eq!(
            p.record(&c, outcome(CheckpointMode::Passive, false, false), t0),
            line
        );
        assert_eq!(
            p.record(&c, outcome(CheckpointMode::Truncate, false, true), t0),
            Report {
                info: true,
                misses_ended: 21
            }
        );
        assert_eq!(
            p.record(&c, outcome(CheckpointMode::Restart, false, true), t0),
            line
        );
        assert_eq!(p.record(&c, miss, t0), line);
    }

    #[test]
    fn a_failed_restart_backs_off_briefly_and_a_success_resets() {
        let c = cfg();
        let t0 = Instant::now();
        let mut p = CheckpointPolicy::new(t0);
        let ms = Duration::from_millis;
        let at = t0 + Duration::from_secs(1);
        assert_eq!(p.decide(&c, 600, 600, at), Some(CheckpointMode::Restart));
        p.record(&c, outcome(CheckpointMode::Restart, false, false), at);
        // Blocked for 100 ms ± 25 %, never a whole second: a reader's pause must be caught.
        assert_eq!(p.decide(&c, 600, 600, at + ms(74)), None);
        assert_eq!(
            p.decide(&c, 600, 600, at + ms(126)),
            Some(CheckpointMode::Restart)
        );
        // Then 200 ms ± 25 % at most, however often it fails.
        let mut t = at + ms(126);
        for _ in 0..10 {
            p.record(&c, outcome(CheckpointMode::Restart, false, false), t);
            assert_eq!(p.decide(&c, 600, 600, t + ms(99)), None);
            t += ms(251);
            assert_eq!(p.decide(&c, 600, 600, t), Some(CheckpointMode::Restart));
        }
        // A restart resets the back-off.
        p.record(&c, outcome(CheckpointMode::Restart, false, true), t);
        assert_eq!(
            p.decide(&c, 600, 600, t + RESTART_MIN_GAP),
            Some(CheckpointMode::Restart)
        );
        p.record(
            &c,
            outcome(CheckpointMode::Restart, false, false),
            t + RESTART_MIN_GAP,
        );
        assert_eq!(
            p.decide(&c, 600, 600, t + RESTART_MIN_GAP + ms(126)),
            Some(CheckpointMode::Restart)
        );
    }

    #[test]
    fn the_checkpoint_lock_taken_means_retry_soon_without_backing_off() {
        let c = cfg();
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut p = CheckpointPolicy::new(t0);
        let at = t0 + c.monitor_interval;
        assert_eq!(p.decide(&c, 400, 400, at), None);
        let mut passive = cfg();
        passive.min_checkpoint_page_count = 300;
        passive.max_checkpoint_page_count = 0;
        assert_eq!(
            p.decide(&passive, 400, 400, at),
            Some(CheckpointMode::Passive)
        );
        p.record(&passive, outcome(CheckpointMode::Passive, true, false), at);
        let retry = lock_busy_retry(c.monitor_interval);
        assert_eq!(retry, Duration::from_millis(100));
        assert_eq!(p.decide(&passive, 400, 400, at + retry / 2), None);
        assert_eq!(
            p.decide(&passive, 400, 400, at + retry),
            Some(CheckpointMode::Passive)
        );
        // A RESTART that met the lock is not backed off either.
        p.record(&c, outcome(CheckpointMode::Restart, true, false), at);
        assert_eq!(
            p.decide(&c, 10_000, 10_000, at + RESTART_MIN_GAP),
            Some(CheckpointMode::Restart)
        );
        assert_eq!(
            lock_busy_retry(Duration::from_millis(50)),
            Duration::from_millis(10)
        );
        assert_eq!(
            lock_busy_retry(Duration::from_millis(5)),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn a_truncate_that_left_the_file_long_backs_off_but_not_past_the_hard_bound() {
        let c = cfg();
        let t0 = Instant::now();
        let mut p = CheckpointPolicy::new(t0);
        let ms = Duration::from_millis;
        let long = u64::from(c.truncate_page_count) + 10;
        assert_eq!(p.decide(&c, long, 10, t0), Some(CheckpointMode::Truncate));
        // The application's write restarted the WAL before ours: the file stays long.
        let mut left_long = outcome(CheckpointMode::Truncate, false, true);
        left_long.shrunk = false;
        p.record(&c, left_long, t0);
        // Not on every tick after that (it took the write lock each time)...
        assert_eq!(p.decide(&c, long, 10, t0 + ms(5)), None);
        assert_eq!(p.decide(&c, long, 10, t0 + ms(999)), None);
        assert_eq!(
            p.decide(&c, long, 10, t0 + ms(1000)),
            Some(CheckpointMode::Truncate)
        );
        // ...but a life that itself reaches the threshold is truncated at once.
        assert_eq!(
            p.decide(&c, long, long - 10, t0 + ms(5)),
            Some(CheckpointMode::Truncate)
        );
        // Doubling, and a shrink resets it.
        p.record(&c, left_long, t0 + ms(1000));
        assert_eq!(p.decide(&c, long, 10, t0 + ms(2999)), None);
        assert_eq!(
            p.decide(&c, long, 10, t0 + ms(3000)),
            Some(CheckpointMode::Truncate)
        );
        p.record(
            &c,
            outcome(CheckpointMode::Truncate, false, true),
            t0 + ms(3000),
        );
        assert_eq!(
            p.decide(&c, long, 10, t0 + ms(3001)),
            Some(CheckpointMode::Truncate)
        );
    }

    #[test]
    fn what_follows_the_passive_pass() {
        let c = cfg();
        let emptied = PassCounts::from_triple((false, 500, 500));
        let partial = PassCounts::from_triple((false, 500, 400));
        let lock = PassCounts::from_triple((true, -1, -1));
        assert!(lock.lock_busy() && !lock.emptied());
        assert_eq!(
            after_pass(&c, CheckpointMode::Passive, partial, true, 4120, 400),
            AfterPass::Done
        );
        assert_eq!(
            after_pass(&c, CheckpointMode::Passive, emptied, true, 4120, 400),
            AfterPass::Restart {
                shrink_to: None,
                unless_beyond: Some(500)
            }
        );
        assert_eq!(
            after_pass(&c, CheckpointMode::Restart, partial, true, 4120, 400),
            AfterPass::Restart {
                shrink_to: None,
                unless_beyond: None
            }
        );
        for mode in [
            CheckpointMode::Passive,
            CheckpointMode::Restart,
            CheckpointMode::Truncate,
        ] {
            assert_eq!(after_pass(&c, mode, lock, true, 4120, 0), AfterPass::Done);
            assert_eq!(
                after_pass(&c, mode, emptied, false, 4120, 0),
                AfterPass::Done
            );
        }
        assert_eq!(
            after_pass(&c, CheckpointMode::Truncate, partial, true, 4120, 400),
            AfterPass::Restart {
                shrink_to: Some(TRUNCATED_WAL_BYTES),
                unless_beyond: None
            }
        );
        // A pass held below what the shadow holds met an application reader's mark: the
        // restart under our write lock could not get past it, so the lock is not taken.
        for mode in [CheckpointMode::Restart, CheckpointMode::Truncate] {
            assert_eq!(
                after_pass(&c, mode, partial, true, 4120, 401),
                AfterPass::Done
            );
        }
        assert_eq!(
            after_pass(&c, CheckpointMode::Passive, emptied, true, 4120, 501),
            AfterPass::Restart {
                shrink_to: None,
                unless_beyond: Some(500)
            }
        );
        let mut small = cfg();
        small.truncate_page_count = 100;
        assert_eq!(truncate_target(&small, 4120), 32 + 50 * 4120);
    }

    #[test]
    fn result_labels() {
        assert_eq!(
            outcome(CheckpointMode::Passive, false, false).result(),
            "ok"
        );
        assert_eq!(
            outcome(CheckpointMode::Restart, false, false).result(),
            "busy"
        );
        assert_eq!(
            outcome(CheckpointMode::Truncate, false, true).result(),
            "ok"
        );
        assert_eq!(
            outcome(CheckpointMode::Passive, true, false).result(),
            "busy"
        );
    }
}
