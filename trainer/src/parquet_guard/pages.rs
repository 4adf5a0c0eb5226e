//! The page walk: every page header of a column chunk read with the strict reader (so the
//! parquet crate later reads the same header) and checked before the crate reads the page: its
//! sizes within the chunk and under the caps, snappy's own length claim equal to the header's,
//! the value counts adding up to the chunk's, the encodings ones whose decoders size nothing by
//! counts inside the page.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::compact::{Error, Reader, Wire};
use super::footer::{BYTE_ARRAY, ChunkSpec, FIXED_LEN_BYTE_ARRAY, Leaf, SNAPPY};

/// The most one page may decode to (writers cut pages at about 1 MB).
pub const MAX_PAGE_BYTES: u64 = 256 << 20;
/// The longest page header read (statistics in it are what make it long).
const MAX_HEADER_BYTES: u64 = 16 << 20;
/// Snappy's largest expansion: its longest copy, 3 bytes, writes at most 64.
const SNAPPY_EXPANSION: u64 = 22;

const DATA_PAGE: i32 = 0;
const INDEX_PAGE: i32 = 1;
const DICTIONARY_PAGE: i32 = 2;
const DATA_PAGE_V2: i32 = 3;
const ENCODINGS: [&str; 10] = [
    "PLAIN",
    "GROUP_VAR_INT",
    "PLAIN_DICTIONARY",
    "RLE",
    "BIT_PACKED",
    "DELTA_BINARY_PACKED",
    "DELTA_LENGTH_BYTE_ARRAY",
    "DELTA_BYTE_ARRAY",
    "RLE_DICTIONARY",
    "BYTE_STREAM_SPLIT",
];

/// What a chunk's pages hold, for the memory bounds.
#[derive(Debug, Default, Clone)]
pub(super) struct Pages {
    /// The dictionary page's decoded size and entry count.
    pub dict: Option<(u64, u64)>,
    /// Values (levels, nulls included) in dictionary-encoded data pages, and in the others.
    pub dict_values: u64,
    pub plain_values: u64,
    /// Decoded bytes of the data pages that are not dictionary-encoded.
    pub plain_bytes: u64,
    /// The largest decoded page.
    pub max_page: u64,
}

#[derive(Debug, Default)]
struct Header {
    kind: Option<i32>,
    uncompressed: Option<i32>,
    compressed: Option<i32>,
    /// num_values, encoding, definition and repetition level encodings.
    v1: Option<[i32; 4]>,
    /// num_values, encoding.
    dict: Option<[i32; 2]>,
    /// num_values, num_nulls, num_rows, encoding, definition and repetition level bytes.
    v2: Option<([i32; 6], bool)>,
    index: bool,
}

type Result<T> = std::result::Result<T, String>;

fn parse_header(buf: &[u8]) -> std::result::Result<(Header, usize), Error> {
    let mut r = Reader::strict(buf);
    let mut h = Header::default();
    let mut last = 0;
    while let Some((id, wire)) = r.field(&mut last)? {
        match id {
            1..=4 => {
                r.expect(id, wire, Wire::I32)?;
                let v = Some(r.i32()?);
                match id {
                    1 => h.kind = v,
                    2 => h.uncompressed = v,
                    3 => h.compressed = v,
                    _ => {}
                }
            }
            5 => {
                r.expect(id, wire, Wire::Struct)?;
                h.v1 = Some(ints::<4>(&mut r, &[])?.0);
            }
            6 => {
                r.expect(id, wire, Wire::Struct)?;
                r.skip(Wire::Struct)?;
                h.index = true;
            }
            7 => {
                r.expect(id, wire, Wire::Struct)?;
                h.dict = Some(ints::<2>(&mut r, &[3])?.0);
            }
            8 => {
                r.expect(id, wire, Wire::Struct)?;
                let (v, flag) = ints::<6>(&mut r, &[7])?;
                h.v2 = Some((v, flag.unwrap_or(true)));
            }
            _ => r.skip(wire)?,
        }
    }
    Ok((h, r.pos()))
}

/// A struct whose fields 1..=N are required i32s and whose fields in `bools` are bools (the
/// last one's value returned); the parquet crate skips every other field by its wire type.
fn ints<const N: usize>(r: &mut Reader, bools: &[i16]) -> std::result::Result<([i32; N], Option<bool>), Error> {
    let mut out = [None; N];
    let mut flag = None;
    let mut last = 0;
    while let Some((id, wire)) = r.field(&mut last)? {
        match usize::try_from(id) {
            Ok(i @ 1..) if i <= N => {
                r.expect(id, wire, Wire::I32)?;
                out[i - 1] = Some(r.i32()?);
            }
            _ if bools.contains(&id) => {
                r.expect(id, wire, Wire::True)?;
                flag = Some(wire == Wire::True);
            }
            _ => r.skip(wire)?,
        }
    }
    let mut values = [0; N];
    for (v, o) in values.iter_mut().zip(out) {
        *v = o.ok_or_else(|| Error::Bad("a page header without a required field".into()))?;
    }
    Ok((values, flag))
}

fn read_at(file: &File, at: u64, len: u64) -> Result<Vec<u8>> {
    let mut f = file;
    let mut buf = vec![0; len as usize];
    f.seek(SeekFrom::Start(at))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read {len} bytes at {at}: {e}"))?;
    Ok(buf)
}

/// Reads the page header at `at`, within `avail` bytes: first 4 KiB, more while it runs on.
fn read_header(file: &File, at: u64, avail: u64) -> Result<(Header, u64)> {
    let most = avail.min(MAX_HEADER_BYTES);
    let mut want = most.min(4096);
    loop {
        let buf = read_at(file, at, want)?;
        match parse_header(&buf) {
            Ok((h, used)) => return Ok((h, used as u64)),
            Err(Error::Eof) if want < most => want = (want * 16).min(most),
            Err(Error::Eof) => return Err(format!("the page header at {at} runs past its column chunk")),
            Err(Error::Bad(s)) => return Err(format!("the page header at {at}: {s}")),
        }
    }
}

fn encoding_name(e: i32) -> String {
    usize::try_from(e)
        .ok()
        .and_then(|i| ENCODINGS.get(i))
        .map_or_else(|| format!("encoding {e}"), |s| (*s).to_owned())
}

/// Walks a chunk's pages.
pub(super) fn walk(file: &File, c: &ChunkSpec, leaf: &Leaf) -> Result<Pages> {
    let end = c.start + c.len;
    let mut pos = c.start;
    let mut pages = Pages::default();
    let mut values = 0u64;
    let mut seen_data = false;
    while pos < end {
        let (h, used) = read_header(file, pos, end - pos)?;
        let at = pos;
        pos += used;
        let page = page(&h, file, pos, end - pos, c, leaf).map_err(|e| format!("the page at {at}: {e}"))?;
        pos += page.compressed;
        match page.kind {
            Kind::Index => {}
            Kind::Dictionary(n) => {
                if seen_data || pages.dict.is_some() {
                    return Err(format!("a second or late dictionary page at {at}"));
                }
                pages.dict = Some((page.decoded, n));
            }
            Kind::Data { values: n, dictionary } => {
                if dictionary && pages.dict.is_none() {
                    return Err(format!("a dictionary-encoded page at {at} without a dictionary"));
                }
                seen_data = true;
                values += n;
                if values > c.num_values {
                    return Err(format!("pages with more than the chunk's {} values", c.num_values));
                }
                if dictionary {
                    pages.dict_values += n;
                } else {
                    pages.plain_values += n;
                    pages.plain_bytes += page.decoded;
                }
            }
        }
        pages.max_page = pages.max_page.max(page.decoded);
    }
    if values != c.num_values {
        return Err(format!(
            "pages with {values} values where the chunk has {}",
            c.num_values
        ));
    }
    Ok(pages)
}

enum Kind {
    Index,
    Dictionary(u64),
    Data { values: u64, dictionary: bool },
}

struct Page {
    kind: Kind,
    /// Bytes after the header.
    compressed: u64,
    /// What the page decodes to in memory.
    decoded: u64,
}

fn page(h: &Header, file: &File, at: u64, avail: u64, c: &ChunkSpec, leaf: &Leaf) -> Result<Page> {
    let (Some(kind), Some(uncompressed), Some(compressed)) = (h.kind, h.uncompressed, h.compressed) else {
        return Err("a page header without its type or sizes".into());
    };
    let (Ok(uncompressed), Ok(compressed)) = (u64::try_from(uncompressed), u64::try_from(compressed)) else {
        return Err(format!("page sizes {uncompressed} and {compressed}"));
    };
    if compressed > avail {
        return Err(format!("{compressed} bytes where its chunk has {avail} left"));
    }
    let headers = usize::from(h.v1.is_some()) + usize::from(h.dict.is_some()) + usize::from(h.v2.is_some());
    let expected = match kind {
        DATA_PAGE => h.v1.is_some(),
        DICTIONARY_PAGE => h.dict.is_some(),
        DATA_PAGE_V2 => h.v2.is_some(),
        INDEX_PAGE => headers == 0,
        other => return Err(format!("page type {other}")),
    };
    if !expected || headers > 1 || (h.index && kind != INDEX_PAGE) {
        return Err(format!("a page of type {kind} with the headers of another"));
    }
    if kind == INDEX_PAGE {
        return Ok(Page {
            kind: Kind::Index,
            compressed,
            decoded: 0,
        });
    }
    // Levels of a v2 page are stored as they are, before the (maybe compressed) values.
    let (levels, is_compressed) = match h.v2 {
        Some((v, flag)) => {
            let (def, rep) = (i64::from(v[4]), i64::from(v[5]));
            if def < 0 || rep < 0 || def + rep > uncompressed.min(compressed) as i64 {
                return Err(format!(
                    "level byte lengths {def} and {rep} in a page of {compressed} bytes"
                ));
            }
            ((def + rep) as u64, flag)
        }
        None => (0, true),
    };
    let decompresses = c.codec == SNAPPY && is_compressed;
    let decoded = if decompresses { uncompressed } else { compressed };
    if decoded > MAX_PAGE_BYTES {
        return Err(format!("a page of {decoded} bytes (at most {MAX_PAGE_BYTES} are read)"));
    }
    if decompresses {
        if uncompressed > SNAPPY_EXPANSION * compressed + 64 {
            return Err(format!("{compressed} snappy bytes claiming to hold {uncompressed}"));
        }
        check_snappy(file, at + levels, compressed - levels, uncompressed - levels)?;
    }
    let kind = match (h.v1, h.dict, h.v2) {
        (Some([n, encoding, def, rep]), ..) => {
            let n = count(n)?;
            bit_packed_levels(n, def, rep, leaf, decoded)?;
            Kind::Data {
                values: n,
                dictionary: value_encoding(encoding)?,
            }
        }
        (_, Some([n, encoding]), _) => Kind::Dictionary(dictionary(n, encoding, leaf, decoded)?),
        (.., Some((v, _))) => {
            let (n, nulls, rows) = (count(v[0])?, count(v[1])?, count(v[2])?);
            if nulls > n || rows > n {
                return Err(format!("{nulls} nulls and {rows} rows in a page of {n} values"));
            }
            Kind::Data {
                values: n,
                dictionary: value_encoding(v[3])?,
            }
        }
        _ => return Err("a page without its header".into()),
    };
    Ok(Page {
        kind,
        compressed,
        decoded,
    })
}

fn count(n: i32) -> Result<u64> {
    u64::try_from(n).map_err(|_| format!("a count of {n}"))
}

/// True for the dictionary encodings; refuses the encodings whose decoders size buffers by
/// counts read from inside the page (DELTA_LENGTH_BYTE_ARRAY, DELTA_BYTE_ARRAY).
fn value_encoding(e: i32) -> Result<bool> {
    match e {
        2 | 8 => Ok(true),
        0 | 3 | 5 | 9 => Ok(false),
        _ => Err(format!("values in {} (not read)", encoding_name(e))),
    }
}

/// Levels in the deprecated BIT_PACKED encoding have no length of their own: the reader slices
/// `ceil(values × width / 8)` bytes, which must be there.
fn bit_packed_levels(n: u64, def: i32, rep: i32, leaf: &Leaf, decoded: u64) -> Result<()> {
    let width = |max: u32| u64::from(32 - max.leading_zeros());
    let mut need = 0u64;
    for (enc, max) in [(rep, leaf.max_rep), (def, leaf.max_def)] {
        if max > 0 && enc == 4 {
            need += (n * width(max)).div_ceil(8);
        }
    }
    if need > decoded {
        return Err(format!("{need} bytes of bit-packed levels in a page of {decoded}"));
    }
    Ok(())
}

/// A dictionary page's entry count, checked against the bytes that must hold the entries.
fn dictionary(n: i32, encoding: i32, leaf: &Leaf, decoded: u64) -> Result<u64> {
    if !matches!(encoding, 0 | 2) {
        return Err(format!("a dictionary in {}", encoding_name(encoding)));
    }
    let n = count(n)?;
    let bits_each: u64 = match leaf.physical {
        0 => 1,
        1 | 4 => 32,
        2 | 5 => 64,
        3 => 96,
        BYTE_ARRAY => 32,
        FIXED_LEN_BYTE_ARRAY => 8 * leaf.type_length as u64,
        _ => 8,
    };
    if n.saturating_mul(bits_each) > decoded.saturating_mul(8) {
        return Err(format!("a dictionary of {n} entries in {decoded} bytes"));
    }
    Ok(n)
}

/// Snappy's stream starts with its decoded length: it must be the page's.
fn check_snappy(file: &File, at: u64, len: u64, expected: u64) -> Result<()> {
    if expected == 0 {
        // The reader decompresses nothing then.
        return Ok(());
    }
    let head = read_at(file, at, len.min(5))?;
    let mut r = Reader::strict(&head);
    let claimed = r
        .varint()
        .map_err(|_| "a snappy stream without its length".to_owned())?;
    if claimed != expected {
        return Err(format!("a snappy stream of {claimed} bytes in a page of {expected}"));
    }
    Ok(())
}
