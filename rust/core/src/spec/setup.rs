//! The engine's speculative decoding from its arguments: the mode, and for `small_draft` the draft model
//! (`additional_models[0]`, "path" or MLC's "path:model_lib") loaded on the target's device in its dtype,
//! with a KV cache of as many blocks as the target's; for `eagle` the EAGLE head (HF safetensors or an MLC
//! directory), whose hidden size must be the target's.

use super::draft_model::DraftModel;
use super::eagle::EagleModel;
use crate::model::eagle::EagleHead;
use super::{SpecMode, Speculation};
use crate::attention::PagedKvCache;
use crate::engine::{EngineArgs, EngineSizes};
use crate::error::{EngineError, Result};
use crate::loader::{self, QuantMode};
use crate::runner::ModelRunner;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device};

/// `None` when speculation is off.
pub fn build(
    args: &EngineArgs,
    device: &Device,
    dtype: DType,
    quant: QuantMode,
    target: &Tokenizer,
    target_hidden: usize,
    sizes: &EngineSizes,
) -> Result<Option<Speculation>> {
    let mode = SpecMode::parse(&args.speculative_mode)?;
    let draft_length = args.spec_draft_length;
    match mode {
        SpecMode::Disable => {
            if !args.additional_models.is_empty() {
                return Err(EngineError::bad_request("additional_models", "additional models are draft models and need speculative_mode=\"small_draft\""));
            }
            Ok(None)
        }
        SpecMode::Ngram => Ok(Some(Speculation { mode, draft_length, draft: None, eagle: None })),
        SpecMode::Eagle => {
            let Some(spec) = args.additional_models.first() else {
                return Err(EngineError::bad_request("additional_models", "speculative_mode=\"eagle\" needs an EAGLE head in additional_models"));
            };
            let eagle = load_eagle(draft_path(spec), device, dtype, target_hidden, sizes)?;
            Ok(Some(Speculation { mode, draft_length, draft: None, eagle: Some(eagle) }))
        }
        SpecMode::SmallDraft => {
            let Some(spec) = args.additional_models.first() else {
                return Err(EngineError::bad_request("additional_models", "speculative_mode=\"small_draft\" needs a draft model in additional_models"));
            };
            let draft = load_draft(draft_path(spec), device, dtype, quant, target, sizes)?;
            Ok(Some(Speculation { mode, draft_length, draft: Some(draft), eagle: None }))
        }
    }
}

/// MLC writes an additional model as "path" or "path:model_lib"; a model library means nothing here.
fn draft_path(spec: &str) -> &str {
    match spec.rsplit_once(':') {
        Some((path, lib)) if !path.is_empty() && !lib.contains('/') && std::path::Path::new(path).exists() => path,
        _ => spec,
    }
}

fn load_draft(path: &str, device: &Device, dtype: DType, quant: QuantMode, target: &Tokenizer, sizes: &EngineSizes) -> Result<DraftModel> {
    let loaded = loader::load(path, device, dtype, quant)?;
    if loaded.tokenizer.vocab_size() != target.vocab_size() {
        return Err(EngineError::model_load(
            path,
            format!("the draft model's vocabulary has {} tokens, the target's {}: they must share one tokenizer", loaded.tokenizer.vocab_size(), target.vocab_size()),
        ));
    }
    let cfg = &loaded.config;
    let model = crate::model::registry::build(cfg, &loaded.weights, device, dtype)?;
    let kv = PagedKvCache::new(cfg.num_hidden_layers, sizes.num_kv_blocks, sizes.kv_block_size, cfg.num_key_value_heads, cfg.head_dim, dtype, device)?;
    Ok(DraftModel::new(ModelRunner::new(model, kv), sizes.num_kv_blocks, sizes.kv_block_size))
}

fn load_eagle(path: &str, device: &Device, dtype: DType, target_hidden: usize, sizes: &EngineSizes) -> Result<EagleModel> {
    let (cfg, weights) = loader::load_weights(path, device, dtype)?;
    if cfg.hidden_size != target_hidden {
        return Err(EngineError::model_load(path, format!("the EAGLE head's hidden size is {}, the target's {target_hidden}", cfg.hidden_size)));
    }
    let head = EagleHead::load(&cfg, &weights, device, dtype)?;
    let kv = PagedKvCache::new(cfg.num_hidden_layers, sizes.num_kv_blocks, sizes.kv_block_size, cfg.num_key_value_heads, cfg.head_dim, dtype, device)?;
    Ok(EagleModel::new(head, kv, sizes.num_kv_blocks, sizes.kv_block_size))
}
