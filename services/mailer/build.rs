//! Sets `SIGNUP_REVISION` for `*_build_info`: the variable of that name at
//! build time (the Dockerfile's build argument, CI), else the checkout's
//! `git rev-parse --short=12 HEAD`, else `unknown`. Reruns when HEAD moves.
//! (The account's build.rs is the same file.)

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SIGNUP_REVISION");
    let revision = match std::env::var("SIGNUP_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_owned(),
        _ => {
            // Watch HEAD and the branch it names (loose or packed), so a
            // commit rebuilds; a path that does not exist would rerun always.
            let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.push(git(&["rev-parse", "--git-path", &branch]));
            }
            watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
            for path in watch.into_iter().flatten() {
                if Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=SIGNUP_REVISION={revision}");
}
