//! Canonical byte encoding for everything popmesh signs: certificates, invites, revocations, receipts, join tokens.
//!
//! The format is deliberately tiny and has exactly one encoding per value, so that two devices that build the same
//! value produce the same bytes and therefore the same signature input:
//!
//! * every structure starts with a one-byte *tag* naming what it is (so a certificate signature can never be replayed
//!   as a receipt signature) followed by a one-byte format version;
//! * unsigned integers are fixed-width big-endian (`u8`, `u32`, `u64`);
//! * byte strings and UTF-8 strings are a `u32` big-endian length followed by the bytes;
//! * fixed-size arrays (keys, hashes, signatures) are written raw;
//! * options are a `0`/`1` byte followed by the value when present.
//!
//! Decoding is strict: trailing bytes, over-long fields and invalid UTF-8 are errors, never panics. Every length a
//! peer reports is checked against [`FIELD_BYTES_MAX`] before anything is allocated.

use thiserror::Error;

/// The largest string or byte field the decoder accepts, in bytes.
pub const FIELD_BYTES_MAX: usize = 4096;

/// Why a byte string is not a valid canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("input ends early: needed {needed} more bytes for {field}")]
    Truncated { field: &'static str, needed: usize },
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("expected a {expected} (tag {expected_tag:#04x}), found tag {found:#04x}")]
    WrongTag {
        expected: &'static str,
        expected_tag: u8,
        found: u8,
    },
    #[error("unsupported {what} format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u8,
        supported: u8,
    },
    #[error("{field} has the invalid value {value}")]
    InvalidValue { field: &'static str, value: u64 },
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
}

/// Appends canonical fields to a byte buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// Starts a structure with its tag and format version.
    pub fn new(tag: u8, version: u8) -> Self {
        let mut enc = Self {
            buf: Vec::with_capacity(256),
        };
        enc.u8(tag).u8(version);
        enc
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn array<const N: usize>(&mut self, v: &[u8; N]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A length-prefixed byte string. Callers keep fields under [`FIELD_BYTES_MAX`]; the decoder enforces it.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.buf.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub fn opt_array<const N: usize>(&mut self, v: Option<&[u8; N]>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => self.u8(1).array(v),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads canonical fields from a byte slice, strictly.
#[derive(Debug)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Checks the structure's tag and version and positions after them.
    pub fn new(
        input: &'a [u8],
        what: &'static str,
        tag: u8,
        version: u8,
    ) -> Result<Self, DecodeError> {
        Self::new_versions(input, what, tag, version..=version).map(|(dec, _)| dec)
    }

    /// [`Decoder::new`] for a structure that has several versions: returns the version found.
    pub fn new_versions(
        input: &'a [u8],
        what: &'static str,
        tag: u8,
        versions: std::ops::RangeInclusive<u8>,
    ) -> Result<(Self, u8), DecodeError> {
        let mut dec = Self { rest: input };
        let found = dec.u8("tag")?;
        if found != tag {
            return Err(DecodeError::WrongTag {
                expected: what,
                expected_tag: tag,
                found,
            });
        }
        let version = dec.u8("version")?;
        if !versions.contains(&version) {
            return Err(DecodeError::UnsupportedVersion {
                what,
                found: version,
                supported: *versions.end(),
            });
        }
        Ok((dec, version))
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n - self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(field, 1)?[0])
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)? as usize;
        if len > FIELD_BYTES_MAX {
            return Err(DecodeError::TooLong {
                field,
                len,
                max: FIELD_BYTES_MAX,
            });
        }
        self.take(field, len)
    }

    pub fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.bytes(field)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    pub fn opt_array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<Option<[u8; N]>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.array(field)?)),
            other => Err(DecodeError::InvalidValue {
                field,
                value: other.into(),
            }),
        }
    }

    /// Ends decoding; any byte left over is an error.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.rest.len()))
        }
    }
}

/// The one-line text form of a signed structure (a pass, a client token): `prefix`, then its bytes in base64url
/// without padding.
pub(crate) fn to_line(prefix: &str, bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The bytes of a one-line text form, or why it is not one. A body past `max_chars` is refused before decoding.
pub(crate) fn from_line(text: &str, prefix: &str, max_chars: usize) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let body = text
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| format!("it does not start with {prefix}"))?;
    if body.len() > max_chars {
        return Err("too long".into());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| format!("not base64: {e}"))
}

/// Why a signed grant's validity window (a pass, a client token) does not admit a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// It ends before it starts, or lasts longer than its kind may.
    Invalid,
    NotYet {
        ahead_s: u64,
    },
    Expired {
        ago_s: u64,
    },
}

/// Whether `[issued_at, expires_at)`, at most `valid_max_ms` long, admits `now`, with the issuer's clock up to
/// `skew_ms` ahead of this device's.
pub(crate) fn check_window(
    issued_at: u64,
    expires_at: u64,
    valid_max_ms: u64,
    skew_ms: u64,
    now: u64,
) -> Result<(), Window> {
    if expires_at <= issued_at || expires_at - issued_at > valid_max_ms {
        return Err(Window::Invalid);
    }
    if issued_at > now.saturating_add(skew_ms) {
        return Err(Window::NotYet {
            ahead_s: (issued_at - now) / 1000,
        });
    }
    if now >= expires_at {
        return Err(Window::Expired {
            ago_s: (now - expires_at) / 1000,
        });
    }
    Ok(())
}

/// Tags of every canonical structure, in one place so none is reused.
pub(crate) mod tag {
    pub const CERT: u8 = 0x01;
    pub const INVITE: u8 = 0x02;
    pub const REVOCATION: u8 = 0x03;
    pub const RECEIPT: u8 = 0x04;
    pub const JOIN_TOKEN: u8 = 0x05;
    pub const ACCESS: u8 = 0x06;
    pub const CLIENT_TOKEN: u8 = 0x07;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_length_is_refused_before_allocation() {
        let mut enc = Encoder::new(0x7f, 1);
        enc.u32(u32::MAX);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, "test", 0x7f, 1).expect("header");
        assert!(matches!(
            dec.bytes("name"),
            Err(DecodeError::TooLong { field: "name", .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_wrong_tags_are_errors() {
        let mut enc = Encoder::new(0x10, 1);
        enc.u64(7).u8(9);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes, "test", 0x10, 1).expect("header");
        assert_eq!(dec.u64("n"), Ok(7));
        assert_eq!(dec.finish(), Err(DecodeError::TrailingBytes(1)));
        assert!(matches!(
            Decoder::new(&bytes, "other", 0x11, 1),
            Err(DecodeError::WrongTag { .. })
        ));
        assert!(matches!(
            Decoder::new(&bytes, "test", 0x10, 2),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
    }
}
