//! Our locks on the WAL and the checkpoint protocol that keeps them safe.
//!
//! Why the read transaction matters: SQLite restarts a WAL (overwriting it from the start) only
//! when no reader uses it. Our open read transaction either pins WAL frames (so no restart can
//! happen) or, when the WAL was fully checkpointed as it began, blocks every checkpoint (so no
//! frame appended after it can be checkpointed, and no restart can drop an uncopied frame).
//! Our connection must leave it to checkpoint; a second connection, the pin, holds one across
//! that gap (see `Db::checkpoint`). A restart seen when neither held a lock (after an error
//! closed the transaction, say) is checked against the WAL itself (`Db::old_life_proof`), and
//! continues in the next index only when the old life is provably whole in the shadow.
//!
//! What to checkpoint and when is `policy`'s; this module carries a decision out and reports
//! how it went. It is the only user of the pin connection.

use std::fs::File;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use rusqlite::Connection;

use super::policy::{self, AfterPass, Outcome, PassCounts, Report};
use super::shadow::{read_header, wal_frames, Shadow};
use super::verdict::{self, Reason, Verdict};
use super::Db;
use crate::config::LogLevel;
use crate::files::{read_at_most, wal_path};
use crate::logging;
use crate::sqlite::{
    self, begin_read, briefly, end_read, is_busy, open_pin_connection, passive_checkpoint_retrying,
    CheckpointMode,
};
use crate::wal::{self, WalHeader, FRAME_HEADER_SIZE, WAL_HEADER_SIZE};

impl Db {
    /// SPEC §4.2 step 5: checkpoint, and restart the WAL when that emptied it.
    ///
    /// Our connection must leave its read transaction to checkpoint. A second connection, the
    /// pin, holds one across that gap. While the pin reads at a mark in the WAL nobody can
    /// restart the WAL; while it reads at mark 0 (the WAL was fully checkpointed as it began)
    /// no checkpoint can run, so one restart at most can happen, of a life we had copied
    /// whole. Without the pin, a stall of this thread in the gap (a busy machine, or a read
    /// lock SQLite keeps retrying while the application checkpoints) let the application's own
    /// auto-checkpoint backfill frames we had not copied and its next write restart the WAL
    /// over them, or over a whole life we never saw.
    pub(super) fn checkpoint(&mut self, mode: CheckpointMode) -> Result<()> {
        // The argument above needs the shadow to hold the WAL as of our read lock. After an
        // error (or `write_seq`) that is not known: take the lock afresh and copy; if the WAL
        // restarted meanwhile, the next tick's `sync` deals with it first.
        if !(self.clean_read_tx && self.read_tx_alive()) {
            self.end_read_tx()?;
            self.begin_read_tx()?;
            self.after_read_tx_begun()?;
            if !self.clean_read_tx {
                return Ok(());
            }
        }
        // A snapshot in progress reads the db file; it must not see our checkpoint.
        let shared = self.shared.clone();
        let Ok(_guard) = shared.checkpoint_lock.try_write() else {
            return Ok(());
        };
        self.copy_to_shadow()?;
        self.publish();
        let wal = wal_path(&self.shared.path);
        let before = read_header(&wal)?;
        let started = Instant::now();
        let counts = self.pinned(mode, before)?;
        let after = read_header(&wal)?;
        let frame_size = self.shadow.as_ref().map_or(4096, |s| s.header.frame_size());
        let done = Outcome {
            mode,
            pass: counts,
            restarted: before.is_some() && after != before,
            shrunk: wal_frames(&wal, frame_size) < u64::from(self.cfg.truncate_page_count),
        };
        let report = self.policy.record(&self.cfg, done, Instant::now());
        self.log_checkpoint(&done, report, started);
        if done.restarted {
            self.follow_checkpoint_restart(after)?;
        }
        self.after_read_tx_begun()?;
        // Before the guard drops: a snapshot must never read a db file holding frames
        // (up to our new read mark) beyond the published position.
        self.publish();
        Ok(())
    }

    /// Opens the pin, holds its read lock while ours is closed for `checkpoint_pinned`, takes
    /// ours back, then lets the pin go; counts the checkpoint in the metrics.
    fn pinned(
        &mut self,
        mode: CheckpointMode,
        before: Option<[u8; WAL_HEADER_SIZE]>,
    ) -> Result<PassCounts> {
        let started = Instant::now();
        // Opened for each checkpoint: kept open, its schema and page cache were 60 KiB of
        // every busy db's memory. (SQLite keeps the db file's descriptor open while our
        // connection holds a lock on it, so closing the pin cannot drop our POSIX locks.)
        let pin = open_pin_connection(&self.shared.path, self.cfg.busy_timeout)?;
        begin_read(&pin).context("cannot take the pin's read lock")?;
        let outcome = self
            .end_read_tx()
            .and_then(|()| self.checkpoint_pinned(&pin, mode, before));
        // Our own read transaction first, then the pin may go.
        let relocked = self.begin_read_tx();
        let unpinned = end_read(&pin).context("cannot release the pin's read lock");
        drop(pin);
        self.shared
            .metrics
            .checkpoint_done(mode.name(), outcome.is_ok(), started.elapsed());
        let counts = outcome?;
        relocked?;
        unpinned?;
        Ok(counts)
    }

    /// The restart a checkpoint made (or let the application make): one at most, of a life we
    /// had copied whole (see `checkpoint`); anything else is a new generation.
    fn follow_checkpoint_restart(&mut self, after: Option<[u8; WAL_HEADER_SIZE]>) -> Result<()> {
        let next = after
            .and_then(|h| WalHeader::parse(&h).ok())
            .zip(self.shadow.as_ref())
            .is_some_and(|(new, s)| wal::is_next_life(&s.header, &new));
        if next {
            self.finish_and_restart()
        } else {
            self.new_generation(Reason::RestartedTwiceDuringCheckpoint)
        }
    }

    /// The `checkpoint` log line, at the level `policy::Report` says (once per change of
    /// state: a reader that keeps RESTART failing is one INFO line, not three a second).
    fn log_checkpoint(&self, done: &Outcome, report: Report, started: Instant) {
        let level = if report.info {
            LogLevel::Info
        } else {
            LogLevel::Debug
        };
        let mut fields: Vec<(&str, &dyn std::fmt::Display)> = Vec::with_capacity(8);
        let (db, mode, result) = (self.db_label(), done.mode.name(), done.result());
        let elapsed = format!("{:?}", started.elapsed());
        fields.extend_from_slice(&[
            ("db", &db as &dyn std::fmt::Display),
            ("mode", &mode),
            ("result", &result),
            ("wal_frames", &done.pass.log),
            ("checkpointed", &done.pass.checkpointed),
            ("restarted", &done.restarted),
            ("elapsed", &elapsed),
        ]);
        if report.misses_ended > 0 {
            fields.push(("failed_tries_before", &report.misses_ended));
        }
        logging::log(level, "checkpoint", &fields);
    }

    /// The checkpoint proper, with the pin held and our read transaction closed: a PASSIVE
    /// pass, then (for RESTART and TRUNCATE, or when that pass emptied the WAL) `restart_wal`.
    /// The counts are the pass's (busy, frames in the WAL, frames checkpointed), or the
    /// restart's backfill when it emptied the WAL.
    pub(super) fn checkpoint_pinned(
        &mut self,
        pin: &Connection,
        mode: CheckpointMode,
        before: Option<[u8; WAL_HEADER_SIZE]>,
    ) -> Result<PassCounts> {
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        let copied = self.shadow.as_ref().map_or(0, Shadow::frames);
        let pass = PassCounts::from_triple(sqlite::checkpoint(conn, CheckpointMode::Passive)?);
        let frame_size = self.shadow.as_ref().map_or(4096, |s| s.header.frame_size()) as u64;
        let AfterPass::Restart {
            shrink_to,
            unless_beyond,
        } = policy::after_pass(&self.cfg, mode, pass, before.is_some(), frame_size, copied)
        else {
            return Ok(pass);
        };
        Ok(
            match self.restart_wal(pin, before, shrink_to, unless_beyond)? {
                Some(backfill) => backfill,
                None => pass,
            },
        )
    }

    /// A restart we did not see happen: take the write lock (so the WAL holds still), copy what
    /// is left of the old life, then `finish_restart`; our read transaction is open again on
    /// return.
    pub(super) fn finish_restart_locked(&mut self) -> Result<()> {
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")
                .context("cannot release read lock")?;
        }
        self.in_read_tx = false;
        let locked = conn.execute_batch("BEGIN; INSERT INTO _litestream_lock (id) VALUES (1);");
        if let Err(err) = locked {
            // Busy past the timeout, most likely: hold the read lock again and retry next tick.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            self.begin_read_tx()?;
            return Err(err).context("cannot take the write lock");
        }
        self.in_read_tx = true;
        let outcome = (|| -> Result<()> {
            self.copy_to_shadow()?;
            self.finish_restart()
        })();
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        conn.execute_batch("ROLLBACK")
            .context("cannot release the write lock")?;
        self.in_read_tx = false;
        self.begin_read_tx()?;
        outcome?;
        self.after_read_tx_begun()
    }

    /// After a restart, with the write lock held and the old life copied as far as the WAL
    /// still holds it: the next index if the old life is provably whole in the shadow, else a
    /// new generation.
    pub(super) fn finish_restart(&mut self) -> Result<()> {
        match self.old_life_proof()? {
            Ok(()) => {
                self.start_next_index()?;
                self.copy_to_shadow()?;
            }
            Err(reason) => self.new_generation(reason)?,
        }
        Ok(())
    }

    /// Whether the shadow holds every committed frame of the WAL life before the current one
    /// (called under the write lock, after copying that life's tail), for a restart that
    /// happened while neither our connection nor the pin held a read lock: what the WAL holds
    /// where our copy of the old life stopped tells (`wal::old_life_copied_whole`).
    /// The reason when it cannot be proven (`verdict::old_life`).
    pub(super) fn old_life_proof(&self) -> Result<Verdict<()>> {
        let shadow = self
            .shadow
            .as_ref()
            .ok_or_else(|| anyhow!("no shadow wal"))?;
        let wal = wal_path(&self.shared.path);
        let wal_file =
            File::open(&wal).with_context(|| format!("{}: cannot open wal", wal.display()))?;
        let mut hdr = [0u8; WAL_HEADER_SIZE];
        if read_at_most(&wal_file, 0, &mut hdr)? < hdr.len() {
            return Ok(verdict::old_life(shadow, None, None, false));
        }
        let mut next = [0u8; FRAME_HEADER_SIZE];
        let got = read_at_most(&wal_file, shadow.size, &mut next)?;
        let truncated = wal_file.metadata()?.len() < self.wal_len_max;
        Ok(verdict::old_life(
            shadow,
            Some(&hdr),
            (got == next.len()).then_some(&next[..]),
            truncated,
        ))
    }

    /// Restarts the WAL (with the pin held, our read transaction closed): under the write lock
    /// copy the whole life, then backfill all of it through the pin's connection and pin again
    /// (at mark 0, which allows one restart, of that life), release the lock and write our
    /// `_litestream_seq` row, whose read then begins on a fully checkpointed WAL, so the write
    /// restarts it. The application may get the write lock first and restart it itself, which
    /// is as safe. The backfill's counts when the WAL was emptied, `None` when it could not be
    /// (the lock or a reader of the application was in the way). `unless_beyond` and
    /// `shrink_to` are `policy::AfterPass::Restart`'s: no restart when frames were committed
    /// since an emptying PASSIVE pass; with `shrink_to` (TRUNCATE only, see
    /// `policy::truncate_target`) our restart also truncates the WAL file.
    pub(super) fn restart_wal(
        &mut self,
        pin: &Connection,
        before: Option<[u8; WAL_HEADER_SIZE]>,
        shrink_to: Option<u64>,
        unless_beyond: Option<u64>,
    ) -> Result<Option<PassCounts>> {
        let timeout = self.cfg.busy_timeout;
        let conn = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        let locked = briefly(conn, timeout, |c| c.execute_batch("BEGIN IMMEDIATE"))?;
        if let Err(err) = locked {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            if is_busy(&err) {
                return Ok(None);
            }
            return Err(err).context("cannot take the write lock");
        }
        let outcome = (|| -> Result<Option<PassCounts>> {
            if read_header(&wal_path(&self.shared.path))? != before {
                // Restarted while we waited for the lock: the caller follows it.
                return Ok(None);
            }
            // No fsync while the application waits on our lock: it follows the release.
            self.copy_frames(false)?;
            let frames = self.shadow.as_ref().map_or(0, Shadow::frames);
            if unless_beyond.is_some_and(|n| frames > n) {
                return Ok(None);
            }
            end_read(pin).context("cannot release the pin's read lock")?;
            let (busy, log, done) = passive_checkpoint_retrying(pin)?;
            begin_read(pin).context("cannot take the pin's read lock")?;
            Ok((!busy && log >= 0 && done == log)
                .then_some(PassCounts::from_triple((false, log, done))))
        })();
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")
                .context("cannot release the write lock")?;
        }
        self.sync_shadow()?;
        let Some(counts) = outcome? else {
            return Ok(None);
        };
        let conn = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        if let Some(limit) = shrink_to {
            conn.execute_batch(&format!("PRAGMA journal_size_limit = {limit}"))?;
        }
        let written = briefly(conn, timeout, sqlite::bump_seq)?;
        if shrink_to.is_some() {
            conn.execute_batch("PRAGMA journal_size_limit = -1")?;
        }
        match written {
            Ok(_) => Ok(Some(counts)),
            // The application holds the write lock: its write restarts the WAL instead.
            Err(err) if is_busy(&err) => Ok(Some(counts)),
            Err(err) => Err(err).context("cannot write to _litestream_seq"),
        }
    }

    /// fsyncs the current shadow file (after `copy_frames(false)`).
    pub(super) fn sync_shadow(&self) -> Result<()> {
        self.shadow.as_ref().map_or(Ok(()), Shadow::sync)
    }

    /// Bookkeeping after a read transaction began: copy at once, then remember whether the
    /// WAL still had the shadow's header (see `clean_read_tx`). In that order: SQLite writes a
    /// new life's header before its first frame, so a header still ours after the copy means
    /// no frame the copy read had been overwritten, and the copy took the life whole as it
    /// stood when our read lock was taken. From then on our lock allows no restart at all (a
    /// read mark in the WAL), or one of exactly that state (read mark 0: the WAL was fully
    /// checkpointed, and no checkpoint can run past our lock).
    pub(super) fn after_read_tx_begun(&mut self) -> Result<()> {
        let ours = self.wal_header_is_shadows()?;
        if ours {
            self.copy_to_shadow()?;
        }
        self.clean_read_tx = ours && self.wal_header_is_shadows()?;
        Ok(())
    }

    /// True when the WAL file starts with the current shadow's header.
    pub(super) fn wal_header_is_shadows(&self) -> Result<bool> {
        let hdr = read_header(&wal_path(&self.shared.path))?;
        Ok(match (&self.shadow, hdr) {
            (Some(s), Some(h)) => s.header_bytes == h,
            _ => false,
        })
    }

    /// Writes one row so the WAL gets a header and a frame (SPEC §4.2 step 1). Done outside our
    /// read transaction: a deferred read transaction cannot always be promoted.
    pub(super) fn write_seq(&mut self) -> Result<()> {
        let was_in_tx = self.in_read_tx;
        if was_in_tx {
            self.end_read_tx()?;
        }
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        let r = sqlite::bump_seq(conn);
        if was_in_tx {
            self.begin_read_tx()?;
        }
        r.context("cannot write to _litestream_seq")?;
        Ok(())
    }

    pub(super) fn begin_read_tx(&mut self) -> Result<()> {
        if self.in_read_tx {
            return Ok(());
        }
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        begin_read(conn).context("cannot acquire read lock")?;
        self.in_read_tx = true;
        self.clean_read_tx = false;
        Ok(())
    }

    pub(super) fn end_read_tx(&mut self) -> Result<()> {
        if !self.in_read_tx {
            return Ok(());
        }
        self.in_read_tx = false;
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        end_read(conn).context("cannot release read lock")
    }
}
