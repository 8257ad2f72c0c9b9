//! How a site's data is sharded into documents, and the stable name of each.
//!
//! No document grows with the whole show: bookings are one document per slot, receipts one per device per show,
//! telemetry one per device. Names are stable strings that every device derives the same way, so the mesh layer can
//! map them to its own document ids.

use std::fmt;

use crate::identity::DeviceId;

/// Which document a name refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocName {
    Directory,
    Slot {
        show: String,
        slot: String,
    },
    /// One page of a device's receipts for a show. A page holds a bounded number of receipts, so no document
    /// grows with the show: page 0 is `show/{show}/ledger/{device}`, later pages add `/{page}`.
    Ledger {
        show: String,
        device: DeviceId,
        page: u32,
    },
    Telemetry {
        device: DeviceId,
    },
    Manifest {
        show: String,
    },
    /// A show's offline access list: pass revocations, check-ins, the origin's confirmations.
    Access {
        show: String,
    },
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocName::Directory => f.write_str("directory"),
            DocName::Slot { show, slot } => write!(f, "show/{show}/slot/{slot}"),
            DocName::Ledger {
                show,
                device,
                page: 0,
            } => write!(f, "show/{show}/ledger/{device}"),
            DocName::Ledger { show, device, page } => {
                write!(f, "show/{show}/ledger/{device}/{page}")
            }
            DocName::Telemetry { device } => write!(f, "telemetry/{device}"),
            DocName::Manifest { show } => write!(f, "show/{show}/manifest"),
            DocName::Access { show } => write!(f, "show/{show}/access"),
        }
    }
}

impl std::str::FromStr for DocName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        // One spelling per document: lower-case hex device ids and pages in plain digits. Show and slot ids are
        // checked by the naming rule when created; names registered by older versions still open.
        let device = |hex: &str| {
            if hex.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(format!("'{s}': a device id is written in lower-case hex"));
            }
            DeviceId::from_hex(hex).map_err(|e| format!("'{s}': {e}"))
        };
        match parts.as_slice() {
            ["directory"] => Ok(DocName::Directory),
            ["show", show, "slot", slot] => Ok(DocName::Slot {
                show: (*show).to_owned(),
                slot: (*slot).to_owned(),
            }),
            ["show", show, "ledger", dev] => Ok(DocName::Ledger {
                show: (*show).to_owned(),
                device: device(dev)?,
                page: 0,
            }),
            ["show", show, "ledger", dev, text] => match text.parse::<u32>() {
                // Page 0 has one spelling only, so every device derives the same name.
                Ok(page)
                    if page > 0
                        && !text.starts_with('0')
                        && text.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    Ok(DocName::Ledger {
                        show: (*show).to_owned(),
                        device: device(dev)?,
                        page,
                    })
                }
                _ => Err(format!("'{s}': ledger page must be a number from 1")),
            },
            ["telemetry", dev] => Ok(DocName::Telemetry {
                device: device(dev)?,
            }),
            ["show", show, "manifest"] => Ok(DocName::Manifest {
                show: (*show).to_owned(),
            }),
            ["show", show, "access"] => Ok(DocName::Access {
                show: (*show).to_owned(),
            }),
            _ => Err(format!("'{s}' is not a popmesh document name")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        let device = DeviceId([3; 32]);
        for name in [
            DocName::Directory,
            DocName::Slot {
                show: "s1".into(),
                slot: "10am".into(),
            },
            DocName::Ledger {
                show: "s1".into(),
                device,
                page: 0,
            },
            DocName::Ledger {
                show: "s1".into(),
                device,
                page: 7,
            },
            DocName::Telemetry { device },
            DocName::Manifest { show: "s1".into() },
            DocName::Access { show: "s1".into() },
        ] {
            assert_eq!(name.to_string().parse::<DocName>(), Ok(name));
        }
        assert!("show/x".parse::<DocName>().is_err());
        let dev = device.to_hex();
        assert!(
            format!("show/s1/ledger/{dev}/0")
                .parse::<DocName>()
                .is_err()
        );
        assert!(
            format!("show/s1/ledger/{dev}/07")
                .parse::<DocName>()
                .is_err()
        );
    }
}
