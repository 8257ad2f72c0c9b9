//! Media across the site with real processes: the edge box publishes a manifest, every device preseeds it from its
//! peers, and kiosk browsers load media from their own node, even when no peer is left.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::site::{Device, Node, Site, popmesh};
use serde_json::Value;

const SYNC: Duration = Duration::from_secs(60);

/// Bytes that do not repeat (a video would not compress either).
fn media_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write media file");
    path
}

/// Compares bytes without printing megabytes when they differ.
fn same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: got {} bytes (hash {}), want {} bytes (hash {})",
        got.len(),
        hash_of(got),
        want.len(),
        hash_of(want)
    );
}

fn hash_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The edge box publishes `files` in manifest `show-1`.
fn publish(edge: &Node, files: &[&Path], extra: &[&str]) {
    let api = edge.device.api.to_string();
    let mut args = vec![
        "manifest",
        "publish",
        "--data",
        edge.device.data_str(),
        "--api",
        &api,
        "--name",
        "show-1",
    ];
    args.extend_from_slice(extra);
    let files: Vec<&str> = files.iter().map(|f| f.to_str().expect("utf-8")).collect();
    args.extend(files);
    let (ok, out, err) = popmesh(&args);
    assert!(ok, "manifest publish failed: {err}\n{out}");
}

fn preseed(node: &Node) -> Value {
    node.get("/v1/manifests")["preseed"].clone()
}

fn wait_preseeded(node: &Node, entries: u64) {
    node.wait_for("every manifest entry preseeded", SYNC, |n| {
        let p = preseed(n);
        p["entries"] == entries && p["complete"] == entries && p["completeness"] == 1.0
    });
}

fn blob_get(node: &Node, hash: &str, out: &Path) -> (bool, String) {
    let api = node.device.api.to_string();
    let (ok, stdout, stderr) = popmesh(&[
        "blob",
        "get",
        "--data",
        node.device.data_str(),
        "--api",
        &api,
        hash,
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    (ok, format!("{stdout}{stderr}"))
}

fn start_three(site: &Site, kiosk: &Device, pos: &Device) -> (Node, Node, Node) {
    let edge = Node::start(&site.edge, &[]);
    let kiosk = Node::start(kiosk, &[&site.edge]);
    let pos = Node::start(pos, &[&site.edge, &kiosk.device]);
    for n in [&kiosk, &pos] {
        n.wait_for("enrolled in the site", SYNC, |n| {
            n.status()["enrolled"] == true
        });
    }
    edge.wait_for("both peers admitted", SYNC, |n| n.admitted_peers() == 2);
    (edge, kiosk, pos)
}

#[test]
fn a_trailer_added_on_the_edge_is_preseeded_on_the_kiosk_and_the_pos_and_served_with_ranges() {
    let site = Site::create("media-three");
    let kiosk = site.join("kiosk", "kiosk-1");
    let pos = site.join("pos", "pos-1");
    let (mut edge, kiosk, pos) = start_three(&site, &kiosk, &pos);

    // The producer drops tonight's trailer and poster on the edge box and publishes them.
    let trailer = media_bytes(3 << 20, 1);
    let poster = media_bytes(40 << 10, 2);
    let media = site.root().join("media");
    std::fs::create_dir_all(&media).expect("media dir");
    let trailer_file = write_file(&media, "trailer.mp4", &trailer);
    let poster_file = write_file(&media, "poster.jpg", &poster);
    publish(
        &edge,
        &[&trailer_file, &poster_file],
        &["--fallback", "poster.jpg"],
    );

    // The kiosk and the POS terminal each fetch both blobs by themselves.
    for n in [&kiosk, &pos] {
        wait_preseeded(n, 2);
        assert!(
            n.metric("popmesh_media_fetched_bytes_total") >= (trailer.len() + poster.len()) as f64,
            "{} fetched the media from its peers",
            n.device.name
        );
    }
    assert!(edge.metric("popmesh_media_wire_sent_bytes_total") >= trailer.len() as f64);

    // With the edge box gone, each still has every byte, and each copy hashes right.
    edge.kill();
    for n in [&kiosk, &pos] {
        let out = site.root().join(format!("{}-trailer.mp4", n.device.name));
        let (ok, said) = blob_get(n, &hash_of(&trailer), &out);
        assert!(ok, "{said}");
        assert_eq!(std::fs::read(&out).expect("written"), trailer);
    }

    // A kiosk browser plays the trailer by name: type, ETag, and the ranges a video player asks for.
    let whole = kiosk.http("/media/by-name/trailer.mp4", &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-type"), Some("video/mp4"));
    let etag = format!("\"{}\"", hash_of(&trailer));
    assert_eq!(whole.header("etag"), Some(etag.as_str()));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(hash_of(&whole.body), hash_of(&trailer));

    let part = kiosk.http(
        &format!("/media/{}", hash_of(&trailer)),
        &[("Range", "bytes=1000000-1999999")],
    );
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1000000-1999999/{}", trailer.len()).as_str())
    );
    same_bytes(&part.body, &trailer[1_000_000..2_000_000], "part");

    let tail = kiosk.http("/media/by-name/trailer.mp4", &[("Range", "bytes=-100")]);
    assert_eq!(tail.status, 206);
    same_bytes(&tail.body, &trailer[trailer.len() - 100..], "tail");

    let open_ended = kiosk.http("/media/by-name/poster.jpg", &[("Range", "bytes=40000-")]);
    assert_eq!(open_ended.status, 206);
    assert_eq!(open_ended.header("content-type"), Some("image/jpeg"));
    same_bytes(&open_ended.body, &poster[40_000..], "open_ended");

    let past_the_end = kiosk.http("/media/by-name/poster.jpg", &[("Range", "bytes=999999-")]);
    assert_eq!(past_the_end.status, 416);
    assert!(String::from_utf8_lossy(&past_the_end.body).contains("not one satisfiable byte range"));

    let cached = kiosk.http("/media/by-name/trailer.mp4", &[("If-None-Match", &etag)]);
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());

    // Mistakes get a JSON answer that says what was wrong.
    let bad = kiosk.http("/media/not-a-hash", &[]);
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("not a BLAKE3 hash"));
    let unknown = kiosk.http("/media/by-name/encore.mp4", &[]);
    assert_eq!(unknown.status, 404);
}

#[test]
fn a_damaged_copy_on_disk_is_detected_and_fetched_again() {
    let site = Site::create("media-damage");
    let kiosk = site.join("kiosk", "kiosk-1");
    let pos = site.join("pos", "pos-1");
    // Garbage collection every second, so the damaged copy is gone quickly.
    let toml = pos.data.join("popmesh.toml");
    let text = std::fs::read_to_string(&toml).expect("config");
    std::fs::write(
        &toml,
        text.replace("gc_every_secs = 30", "gc_every_secs = 1"),
    )
    .expect("config");
    let (edge, kiosk, mut pos_node) = start_three(&site, &kiosk, &pos);

    let trailer = media_bytes(2 << 20, 7);
    let media = site.root().join("media");
    std::fs::create_dir_all(&media).expect("media dir");
    publish(&edge, &[&write_file(&media, "trailer.mp4", &trailer)], &[]);
    wait_preseeded(&pos_node, 1);
    wait_preseeded(&kiosk, 1);

    // The POS terminal is switched off and a bit of its disk rots.
    pos_node.kill();
    let data = pos
        .data
        .join("blobs/data")
        .join(format!("{}.data", hash_of(&trailer)));
    let mut bytes = std::fs::read(&data).expect("the blob's data file");
    bytes[1_500_000] ^= 0x40;
    std::fs::write(&data, &bytes).expect("damage the copy");

    // On the way up it checks its blobs, finds the damage, drops the copy and fetches it again.
    let pos_node = Node::start(&pos, &[&site.edge, &kiosk.device]);
    pos_node.wait_for("the damaged copy detected", SYNC, |n| {
        n.metric("popmesh_media_damaged_blobs_total") >= 1.0
    });
    // The preseed report may still be from before the check: the blob's own state says when the copy is whole.
    let state = format!("/v1/blobs/{}", hash_of(&trailer));
    pos_node.wait_for("the copy fetched again", SYNC, |n| {
        let s = n.get(&state);
        s["state"] == "complete" && s["damaged"] == false
    });
    wait_preseeded(&pos_node, 1);
    let served = pos_node.http(&format!("/media/{}", hash_of(&trailer)), &[]);
    assert_eq!(served.status, 200);
    assert_eq!(
        hash_of(&served.body),
        hash_of(&trailer),
        "the repaired copy is served"
    );
    let on_disk = std::fs::read(&data).expect("the refetched data file");
    assert_eq!(hash_of(&on_disk), hash_of(&trailer));
}

#[test]
fn a_kiosk_that_preseeds_only_slices_plays_them_offline_and_gets_the_fallback_for_the_rest() {
    let site = Site::create("media-fallback");
    let kiosk = site.join("kiosk", "kiosk-1");
    let pos = site.join("pos", "pos-1");
    let (mut edge, kiosk, mut pos) = start_three(&site, &kiosk, &pos);

    // Kiosks are asked to preseed only the first 256 KiB of each video: enough to start playing.
    let trailer = media_bytes(4 << 20, 3);
    let poster = media_bytes(30 << 10, 4);
    let media = site.root().join("media");
    std::fs::create_dir_all(&media).expect("media dir");
    publish(
        &edge,
        &[
            &write_file(&media, "trailer.mp4", &trailer),
            &write_file(&media, "poster.jpg", &poster),
        ],
        &["--fallback", "poster.jpg", "--slice", "kiosk=0-256k"],
    );
    wait_preseeded(&kiosk, 2);
    wait_preseeded(&pos, 2);
    let kiosk_fetched = kiosk.metric("popmesh_media_fetched_bytes_total");
    assert!(
        kiosk_fetched < (1 << 20) as f64,
        "the kiosk fetched only its slices ({kiosk_fetched} bytes)"
    );

    // While peers are up, the rest is fetched on demand and streamed.
    let middle = kiosk.http(
        "/media/by-name/trailer.mp4",
        &[("Range", "bytes=2000000-2099999")],
    );
    assert_eq!(middle.status, 206);
    same_bytes(&middle.body, &trailer[2_000_000..2_100_000], "middle");

    // Every peer holding the trailer leaves.
    edge.kill();
    pos.kill();
    kiosk.wait_for("no peers left", SYNC, |n| n.admitted_peers() == 0);

    // The preseeded opening still plays.
    let opening = kiosk.http("/media/by-name/trailer.mp4", &[("Range", "bytes=0-99999")]);
    assert_eq!(opening.status, 206);
    same_bytes(&opening.body, &trailer[..100_000], "opening");

    // The whole video cannot be had from anyone: the kiosk shows the poster instead.
    let whole = kiosk.http("/media/by-name/trailer.mp4", &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("x-popmesh-fallback"), Some("poster.jpg"));
    assert_eq!(whole.header("content-type"), Some("image/jpeg"));
    same_bytes(&whole.body, &poster, "whole");
    assert!(kiosk.metric("popmesh_media_fallbacks_total") >= 1.0);
}

#[test]
fn a_device_that_is_not_enrolled_gets_no_blob() {
    let site = Site::create("media-stranger");
    let edge = Node::start(&site.edge, &[]);
    let poster = media_bytes(64 << 10, 5);
    let media = site.root().join("media");
    std::fs::create_dir_all(&media).expect("media dir");
    publish(&edge, &[&write_file(&media, "poster.jpg", &poster)], &[]);

    // A stranger knows the edge box's device id and blob port (say it sniffed them) and asks for the poster.
    let port = edge.status()["media_port"].as_u64().expect("media port") as u16;
    let edge_id = site.edge.device_id();
    let hash = hash_of(&poster);
    let (outcome, held) = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(common::stranger::try_fetch(&edge_id, port, &hash, None));
    assert!(outcome.is_err(), "the stranger got the blob");
    assert!(!held, "the stranger holds none of the blob's bytes");
    edge.wait_for("the refusal counted", SYNC, |n| {
        n.metric("popmesh_media_refused_connections_total") >= 1.0
    });
}

#[test]
fn a_revoked_kiosk_is_refused_blobs_even_with_its_own_key() {
    let site = Site::create("media-revoked");
    let kiosk = site.join("kiosk", "kiosk-1");
    let edge = Node::start(&site.edge, &[]);
    let kiosk_node = Node::start(&kiosk, &[&site.edge]);
    kiosk_node.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);
    let poster = media_bytes(64 << 10, 6);
    let media = site.root().join("media");
    std::fs::create_dir_all(&media).expect("media dir");
    publish(&edge, &[&write_file(&media, "poster.jpg", &poster)], &[]);
    wait_preseeded(&kiosk_node, 1);

    // The kiosk is reported stolen and revoked from the edge box.
    let kiosk_id = kiosk.device_id();
    let (ok, out, err) = popmesh(&[
        "site",
        "revoke",
        "--data",
        site.edge.data_str(),
        &kiosk_id,
        "--api",
        &site.edge.api.to_string(),
    ]);
    assert!(ok, "site revoke failed: {out}{err}");
    edge.wait_for("the revoked kiosk dropped", SYNC, |n| {
        n.admitted_peers() == 0
    });

    // New media is published; whoever holds the stolen kiosk's key asks the edge box's blob endpoint directly.
    let trailer = media_bytes(256 << 10, 9);
    publish(&edge, &[&write_file(&media, "trailer.mp4", &trailer)], &[]);
    let seed_hex = std::fs::read_to_string(kiosk.data.join("keys/device.key")).expect("device.key");
    let seed = popmesh_crdt::identity::hex_decode::<32>(seed_hex.trim()).expect("hex");
    let port = edge.status()["media_port"].as_u64().expect("media port") as u16;
    let (outcome, held) =
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(common::stranger::try_fetch(
                &site.edge.device_id(),
                port,
                &hash_of(&trailer),
                Some(seed),
            ));
    assert!(outcome.is_err(), "the revoked kiosk got the new trailer");
    assert!(!held, "the revoked kiosk holds none of the new trailer");
    assert!(edge.metric("popmesh_media_refused_connections_total") >= 1.0);
    // Nor does its own node get it through the mesh.
    let asked = kiosk_node.http(&format!("/media/{}", hash_of(&trailer)), &[]);
    assert_eq!(
        asked.status,
        404,
        "{}",
        String::from_utf8_lossy(&asked.body)
    );
}

#[test]
fn a_replaced_trailer_is_dropped_everywhere_once_its_ttl_has_passed() {
    let site = Site::create("media-ttl");
    let pos = site.join("pos", "pos-1");
    // Garbage collection every second, so dropped blobs leave the disk quickly.
    for d in [&site.edge, &pos] {
        let toml = d.data.join("popmesh.toml");
        let text = std::fs::read_to_string(&toml).expect("config");
        std::fs::write(
            &toml,
            text.replace("gc_every_secs = 30", "gc_every_secs = 1"),
        )
        .expect("config");
    }
    let edge = Node::start(&site.edge, &[]);
    let pos = Node::start(&pos, &[&site.edge]);
    pos.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);

    // Tonight's first cut of the trailer, kept 3 s after no manifest references it.
    let add = |bytes: &[u8]| -> String {
        let path = write_file(site.root(), "cut.mp4", bytes);
        let answer = edge
            .client()
            .upload("/v1/blobs", &path, &mut |_| {})
            .expect("upload");
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.json()["hash"].as_str().expect("hash").to_owned()
    };
    let publish_cut = |hash: &str, size: usize| {
        let entry = serde_json::json!({ "entries": [{
            "name": "trailer.mp4", "hash": hash, "size": size, "mime": "video/mp4", "ttl_ms": 3_000,
        }] });
        let answer = edge.post("/v1/manifests/fri", entry);
        assert_eq!(answer.status, 201, "{}", answer.body);
    };
    let first = media_bytes(200 << 10, 11);
    let first_hash = add(&first);
    publish_cut(&first_hash, first.len());
    wait_preseeded(&pos, 1);
    let state = |n: &Node, hash: &str| n.get(&format!("/v1/blobs/{hash}"))["state"].clone();
    assert_eq!(state(&pos, &first_hash), "complete");

    // The producer replaces it with the final cut under the same name.
    let last = media_bytes(210 << 10, 12);
    let last_hash = add(&last);
    publish_cut(&last_hash, last.len());
    pos.wait_for("the final cut preseeded", SYNC, |n| {
        state(n, &last_hash) == "complete"
    });
    // The first cut stays for its time to live (a kiosk may still be playing it)...
    assert_eq!(state(&pos, &first_hash), "complete");
    // ...then every device drops it.
    for n in [&pos, &edge] {
        n.wait_for("the first cut dropped after its TTL", SYNC, |n| {
            state(n, &first_hash) == "missing"
        });
        assert_eq!(state(n, &last_hash), "complete");
    }
}
