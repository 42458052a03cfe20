//! Bencode, the encoding of NG control messages, plus the JSON form NG also accepts.
//!
//! The decoder is a security boundary: it reads untrusted bytes from the control socket. It works
//! over a borrowed `&[u8]`, never reads past the input, and enforces [`Limits`] on nesting depth
//! and on the total number of values, so a hostile message costs at most linear time and bounded
//! stack. It is strict where bencode is unambiguous: integers have no leading zeros, no `-0` and
//! must fit an `i64`; string lengths are decimal without leading zeros and bounded by the input.
//!
//! Dictionaries keep their keys in wire order as a `Vec` of pairs: NG peers do not sort keys
//! (Kamailio sends `supports` first and `command` last), and replies are expected in the order
//! they are built.
//!
//! [`decode`] parses exactly one value at the start of the input and reports how many bytes it
//! used, which is what TCP framing needs; [`Value::encode`] writes into a caller's `Vec<u8>`.
//! [`parse_json`] and [`Value::encode_json`] convert to and from JSON keeping key order.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use thiserror::Error;

/// Limits applied while decoding untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of lists and dictionaries accepted (the top-level value is depth 1).
    pub max_depth: usize,
    /// Most values (integers, strings, lists, dictionaries, keys included) in one message.
    pub max_items: usize,
}

impl Limits {
    /// The defaults for NG messages: depth 32, 65 536 values.
    pub const NG: Limits = Limits {
        max_depth: 32,
        max_items: 65_536,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::NG
    }
}

/// Why a byte string is not one valid bencode value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BencodeError {
    /// The input ended inside a value: more bytes may complete it.
    #[error("bencode value truncated at byte {offset}")]
    Truncated {
        /// Input length at which more bytes were needed.
        offset: usize,
    },
    /// A byte that cannot start or continue a value here.
    #[error("unexpected byte {byte:#04x} at offset {offset}")]
    UnexpectedByte {
        /// The offending byte.
        byte: u8,
        /// Its offset.
        offset: usize,
    },
    /// An integer with a leading zero, `-0`, no digits, or a stray sign.
    #[error("malformed integer at offset {offset}")]
    BadInteger {
        /// Offset of the integer's first digit or sign.
        offset: usize,
    },
    /// An integer or string length that does not fit 64 bits.
    #[error("integer overflow at offset {offset}")]
    Overflow {
        /// Offset of the number.
        offset: usize,
    },
    /// A string whose declared length goes past the end of the input.
    #[error("string of {declared} bytes at offset {offset} exceeds the input")]
    StringTooLong {
        /// The declared length.
        declared: u64,
        /// Offset of the length prefix.
        offset: usize,
    },
    /// A dictionary key that is not a byte string.
    #[error("dictionary key at offset {offset} is not a string")]
    KeyNotString {
        /// Offset of the key.
        offset: usize,
    },
    /// Nesting deeper than [`Limits::max_depth`].
    #[error("nesting deeper than {max} at offset {offset}")]
    TooDeep {
        /// The limit.
        max: usize,
        /// Offset where it was exceeded.
        offset: usize,
    },
    /// More values than [`Limits::max_items`].
    #[error("more than {max} values")]
    TooManyItems {
        /// The limit.
        max: usize,
    },
}

impl BencodeError {
    /// True when the input is a valid prefix of a value: more bytes could complete it.
    #[must_use]
    pub fn is_truncated(&self) -> bool {
        matches!(
            self,
            BencodeError::Truncated { .. } | BencodeError::StringTooLong { .. }
        )
    }
}

/// One bencode value. Owned: NG messages are small and decoded once per request.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// `i…e`
    Int(i64),
    /// `N:bytes` — not necessarily UTF-8.
    Bytes(Vec<u8>),
    /// `l…e`
    List(Vec<Value>),
    /// `d…e`, keys in wire order (duplicates kept as received).
    Dict(Vec<(Vec<u8>, Value)>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Dict(d) => f
                .debug_map()
                .entries(d.iter().map(|(k, v)| (String::from_utf8_lossy(k), v)))
                .finish(),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Bytes(s.into_bytes())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<u64> for Value {
    fn from(i: u64) -> Self {
        Value::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<u16> for Value {
    fn from(i: u16) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}

impl Value {
    /// An empty dictionary.
    #[must_use]
    pub fn dict() -> Value {
        Value::Dict(Vec::new())
    }

    /// The first value under `key` if this is a dictionary.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d
                .iter()
                .find(|(k, _)| k.as_slice() == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Appends `key: value` if this is a dictionary (no-op otherwise).
    pub fn push(&mut self, key: &str, value: impl Into<Value>) {
        if let Value::Dict(d) = self {
            d.push((key.as_bytes().to_vec(), value.into()));
        }
    }

    /// Builder form of [`Value::push`].
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Value {
        self.push(key, value);
        self
    }

    /// The bytes of a string value.
    #[must_use]
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A string value that is valid UTF-8.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// An integer value.
    #[must_use]
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A list value.
    #[must_use]
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The pairs of a dictionary value.
    #[must_use]
    pub fn as_dict(&self) -> Option<&[(Vec<u8>, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Appends the bencode form of this value to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                push_decimal(out, *i);
                out.push(b'e');
            }
            Value::Bytes(b) => encode_bytes(b, out),
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The bencode form of this value.
    #[must_use]
    pub fn to_bencode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode(&mut out);
        out
    }

    /// Appends the compact JSON form of this value to `out` (keys in order; byte strings that
    /// are not UTF-8 are written with U+FFFD replacements).
    pub fn encode_json(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail and Value's Serialize impl has no error paths.
        let _ = serde_json::to_writer(out, self);
    }

    /// Converts into a `serde_json::Value` (key order follows serde_json's map).
    #[must_use]
    pub fn to_json_value(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Bytes(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
            Value::List(l) => {
                serde_json::Value::Array(l.iter().map(Value::to_json_value).collect())
            }
            Value::Dict(d) => serde_json::Value::Object(
                d.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_json_value()))
                    .collect(),
            ),
        }
    }

    /// Converts from a `serde_json::Value`: booleans become 0/1, null an empty string, numbers
    /// that are not `i64` their decimal text.
    #[must_use]
    pub fn from_json_value(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Bytes(Vec::new()),
            serde_json::Value::Bool(b) => Value::Int(i64::from(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Bytes(n.to_string().into_bytes()),
            },
            serde_json::Value::String(s) => Value::Bytes(s.as_bytes().to_vec()),
            serde_json::Value::Array(a) => {
                Value::List(a.iter().map(Value::from_json_value).collect())
            }
            serde_json::Value::Object(o) => Value::Dict(
                o.iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), Value::from_json_value(v)))
                    .collect(),
            ),
        }
    }

    /// Nesting depth (a scalar is 1) and number of values, computed without recursion.
    #[must_use]
    pub fn shape(&self) -> (usize, usize) {
        let mut stack = vec![(self, 1usize)];
        let (mut depth, mut items) = (0, 0);
        while let Some((v, d)) = stack.pop() {
            depth = depth.max(d);
            items += 1;
            match v {
                Value::List(l) => stack.extend(l.iter().map(|c| (c, d + 1))),
                Value::Dict(m) => {
                    items += m.len();
                    stack.extend(m.iter().map(|(_, c)| (c, d + 1)));
                }
                _ => {}
            }
        }
        (depth, items)
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    push_decimal(out, i64::try_from(b.len()).unwrap_or(i64::MAX));
    out.push(b':');
    out.extend_from_slice(b);
}

fn push_decimal(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        // n % 10 < 10, so the cast cannot truncate.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

/// Decodes exactly one bencode value at the start of `input` with [`Limits::NG`]; returns it and
/// the number of bytes it took. Bytes after the value are not examined.
pub fn decode(input: &[u8]) -> Result<(Value, usize), BencodeError> {
    decode_with(input, Limits::NG)
}

/// [`decode`] with explicit limits.
pub fn decode_with(input: &[u8], limits: Limits) -> Result<(Value, usize), BencodeError> {
    let mut d = Decoder {
        input,
        pos: 0,
        items: 0,
        limits,
    };
    let v = d.value(1)?;
    Ok((v, d.pos))
}

/// Checks that `input` starts with one complete bencode value and returns its length, without
/// building it. `Ok(None)` means the input is a valid but incomplete prefix.
pub fn value_len(input: &[u8], limits: Limits) -> Result<Option<usize>, BencodeError> {
    let mut s = Scanner {
        input,
        pos: 0,
        items: 0,
        limits,
    };
    match s.skip() {
        Ok(()) => Ok(Some(s.pos)),
        Err(e) if e.is_truncated() => Ok(None),
        Err(e) => Err(e),
    }
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
    limits: Limits,
}

impl Decoder<'_> {
    fn count(&mut self) -> Result<(), BencodeError> {
        self.items += 1;
        if self.items > self.limits.max_items {
            return Err(BencodeError::TooManyItems {
                max: self.limits.max_items,
            });
        }
        Ok(())
    }

    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::Truncated { offset: self.pos })
    }

    /// Recursion is bounded by `limits.max_depth`, checked before descending.
    fn value(&mut self, depth: usize) -> Result<Value, BencodeError> {
        self.count()?;
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let (v, end) = parse_int(self.input, self.pos, b'e')?;
                self.pos = end + 1;
                Ok(Value::Int(v))
            }
            b'0'..=b'9' => {
                let (start, len) = parse_str(self.input, self.pos)?;
                self.pos = start + len;
                Ok(Value::Bytes(self.input[start..start + len].to_vec()))
            }
            b @ (b'l' | b'd') => {
                if depth > self.limits.max_depth {
                    return Err(BencodeError::TooDeep {
                        max: self.limits.max_depth,
                        offset: self.pos,
                    });
                }
                self.pos += 1;
                if b == b'l' {
                    let mut list = Vec::new();
                    while self.peek()? != b'e' {
                        list.push(self.value(depth + 1)?);
                    }
                    self.pos += 1;
                    Ok(Value::List(list))
                } else {
                    let mut dict = Vec::new();
                    while self.peek()? != b'e' {
                        let key_at = self.pos;
                        if !self.peek()?.is_ascii_digit() {
                            return Err(BencodeError::KeyNotString { offset: key_at });
                        }
                        self.count()?;
                        let (start, len) = parse_str(self.input, self.pos)?;
                        self.pos = start + len;
                        let key = self.input[start..start + len].to_vec();
                        let v = self.value(depth + 1)?;
                        dict.push((key, v));
                    }
                    self.pos += 1;
                    Ok(Value::Dict(dict))
                }
            }
            byte => Err(BencodeError::UnexpectedByte {
                byte,
                offset: self.pos,
            }),
        }
    }
}

/// Validates without building values; iterative with an explicit depth counter.
struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
    limits: Limits,
}

impl Scanner<'_> {
    fn skip(&mut self) -> Result<(), BencodeError> {
        // Each open container pushes whether it is a dict and whether its next item is a key.
        let mut stack: Vec<(bool, bool)> = Vec::new();
        loop {
            let b = *self
                .input
                .get(self.pos)
                .ok_or(BencodeError::Truncated { offset: self.pos })?;
            if b == b'e' && !stack.is_empty() {
                let (is_dict, expect_key) = stack.pop().unwrap_or((false, false));
                if is_dict && !expect_key {
                    return Err(BencodeError::UnexpectedByte {
                        byte: b,
                        offset: self.pos,
                    });
                }
                self.pos += 1;
            } else {
                if let Some((true, expect_key)) = stack.last_mut() {
                    if *expect_key && !b.is_ascii_digit() {
                        return Err(BencodeError::KeyNotString { offset: self.pos });
                    }
                    *expect_key = !*expect_key;
                }
                self.items += 1;
                if self.items > self.limits.max_items {
                    return Err(BencodeError::TooManyItems {
                        max: self.limits.max_items,
                    });
                }
                match b {
                    b'i' => {
                        let (_, end) = parse_int(self.input, self.pos + 1, b'e')?;
                        self.pos = end + 1;
                    }
                    b'0'..=b'9' => {
                        let (start, len) = parse_str(self.input, self.pos)?;
                        self.pos = start + len;
                    }
                    b'l' | b'd' => {
                        if stack.len() >= self.limits.max_depth {
                            return Err(BencodeError::TooDeep {
                                max: self.limits.max_depth,
                                offset: self.pos,
                            });
                        }
                        stack.push((b == b'd', true));
                        self.pos += 1;
                        continue;
                    }
                    byte => {
                        return Err(BencodeError::UnexpectedByte {
                            byte,
                            offset: self.pos,
                        });
                    }
                }
            }
            if stack.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Parses a decimal integer starting at `start` and ending at `term`; returns it and the offset
/// of the terminator.
fn parse_int(input: &[u8], start: usize, term: u8) -> Result<(i64, usize), BencodeError> {
    let mut pos = start;
    let negative = input.get(pos) == Some(&b'-');
    if negative {
        pos += 1;
    }
    let digits_start = pos;
    let mut acc: i64 = 0;
    loop {
        let b = *input
            .get(pos)
            .ok_or(BencodeError::Truncated { offset: pos })?;
        if b == term {
            break;
        }
        if !b.is_ascii_digit() {
            return Err(BencodeError::UnexpectedByte {
                byte: b,
                offset: pos,
            });
        }
        let d = i64::from(b - b'0');
        acc = acc
            .checked_mul(10)
            .and_then(|a| {
                if negative {
                    a.checked_sub(d)
                } else {
                    a.checked_add(d)
                }
            })
            .ok_or(BencodeError::Overflow { offset: start })?;
        pos += 1;
    }
    let ndigits = pos - digits_start;
    let leading_zero = ndigits > 1 && input[digits_start] == b'0';
    let negative_zero = negative && ndigits == 1 && input[digits_start] == b'0';
    if ndigits == 0 || leading_zero || negative_zero {
        return Err(BencodeError::BadInteger { offset: start });
    }
    Ok((acc, pos))
}

/// Parses `N:` at `start`; returns the offset of the string's first byte and its length.
fn parse_str(input: &[u8], start: usize) -> Result<(usize, usize), BencodeError> {
    let (len, colon) = parse_int(input, start, b':')?;
    if input[start] == b'-' {
        return Err(BencodeError::BadInteger { offset: start });
    }
    let data = colon + 1;
    let available = input.len() - data.min(input.len());
    let len_u = u64::try_from(len).unwrap_or(u64::MAX);
    if len_u > u64::try_from(available).unwrap_or(u64::MAX) {
        return Err(BencodeError::StringTooLong {
            declared: len_u,
            offset: start,
        });
    }
    // len <= available <= usize::MAX, so the conversion is exact.
    Ok((data, usize::try_from(len).unwrap_or(available)))
}

/// Why a JSON document is not an acceptable NG message.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JsonError {
    /// Not valid JSON (or trailing data after the document).
    #[error("invalid JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    /// Valid JSON but deeper or larger than the [`Limits`].
    #[error("JSON document exceeds limits (depth {depth}, {items} values)")]
    Limits {
        /// Its depth.
        depth: usize,
        /// Its value count.
        items: usize,
    },
}

/// Parses a JSON document into a [`Value`], keeping object keys in document order. Later
/// duplicate keys replace earlier ones (as rtpengine's JSON reader does). Booleans become 0/1,
/// `null` an empty string, non-integer numbers their decimal text. serde_json bounds recursion
/// at 128 levels; [`Limits`] are checked afterwards.
pub fn parse_json(input: &[u8], limits: Limits) -> Result<Value, JsonError> {
    let v: Value = serde_json::from_slice(input)?;
    let (depth, items) = v.shape();
    if depth > limits.max_depth || items > limits.max_items {
        return Err(JsonError::Limits { depth, items });
    }
    Ok(v)
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Int(i) => s.serialize_i64(*i),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(t) => s.serialize_str(t),
                Err(_) => s.serialize_str(&String::from_utf8_lossy(b)),
            },
            Value::List(l) => {
                let mut seq = s.serialize_seq(Some(l.len()))?;
                for v in l {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Dict(d) => {
                let mut map = s.serialize_map(Some(d.len()))?;
                for (k, v) in d {
                    map.serialize_entry(&*String::from_utf8_lossy(k), v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Int(i64::from(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Bytes(v.to_string().into_bytes()),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_string().into_bytes()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Bytes(v.as_bytes().to_vec()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Bytes(v.into_bytes()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Bytes(Vec::new()))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Bytes(Vec::new()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut l = Vec::new();
        while let Some(v) = seq.next_element()? {
            l.push(v);
        }
        Ok(Value::List(l))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut d: Vec<(Vec<u8>, Value)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            let k = k.into_bytes();
            match d.iter_mut().find(|(ek, _)| *ek == k) {
                Some(slot) => slot.1 = v,
                None => d.push((k, v)),
            }
        }
        Ok(Value::Dict(d))
    }
}

/// Fuzz body: decodes arbitrary bytes as bencode, as a length scan and as JSON; whatever decodes
/// must re-encode to the same bytes and agree with the scanner. Panics only on a real bug.
pub fn fuzz_decode(data: &[u8]) {
    let scanned = value_len(data, Limits::NG);
    match decode(data) {
        Ok((v, used)) => {
            assert!(used <= data.len());
            assert_eq!(v.to_bencode(), &data[..used], "canonical re-encoding");
            assert_eq!(scanned, Ok(Some(used)), "scanner agrees with decoder");
            let (depth, items) = v.shape();
            assert!(depth <= Limits::NG.max_depth + 1 && items <= Limits::NG.max_items * 2);
            let mut json = Vec::new();
            v.encode_json(&mut json);
            assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
        }
        Err(e) => match scanned {
            Ok(Some(_)) => panic!("scanner accepted what the decoder refused: {e}"),
            Ok(None) => assert!(e.is_truncated(), "scanner says truncated, decoder says {e}"),
            Err(_) => assert!(!e.is_truncated() || matches!(e, BencodeError::TooDeep { .. })),
        },
    }
    if let Ok(v) = parse_json(data, Limits::NG) {
        let mut out = Vec::new();
        v.encode_json(&mut out);
        let again = parse_json(&out, Limits::NG);
        assert!(again.is_ok(), "re-encoded JSON parses");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &[u8]) -> Result<(Value, usize), BencodeError> {
        decode(s)
    }

    #[test]
    fn decodes_nested_dict_in_order() {
        let (v, n) = d(b"d8:supportsl10:load limite7:command4:pinge").unwrap();
        assert_eq!(n, 42);
        let Value::Dict(pairs) = &v else { panic!() };
        assert_eq!(pairs[0].0, b"supports");
        assert_eq!(pairs[1].0, b"command");
        assert_eq!(v.get("command").and_then(Value::as_str), Some("ping"));
        assert_eq!(
            v.to_bencode(),
            b"d8:supportsl10:load limite7:command4:pinge"
        );
    }

    #[test]
    fn reports_consumed_and_ignores_trailing() {
        let (v, n) = d(b"i42ejunk").unwrap();
        assert_eq!(v, Value::Int(42));
        assert_eq!(n, 4);
        assert_eq!(d(b"0:").unwrap(), (Value::Bytes(vec![]), 2));
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(d(b"i-5e").unwrap().0, Value::Int(-5));
        assert_eq!(d(b"i0e").unwrap().0, Value::Int(0));
        assert_eq!(d(b"i9223372036854775807e").unwrap().0, Value::Int(i64::MAX));
        assert_eq!(
            d(b"i-9223372036854775808e").unwrap().0,
            Value::Int(i64::MIN)
        );
        for bad in [
            &b"i-0e"[..],
            b"i05e",
            b"iee",
            b"i-e",
            b"i+1e",
            b"i1xe",
            b"i 1e",
        ] {
            let e = d(bad).unwrap_err();
            assert!(!e.is_truncated(), "{bad:?}: {e}");
        }
        assert!(matches!(
            d(b"i9223372036854775808e"),
            Err(BencodeError::Overflow { .. })
        ));
        assert!(matches!(
            d(b"i99999999999999999999999e"),
            Err(BencodeError::Overflow { .. })
        ));
    }

    #[test]
    fn strings_are_bounded_by_input() {
        assert!(matches!(
            d(b"99999999999:a"),
            Err(BencodeError::StringTooLong { .. })
        ));
        assert!(matches!(
            d(b"99999999999999999999999:a"),
            Err(BencodeError::Overflow { .. })
        ));
        assert!(d(b"05:abcde").is_err());
        assert!(d(b"-1:a").is_err());
        assert!(d(b"3:ab").unwrap_err().is_truncated());
    }

    #[test]
    fn truncation_is_distinguished() {
        for t in [
            &b"d7:command4:ping"[..],
            b"d",
            b"l",
            b"i12",
            b"d7:comm",
            b"d7:command",
        ] {
            assert!(d(t).unwrap_err().is_truncated(), "{t:?}");
            assert_eq!(value_len(t, Limits::NG), Ok(None), "{t:?}");
        }
    }

    #[test]
    fn dict_keys_must_be_strings() {
        assert!(matches!(
            d(b"di5e4:pinge"),
            Err(BencodeError::KeyNotString { .. })
        ));
        assert!(value_len(b"di5e4:pinge", Limits::NG).is_err());
        // A key without a value.
        assert!(d(b"d3:fooe").is_err());
        assert!(value_len(b"d3:fooe", Limits::NG).is_err());
    }

    #[test]
    fn depth_limit_no_stack_overflow() {
        let mut deep = vec![b'l'; 100_000];
        deep.extend(vec![b'e'; 100_000]);
        assert!(matches!(d(&deep), Err(BencodeError::TooDeep { .. })));
        assert!(matches!(
            value_len(&deep, Limits::NG),
            Err(BencodeError::TooDeep { .. })
        ));
        let ok = [vec![b'l'; 32], vec![b'e'; 32]].concat();
        assert!(d(&ok).is_ok());
        let too = [vec![b'l'; 33], vec![b'e'; 33]].concat();
        assert!(d(&too).is_err());
        let deep_json = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
        assert!(parse_json(&deep_json, Limits::NG).is_err());
    }

    #[test]
    fn item_limit() {
        let mut many = b"l".to_vec();
        for _ in 0..70_000 {
            many.extend_from_slice(b"i1e");
        }
        many.push(b'e');
        assert!(matches!(d(&many), Err(BencodeError::TooManyItems { .. })));
        assert!(matches!(
            value_len(&many, Limits::NG),
            Err(BencodeError::TooManyItems { .. })
        ));
    }

    #[test]
    fn json_round_trip_keeps_order() {
        let v = parse_json(
            br#"{"z":1,"a":["x",-2],"m":{"k":"v"},"t":true,"n":null}"#,
            Limits::NG,
        )
        .unwrap();
        let mut out = Vec::new();
        v.encode_json(&mut out);
        assert_eq!(
            out,
            br#"{"z":1,"a":["x",-2],"m":{"k":"v"},"t":1,"n":""}"#.to_vec()
        );
        let dup = parse_json(br#"{"command":"ping","command":"list"}"#, Limits::NG).unwrap();
        assert_eq!(dup.get("command").and_then(Value::as_str), Some("list"));
        assert!(parse_json(br#"{"command":"ping"} junk"#, Limits::NG).is_err());
        let big = parse_json(br#"{"a":1e999}"#, Limits::NG);
        assert!(big.is_err());
    }

    #[test]
    fn serde_json_value_conversion() {
        let v = Value::dict()
            .with("result", "ok")
            .with("n", 5i64)
            .with("l", vec![Value::from("a")]);
        let j = v.to_json_value();
        assert_eq!(j["result"], "ok");
        assert_eq!(Value::from_json_value(&j).get("n"), Some(&Value::Int(5)));
    }

    #[test]
    fn encode_negative_and_min() {
        assert_eq!(Value::Int(i64::MIN).to_bencode(), b"i-9223372036854775808e");
        assert_eq!(Value::Int(-3).to_bencode(), b"i-3e");
        assert_eq!(Value::Int(0).to_bencode(), b"i0e");
    }

    #[test]
    fn fuzz_corpus() {
        let corpus: &[&[u8]] = &[
            b"",
            b"d",
            b"e",
            b"i-0e",
            b"i00e",
            b"d7:command4:pinge",
            b"d7:command4:ping",
            b"l",
            b"le",
            b"lle",
            b"d1:ad1:bl1:ceee",
            b"99999999999999999999:",
            b"4294967296:x",
            b"18446744073709551616:x",
            b"0:",
            b"d0:0:e",
            b"di1ei2ee",
            b"{\"a\":[1,2,{\"b\":null}]}",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
            b"{\"a\":\"\\ud800\"}",
            b"i9223372036854775807e",
            b"i-9223372036854775809e",
        ];
        for c in corpus {
            fuzz_decode(c);
        }
        fuzz_decode(&[b'l'; 100_000]);
        fuzz_decode(&[b'd'; 100_000]);
        fuzz_decode(&[vec![b'['; 10_000], vec![b']'; 10_000]].concat());
    }
}
