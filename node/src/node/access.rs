//! Offline passes: issuing, checking in, revoking, and the origin confirming merged check-ins.

use super::*;

/// Why a pass was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssuePassError {
    #[error(transparent)]
    NotPermitted(#[from] NotPermitted),
    #[error(transparent)]
    Show(#[from] ShowError),
    /// The request is malformed (a subject that is not a pseudonym, a validity out of range).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why a check-in was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum CheckInError {
    /// The text is not a pass.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Show(#[from] ShowError),
    /// The pass does not admit here now: forged, for another show, expired, revoked or used up. Says which.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why a pass was not revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokePassError {
    #[error(transparent)]
    NotPermitted(#[from] NotPermitted),
    /// Neither a pass nor a pass id, or a reason that is not one.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl Node {
    /// Signs a pass for the show on now (or `show`): edge boxes and the origin issue, every device checks offline.
    pub async fn issue_pass(
        &self,
        show: Option<String>,
        kind: PassKind,
        subject: &str,
        valid_secs: u64,
    ) -> Result<Pass, IssuePassError> {
        self.edge_or_origin("issue passes", "the edge box or the origin does")?;
        let view = self.view()?;
        let show = self.existing_show(&view, show)?;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(internal)?;
        Pass::issue(
            &self.dir.key,
            self.dir.site_id(),
            id,
            &show,
            kind,
            subject,
            clock::now(),
            valid_secs.saturating_mul(1000),
        )
        .map_err(|e| IssuePassError::Invalid(e.to_string()))
    }

    pub(crate) fn access_handle(&self, show: &str) -> Result<DocHandle, Unavailable> {
        self.handle_by_name(&DocName::Access {
            show: show.to_owned(),
        })
        .ok_or_else(|| {
            Unavailable::loading(format!(
                "the access list of show {}",
                popmesh_crdt::naming::shown(show)
            ))
        })
    }

    /// Checks a pass offline at this device's door and records the check-in durably. A refusal says why.
    pub async fn check_in(&self, text: &str, show: Option<String>) -> Result<Pass, CheckInError> {
        let pass = Pass::from_text(text).map_err(|e| CheckInError::Invalid(e.to_string()))?;
        self.writable()?;
        let view = self.view()?;
        let show = self.existing_show(&view, show)?;
        let handle = self.access_handle(&show)?;
        let (me, actor, now) = (self.me(), self.actor(), clock::now());
        let checked = pass.clone();
        let outcome = self
            .change(&handle, move |am| {
                let mut d =
                    Doc::<Access, &mut Automerge>::attach_as(am, actor).map_err(internal)?;
                let record = d.record().map_err(internal)?;
                checked
                    .check(&view, &record, &show, now)
                    .map_err(|e| CheckInError::Refused(e.to_string()))?;
                Ok::<_, CheckInError>(d.check_in(&me, &checked, now).map_err(internal)?)
            })
            .await?;
        outcome?;
        Ok(pass)
    }

    /// Revokes a pass (by its text or its id) on this site: every device refuses it once the revocation syncs.
    pub async fn revoke_pass(&self, pass: &str, reason: &str) -> Result<(), RevokePassError> {
        self.edge_or_origin("revoke passes", "the edge box or the origin does")?;
        if reason.is_empty() || reason.len() > 200 || reason.chars().any(char::is_control) {
            return Err(RevokePassError::Invalid(
                "reason must be 1 to 200 bytes of text without control characters".into(),
            ));
        }
        let (id, show) = match Pass::from_text(pass) {
            Ok(p) => (p.id_hex(), Some(p.show)),
            Err(_) if pass.len() == 32 && pass.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (pass.to_ascii_lowercase(), None)
            }
            Err(e) => {
                return Err(RevokePassError::Invalid(format!(
                    "pass: give the pass text or its 32-hex-digit id ({e})"
                )));
            }
        };
        let view = self.view()?;
        let shows: Vec<String> = match show {
            Some(s) => vec![s],
            None => view.shows.keys().cloned().collect(),
        };
        for show in shows {
            let Ok(handle) = self.access_handle(&show) else {
                continue;
            };
            let (me, actor, now, id, reason) = (
                self.me(),
                self.actor(),
                clock::now(),
                id.clone(),
                reason.to_owned(),
            );
            self.change(&handle, move |am| {
                Doc::<Access, &mut Automerge>::attach_as(am, actor)
                    .and_then(|mut d| d.revoke(&me, &id, &reason, now))
            })
            .await?
            .map_err(internal)?;
        }
        Ok(())
    }

    /// At the origin: confirms every check-in it has merged, retiring the passes they used.
    pub async fn confirm_checkins(&self) -> Result<usize, Unavailable> {
        let handles: Vec<DocHandle> = read(&self.docs)
            .values()
            .filter(|(n, _)| matches!(n, DocName::Access { .. }))
            .map(|(_, h)| h.clone())
            .collect();
        let mut total = 0;
        for handle in handles {
            let pending = handle
                .with_document_async(|am| {
                    Doc::<Access, &mut Automerge>::attach(am)
                        .and_then(|d| d.record())
                        .map(|r| {
                            r.checkins
                                .values()
                                .flat_map(|l| l.keys())
                                .any(|id| !r.confirmed.contains_key(id))
                        })
                })
                .await
                .map_err(stopped)?
                .unwrap_or(false);
            if !pending {
                continue;
            }
            let (actor, now) = (self.actor(), clock::now());
            total += self
                .change(&handle, move |am| {
                    Doc::<Access, &mut Automerge>::attach_as(am, actor)
                        .and_then(|mut d| d.confirm_checkins(now))
                })
                .await?
                .map_err(internal)?;
        }
        Ok(total)
    }
}
