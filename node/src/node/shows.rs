//! Creating a show: every part of the request checked before anything is written, then written whole.
//!
//! A show and its slots become document names (`show/{show}/slot/{slot}`) on every device of the site, for good:
//! so the whole request is checked first against the one naming rule (`popmesh_crdt::naming`), the capacity and
//! grant arithmetic (checked, never wrapping), and the devices it names (enrolled and trusted). The show and all
//! of its slots then go into the directory as one change. A retry of a show this device already created with the
//! same definition finishes whatever a failure (a full disk) left undone, instead of refusing.

use std::collections::{BTreeMap, BTreeSet};

use popmesh_crdt::directory::{DirectoryView, SLOTS_PER_SHOW_MAX, ShowRecord, SlotRecord};
use popmesh_crdt::docs::DocName;
use popmesh_crdt::naming::check_name;
use popmesh_crdt::{DeviceId, Doc};

use super::{Node, NotPermitted, Unavailable, internal};

/// A show to create, with its slots (what `POST /v1/shows` asks for).
#[derive(Debug, Clone)]
pub struct NewShow {
    pub id: String,
    pub name: String,
    /// ISO 4217, in capitals.
    pub currency: String,
    pub slots: Vec<NewSlot>,
}

/// One slot of a [`NewShow`].
#[derive(Debug, Clone)]
pub struct NewSlot {
    pub id: String,
    pub label: String,
    pub starts_at: u64,
    pub capacity: u64,
    /// Seats escrowed to devices (by device id or name); all to the creating device when empty.
    pub grants: BTreeMap<String, u64>,
}

/// Why a show was not created. Nothing was written unless a retry can finish it (see the module's note).
#[derive(Debug, thiserror::Error)]
pub enum CreateShowError {
    #[error(transparent)]
    NotPermitted(#[from] NotPermitted),
    /// Some part of the request is not valid: a name, label, currency, capacity, or a grant.
    #[error("{0}")]
    Invalid(String),
    /// A show with this id exists with another definition.
    #[error("show {} already exists with another definition", popmesh_crdt::naming::shown(.0))]
    Exists(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// The most seats one slot may hold.
pub const CAPACITY_MAX: u64 = 1_000_000;
/// The longest show name or slot label, in bytes.
pub const LABEL_BYTES_MAX: usize = 200;

fn bad(e: impl std::fmt::Display) -> CreateShowError {
    CreateShowError::Invalid(e.to_string())
}

fn check_label(field: &str, text: &str) -> Result<(), CreateShowError> {
    if text.is_empty() || text.len() > LABEL_BYTES_MAX || text.chars().any(char::is_control) {
        return Err(CreateShowError::Invalid(format!(
            "{field} must be 1 to {LABEL_BYTES_MAX} bytes of text without control characters"
        )));
    }
    Ok(())
}

impl Node {
    /// Creates a show with its slots, escrowing each slot's seats to the devices named in `grants`. Returns
    /// false when the show already existed with this very definition (a retry, which finishes what is missing).
    pub async fn create_show(&self, spec: NewShow) -> Result<bool, CreateShowError> {
        self.edge_or_origin("create shows", "ask the site's edge box or the origin")?;
        self.writable()?;
        let view = self.view()?;
        let (record, grants) = self.plan_show(&view, &spec)?;
        let new = !view.shows.contains_key(&spec.id);
        match view.shows.get(&spec.id) {
            Some(existing) if *existing == record => {
                // A retry of this very show: finish what is missing below.
            }
            Some(_) => {
                return Err(CreateShowError::Exists(spec.id.clone()));
            }
            None => {
                let (id, record) = (spec.id.clone(), record.clone());
                self.change_directory(move |d| d.add_show(&id, &record))
                    .await?
                    .map_err(bad)?;
            }
        }
        // The show's access list, created once by the show's creator (its containers in place before it is shared).
        let show_id = spec.id.clone();
        self.own_document(
            DocName::Access {
                show: spec.id.clone(),
            },
            move |actor| {
                Doc::create_access(actor, &show_id)
                    .map(Doc::into_automerge)
                    .map_err(|e| CreateShowError::from(internal(e)))
            },
        )
        .await?;
        for (slot, grants) in spec.slots.iter().zip(grants) {
            let name = DocName::Slot {
                show: spec.id.clone(),
                slot: slot.id.clone(),
            };
            let (show_id, slot_id, capacity) = (spec.id.clone(), slot.id.clone(), slot.capacity);
            self.own_document(name, move |actor| {
                Doc::create_slot(actor, &show_id, &slot_id, capacity, &grants)
                    .map(Doc::into_automerge)
                    .map_err(bad)
            })
            .await?;
        }
        Ok(new)
    }

    /// Checks a whole show request and says what it would write: the directory's record and each slot's grants.
    fn plan_show(
        &self,
        view: &DirectoryView,
        spec: &NewShow,
    ) -> Result<(ShowRecord, Vec<BTreeMap<DeviceId, u64>>), CreateShowError> {
        check_name("id", &spec.id).map_err(bad)?;
        check_label("name", &spec.name)?;
        if spec.currency.len() != 3 || !spec.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(CreateShowError::Invalid(format!(
                "currency must be a three-letter ISO 4217 code in capitals, such as EUR, not {}",
                popmesh_crdt::naming::shown(&spec.currency)
            )));
        }
        if spec.slots.is_empty() || spec.slots.len() > SLOTS_PER_SHOW_MAX {
            return Err(CreateShowError::Invalid(format!(
                "slots must list 1 to {SLOTS_PER_SHOW_MAX} slots, not {}",
                spec.slots.len()
            )));
        }
        let mut seen = BTreeSet::new();
        let mut slots = BTreeMap::new();
        let mut all_grants = Vec::with_capacity(spec.slots.len());
        for (i, slot) in spec.slots.iter().enumerate() {
            check_name(&format!("slots[{i}].id"), &slot.id).map_err(bad)?;
            if !seen.insert(slot.id.as_str()) {
                return Err(CreateShowError::Invalid(format!(
                    "slots[{i}].id: slot {:?} is listed twice",
                    slot.id
                )));
            }
            check_label(&format!("slots[{i}].label"), &slot.label)?;
            if slot.capacity == 0 || slot.capacity > CAPACITY_MAX {
                return Err(CreateShowError::Invalid(format!(
                    "slots[{i}].capacity must be 1 to {CAPACITY_MAX} seats, not {}",
                    slot.capacity
                )));
            }
            let mut grants = BTreeMap::new();
            for (who, seats) in &slot.grants {
                let field = format!("slots[{i}].grants");
                let device = self.resolve_device_as(view, who, &field).map_err(bad)?;
                if *seats > slot.capacity {
                    return Err(CreateShowError::Invalid(format!(
                        "{field}: {seats} seats for {} is more than the slot's capacity of {}",
                        popmesh_crdt::naming::shown(who),
                        slot.capacity
                    )));
                }
                let entry: &mut u64 = grants.entry(device).or_insert(0);
                *entry = entry.checked_add(*seats).ok_or_else(|| {
                    CreateShowError::Invalid(format!("{field}: the grants to one device overflow"))
                })?;
            }
            if slot.grants.is_empty() {
                grants.insert(self.me(), slot.capacity);
            }
            popmesh_crdt::escrow::check_grants(grants.values(), slot.capacity)
                .map_err(|e| CreateShowError::Invalid(format!("slots[{i}].grants: {e}")))?;
            slots.insert(
                slot.id.clone(),
                SlotRecord {
                    label: slot.label.clone(),
                    starts_at: slot.starts_at,
                    capacity: slot.capacity,
                },
            );
            all_grants.push(grants);
        }
        Ok((
            ShowRecord {
                name: spec.name.clone(),
                currency: spec.currency.clone(),
                slots,
            },
            all_grants,
        ))
    }
}
