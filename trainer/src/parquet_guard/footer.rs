//! The footer: read with the bounded reader into the few fields reading records needs, checked
//! (the schema tree, every count, offset and size against the file), and written again as a
//! canonical footer, the only metadata the parquet crate is given. Statistics, key-value
//! metadata, column orders, page-index offsets and annotations that do not change how a value
//! reads are dropped on the way.

use super::compact::{Error, Reader, Result, Wire, Writer};

/// The largest footer read (a hub shard of a few hundred MB has a footer of a few MB).
pub(super) const MAX_FOOTER_BYTES: u64 = 64 << 20;
/// Schema elements, leaf columns, row groups × columns, and nesting depth refused beyond these.
pub(super) const MAX_SCHEMA_ELEMENTS: usize = 20_000;
pub(super) const MAX_LEAVES: usize = 10_000;
pub(super) const MAX_CHUNKS: usize = 200_000;
pub(super) const MAX_NESTING: usize = 16;
/// A FIXED_LEN_BYTE_ARRAY's length.
const MAX_FIXED_LEN: i32 = 1 << 20;

const PHYSICAL: [&str; 8] = [
    "BOOLEAN",
    "INT32",
    "INT64",
    "INT96",
    "FLOAT",
    "DOUBLE",
    "BYTE_ARRAY",
    "FIXED_LEN_BYTE_ARRAY",
];
pub(super) const BYTE_ARRAY: i32 = 6;
pub(super) const FIXED_LEN_BYTE_ARRAY: i32 = 7;
const CODECS: [&str; 8] = [
    "UNCOMPRESSED",
    "SNAPPY",
    "GZIP",
    "LZO",
    "BROTLI",
    "LZ4",
    "ZSTD",
    "LZ4_RAW",
];
pub(super) const SNAPPY: i32 = 1;

fn bad<T>(what: impl Into<String>) -> Result<T> {
    Err(Error::Bad(what.into()))
}

/// A logical-type annotation that changes how values read.
#[derive(Debug, Clone, Copy)]
enum Logical {
    /// One of the annotations without parameters (string, map, list, enum, date, null, json,
    /// bson, uuid, float16), by its union id.
    Plain(i16),
    Decimal {
        scale: i32,
        precision: i32,
    },
    /// Time (7) or timestamp (8) with its UTC flag and unit (1 ms, 2 µs, 3 ns).
    Time {
        id: i16,
        utc: bool,
        unit: i16,
    },
    Int {
        bits: i8,
        signed: bool,
    },
}

#[derive(Debug, Default)]
struct Element {
    name: String,
    physical: Option<i32>,
    type_length: Option<i32>,
    repetition: Option<i32>,
    num_children: Option<i32>,
    converted: Option<i32>,
    scale: Option<i32>,
    precision: Option<i32>,
    logical: Option<Logical>,
}

#[derive(Debug)]
struct ColumnMeta {
    physical: i32,
    encodings: Vec<i32>,
    path: Vec<String>,
    codec: i32,
    num_values: i64,
    total_uncompressed: i64,
    total_compressed: i64,
    data_page_offset: i64,
    dictionary_page_offset: Option<i64>,
}

#[derive(Debug)]
struct RowGroup {
    columns: Vec<ColumnMeta>,
    total_byte_size: i64,
    num_rows: i64,
}

/// The fields of a footer that reading records needs.
#[derive(Debug)]
pub(super) struct Footer {
    version: i32,
    schema: Vec<Element>,
    num_rows: i64,
    row_groups: Vec<RowGroup>,
}

/// A leaf column: where its values sit in the schema.
#[derive(Debug, Clone)]
pub(super) struct Leaf {
    pub path: Vec<String>,
    pub physical: i32,
    pub type_length: i32,
    pub max_def: u32,
    pub max_rep: u32,
}

/// A column chunk's byte range and what its pages must add up to.
#[derive(Debug, Clone)]
pub(super) struct ChunkSpec {
    pub start: u64,
    pub len: u64,
    pub codec: i32,
    pub num_values: u64,
}

/// What was checked, for the page walk and the limits.
#[derive(Debug)]
pub(super) struct Layout {
    pub leaves: Vec<Leaf>,
    /// Per row group: its rows and its chunks, one per leaf.
    pub groups: Vec<(u64, Vec<ChunkSpec>)>,
    pub num_rows: u64,
}

fn list_of<T>(
    r: &mut Reader,
    max: usize,
    what: &str,
    mut item: impl FnMut(&mut Reader) -> Result<T>,
) -> Result<Vec<T>> {
    let (elem, n) = r.list()?;
    if n > max {
        return bad(format!("{n} {what} (at most {max} are read)"));
    }
    if n > 0 && elem != Wire::Struct {
        return bad(format!("{what} that are not structs"));
    }
    // Not presized: each element is parsed (and must have its required fields) before it is kept.
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(item(r)?);
    }
    Ok(out)
}

fn required<T>(v: Option<T>, what: &str) -> Result<T> {
    v.map_or_else(|| bad(format!("no {what}")), Ok)
}

/// Parses a footer (the thrift `FileMetaData`).
pub(super) fn parse(buf: &[u8]) -> Result<Footer> {
    let mut r = Reader::lenient(buf);
    let (mut version, mut schema, mut num_rows, mut row_groups) = (None, None, None, None);
    let mut chunks = 0usize;
    let mut last = 0;
    while let Some((id, wire)) = r.field(&mut last)? {
        match id {
            1 => {
                r.expect(id, wire, Wire::I32)?;
                version = Some(r.i32()?);
            }
            2 => {
                r.expect(id, wire, Wire::List)?;
                schema = Some(list_of(&mut r, MAX_SCHEMA_ELEMENTS, "schema elements", element)?);
            }
            3 => {
                r.expect(id, wire, Wire::I64)?;
                num_rows = Some(r.i64()?);
            }
            4 => {
                r.expect(id, wire, Wire::List)?;
                row_groups = Some(list_of(&mut r, MAX_CHUNKS, "row groups", |r| {
                    let g = row_group(r)?;
                    chunks += g.columns.len();
                    if chunks > MAX_CHUNKS {
                        return bad(format!("more than {MAX_CHUNKS} column chunks"));
                    }
                    Ok(g)
                })?);
            }
            8 | 9 => return bad("an encrypted footer (encryption is not read)"),
            _ => r.skip(wire)?,
        }
    }
    Ok(Footer {
        version: required(version, "version")?,
        schema: required(schema, "schema")?,
        num_rows: required(num_rows, "row count")?,
        row_groups: required(row_groups, "row groups")?,
    })
}

fn element(r: &mut Reader) -> Result<Element> {
    let mut e = Element::default();
    let mut name = None;
    let mut last = 0;
    while let Some((id, wire)) = r.field(&mut last)? {
        let int = |r: &mut Reader| -> Result<Option<i32>> {
            r.expect(id, wire, Wire::I32)?;
            Ok(Some(r.i32()?))
        };
        match id {
            1 => e.physical = int(r)?,
            2 => e.type_length = int(r)?,
            3 => e.repetition = int(r)?,
            4 => {
                r.expect(id, wire, Wire::Binary)?;
                name = Some(r.string()?);
            }
            5 => e.num_children = int(r)?,
            6 => e.converted = int(r)?,
            7 => e.scale = int(r)?,
            8 => e.precision = int(r)?,
            10 => {
                r.expect(id, wire, Wire::Struct)?;
                e.logical = logical(r)?;
            }
            _ => r.skip(wire)?,
        }
    }
    e.name = required(name, "name of a schema element")?;
    Ok(e)
}

/// The `LogicalType` union; `None` for the annotations that do not change how values read.
fn logical(r: &mut Reader) -> Result<Option<Logical>> {
    let mut last = 0;
    let Some((id, wire)) = r.field(&mut last)? else {
        return bad("an empty logical type");
    };
    r.expect(id, wire, Wire::Struct)?;
    let out = match id {
        1..=4 | 6 | 11..=15 => {
            r.skip(Wire::Struct)?;
            Some(Logical::Plain(id))
        }
        5 => {
            let (mut scale, mut precision) = (None, None);
            struct_fields(r, |r, id, wire| {
                r.expect(id, wire, Wire::I32)?;
                match id {
                    1 => scale = Some(r.i32()?),
                    2 => precision = Some(r.i32()?),
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            Some(Logical::Decimal {
                scale: required(scale, "decimal scale")?,
                precision: required(precision, "decimal precision")?,
            })
        }
        7 | 8 => {
            let (mut utc, mut unit) = (None, None);
            struct_fields(r, |r, fid, wire| {
                match fid {
                    1 => {
                        r.expect(fid, wire, Wire::True)?;
                        utc = Some(wire == Wire::True);
                    }
                    2 => {
                        r.expect(fid, wire, Wire::Struct)?;
                        unit = Some(time_unit(r)?);
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            Some(Logical::Time {
                id,
                utc: required(utc, "UTC flag")?,
                unit: required(unit, "time unit")?,
            })
        }
        10 => {
            let (mut bits, mut signed) = (None, None);
            struct_fields(r, |r, fid, wire| {
                match fid {
                    1 => {
                        r.expect(fid, wire, Wire::Byte)?;
                        bits = Some(r.byte()? as i8);
                    }
                    2 => {
                        r.expect(fid, wire, Wire::True)?;
                        signed = Some(wire == Wire::True);
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            let bits = required(bits, "integer width")?;
            if ![8, 16, 32, 64].contains(&bits) {
                return bad(format!("an integer type of {bits} bits"));
            }
            Some(Logical::Int {
                bits,
                signed: required(signed, "integer signedness")?,
            })
        }
        _ => {
            r.skip(Wire::Struct)?;
            None
        }
    };
    if r.field(&mut last)?.is_some() {
        return bad("a logical type with two members");
    }
    Ok(out)
}

fn time_unit(r: &mut Reader) -> Result<i16> {
    let mut last = 0;
    let Some((unit, wire)) = r.field(&mut last)? else {
        return bad("an empty time unit");
    };
    r.expect(unit, wire, Wire::Struct)?;
    r.skip(Wire::Struct)?;
    if !(1..=3).contains(&unit) || r.field(&mut last)?.is_some() {
        return bad("an unknown time unit");
    }
    Ok(unit)
}

/// Reads a struct's fields: `f` reads the ones it knows (returning true), the rest are skipped.
fn struct_fields(r: &mut Reader, mut f: impl FnMut(&mut Reader, i16, Wire) -> Result<bool>) -> Result<()> {
    let mut last = 0;
    while let Some((id, wire)) = r.field(&mut last)? {
        if !f(r, id, wire)? {
            r.skip(wire)?;
        }
    }
    Ok(())
}

fn row_group(r: &mut Reader) -> Result<RowGroup> {
    let (mut columns, mut total_byte_size, mut num_rows) = (None, None, None);
    struct_fields(r, |r, id, wire| {
        match id {
            1 => {
                r.expect(id, wire, Wire::List)?;
                columns = Some(list_of(r, MAX_LEAVES, "columns in a row group", column_chunk)?);
            }
            2 => {
                r.expect(id, wire, Wire::I64)?;
                total_byte_size = Some(r.i64()?);
            }
            3 => {
                r.expect(id, wire, Wire::I64)?;
                num_rows = Some(r.i64()?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(RowGroup {
        columns: required(columns, "columns in a row group")?,
        total_byte_size: required(total_byte_size, "row group size")?,
        num_rows: required(num_rows, "row group row count")?,
    })
}

fn column_chunk(r: &mut Reader) -> Result<ColumnMeta> {
    let mut meta = None;
    struct_fields(r, |r, id, wire| {
        match id {
            1 => return bad("a column chunk in another file (file_path)"),
            3 => {
                r.expect(id, wire, Wire::Struct)?;
                meta = Some(column_meta(r)?);
            }
            8 | 9 => return bad("an encrypted column (encryption is not read)"),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    required(meta, "column metadata")
}

fn column_meta(r: &mut Reader) -> Result<ColumnMeta> {
    let mut ints = [None::<i64>; 12];
    let (mut encodings, mut path) = (None, None);
    struct_fields(r, |r, id, wire| {
        match id {
            1 | 4 => {
                r.expect(id, wire, Wire::I32)?;
                ints[id as usize] = Some(i64::from(r.i32()?));
            }
            5..=7 | 9..=11 => {
                r.expect(id, wire, Wire::I64)?;
                ints[id as usize] = Some(r.i64()?);
            }
            2 => {
                r.expect(id, wire, Wire::List)?;
                let (elem, n) = r.list()?;
                if (n > 0 && elem != Wire::I32) || n > 64 {
                    return bad("a list of encodings that is not a short list of integers");
                }
                encodings = Some((0..n).map(|_| r.i32()).collect::<Result<Vec<_>>>()?);
            }
            3 => {
                r.expect(id, wire, Wire::List)?;
                let (elem, n) = r.list()?;
                if (n > 0 && elem != Wire::Binary) || n > MAX_NESTING + 1 {
                    return bad("a column path that is not a short list of names");
                }
                path = Some((0..n).map(|_| r.string()).collect::<Result<Vec<_>>>()?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let int = |id: usize, what: &str| required(ints[id], what);
    Ok(ColumnMeta {
        physical: int(1, "column type")? as i32,
        encodings: required(encodings, "column encodings")?,
        path: required(path, "column path")?,
        codec: int(4, "column codec")? as i32,
        num_values: int(5, "column value count")?,
        total_uncompressed: int(6, "column size")?,
        total_compressed: int(7, "column compressed size")?,
        data_page_offset: int(9, "data page offset")?,
        dictionary_page_offset: ints[11],
    })
}

struct Frame {
    left: i64,
    def: u32,
    rep: u32,
}

/// Checks the schema tree (flattened depth-first, each group with its child count) and returns
/// its leaves.
fn leaves(schema: &[Element]) -> Result<Vec<Leaf>> {
    let Some((root, rest)) = schema.split_first() else {
        return bad("an empty schema");
    };
    let n = match root.num_children {
        Some(n) if n > 0 => n,
        _ => return bad("a schema without columns"),
    };
    let mut stack = vec![Frame {
        left: i64::from(n),
        def: 0,
        rep: 0,
    }];
    let mut names: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for e in rest {
        let Some(parent) = stack.last_mut() else {
            return bad("more schema elements than the tree holds");
        };
        parent.left -= 1;
        let (def, rep) = match e.repetition {
            Some(0) => (parent.def, parent.rep),
            Some(1) => (parent.def + 1, parent.rep),
            Some(2) => (parent.def + 1, parent.rep + 1),
            other => return bad(format!("field {:?} has repetition {other:?}", e.name)),
        };
        match e.num_children {
            Some(n) if n < 0 => return bad(format!("field {:?} has {n} children", e.name)),
            Some(n) if n > 0 => {
                if stack.len() > MAX_NESTING {
                    return bad(format!("groups nested more than {MAX_NESTING} deep"));
                }
                stack.push(Frame {
                    left: i64::from(n),
                    def,
                    rep,
                });
                names.push(&e.name);
                continue;
            }
            _ => out.push(leaf(e, &names, def, rep)?),
        }
        if out.len() > MAX_LEAVES {
            return bad(format!("more than {MAX_LEAVES} columns"));
        }
        while stack.last().is_some_and(|f| f.left == 0) {
            stack.pop();
            names.pop();
        }
    }
    if !stack.is_empty() {
        return bad("groups that claim more children than the schema has");
    }
    Ok(out)
}

fn leaf(e: &Element, names: &[&str], max_def: u32, max_rep: u32) -> Result<Leaf> {
    let Some(physical) = e.physical else {
        return bad(format!("field {:?} is a group without fields", e.name));
    };
    if !(0..8).contains(&physical) {
        return bad(format!("field {:?} has physical type {physical}", e.name));
    }
    let type_length = e.type_length.unwrap_or(-1);
    if physical == FIXED_LEN_BYTE_ARRAY && !(1..=MAX_FIXED_LEN).contains(&type_length) {
        return bad(format!("field {:?} has a fixed length of {type_length}", e.name));
    }
    let mut path: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    path.push(e.name.clone());
    Ok(Leaf {
        path,
        physical,
        type_length,
        max_def,
        max_rep,
    })
}

/// Checks a parsed footer against the file: `data_end` is where the footer starts (column
/// chunks lie in `4..data_end`).
pub(super) fn check(f: &Footer, data_end: u64) -> Result<Layout> {
    let leaves = leaves(&f.schema)?;
    let total = u64::try_from(f.num_rows).or_else(|_| bad(format!("{} rows", f.num_rows)))?;
    let mut groups = Vec::with_capacity(f.row_groups.len());
    let mut sum = 0u64;
    for (g, rg) in f.row_groups.iter().enumerate() {
        let rows = u64::try_from(rg.num_rows).or_else(|_| bad(format!("row group {g} has {} rows", rg.num_rows)))?;
        if rg.total_byte_size < 0 {
            return bad(format!("row group {g} has a size of {}", rg.total_byte_size));
        }
        sum = sum.saturating_add(rows);
        if rg.columns.len() != leaves.len() {
            return bad(format!(
                "row group {g} has {} columns, the schema {}",
                rg.columns.len(),
                leaves.len()
            ));
        }
        let chunks = rg
            .columns
            .iter()
            .zip(&leaves)
            .map(|(c, leaf)| chunk(c, leaf, rows, data_end).map_err(|e| in_chunk(e, g, leaf)))
            .collect::<Result<Vec<_>>>()?;
        groups.push((rows, chunks));
    }
    if sum != total {
        return bad(format!("row groups with {sum} rows in all, the footer says {total}"));
    }
    Ok(Layout {
        leaves,
        groups,
        num_rows: total,
    })
}

fn in_chunk(e: Error, group: usize, leaf: &Leaf) -> Error {
    match e {
        Error::Bad(s) => Error::Bad(format!("row group {group}, column {}: {s}", leaf.path.join("."))),
        Error::Eof => Error::Eof,
    }
}

fn chunk(c: &ColumnMeta, leaf: &Leaf, rows: u64, data_end: u64) -> Result<ChunkSpec> {
    if c.physical != leaf.physical {
        return bad(format!(
            "type {} where the schema has {}",
            c.physical, PHYSICAL[leaf.physical as usize]
        ));
    }
    if c.path != leaf.path {
        return bad(format!("the path {:?}", c.path.join(".")));
    }
    match c.codec {
        0 | SNAPPY => {}
        n => {
            let name = usize::try_from(n)
                .ok()
                .and_then(|i| CODECS.get(i))
                .unwrap_or(&"an unknown codec");
            return bad(format!(
                "{name} compression (tpv reads uncompressed and snappy parquet)"
            ));
        }
    }
    if let Some(e) = c.encodings.iter().find(|e| !matches!(e, 0 | 2..=9)) {
        return bad(format!("unknown encoding {e}"));
    }
    let num_values = u64::try_from(c.num_values).or_else(|_| bad(format!("{} values", c.num_values)))?;
    if (leaf.max_rep == 0 && num_values != rows) || num_values < rows {
        return bad(format!("{num_values} values in a row group of {rows} rows"));
    }
    let offset = |v: i64, what: &str| match u64::try_from(v) {
        Ok(v) if (4..data_end).contains(&v) => Ok(v),
        _ => bad(format!("{what} {v} outside the data (4..{data_end})")),
    };
    let data = offset(c.data_page_offset, "data page offset")?;
    let start = match c.dictionary_page_offset {
        Some(d) => {
            let d = offset(d, "dictionary page offset")?;
            if d >= data {
                return bad(format!("dictionary page offset {d} not before the data pages ({data})"));
            }
            d
        }
        None => data,
    };
    if c.total_uncompressed < 0 {
        return bad(format!("an uncompressed size of {}", c.total_uncompressed));
    }
    let len = u64::try_from(c.total_compressed).or_else(|_| bad(format!("a size of {}", c.total_compressed)))?;
    match start.checked_add(len) {
        Some(end) if end <= data_end && data < end => {}
        _ => {
            return bad(format!(
                "{len} bytes from offset {start}, past the data (which ends at {data_end})"
            ));
        }
    }
    Ok(ChunkSpec {
        start,
        len,
        codec: c.codec,
        num_values,
    })
}

/// The canonical footer of a checked one: what the parquet crate parses instead of the file's.
pub(super) fn encode(f: &Footer) -> Vec<u8> {
    let mut w = Writer::default();
    w.i32(1, f.version);
    w.list(2, Wire::Struct, f.schema.len());
    for e in &f.schema {
        w.open();
        encode_element(&mut w, e);
        w.end();
    }
    w.i64(3, f.num_rows);
    w.list(4, Wire::Struct, f.row_groups.len());
    for rg in &f.row_groups {
        w.open();
        w.list(1, Wire::Struct, rg.columns.len());
        for c in &rg.columns {
            w.open();
            w.i64(2, c.dictionary_page_offset.unwrap_or(c.data_page_offset));
            w.begin(3);
            encode_meta(&mut w, c);
            w.end();
            w.end();
        }
        w.i64(2, rg.total_byte_size);
        w.i64(3, rg.num_rows);
        w.end();
    }
    w.end();
    w.finish()
}

fn encode_element(w: &mut Writer, e: &Element) {
    let opt = |w: &mut Writer, id: i16, v: Option<i32>| {
        if let Some(v) = v {
            w.i32(id, v);
        }
    };
    opt(w, 1, e.physical);
    opt(w, 2, e.type_length);
    opt(w, 3, e.repetition);
    w.binary(4, e.name.as_bytes());
    opt(w, 5, e.num_children);
    opt(w, 6, e.converted);
    opt(w, 7, e.scale);
    opt(w, 8, e.precision);
    let Some(logical) = e.logical else { return };
    w.begin(10);
    match logical {
        Logical::Plain(id) => {
            w.begin(id);
            w.end();
        }
        Logical::Decimal { scale, precision } => {
            w.begin(5);
            w.i32(1, scale);
            w.i32(2, precision);
            w.end();
        }
        Logical::Time { id, utc, unit } => {
            w.begin(id);
            w.bool(1, utc);
            w.begin(2);
            w.begin(unit);
            w.end();
            w.end();
            w.end();
        }
        Logical::Int { bits, signed } => {
            w.begin(10);
            w.byte(1, bits);
            w.bool(2, signed);
            w.end();
        }
    }
    w.end();
}

fn encode_meta(w: &mut Writer, c: &ColumnMeta) {
    w.i32(1, c.physical);
    w.list(2, Wire::I32, c.encodings.len());
    for &e in &c.encodings {
        w.elem_i32(e);
    }
    w.list(3, Wire::Binary, c.path.len());
    for p in &c.path {
        w.elem_binary(p.as_bytes());
    }
    w.i32(4, c.codec);
    w.i64(5, c.num_values);
    w.i64(6, c.total_uncompressed);
    w.i64(7, c.total_compressed);
    w.i64(9, c.data_page_offset);
    if let Some(d) = c.dictionary_page_offset {
        w.i64(11, d);
    }
}
