//! When a site link opens, the peer's first bytes are length-delimited frames of JSON: its hello, its verdict on
//! ours, its confirmation; then fragments for samod. A hostile peer's hello never panics the node, a declared
//! frame length of 4 GiB allocates nothing near 4 GiB, a hello that is admitted reads back as the same hello
//! with a certificate that verifies, and whatever a peer sends after the hello, the sync engine ends that link and
//! goes on serving everyone else.
//!
//! `POPMESH_FUZZ_SECS=N` runs each story for N seconds instead (see `crdt/tests/support/fuzz.rs`,
//! `bench/fuzz-long.sh`).

#[path = "../../crdt/tests/support/fuzz.rs"]
mod fuzz;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use fuzz::{bounded, fuzz, hostile_bytes, hostile_text};
use libp2p::PeerId;
use popmesh_crdt::directory::admit_peer;
use popmesh_crdt::enrollment::{EnrollmentCert, SiteAuthority};
use popmesh_crdt::{DeviceId, Role, SecretKey, UnixMillis};
use popmesh_transport::identity::peer_id;
use popmesh_transport::link::{
    HELLO_BYTES_MAX, LinkCounters, LinkError, LinkPolicy, Verdict, accept, into_samod, open,
};
use popmesh_transport::outbox::{Outbox, document_id};
use popmesh_transport::{Gate, Hello};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::compat::TokioAsyncReadCompatExt as _;

/// Cases per story in CI.
const CASES: u32 = 1024;
/// Room in each direction of the in-memory link: more than any input here, so writes never wait on a reader.
const PIPE_BYTES: usize = 1 << 20;

/// The site every story runs at: its authority, and the certificates of the devices that speak in them.
fn authority() -> &'static SiteAuthority {
    static AUTHORITY: OnceLock<SiteAuthority> = OnceLock::new();
    AUTHORITY.get_or_init(|| SiteAuthority::new(SecretKey::from_seed([1; 32])))
}

fn device(seed: u8) -> DeviceId {
    SecretKey::from_seed([seed; 32]).public()
}

fn cert(seed: u8, name: &str) -> Vec<u8> {
    authority()
        .enroll(
            device(seed),
            Role::Kiosk,
            name,
            UnixMillis(0),
            UnixMillis(u64::MAX),
        )
        .to_bytes()
}

fn peer(seed: u8) -> PeerId {
    peer_id(&device(seed)).expect("an ed25519 key")
}

/// The node's gate, as far as a hello goes: the version, the site, a certificate for the authenticated device that
/// chains to the authority, and the directory's document id read the way the node reads it.
struct SiteGate {
    ours: Hello,
    admitted: Mutex<Option<Hello>>,
}

impl SiteGate {
    fn new() -> Self {
        Self {
            ours: Hello::new(authority().site().to_hex(), &cert(2, "edge-1"), None)
                .with_blobs(Some(4702)),
            admitted: Mutex::new(None),
        }
    }
}

impl Gate for SiteGate {
    fn hello(&self) -> Hello {
        self.ours.clone()
    }

    fn admit(&self, device: DeviceId, hello: &Hello) -> Result<(), String> {
        if hello.v != 1 {
            return Err(format!("unsupported hello version {}", hello.v));
        }
        if hello.site != authority().site().to_hex() {
            return Err(format!("peer belongs to site {}", hello.site));
        }
        let cert = EnrollmentCert::from_bytes(&hello.cert_bytes()?).map_err(|e| e.to_string())?;
        admit_peer(
            &cert,
            &device,
            &authority().public(),
            UnixMillis(1_000),
            None,
        )
        .map_err(|e| e.to_string())?;
        if let Some(id) = &hello.directory {
            let _ = id.parse::<samod::DocumentId>();
        }
        *self.admitted.lock().expect("lock") = Some(hello.clone());
        Ok(())
    }
}

fn frame(json: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(json.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(json);
    out
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("serializes")
}

/// A hello as an enrolled peer (seed 3..6) says it.
fn hello() -> impl Strategy<Value = (u8, Hello)> {
    (
        3..6u8,
        "\\PC{0,16}",
        prop::option::of(any::<[u8; 16]>()),
        prop::option::of(any::<u16>()),
    )
        .prop_map(|(seed, name, directory, blobs)| {
            let directory = directory.map(|b| {
                samod::DocumentId::try_from(b.to_vec())
                    .expect("16 bytes are a document id")
                    .to_string()
            });
            let hello = Hello::new(authority().site().to_hex(), &cert(seed, &name), directory)
                .with_blobs(blobs);
            (seed, hello)
        })
}

/// Words of JSON and of a hello.
const JSON_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "null",
    "true",
    "false",
    "0",
    "1",
    "-1",
    "2",
    "1e999",
    "-0",
    "0.5",
    "65535",
    "65536",
    "4294967296",
    "18446744073709551616",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "\"\\uDFFF\\uD800\"",
    "\"v\":1,",
    "\"v\":",
    "\"site\":",
    "\"cert\":",
    "\"directory\":",
    "\"blobs\":",
    "\"blobs\":70000,",
    "\"verdict\":",
    "\"admitted\"",
    "\"confirmed\"",
    "\"refused\"",
    "\"hello\":",
    "\"reason\":",
    "=",
    "==",
    " ",
    "\n",
    "\u{feff}",
];

/// What an opener sends (its hello, then its confirmation), damaged: in the JSON (framed again, so it reaches the
/// parser), in the frames (length prefixes included), nested too deep, or bigger than a hello may be.
fn opener_bytes() -> impl Strategy<Value = ((u8, Hello), Vec<u8>, Vec<u8>)> {
    let valid = || {
        hello().prop_map(|(seed, hello)| {
            let mut bytes = frame(&json(&hello));
            bytes.extend(frame(&json(&Verdict::Confirmed)));
            ((seed, hello), bytes)
        })
    };
    let json_damaged = hostile_text(
        hello().prop_map(|(seed, hello)| {
            let text = String::from_utf8(json(&hello)).expect("JSON is UTF-8");
            ((seed, hello), text)
        }),
        JSON_WORDS,
    )
    .prop_map(|(ctx, original, damaged)| {
        let with_confirmation = |text: &str| {
            let mut bytes = frame(text.as_bytes());
            bytes.extend(frame(&json(&Verdict::Confirmed)));
            bytes
        };
        (
            ctx,
            with_confirmation(&original),
            with_confirmation(&damaged),
        )
    });
    let oversized = (
        valid(),
        HELLO_BYTES_MAX - 200..HELLO_BYTES_MAX + 200,
        0..8_000usize,
        any::<bool>(),
    )
        .prop_map(|((ctx, original), size, depth, deep)| {
            let text = if deep {
                format!("{{\"v\":{}{}}}", "[".repeat(depth), "]".repeat(depth))
            } else {
                // A hello padded to about `size` bytes with a field nobody reads: admitted under the bound.
                let hello = String::from_utf8(json(&ctx.1)).expect("UTF-8");
                let pad = size.saturating_sub(hello.len() + 12);
                format!("{{\"pad\":\"{}\",{}", "p".repeat(pad), &hello[1..])
            };
            let mut input = frame(text.as_bytes());
            input.extend(frame(&json(&Verdict::Confirmed)));
            (ctx, original, input)
        });
    prop_oneof![
        3 => hostile_bytes(valid()),
        3 => json_damaged,
        1 => oversized,
    ]
}

/// Runs `f` on a fresh single-threaded runtime, so every allocation it makes is on this thread.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Sends `input` from the peer's side (then ends it), and runs `side` on ours.
async fn against<T, F: std::future::Future<Output = T>>(
    input: &[u8],
    side: impl FnOnce(tokio_util::compat::Compat<tokio::io::DuplexStream>) -> F,
) -> T {
    let (ours, mut theirs) = tokio::io::duplex(PIPE_BYTES);
    theirs.write_all(input).await.expect("room in the pipe");
    theirs.shutdown().await.expect("shutdown");
    let out = side(ours.compat()).await;
    drop(theirs);
    out
}

fn check_admitted(
    hello: &Hello,
    gate: &SiteGate,
    original_hello: &Hello,
    same: bool,
) -> TestCaseResult {
    let admitted = gate.admitted.lock().expect("lock").clone();
    prop_assert_eq!(admitted.as_ref(), Some(hello), "admitted another hello");
    let again: Hello = serde_json::from_slice(&json(hello)).expect("our own JSON");
    prop_assert_eq!(&again, hello, "the admitted hello reads back differently");
    let cert = EnrollmentCert::from_bytes(&hello.cert_bytes().expect("admitted, so base64"))
        .expect("admitted");
    prop_assert!(
        cert.verify_chain(&authority().public(), authority().site())
            .is_ok()
    );
    if same {
        prop_assert_eq!(hello, original_hello);
    }
    Ok(())
}

#[test]
fn a_hostile_peers_hello_never_panics_the_node_and_only_a_verified_one_is_admitted() {
    fuzz(
        "hello",
        CASES,
        opener_bytes(),
        |((seed, original_hello), original, input)| {
            let gate = SiteGate::new();
            let out = bounded(input.len(), 8, || {
                block_on(against(&input, |io| async {
                    accept(io, peer(seed), &gate)
                        .await
                        .map(|(hello, _framed)| hello)
                }))
            })?;
            match out {
                Ok(hello) => check_admitted(&hello, &gate, &original_hello, input == original)?,
                Err(e) => {
                    prop_assert!(input != original, "the valid hello is refused: {e}");
                    if u32::from_be_bytes(input[..4.min(input.len())].try_into().unwrap_or([0; 4]))
                        as usize
                        > HELLO_BYTES_MAX
                    {
                        prop_assert!(
                            matches!(e, LinkError::Io(_)),
                            "an oversized frame is an i/o error: {e}"
                        );
                    }
                }
            }
            Ok(())
        },
    );
}

/// What an acceptor answers an opener with (its verdict, with its hello), damaged as above.
fn acceptor_bytes() -> impl Strategy<Value = ((u8, Hello), Vec<u8>, Vec<u8>)> {
    let verdict = |hello: &Hello| {
        json(&Verdict::Admitted {
            hello: hello.clone(),
        })
    };
    let json_damaged = hostile_text(
        hello().prop_map(move |(seed, hello)| {
            let text = String::from_utf8(verdict(&hello)).expect("UTF-8");
            ((seed, hello), text)
        }),
        JSON_WORDS,
    )
    .prop_map(|(ctx, original, damaged)| {
        (ctx, frame(original.as_bytes()), frame(damaged.as_bytes()))
    });
    prop_oneof![
        1 => hostile_bytes(hello().prop_map(move |(seed, hello)| {
            let bytes = frame(&verdict(&hello));
            ((seed, hello), bytes)
        })),
        1 => json_damaged,
    ]
}

#[test]
fn a_hostile_acceptors_verdict_never_panics_the_opener() {
    fuzz(
        "verdict",
        CASES,
        acceptor_bytes(),
        |((seed, original_hello), original, input)| {
            let gate = SiteGate::new();
            let out = bounded(input.len(), 8, || {
                block_on(against(&input, |io| async {
                    open(io, peer(seed), &gate)
                        .await
                        .map(|(hello, _framed)| hello)
                }))
            })?;
            match out {
                Ok(hello) => check_admitted(&hello, &gate, &original_hello, input == original)?,
                Err(e) => prop_assert!(input != original, "the valid verdict is refused: {e}"),
            }
            Ok(())
        },
    );
}

/// Panics anywhere in the process since the hook went in (the sync engine's tasks swallow theirs).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// A samod handshake as the peer would start it, so the fuzzer gets past it.
fn join(seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = minicbor::Encoder::new(&mut out);
    let _ = e.map(3).and_then(|e| {
        e.str("type")?
            .str("join")?
            .str("senderId")?
            .str(&device(seed).to_hex())
    });
    let _ = e
        .str("supportedProtocolVersions")
        .and_then(|e| e.array(1)?.str("1"));
    out
}

/// A message samod might get next: a request or sync for some document, or anything at all.
fn sync_frames() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    let message = prop_oneof![
        (
            "request|sync|leave|doc-unavailable|ephemeral|remote-subscription-change",
            any::<[u8; 16]>(),
            prop::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(kind, doc, data)| {
                let mut out = Vec::new();
                let mut e = minicbor::Encoder::new(&mut out);
                let doc = samod::DocumentId::try_from(doc.to_vec())
                    .expect("16 bytes")
                    .to_string();
                let _ = e.map(5).and_then(|e| {
                    e.str("type")?
                        .str(&kind)?
                        .str("senderId")?
                        .str(&device(3).to_hex())?;
                    e.str("targetId")?
                        .str(&device(2).to_hex())?
                        .str("documentId")?
                        .str(&doc)?;
                    e.str("data")?.bytes(&data)?;
                    Ok(())
                });
                out
            }),
        prop::collection::vec(any::<u8>(), 0..100),
    ];
    prop::collection::vec((0..4u8, message), 0..6)
}

/// The peer's side of a link that gets past the hello: its hello and confirmation, a join, then messages, as the
/// frames its outbox writes. Damage is confined to what follows the hello.
fn after_hello() -> impl Strategy<Value = ((), Vec<u8>, Vec<u8>)> {
    let valid = sync_frames().prop_map(|messages| {
        let mut outbox = Outbox::default();
        outbox.push(0, join(3));
        for (class, m) in messages {
            outbox.push(class, m);
        }
        let mut bytes = Vec::new();
        while let Some((f, _)) = outbox.next_frame() {
            bytes.extend(frame(&f));
        }
        ((), bytes)
    });
    hostile_bytes(valid)
}

#[test]
fn whatever_a_peer_sends_after_its_hello_the_engine_ends_that_link_and_serves_on() {
    count_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _context = rt.enter();
    let repo = rt.block_on(samod::Repo::build_tokio().load());
    let acceptor = repo
        .make_acceptor(samod::Url::parse("test://hostile").expect("url"))
        .expect("acceptor");
    let gate = SiteGate::new();
    let hello = Hello::new(authority().site().to_hex(), &cert(3, "kiosk-3"), None);
    let mut preface = frame(&json(&hello));
    preface.extend(frame(&json(&Verdict::Confirmed)));
    fuzz(
        "link_frames",
        CASES / 4,
        after_hello(),
        |((), _original, frames)| {
            let panics = PANICS.load(Ordering::SeqCst);
            let ended = rt.block_on(async {
                let (ours, mut theirs) = tokio::io::duplex(PIPE_BYTES);
                theirs.write_all(&preface).await.expect("room");
                theirs.write_all(&frames).await.expect("room");
                theirs.shutdown().await.expect("shutdown");
                let (_, framed) = accept(ours.compat(), peer(3), &gate)
                    .await
                    .expect("the hello is valid");
                let policy = LinkPolicy {
                    classify: Some(Arc::new(|m: &[u8]| u8::from(document_id(m).is_some()))),
                    ..LinkPolicy::default()
                };
                let counters = Arc::new(LinkCounters::default());
                acceptor
                    .accept(into_samod(framed, peer(3), counters, policy))
                    .expect("engine running");
                // The engine answers, then ends the link: the peer's side reads to the end.
                tokio::time::timeout(Duration::from_secs(20), async {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = theirs.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await
                .is_ok()
            });
            prop_assert!(ended, "the engine kept a link whose peer had hung up");
            prop_assert_eq!(PANICS.load(Ordering::SeqCst), panics, "something panicked");
            Ok(())
        },
    );
    let doc = rt
        .block_on(repo.create(automerge::Automerge::new()))
        .expect("the engine still serves");
    assert!(!doc.document_id().to_string().is_empty());
    rt.block_on(repo.stop());
}
