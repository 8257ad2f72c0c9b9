//! How the hostile suite bends JSON: a body type that keeps duplicate keys and raw number text, the odd
//! values (strings, numbers, wrong types, path segments), the rule each kind of field follows and so which odd
//! values it must refuse, and whole bodies broken in every way a parser can meet.

#![allow(dead_code)]

use super::hostile::Expect;

/// Odd strings a hostile client puts in names and ids (label, text).
pub fn odd_strings() -> Vec<(&'static str, String)> {
    [
        ("empty", String::new()),
        ("NUL", "a\0b".into()),
        ("CR/LF", "a\r\nb".into()),
        ("'/'", "/".into()),
        ("'a/b'", "a/b".into()),
        ("'..'", "..".into()),
        ("'%FF'", "%FF".into()),
        ("unicode", "ünï😀".into()),
        ("100 KB", "x".repeat(100 * 1024)),
        ("space", " ".into()),
    ]
    .into()
}

/// Extreme numbers, as JSON text (label, text).
pub const NUMBERS: &[(&str, &str)] = &[
    ("0", "0"),
    ("1", "1"),
    ("-1", "-1"),
    ("u64::MAX", "18446744073709551615"),
    ("i64::MIN", "-9223372036854775808"),
    ("2^64", "18446744073709551616"),
    ("i64::MAX+1", "9223372036854775808"),
    ("1.5", "1.5"),
    ("1e400", "1e400"),
    ("-0", "-0"),
];

/// Values of the wrong JSON type (label, text).
pub const WRONG_TYPES: &[(&str, &str)] = &[
    ("a string", "\"1\""),
    ("a number", "1"),
    ("a bool", "true"),
    ("null", "null"),
    ("an array", "[]"),
    ("an object", "{}"),
    ("a nested array", "[[1]]"),
    ("a lone surrogate", "\"\\ud800\""),
];

/// Odd path segments, percent-encoded as they go on the wire (label, segment).
pub fn odd_segments() -> Vec<(&'static str, String)> {
    [
        ("%00", "%00".to_owned()),
        ("%0D%0A", "a%0D%0Ab".into()),
        ("%2F", "a%2Fb".into()),
        ("..", "..".into()),
        ("%2E%2E", "%2E%2E".into()),
        ("%FF", "%FF".into()),
        ("unicode", "%C3%BC%F0%9F%98%80".into()),
        ("lone %", "%".into()),
        ("%G1", "%G1".into()),
        ("%20", "a%20b".into()),
        ("%25FF", "%25FF".into()),
        ("8 KB", "x".repeat(8 * 1024)),
        ("empty", String::new()),
    ]
    .into()
}

/// A JSON body that keeps duplicate keys and raw number text (so `1e400` and `2^64` reach the node as written).
#[derive(Debug, Clone)]
pub enum J {
    Raw(String),
    Obj(Vec<(String, J)>),
    Arr(Vec<J>),
}

impl J {
    pub fn s(text: &str) -> Self {
        J::Raw(serde_json::to_string(text).expect("a string encodes"))
    }

    pub fn raw(text: impl Into<String>) -> Self {
        J::Raw(text.into())
    }

    pub fn obj(pairs: Vec<(&str, J)>) -> Self {
        J::Obj(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// Reads a JSON text of this suite's own (plain keys), keeping the order of its keys.
    pub fn parse(text: &str) -> Self {
        fn skip(b: &[u8], i: &mut usize) {
            while b.get(*i).is_some_and(u8::is_ascii_whitespace) {
                *i += 1;
            }
        }
        fn string_end(b: &[u8], mut i: usize) -> usize {
            i += 1;
            while b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i + 1
        }
        fn value(t: &str, i: &mut usize) -> J {
            let b = t.as_bytes();
            skip(b, i);
            let open = b[*i];
            if open == b'{' || open == b'[' {
                let close = if open == b'{' { b'}' } else { b']' };
                *i += 1;
                let (mut pairs, mut items) = (Vec::new(), Vec::new());
                loop {
                    skip(b, i);
                    if b[*i] == close {
                        *i += 1;
                        break;
                    }
                    if open == b'{' {
                        let end = string_end(b, *i);
                        let key = t[*i + 1..end - 1].to_owned();
                        *i = end;
                        skip(b, i);
                        *i += 1; // the colon
                        pairs.push((key, value(t, i)));
                    } else {
                        items.push(value(t, i));
                    }
                    skip(b, i);
                    if b[*i] == b',' {
                        *i += 1;
                    }
                }
                return if open == b'{' {
                    J::Obj(pairs)
                } else {
                    J::Arr(items)
                };
            }
            let start = *i;
            *i = if open == b'"' {
                string_end(b, *i)
            } else {
                let rest = &b[start..];
                start
                    + rest
                        .iter()
                        .position(|c| b",]} \r\n\t".contains(c))
                        .unwrap_or(rest.len())
            };
            J::Raw(t[start..*i].to_owned())
        }
        value(text, &mut 0)
    }

    pub fn render(&self) -> String {
        match self {
            J::Raw(text) => text.clone(),
            J::Obj(pairs) => {
                let inner: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{}:{}", J::s(k).render(), v.render()))
                    .collect();
                format!("{{{}}}", inner.join(","))
            }
            J::Arr(items) => {
                let inner: Vec<String> = items.iter().map(J::render).collect();
                format!("[{}]", inner.join(","))
            }
        }
    }

    /// The object holding the last step of `path` (`a.0.b`), and that step.
    fn parent<'a>(&'a mut self, path: &'a str) -> Option<(&'a mut J, &'a str)> {
        let (front, last) = match path.rsplit_once('.') {
            Some((front, last)) => (Some(front), last),
            None => (None, path),
        };
        let mut here = self;
        for step in front.into_iter().flat_map(|f| f.split('.')) {
            here = match here {
                J::Obj(pairs) => &mut pairs.iter_mut().find(|(k, _)| k == step)?.1,
                J::Arr(items) => items.get_mut(step.parse::<usize>().ok()?)?,
                J::Raw(_) => return None,
            };
        }
        Some((here, last))
    }

    /// Sets `path` to `value` (adding the key when absent).
    pub fn set(&mut self, path: &str, value: J) {
        let Some((parent, last)) = self.parent(path) else {
            return;
        };
        match parent {
            J::Obj(pairs) => match pairs.iter_mut().find(|(k, _)| k == last) {
                Some(pair) => pair.1 = value,
                None => pairs.push((last.to_owned(), value)),
            },
            J::Arr(items) => {
                if let Some(slot) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    *slot = value;
                }
            }
            J::Raw(_) => {}
        }
    }

    pub fn remove(&mut self, path: &str) {
        if let Some((J::Obj(pairs), last)) = self.parent(path) {
            pairs.retain(|(k, _)| k != last);
        }
    }

    /// Writes the key at `path` twice (the same value again); false when there is no such key.
    pub fn duplicate(&mut self, path: &str) -> bool {
        if let Some((J::Obj(pairs), last)) = self.parent(path)
            && let Some(pair) = pairs.iter().find(|(k, _)| k == last).cloned()
        {
            pairs.push(pair);
            return true;
        }
        false
    }
}

/// The rule a string field follows, and so which odd strings it must refuse.
#[derive(Debug, Clone, Copy)]
pub enum Str {
    /// `[A-Za-z0-9-_.:]{1,64}` (show, slot, booking and transfer ids).
    Id,
    Pseudonym,
    Counter,
    Currency,
    IdemKey,
    Device,
    Show,
    /// Free text (names, labels, reasons): only 100 KB must be refused (every field has a limit).
    Text,
    EntryName,
    Mime,
    Hash,
    Pass,
    PassOrId,
    Base64,
    Kind,
    Fallback,
    ProfileValue,
}

pub fn str_expect(rule: Str, label: &str) -> Option<Expect> {
    use Expect::{Any, Refuse};
    let long = label == "100 KB";
    Some(match rule {
        Str::Id if label == "'..'" => Any,
        // A valid counter name: it would count, and the count would land seconds later.
        Str::Counter if label == "'..'" => return None,
        Str::IdemKey if matches!(label, "'/'" | "'a/b'" | "'..'" | "'%FF'") => Any,
        Str::Text => [Any, Refuse][usize::from(long)],
        Str::ProfileValue => [Any, Refuse][usize::from(long || label == "empty")],
        Str::EntryName
            if !long && !matches!(label, "empty" | "NUL" | "CR/LF" | "'/'" | "'a/b'") =>
        {
            Any
        }
        Str::Mime if label == "'a/b'" => Any,
        // Names an entry: refused unless one of that name was published (an odd one may have been).
        Str::Fallback if !long && !matches!(label, "empty" | "NUL" | "CR/LF" | "'/'" | "'a/b'") => {
            Any
        }
        _ => Refuse,
    })
}

/// The rule a number field follows.
#[derive(Debug, Clone, Copy)]
pub enum Num {
    Seats,
    Amount,
    Secs,
    Free,
    Size(u64),
    Below(u64),
    Above(u64),
    /// An i64 increment: here only what is no i64 at all (zero and negative are the limits story's).
    Signed,
}

pub fn num_expect(rule: Num, label: &str, text: &str) -> Option<Expect> {
    use Expect::{Any, Refuse};
    if let Num::Signed = rule {
        let not_i64 = matches!(label, "u64::MAX" | "2^64" | "i64::MAX+1" | "1.5" | "1e400");
        return not_i64.then_some(Refuse);
    }
    let Ok(v) = text.parse::<u64>() else {
        let lenient = matches!(rule, Num::Free | Num::Below(_) | Num::Above(_));
        return if label == "-0" && lenient {
            None
        } else {
            Some(Refuse)
        };
    };
    let ok = match rule {
        Num::Seats => (1..=100).contains(&v),
        Num::Amount => (1..=15_000).contains(&v),
        Num::Secs => (1..=86_400).contains(&v),
        Num::Free => true,
        Num::Size(s) => v == s,
        Num::Below(b) => v < b,
        Num::Above(a) => v > a,
        Num::Signed => false,
    };
    Some(if ok { Any } else { Refuse })
}

#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str(Str),
    Num(Num),
    Bool,
    Obj,
    Arr,
}

/// A field of a request body: its path (`slots.0.capacity`), its type, whether it may be null or left out.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub path: &'static str,
    pub ty: Ty,
    /// `Option<T>`: null is fine.
    pub nullable: bool,
    pub required: bool,
    /// A key of a map, not of a struct: a duplicate is merely the last one winning.
    pub map_key: bool,
}

pub const fn field(
    path: &'static str,
    ty: Ty,
    nullable: bool,
    required: bool,
    map_key: bool,
) -> Field {
    Field {
        path,
        ty,
        nullable,
        required,
        map_key,
    }
}

/// Required.
pub const fn req(path: &'static str, ty: Ty) -> Field {
    field(path, ty, false, true, false)
}

/// `Option<T>`.
pub const fn opt(path: &'static str, ty: Ty) -> Field {
    field(path, ty, true, false, false)
}

/// `#[serde(default)]`.
pub const fn dflt(path: &'static str, ty: Ty) -> Field {
    field(path, ty, false, false, false)
}

/// A key of a map.
pub const fn key(path: &'static str, ty: Ty) -> Field {
    field(path, ty, false, false, true)
}

/// One field bent one way.
#[derive(Debug, Clone)]
pub struct Mutation {
    pub what: String,
    pub value: J,
    pub expect: Expect,
    /// A reference to this show: refused only while no such show exists.
    pub show: Option<String>,
}

pub fn mutation(field: &Field, label: &str, value: J, expect: Expect) -> Mutation {
    let what = format!("{} = {label}", field.path);
    Mutation {
        what,
        value,
        expect,
        show: None,
    }
}

/// Every single-field mutation of `field`.
pub fn mutations(field: &Field) -> Vec<Mutation> {
    let mut out = Vec::new();
    for (label, text) in WRONG_TYPES {
        let same = match field.ty {
            Ty::Str(_) => *label == "a string",
            Ty::Num(_) => *label == "a number",
            Ty::Bool => *label == "a bool",
            Ty::Arr => matches!(*label, "an array" | "a nested array"),
            Ty::Obj => *label == "an object",
        };
        if !same {
            let expect = if *label == "null" && field.nullable {
                Expect::Any
            } else {
                Expect::Refuse
            };
            out.push(mutation(field, label, J::raw(*text), expect));
        }
    }
    match field.ty {
        Ty::Str(rule) => {
            let mut odd = odd_strings();
            match rule {
                Str::Device => {
                    odd.push(("an unenrolled 64-hex id", "ab".repeat(32)));
                    odd.push(("the all-zero 64-hex id", "00".repeat(32)));
                }
                Str::Show => odd.push(("a show that does not exist", "nope".into())),
                _ => {}
            }
            for (label, text) in odd {
                if let Some(expect) = str_expect(rule, label) {
                    let mut m = mutation(field, label, J::s(&text), expect);
                    m.show = matches!(rule, Str::Show).then_some(text);
                    out.push(m);
                }
            }
        }
        Ty::Num(rule) => {
            for (label, text) in NUMBERS {
                if let Some(expect) = num_expect(rule, label, text) {
                    out.push(mutation(field, label, J::raw(*text), expect));
                }
            }
        }
        Ty::Bool | Ty::Obj | Ty::Arr => {}
    }
    out
}

/// Whole bodies bent out of shape; every one must be refused.
pub fn broken_bodies(base: &J) -> Vec<(&'static str, Vec<u8>)> {
    let text = base.render();
    let positional = match base {
        J::Obj(pairs) => J::Arr(pairs.iter().map(|(_, v)| v.clone()).collect()),
        other => other.clone(),
    };
    let mut unknown = base.clone();
    unknown.set("tip", J::raw("5"));
    let mut invalid_utf8 = b"{\"".to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(b"\":1}");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let s = |t: &str| t.as_bytes().to_vec();
    vec![
        (
            "an array holding the object",
            format!("[{text}]").into_bytes(),
        ),
        ("an empty array", s("[]")),
        (
            "a positional array of the values",
            positional.render().into_bytes(),
        ),
        ("a string", s("\"x\"")),
        ("null", s("null")),
        ("a number", s("42")),
        ("true", s("true")),
        ("truncated", text.as_bytes()[..text.len() / 2].to_vec()),
        ("trailing garbage", format!("{text}x").into_bytes()),
        ("two objects", format!("{text}{text}").into_bytes()),
        ("a byte-order mark", format!("\u{feff}{text}").into_bytes()),
        ("invalid UTF-8", invalid_utf8),
        ("an unknown field", unknown.render().into_bytes()),
        ("an empty body", Vec::new()),
        ("whitespace only", s(" \r\n\t ")),
        ("10,000 nested arrays", deep.into_bytes()),
        ("a comment", format!("/*x*/{text}").into_bytes()),
        ("single quotes", text.replace('"', "'").into_bytes()),
        (
            "a 3 MB body",
            format!("{{\"pad\":\"{}\"}}", "x".repeat(3 << 20)).into_bytes(),
        ),
    ]
}
