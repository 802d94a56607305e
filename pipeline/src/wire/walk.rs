//! The walker: one pass over a protobuf encoding, guided by a [`Schema`], that validates the
//! encoding the way prost's decoder would and counts items, without allocating.

use std::fmt;

use super::schema::{
    Action, END_GROUP, FIXED32, FIXED64, LEN, START_GROUP, Schema, VARINT, action,
};

/// How deeply messages may nest, as in prost (`prost::RECURSION_LIMIT`): the fields of the
/// top-level request are read with this budget, and each nested message (and each group in an
/// unknown field) takes one from it.
pub(super) const RECURSION_LIMIT: u32 = 100;

/// Why an encoding was rejected, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fail {
    pub(super) reason: &'static str,
    /// The message type being read.
    pub(super) message: &'static str,
    /// The field being read, or 0 when the failure is in a field key.
    pub(super) field: u32,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field == 0 {
            write!(f, "{} (in {})", self.reason, self.message)
        } else {
            write!(f, "{} ({} field {})", self.reason, self.message, self.field)
        }
    }
}

pub(super) const INVALID_VARINT: &str = "truncated or overlong varint";
pub(super) const UNDERFLOW: &str = "length exceeds the enclosing message";
const INVALID_KEY: &str = "invalid field key";
const WRONG_WIRE_TYPE: &str = "wrong wire type for the field";
const INVALID_UTF8: &str = "string is not valid UTF-8";
const TOO_DEEP: &str = "messages nested deeper than the recursion limit of 100";
const UNMATCHED_END_GROUP: &str = "unmatched end-group tag";

/// Reads a base-128 varint of at most 10 bytes whose tenth byte, if any, is 0 or 1 (anything
/// else overflows 64 bits, which prost rejects).
#[inline(always)]
pub(super) fn varint(buf: &mut &[u8]) -> Result<u64, &'static str> {
    match buf.first() {
        Some(&byte) if byte < 0x80 => {
            *buf = &buf[1..];
            Ok(u64::from(byte))
        }
        _ => {
            let (value, len) = varint_multi_byte(buf)?;
            *buf = &buf[len..];
            Ok(value)
        }
    }
}

/// The value and length of a varint that is not a single byte. Takes and returns plain
/// values so that the caller's cursor stays in registers.
#[inline(never)]
fn varint_multi_byte(bytes: &[u8]) -> Result<(u64, usize), &'static str> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return Err(INVALID_VARINT);
            }
            return Ok((value, i + 1));
        }
    }
    Err(INVALID_VARINT)
}

/// Reads a field key, returning (field number, wire type). Rejects what prost's `decode_key`
/// rejects: keys above `u32::MAX`, wire types 6 and 7, and field number 0.
#[inline(always)]
pub(super) fn key(buf: &mut &[u8]) -> Result<(u32, u32), &'static str> {
    let key = varint(buf)?;
    if key > u64::from(u32::MAX) {
        return Err(INVALID_KEY);
    }
    let wire_type = (key & 7) as u32;
    let field = (key >> 3) as u32;
    if wire_type > FIXED32 || field == 0 {
        return Err(INVALID_KEY);
    }
    Ok((field, wire_type))
}

/// Reads a length-delimited value: its length, then that many bytes.
#[inline(always)]
pub(super) fn length_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let len = varint(buf)?;
    let bytes: &'a [u8] = buf;
    if len > bytes.len() as u64 {
        return Err(UNDERFLOW);
    }
    let (value, rest) = bytes.split_at(len as usize);
    *buf = rest;
    Ok(value)
}

#[inline(always)]
fn advance(buf: &mut &[u8], n: usize) -> Result<(), &'static str> {
    match buf.get(n..) {
        Some(rest) => {
            *buf = rest;
            Ok(())
        }
        None => Err(UNDERFLOW),
    }
}

/// Skips an unknown field whose key has been read, as prost's `skip_field` does: a group is
/// skipped up to its matching end-group key, each level of nesting taking one from `budget`,
/// and any unknown field read with an exhausted budget is rejected. Returns what follows it.
pub(super) fn skip(
    field: u32,
    wire_type: u32,
    mut buf: &[u8],
    budget: u32,
) -> Result<&[u8], &'static str> {
    skip_in(field, wire_type, &mut buf, budget)?;
    Ok(buf)
}

fn skip_in(field: u32, wire_type: u32, buf: &mut &[u8], budget: u32) -> Result<(), &'static str> {
    if budget == 0 {
        return Err(TOO_DEEP);
    }
    match wire_type {
        VARINT => varint(buf).map(|_| ()),
        FIXED64 => advance(buf, 8),
        LEN => length_delimited(buf).map(|_| ()),
        START_GROUP => loop {
            let (inner_field, inner_wire_type) = key(buf)?;
            if inner_wire_type == END_GROUP {
                return if inner_field == field {
                    Ok(())
                } else {
                    Err(UNMATCHED_END_GROUP)
                };
            }
            skip_in(inner_field, inner_wire_type, buf, budget - 1)?;
        },
        FIXED32 => advance(buf, 4),
        _ => Err(UNMATCHED_END_GROUP),
    }
}

/// Walks the fields of one message of type `schema` encoded in `buf`, returning the number of
/// items (spans, data points, log records) in it.
///
/// With `VALIDATE` it checks everything prost's decoder checks and walks every nested message.
/// Without it the input is trusted to be valid (it was validated on the way in) and only the
/// messages that can hold items are entered: this is the cheap count used when splitting.
/// `budget` is the recursion budget for this message's fields (see [`RECURSION_LIMIT`]).
pub(super) fn walk<const VALIDATE: bool>(
    schema: &'static Schema,
    mut buf: &[u8],
    budget: u32,
) -> Result<usize, Fail> {
    let mut items = 0;
    // The oneof member seen last, and the items inside it.
    let mut oneof_field = 0;
    let mut oneof_items = 0;
    while let Some(&first) = buf.first() {
        let (field, wire_type, action) = if first < 0x80 {
            buf = &buf[1..];
            let (field, wire_type) = (u32::from(first >> 3), u32::from(first & 7));
            (field, wire_type, schema.one_byte_keys[usize::from(first)])
        } else {
            let (field, wire_type) = key(&mut buf).map_err(|reason| Fail {
                reason,
                message: schema.name,
                field: 0,
            })?;
            (field, wire_type, action(schema.kind(field), wire_type))
        };
        let fail = |reason| Fail {
            reason,
            message: schema.name,
            field,
        };
        match action {
            Action::InvalidKey => return Err(fail(INVALID_KEY)),
            Action::WrongWireType => return Err(fail(WRONG_WIRE_TYPE)),
            Action::Skip => buf = skip(field, wire_type, buf, budget).map_err(fail)?,
            Action::Varint => {
                varint(&mut buf).map_err(fail)?;
            }
            Action::Fixed32 => advance(&mut buf, 4).map_err(fail)?,
            Action::Fixed64 => advance(&mut buf, 8).map_err(fail)?,
            Action::Bytes => {
                length_delimited(&mut buf).map_err(fail)?;
            }
            Action::String => {
                let value = length_delimited(&mut buf).map_err(fail)?;
                if VALIDATE && !is_utf8(value) {
                    return Err(fail(INVALID_UTF8));
                }
            }
            Action::PackedVarint => {
                let mut packed = length_delimited(&mut buf).map_err(fail)?;
                if VALIDATE {
                    while !packed.is_empty() {
                        varint(&mut packed).map_err(fail)?;
                    }
                }
            }
            Action::PackedFixed64 => {
                let packed = length_delimited(&mut buf).map_err(fail)?;
                if packed.len() % 8 != 0 {
                    return Err(fail(UNDERFLOW));
                }
            }
            Action::Message(child) | Action::Item(child) | Action::OneofMessage(child) => {
                let value = length_delimited(&mut buf).map_err(fail)?;
                if budget == 0 {
                    return Err(fail(TOO_DEEP));
                }
                let inner = if VALIDATE || child.has_items {
                    walk::<VALIDATE>(child, value, budget - 1)?
                } else {
                    0
                };
                match action {
                    Action::Item(_) => items += 1,
                    Action::OneofMessage(_) if field == oneof_field => oneof_items += inner,
                    Action::OneofMessage(_) => {
                        oneof_field = field;
                        oneof_items = inner;
                    }
                    _ => items += inner,
                }
            }
        }
    }
    Ok(items + oneof_items)
}

/// Whether `bytes` is UTF-8, checking the common all-ASCII case a word at a time first.
#[inline(always)]
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}
