//! Architecture Invariant: HTTP is the HTTP layer's business. The node's operations fail with their own error
//! enums and take and give domain values; only `node/src/api.rs` and `node/src/api/` know status codes and the
//! JSON shapes of requests and answers (`api/errors.rs` maps every error variant, `api/wire.rs` holds the wire
//! types). The binary's `run` command (`node/src/cmd/`) serves the router, so it may name axum.
//!
//! This test reads the sources: a file outside the HTTP layer that names a status code or axum, or a node module
//! that defines a request body (`deny_unknown_fields`) or a `...Json` type, fails it with the file and line.

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

fn node_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src")
}

/// Every non-comment line of the node crate's sources outside `skip`, with its file and number.
fn lines_outside(skip: &[PathBuf]) -> Vec<(PathBuf, usize, String)> {
    let mut files = Vec::new();
    rust_files(&node_src(), &mut files);
    assert!(files.len() > 40, "found only {} source files", files.len());
    let mut out = Vec::new();
    for file in files {
        if skip.iter().any(|s| file.starts_with(s)) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if !code.starts_with("//") {
                out.push((file.clone(), n + 1, code.to_owned()));
            }
        }
    }
    out
}

#[test]
fn no_status_code_or_axum_outside_the_http_layer() {
    let src = node_src();
    let http = [
        src.join("api.rs"),
        src.join("api"),
        src.join("cmd"),
        src.join("cmd.rs"),
        src.join("main.rs"),
    ];
    let offenders: Vec<String> = lines_outside(&http)
        .into_iter()
        .filter(|(_, _, code)| {
            code.contains("StatusCode") || code.contains("axum") || code.contains("http::")
        })
        .map(|(f, n, code)| format!("{}:{n}: {code}", f.display()))
        .collect();
    assert!(
        offenders.is_empty(),
        "HTTP outside the HTTP layer (return an error enum and map it in api/errors.rs):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_node_defines_no_request_bodies_or_json_shapes() {
    let src = node_src();
    let outside_node: Vec<PathBuf> = std::fs::read_dir(&src)
        .expect("node/src")
        .flatten()
        .map(|e| e.path())
        .filter(|p| *p != src.join("node.rs") && *p != src.join("node"))
        .collect();
    let offenders: Vec<String> = lines_outside(&outside_node)
        .into_iter()
        .filter(|(_, _, code)| {
            code.contains("deny_unknown_fields")
                || code
                    .split_whitespace()
                    .skip_while(|w| *w != "struct" && *w != "enum")
                    .nth(1)
                    .is_some_and(|name| {
                        name.trim_end_matches(['{', '(', '<', ';'])
                            .ends_with("Json")
                    })
        })
        .map(|(f, n, code)| format!("{}:{n}: {code}", f.display()))
        .collect();
    assert!(
        offenders.is_empty(),
        "the node defines HTTP shapes (they belong in api/wire.rs):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_checker_sees_the_http_layer() {
    // The HTTP layer does name status codes and wire types: if this fails, the tests above read the wrong tree.
    let errors = std::fs::read_to_string(node_src().join("api/errors.rs")).expect("api/errors.rs");
    assert!(errors.contains("StatusCode::"));
    let wire = std::fs::read_to_string(node_src().join("api/wire.rs")).expect("api/wire.rs");
    assert!(wire.contains("deny_unknown_fields") && wire.contains("pub struct ReceiptJson"));
}
