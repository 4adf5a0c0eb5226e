//! Command-line definitions (clap derive).

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tpv_shared::eval::Scoring;
use tpv_shared::stats::TestKind;
use tpv_shared::{Measure, MergeKind, Named, SignElection, TaskType};

/// The parser of a flag that takes a shared enum: its possible values are the enum's names (so
/// `--help` lists exactly what parses) and the parsing is the enum's own (`tpv_shared::names`).
fn named<T: Named + Clone + Send + Sync>() -> impl TypedValueParser<Value = T> {
    clap::builder::PossibleValuesParser::new(T::NAMES).try_map(|s| T::from_name(&s))
}

#[derive(Debug, Parser)]
#[command(
    name = "tpv",
    version,
    about = "Task prompt vectors: inspect, combine, compare and convert soft prompts"
)]
pub struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Print the result as JSON on stdout (every command; progress and logs stay on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show kind, shape, metadata and norms of run files and peft adapters (files or directories).
    Inspect(InspectArgs),
    /// Convert between run files and HF peft prompt-tuning adapters.
    #[command(subcommand)]
    Peft(PeftCommand),
    /// Apply task prompt vectors to an origin: θ₀ + λ·merge(w₁τ₁, …).
    Combine(CombineArgs),
    /// Rank a study's task prompt vectors (and sums of two) as starting points for a new task,
    /// from a few of its examples.
    Recommend(RecommendArgs),
    /// Similarity matrix of prompts or task prompt vectors.
    Similarity(SimilarityArgs),
    /// Evaluate a prompt on JSONL examples: per-example loss and greedy prediction.
    Eval(EvalArgs),
    /// Sample origins θ₀ from a model's vocabulary embeddings.
    Origins(OriginsArgs),
    /// Fetch the offline assets (pinned, sha256-checked) or registry tasks' hub datasets into the cache.
    Fetch(FetchArgs),
    /// Tune a soft prompt on a task (prompt tuning of a frozen model) as a TOML config says.
    Train(TrainArgs),
    /// Show the data a config yields (splits, fingerprint, rendered examples), or export a split.
    Data(DataArgs),
    /// Time training steps, greedy evaluation and loading on this machine (see bench/compare.sh).
    Bench(BenchArgs),
    /// Run a study (tasks × origins × experiments), skipping finished runs; or emit Slurm scripts.
    Sweep(SweepArgs),
    /// Tables of a study directory (whatever has finished): Markdown, CSV, JSON.
    Aggregate(AggregateArgs),
    /// A static site of a study: the web app, the run files, a manifest and the tables.
    Report(ReportArgs),
    /// What differs between two runs: configuration, metadata, metrics, curves, prompts.
    Diff(DiffArgs),
    /// Publish a study to the hub: its task prompts as peft adapters, its run files, origins,
    /// tables, figures and a model card, in one commit.
    Push(PushArgs),
    /// The demo studies on the embedded default (SmolLM2-135M-Instruct, CPU), reported and served.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The study config (TOML with a [study] table).
    pub config: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Jobs at once (child processes; for machines with several GPUs or many cores).
    #[arg(short = 'j', long = "jobs", default_value_t = 1)]
    pub jobs: usize,
    /// The GPUs the job slots run on, comma-separated (slot k on the k-th, round robin; each
    /// child sees its GPU alone through CUDA_VISIBLE_DEVICES). Default on a CUDA study: every
    /// visible GPU; `none`: all children on the configured device.
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,
    /// Run only this job (an id from --list).
    #[arg(long, conflicts_with_all = ["stage", "emit"])]
    pub job: Option<String>,
    /// With --index: run job INDEX of stage STAGE (what the Slurm array tasks do).
    #[arg(long, requires = "index")]
    pub stage: Option<u8>,
    #[arg(long, requires = "stage")]
    pub index: Option<usize>,
    /// Write scheduler scripts instead of running (`slurm`) into -o DIR.
    #[arg(long, value_name = "SCHEDULER")]
    pub emit: Option<String>,
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Extra #SBATCH lines for --emit slurm (e.g. --sbatch=--gres=gpu:1).
    #[arg(long, value_name = "LINE", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// At most this many Slurm array tasks at once.
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// List the jobs (id, stage, finished) and exit.
    #[arg(long)]
    pub list: bool,
    /// Only the preflight: resolve every model and dataset (downloading them unless
    /// HF_HUB_OFFLINE=1), open the devices, estimate memory and disk; a table, and a failure when
    /// anything is missing. Every sweep and Slurm emission starts with it.
    #[arg(long, conflicts_with_all = ["list", "job", "stage", "todo"])]
    pub check: bool,
    /// With --check: a hub model not in the cache is checked from its config.json and
    /// safetensors headers (a few KB, by HTTP range requests) instead of downloaded: its family,
    /// its shapes, its memory estimate, and how much the sweep will download.
    #[arg(long, requires = "check")]
    pub no_download: bool,
    /// Print the array indexes of STAGE's unfinished jobs, comma-separated (for `sbatch
    /// --array=…`: what the emitted resubmit.sh re-runs), and exit.
    #[arg(long, value_name = "STAGE", conflicts_with_all = ["stage", "job", "emit", "list"])]
    pub todo: Option<u8>,
    /// Stop after this many jobs (a partial study).
    #[arg(long)]
    pub max_jobs: Option<usize>,
    /// Test hook: abort the process (as a kill would) at step S of the N-th job run, given as N:S.
    #[arg(long, hide = true, value_name = "N:S")]
    pub abort_in_job: Option<String>,
    /// Also write the tables when the jobs are done.
    #[arg(long)]
    pub aggregate: bool,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

/// How a study's tables test and state (`tpv aggregate` and `tpv report`).
#[derive(Debug, Clone, Copy, Args)]
pub struct StatsArgs {
    /// The two-sample t-test of the comparisons: `welch` (unequal variances) or `student`
    /// (equal variances, as the paper's significance script); the tables name it.
    #[arg(long, value_parser = named::<TestKind>(), default_value = "welch")]
    pub test: TestKind,
    /// The grid's carbon intensity for the energy statement, kgCO₂eq per kWh (the paper's 0.432).
    #[arg(long, default_value_t = crate::study::aggregate::DEFAULT_GRID_INTENSITY)]
    pub grid_intensity: f64,
}

impl StatsArgs {
    /// Refuses a grid intensity that is not a number ≥ 0.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(self.grid_intensity.is_finite() && self.grid_intensity >= 0.0) {
            anyhow::bail!("--grid-intensity must be a number ≥ 0 (kgCO₂eq per kWh)");
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct AggregateArgs {
    /// The study directory (study.output of the config).
    pub study_dir: PathBuf,
    #[command(flatten)]
    pub stats: StatsArgs,
    /// Where to write tables.{md,csv,json} (default: the study directory).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The study directory.
    pub study_dir: PathBuf,
    /// The site directory to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The built web app (trunk's dist; default: TPV_WEB_DIST or target/site beside this tpv).
    /// When given, a missing app is an error (without it the site falls back to the tables).
    #[arg(long)]
    pub web: Option<PathBuf>,
    /// Copy the study's model into SITE/model/ for the Evaluate view: `auto` when its files add
    /// up to at most 256 MB (else a hub model is linked), `always`, or `never`.
    #[arg(long, value_enum, default_value = "auto")]
    pub bundle_model: BundleArg,
    #[command(flatten)]
    pub stats: StatsArgs,
    /// Serve the site on 127.0.0.1 afterwards.
    #[arg(long)]
    pub serve: bool,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Publish the site as a static Space ORG/NAME on the hub (created if missing; HF_TOKEN or
    /// --token, HF_ENDPOINT): one link opens the report, web app included.
    #[arg(long, value_name = "ORG/NAME")]
    pub push: Option<String>,
    /// A token with write access for --push (default: HF_TOKEN).
    #[arg(long, requires = "push")]
    pub token: Option<String>,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Run A: a run file or a run directory.
    pub a: PathBuf,
    /// Run B.
    pub b: PathBuf,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The study directory.
    pub study_dir: PathBuf,
    /// The hub repo, ORG/NAME (created if missing).
    pub repo: String,
    /// `model` (the default) or `dataset`.
    #[arg(long, default_value = "model")]
    pub repo_type: String,
    /// A token with write access (default: HF_TOKEN). The endpoint is HF_ENDPOINT.
    #[arg(long)]
    pub token: Option<String>,
    /// List what would be sent and what the repo already has; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Create the repo private.
    #[arg(long)]
    pub private: bool,
    /// The commit message (default: `tpv push STUDY`).
    #[arg(long, short)]
    pub message: Option<String>,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BundleArg {
    Auto,
    Always,
    Never,
}

impl From<BundleArg> for crate::study::report::BundleModel {
    fn from(b: BundleArg) -> Self {
        match b {
            BundleArg::Auto => Self::Auto,
            BundleArg::Always => Self::Always,
            BundleArg::Never => Self::Never,
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the study, the site and the configs go.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// A smaller demo (two origins, fewer steps and examples; every table): a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Write DIR/site and exit instead of serving it.
    #[arg(long)]
    pub no_serve: bool,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Jobs at once, each on cores / N threads (default: one per CPU core, at most 8; on a CPU, one-thread
    /// jobs side by side get more from the cores than one job on all of them: 1.4× on two).
    #[arg(short = 'j', long = "jobs")]
    pub jobs: Option<usize>,
    /// Extra overrides of the demo study (dotted keys).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// The built web app (as for tpv report); when given, a missing app is an error.
    #[arg(long)]
    pub web: Option<PathBuf>,
    /// Copy the model into the site (as for tpv report; the demo's 98 MB GGUF by default).
    #[arg(long, value_enum, default_value = "always")]
    pub bundle_model: BundleArg,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InputStyle {
    /// Instruction, `field: value` lines, `label: ` (the user turn of a chat model).
    Chat,
    /// The task's T5 template.
    T5,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// `smollm2-shaped`, `t5-base-shaped`, `llama31-8b-shaped`, `qwen3-1.7b-shaped` or
    /// `gemma2-2b-shaped` (random weights of that released model's shape; the 8B one needs ≈ 16
    /// GB in bf16), or a model spec as in `tpv eval` (HF directory, .gguf, hub id in the local
    /// cache, `smollm2`).
    #[arg(long, default_value = "smollm2-shaped")]
    pub model: String,
    /// A named shape's first N layers only (a large shape measured quickly; the FLOPs count
    /// these layers).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Run a named shape's dimensions as another family's model_type (e.g. `llama`: the same
    /// work under LLaMA's code, to compare a family's overhead).
    #[arg(long)]
    pub family: Option<String>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu", env = "TPV_DEVICE")]
    pub device: String,
    /// f32, bf16 or f16 (weights and activations).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Virtual tokens R (default: 100 for causal models, 50 for T5).
    #[arg(long)]
    pub virtual_tokens: Option<usize>,
    /// Examples per batch (default: 4 causal, 8 T5).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Input tokens per example (default: 64 causal, 256 T5).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Target tokens (T5) and tokens generated in the evaluation.
    #[arg(long, default_value_t = 3)]
    pub target_tokens: usize,
    /// Steps of the short and the long run; per step = (long − short) / (steps difference).
    #[arg(long, default_value_t = 2)]
    pub short: usize,
    #[arg(long, default_value_t = 6)]
    pub long: usize,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Only load the model (a path) and report the time.
    #[arg(long)]
    pub load_only: bool,
    /// Also time the phases of a training step apart: forward (the loss) and backward, each
    /// repeat followed by a whole step (the difference is clipping, AdamW and host copies);
    /// medians over --repeats.
    #[arg(long)]
    pub phases: bool,
    /// Train with gradient checkpointing (`train.gradient_checkpointing`; decoder-only models).
    #[arg(long, conflicts_with = "phases")]
    pub gradient_checkpointing: bool,
    /// Dropout probability in the training steps (T5, whose training default is 0.1; 0 = off,
    /// as torch's eval mode; decoder-only models have none).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DataArgs {
    /// The experiment config (TOML); only its [data] section is used.
    pub config: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Write this split (train, validation, test) as {"input", "target"} JSONL to -o.
    #[arg(long, value_name = "SPLIT")]
    pub export: Option<String>,
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// How inputs are rendered.
    #[arg(long, value_enum, default_value = "chat")]
    pub style: InputStyle,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment config (TOML); see configs/README.md.
    pub config: PathBuf,
    /// Override a config key, e.g. `--set optim.learning_rate=0.1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Continue an interrupted run from its checkpoint (a finished run is left as it is).
    #[arg(long)]
    pub resume: bool,
    /// Start over even if the output directory holds a run.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
    /// Test hook: abort the process right after this step, as a kill would.
    #[arg(long, hide = true)]
    pub abort_after_step: Option<u64>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// HF model directory, .gguf file, hub id in the local cache, or `smollm2`.
    #[arg(long)]
    pub model: String,
    /// Run file or peft adapter (file or directory); without it, the model alone (zero-shot).
    #[arg(long)]
    pub prompt: Option<PathBuf>,
    /// Records (JSONL, JSON, CSV or TSV; {"input": …, "target": …} unless --task says otherwise),
    /// or an eval set (`examples/TASK.json` of a study or report: task, encoding and records).
    #[arg(long)]
    pub data: PathBuf,
    /// The records' task from the registry (its template, label words and metrics).
    #[arg(long)]
    pub task: Option<String>,
    /// Tokens to generate (default 16; an eval set's own value).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Truncate inputs to this many tokens.
    #[arg(long)]
    pub max_source_tokens: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Feed inputs to chat models as raw text instead of a chat user turn.
    #[arg(long)]
    pub no_chat_template: bool,
    /// Chat models: the system turn before the input ("" for an empty one; default: what the
    /// chat template does, or an eval set's own).
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// How predictions are made: `generate` (greedy; the default for records) or `rank` (rank
    /// classification over the task's labels, one forward pass); default for an eval set: the
    /// study's own.
    #[arg(long, value_parser = named::<Scoring>())]
    pub scoring: Option<Scoring>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu", env = "TPV_DEVICE")]
    pub device: String,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct OriginsArgs {
    /// HF model directory, .gguf file, hub id in the local cache, or `smollm2`.
    #[arg(long)]
    pub model: String,
    /// How many origins (origin0, origin1, …).
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// Virtual tokens R.
    #[arg(long)]
    pub tokens: usize,
    #[arg(long, default_value_t = 1024)]
    pub seed: u64,
    /// The paper's recipe: ids below this bound, without replacement.
    #[arg(long, default_value_t = 5000)]
    pub below: usize,
    /// Ids drawn per origin (the first R are used).
    #[arg(long, default_value_t = 200)]
    pub draw: usize,
    /// peft's SAMPLE_VOCAB instead: ids from the whole vocabulary, with replacement.
    #[arg(long)]
    pub sample_vocab: bool,
    /// Output directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// What to fetch: the offline assets (smollm2, rt_polarity, amazon_snippets, uci_imdb,
    /// uci_yelp, uci_amazon, bbc_news, spam_assassin; default: all of them) or any registry task,
    /// whose dataset then downloads from the HF hub into its cache (HF_ENDPOINT, HF_TOKEN).
    pub what: Vec<String>,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Run files, adapter_model.safetensors files or peft adapter directories.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Also the K vocabulary tokens nearest each virtual token (cosine to the model's input
    /// embeddings; for a vector file, of τ's direction).
    #[arg(long, value_name = "K")]
    pub nearest_tokens: Option<usize>,
    /// The model whose vocabulary --nearest-tokens reads (default: the model the file names).
    #[arg(long, requires = "nearest_tokens")]
    pub model: Option<String>,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PeftCommand {
    /// Read a peft prompt-tuning adapter into a run file.
    Import(PeftImportArgs),
    /// Write a run file as a peft adapter directory that `PeftModel.from_pretrained` loads.
    Export(PeftExportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportAs {
    Origin,
    TaskPrompt,
}

#[derive(Debug, Args)]
pub struct PeftImportArgs {
    /// Adapter directory or its adapter_model.safetensors.
    pub adapter: PathBuf,
    /// Output run file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// What the adapter holds.
    #[arg(long = "as", value_enum, default_value = "task-prompt")]
    pub as_kind: ImportAs,
    /// The origin the task prompt started from (a run file or a peft adapter), so its vector can be derived.
    #[arg(long)]
    pub origin: Option<PathBuf>,
    /// Task name to record.
    #[arg(long)]
    pub task: Option<String>,
    /// Origin id to record (e.g. origin0), when importing an origin or overriding the origin file's id.
    #[arg(long)]
    pub origin_id: Option<String>,
    /// Base model id to record, overriding the adapter's base_model_name_or_path.
    #[arg(long)]
    pub model: Option<String>,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PeftExportArgs {
    /// Run file holding a prompt (origin, task prompt or combination).
    pub run: PathBuf,
    /// Output adapter directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Task type, when the run file does not record one.
    #[arg(long, value_parser = named::<TaskType>())]
    pub task_type: Option<TaskType>,
    /// Base model id to write, overriding the run file's model.
    #[arg(long)]
    pub base_model: Option<String>,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CombineArgs {
    /// Origin θ₀ to apply the vectors to; without it the merged vector itself is written.
    #[arg(long)]
    pub origin: Option<PathBuf>,
    /// A task prompt with a stored origin, or a task prompt vector (repeat); or a prompt
    /// published with `tpv push`: ORG/NAME:TASK (the origin of --origin, else origin0) or
    /// ORG/NAME:TASK@originN, downloaded into the hub cache and used only with the library's
    /// base model and origins.
    #[arg(long = "vector", required = true)]
    pub vectors: Vec<PathBuf>,
    /// One weight per vector, in order (default 1 each).
    #[arg(long = "weight", allow_negative_numbers = true)]
    pub weights: Vec<f64>,
    /// Scaling λ of the merged vector.
    #[arg(long = "lambda", default_value_t = 1.0, allow_negative_numbers = true)]
    pub lambda: f64,
    #[arg(long, value_parser = named::<MergeKind>(), default_value = "sum")]
    pub method: MergeKind,
    /// Fraction of values kept by TIES and magnitude pruning, in [0, 1].
    #[arg(long)]
    pub density: Option<f64>,
    /// DARE drop probability p in [0, 1); kept values are rescaled by 1/(1−p).
    #[arg(long)]
    pub drop: Option<f64>,
    /// Seed of DARE's random drop.
    #[arg(long)]
    pub seed: Option<u64>,
    /// TIES sign election.
    #[arg(long, value_parser = named::<SignElection>())]
    pub sign: Option<SignElection>,
    /// Name to record in the output.
    #[arg(long)]
    pub name: Option<String>,
    /// Output run file.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub learn: LearnArgs,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// The library: a study directory (its finished prompt-tuning runs, every origin), or a hub
    /// repo `tpv push` published (ORG/NAME; its runs downloaded into the hub cache).
    #[arg(long)]
    pub library: PathBuf,
    /// A few examples of the new task: records (`{"input", "target"}` lines, or a registry task's
    /// columns with --task) or an eval set (`examples/TASK.json`).
    #[arg(long)]
    pub data: PathBuf,
    /// The records' task from the registry.
    #[arg(long)]
    pub task: Option<String>,
    /// The model (default: the library's).
    #[arg(long)]
    pub model: Option<String>,
    /// Use at most this many of the examples.
    #[arg(long, default_value_t = 32)]
    pub max_examples: usize,
    /// Steps of the brief tuning whose vector the cosine compares (batches of 4).
    #[arg(long, default_value_t = 20)]
    pub tune_steps: usize,
    /// Its learning rate (default: the library's).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Single vectors only, not the sums of two.
    #[arg(long)]
    pub no_pairs: bool,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu", env = "TPV_DEVICE")]
    pub device: String,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}

/// `tpv combine --learn`: the weights of θ₀ + Σ wᵢτᵢ learned on a target's few examples.
#[derive(Debug, Args)]
pub struct LearnArgs {
    /// Learn the weights on these examples instead of taking them: records (`{"input",
    /// "target"}` lines, or a registry task's columns with --task) or a study's eval set; Adam on
    /// the loss through the frozen --model, from --weight (default 1 each: the TPV sum).
    #[arg(long, value_name = "DATA", requires_all = ["origin", "model"])]
    pub learn: Option<PathBuf>,
    /// The frozen model the weights are learned through (as `tpv eval --model`).
    #[arg(long, requires = "learn")]
    pub model: Option<String>,
    /// The records' task from the registry.
    #[arg(long, requires = "learn")]
    pub task: Option<String>,
    /// Optimizer steps (each over all the examples).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Adam's learning rate for the weights.
    #[arg(long, default_value_t = 0.05)]
    pub learning_rate: f64,
    /// One weight per vector and virtual token (K·R) instead of one per vector.
    #[arg(long, requires = "learn")]
    pub per_token: bool,
    /// Without gradients: an evolution strategy over the weights, --steps generations of
    /// --population candidates, forward passes only (LoraHub's way, for when a backward pass is
    /// too expensive).
    #[arg(long, requires = "learn", conflicts_with = "per_token")]
    pub gradient_free: bool,
    /// Candidates per generation of --gradient-free.
    #[arg(long, default_value_t = 8)]
    pub population: usize,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu", env = "TPV_DEVICE")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct SimilarityArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Compare task prompt vectors (task prompts minus their stored origins).
    #[arg(long)]
    pub vectors: bool,
    #[arg(long, value_parser = named::<Measure>(), default_value = "cosine-mean")]
    pub measure: Measure,
    /// The paper's across-origins view: per task pair an origins × origins matrix, averaged.
    #[arg(long)]
    pub across_origins: bool,
    /// The global `--json` (set by `commands::run`).
    #[arg(skip)]
    pub json: bool,
}
