//! Offline payment risk limits, as card terminals enforce them when they cannot reach the processor.
//!
//! While offline, the merchant carries the decline risk, so (as Stripe Terminal and Square do) each payment has a
//! maximum, the total stored but not yet reconciled on one device has a maximum, and payments not reconciled within
//! an age limit are flagged (Square expires them after 24 hours).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::UnixMillis;

/// A device's offline payment limits. Amounts are in minor units of `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskLimits {
    pub currency: String,
    pub payment_max_minor: u64,
    pub stored_total_max_minor: u64,
    /// Unreconciled payments older than this are flagged.
    pub stale_after_ms: u64,
}

impl Default for RiskLimits {
    /// EUR 150.00 a payment, EUR 2,000.00 stored per device, flagged after 24 hours.
    fn default() -> Self {
        Self {
            currency: "EUR".into(),
            payment_max_minor: 15_000,
            stored_total_max_minor: 200_000,
            stale_after_ms: 24 * 3_600_000,
        }
    }
}

/// Why an offline payment is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RiskError {
    #[error("offline payments are taken in {accepted} only, not {requested}")]
    CurrencyNotAccepted { accepted: String, requested: String },
    #[error("{amount} exceeds the offline limit of {max} per payment (minor units)")]
    OverPaymentLimit { amount: u64, max: u64 },
    #[error(
        "this device already holds {stored} unreconciled; {amount} more would pass the offline limit of {max} (minor units)"
    )]
    OverStoredLimit { stored: u64, amount: u64, max: u64 },
}

impl RiskLimits {
    /// May a device that holds `stored_minor` unreconciled take `amount_minor` more in `currency`?
    pub fn check(
        &self,
        stored_minor: u64,
        amount_minor: u64,
        currency: &str,
    ) -> Result<(), RiskError> {
        if currency != self.currency {
            return Err(RiskError::CurrencyNotAccepted {
                accepted: self.currency.clone(),
                requested: currency.to_owned(),
            });
        }
        if amount_minor > self.payment_max_minor {
            return Err(RiskError::OverPaymentLimit {
                amount: amount_minor,
                max: self.payment_max_minor,
            });
        }
        // Checked: a sum past u64 is over any limit (saturating would let it equal a limit of u64::MAX).
        if stored_minor
            .checked_add(amount_minor)
            .is_none_or(|total| total > self.stored_total_max_minor)
        {
            return Err(RiskError::OverStoredLimit {
                stored: stored_minor,
                amount: amount_minor,
                max: self.stored_total_max_minor,
            });
        }
        Ok(())
    }

    /// Is a payment taken at `issued_at` and still unreconciled at `now` past the age limit?
    pub fn is_stale(&self, issued_at: UnixMillis, now: UnixMillis) -> bool {
        now.saturating_sub(issued_at) > self.stale_after_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_refuses_one_big_payment_then_a_small_one_past_the_stored_total() {
        let limits = RiskLimits {
            currency: "EUR".into(),
            payment_max_minor: 10_000,
            stored_total_max_minor: 25_000,
            stale_after_ms: 1000,
        };
        assert_eq!(
            limits.check(0, 10_001, "EUR"),
            Err(RiskError::OverPaymentLimit {
                amount: 10_001,
                max: 10_000
            })
        );
        assert_eq!(limits.check(0, 10_000, "EUR"), Ok(()));
        assert_eq!(limits.check(20_000, 5_000, "EUR"), Ok(()));
        assert!(matches!(
            limits.check(20_000, 5_001, "EUR"),
            Err(RiskError::OverStoredLimit { .. })
        ));
        assert!(matches!(
            limits.check(0, 1, "USD"),
            Err(RiskError::CurrencyNotAccepted { .. })
        ));
    }

    #[test]
    fn a_payment_left_unreconciled_past_the_age_limit_is_flagged() {
        let limits = RiskLimits {
            stale_after_ms: 1000,
            ..RiskLimits::default()
        };
        assert!(!limits.is_stale(UnixMillis(0), UnixMillis(1000)));
        assert!(limits.is_stale(UnixMillis(0), UnixMillis(1001)));
    }
}
