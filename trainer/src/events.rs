//! Live training curves as TensorBoard event files (`events.out.tfevents.TIME.HOST.tpv` in the
//! run's directory), so `tensorboard --logdir STUDY_DIR` shows a running study. A small writer:
//! TFRecord framing (length, masked CRC-32C of the length, an `Event` protobuf, masked CRC-32C of
//! the data) and the few protobuf fields of a scalar summary, encoded by hand: four fields and a
//! frame need no protobuf dependency, and TensorBoard's own reader checks the result (the test).
//! Every record is flushed when written. A
//! resumed run starts a new file; TensorBoard reads the directory's files together.
//!
//! Protobuf (tensorflow/core/util/event.proto, summary.proto): `Event { double wall_time = 1;
//! int64 step = 2; string file_version = 3; Summary summary = 5; }`, `Summary { repeated Value
//! value = 1; }`, `Value { string tag = 1; float simple_value = 2; }`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// CRC-32C (Castagnoli), as TFRecord frames use it.
pub fn crc32c(data: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78;
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ POLY } else { crc >> 1 };
        }
    }
    !crc
}

fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `Event` with `wall_time`, `step` and either a file version or one scalar.
fn event(wall_time: f64, step: u64, body: Body<'_>) -> Vec<u8> {
    let mut e = Vec::new();
    varint(&mut e, 1 << 3 | 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(&mut e, 2 << 3);
    varint(&mut e, step);
    match body {
        Body::Version => field_bytes(&mut e, 3, b"brain.Event:2"),
        Body::Scalar(tag, value) => {
            let mut v = Vec::new();
            field_bytes(&mut v, 1, tag.as_bytes());
            varint(&mut v, 2 << 3 | 5);
            v.extend_from_slice(&value.to_le_bytes());
            let mut summary = Vec::new();
            field_bytes(&mut summary, 1, &v);
            field_bytes(&mut e, 5, &summary);
        }
    }
    e
}

enum Body<'a> {
    Version,
    Scalar(&'a str, f32),
}

/// An open event file.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `DIR/events.out.tfevents.TIME.HOST.tpv` and writes its version record.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let now = wall_time();
        let host =
            std::fs::read_to_string("/etc/hostname").map_or_else(|_| "localhost".to_owned(), |h| h.trim().to_owned());
        let path = dir.join(format!("events.out.tfevents.{}.{host}.tpv", now as u64));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut w = Self { file, path };
        w.record(&event(now, 0, Body::Version))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar at `step`, flushed.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        self.record(&event(wall_time(), step, Body::Scalar(tag, value as f32)))
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut frame = Vec::with_capacity(data.len() + 16);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&masked(crc32c(&len)).to_le_bytes());
        frame.extend_from_slice(data);
        frame.extend_from_slice(&masked(crc32c(data)).to_le_bytes());
        self.file
            .write_all(&frame)
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value (RFC 3720 / iSCSI): "123456789" → 0xE3069283.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }
}
