//! `tpv peft import` and `tpv peft export`.

use anyhow::{Context, Result, bail};
use serde_json::json;
use tpv_shared::peft::{self, PeftAdapter};
use tpv_shared::{ModelRef, OriginRef, PromptKind};

use super::print_json;
use crate::cli::{ImportAs, PeftExportArgs, PeftImportArgs};
use crate::io;

pub fn import(args: &PeftImportArgs) -> Result<()> {
    let loaded = io::load(&args.adapter)?;
    let Some(adapter) = &loaded.doc.peft else {
        bail!(
            "{} is already a tpv run file, not a peft adapter",
            args.adapter.display()
        );
    };
    let origin = args.origin.as_deref().map(io::load_prompt).transpose()?;
    let kind = match args.as_kind {
        ImportAs::Origin => PromptKind::Origin,
        ImportAs::TaskPrompt => PromptKind::TaskPrompt,
    };
    if kind == PromptKind::Origin && origin.is_some() {
        bail!("--origin names the origin of a task prompt; an imported origin has none (drop --as origin or --origin)");
    }
    let mut prompt = adapter
        .to_prompt(kind, origin.as_ref())
        .with_context(|| format!("converting {}", args.adapter.display()))?;
    if let Some(task) = &args.task {
        prompt.meta.tasks = vec![task.clone()];
    }
    if let Some(id) = &args.origin_id {
        match &mut prompt.meta.origin {
            Some(o) => o.id = id.clone(),
            None => {
                prompt.meta.origin = Some(OriginRef {
                    id: id.clone(),
                    seed: None,
                    index: None,
                    sampling: None,
                });
            }
        }
    }
    if let Some(model) = &args.model {
        prompt.meta.model = Some(ModelRef {
            id: model.clone(),
            revision: None,
        });
    }
    io::write_run(&args.output, &prompt)?;
    if args.json {
        print_json(&json!({
            "output": args.output.display().to_string(),
            "kind": prompt.kind().as_str(),
            "label": prompt.label(),
            "shape": prompt.shape(),
            "stored_shape": adapter.embeddings.shape(),
            "has_origin": prompt.origin.is_some(),
        }))?;
    } else {
        let label = prompt.label();
        let named = if label == prompt.kind().as_str() {
            String::new()
        } else {
            format!(" {label}")
        };
        out!(
            "wrote {} ({}{named}, {} of {} stored rows)",
            args.output.display(),
            prompt.kind(),
            prompt.shape()[0],
            adapter.embeddings.rows()
        );
    }
    Ok(())
}

pub fn export(args: &PeftExportArgs) -> Result<()> {
    let mut prompt = io::load_prompt(&args.run)?;
    if let Some(task_type) = args.task_type {
        prompt.meta.layout.task_type = Some(task_type);
        prompt.meta.layout.num_transformer_submodules = task_type.default_submodules();
    }
    if prompt.meta.layout.task_type.is_none() {
        bail!(
            "{} does not record whether its model is seq2seq or causal; pass --task-type",
            args.run.display()
        );
    }
    if let Some(base) = &args.base_model {
        prompt.meta.model = Some(ModelRef {
            id: base.clone(),
            revision: None,
        });
    }
    let adapter = PeftAdapter::from_prompt(&prompt).with_context(|| format!("exporting {}", args.run.display()))?;
    let (config, weights) = adapter.to_files()?;
    io::write_atomic(&args.output.join(peft::WEIGHTS_FILE), &weights)?;
    io::write_atomic(&args.output.join(peft::CONFIG_FILE), config.as_bytes())?;
    if args.json {
        print_json(&json!({
            "output": args.output.display().to_string(),
            "shape": adapter.embeddings.shape(),
            "task_type": adapter.config.task_type,
            "num_virtual_tokens": adapter.config.num_virtual_tokens,
        }))?;
    } else {
        out!(
            "wrote {} (prompt_embeddings {:?}, {})",
            args.output.display(),
            adapter.embeddings.shape(),
            adapter.config.task_type.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}
