//! A replica's `age:` keys (client-side encryption, as Litestream v0.3.13 reads them):
//! `recipients`, each the text of an age recipients file (one `age1…` per line, `#`
//! comments), and `identities`, each the text of an identity file (`AGE-SECRET-KEY-1…` lines)
//! or, our addition, the path of one.
//!
//! Pure: checks text, never reads a file (identity files are read by `load`, which then
//! checks their text here). No message ever holds any part of an identity: a bad line is
//! named by its number, as the age tools do.

// age 0.13 marks X25519 deprecated (not post-quantum); it is the only key type Litestream
// v0.3.13 reads and writes, so it is the one this module must use.
#![allow(deprecated)]

use std::str::FromStr;

/// The keys of `age:`, for hints (a unit test in `raw` checks them against the schema).
#[cfg(test)]
pub(super) const AGE_KEYS: &[&str] = &["recipients", "identities"];

/// What an `identities` entry is: identity text (v0.3.13's only form: it hands each entry to
/// `age.ParseIdentities`), the path of an identity file, or neither.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum IdentityEntry {
    /// Identity text.
    Inline,
    /// One line that is not a key and reads as a path: a path to resolve and read.
    Path,
    /// One line that is no key and no plausible path (why, to be reported without the
    /// entry: it may be a mangled key).
    NotAPath(&'static str),
}

/// Identity text has a line starting `AGE-` (a key; a typo in one is reported, never taken
/// as a path), holds identity text anywhere ([`looks_like_identity`]: a key in quotes, behind
/// a BOM or an invisible space), or has more than one line. Otherwise it is a path when it
/// is a plausible one ([`implausible_path`]).
pub(super) fn identity_entry(s: &str) -> IdentityEntry {
    let key_line = s
        .lines()
        .map(str::trim)
        .any(|l| l.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("AGE-")));
    if key_line || looks_like_identity(s) || s.trim().contains('\n') {
        IdentityEntry::Inline
    } else if let Some(why) = implausible_path(s.trim()) {
        IdentityEntry::NotAPath(why)
    } else {
        IdentityEntry::Path
    }
}

/// Why `p` is not a path anyone means (so it is neither read nor shown), or `None`: a
/// control or invisible character (a BOM, a zero-width space), quotes around it, or a long
/// run of letters and digits with no `/` or `.` (the shape of key material).
pub(crate) fn implausible_path(p: &str) -> Option<&'static str> {
    if p.chars().any(char::is_control) {
        return Some("holds a control character");
    }
    if p.chars().any(invisible) {
        return Some("holds an invisible character (a BOM or a zero-width space?)");
    }
    let quotes = ['\'', '"', '`'];
    if p.starts_with(quotes) || p.ends_with(quotes) {
        return Some("is in quotes (remove them)");
    }
    if p.len() > 4096 {
        return Some("is longer than any path");
    }
    if p.len() >= 40
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'='))
    {
        return Some("has the shape of key material, not of a path");
    }
    None
}

/// Characters that show as nothing: BOM, zero-width and direction marks, soft hyphen.
fn invisible(c: char) -> bool {
    matches!(c, '\u{ad}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

/// True when `s` holds what reads as `AGE-SECRET-KEY-` once everything but ASCII letters
/// and digits is dropped, in any case: a key behind quotes, a BOM, an invisible space, or
/// with one inside its prefix. Such text is never shown and never taken as a path.
pub(crate) fn looks_like_identity(s: &str) -> bool {
    if s.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
        return true;
    }
    // Mangled: the prefix with something inside it, followed by key data.
    let letters: String = s
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    letters
        .find("AGESECRETKEY1")
        .is_some_and(|i| letters.len() - i >= "AGESECRETKEY1".len() + 10)
}

/// True when a message holds what may be a whole identity: `KEY-1` (any case) followed by at
/// least 40 letters or digits, the shape of X25519 key data. The last guard before a
/// message is shown: our own wording (`AGE-SECRET-KEY-1…`) never matches.
pub(crate) fn holds_key_text(msg: &str) -> bool {
    let upper = msg.to_ascii_uppercase();
    upper.match_indices("KEY-1").any(|(i, m)| {
        upper[i + m.len()..]
            .bytes()
            .take_while(u8::is_ascii_alphanumeric)
            .count()
            >= 40
    })
}

/// The message to show instead of one that [`holds_key_text`].
pub(super) const KEY_TEXT_HIDDEN: &str =
    "invalid value (not shown: it holds what looks like an age identity; is a key or a $VAR in the wrong place?)";

/// Checks identity text as `age.ParseIdentities` does: blank and `#` lines skipped, every
/// other line an X25519 identity, at least one. Returns how many there are.
pub(crate) fn check_identities(text: &str) -> Result<usize, String> {
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if age::x25519::Identity::from_str(line).is_err() {
            let around = if looks_like_identity(line)
                && !line.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                ": it has other characters around or inside the key (quotes, a BOM, an invisible space?); remove them"
            } else {
                ""
            };
            return Err(format!(
                "line {} is not an age identity (expected AGE-SECRET-KEY-1…, as `age-keygen` writes){around}",
                i + 1
            ));
        }
        n += 1;
    }
    if n == 0 {
        return Err("holds no age identity (expected AGE-SECRET-KEY-1…)".to_string());
    }
    Ok(n)
}

/// Checks recipients text as `age.ParseRecipients` does: every line not blank or `#` an
/// X25519 recipient, at least one. A recipient is public, so a bad one is quoted.
pub(super) fn check_recipients(text: &str) -> Result<usize, String> {
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if age::x25519::Recipient::from_str(line).is_err() {
            let hint = if looks_like_identity(line)
                || line
                    .get(..4)
                    .is_some_and(|p| p.eq_ignore_ascii_case("AGE-"))
            {
                // An identity where a recipient belongs: say so without quoting it.
                "this is an identity (a secret key), not a recipient: put its public key (`age-keygen -y`) here".to_string()
            } else if line.len() <= 128 && line.bytes().all(|b| b.is_ascii_graphic()) {
                format!("{line:?} is not an age recipient (expected age1…)")
            } else {
                // Odd characters or length: may be anything; named by line only.
                format!("line {} is not an age recipient (expected age1…)", i + 1)
            };
            return Err(hint);
        }
        n += 1;
    }
    if n == 0 {
        return Err("holds no age recipient (expected age1…)".to_string());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";

    #[test]
    fn entries_are_text_or_paths() {
        assert_eq!(identity_entry(ID), IdentityEntry::Inline);
        assert_eq!(identity_entry("age-secret-key-typo"), IdentityEntry::Inline);
        assert_eq!(
            identity_entry(&format!("# created: now\n{ID}\n")),
            IdentityEntry::Inline
        );
        assert_eq!(
            identity_entry("/etc/litestream/key.txt"),
            IdentityEntry::Path
        );
        assert_eq!(identity_entry("~/key.txt\n"), IdentityEntry::Path);
        assert_eq!(identity_entry("keys/age key.txt"), IdentityEntry::Path);
        // A key behind quotes, a BOM, a zero-width space, or with one inside its prefix.
        for mangled in [
            format!("'{ID}'"),
            format!("\"{ID}\""),
            format!("\u{feff}{ID}"),
            format!("\u{200b}{ID}"),
            format!("AGE-SECRET-\u{200b}KEY-{}", &ID[15..]),
        ] {
            assert_eq!(identity_entry(&mangled), IdentityEntry::Inline, "{mangled}");
            let e = check_identities(&mangled).unwrap_err();
            assert!(e.contains("other characters around or inside"), "{e}");
        }
        assert_eq!(
            identity_entry(&format!("x{}", ID.to_lowercase())),
            IdentityEntry::Inline
        );
        assert_eq!(
            identity_entry("/etc/age-secret-key-1.txt"),
            IdentityEntry::Inline
        );
        for junk in [
            "'/etc/key.txt'",
            "/etc/key\u{200b}.txt",
            "GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX",
        ] {
            assert!(
                matches!(identity_entry(junk), IdentityEntry::NotAPath(_)),
                "{junk}"
            );
        }
    }

    #[test]
    fn key_text_is_recognized_in_any_message() {
        assert!(holds_key_text(&format!("bad: \"'{ID}'\"")));
        assert!(holds_key_text(&format!("x {}", ID.to_lowercase())));
        assert!(holds_key_text(&format!(
            "\u{200b}AGE-SECRET-\u{200b}KEY-{}",
            &ID[15..]
        )));
        assert!(!holds_key_text(
            "line 1 is not an age identity (expected AGE-SECRET-KEY-1…, as `age-keygen` writes)"
        ));
        assert!(!holds_key_text(
            "must be a list of identities (`- AGE-SECRET-KEY-1…`)"
        ));
    }

    #[test]
    fn identities_never_quote_a_line() {
        let generated = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let text = generated.to_string();
        let secret = text.expose_secret();
        assert_eq!(check_identities(secret), Ok(1));
        assert_eq!(
            check_identities(&format!("# key\n\n{secret}\n{secret}\n")),
            Ok(2)
        );
        // Another last character (bech32's checksum catches any one substitution; the same
        // character would be no change at all).
        let last = if secret.ends_with('X') { 'Y' } else { 'X' };
        let broken = format!("# key\n{}{last}\n", &secret[..secret.len() - 1]);
        let e = check_identities(&broken).unwrap_err();
        assert!(e.starts_with("line 2 is not an age identity"), "{e}");
        assert!(!e.contains(&secret[20..40]), "{e}");
        assert!(check_identities("# nothing\n").is_err());
    }

    #[test]
    fn recipients() {
        let id = age::x25519::Identity::generate();
        let r = id.to_public().to_string();
        assert_eq!(check_recipients(&r), Ok(1));
        assert_eq!(check_recipients(&format!("# a\n{r}\n{r}\n")), Ok(2));
        let e = check_recipients("age1nope").unwrap_err();
        assert!(e.contains("\"age1nope\" is not an age recipient"), "{e}");
        use age::secrecy::ExposeSecret;
        let secret = id.to_string();
        let e = check_recipients(secret.expose_secret()).unwrap_err();
        assert!(
            e.contains("not a recipient") && !e.contains("AGE-SECRET"),
            "{e}"
        );
        assert!(check_recipients("").is_err());
    }
}
