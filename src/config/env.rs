//! `$VAR` and `${VAR}` expansion of the configuration text, as Go's `os.ExpandEnv` does it,
//! with two departures a backup tool needs: a variable that is not set is an error that names
//! it (Go expands it to nothing, so `path: ${NOPE}/rep` would write to `/rep`), and
//! `${VAR:-default}` gives a default for those who want one. Comments are left as written, so
//! a variable named only in a comment is never looked up.
//!
//! Pure: the environment comes in as a lookup function; this file never reads the process
//! environment (the loader passes the real one).

/// Keys whose value is a secret: a `$` reference on their line is not named in a message,
/// since what follows the `$` may be part of the secret itself.
const SECRET_KEYS: &[&str] = &[
    "secret-access-key",
    "access-key-id",
    "sse-customer-key",
    "identities",
];

/// A `$` reference to a variable that is not set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsetVar {
    /// 1-based line of the configuration text.
    pub line: usize,
    /// The variable's name; `None` when it stands on a secret's line and is not repeated.
    pub name: Option<String>,
}

impl std::fmt::Display for UnsetVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(
                f,
                "line {}: ${{{n}}} is not set; set it, or write ${{{n}:-default}} to give a default",
                self.line
            ),
            None => write!(
                f,
                "line {}: a `$` in this secret names a variable that is not set (its name is \
                 not repeated here); set it, or run with -no-expand-env if the `$` is literal",
                self.line
            ),
        }
    }
}

/// The configuration text with every `$VAR`, `${VAR}` and `${VAR:-default}` outside comments
/// replaced, or every reference to an unset variable, each with its line.
pub fn expand_config_text(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<UnsetVar>> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let (value, comment) = line.split_at(comment_start(line));
        let secret = is_secret_line(value);
        out.push_str(&expand(value, env, &mut |name| {
            unset.push(UnsetVar {
                line: i + 1,
                name: (!secret).then(|| name.to_string()),
            })
        }));
        out.push_str(comment);
    }
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(unset)
    }
}

/// Where the line's YAML comment starts (its length if none): a `#` at the start or after
/// whitespace, outside a quoted scalar. A quote opens a scalar only where a value can begin,
/// so the apostrophe in `path: /bob's/app.db  # $OLD` does not hide the comment.
fn comment_start(line: &str) -> usize {
    let b = line.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) if c == q => {
                // '' inside a single-quoted scalar is an escaped quote.
                if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                    i += 1;
                } else {
                    quote = None;
                }
            }
            Some(b'"') if c == b'\\' => i += 1,
            Some(_) => {}
            None if c == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) => return i,
            None if (c == b'\'' || c == b'"') && value_can_start(&b[..i]) => quote = Some(c),
            None => {}
        }
        i += 1;
    }
    b.len()
}

/// Whether a scalar can begin after `before`: at the line's start, or after `: `, `- `,
/// `[`, `{` or `,` (spaces skipped).
fn value_can_start(before: &[u8]) -> bool {
    let t = before.trim_ascii_end();
    match t.last() {
        None => true,
        Some(b'[' | b'{' | b',') => true,
        Some(b':' | b'-') => t.len() < before.len() || t.len() == 1,
        Some(_) => false,
    }
}

/// Whether the line sets one of [`SECRET_KEYS`] (`key: value` or `- key: value`).
fn is_secret_line(value: &str) -> bool {
    let t = value.trim_start().trim_start_matches("- ").trim_start();
    let key = t
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches(['"', '\'']);
    SECRET_KEYS.contains(&key) || key.contains("secret")
}

/// `$VAR` and `${VAR}` replaced by `env(VAR)` (unset → empty), exactly as Go's `os.Expand`:
/// `$` followed by neither a name nor a brace stays as is; `${}` and an unclosed `${` are
/// dropped; a shell special character after `$` (`$1`, `$$`, `$@` …) is looked up as a name.
/// Beyond Go: `${VAR:-default}` is `default` when VAR is unset or empty.
pub fn expand_env_vars(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    expand(s, env, &mut |_| {})
}

/// [`expand_env_vars`], calling `unset` with the name of each variable that is not set.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>, unset: &mut dyn FnMut(&str)) -> String {
    fn is_special(c: u8) -> bool {
        matches!(
            c,
            b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
        )
    }
    fn is_alnum(c: u8) -> bool {
        c == b'_' || c.is_ascii_alphanumeric()
    }
    // (name, bytes consumed after the `$`)
    fn shell_name(s: &[u8]) -> (&[u8], usize) {
        if s[0] == b'{' {
            if s.len() > 2 && is_special(s[1]) && s[2] == b'}' {
                return (&s[1..2], 3);
            }
            for i in 1..s.len() {
                if s[i] == b'}' {
                    if i == 1 {
                        return (&[], 2);
                    }
                    return (&s[1..i], i + 1);
                }
            }
            return (&[], 1);
        }
        if is_special(s[0]) {
            return (&s[0..1], 1);
        }
        let n = s.iter().take_while(|c| is_alnum(**c)).count();
        (&s[..n], n)
    }

    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut j = 0;
    while j < b.len() {
        if b[j] == b'$' && j + 1 < b.len() {
            out.extend_from_slice(&b[i..j]);
            let (name, w) = shell_name(&b[j + 1..]);
            if name.is_empty() && w > 0 {
                // Bad syntax (`${}` or an unclosed `${`): eaten.
            } else if name.is_empty() {
                out.push(b'$');
            } else {
                let name = String::from_utf8_lossy(name);
                out.extend_from_slice(lookup(&name, env, unset).as_bytes());
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    out.extend_from_slice(&b[i.min(b.len())..]);
    // Only ASCII bytes were used as cut points, so the result is valid UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// One reference's value: `NAME`, or `NAME:-default` (the default when unset or empty).
fn lookup(name: &str, env: &dyn Fn(&str) -> Option<String>, unset: &mut dyn FnMut(&str)) -> String {
    if let Some((name, default)) = name.split_once(":-") {
        return env(name)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string());
    }
    env(name).unwrap_or_else(|| {
        unset(name);
        String::new()
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::testing::*;
    use crate::config::Config;

    #[test]
    fn env_expansion_both_forms() {
        let text = "dbs:\n  - path: $DIR/app.db\n    replicas:\n      - url: s3://${BUCKET}/db\n        secret-access-key: ${EMPTY}x\n";
        let c = parse_with(text, &[("DIR", "/data"), ("BUCKET", "bkt"), ("EMPTY", "")]).unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("/data/app.db"));
        let s = s3(&c.dbs[0].replicas[0]);
        assert_eq!(s.bucket, "bkt");
        assert_eq!(s.secret_access_key.as_deref(), Some("x"));
    }

    #[test]
    fn no_env_expansion_when_disabled() {
        let env = env_of(&[("DIR", "/data")]);
        let c = Config::parse(
            "dbs:\n  - path: /x/$DIR/app.db\n",
            SRC,
            false,
            &env,
            Path::new("/"),
            None,
        )
        .unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("/x/$DIR/app.db"));
    }

    #[test]
    fn expand_env_follows_go() {
        let env = env_of(&[
            ("A", "a"),
            ("AB", "ab"),
            ("1", "one"),
            ("$", "pid"),
            ("A_1", "u"),
        ]);
        let cases = [
            ("plain", "plain"),
            ("$A", "a"),
            ("$AB", "ab"),
            ("${A}B", "aB"),
            ("$A_1", "u"),
            ("x$A.y", "xa.y"),
            ("$UNSET-", "-"),
            ("${UNSET}", ""),
            ("cost: 5$", "cost: 5$"),
            ("$ x", "$ x"),
            ("$$", "pid"),
            ("$1", "one"),
            ("${1}", "one"),
            ("${}", ""),
            ("a${b", "ab"),
            ("é$A→", "éa→"),
            ("$-", ""),
            ("${UNSET:-dflt}/x", "dflt/x"),
            ("${A:-dflt}", "a"),
            ("${UNSET:-}", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand_env_vars(input, &env), want, "input {input:?}");
        }
    }

    #[test]
    fn an_unset_variable_is_an_error_naming_it_and_its_line() {
        // The probe's case: `${NOPE}/rep` expanded to `/rep`, a directory at the root.
        let text = "dbs:\n  - path: /a.db\n    replicas:\n      - path: ${NOPE}/rep\n";
        let e = parse(text).unwrap_err();
        assert_eq!(
            e.problems,
            ["litestream.yml: line 4: ${NOPE} is not set; set it, or write ${NOPE:-default} to give a default"]
        );
        // Each unset variable is reported, on its own line.
        let e = expand_config_text("a: $X\nb: ok\nc: ${Y}$X\n", &env_of(&[])).unwrap_err();
        let lines: Vec<(usize, Option<&str>)> =
            e.iter().map(|u| (u.line, u.name.as_deref())).collect();
        assert_eq!(lines, [(1, Some("X")), (3, Some("Y")), (3, Some("X"))]);
        // A default is not an error, nor is a variable set to nothing.
        let c = parse_with(
            "dbs:\n  - path: ${DATA:-/srv}/a.db\n    meta-path: /m$EMPTY\n",
            &[("EMPTY", "")],
        )
        .unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("/srv/a.db"));
        assert_eq!(c.dbs[0].meta_path, Some(PathBuf::from("/m")));
    }

    #[test]
    fn a_secret_is_never_echoed_in_the_unset_variable_message() {
        for text in [
            "secret-access-key: ab$cdef\n",
            "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n        secret-access-key: \"x$HUSH\"\n",
            "  - sse-customer-key: k$HUSH\n",
        ] {
            let e = expand_config_text(text, &env_of(&[])).unwrap_err();
            assert_eq!(e.len(), 1, "{text:?}");
            assert_eq!(e[0].name, None, "{text:?}");
            let msg = e[0].to_string();
            assert!(!msg.contains("cdef") && !msg.contains("HUSH"), "{msg}");
            assert!(msg.contains("-no-expand-env"), "{msg}");
        }
    }

    #[test]
    fn comments_are_not_expanded() {
        let env = env_of(&[("A", "a")]);
        let cases = [
            ("# path: ${OLD}/x\n", "# path: ${OLD}/x\n"),
            ("path: $A/x  # was $OLD\n", "path: a/x  # was $OLD\n"),
            ("path: \"$A#b\"  # $OLD\n", "path: \"a#b\"  # $OLD\n"),
            ("path: '$A # b'\n", "path: 'a # b'\n"),
            ("path: 'it''s $A' # $OLD\n", "path: 'it''s a' # $OLD\n"),
            ("path: /bob's/$A  # $OLD\n", "path: /bob's/a  # $OLD\n"),
            ("url: s3://b/p#$A\n", "url: s3://b/p#a\n"),
            ("- [\"$A\", '#'] # $OLD\n", "- [\"a\", '#'] # $OLD\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand_config_text(input, &env).as_deref(),
                Ok(want),
                "input {input:?}"
            );
        }
    }
}
