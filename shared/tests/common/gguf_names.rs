//! Shared by `tests/gguf.rs` and `tests/configs.rs`: writing a HF LLaMA, Qwen2 or Qwen3
//! checkpoint as GGUF, as llama.cpp's converter names its tensors (and permutes LLaMA's Q/K rows).
#![allow(clippy::unwrap_used, dead_code)]

use tpv_shared::model::Tensor;

/// llama.cpp's `permute`: `w.reshape(h, 2, rows/h/2, cols).swapaxes(1, 2).reshape(rows, cols)`
/// (a bias as one column).
pub fn permute(w: &Tensor, heads: usize) -> Tensor {
    let rows = w.dim(0).unwrap();
    let cols = w.elem_count() / rows;
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape(w.shape())
        .unwrap()
}

pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, what) = rest.split_once('.')?;
    let g = match what {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.bias" => "attn_output.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}
