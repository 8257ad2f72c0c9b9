//! What the node's operations fail with.
//!
//! Every operation the API offers has its own error enum beside it (`PayError` in `desk.rs`, `BookError` in
//! `slots.rs`, ...), listing what can go wrong with *that* request. They are built from the causes here that many
//! operations share: why this device cannot do anything of the kind now ([`Unavailable`]), which show was meant
//! ([`ShowError`]), and who may do it ([`NotPermitted`]). Nothing here knows HTTP: the HTTP layer
//! (`api/errors.rs`) maps each variant to a status code and a stable error code.

use popmesh_crdt::naming::shown;

/// Why this device cannot do that now, whatever the request said: asking again later (or elsewhere) may work.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("this device has not received the site directory yet; is a site peer reachable?")]
    NoDirectory,
    #[error("the site directory is not readable yet")]
    DirectoryUnreadable,
    #[error("the document engine is shutting down")]
    ShuttingDown,
    #[error(
        "the disk is full, so this device takes no payments or bookings now (nothing was written); free space \
         on {path} and it resumes by itself: {reason}"
    )]
    DiskFull { path: String, reason: String },
    #[error(
        "this device's data file refuses writes, so it takes no payments or bookings now (nothing was written): \
         {0}"
    )]
    StoreRefuses(String),
    #[error("could not make the write durable, so it was not acknowledged: {0}")]
    NotDurable(String),
    /// Documents the directory registers that are not open here yet (ledger pages, a show's access list, a slot).
    #[error("{what} {}; ask again once {} synced", have(*.count), them(*.count))]
    Loading { what: String, count: usize },
    /// Money waits after a start until this device's ledger pages are open and their keys indexed (the desk's
    /// readiness, `popmesh_device::desk`).
    #[error("{0}")]
    MoneyLoading(String),
    #[error("document {0} is registered but not found")]
    DocumentMissing(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn have(n: usize) -> &'static str {
    if n == 1 {
        "is not on this device yet"
    } else {
        "are not on this device yet"
    }
}

fn them(n: usize) -> &'static str {
    if n == 1 { "it has" } else { "they have" }
}

impl Unavailable {
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// One document `what` still syncing.
    pub(crate) fn loading(what: impl Into<String>) -> Self {
        Self::Loading {
            what: what.into(),
            count: 1,
        }
    }

    /// `names` (documents still syncing), described as `what` with the first few named.
    pub(crate) fn loading_all(what: &str, names: &[String]) -> Self {
        let mut listed: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
        if names.len() > 3 {
            listed.push("...");
        }
        Self::Loading {
            what: format!("{} {what} ({})", names.len(), listed.join(", ")),
            count: names.len(),
        }
    }
}

impl From<samod::Stopped> for Unavailable {
    fn from(_: samod::Stopped) -> Self {
        Self::ShuttingDown
    }
}

/// Which show a request means, when the site has no such show.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error("show {} does not exist at this site", shown(.0))]
    Unknown(String),
    #[error("no show is open at this site yet; create one with POST /v1/shows")]
    NoneOpen,
}

/// What only some roles may do, asked of a device of another role: "a kiosk may not create shows; ...".
#[derive(Debug, thiserror::Error)]
#[error("a {role} may not {what}; {instead}")]
pub struct NotPermitted {
    pub role: popmesh_crdt::Role,
    pub what: &'static str,
    pub instead: &'static str,
}

/// A device a request names that this site does not trust now (unknown, revoked or expired).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct UnknownDevice {
    pub field: String,
    pub reason: String,
}
