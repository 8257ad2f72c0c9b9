//! The `/v1` contract a POS vendor codes against is the API the node serves: `GET /v1/openapi.json` is an OpenAPI
//! 3.1 document generated from the handlers, it names every `/v1` and `/media` route of the router (read from
//! `node/src/api.rs`) with its methods and nothing else, and every operation it names answers on a running node
//! (never the router's "no such endpoint" or "method not allowed").

mod common;

use std::collections::BTreeSet;

use common::site::{Node, Site, show};
use serde_json::{Value, json};

/// `(METHOD, path)` of every `/v1` and `/media` route in the router's source, paths as OpenAPI writes them.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api.rs"))
        .expect("api.rs");
    let mut out = BTreeSet::new();
    let pieces: Vec<&str> = source.split(".route(").skip(1).collect();
    for piece in pieces {
        let piece = piece.trim_start();
        let Some(rest) = piece.strip_prefix('"') else {
            continue;
        };
        let Some((path, handlers)) = rest.split_once('"') else {
            continue;
        };
        if !(path.starts_with("/v1/") || path.starts_with("/media/")) {
            continue;
        }
        // The method routers of this route: up to the next statement of the builder.
        let handlers = handlers.split("\n        .").next().unwrap_or_default();
        let path = path.replace("{*", "{");
        for (token, method) in [("get(", "GET"), ("post(", "POST"), ("put(", "PUT")] {
            let found = handlers.match_indices(token).any(|(i, _)| {
                i == 0
                    || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && handlers.as_bytes()[i - 1] != b'_'
            });
            if found {
                out.insert((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn the_contract_names_every_route_the_node_serves_and_each_one_answers() {
    let site = Site::create("openapi");
    let edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    let doc = edge.get("/v1/openapi.json");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );

    let source = routes_in_source();
    assert!(source.len() > 30, "the routes were read: {source:?}");
    let documented = operations(&doc);
    let undocumented: Vec<_> = source.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&source).collect();
    assert!(
        undocumented.is_empty(),
        "routes the contract leaves out: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "operations no route serves: {unserved:?}"
    );

    // Every operation has an id (what clients call it by), a summary and an error answer.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            assert!(op["operationId"].is_string(), "{method} {path}");
            assert!(op["summary"].is_string(), "{method} {path}");
            assert!(
                path == "/v1/openapi.json" || op["responses"]["default"].is_object(),
                "{method} {path} documents its errors"
            );
        }
    }
    // Request bodies are the wire types, which refuse unknown fields.
    let book = &doc["paths"]["/v1/shows/{show}/slots/{slot}/bookings"]["post"];
    let schema = book["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .expect("a schema reference");
    let name = schema.rsplit('/').next().expect("name");
    let booking = &doc["components"]["schemas"][name];
    assert_eq!(booking["additionalProperties"], false, "{booking}");
    assert!(booking["properties"]["seats"].is_object(), "{booking}");

    // Every operation answers on the running node (long-lived streams are left to their own tests).
    let client = edge.client();
    for (method, path) in &documented {
        if path == "/v1/events" || path == "/v1/sync" {
            continue;
        }
        let target = path
            .replace("{show}", "fri")
            .replace("{slot}", "s1900")
            .replace("{device}", &site.edge.device_id())
            .replace("{which}", "directory")
            .replace("{id}", "att-1")
            .replace("{name}", "fri")
            .replace("{hash}", &"0".repeat(64));
        let answer = match method.as_str() {
            "GET" => client.get(&target),
            "POST" => client.post(&target, &json!({})),
            "PUT" => client.put(&target, &json!({})),
            other => panic!("a method the node does not use: {other}"),
        }
        .expect("an answer");
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            !message.starts_with("no such endpoint") && !message.starts_with("method not allowed"),
            "{method} {target}: {} {message}",
            answer.status
        );
    }
}
