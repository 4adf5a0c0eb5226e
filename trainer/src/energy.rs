//! The energy a run uses (the paper's impact statement: device hours, kWh, kgCO₂eq). Measured
//! where the machine lets us: the CPU packages' RAPL counters (`/sys/class/powercap/intel-rapl:N`,
//! also on AMD; `$TPV_POWERCAP` overrides the root, for tests); a GPU's power draw sampled twice a
//! second by one `nvidia-smi --query-gpu=power.draw -lms 500` child and integrated over the run
//! (what CodeCarbon, the paper's tool, does through NVML). Otherwise estimated, and said so: a GPU
//! at its power limit (`nvidia-smi --query-gpu=power.limit`), a CPU at `$TPV_CPU_WATTS` (default
//! 15 W) per thread it uses, for the run's wall time.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    gpu: Option<PowerSampler>,
}

/// Power samples (seconds since the start, watts) from a child process that prints one number
/// per line.
struct PowerSampler {
    child: std::process::Child,
    reader: std::thread::JoinHandle<()>,
    samples: Arc<Mutex<Vec<(f64, f64)>>>,
}

impl PowerSampler {
    /// Starts `program args` (its standard output read line by line from `start`); `None` when it
    /// does not start.
    fn spawn(program: &str, args: &[String], start: Instant) -> Option<Self> {
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&samples);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // "[N/A]" and the like are skipped: no sample, not a zero.
                if let Ok(watts) = line.trim().parse::<f64>()
                    && watts.is_finite()
                    && watts >= 0.0
                    && let Ok(mut s) = sink.lock()
                {
                    s.push((start.elapsed().as_secs_f64(), watts));
                }
            }
        });
        Some(Self { child, reader, samples })
    }

    /// The GPU `cuda:N`'s power draw, sampled every 500 ms.
    fn gpu(device: &str, start: Instant) -> Option<Self> {
        let n: usize = device.strip_prefix("cuda:").and_then(|n| n.parse().ok()).unwrap_or(0);
        let args = [
            "--query-gpu=power.draw".to_owned(),
            "--format=csv,noheader,nounits".to_owned(),
            "-lms".to_owned(),
            "500".to_owned(),
            "-i".to_owned(),
            crate::models::nvidia_smi_id(n),
        ];
        Self::spawn("nvidia-smi", &args, start)
    }

    /// Stops sampling at `end` seconds; the energy in joules (each sample's power held until the
    /// next, the first from the start, the last to the end) and the number of samples, if any.
    fn finish(mut self, end: f64) -> Option<(f64, usize)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let samples = self.samples.lock().ok()?.clone();
        integrate(&samples, end).map(|j| (j, samples.len()))
    }
}

/// ∫ P dt over [0, end] of step-wise power samples (time, watts): each sample's power holds until
/// the next; the first covers the time before it.
pub fn integrate(samples: &[(f64, f64)], end: f64) -> Option<f64> {
    let first = samples.first()?;
    let mut joules = first.1 * first.0.min(end);
    for (i, &(t, w)) in samples.iter().enumerate() {
        let next = samples.get(i + 1).map_or(end, |s| s.0).min(end);
        joules += w * (next - t).max(0.0);
    }
    Some(joules)
}

/// What a run used.
#[derive(Debug, Clone, PartialEq)]
pub struct Energy {
    pub device_hours: f64,
    pub kwh: f64,
    /// How `kwh` was obtained: `rapl …` or `nvidia-smi …` (measured), or `estimate: …` (with the
    /// assumption).
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
        let start = Instant::now();
        let gpu = if device.starts_with("cuda") {
            PowerSampler::gpu(device, start)
        } else {
            None
        };
        Self {
            start,
            device: device.to_owned(),
            rapl,
            gpu,
        }
    }

    /// What the run used since [`Meter::start`].
    pub fn finish(self) -> Energy {
        let seconds = self.start.elapsed().as_secs_f64();
        let hours = seconds / 3600.0;
        if let Some((joules, n)) = self.gpu.and_then(|g| g.finish(seconds)) {
            tracing::debug!("{n} GPU power samples");
            return Energy {
                device_hours: hours,
                kwh: joules / 3.6e6,
                method: "nvidia-smi power.draw, sampled every 500 ms".to_owned(),
            };
        }
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
    fn power_samples_integrate_step_wise() {
        assert_eq!(integrate(&[], 10.0), None);
        // 100 W from 0 to 2 s (the first sample covers the time before it), 300 W from 2 to 5.
        assert_eq!(integrate(&[(1.0, 100.0), (2.0, 300.0)], 5.0), Some(1100.0));
        assert_eq!(integrate(&[(0.5, 200.0)], 0.25), Some(50.0));
    }

    /// A stand-in for `nvidia-smi -lms`: a process printing a power reading per line (and a
    /// line that is not a number, as `[N/A]`), read while it runs and integrated when stopped.
    #[cfg(unix)]
    #[test]
    fn a_sampling_child_is_read_and_stopped() {
        let start = Instant::now();
        let script = "echo '[N/A]'; while true; do echo 250.00; sleep 0.02; done";
        let sampler = PowerSampler::spawn("sh", &["-c".to_owned(), script.to_owned()], start).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let end = start.elapsed().as_secs_f64();
        let (joules, n) = sampler.finish(end).unwrap();
        assert!(n >= 2, "{n} samples");
        assert!((joules - 250.0 * end).abs() < 1e-9 * joules, "{joules} J over {end} s");
        assert!(PowerSampler::spawn("/nonexistent/nvidia-smi", &[], start).is_none());
    }

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
