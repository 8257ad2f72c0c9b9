//! Runs the `popmesh` binary the way an operator would, for the CLI tests.

use std::process::Command;

/// Runs `popmesh ARGS...`; returns whether it succeeded, its standard output and its standard error.
#[allow(dead_code)]
pub fn popmesh(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_popmesh"))
        .args(args)
        .output()
        .expect("popmesh runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub mod site;
