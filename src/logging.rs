//! One line per event: `time=… level=INFO msg="…" key=value …`, or one JSON object per line.
//!
//! A process-wide logger set once at start (level, format, stream). Callers pass a message and
//! key/value pairs; values are quoted when needed. Secrets are never passed in: callers log
//! replica targets through `ReplicaClient::describe`, which has none.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::SystemTime;

use crate::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(1);
static JSON: AtomicBool = AtomicBool::new(false);
static STDERR: AtomicBool = AtomicBool::new(true);

/// Sets the process-wide level, format and stream.
pub fn init(level: LogLevel, json: bool, stderr: bool) {
    LEVEL.store(level_num(level), Ordering::Relaxed);
    JSON.store(json, Ordering::Relaxed);
    STDERR.store(stderr, Ordering::Relaxed);
}

fn level_num(level: LogLevel) -> u8 {
    match level {
        LogLevel::Debug => 0,
        LogLevel::Info => 1,
        LogLevel::Warn => 2,
        LogLevel::Error => 3,
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

/// Whether an event at `level` would be written (to skip building costly fields).
pub(crate) fn enabled(level: LogLevel) -> bool {
    level_num(level) >= LEVEL.load(Ordering::Relaxed)
}

/// Logs a debug event: `msg` and its `fields`, on one line.
pub(crate) fn debug(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    log(LogLevel::Debug, msg, fields)
}
/// Logs an info event.
pub(crate) fn info(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    log(LogLevel::Info, msg, fields)
}
/// Logs a warning.
pub(crate) fn warn(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    log(LogLevel::Warn, msg, fields)
}
/// Logs an error.
pub(crate) fn error(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    log(LogLevel::Error, msg, fields)
}

/// Logs an event at `level`, when that level is enabled.
pub(crate) fn log(level: LogLevel, msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    if !enabled(level) {
        return;
    }
    let line = format_line(
        SystemTime::now(),
        level,
        msg,
        fields,
        JSON.load(Ordering::Relaxed),
    );
    // A failed log write has nowhere to be reported; dropping it beats crashing the daemon.
    if STDERR.load(Ordering::Relaxed) {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    } else {
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// Formats one log line, newline included.
pub(crate) fn format_line(
    time: SystemTime,
    level: LogLevel,
    msg: &str,
    fields: &[(&str, &dyn std::fmt::Display)],
    json: bool,
) -> String {
    let ts = humantime::format_rfc3339_millis(time).to_string();
    let mut out = String::with_capacity(128);
    if json {
        out.push_str(&format!(
            "{{\"time\":{},\"level\":{},\"msg\":{}",
            json_string(&ts),
            json_string(level_name(level)),
            json_string(msg)
        ));
        for (k, v) in fields {
            out.push_str(&format!(
                ",{}:{}",
                json_string(k),
                json_string(&v.to_string())
            ));
        }
        out.push_str("}\n");
    } else {
        out.push_str(&format!(
            "time={ts} level={} msg={}",
            level_name(level),
            text_value(msg)
        ));
        for (k, v) in fields {
            out.push_str(&format!(" {k}={}", text_value(&v.to_string())));
        }
        out.push('\n');
    }
    out
}

fn text_value(s: &str) -> String {
    if !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control())
    {
        s.to_string()
    } else {
        json_string(s)
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn text_line() {
        let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        let line = format_line(
            t,
            LogLevel::Info,
            "new generation",
            &[("db", &"/tmp/a b.db"), ("reason", &"no generation")],
            false,
        );
        assert_eq!(
            line,
            "time=2020-09-13T12:26:40.000Z level=INFO msg=\"new generation\" db=\"/tmp/a b.db\" reason=\"no generation\"\n"
        );
    }

    #[test]
    fn json_line_escapes() {
        let t = UNIX_EPOCH;
        let line = format_line(t, LogLevel::Error, "x\"y", &[("k", &"a\nb")], true);
        assert_eq!(
            line,
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"level\":\"ERROR\",\"msg\":\"x\\\"y\",\"k\":\"a\\nb\"}\n"
        );
    }
}
