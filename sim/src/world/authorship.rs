//! The simulator's shell around the device core's `authorship`: what the node's judge does on every link, with
//! what this device knows of each document (its directory replica's registry, creating changes it has seen).

use popmesh_device::authorship;

use super::*;

impl World {
    /// Whether a message `dev` received may reach its sync engine (the node's `Judge::judge`).
    pub(super) fn judge(&mut self, dev: usize, message: &[u8]) -> Result<(), String> {
        let directory = self.directory.to_string();
        let d = &mut self.devices[dev];
        let Some(host) = d.host.as_mut() else {
            return Ok(());
        };
        let (kinds, known, view) = (&mut host.kinds, &d.known, d.view.as_ref());
        let kind_of = |id: &str| {
            kinds.kind_of(id, Some(&directory), |id| {
                known
                    .iter()
                    .find(|(_, d)| d.to_string() == id)
                    .and_then(|(name, _)| name.parse::<DocName>().ok())
            })
        };
        let role_of = |x: &popmesh_crdt::DeviceId| view.and_then(|v| v.role_of(x));
        match authorship::judge(message, kind_of, &role_of) {
            Ok(Some((id, kind))) => {
                kinds.learn(id, kind);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(rejected) => Err(rejected.refusal.to_string()),
        }
    }
}
