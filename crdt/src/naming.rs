//! The one naming rule for everything a client names that becomes part of a document name or a document key: show
//! ids, slot ids, manifest names, booking and transfer ids.
//!
//! A name is 1 to [`NAME_BYTES_MAX`] bytes of ASCII letters, digits, `-`, `_`, `.` and `:`, does not start with
//! `.` and holds no `..`. So a name is always one path segment of a document name (`show/{show}/slot/{slot}`),
//! safe in a URL path, a file name, a log line and a CSV cell: no NUL, no CR/LF, no `/`, no `%`, no spaces.
//! Checked before anything is written (a request that names one bad id writes nothing).

use thiserror::Error;

/// The longest name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// A name that breaks the rule, with the field it was given in.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{field} {shown} must be 1 to {NAME_BYTES_MAX} bytes of letters, digits, '-', '_', '.' or ':', not starting with '.' and without '..'"
)]
pub struct NameError {
    /// The request field that held the name (`show`, `slots[2].id`, `booking_id`, ...).
    pub field: String,
    /// The name as given, quoted and cut to a readable length.
    pub shown: String,
}

/// Checks `value`, given in request field `field`, against the naming rule.
pub fn check_name(field: &str, value: &str) -> Result<(), NameError> {
    if is_valid_name(value) {
        Ok(())
    } else {
        Err(NameError {
            field: field.to_owned(),
            shown: shown(value),
        })
    }
}

/// Whether `value` follows the naming rule.
pub fn is_valid_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= NAME_BYTES_MAX
        && !value.starts_with('.')
        && !value.contains("..")
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// `value` quoted for an error message: escaped, and at most 80 characters of it.
pub fn shown(value: &str) -> String {
    let mut out: String = value.chars().take(80).collect();
    if out.len() < value.len() {
        out.push_str("...");
    }
    format!("{out:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_a_site_uses_pass_and_hostile_ones_are_named() {
        for good in [
            "fri",
            "show-2026.12",
            "10am",
            "bk-9f2a",
            "rb-3-17",
            "a:b",
            "A_1",
        ] {
            assert!(is_valid_name(good), "{good}");
        }
        let long = "x".repeat(100_000);
        for bad in [
            "", ".", "..", "a/b", "../etc", "a..b", ".hidden", "a\0b", "a\r\nb", "a b", "%FF", "é",
            &long,
        ] {
            let err = check_name("slots[1].id", bad).expect_err(bad);
            assert!(err.to_string().starts_with("slots[1].id "), "{err}");
            assert!(
                err.to_string().len() < 400,
                "a 100 KB name is not echoed whole"
            );
        }
        assert!(is_valid_name(&"x".repeat(NAME_BYTES_MAX)));
        assert!(!is_valid_name(&"x".repeat(NAME_BYTES_MAX + 1)));
    }
}
