//! Go's duration format, both ways: [`parse_duration`] reads `time.ParseDuration`'s syntax
//! (what Litestream's YAML accepts) and [`go_duration`] writes the `1m30s` form Litestream
//! prints.
//!
//! Text and [`Duration`] only: it knows nothing of YAML, keys or places (the raw
//! deserializers add those).

use std::time::Duration;

/// Go's `time.ParseDuration`, without negative values: a sequence of decimal numbers, each with
/// an optional fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `500ms`,
/// `1h30m`, `1.5h`; `0` alone needs no unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid(s, "empty (use e.g. 500ms, 1s, 10m, 1h30m)"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (nanos, after) = term(s, rest)?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| invalid(s, "too large"))?;
        // Go's Duration is an i64 of nanoseconds: refuse what Litestream could not hold.
        if total > i64::MAX as u128 {
            return Err(invalid(s, "too large"));
        }
        rest = after;
    }
    if negative && total != 0 {
        return Err(invalid(s, "must not be negative"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// The message of every refusal, quoting the whole text `s` whichever part was wrong.
fn invalid(s: &str, why: &str) -> String {
    format!("invalid duration {s:?}: {why}")
}

/// The first `NUMBER[.FRACTION]UNIT` of `rest` (the unread tail of `s`), in nanoseconds, and
/// the text after it.
fn term<'a>(s: &str, rest: &'a str) -> Result<(u128, &'a str), String> {
    let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (int_digits, after) = rest.split_at(int_len);
    let (frac_digits, after) = match after.strip_prefix('.') {
        Some(a) => {
            let n = a.bytes().take_while(u8::is_ascii_digit).count();
            a.split_at(n)
        }
        None => ("", after),
    };
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(invalid(
            s,
            "expected a number (use e.g. 500ms, 1s, 10m, 1h30m)",
        ));
    }
    let unit_len = after
        .find(|c: char| c == '.' || c.is_ascii_digit())
        .unwrap_or(after.len());
    let (unit, after) = after.split_at(unit_len);
    let nanos_per_unit = unit_nanos(s, unit, int_digits, frac_digits)?;
    let too_large = || invalid(s, "too large");
    let mut value: u128 = 0;
    for d in int_digits.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(d - b'0')))
            .filter(|v| *v <= u128::from(u64::MAX))
            .ok_or_else(too_large)?;
    }
    let mut nanos = value.checked_mul(nanos_per_unit).ok_or_else(too_large)?;
    // The fraction, truncated to whole nanoseconds (digits past the 20th cannot matter).
    let frac: &str = &frac_digits[..frac_digits.len().min(20)];
    if !frac.is_empty() {
        let numerator: u128 = frac.parse().map_err(|_| too_large())?;
        nanos += numerator * nanos_per_unit / 10u128.pow(frac.len() as u32);
    }
    Ok((nanos, after))
}

/// Nanoseconds per `unit`; the error shows the number it follows, to suggest a fix.
fn unit_nanos(s: &str, unit: &str, int_digits: &str, frac_digits: &str) -> Result<u128, String> {
    Ok(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            let number = if frac_digits.is_empty() {
                int_digits.to_string()
            } else {
                format!("{int_digits}.{frac_digits}")
            };
            return Err(invalid(
                s,
                &format!("missing unit after {number} (e.g. \"{number}s\")"),
            ));
        }
        other => {
            return Err(invalid(
                s,
                &format!("unknown unit {other:?} (valid units: ns, us, ms, s, m, h)"),
            ))
        }
    })
}

/// A Go-style duration, truncated to whole seconds: `0s`, `45s`, `1m30s`, `2h0m5s`.
pub(crate) fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn durations_table() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", ms(500)),
            ("1s", secs(1)),
            ("+1s", secs(1)),
            ("10m", secs(600)),
            ("1h30m", secs(5400)),
            ("24h", secs(86400)),
            ("1.5h", secs(5400)),
            (".5s", ms(500)),
            ("1.s", secs(1)),
            ("1m30.5s", ms(90_500)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("100μs", Duration::from_micros(100)),
            ("15ns", Duration::from_nanos(15)),
            ("1h1m1s1ms1us1ns", Duration::from_nanos(3_661_001_001_001)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("0.0000000019s", Duration::from_nanos(1)),
            ("2562047h", secs(2_562_047 * 3600)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s), Ok(*want), "{s:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "invalid duration \"\": empty"),
            (
                "5",
                "invalid duration \"5\": missing unit after 5 (e.g. \"5s\")",
            ),
            ("1.5", "invalid duration \"1.5\": missing unit after 1.5"),
            ("-1s", "invalid duration \"-1s\": must not be negative"),
            ("1x", "invalid duration \"1x\": unknown unit \"x\""),
            ("1sec", "invalid duration \"1sec\": unknown unit \"sec\""),
            ("s", "invalid duration \"s\": expected a number"),
            (".s", "invalid duration \".s\": expected a number"),
            ("1s ", "invalid duration \"1s \": unknown unit \"s \""),
            (" 1s", "invalid duration \" 1s\": expected a number"),
            ("1h-1m", "invalid duration \"1h-1m\": unknown unit \"h-\""),
            ("-", "invalid duration \"-\": empty"),
            (
                "9999999999999999999h",
                "invalid duration \"9999999999999999999h\": too large",
            ),
            ("2562048h", "invalid duration \"2562048h\": too large"),
        ];
        for (s, want) in bad {
            let e = parse_duration(s).unwrap_err();
            assert!(e.starts_with(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(900)), "0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(7205)), "2h0m5s");
    }
}
