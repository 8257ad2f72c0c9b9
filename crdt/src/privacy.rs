//! What may leave the device an attendee spoke to, and what may not.
//!
//! Documents that sync carry attendees only as *pseudonymous ids*: the opaque subject on their pass (minted by the
//! ticketing system or the edge box), which links a check-in at the door to a purchase at a POS terminal and one
//! show to the next without saying who anyone is. [`check_pseudonym`] refuses anything that looks like contact
//! data (an e-mail address, a phone number, spaces as in a name), so a careless kiosk app cannot put a person into
//! a synced document through an id field.
//!
//! What attendees tell a kiosk about themselves (progressive profiling: a first name, an e-mail for the newsletter,
//! preferences, consent) is an [`AttendeeProfile`]. The node keeps profiles in its local data file and never in a
//! document; nothing about a profile syncs except aggregates. [`AttendeeProfile::merge`] is the profiling rule:
//! each visit adds what was asked, a later answer replaces an earlier one, and a withdrawn consent stays
//! withdrawn until it is given again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bytes of a pseudonymous id.
pub const PSEUDONYM_BYTES_MAX: usize = 64;
/// Fields one profile may hold (preferences and answers together).
pub const PROFILE_FIELDS_MAX: usize = 64;
/// Bytes of one profile value.
pub const PROFILE_VALUE_BYTES_MAX: usize = 512;

/// Why a pseudonym or profile is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrivacyError {
    #[error(
        "'{0}' is not a pseudonymous id: use 1 to {PSEUDONYM_BYTES_MAX} bytes of letters, digits, '-', '_' or \
         '.', with at least one letter (an opaque id such as att-5c1e, never an e-mail, phone number or name)"
    )]
    NotPseudonymous(String),
    #[error("a profile holds at most {PROFILE_FIELDS_MAX} fields")]
    TooManyFields,
    #[error("profile field '{0}' is empty or longer than {PROFILE_VALUE_BYTES_MAX} bytes")]
    BadField(String),
}

/// Checks that `id` is an opaque pseudonym and not contact data.
pub fn check_pseudonym(id: &str) -> Result<(), PrivacyError> {
    let well_formed = !id.is_empty()
        && id.len() <= PSEUDONYM_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id.bytes().any(|b| b.is_ascii_alphabetic());
    if well_formed {
        Ok(())
    } else {
        Err(PrivacyError::NotPseudonymous(id.to_owned()))
    }
}

/// What an attendee agreed to, as the kiosk asked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// Their interactions may be counted in the site's telemetry (aggregates only).
    #[serde(default)]
    pub analytics: Option<bool>,
    /// They may be contacted after the show.
    #[serde(default)]
    pub marketing: Option<bool>,
}

/// Reads consent from a JSON object only (serde would also take `[true, false]` for the struct, positionally), each
/// field at most once.
fn consent_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Consent, D::Error> {
    struct Fields;
    impl<'de> serde::de::Visitor<'de> for Fields {
        type Value = Consent;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of analytics and marketing")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Consent, A::Error> {
            use serde::de::Error as _;
            let (mut analytics, mut marketing) = (None, None);
            while let Some(key) = map.next_key::<String>()? {
                let slot = match key.as_str() {
                    "analytics" => &mut analytics,
                    "marketing" => &mut marketing,
                    other => {
                        return Err(A::Error::unknown_field(other, &["analytics", "marketing"]));
                    }
                };
                if slot.is_some() {
                    return Err(A::Error::custom(format!("duplicate field `{key}`")));
                }
                *slot = Some(map.next_value::<Option<bool>>()?);
            }
            Ok(Consent {
                analytics: analytics.flatten(),
                marketing: marketing.flatten(),
            })
        }
    }
    d.deserialize_map(Fields)
}

/// What one attendee told one device. Kept on that device only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttendeeProfile {
    #[serde(default, deserialize_with = "consent_object")]
    pub consent: Consent,
    /// Answers and preferences: field -> value (`first_name`, `email`, `favourite_genre`, ...).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// When each visit updated the profile (milliseconds), newest last; at most 32 kept.
    #[serde(default)]
    pub visits: Vec<u64>,
}

impl AttendeeProfile {
    /// Folds one visit's answers into the profile (the progressive profiling rule, see the module docs).
    pub fn merge(&mut self, update: &AttendeeProfile, at_ms: u64) -> Result<(), PrivacyError> {
        let mut fields = self.fields.clone();
        for (k, v) in &update.fields {
            if k.is_empty() || v.is_empty() || v.len() > PROFILE_VALUE_BYTES_MAX || k.len() > 64 {
                return Err(PrivacyError::BadField(k.clone()));
            }
            fields.insert(k.clone(), v.clone());
        }
        if fields.len() > PROFILE_FIELDS_MAX {
            return Err(PrivacyError::TooManyFields);
        }
        self.fields = fields;
        if let Some(a) = update.consent.analytics {
            self.consent.analytics = Some(a);
        }
        if let Some(m) = update.consent.marketing {
            self.consent.marketing = Some(m);
        }
        self.visits.push(at_ms);
        if self.visits.len() > 32 {
            self.visits.remove(0);
        }
        Ok(())
    }

    /// Whether this attendee's interactions may be counted: only when they said yes.
    pub fn counts_analytics(&self) -> bool {
        self.consent.analytics == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_ids_pass_and_contact_data_does_not() {
        for ok in ["att-5c1e", "a", "guest_0042", "T.9"] {
            assert_eq!(check_pseudonym(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ann@example.com",
            "+44 7700 900123",
            "07700900123",
            "Ann Lee",
            &"x".repeat(65),
        ] {
            assert!(check_pseudonym(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_visit_adds_answers_and_a_withdrawn_consent_stays_withdrawn() {
        let mut p = AttendeeProfile::default();
        let first = AttendeeProfile {
            consent: Consent {
                analytics: Some(true),
                marketing: None,
            },
            fields: BTreeMap::from([("first_name".into(), "Ann".into())]),
            visits: vec![],
        };
        p.merge(&first, 1).expect("merge");
        assert!(p.counts_analytics());
        let second = AttendeeProfile {
            consent: Consent {
                analytics: Some(false),
                marketing: Some(true),
            },
            fields: BTreeMap::from([("genre".into(), "jazz".into())]),
            visits: vec![],
        };
        p.merge(&second, 2).expect("merge");
        p.merge(&AttendeeProfile::default(), 3).expect("merge");
        assert!(!p.counts_analytics(), "withdrawn, and not given again");
        assert_eq!(p.consent.marketing, Some(true));
        assert_eq!(p.fields.len(), 2);
        assert_eq!(p.visits, vec![1, 2, 3]);
        let bad = AttendeeProfile {
            fields: BTreeMap::from([("note".into(), String::new())]),
            ..AttendeeProfile::default()
        };
        assert_eq!(p.merge(&bad, 4), Err(PrivacyError::BadField("note".into())));
        assert_eq!(p.visits.len(), 3, "a refused update changes nothing");
    }
}
