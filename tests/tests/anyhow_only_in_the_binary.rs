//! Architecture Invariant: `anyhow` is for messages to a person at a terminal, so only the `popmesh` binary
//! (`node/src/main.rs` and `node/src/cmd/`) uses it. Every library (crdt, device, transport, sim, and the node's
//! library) returns error enums a caller can match on, and the HTTP layer maps them to status codes.
//!
//! This test reads the sources: a library file that names `anyhow` fails it, with the file and line.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_library_file_uses_anyhow() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = [
        root.join("node/src/main.rs"),
        root.join("node/src/cmd.rs"),
        root.join("node/src/cmd"),
    ];
    let mut files = Vec::new();
    for krate in ["crdt", "device", "transport", "sim", "node"] {
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut offenders = Vec::new();
    for file in files {
        if binary.iter().any(|b| file.starts_with(b)) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if code.contains("anyhow::") || code.contains("use anyhow") || code.contains("anyhow!")
            {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, code));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "library code uses anyhow (return an error enum instead):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_checker_sees_anyhow_in_the_binary() {
    // The binary does use it: if this fails the test above is reading the wrong tree.
    let main = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src/main.rs");
    let text = std::fs::read_to_string(main).expect("main.rs");
    assert!(text.contains("anyhow::"));
}
