//! `tpv origins`: origin run files sampled from the vocabulary embeddings.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tpv_shared::origins::{Sampling, origin_token_ids};
use tpv_shared::{Layout, ModelRef, OriginRef, PromptTensor, SoftPrompt};

use super::print_json;
use crate::cli::OriginsArgs;
use crate::{io, models};

pub fn run(args: &OriginsArgs) -> Result<()> {
    let loaded = models::load(&args.model, DType::F32, &Device::Cpu)?;
    let embeddings = loaded.model.embeddings();
    let (vocab, d) = embeddings.dims2()?;
    let sampling = if args.sample_vocab {
        Sampling::SampleVocab
    } else {
        Sampling::VocabBelow {
            below: args.below,
            draw: args.draw,
        }
    };
    let ids = origin_token_ids(sampling, args.count, args.tokens, args.seed, vocab)?;
    let task_type = loaded.model.task_type();
    let mut written = Vec::new();
    for (i, ids) in ids.iter().enumerate() {
        let index = Tensor::from_slice(ids, ids.len(), &Device::Cpu)?;
        let rows: Vec<f32> = tpv_shared::model::host::flat_f32(&embeddings.index_select(&index, 0)?)?;
        let id = format!("origin{i}");
        let mut origin = SoftPrompt::origin(
            PromptTensor::new(ids.len(), d, rows)?,
            OriginRef {
                id: id.clone(),
                seed: Some(args.seed),
                index: Some(i as u32),
                sampling: Some(sampling.describe()),
            },
        );
        origin.meta.model = Some(ModelRef {
            id: loaded.id.clone(),
            revision: None,
        });
        origin.meta.layout = Layout {
            task_type: Some(task_type),
            num_transformer_submodules: task_type.default_submodules(),
        };
        origin.meta.config = Some(json!({ "token_ids": ids, "sampling": sampling }));
        let path = args.output.join(format!("{id}.safetensors"));
        io::write_run(&path, &origin).with_context(|| format!("writing {}", path.display()))?;
        written.push(path.display().to_string());
    }
    if args.json {
        print_json(&json!({ "origins": written }))?;
    } else {
        for w in &written {
            out!("wrote {w}");
        }
    }
    Ok(())
}
