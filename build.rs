//! Puts the commit the binary was built from into `vpan --version` and the switch's start
//! line (`VPAN_BUILD`), so that an operator can tell which build runs. Outside a git
//! checkout (the Docker build, whose context leaves `.git` out; a source archive) it says
//! so.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The commit as printed: eleven characters when its twelve are all digits (one commit in
/// about 280), since vpan masks every run of 12 or more digits it prints, as a card number
/// may be one: `vpan --version` said `commit 896*****3953` for 896244863953.
fn shown(commit: &str) -> &str {
    if commit.len() >= 12 && commit.bytes().all(|b| b.is_ascii_digit()) {
        &commit[..11]
    } else {
        commit
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let build = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => format!("commit {}", shown(&commit)),
        None => "not built from a git checkout".to_string(),
    };
    println!("cargo:rustc-env=VPAN_BUILD={build}");
    // Run again when HEAD moves (a commit, a checkout, a reset): its reflog changes with
    // each. Only a file that exists is named: Cargo runs a build script that names a
    // missing one on every build.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for file in ["logs/HEAD", "HEAD"] {
            let path = Path::new(&dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
