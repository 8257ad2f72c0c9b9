//! The simulator's shell around the device core's `authorship`: what the node's judge does on every link, with
//! what this device knows of each document (its directory replica's registry, creating changes it has seen).

use popmesh_device::authorship::{self, DocKind};

use super::*;

impl World {
    /// Whether a message `dev` received may reach its sync engine (the node's `Judge::judge`).
    pub(super) fn judge(&mut self, dev: usize, message: &[u8]) -> Result<(), String> {
        let Some(payload) = authorship::sync_payload(message)? else {
            return Ok(());
        };
        let directory = self.directory.to_string();
        let d = &mut self.devices[dev];
        let kind = if payload.document == directory {
            DocKind::Directory
        } else if let Some(kind) = d.kinds.get(payload.document) {
            kind.clone()
        } else {
            let named = d
                .known
                .iter()
                .find(|(_, id)| id.to_string() == payload.document)
                .and_then(|(name, _)| name.parse::<DocName>().ok());
            match named {
                Some(name) => {
                    let kind = DocKind::of(&name);
                    d.kinds.insert(payload.document.to_owned(), kind.clone());
                    kind
                }
                None => DocKind::Unknown,
            }
        };
        let view = d.view.as_ref();
        let role_of = |x: &popmesh_crdt::DeviceId| view.and_then(|v| v.role_of(x));
        match authorship::check_sync(&kind, payload.data, &role_of) {
            Ok(Some(learned)) => {
                d.kinds.insert(payload.document.to_owned(), learned);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(refusal) => Err(refusal.to_string()),
        }
    }
}
