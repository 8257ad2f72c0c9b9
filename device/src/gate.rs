//! The gate: who may link with this device, and what travels how on a link.
//!
//! - [`admit`]: a peer presenting its claim (site, enrollment certificate) when a link opens is admitted only if
//!   the certificate is the authenticated device's, chains to the site authority, is valid now, and (when this
//!   device holds the directory) neither the device nor its invite is revoked (`popmesh_crdt::directory::admit_peer`).
//! - [`class_of`]: the class a document's sync messages travel in (money first).
//! - [`share`]: who may read and write a document through the sync engine; [`announce`]: whether to tell a site
//!   peer of a document at all (only if the site's [`Topology`] has it hold documents of that kind).

use popmesh_crdt::directory::{DirectoryView, admit_peer};
use popmesh_crdt::docs::DocName;
use popmesh_crdt::enrollment::{EnrollmentCert, TrustError};
use popmesh_crdt::{DeviceId, SiteId, UnixMillis};

use crate::authorship::DocKind;
use crate::mutation::{Mutation, Mutations};
use crate::topology::Topology;

/// The hello versions this device speaks.
pub const HELLO_VERSION: u32 = 1;

/// What a peer says about itself when a link opens.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub version: u32,
    /// The site id, lower-case hex.
    pub site: &'a str,
    /// Its enrollment certificate, canonical bytes.
    pub cert: &'a [u8],
}

/// Why a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("unsupported hello version {0}")]
    Version(u32),
    #[error("peer belongs to site {theirs}, not this site {ours}")]
    OtherSite { theirs: String, ours: String },
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// Whether `device` (authenticated by the transport) may sync with this device of the site of `authority`, given
/// its claim, the time and this device's directory replica.
///
/// `view` is `None` only on a device that holds no directory yet (it has just enrolled from a join token): then the
/// chain alone decides, and the shell re-checks every link once the directory arrives. A device whose disk holds
/// the directory must read it before it links with anyone (both shells do), or a restart would admit a revoked
/// device until the directory was read; the simulator found that (a stolen kiosk got the directory from a POS
/// that had just restarted).
pub fn admit(
    authority: &DeviceId,
    device: &DeviceId,
    claim: Claim<'_>,
    at: UnixMillis,
    view: Option<&DirectoryView>,
    mutations: Mutations,
) -> Result<EnrollmentCert, AdmitError> {
    if claim.version != HELLO_VERSION {
        return Err(AdmitError::Version(claim.version));
    }
    let ours = SiteId::for_authority(authority).to_hex();
    if claim.site != ours {
        return Err(AdmitError::OtherSite {
            theirs: claim.site.chars().take(80).collect(),
            ours,
        });
    }
    let cert = EnrollmentCert::from_bytes(claim.cert)?;
    // The mutation checks the chain alone, as a device without a directory does: revocations are ignored.
    let view = if mutations.has(Mutation::AdmitRevoked) {
        None
    } else {
        view
    };
    admit_peer(&cert, device, authority, at, view)?;
    Ok(cert)
}

/// The class a document's sync messages travel in on every link: money first, then what sells and admits, then
/// telemetry, then media manifests.
pub fn class_of(name: &DocName) -> u8 {
    match name {
        DocName::Ledger { .. } => 0,
        DocName::Directory | DocName::Slot { .. } | DocName::Access { .. } => 1,
        DocName::Telemetry { .. } => 2,
        DocName::Manifest { .. } => 3,
    }
}

/// What a peer may do with a document through the sync engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// A site device (admitted by [`admit`] on its link).
    ReadWrite,
    /// A kiosk screen: it reads what a screen shows, its changes are ignored, it is not told of other documents.
    ReadOnly,
    None,
}

/// Whether a sync peer id is a site device's (64 hex digits, a device key bound to the link's noise key).
pub fn is_device_peer(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether kiosk screens may read documents named `name`: manifests and slots, nothing else.
pub fn screen_may_read(name: &DocName) -> bool {
    matches!(name, DocName::Manifest { .. } | DocName::Slot { .. })
}

/// Who may read and write a document: site devices everything, screens only what [`screen_may_read`] allows.
pub fn share(peer: &str, screen_readable: bool) -> Share {
    if is_device_peer(peer) {
        Share::ReadWrite
    } else if screen_readable {
        Share::ReadOnly
    } else {
        Share::None
    }
}

/// Whether to announce a document of `kind` to site peer `peer` (a device id in hex): only if the site's shape
/// has it hold such documents ([`Topology::holds_kind`]). A peer that asks for a document anyway is still answered
/// (announcing is not access), and without a shape yet (no directory) everything is announced, as discovery needs.
pub fn announce(shape: Option<&Topology>, peer: &str, kind: DocKind) -> bool {
    let Some(shape) = shape else {
        return true;
    };
    match DeviceId::from_hex(peer) {
        Ok(device) => shape.holds_kind(&device, kind),
        Err(_) => true,
    }
}
