//! Properties of receipts: any receipt round-trips through its canonical encoding, signs and verifies against the
//! site directory; and any single-byte change to its encoding is detected.

use popmesh_crdt::directory::Directory;
use popmesh_crdt::enrollment::SiteAuthority;
use popmesh_crdt::receipt::{PaymentRequest, Receipt};
use popmesh_crdt::{Doc, Role, SecretKey, UnixMillis, actor_id};
use proptest::prelude::*;

fn request() -> impl Strategy<Value = PaymentRequest> {
    ("[!-~]{1,40}", 1..10_000_000u64, "[A-Z]{3}").prop_map(
        |(idempotency_key, amount_minor, currency)| PaymentRequest {
            idempotency_key,
            amount_minor,
            currency,
            attendee: None,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn receipts_round_trip_sign_and_verify(
        device_seed in any::<[u8; 32]>(),
        show in "[a-z0-9-]{1,20}",
        seq in 1..1_000_000u64,
        at in 0..4_000_000_000_000u64,
        req in request(),
    ) {
        let authority = SiteAuthority::new(SecretKey::from_seed([1; 32]));
        let key = SecretKey::from_seed(device_seed);
        let mut directory = Doc::<Directory>::create_site(actor_id(key.public(), 0), authority.public(), "Site")
            .expect("create");
        directory
            .add_device(&authority.enroll(key.public(), Role::Pos, "pos-1", UnixMillis(0), UnixMillis(u64::MAX)))
            .expect("enroll");
        let view = directory.view().expect("view");

        let receipt = Receipt::issue(&key, authority.site(), &show, seq, &req, UnixMillis(at));
        let decoded = Receipt::from_bytes(&receipt.to_bytes()).expect("decodes");
        prop_assert_eq!(&decoded, &receipt);
        prop_assert_eq!(decoded.verify(&view), Ok(()));
    }

    #[test]
    fn any_single_byte_tamper_is_detected(
        device_seed in any::<[u8; 32]>(),
        req in request(),
        position in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let key = SecretKey::from_seed(device_seed);
        let site = SiteAuthority::new(SecretKey::from_seed([1; 32])).site();
        let receipt = Receipt::issue(&key, site, "show-1", 7, &req, UnixMillis(1_700_000_000_000));
        let mut bytes = receipt.to_bytes();
        let i = position.index(bytes.len());
        bytes[i] ^= flip;
        let outcome = Receipt::from_bytes(&bytes).and_then(|r| r.verify_signature());
        prop_assert!(outcome.is_err(), "byte {} xor {:#04x} went unnoticed", i, flip);
    }
}
