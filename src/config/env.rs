//! `$VAR` and `${VAR}` expansion of the configuration text, as Go's `os.ExpandEnv` does it.
//!
//! Pure: the environment comes in as a lookup function; this file never reads the process
//! environment (the loader passes the real one).

/// `$VAR` and `${VAR}` replaced by `env(VAR)` (unset → empty), exactly as Go's `os.Expand`:
/// `$` followed by neither a name nor a brace stays as is; `${}` and an unclosed `${` are
/// dropped; a shell special character after `$` (`$1`, `$$`, `$@` …) is looked up as a name.
pub fn expand_env_vars(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
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
                out.extend_from_slice(env(&name).unwrap_or_default().as_bytes());
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::testing::*;
    use crate::config::Config;

    #[test]
    fn env_expansion_both_forms() {
        let text = "dbs:\n  - path: $DIR/app.db\n    replicas:\n      - url: s3://${BUCKET}/db\n        secret-access-key: ${NOPE}x\n";
        let c = parse_with(text, &[("DIR", "/data"), ("BUCKET", "bkt")]).unwrap();
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
        ];
        for (input, want) in cases {
            assert_eq!(expand_env_vars(input, &env), want, "input {input:?}");
        }
    }
}
