//! Thrift's compact protocol, read with every count checked against the bytes that are left
//! (so nothing is sized by a claim) and nesting bounded, and written for the canonical footer
//! the parquet crate is given.
//!
//! `strict` readers skip unknown fields exactly as the parquet crate does when it reads a page
//! header straight from the file (it skips a `bool` list element as zero bytes, and refuses sets
//! and maps), so they refuse what the two would read differently: after a header passes here,
//! the crate reads the same fields at the same offsets.

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Error {
    /// The bytes ended inside the message (a bigger buffer may hold it).
    Eof,
    /// The message is malformed.
    Bad(String),
}

pub(super) type Result<T> = std::result::Result<T, Error>;

fn bad<T>(what: impl Into<String>) -> Result<T> {
    Err(Error::Bad(what.into()))
}

/// Wire types of the compact protocol (a field's low nibble; list elements use the same codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wire {
    True,
    False,
    Byte,
    I16,
    I32,
    I64,
    Double,
    Binary,
    List,
    Set,
    Map,
    Struct,
}

impl Wire {
    fn from_nibble(n: u8) -> Result<Self> {
        Ok(match n {
            1 => Self::True,
            2 => Self::False,
            3 => Self::Byte,
            4 => Self::I16,
            5 => Self::I32,
            6 => Self::I64,
            7 => Self::Double,
            8 => Self::Binary,
            9 => Self::List,
            10 => Self::Set,
            11 => Self::Map,
            12 => Self::Struct,
            _ => return bad(format!("unknown thrift type {n}")),
        })
    }

    fn nibble(self) -> u8 {
        match self {
            Self::True => 1,
            Self::False => 2,
            Self::Byte => 3,
            Self::I16 => 4,
            Self::I32 => 5,
            Self::I64 => 6,
            Self::Double => 7,
            Self::Binary => 8,
            Self::List => 9,
            Self::Set => 10,
            Self::Map => 11,
            Self::Struct => 12,
        }
    }

    pub(super) fn is_bool(self) -> bool {
        matches!(self, Self::True | Self::False)
    }
}

/// Structs nested deeper than this are refused (parquet's metadata nests six deep).
const MAX_DEPTH: u32 = 24;
/// List elements and map entries one message may hold in all (a footer of 10,000 row groups of
/// 20 columns with statistics has a few hundred thousand).
pub(super) const MAX_ENTRIES: u64 = 4_000_000;

/// A reader over one buffer.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    entries: u64,
    strict: bool,
}

impl<'a> Reader<'a> {
    /// A reader of a message the parquet crate will not see (the footer: it gets ours).
    pub(super) fn lenient(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            entries: 0,
            strict: false,
        }
    }

    /// A reader of a message the parquet crate reads again (a page header).
    pub(super) fn strict(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            entries: 0,
            strict: true,
        }
    }

    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn byte(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or(Error::Eof)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(Error::Eof);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// An unsigned LEB128 varint of at most 10 bytes that fits in 64 bits.
    pub(super) fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return bad("a varint over 64 bits");
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bad("a varint over 10 bytes")
    }

    pub(super) fn i64(&mut self) -> Result<i64> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub(super) fn i32(&mut self) -> Result<i32> {
        let v = self.i64()?;
        i32::try_from(v).or_else(|_| bad(format!("{v} is out of range for a 32-bit field")))
    }

    fn i16(&mut self) -> Result<i16> {
        let v = self.i64()?;
        i16::try_from(v).or_else(|_| bad(format!("{v} is out of range for a 16-bit field")))
    }

    pub(super) fn binary(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.left() => self.take(n),
            // A length past the end: more bytes may hold it, but never more than a buffer can.
            _ if n <= u64::from(u32::MAX) => Err(Error::Eof),
            _ => bad(format!("a length of {n} bytes")),
        }
    }

    pub(super) fn string(&mut self) -> Result<String> {
        let b = self.binary()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => bad("a name that is not UTF-8"),
        }
    }

    /// The next field of a struct: `None` at its end. `last` is the previous field's id.
    pub(super) fn field(&mut self, last: &mut i16) -> Result<Option<(i16, Wire)>> {
        let b = self.byte()?;
        if b & 0x0f == 0 {
            return Ok(None);
        }
        let wire = Wire::from_nibble(b & 0x0f)?;
        let delta = i16::from(b >> 4);
        let id = if delta == 0 {
            self.i16()?
        } else {
            match last.checked_add(delta) {
                Some(id) => id,
                None => return bad("a field id over 32767"),
            }
        };
        *last = id;
        Ok(Some((id, wire)))
    }

    /// A list's element type and length; the length is checked against the bytes left (every
    /// element takes at least one) and the message's entry budget.
    pub(super) fn list(&mut self) -> Result<(Wire, usize)> {
        let b = self.byte()?;
        if b == 0 {
            return Ok((Wire::Byte, 0));
        }
        let elem = Wire::from_nibble(b & 0x0f)?;
        let n = match b >> 4 {
            15 => self.varint()?,
            n => u64::from(n),
        };
        self.count(n, 1)?;
        Ok((elem, n as usize))
    }

    fn count(&mut self, n: u64, min_bytes: u64) -> Result<()> {
        if n.saturating_mul(min_bytes) > self.left() as u64 {
            // The elements cannot fit: more bytes might hold them only within a buffer's reach.
            return if n <= u64::from(u32::MAX) {
                Err(Error::Eof)
            } else {
                bad(format!("a list of {n} entries"))
            };
        }
        self.entries += n;
        if self.entries > MAX_ENTRIES {
            return bad(format!("more than {MAX_ENTRIES} list entries"));
        }
        Ok(())
    }

    /// Expects `wire` for a field whose type is known.
    pub(super) fn expect(&self, id: i16, wire: Wire, want: Wire) -> Result<()> {
        let ok = wire == want || (want.is_bool() && wire.is_bool());
        if ok {
            Ok(())
        } else {
            bad(format!("field {id} is a {wire:?}, not a {want:?}"))
        }
    }

    /// Skips a field's value of type `wire`.
    pub(super) fn skip(&mut self, wire: Wire) -> Result<()> {
        self.skip_at(wire, 0, false)
    }

    fn skip_at(&mut self, wire: Wire, depth: u32, element: bool) -> Result<()> {
        if depth > MAX_DEPTH {
            return bad("structures nested too deep");
        }
        match wire {
            // A bool field has its value in its type; a bool list element is one byte.
            Wire::True | Wire::False => {
                if element {
                    self.byte()?;
                }
            }
            Wire::Byte => {
                self.byte()?;
            }
            Wire::I16 | Wire::I32 | Wire::I64 => {
                self.varint()?;
            }
            Wire::Double => {
                self.take(8)?;
            }
            Wire::Binary => {
                self.binary()?;
            }
            Wire::List | Wire::Set => {
                if self.strict && wire == Wire::Set {
                    return bad("a set where the parquet reader skips none");
                }
                let (elem, n) = self.list()?;
                if self.strict && elem.is_bool() && n > 0 {
                    return bad("a list of bools, which the parquet reader skips differently");
                }
                for _ in 0..n {
                    self.skip_at(elem, depth + 1, true)?;
                }
            }
            Wire::Map => self.skip_map(depth)?,
            Wire::Struct => {
                let mut last = 0;
                while let Some((_, w)) = self.field(&mut last)? {
                    self.skip_at(w, depth + 1, false)?;
                }
            }
        }
        Ok(())
    }

    fn skip_map(&mut self, depth: u32) -> Result<()> {
        if self.strict {
            return bad("a map where the parquet reader skips none");
        }
        let n = self.varint()?;
        if n == 0 {
            return Ok(());
        }
        self.count(n, 2)?;
        let kv = self.byte()?;
        let (k, v) = (Wire::from_nibble(kv >> 4)?, Wire::from_nibble(kv & 0x0f)?);
        for _ in 0..n {
            self.skip_at(k, depth + 1, true)?;
            self.skip_at(v, depth + 1, true)?;
        }
        Ok(())
    }
}

/// A compact-protocol writer of the few shapes the canonical footer needs.
#[derive(Default)]
pub(super) struct Writer {
    out: Vec<u8>,
    last: Vec<i16>,
    current: i16,
}

impl Writer {
    pub(super) fn finish(self) -> Vec<u8> {
        self.out
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn header(&mut self, id: i16, wire: Wire) {
        let delta = i32::from(id) - i32::from(self.current);
        if (1..=15).contains(&delta) {
            self.out.push(((delta as u8) << 4) | wire.nibble());
        } else {
            self.out.push(wire.nibble());
            self.zigzag(i64::from(id));
        }
        self.current = id;
    }

    pub(super) fn i32(&mut self, id: i16, v: i32) {
        self.header(id, Wire::I32);
        self.zigzag(i64::from(v));
    }

    pub(super) fn i64(&mut self, id: i16, v: i64) {
        self.header(id, Wire::I64);
        self.zigzag(v);
    }

    pub(super) fn byte(&mut self, id: i16, v: i8) {
        self.header(id, Wire::Byte);
        self.out.push(v as u8);
    }

    pub(super) fn bool(&mut self, id: i16, v: bool) {
        self.header(id, if v { Wire::True } else { Wire::False });
    }

    pub(super) fn binary(&mut self, id: i16, v: &[u8]) {
        self.header(id, Wire::Binary);
        self.bytes(v);
    }

    fn bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.out.extend_from_slice(v);
    }

    /// Opens a struct-valued field; [`Self::end`] closes it.
    pub(super) fn begin(&mut self, id: i16) {
        self.header(id, Wire::Struct);
        self.open();
    }

    /// Opens a struct that is a list element (no field header).
    pub(super) fn open(&mut self) {
        self.last.push(self.current);
        self.current = 0;
    }

    pub(super) fn end(&mut self) {
        self.out.push(0);
        self.current = self.last.pop().unwrap_or(0);
    }

    /// A list field's header: `n` elements of type `elem` follow.
    pub(super) fn list(&mut self, id: i16, elem: Wire, n: usize) {
        self.header(id, Wire::List);
        if n < 15 {
            self.out.push(((n as u8) << 4) | elem.nibble());
        } else {
            self.out.push(0xf0 | elem.nibble());
            self.varint(n as u64);
        }
    }

    /// A list element: a zig-zag integer.
    pub(super) fn elem_i32(&mut self, v: i32) {
        self.zigzag(i64::from(v));
    }

    /// A list element: a binary.
    pub(super) fn elem_binary(&mut self, v: &[u8]) {
        self.bytes(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_messages_read_back() {
        let mut w = Writer::default();
        w.i32(1, -7);
        w.list(2, Wire::Binary, 16);
        for i in 0..16 {
            w.elem_binary(format!("n{i}").as_bytes());
        }
        w.begin(40);
        w.i64(1, i64::MIN);
        w.bool(2, true);
        w.end();
        w.byte(41, -3);
        w.end();
        let bytes = w.finish();
        let mut r = Reader::strict(&bytes);
        let mut last = 0;
        assert_eq!(r.field(&mut last).unwrap(), Some((1, Wire::I32)));
        assert_eq!(r.i32().unwrap(), -7);
        assert_eq!(r.field(&mut last).unwrap(), Some((2, Wire::List)));
        assert_eq!(r.list().unwrap(), (Wire::Binary, 16));
        for i in 0..16 {
            assert_eq!(r.binary().unwrap(), format!("n{i}").as_bytes());
        }
        assert_eq!(r.field(&mut last).unwrap(), Some((40, Wire::Struct)));
        r.skip(Wire::Struct).unwrap();
        assert_eq!(r.field(&mut last).unwrap(), Some((41, Wire::Byte)));
        assert_eq!(r.byte().unwrap(), (-3i8) as u8);
        assert_eq!(r.field(&mut last).unwrap(), None);
        assert_eq!(r.pos(), bytes.len());
    }

    #[test]
    fn claims_past_the_end_are_refused_before_anything_is_sized() {
        // A list header claiming 2^31 elements in a 7-byte message.
        let bytes = [0x19, 0xfc, 0x80, 0x80, 0x80, 0x80, 0x08];
        let mut r = Reader::lenient(&bytes);
        let mut last = 0;
        assert_eq!(r.field(&mut last).unwrap(), Some((1, Wire::List)));
        assert_eq!(r.list(), Err(Error::Eof));
        // Lengths beyond any buffer are malformed, not "more bytes needed".
        let mut r = Reader::lenient(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(r.binary(), Err(Error::Bad(_))));
        // Varints over 64 bits, deep nesting.
        let mut r = Reader::lenient(&[0xff; 11]);
        assert!(matches!(r.varint(), Err(Error::Bad(_))));
        let deep = [0x1c; 64];
        assert!(matches!(Reader::lenient(&deep).skip(Wire::Struct), Err(Error::Bad(_))));
        // Strict readers refuse what the parquet crate skips differently.
        assert!(matches!(
            Reader::strict(&[0x21, 1, 1]).skip(Wire::List),
            Err(Error::Bad(_))
        ));
        assert!(Reader::lenient(&[0x21, 1, 1]).skip(Wire::List).is_ok());
    }
}
