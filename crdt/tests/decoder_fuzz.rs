//! A hostile peer or a damaged file hands a device bytes that claim to be an enrollment certificate, an invite, a
//! revocation, a receipt, a join token, an offline pass or a document name. Whatever they are, the device never
//! panics, never holds more than the input is worth however long a length the input declares, and whatever it
//! accepts is exactly what a signer encoded: encoding the decoded value gives back the same bytes, the valid
//! original verifies, and a damaged copy that still decodes never does.
//!
//! `POPMESH_FUZZ_SECS=N` runs each story for N seconds instead (see `support/fuzz.rs`, `bench/fuzz-long.sh`).

#[path = "support/fuzz.rs"]
mod fuzz;

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fuzz::{bounded, fuzz, hostile_bytes, hostile_text};
use popmesh_crdt::access::{AccessRecord, Pass, PassKind};
use popmesh_crdt::codec::{Decoder, Encoder, FIELD_BYTES_MAX};
use popmesh_crdt::directory::{Directory, DirectoryView};
use popmesh_crdt::docs::DocName;
use popmesh_crdt::enrollment::{
    EnrollmentCert, Invite, InviteTerms, JoinToken, Revocation, RevocationTarget, SiteAuthority,
    TOKEN_BOOTSTRAP_MAX,
};
use popmesh_crdt::receipt::{PaymentRequest, Receipt};
use popmesh_crdt::{Doc, Role, SecretKey, UnixMillis, actor_id};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

/// Cases per story in CI.
const CASES: u32 = 4096;
/// Bytes a decoder may hold per byte of input (beyond a fixed 64 KiB).
const PER_BYTE: usize = 4;

fn authority(seed: u8) -> SiteAuthority {
    SiteAuthority::new(SecretKey::from_seed([seed; 32]))
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(Role::ALL.to_vec())
}

/// Labels and reasons: mostly short, any script, sometimes right at the codec's field bound.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => "\\PC{0,24}",
        1 => (FIELD_BYTES_MAX - 8..=FIELD_BYTES_MAX).prop_map(|n| "x".repeat(n)),
    ]
}

fn terms() -> impl Strategy<Value = InviteTerms> {
    (role(), any::<u64>(), any::<u32>(), any::<u64>()).prop_map(
        |(role, expires_at, max_uses, cert_valid_until)| InviteTerms {
            role,
            expires_at: UnixMillis(expires_at),
            max_uses,
            cert_valid_until: UnixMillis(cert_valid_until),
        },
    )
}

fn invite() -> impl Strategy<Value = (u8, Vec<u8>)> {
    (1..=3u8, any::<[u8; 32]>(), terms()).prop_map(|(a, seed, terms)| {
        let (invite, _) = authority(a).invite(seed, terms);
        (a, invite.to_bytes())
    })
}

/// A certificate signed by the authority, or by an invite key the authority vouched for.
fn cert() -> impl Strategy<Value = (u8, Vec<u8>)> {
    (
        1..=3u8,
        any::<[u8; 32]>(),
        role(),
        label(),
        any::<u64>(),
        any::<u64>(),
        prop::option::of(any::<[u8; 32]>()),
    )
        .prop_map(|(a, device, role, name, from, until, invite_seed)| {
            let authority = authority(a);
            let device = SecretKey::from_seed(device).public();
            let (not_before, not_after) =
                (UnixMillis(from.min(until)), UnixMillis(from.max(until)));
            let cert = match invite_seed {
                None => authority.enroll(device, role, &name, not_before, not_after),
                Some(seed) => {
                    let terms = InviteTerms {
                        role,
                        expires_at: not_before,
                        max_uses: 3,
                        cert_valid_until: not_after,
                    };
                    token(&authority, seed, terms, "site", vec![])
                        .enroll(device, &name, not_before)
                        .expect("the invite is open at not_before")
                }
            };
            (a, cert.to_bytes())
        })
}

fn revocation() -> impl Strategy<Value = (u8, Vec<u8>)> {
    (
        1..=3u8,
        any::<bool>(),
        any::<[u8; 32]>(),
        any::<u64>(),
        label(),
    )
        .prop_map(|(a, device, key, at, reason)| {
            let key = SecretKey::from_seed(key).public();
            let target = if device {
                RevocationTarget::Device(key)
            } else {
                RevocationTarget::Invite(key)
            };
            (
                a,
                authority(a)
                    .revoke(target, UnixMillis(at), &reason)
                    .to_bytes(),
            )
        })
}

fn receipt() -> impl Strategy<Value = ((), Vec<u8>)> {
    (
        any::<[u8; 32]>(),
        1..=3u8,
        "\\PC{0,20}",
        any::<u64>(),
        "[!-~]{1,128}",
        1..u64::MAX,
        "[A-Z]{3}",
        any::<u64>(),
    )
        .prop_map(
            |(key, a, show, seq, idempotency_key, amount_minor, currency, at)| {
                let request = PaymentRequest {
                    idempotency_key,
                    amount_minor,
                    currency,
                    attendee: None,
                };
                let key = SecretKey::from_seed(key);
                let receipt = Receipt::issue(
                    &key,
                    authority(a).site(),
                    &show,
                    seq,
                    &request,
                    UnixMillis(at),
                );
                ((), receipt.to_bytes())
            },
        )
}

fn token(
    authority: &SiteAuthority,
    invite_seed: [u8; 32],
    terms: InviteTerms,
    site_name: &str,
    bootstrap: Vec<String>,
) -> JoinToken {
    let (invite, secret) = authority.invite(invite_seed, terms);
    JoinToken {
        site_name: site_name.to_owned(),
        authority: authority.public(),
        invite,
        invite_secret: secret.seed(),
        network_key: [0x5a; 32],
        bootstrap,
    }
}

/// A binary story: decode, check the allocation bound, and for what decodes, one encoding and the verdict.
fn binary<T, E: std::fmt::Display>(
    input: &[u8],
    original: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, E>,
    encode: impl FnOnce(&T) -> Vec<u8>,
    verifies: impl FnOnce(&T) -> bool,
) -> TestCaseResult {
    match bounded(input.len(), PER_BYTE, || decode(input))? {
        Ok(value) => {
            prop_assert_eq!(
                encode(&value),
                input.to_vec(),
                "decoded, but encodes differently"
            );
            if input == original {
                prop_assert!(verifies(&value), "the valid original does not verify");
            } else {
                prop_assert!(!verifies(&value), "a damaged copy verifies");
            }
        }
        Err(e) => {
            prop_assert!(input != original, "the valid original is refused: {e}");
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

#[test]
fn a_hostile_certificate_never_panics_and_a_damaged_one_never_verifies() {
    fuzz(
        "enrollment_cert",
        CASES,
        hostile_bytes(cert()),
        |(a, original, input)| {
            let authority = authority(a);
            binary(
                &input,
                &original,
                EnrollmentCert::from_bytes,
                EnrollmentCert::to_bytes,
                |cert| {
                    cert.verify_chain(&authority.public(), authority.site())
                        .is_ok()
                },
            )
        },
    );
}

#[test]
fn a_hostile_invite_never_panics_and_a_damaged_one_never_verifies() {
    fuzz(
        "invite",
        CASES,
        hostile_bytes(invite()),
        |(a, original, input)| {
            let authority = authority(a);
            binary(
                &input,
                &original,
                Invite::from_bytes,
                Invite::to_bytes,
                |invite| invite.verify(&authority.public(), authority.site()).is_ok(),
            )
        },
    );
}

#[test]
fn a_hostile_revocation_never_panics_and_a_damaged_one_never_verifies() {
    // Through the public encoding only: the revocation format is changing, and this story must not care how.
    fuzz(
        "revocation",
        CASES,
        hostile_bytes(revocation()),
        |(a, original, input)| {
            let authority = authority(a);
            binary(
                &input,
                &original,
                Revocation::from_bytes,
                Revocation::to_bytes,
                |r| r.verify(&authority.public(), authority.site()).is_ok(),
            )
        },
    );
}

#[test]
fn a_hostile_receipt_never_panics_and_a_damaged_one_never_verifies() {
    fuzz(
        "receipt",
        CASES,
        hostile_bytes(receipt()),
        |((), original, input)| {
            binary(
                &input,
                &original,
                Receipt::from_bytes,
                Receipt::to_bytes,
                |r| r.verify_signature().is_ok(),
            )
        },
    );
}

/// One canonical field, as the codec writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    U8(u8),
    U32(u32),
    U64(u64),
    Array([u8; 32]),
    Bytes(Vec<u8>),
    Str(String),
    Opt(Option<[u8; 32]>),
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        any::<u8>().prop_map(Field::U8),
        any::<u32>().prop_map(Field::U32),
        any::<u64>().prop_map(Field::U64),
        any::<[u8; 32]>().prop_map(Field::Array),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Field::Bytes),
        "\\PC{0,16}".prop_map(Field::Str),
        prop::option::of(any::<[u8; 32]>()).prop_map(Field::Opt),
    ]
}

fn encode_fields(tag: u8, version: u8, fields: &[Field]) -> Vec<u8> {
    let mut enc = Encoder::new(tag, version);
    for f in fields {
        match f {
            Field::U8(v) => enc.u8(*v),
            Field::U32(v) => enc.u32(*v),
            Field::U64(v) => enc.u64(*v),
            Field::Array(v) => enc.array(v),
            Field::Bytes(v) => enc.bytes(v),
            Field::Str(v) => enc.str(v),
            Field::Opt(v) => enc.opt_array(v.as_ref()),
        };
    }
    enc.finish()
}

/// Reads fields of the same kinds as `shape`, strictly.
fn decode_fields(
    input: &[u8],
    tag: u8,
    version: u8,
    shape: &[Field],
) -> Result<Vec<Field>, popmesh_crdt::codec::DecodeError> {
    let mut dec = Decoder::new(input, "fuzzed", tag, version)?;
    let mut out = Vec::with_capacity(shape.len());
    for f in shape {
        out.push(match f {
            Field::U8(_) => Field::U8(dec.u8("u8")?),
            Field::U32(_) => Field::U32(dec.u32("u32")?),
            Field::U64(_) => Field::U64(dec.u64("u64")?),
            Field::Array(_) => Field::Array(dec.array("array")?),
            Field::Bytes(_) => {
                let bytes = dec.bytes("bytes")?;
                assert!(
                    bytes.len() <= FIELD_BYTES_MAX,
                    "a field over the bound was returned"
                );
                Field::Bytes(bytes.to_vec())
            }
            Field::Str(_) => Field::Str(dec.string("str")?),
            Field::Opt(_) => Field::Opt(dec.opt_array("opt")?),
        });
    }
    dec.finish()?;
    Ok(out)
}

#[test]
fn the_canonical_codec_reads_back_what_it_wrote_and_refuses_everything_else() {
    let structure = (
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(field(), 0..12),
    )
        .prop_map(|(tag, version, fields)| {
            let bytes = encode_fields(tag, version, &fields);
            ((tag, version, fields), bytes)
        });
    fuzz(
        "codec",
        CASES,
        hostile_bytes(structure),
        |((tag, version, shape), original, input)| {
            let decoded = bounded(input.len(), PER_BYTE, || {
                decode_fields(&input, tag, version, &shape)
            })?;
            match decoded {
                Ok(fields) => {
                    prop_assert_eq!(
                        encode_fields(tag, version, &fields),
                        input.clone(),
                        "two encodings of one value"
                    );
                    if input == original {
                        prop_assert_eq!(fields, shape);
                    }
                }
                Err(e) => {
                    prop_assert!(input != original, "the codec refused its own encoding: {e}")
                }
            }
            Ok(())
        },
    );
}

/// Byte-level damage inside a base64 body behind `prefix`, so the damage reaches the decoder behind the text.
fn rebody(text: &str, prefix: &str, mutations: &[fuzz::Mutation]) -> String {
    let body = text.strip_prefix(prefix).expect("our own encoding");
    let mut bytes = URL_SAFE_NO_PAD.decode(body).expect("our own encoding");
    for m in mutations {
        fuzz::apply(&mut bytes, m);
    }
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Words of a base64 line: the alphabets, padding, and whitespace.
const LINE_WORDS: &[&str] = &[
    "popmesh-join1.",
    "popmesh-pass1.",
    "=",
    "==",
    "+",
    "/",
    "-",
    "_",
    "A",
    "AAAA",
    " ",
    "\n",
    "\r\n",
    "\t",
    "\u{feff}",
    "\u{a0}",
    "é",
];

/// A text story's input: text-level damage, any string, or byte-level damage under the base64.
fn hostile_line<C: Clone + std::fmt::Debug, S: Strategy<Value = (C, String)>>(
    valid: fn() -> S,
    prefix: &'static str,
) -> impl Strategy<Value = (C, String, String)> {
    prop_oneof![
        1 => hostile_text(valid(), LINE_WORDS),
        1 => (valid(), prop::collection::vec(fuzz::mutation(), 1..=4)).prop_map(move |((c, original), m)| {
            let input = rebody(&original, prefix, &m);
            (c, original, input)
        }),
    ]
}

fn join_token() -> impl Strategy<Value = ((), String)> {
    (
        1..=3u8,
        any::<[u8; 32]>(),
        terms(),
        label(),
        prop::collection::vec(
            "/ip4/[0-9.]{1,15}/tcp/[0-9]{1,5}|\\PC{0,30}",
            0..=TOKEN_BOOTSTRAP_MAX,
        ),
    )
        .prop_map(|(a, seed, terms, site_name, bootstrap)| {
            (
                (),
                token(&authority(a), seed, terms, &site_name, bootstrap).to_line(),
            )
        })
}

#[test]
fn a_hostile_join_token_never_panics_and_what_it_accepts_is_one_signed_invite() {
    fuzz(
        "join_token",
        CASES,
        hostile_line(join_token, "popmesh-join1."),
        |((), original, input)| {
            let parsed = bounded(input.len(), PER_BYTE, || JoinToken::from_line(&input))?;
            match parsed {
                Ok(token) => {
                    prop_assert_eq!(token.to_line(), input.trim(), "one line per token");
                    prop_assert!(token.bootstrap.len() <= TOKEN_BOOTSTRAP_MAX);
                    prop_assert!(token.invite.verify(&token.authority, token.site()).is_ok());
                    prop_assert_eq!(
                        SecretKey::from_seed(token.invite_secret).public(),
                        token.invite.invite_key
                    );
                }
                Err(e) => {
                    prop_assert!(input.trim() != original, "the valid token is refused: {e}");
                    prop_assert!(!e.to_string().is_empty());
                }
            }
            Ok(())
        },
    );
}

/// A site with two enrolled edge boxes that issue passes, and its directory as every device reads it.
fn pass_site() -> &'static (DirectoryView, [SecretKey; 2]) {
    static SITE: OnceLock<(DirectoryView, [SecretKey; 2])> = OnceLock::new();
    SITE.get_or_init(|| {
        let authority = authority(1);
        let edges = [
            SecretKey::from_seed([11; 32]),
            SecretKey::from_seed([12; 32]),
        ];
        let mut dir = Doc::<Directory>::create_site(
            actor_id(edges[0].public(), 0),
            authority.public(),
            "Harbour",
        )
        .expect("directory");
        for (i, edge) in edges.iter().enumerate() {
            let cert = authority.enroll(
                edge.public(),
                Role::Edge,
                &format!("edge-{i}"),
                UnixMillis(0),
                UnixMillis(u64::MAX),
            );
            dir.add_device(&cert).expect("enroll");
        }
        (dir.view().expect("view"), edges)
    })
}

fn pass() -> impl Strategy<Value = ((), String)> {
    (
        0..2usize,
        any::<[u8; 16]>(),
        "\\PC{0,20}",
        any::<bool>(),
        "[a-z][a-z0-9._-]{0,63}",
        0..u64::MAX / 2,
        1..=popmesh_crdt::access::PASS_VALID_MS_MAX,
    )
        .prop_map(|(edge, id, show, staff, subject, now, valid_ms)| {
            let (view, edges) = pass_site();
            let kind = if staff {
                PassKind::Staff
            } else {
                PassKind::Attendee
            };
            let pass = Pass::issue(
                &edges[edge],
                view.site,
                id,
                &show,
                kind,
                &subject,
                UnixMillis(now),
                valid_ms,
            )
            .expect("a valid pass");
            ((), pass.to_text())
        })
}

#[test]
fn a_hostile_pass_never_panics_the_door_and_a_damaged_one_never_admits() {
    let access = AccessRecord::default();
    fuzz(
        "pass",
        CASES,
        hostile_line(pass, "popmesh-pass1."),
        |((), original, input)| {
            let parsed = bounded(input.len(), PER_BYTE, || Pass::from_text(&input))?;
            match parsed {
                Ok(pass) => {
                    prop_assert_eq!(pass.to_text(), input.trim(), "one text per pass");
                    let admitted = pass.check(&pass_site().0, &access, &pass.show, pass.issued_at);
                    if input.trim() == original {
                        prop_assert_eq!(admitted, Ok(()));
                    } else {
                        prop_assert!(admitted.is_err(), "a damaged pass admits");
                    }
                }
                Err(e) => prop_assert!(input.trim() != original, "the valid pass is refused: {e}"),
            }
            Ok(())
        },
    );
}

fn doc_name() -> impl Strategy<Value = ((), String)> {
    let device = any::<[u8; 32]>().prop_map(|s| SecretKey::from_seed(s).public());
    let show = "[a-z0-9-]{1,12}";
    prop_oneof![
        Just(DocName::Directory),
        (show, "[a-z0-9-]{1,12}").prop_map(|(show, slot)| DocName::Slot { show, slot }),
        (show, device.clone(), any::<u32>()).prop_map(|(show, device, page)| DocName::Ledger {
            show,
            device,
            page
        }),
        device.prop_map(|device| DocName::Telemetry { device }),
        show.prop_map(|show| DocName::Manifest { show }),
        show.prop_map(|show| DocName::Access { show }),
    ]
    .prop_map(|name| ((), name.to_string()))
}

const NAME_WORDS: &[&str] = &[
    "/",
    "show",
    "slot",
    "ledger",
    "telemetry",
    "manifest",
    "access",
    "directory",
    "0",
    "+",
    "-",
    "00",
    "4294967296",
    "A",
    "F",
];

#[test]
fn a_hostile_document_name_never_panics_and_what_it_names_names_itself() {
    fuzz(
        "doc_name",
        CASES,
        hostile_text(doc_name(), NAME_WORDS),
        |((), original, input)| {
            let parsed = bounded(input.len(), PER_BYTE, || input.parse::<DocName>())?;
            match parsed {
                Ok(name) => {
                    prop_assert_eq!(
                        name.to_string().parse::<DocName>(),
                        Ok(name.clone()),
                        "a name that reads differently"
                    );
                    if input == original {
                        prop_assert_eq!(name.to_string(), input);
                    }
                }
                Err(e) => prop_assert!(input != original, "a derived name is refused: {e}"),
            }
            Ok(())
        },
    );
}

/// What the document-name story found, kept as a case: a ledger page number written with a `+`, or a device id in
/// capitals, once gave one page of one device's ledger a second name. Every document has one spelling now.
#[test]
fn a_ledger_page_has_one_name() {
    let device = SecretKey::from_seed([1; 32]).public().to_hex();
    for alias in [
        format!("show/fri/ledger/{device}/+1"),
        format!("show/fri/ledger/{}/1", device.to_uppercase()),
    ] {
        if let Ok(name) = alias.parse::<DocName>() {
            assert_eq!(
                name.to_string(),
                alias,
                "{alias} is a second name for {name}"
            );
        }
    }
}
