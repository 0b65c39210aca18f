//! Build script: records the git commit the binary is built from, for `litestream version`.
//!
//! Runs `git rev-parse` on the source tree (no network); outside a git checkout, or without
//! git, the commit is "unknown". Reruns when HEAD moves so a new commit is never mislabelled.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=LITESTREAM_COMMIT");
    let commit = std::env::var("LITESTREAM_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=LITESTREAM_COMMIT={commit}");
    // HEAD itself (a branch switch), the branch's ref (a commit) and packed-refs (a gc).
    // Cargo counts a watched file that does not exist as changed, every build: watch only
    // those that exist, and a missing loose ref's directory (where a commit creates it).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch(&PathBuf::from(&dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        watch(&common.join("packed-refs"));
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let loose = common.join(r);
            if !watch(&loose) {
                if let Some(parent) = loose.parent() {
                    watch(parent);
                }
            }
        }
    }
}

/// `rerun-if-changed` for `path` if it exists; whether it does.
fn watch(path: &std::path::Path) -> bool {
    let exists = path.exists();
    if exists {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    exists
}
