//! Who is trusted: resolving device names among trusted devices, revocations, and admission at this instant.

use super::*;

/// Why a device revocation was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// It is not signed by this site's authority, or not for this site, or does not fit the directory.
    #[error("revocation refused: {0}")]
    Refused(String),
    /// The device is revoked already, and this one would honour more of its receipts than the first.
    #[error("this device is already revoked; a new revocation may not honour more of its receipts")]
    Widens,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl Node {
    /// The devices the mesh has admitted on a link now.
    pub(crate) fn admitted_devices(&self) -> Vec<DeviceId> {
        self.mesh
            .peers()
            .into_iter()
            .filter(|p| p.admitted)
            .filter_map(|p| DeviceId::from_hex(&p.device).ok())
            .collect()
    }

    /// A device named by hex id or by its certificate's name, which must be enrolled at this site and trusted now
    /// (not revoked, not expired): seats or money given to anything else would be gone.
    pub fn resolve_device(
        &self,
        view: &DirectoryView,
        who: &str,
    ) -> Result<DeviceId, UnknownDevice> {
        self.resolve_device_as(view, who, "device")
    }

    /// [`Node::resolve_device`] for the request field `field`, which the error names.
    pub fn resolve_device_as(
        &self,
        view: &DirectoryView,
        who: &str,
        field: &str,
    ) -> Result<DeviceId, UnknownDevice> {
        let shown = popmesh_crdt::naming::shown(who);
        let device = match DeviceId::from_hex(who) {
            Ok(id) => id,
            // By name: among the devices trusted now (a stolen `pos-1` revoked, its replacement enrolled as `pos-1`).
            Err(_) => view
                .trusted_devices(clock::now())
                .into_iter()
                .find(|(_, _, name)| name == who)
                .map(|(device, _, _)| device)
                .ok_or_else(|| UnknownDevice {
                    field: field.to_owned(),
                    reason: format!("no device named {shown} is enrolled at this site"),
                })?,
        };
        self.check_trusted(view, device, field)?;
        Ok(device)
    }

    /// Refuses a reference to a device that is not enrolled, or no longer trusted.
    pub(crate) fn check_trusted(
        &self,
        view: &DirectoryView,
        device: DeviceId,
        field: &str,
    ) -> Result<(), UnknownDevice> {
        view.verify_device(&device, clock::now())
            .map(|_| ())
            .map_err(|e| UnknownDevice {
                field: field.to_owned(),
                reason: format!(
                    "device {} is not a device this site trusts now: {e}",
                    device.to_hex()
                ),
            })
    }

    /// Records an authority-signed revocation and drops the revoked peers at once.
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), RevokeError> {
        revocation
            .verify(&self.dir.authority, self.dir.site_id())
            .map_err(|e| RevokeError::Refused(e.to_string()))?;
        // A second revocation of the same device may only narrow what is honoured, never widen it.
        if let Ok(view) = self.view()
            && let Some(before) = view.revocation_of(revocation.target)
        {
            let widens = revocation
                .honoured
                .iter()
                .any(|(show, seq)| before.honoured.get(show).is_none_or(|was| seq > was));
            if widens {
                return Err(RevokeError::Widens);
            }
        }
        self.change_directory(move |d| d.add_revocation(&revocation))
            .await?
            .map_err(|e| RevokeError::Refused(e.to_string()))?;
        self.refresh_view().await;
        self.mesh.reverify().await;
        Ok(())
    }

    /// Whether `device` may have blobs from this device at this instant: the mesh admits it and the directory this
    /// device holds has not revoked it.
    pub(crate) fn admits_now(&self, device: &DeviceId) -> bool {
        let hex = device.to_hex();
        let admitted = self
            .mesh
            .peers()
            .iter()
            .any(|p| p.admitted && p.device == hex);
        let revoked = read(&self.gate.view).as_ref().is_some_and(|v| {
            v.revocation_of(popmesh_crdt::enrollment::RevocationTarget::Device(*device))
                .is_some()
        });
        admitted && !revoked
    }
}
