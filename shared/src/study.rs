//! A study's jobs and its `study.json`: one definition of the job kinds, their ids (which are
//! also their directories under the study output) and the file the sweep writes and the
//! aggregate, the report and the Slurm scripts read. Versioned like run files: a newer
//! `study.json` is refused naming both versions.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `format` of a study file.
pub const FORMAT: &str = "tpv-study";
/// The study-file version this build writes and the newest it reads.
pub const VERSION: u32 = 1;

/// How a transfer run's prompt starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitMethod {
    /// The origin θ₀ itself.
    Random,
    /// Each single source task prompt (SPoT).
    Spot,
    /// A prompt trained on the union of the sources (multi-task SPoT).
    Multi,
    /// θ₀ + Σ τ_source (λ = 1).
    TpvSum,
    /// θ₀ + Σ wᵢ τ_source, the weights learned on the target's shots (the TPV sum at 0 shots).
    LearnedCombination,
    /// ATTEMPT: a target prompt from θ₀ and an attention module mixing it with the frozen source
    /// prompts per input, trained on the shots (at 0 shots: the untrained module).
    Attempt,
}

crate::named!(InitMethod, "transfer init", {
    Random => "random",
    Spot => "spot",
    Multi => "multi",
    TpvSum => "tpv_sum",
    LearnedCombination => "learned_combination",
    Attempt => "attempt",
});

impl InitMethod {
    pub fn as_str(self) -> &'static str {
        crate::names::Named::name(self)
    }
}

/// A transfer init as tables, ids and the web app name it: `spot_SOURCE` for a SPoT init, else
/// the init's name.
pub fn init_label(init: &str, source: Option<&str>) -> String {
    match source {
        Some(s) => format!("{init}_{s}"),
        None => init.to_owned(),
    }
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "experiment", rename_all = "snake_case")]
pub enum JobKind {
    /// Prompt tuning of one task from one origin.
    PromptTuning { task: String, origin: usize },
    /// Prompt tuning on the union of tasks (the multi-task SPoT init).
    MultiTask { tasks: Vec<String>, origin: usize },
    /// Addition of the task prompt vectors of `tasks` (one origin), λ chosen on validation.
    Addition { tasks: Vec<String>, origin: usize },
    /// θ₀ of `origin` plus τ of `task` trained from `from`.
    CrossOrigin { task: String, origin: usize, from: usize },
    /// Few-shot training (0 shots: evaluation) of `target` from an init.
    Transfer {
        target: String,
        init: InitMethod,
        /// The source prompt of a SPoT init.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        shots: usize,
        origin: usize,
    },
}

impl JobKind {
    /// The job's id, also its directory under the study output:
    /// `prompt_tuning/TASK/originO`, `multi_task/A+B/originO`, `addition/A+B/originO`,
    /// `cross_origin/TASK/originO_fromF`, `transfer/TARGET/INIT/Kshot/originO`.
    pub fn id(&self) -> String {
        match self {
            Self::PromptTuning { task, origin } => format!("prompt_tuning/{task}/origin{origin}"),
            Self::MultiTask { tasks, origin } => format!("multi_task/{}/origin{origin}", tasks.join("+")),
            Self::Addition { tasks, origin } => format!("addition/{}/origin{origin}", tasks.join("+")),
            Self::CrossOrigin { task, origin, from } => format!("cross_origin/{task}/origin{origin}_from{from}"),
            Self::Transfer {
                target,
                init,
                source,
                shots,
                origin,
            } => format!(
                "transfer/{target}/{}/{shots}shot/origin{origin}",
                init_label(init.as_str(), source.as_deref())
            ),
        }
    }

    /// The experiment's name (`prompt_tuning`, `multi_task`, `addition`, `cross_origin`,
    /// `transfer`), as `study.json` and the report manifest write it.
    pub fn experiment(&self) -> &'static str {
        match self {
            Self::PromptTuning { .. } => "prompt_tuning",
            Self::MultiTask { .. } => "multi_task",
            Self::Addition { .. } => "addition",
            Self::CrossOrigin { .. } => "cross_origin",
            Self::Transfer { .. } => "transfer",
        }
    }

    pub fn origin(&self) -> usize {
        match self {
            Self::PromptTuning { origin, .. }
            | Self::MultiTask { origin, .. }
            | Self::Addition { origin, .. }
            | Self::CrossOrigin { origin, .. }
            | Self::Transfer { origin, .. } => *origin,
        }
    }
}

/// The id of the prompt-tuning job of `task` from `origin`.
pub fn prompt_tuning_id(task: &str, origin: usize) -> String {
    JobKind::PromptTuning {
        task: task.to_owned(),
        origin,
    }
    .id()
}

/// One job of a study: an id (also its directory under the study output), what it does, and the
/// jobs it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    #[serde(flatten)]
    pub kind: JobKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<String>,
}

impl Job {
    /// A job of `kind` (its id derived from it) reading the runs of `deps`.
    pub fn new(kind: JobKind, deps: Vec<String>) -> Self {
        Self {
            id: kind.id(),
            kind,
            deps,
        }
    }

    /// 1 for jobs without dependencies, 2 for the rest (Slurm runs the stages in order).
    pub fn stage(&self) -> u8 {
        if self.deps.is_empty() { 1 } else { 2 }
    }

    pub fn origin(&self) -> usize {
        self.kind.origin()
    }
}

/// `OUTPUT/study.json`: written by the sweep before any job runs; read by aggregation, reports
/// and `--todo` (what is missing is what it lists and the directory lacks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyFile {
    pub format: String,
    pub version: u32,
    pub name: String,
    /// The study config's path when the sweep ran.
    #[serde(default)]
    pub config: String,
    /// The model every run uses, as the config resolves it (for the report to bundle or link).
    #[serde(default)]
    pub model: Option<String>,
    pub origins: Vec<usize>,
    /// Every task tuned from every origin.
    pub tasks: Vec<String>,
    /// The `[study]` table as the sweep resolved it.
    #[serde(default)]
    pub study: serde_json::Value,
    pub jobs: Vec<Job>,
}

impl StudyFile {
    /// Parses a study file: the right format, a version this build reads, job ids that stay
    /// inside the study directory.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let file: Self = crate::versioned::from_json(bytes, FORMAT, VERSION, "study file")?;
        for job in &file.jobs {
            check_job_id(&job.id)?;
        }
        Ok(file)
    }

    /// Pretty JSON, as the sweep writes it.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::BadMetadata(e.to_string()))
    }
}

/// The longest name of one path component (Linux's NAME_MAX on ext4, xfs, btrfs, tmpfs): task
/// names, job id components and the files named after them are checked against it.
pub const NAME_MAX: usize = 255;

/// A job id read from a file becomes a path under the study directory: plain components only.
fn check_job_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && !id.chars().any(|c| c.is_control() || c == '\\')
        && id
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && p.len() <= NAME_MAX)
        && !id.contains(':');
    if ok {
        Ok(())
    } else {
        Err(Error::BadMetadata(format!(
            "study.json: the job id {id:?} leaves the study directory"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_kinds() {
        let t = |init, source: Option<&str>| {
            JobKind::Transfer {
                target: "c".into(),
                init,
                source: source.map(str::to_owned),
                shots: 4,
                origin: 1,
            }
            .id()
        };
        assert_eq!(t(InitMethod::Spot, Some("a")), "transfer/c/spot_a/4shot/origin1");
        assert_eq!(t(InitMethod::TpvSum, None), "transfer/c/tpv_sum/4shot/origin1");
        assert_eq!(prompt_tuning_id("a", 0), "prompt_tuning/a/origin0");
        let kind = JobKind::CrossOrigin {
            task: "a".into(),
            origin: 0,
            from: 2,
        };
        assert_eq!(kind.id(), "cross_origin/a/origin0_from2");
        assert_eq!(kind.experiment(), "cross_origin");
    }

    #[test]
    fn study_files_round_trip_and_newer_or_hostile_ones_are_refused() {
        let file = StudyFile {
            format: FORMAT.into(),
            version: VERSION,
            name: "s".into(),
            config: "study.toml".into(),
            model: Some("smollm2".into()),
            origins: vec![0, 1],
            tasks: vec!["a".into()],
            study: serde_json::json!({"name": "s"}),
            jobs: vec![Job::new(
                JobKind::PromptTuning {
                    task: "a".into(),
                    origin: 0,
                },
                vec![],
            )],
        };
        let text = file.to_json().unwrap();
        assert_eq!(StudyFile::from_json(text.as_bytes()).unwrap(), file);
        let newer = text.replace("\"version\": 1", "\"version\": 2");
        let e = StudyFile::from_json(newer.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("version 2") && e.contains("up to 1"), "{e}");
        let hostile = text.replace("prompt_tuning/a/origin0", "../../x");
        assert!(StudyFile::from_json(hostile.as_bytes()).is_err());
    }
}
