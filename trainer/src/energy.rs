//! The energy a run uses (the paper's impact statement: device hours, kWh, kgCO₂eq). Measured
//! where the machine lets us: the CPU packages' RAPL counters (`/sys/class/powercap/intel-rapl:N`,
//! also on AMD; `$TPV_POWERCAP` overrides the root, for tests). Otherwise estimated, and said so:
//! a GPU at its power limit (`nvidia-smi --query-gpu=power.limit`), a CPU at `$TPV_CPU_WATTS`
//! (default 15 W) per thread it uses, for the run's wall time.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// One RAPL domain: its counter file, the reading at the start, the counter's range.
struct Domain {
    file: PathBuf,
    start: u64,
    range: u64,
}

/// A meter started before a run's work.
pub struct Meter {
    start: Instant,
    device: String,
    rapl: Vec<Domain>,
}

/// What a run used.
#[derive(Debug, Clone, PartialEq)]
pub struct Energy {
    pub device_hours: f64,
    pub kwh: f64,
    /// How `kwh` was obtained: `rapl` (measured) or `estimate: …` (with the assumption).
    pub method: String,
}

/// The per-thread CPU power assumed when RAPL cannot be read.
const CPU_WATTS_PER_THREAD: f64 = 15.0;

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The top-level RAPL domains (packages `intel-rapl:N`, not their sub-zones) whose counters read.
fn rapl_domains(root: &Path) -> Vec<Domain> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<Domain> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("intel-rapl:"))
                .is_some_and(|rest| !rest.contains(':'))
        })
        .filter_map(|dir| {
            let file = dir.join("energy_uj");
            Some(Domain {
                start: read_u64(&file)?,
                range: read_u64(&dir.join("max_energy_range_uj")).unwrap_or(u64::MAX),
                file,
            })
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// The energy between two readings of a counter that wraps at `range` (µJ).
pub fn counter_delta(start: u64, end: u64, range: u64) -> u64 {
    if end >= start {
        end - start
    } else {
        range.saturating_sub(start).saturating_add(end)
    }
}

impl Meter {
    /// Starts measuring a run on `device` (`cpu`, `cuda:N`).
    pub fn start(device: &str) -> Self {
        let root = std::env::var_os("TPV_POWERCAP").map_or_else(|| PathBuf::from("/sys/class/powercap"), PathBuf::from);
        let rapl = if device == "cpu" {
            rapl_domains(&root)
        } else {
            Vec::new()
        };
        Self {
            start: Instant::now(),
            device: device.to_owned(),
            rapl,
        }
    }

    /// What the run used since [`Meter::start`].
    pub fn finish(self) -> Energy {
        let hours = self.start.elapsed().as_secs_f64() / 3600.0;
        let measured: Option<u64> = (!self.rapl.is_empty())
            .then(|| {
                self.rapl
                    .iter()
                    .map(|d| read_u64(&d.file).map(|end| counter_delta(d.start, end, d.range)))
                    .sum::<Option<u64>>()
            })
            .flatten();
        if let Some(uj) = measured {
            return Energy {
                device_hours: hours,
                kwh: uj as f64 / 3.6e12,
                method: format!(
                    "rapl ({} CPU package{})",
                    self.rapl.len(),
                    if self.rapl.len() == 1 { "" } else { "s" }
                ),
            };
        }
        let (watts, how) = if self.device.starts_with("cuda") {
            match gpu_power_limit(&self.device) {
                Some(w) => (
                    w,
                    format!("estimate: the GPU's power limit, {w:.0} W, for the wall time"),
                ),
                None => (
                    300.0,
                    "estimate: 300 W assumed for the GPU (nvidia-smi unreadable), for the wall time".to_owned(),
                ),
            }
        } else {
            let per = std::env::var("TPV_CPU_WATTS")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(CPU_WATTS_PER_THREAD);
            let threads = candle_core::utils::get_num_threads() as f64;
            (
                per * threads,
                format!(
                    "estimate: {threads:.0} threads × {per:.0} W (RAPL unreadable; set TPV_CPU_WATTS), for the wall time"
                ),
            )
        };
        Energy {
            device_hours: hours,
            kwh: watts * hours / 1000.0,
            method: how,
        }
    }
}

/// The power limit of the GPU `cuda:N` (visible index), from nvidia-smi.
fn gpu_power_limit(device: &str) -> Option<f64> {
    let n: usize = device.strip_prefix("cuda:").and_then(|n| n.parse().ok()).unwrap_or(0);
    crate::models::nvidia_smi_query(n, "power.limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rapl_counters_wrap() {
        assert_eq!(counter_delta(100, 350, 1000), 250);
        assert_eq!(counter_delta(900, 50, 1000), 150);
    }

    #[test]
    fn packages_are_read_and_subzones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for (zone, uj) in [
            ("intel-rapl:0", 1_000_000u64),
            ("intel-rapl:0:0", 5),
            ("intel-rapl:1", 2_000_000),
        ] {
            let z = dir.path().join(zone);
            std::fs::create_dir_all(&z).unwrap();
            std::fs::write(z.join("energy_uj"), uj.to_string()).unwrap();
            std::fs::write(z.join("max_energy_range_uj"), "262143328850").unwrap();
        }
        let domains = rapl_domains(dir.path());
        assert_eq!(domains.len(), 2);
        assert_eq!(domains.iter().map(|d| d.start).sum::<u64>(), 3_000_000);
    }
}
