//! The loader: the one place in `config` that touches the outside world. It reads the
//! configuration file, the process environment (`$VAR` values, `$HOME`,
//! `$LITESTREAM_CONFIG`), the working directory and `/etc/passwd`, then hands plain values
//! to the pure [`Config::parse`].
//!
//! It must not parse or check anything itself: every rule lives in the pure modules, so
//! that tests and the fuzzer see exactly what a real load sees. After the parse it reads the
//! age identity files the configuration names (through `files`, never via a link), and
//! hands their text to the same check inline identities get.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::age::{check_identities, implausible_path, looks_like_identity};
use super::hints::lead;
use super::schema::{AgeIdentity, Config, ConfigError};

/// An identity file is a few lines; anything much larger is not one (age's own cap is 16 MiB,
/// ours keeps a mistaken path from being read whole into memory).
const MAX_IDENTITY_FILE: u64 = 64 * 1024;

/// `$LITESTREAM_CONFIG` when set and not empty, else `/etc/litestream.yml`.
pub(crate) fn default_config_path() -> PathBuf {
    match std::env::var_os("LITESTREAM_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/etc/litestream.yml"),
    }
}

impl Config {
    /// Reads the file at `path` and parses it with the real environment, working directory
    /// and home directory.
    pub(crate) fn load(path: &Path, expand_env: bool) -> anyhow::Result<Config> {
        // Opened once, so that the mode checked is the one of the file read.
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!("config file not found: {}", path.display())
            }
            Err(e) => anyhow::bail!("cannot read config {}: {}", path.display(), e),
        };
        let mut bytes = Vec::new();
        let mode = file
            .metadata()
            .and_then(|m| file.read_to_end(&mut bytes).map(|_| m.permissions().mode()))
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {}", path.display(), e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "cannot read config {}: not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        let cwd = std::env::current_dir()
            .map_err(|e| anyhow::anyhow!("cannot read the working directory: {e}"))?;
        let home = home_dir();
        let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let config = Config::parse(
            &text,
            &path.display().to_string(),
            expand_env,
            &env,
            &cwd,
            home.as_deref(),
        )?;
        let mut config = config;
        warn_readable_inline_identities(path, mode, &text, &config);
        read_identity_files(&mut config)?;
        Ok(config)
    }
}

/// One warning when the config file itself holds identity text and others can read it:
/// naming the file and the places of the identities written in it (never their text). An
/// identity that comes from a `$VAR` is not in the file, so it does not count.
fn warn_readable_inline_identities(path: &Path, mode: u32, text: &str, config: &Config) {
    if mode & 0o044 == 0 {
        return;
    }
    let mut places = Vec::new();
    for (i, db) in config.dbs.iter().enumerate() {
        for (j, r) in db.replicas.iter().enumerate() {
            let Some(age) = &r.age else { continue };
            for (k, id) in age.identities.iter().enumerate() {
                let AgeIdentity::Inline(t) = id else { continue };
                let written = t
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .any(|l| text.contains(l));
                if written {
                    places.push(format!("dbs[{i}].replicas[{j}].age.identities[{k}]"));
                }
            }
        }
    }
    if places.is_empty() {
        if !looks_like_identity(text) {
            return;
        }
        // Key text outside any setting (a commented-out identity) leaks all the same.
        places.push("outside any setting (a comment?)".to_string());
    }
    crate::logging::warn(
        "config file holds age identities (secret keys) and is readable by other users; make it private with chmod 600, or keep the keys in identity files",
        &[
            ("path", &path.display()),
            ("identities", &places.join(", ")),
            ("mode", &format!("{:04o}", mode & 0o7777)),
        ],
    );
}

/// Fills in the text of every `age.identities` file; a file that cannot be read, or holds
/// no identity, is a problem naming its place and path (never its content). A file others
/// can read is used, with a warning naming it.
fn read_identity_files(config: &mut Config) -> Result<(), ConfigError> {
    let lead = lead(&config.source);
    let mut problems = Vec::new();
    for (i, db) in config.dbs.iter_mut().enumerate() {
        for (j, r) in db.replicas.iter_mut().enumerate() {
            let Some(age) = r.age.as_mut() else { continue };
            for (k, id) in age.identities.iter_mut().enumerate() {
                let AgeIdentity::File { path, text } = id else {
                    continue;
                };
                match read_identity_file(path) {
                    Ok(t) => *text = Some(t),
                    Err(e) => problems.push(format!(
                        "{lead}dbs[{i}].replicas[{j}].age.identities[{k}]: identity file {}: {e}",
                        shown_path(path)
                    )),
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

fn read_identity_file(path: &Path) -> Result<String, String> {
    let file = crate::files::open_read_only(path).map_err(|e| format!("cannot open: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("cannot read: {e}"))?
        .permissions()
        .mode();
    if mode & 0o044 != 0 {
        crate::logging::warn(
            "age identity file is readable by other users; make it private with chmod 600",
            &[
                ("path", &shown_path(path)),
                ("mode", &format!("{:04o}", mode & 0o7777)),
            ],
        );
    }
    let mut text = String::new();
    file.take(MAX_IDENTITY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read as text: {e}"))?;
    if text.len() as u64 > MAX_IDENTITY_FILE {
        return Err(format!(
            "larger than {MAX_IDENTITY_FILE} bytes: not an age identity file"
        ));
    }
    check_identities(&text).map_err(|e| format!("identity file {e}"))?;
    Ok(text)
}

/// An identity file's path for a message: shown when it reads as a path (as every path
/// `validate` accepts does), `(path not shown)` when it could hold a key.
pub(super) fn shown_path(path: &Path) -> String {
    let p = path.to_string_lossy();
    if looks_like_identity(&p) || implausible_path(&p).is_some() {
        "(path not shown: it may hold a key)".to_string()
    } else {
        p.into_owned()
    }
}

/// `$HOME`, else the home directory of the effective user in `/etc/passwd` (read directly, as
/// Go's pure `os/user` does, so static binaries need no NSS).
fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() }.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2] == uid && !fields[5].is_empty())
            .then(|| PathBuf::from(fields[5]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yml");
        let e = Config::load(&missing, true).unwrap_err().to_string();
        assert_eq!(e, format!("config file not found: {}", missing.display()));

        let e = Config::load(dir.path(), true).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read config {}: ", dir.path().display())),
            "{e}"
        );

        let path = dir.path().join("litestream.yml");
        std::fs::write(
            &path,
            "dbs:\n  - path: /data/app.db\n    replicas:\n      - url: s3://b/p\n",
        )
        .unwrap();
        let c = Config::load(&path, true).unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("/data/app.db"));
        assert_eq!(c.source, path.display().to_string());

        std::fs::write(&path, "db:\n  - path: /data/app.db\n").unwrap();
        let e = Config::load(&path, true).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: line 1 column 1: unknown key `db` in the top level (did you mean `dbs`?)",
                path.display()
            )
        );

        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        let e = Config::load(&path, true).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn default_config_path_is_etc_or_env() {
        // Only checks the fallback shape: the variable may be set in the test environment.
        let p = default_config_path();
        match std::env::var_os("LITESTREAM_CONFIG") {
            Some(v) if !v.is_empty() => assert_eq!(p, PathBuf::from(v)),
            _ => assert_eq!(p, PathBuf::from("/etc/litestream.yml")),
        }
    }
}
