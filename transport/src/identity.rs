//! The device key seen by the networking stacks: one ed25519 seed gives the libp2p identity and the iroh identity.
//!
//! libp2p's `PeerId` for an ed25519 key embeds the public key itself (an identity multihash), so a peer id that
//! noise authenticated maps back to exactly one [`DeviceId`], which the mesh then looks up in the site directory.
//! iroh's `EndpointId` *is* the ed25519 public key.

use libp2p_identity::{Keypair, PeerId, ed25519};
use popmesh_crdt::{DeviceId, DeviceKey};
use thiserror::Error;

/// A public key that the networking stacks do not accept as ed25519.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("device id {0} is not a valid ed25519 public key")]
pub struct NotAnEd25519Key(pub String);

/// The libp2p keypair of this device.
pub fn libp2p_keypair(key: &DeviceKey) -> Keypair {
    // `ed25519_from_bytes` zeroizes its input: hand it a copy of the seed.
    let seed = key.seed();
    Keypair::ed25519_from_bytes(seed).expect("any 32 bytes are a valid ed25519 seed")
}

/// The libp2p peer id a device appears under.
pub fn peer_id(device: &DeviceId) -> Result<PeerId, NotAnEd25519Key> {
    let public = ed25519::PublicKey::try_from_bytes(&device.0)
        .map_err(|_| NotAnEd25519Key(device.to_hex()))?;
    Ok(PeerId::from_public_key(&public.into()))
}

/// The device behind an authenticated libp2p peer id, if that peer id is an ed25519 one.
pub fn device_of_peer(peer: &PeerId) -> Option<DeviceId> {
    let multihash = peer.as_ref();
    // Identity multihash (code 0): the digest is the protobuf-encoded public key.
    if multihash.code() != 0 {
        return None;
    }
    let public = libp2p_identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed = public.try_into_ed25519().ok()?;
    let device = DeviceId(ed.to_bytes());
    // One peer id per device: a non-canonical encoding of the same key (found by the long fuzz run) names none.
    (peer_id(&device).ok() == Some(*peer)).then_some(device)
}

/// The iroh secret key of this device.
pub fn iroh_secret_key(key: &DeviceKey) -> iroh_base::SecretKey {
    iroh_base::SecretKey::from_bytes(&key.seed())
}

/// The iroh endpoint id a device appears under.
pub fn endpoint_id(device: &DeviceId) -> Result<iroh_base::EndpointId, NotAnEd25519Key> {
    iroh_base::PublicKey::from_bytes(&device.0).map_err(|_| NotAnEd25519Key(device.to_hex()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use popmesh_crdt::SecretKey;

    #[test]
    fn one_device_key_is_the_same_identity_to_libp2p_iroh_and_receipts() {
        let key = SecretKey::from_seed([42; 32]);
        let device = key.public();

        let libp2p = libp2p_keypair(&key);
        assert_eq!(
            libp2p.public().to_peer_id(),
            peer_id(&device).expect("valid key")
        );
        assert_eq!(device_of_peer(&libp2p.public().to_peer_id()), Some(device));

        let iroh = iroh_secret_key(&key);
        assert_eq!(iroh.public(), endpoint_id(&device).expect("valid key"));
        assert_eq!(iroh.public().as_bytes(), &device.0);

        // A signature made through libp2p's key verifies as a receipt signature of the device.
        let sig = libp2p.sign(b"receipt bytes").expect("ed25519 signs");
        let sig: [u8; 64] = sig.try_into().expect("64 bytes");
        assert_eq!(device.verify(b"receipt bytes", &sig), Ok(()));
        // And one made through iroh's key, too.
        let sig = iroh.sign(b"receipt bytes").to_bytes();
        assert_eq!(device.verify(b"receipt bytes", &sig), Ok(()));
    }

    #[test]
    fn a_non_ed25519_peer_maps_to_no_device() {
        // A peer id made from a SHA-256 multihash, as RSA and secp256k1 keys of some sizes produce.
        let mut bytes = vec![0x12, 0x20];
        bytes.extend_from_slice(&[7; 32]);
        let hashed = PeerId::from_bytes(&bytes).expect("a valid multihash");
        assert_eq!(device_of_peer(&hashed), None);
    }
}
