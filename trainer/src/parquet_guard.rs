//! Parquet from any source (the hub, a user's `--data` file) is untrusted. The parquet crate's
//! record reader trusts its input: a footer list claiming 2^31 entries aborts on allocation, a
//! negative child count or offset panics, a page header's size or snappy's length claim is
//! allocated as it stands. So a file is checked before the crate sizes anything from it:
//!
//! 1. The footer is read with a bounded Thrift reader ([`compact`]): every list and string
//!    length against the bytes left, nesting bounded. Its schema tree, row counts, and every
//!    column chunk's offsets and sizes are checked against the file ([`footer`]), and the crate
//!    parses a canonical footer written from the checked values, never the file's own.
//! 2. Every page header of every column chunk is walked ([`pages`]) and read exactly as the
//!    crate will read it: sizes within the chunk, decoded sizes under [`MAX_PAGE_BYTES`] and
//!    snappy's bound, snappy's length preamble equal to the header's, value counts adding up.
//! 3. The memory one row can take to decode (the pages held, dictionaries, values repeated
//!    within a row) is bounded from those checked numbers before reading; rows per split are
//!    counted from the footer, decoded bytes while reading, both against [`Limits`].
//! 4. Reading runs under `catch_unwind`: a panic left in the crate (such as a dictionary index
//!    past the dictionary's end) becomes [`Refused::Panicked`], naming the file, and is not
//!    printed.
//!
//! The limits, per split (all files of one split, or one `--data` file): [`DEFAULT_MAX_ROWS`]
//! rows (`TPV_MAX_ROWS`), [`DEFAULT_MAX_DECODED_BYTES`] bytes of decoded records
//! (`TPV_MAX_DECODED_BYTES`); and each file may decode to at most [`DEFAULT_MAX_EXPANSION`]
//! times its own size, or [`EXPANSION_FLOOR`] (`TPV_MAX_EXPANSION`). A record's decoded bytes
//! are its keys and values plus [`FIELD_OVERHEAD`] per field.

mod compact;
mod footer;
mod pages;

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use parquet::basic::{ConvertedType, Repetition, Type as Physical};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::ReaderProperties;
use parquet::file::reader::RowGroupReader;
use parquet::file::serialized_reader::SerializedRowGroupReader;
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};
use parquet::schema::types::{ColumnDescriptor, SchemaDescriptor, Type};
use tpv_shared::tasks::Record;

pub use pages::MAX_PAGE_BYTES;

/// Rows per split unless `TPV_MAX_ROWS` says otherwise: the largest split the registry's tasks
/// read is yahoo_answers_topics' training set, 1.4 M rows (the paper's others have at most a few
/// hundred thousand).
pub const DEFAULT_MAX_ROWS: u64 = 2_000_000;
/// Decoded bytes per split unless `TPV_MAX_DECODED_BYTES` says otherwise: yahoo_answers_topics'
/// training set decodes to about 1.1 GB by this count (an estimate: 0.75 GB of text, 5 fields a
/// row).
pub const DEFAULT_MAX_DECODED_BYTES: u64 = 2 << 30;
/// How many times its own size a file may decode to, unless `TPV_MAX_EXPANSION` says otherwise.
/// Text parquet decodes to 1-5 times its size (snappy and dictionaries of repeated values); a
/// few hundred bytes that decode to a GB are an attack, not a dataset.
pub const DEFAULT_MAX_EXPANSION: u64 = 64;
/// Any file may decode to this much, whatever its size (small files of repeated labels).
pub const EXPANSION_FLOOR: u64 = 64 << 20;
/// Bytes a record field counts beyond its key and value (two `String`s and a map entry).
pub const FIELD_OVERHEAD: u64 = 32;
/// Bytes one decoded value costs the reader beyond its text (its `Field`, levels, buffers).
const VALUE_OVERHEAD: u64 = 64;
/// Bytes a dictionary entry costs the reader beyond its text.
const DICT_ENTRY_OVERHEAD: u64 = 48;
/// DECIMAL precision beyond this is refused (256-bit decimals have 76 digits).
const MAX_DECIMAL_PRECISION: i32 = 76;

/// The limits on what parquet files may decode to. One definition: [`Limits::from_env`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: u64,
    pub max_decoded_bytes: u64,
    pub max_expansion: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: DEFAULT_MAX_ROWS,
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
            max_expansion: DEFAULT_MAX_EXPANSION,
        }
    }
}

impl Limits {
    /// The defaults, each replaced by its environment variable when set (a whole number;
    /// `_` separators allowed).
    pub fn from_env() -> Result<Self, Refused> {
        let get = |var: &'static str, default: u64| match std::env::var(var) {
            Err(_) => Ok(default),
            Ok(v) => match v.trim().replace('_', "").parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(Refused::Setting { var, value: v }),
            },
        };
        Ok(Self {
            max_rows: get("TPV_MAX_ROWS", DEFAULT_MAX_ROWS)?,
            max_decoded_bytes: get("TPV_MAX_DECODED_BYTES", DEFAULT_MAX_DECODED_BYTES)?,
            max_expansion: get("TPV_MAX_EXPANSION", DEFAULT_MAX_EXPANSION)?,
        })
    }

    /// What one file of `len` bytes may decode to, before the split's budget.
    pub fn per_file(&self, len: u64) -> u64 {
        self.max_decoded_bytes
            .min(len.saturating_mul(self.max_expansion).max(EXPANSION_FLOOR))
    }

    fn describe(&self) -> String {
        format!(
            "limits: {} rows (TPV_MAX_ROWS) and {} decoded bytes (TPV_MAX_DECODED_BYTES) per split, and a file \
             decodes to at most {} times its size or {} MiB (TPV_MAX_EXPANSION)",
            self.max_rows,
            self.max_decoded_bytes,
            self.max_expansion,
            EXPANSION_FLOOR >> 20
        )
    }
}

/// What one split has used of its [`Limits`].
#[derive(Debug, Clone)]
pub struct Budget {
    pub limits: Limits,
    rows: u64,
    bytes: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            rows: 0,
            bytes: 0,
        }
    }

    /// Rows and decoded bytes read so far.
    pub fn used(&self) -> (u64, u64) {
        (self.rows, self.bytes)
    }
}

/// Why a parquet file was not read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not a parquet file tpv reads: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("{}: {reason} ({limits})", path.display())]
    OverLimit {
        path: PathBuf,
        reason: String,
        limits: String,
    },
    #[error("{}: {what}: {source}", path.display())]
    Reader {
        path: PathBuf,
        what: String,
        source: parquet::errors::ParquetError,
    },
    /// The parquet crate panicked (caught; the message is not printed by the panic hook).
    #[error("{}: the parquet reader hit an internal error ({message}); the file is refused", path.display())]
    Panicked { path: PathBuf, message: String },
    #[error("{var}={value:?} is not a positive whole number")]
    Setting { var: &'static str, value: String },
}

/// The records of a parquet file, within what is left of `budget` (which is charged for them).
/// Values become text by [`field_text`].
pub fn read_records(path: &Path, budget: &mut Budget) -> Result<Vec<Record>, Refused> {
    let io = |source| Refused::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(Refused::Malformed {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > crate::io::MAX_DATA_BYTES {
        return Err(Refused::Malformed {
            path: path.to_owned(),
            reason: format!(
                "{} MiB, over the {} MiB a data file may have",
                len >> 20,
                crate::io::MAX_DATA_BYTES >> 20
            ),
        });
    }
    let mut file_budget = budget.clone();
    let records = guarded(path, || read_file(path, file, len, &mut file_budget))?;
    *budget = file_budget;
    Ok(records)
}

thread_local! {
    /// Set while this thread reads a file under `catch_unwind`: its panics are kept, not printed.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that keeps a guarded read's panic message for its error and
/// passes every other panic to the hook that was there.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let payload = info.payload();
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                let at = info
                    .location()
                    .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
                let mut message = format!("{text}{at}");
                message.truncate(300);
                PANIC.with(|p| *p.borrow_mut() = Some(message));
            } else {
                previous(info);
            }
        }));
    });
}

fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, Refused>) -> Result<T, Refused> {
    install_hook();
    GUARDED.with(|g| g.set(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(false));
    out.unwrap_or_else(|_| {
        let message = PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "no message".into());
        Err(Refused::Panicked {
            path: path.to_owned(),
            message,
        })
    })
}

fn malformed(path: &Path) -> impl Fn(String) -> Refused + '_ {
    move |reason| Refused::Malformed {
        path: path.to_owned(),
        reason,
    }
}

fn reason(e: compact::Error) -> String {
    match e {
        compact::Error::Eof => "a count or length past the end of the footer".into(),
        compact::Error::Bad(s) => s,
    }
}

/// The footer (`PAR1`, data, footer, its 4-byte length, `PAR1`), parsed: and where data ends.
fn read_footer(file: &File, len: u64) -> Result<(footer::Footer, u64), String> {
    use std::io::{Read, Seek, SeekFrom};
    if len < 12 {
        return Err(format!("{len} bytes, too short for parquet"));
    }
    let mut f = file;
    let mut tail = [0u8; 8];
    let mut head = [0u8; 4];
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_exact(&mut head))
        .and_then(|_| f.seek(SeekFrom::Start(len - 8)))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| format!("cannot read its ends: {e}"))?;
    if &tail[4..] == b"PARE" {
        return Err("an encrypted footer (encryption is not read)".into());
    }
    if &head != b"PAR1" || &tail[4..] != b"PAR1" {
        return Err("no PAR1 magic at its ends".into());
    }
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer_len > len - 12 || footer_len > footer::MAX_FOOTER_BYTES {
        return Err(format!(
            "a footer of {footer_len} bytes in a file of {len} (at most {} MiB are read)",
            footer::MAX_FOOTER_BYTES >> 20
        ));
    }
    let data_end = len - 8 - footer_len;
    let mut buf = vec![0; footer_len as usize];
    f.seek(SeekFrom::Start(data_end))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read its footer: {e}"))?;
    let parsed = footer::parse(&buf).map_err(|e| format!("its footer: {}", reason(e)))?;
    Ok((parsed, data_end))
}

fn read_file(path: &Path, file: File, len: u64, budget: &mut Budget) -> Result<Vec<Record>, Refused> {
    let (parsed, data_end) = read_footer(&file, len).map_err(malformed(path))?;
    let layout = footer::check(&parsed, data_end).map_err(|e| malformed(path)(reason(e)))?;
    let limits = budget.limits;
    let over = |reason: String| Refused::OverLimit {
        path: path.to_owned(),
        reason,
        limits: limits.describe(),
    };
    if layout.num_rows > limits.max_rows.saturating_sub(budget.rows) {
        return Err(over(format!(
            "{} rows, where its split has {} left of {}",
            layout.num_rows,
            limits.max_rows.saturating_sub(budget.rows),
            limits.max_rows
        )));
    }
    let meta = ParquetMetaDataReader::decode_metadata(&footer::encode(&parsed)).map_err(|source| Refused::Reader {
        path: path.to_owned(),
        what: "its schema".into(),
        source,
    })?;
    drop(parsed);
    check_schema(meta.file_metadata().schema_descr()).map_err(malformed(path))?;
    let mut walked = Vec::with_capacity(layout.groups.len());
    for (g, (_, chunks)) in layout.groups.iter().enumerate() {
        let mut row = Vec::with_capacity(chunks.len());
        for (c, leaf) in chunks.iter().zip(&layout.leaves) {
            let p = pages::walk(&file, c, leaf)
                .map_err(|e| malformed(path)(format!("row group {g}, column {}: {e}", leaf.path.join("."))))?;
            row.push(p);
        }
        walked.push(row);
    }
    let file = Arc::new(file);
    let allowed = limits.per_file(len);
    for (g, pages) in walked.iter().enumerate() {
        let need = row_bound(path, &file, &meta, g, pages)?;
        if need > allowed {
            return Err(over(format!(
                "a row of row group {g} may take {need} bytes to decode, over the {allowed} this file may decode to"
            )));
        }
    }
    let left = allowed.min(limits.max_decoded_bytes.saturating_sub(budget.bytes));
    let records = read_rows(path, &file, &meta, left, &over)?;
    budget.rows += records.len() as u64;
    budget.bytes += records.iter().map(record_bytes).sum::<u64>();
    Ok(records)
}

fn record_bytes(r: &Record) -> u64 {
    r.iter().map(|(k, v)| (k.len() + v.len()) as u64 + FIELD_OVERHEAD).sum()
}

fn read_rows(
    path: &Path,
    file: &Arc<File>,
    meta: &ParquetMetaData,
    left: u64,
    over: &dyn Fn(String) -> Refused,
) -> Result<Vec<Record>, Refused> {
    let props = Arc::new(ReaderProperties::builder().build());
    let failed = |what: String| {
        move |source| Refused::Reader {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for (g, rg) in meta.row_groups().iter().enumerate() {
        let reader = SerializedRowGroupReader::new(Arc::clone(file), rg, None, Arc::clone(&props))
            .map_err(failed(format!("row group {g}")))?;
        let rows =
            RowIter::from_row_group(None, &reader as &dyn RowGroupReader).map_err(failed(format!("row group {g}")))?;
        for row in rows {
            let row = row.map_err(failed(format!("row {}", out.len() + 1)))?;
            let record = record(&row).map_err(|e| malformed(path)(format!("row {}: {e}", out.len() + 1)))?;
            bytes += record_bytes(&record);
            if bytes > left {
                return Err(over(format!(
                    "its first {} rows decode to more than the {left} bytes left",
                    out.len() + 1
                )));
            }
            out.push(record);
        }
    }
    Ok(out)
}

/// A row as a record: each column's value as text.
fn record(row: &Row) -> Result<Record, String> {
    row.get_column_iter()
        .map(|(k, v)| {
            displayable(v)?;
            Ok((k.clone(), field_text(v)))
        })
        .collect()
}

/// A parquet value as text (lists joined with `|||`, a struct by its `text` field, else as the
/// parquet crate shows it).
pub fn field_text(f: &Field) -> String {
    match f {
        Field::Null => String::new(),
        Field::Str(s) => s.clone(),
        Field::Bool(b) => b.to_string(),
        Field::Byte(x) => x.to_string(),
        Field::Short(x) => x.to_string(),
        Field::Int(x) => x.to_string(),
        Field::Long(x) => x.to_string(),
        Field::UByte(x) => x.to_string(),
        Field::UShort(x) => x.to_string(),
        Field::UInt(x) => x.to_string(),
        Field::ULong(x) => x.to_string(),
        Field::Float(x) => x.to_string(),
        Field::Double(x) => x.to_string(),
        Field::ListInternal(list) => list.elements().iter().map(field_text).collect::<Vec<_>>().join("|||"),
        Field::Group(row) => match row.get_column_iter().find(|(name, _)| name.as_str() == "text") {
            Some((_, text)) => field_text(text),
            None => f.to_string(),
        },
        other => other.to_string(),
    }
}

/// Refuses the values the parquet crate panics on showing (dates and timestamps past chrono's
/// range, ±262,000 years) and decimals too long to show quickly.
fn displayable(f: &Field) -> Result<(), String> {
    const DAYS: i64 = 90_000_000;
    const MILLIS: i64 = DAYS * 86_400_000;
    let ok = match f {
        Field::Date(d) => i64::from(*d).abs() <= DAYS,
        Field::TimestampMillis(t) => t.checked_abs().is_some_and(|t| t <= MILLIS),
        Field::TimestampMicros(t) => t.checked_abs().is_some_and(|t| t / 1000 <= MILLIS),
        Field::Decimal(d) => d.data().len() <= 64,
        Field::Group(row) => return row.get_column_iter().try_for_each(|(_, v)| displayable(v)),
        Field::ListInternal(list) => return list.elements().iter().try_for_each(displayable),
        Field::MapInternal(map) => {
            return map
                .entries()
                .iter()
                .try_for_each(|(k, v)| displayable(k).and_then(|()| displayable(v)));
        }
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("a value out of range: {f:?}"))
    }
}

/// Checks what the crate's schema (built from the checked footer) asks of the record reader:
/// conversions it implements (others panic), DECIMALs it can show, LIST and MAP groups of the
/// shapes it asserts.
fn check_schema(schema: &SchemaDescriptor) -> Result<(), String> {
    for c in schema.columns() {
        check_column(c).map_err(|e| format!("column {}: {e}", c.path()))?;
    }
    schema
        .root_schema()
        .get_fields()
        .iter()
        .try_for_each(|f| check_group(f))
}

fn check_column(c: &ColumnDescriptor) -> Result<(), String> {
    use ConvertedType as C;
    let converted = c.converted_type();
    let ok = match c.physical_type() {
        Physical::INT32 => matches!(
            converted,
            C::NONE
                | C::INT_8
                | C::INT_16
                | C::INT_32
                | C::UINT_8
                | C::UINT_16
                | C::UINT_32
                | C::DATE
                | C::TIME_MILLIS
                | C::DECIMAL
        ),
        Physical::INT64 => matches!(
            converted,
            C::NONE | C::INT_64 | C::UINT_64 | C::TIME_MICROS | C::TIMESTAMP_MILLIS | C::TIMESTAMP_MICROS | C::DECIMAL
        ),
        Physical::BYTE_ARRAY => matches!(converted, C::NONE | C::UTF8 | C::ENUM | C::JSON | C::BSON | C::DECIMAL),
        Physical::FIXED_LEN_BYTE_ARRAY => matches!(converted, C::NONE | C::DECIMAL),
        _ => true,
    };
    if !ok {
        return Err(format!("{} annotated {converted} (not read)", c.physical_type()));
    }
    let (p, s) = (c.type_precision(), c.type_scale());
    if converted == C::DECIMAL && !(0 <= s && s < p && p <= MAX_DECIMAL_PRECISION) {
        return Err(format!(
            "DECIMAL({p}, {s}) (tpv reads 0 <= scale < precision <= {MAX_DECIMAL_PRECISION})"
        ));
    }
    Ok(())
}

fn check_group(t: &Type) -> Result<(), String> {
    if t.is_primitive() {
        return Ok(());
    }
    let fields = t.get_fields();
    let repeated = |f: &Type| f.get_basic_info().repetition() == Repetition::REPEATED;
    let shape_ok = match t.get_basic_info().converted_type() {
        ConvertedType::LIST => fields.len() == 1 && repeated(&fields[0]),
        ConvertedType::MAP | ConvertedType::MAP_KEY_VALUE => {
            fields.len() == 1
                && !fields[0].is_primitive()
                && repeated(&fields[0])
                && matches!(fields[0].get_fields().len(), 1 | 2)
                && fields[0].get_fields()[0].is_primitive()
        }
        _ => true,
    };
    if !shape_ok {
        return Err(format!(
            "group {:?} is not a list or map of the shape parquet gives them",
            t.name()
        ));
    }
    fields.iter().try_for_each(|f| check_group(f))
}

/// How decoded text of a leaf grows with its raw bytes: `factor × bytes + fixed` per value.
fn text_per_value(c: &ColumnDescriptor) -> (u64, u64) {
    let precision = u64::try_from(c.type_precision().max(0)).unwrap_or(0) + 3;
    let decimal = c.converted_type() == ConvertedType::DECIMAL;
    match c.physical_type() {
        _ if decimal => (0, precision),
        Physical::BOOLEAN => (0, 5),
        Physical::INT32 | Physical::INT64 | Physical::INT96 => (0, 40),
        Physical::FLOAT => (0, 64),
        Physical::DOUBLE => (0, 400),
        Physical::BYTE_ARRAY => match c.converted_type() {
            ConvertedType::UTF8 | ConvertedType::ENUM | ConvertedType::JSON => (1, 2),
            // Bytes show as `[1, 2, 255]`.
            _ => (5, 2),
        },
        Physical::FIXED_LEN_BYTE_ARRAY => (0, 5 * u64::try_from(c.type_length().max(0)).unwrap_or(0) + 32),
    }
}

/// The most bytes reading one row of row group `g` may hold: each column's pages and
/// dictionary, and its values in the row (one for a column that is not repeated; for a repeated
/// one, up to all of the chunk's).
fn row_bound(
    path: &Path,
    file: &Arc<File>,
    meta: &ParquetMetaData,
    g: usize,
    pages: &[pages::Pages],
) -> Result<u64, Refused> {
    let schema = meta.file_metadata().schema_descr();
    let mut total = 0u64;
    for (j, p) in pages.iter().enumerate() {
        let c = schema.column(j);
        let (factor, fixed) = text_per_value(&c);
        let names = c.path().parts().iter().map(|s| s.len() as u64 + 8).sum::<u64>();
        let per_value = fixed + names + VALUE_OVERHEAD;
        let (dict_bytes, dict_entries) = p.dict.unwrap_or((0, 0));
        // A page being read, and the one before it while values still point into it.
        let buffers = 2 * p.max_page + dict_bytes + dict_entries * DICT_ENTRY_OVERHEAD;
        let values = if c.max_rep_level() == 0 {
            factor * p.max_page.max(dict_bytes) + per_value
        } else {
            let entry = if factor > 0 && p.dict_values > 0 {
                max_dict_entry(path, file, meta, g, j)?
            } else {
                0
            };
            factor
                .saturating_mul(p.plain_bytes.saturating_add(p.dict_values.saturating_mul(entry)))
                .saturating_add((p.plain_values + p.dict_values).saturating_mul(per_value))
        };
        total = total.saturating_add(buffers).saturating_add(values);
    }
    Ok(total)
}

/// The longest entry of a BYTE_ARRAY column chunk's dictionary (its first page; the page walk
/// checked its sizes, so the crate's reading it allocates no more than those).
fn max_dict_entry(path: &Path, file: &Arc<File>, meta: &ParquetMetaData, g: usize, j: usize) -> Result<u64, Refused> {
    use parquet::column::page::Page;
    let failed = |source| Refused::Reader {
        path: path.to_owned(),
        what: format!("row group {g}'s dictionary"),
        source,
    };
    let props = Arc::new(ReaderProperties::builder().build());
    let reader = SerializedRowGroupReader::new(Arc::clone(file), meta.row_group(g), None, props).map_err(failed)?;
    let page = reader
        .get_column_page_reader(j)
        .and_then(|mut p| p.get_next_page())
        .map_err(failed)?;
    let Some(Page::DictionaryPage { buf, num_values, .. }) = page else {
        return Err(malformed(path)(format!("row group {g}: no dictionary page first")));
    };
    let (mut at, mut longest) = (0usize, 0usize);
    for _ in 0..num_values {
        let n = buf
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .filter(|n| at + 4 + n <= buf.len())
            .ok_or_else(|| malformed(path)(format!("row group {g}: dictionary entries past its page")))?;
        longest = longest.max(n);
        at += 4 + n;
    }
    Ok(longest as u64)
}
