//! Reading and writing the protobuf encoding of OTLP data in place, without decoding it.
//!
//! The sampling processors only look at a few fields of each span or log record (the trace
//! id, times, status, some attributes) and keep or drop items whole, so they work on the
//! encoding: these are the primitives they share. Every length is checked: malformed input
//! gives [`Malformed`], never a panic.

pub const WIRE_VARINT: u8 = 0;
pub const WIRE_I64: u8 = 1;
pub const WIRE_LEN: u8 = 2;
pub const WIRE_I32: u8 = 5;

/// An encoding the walker cannot follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf: {0}")]
pub struct Malformed(pub &'static str);

/// One field of a message: its number, wire type, the whole field (tag included) and its
/// payload (the bytes inside the length prefix for length-delimited fields, the value bytes
/// otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub number: u32,
    pub wire_type: u8,
    pub whole: &'a [u8],
    pub payload: &'a [u8],
}

pub fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos).ok_or(Malformed("truncated varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed("varint longer than 10 bytes"))
}

/// The fields of one message, in order.
pub struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

pub fn fields(bytes: &[u8]) -> Fields<'_> {
    Fields { bytes, pos: 0 }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let result = self.read_field();
        if result.is_err() {
            // Stop after the first error: the rest cannot be framed.
            self.pos = self.bytes.len();
        }
        Some(result)
    }
}

impl<'a> Fields<'a> {
    fn read_field(&mut self) -> Result<Field<'a>, Malformed> {
        let start = self.pos;
        let tag = read_varint(self.bytes, &mut self.pos)?;
        let number = u32::try_from(tag >> 3).map_err(|_| Malformed("field number too large"))?;
        let wire_type = (tag & 7) as u8;
        let payload_start;
        match wire_type {
            WIRE_VARINT => {
                payload_start = self.pos;
                read_varint(self.bytes, &mut self.pos)?;
            }
            WIRE_I64 | WIRE_I32 => {
                payload_start = self.pos;
                self.pos += if wire_type == WIRE_I64 { 8 } else { 4 };
            }
            WIRE_LEN => {
                let len = read_varint(self.bytes, &mut self.pos)?;
                payload_start = self.pos;
                let len = usize::try_from(len).map_err(|_| Malformed("length too large"))?;
                self.pos = self
                    .pos
                    .checked_add(len)
                    .ok_or(Malformed("length too large"))?;
            }
            _ => return Err(Malformed("unsupported wire type")),
        }
        if self.pos > self.bytes.len() {
            return Err(Malformed("field runs past the end of its message"));
        }
        Ok(Field {
            number,
            wire_type,
            whole: &self.bytes[start..self.pos],
            payload: &self.bytes[payload_start..self.pos],
        })
    }
}

pub fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes a length-delimited field.
pub fn write_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    write_varint(out, (u64::from(number) << 3) | u64::from(WIRE_LEN));
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// An attribute value as it is encoded (`AnyValue`), read without decoding the whole item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    String(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An array or key-value list: its encoding.
    Other(&'a [u8]),
}

pub fn read_any_value(bytes: &[u8]) -> Result<Option<Value<'_>>, Malformed> {
    let mut value = None;
    // A oneof repeated on the wire: the last one wins, as when decoding.
    for field in fields(bytes) {
        let field = field?;
        value = match (field.number, field.wire_type) {
            (1, WIRE_LEN) => Some(Value::String(field.payload)),
            (2, WIRE_VARINT) => Some(Value::Bool(varint_of(field.payload)? != 0)),
            (3, WIRE_VARINT) => Some(Value::Int(varint_of(field.payload)? as i64)),
            (4, WIRE_I64) => Some(Value::Double(f64::from_le_bytes(
                field
                    .payload
                    .try_into()
                    .map_err(|_| Malformed("double is not 8 bytes"))?,
            ))),
            (5 | 6, WIRE_LEN) => Some(Value::Other(field.payload)),
            (7, WIRE_LEN) => Some(Value::Bytes(field.payload)),
            _ => value,
        };
    }
    Ok(value)
}

pub fn varint_of(payload: &[u8]) -> Result<u64, Malformed> {
    read_varint(payload, &mut 0)
}

/// The length of `value` as a varint.
pub fn varint_len(value: u64) -> usize {
    // 7 bits per byte, at least one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// The length of a length-delimited field of `number` holding `payload_len` bytes.
pub fn len_field_len(number: u32, payload_len: usize) -> usize {
    varint_len((u64::from(number) << 3) | u64::from(WIRE_LEN))
        + varint_len(payload_len as u64)
        + payload_len
}

/// Writes the tag and length of a length-delimited field whose payload follows.
pub fn write_len_header(out: &mut Vec<u8>, number: u32, payload_len: usize) {
    write_varint(out, (u64::from(number) << 3) | u64::from(WIRE_LEN));
    write_varint(out, payload_len as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_what_is_written() {
        for value in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            assert_eq!(read_varint(&out, &mut 0), Ok(value));
        }
        for len in [0usize, 5, 127, 128, 70_000] {
            let mut out = Vec::new();
            write_len_field(&mut out, 2, &vec![0; len]);
            assert_eq!(out.len(), len_field_len(2, len));
        }
    }
}
