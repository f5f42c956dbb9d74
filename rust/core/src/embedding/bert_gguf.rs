//! BERT-family encoders from llama.cpp's `bert` GGUF files (convert_hf_to_gguf.py's BertModel, and its
//! RobertaModel / XLMRobertaModel, which write the same architecture).
//!
//! Tensor names are llama.cpp's (token_embd, token_types, position_embd, token_embd_norm, blk.N.attn_q /
//! attn_k / attn_v or a fused attn_qkv, attn_output, attn_output_norm, ffn_up, ffn_down, layer_output_norm),
//! mapped back to HF's here. RoBERTa's converter drops the position table's first `pad_token_id + 1`
//! rows, so a GGUF's positions always start at 0, as llama.cpp's graph numbers them. The file does not
//! say which GELU the model used; BERT-family checkpoints use HF's exact "gelu" (erf), which is what this
//! computes (llama.cpp's graph uses the tanh form). Every `bert.*` key is read or refused by name
//! (GgufMeta::finish), and every tensor is used or refused by name.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{DType, Device, Tensor};

use super::bert::{Bert, EncoderConfig, EncoderWeights, Gelu, Positions};
use super::Pooling;
use crate::error::{EngineError, Result};
use crate::model::gguf_meta::GgufMeta;
use crate::tokenizer::Tokenizer;

/// A loaded GGUF encoder and what the file says about using it.
pub struct GgufEncoder {
    pub bert: Bert,
    pub tokenizer: Tokenizer,
    /// The ids put around each input ([CLS] ... [SEP], or <s> ... </s>).
    pub frame: Option<(u32, u32)>,
    /// `bert.pooling_type`, when it names one.
    pub pooling: Option<Pooling>,
}

/// Whether `path` is a GGUF file of architecture `bert`.
pub fn is_bert_gguf(path: &Path) -> bool {
    if !path.is_file() || path.extension().is_none_or(|x| x != "gguf") {
        return false;
    }
    let Ok(file) = File::open(path) else { return false };
    let Ok(content) = gguf_file::Content::read(&mut BufReader::new(file)) else { return false };
    matches!(content.metadata.get("general.architecture"), Some(Value::String(a)) if a == "bert")
}

pub fn load(path: &Path, device: &Device) -> Result<GgufEncoder> {
    let shown = path.display().to_string();
    let mut file = BufReader::new(File::open(path).map_err(|e| EngineError::model_load(&shown, e.to_string()))?);
    let content = gguf_file::Content::read(&mut file).map_err(|e| EngineError::model_load(&shown, format!("not a valid GGUF file: {e}")))?;
    let file_len = file.get_ref().metadata().map_err(|e| EngineError::model_load(&shown, e.to_string()))?.len();
    crate::loader::check_gguf_tensor_infos(&content, file_len).map_err(|m| EngineError::model_load(&shown, m))?;
    let no_tensors = |_: &str| None;
    let meta = GgufMeta { md: &content.metadata, path: &shown, has_output_weight: false, read_f32: &no_tensors, read: Default::default() };
    // token_type_count is a tokenizer key; older files only have the table.
    let type_rows = content.tensor_infos.get("token_types.weight").map(|t| t.shape.dims()[0]);
    let type_vocab_size = integer(content.metadata.get("tokenizer.ggml.token_type_count")).map(|n| n as usize).or(type_rows).unwrap_or(0);
    let (cfg, pooling) = encoder_config(&meta, type_vocab_size)?;
    meta.finish()?;

    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let hf = hf_name(name).ok_or_else(|| {
            EngineError::model_load(&shown, format!("tensor {name} is not part of a BERT encoder this engine implements (a classifier or projection head changes the embedding)"))
        })?;
        let t = content.tensor(&mut file, name, device).and_then(|q| q.dequantize(device)).map_err(|e| EngineError::model_load(&shown, format!("tensor {name}: {e}")))?;
        tensors.insert(hf, t.to_dtype(DType::F32)?);
    }
    split_fused_qkv(&mut tensors, cfg.num_hidden_layers, cfg.hidden_size, &shown)?;
    let bert = Bert::new(cfg, &EncoderWeights { tensors, source: &shown })?;
    let tokenizer = Tokenizer::from_gguf(&content, path)?;
    let id = |k: &str| integer(content.metadata.get(k)).and_then(|v| u32::try_from(v).ok());
    // gguf-py's SpecialVocab writes [CLS] as BOS (the post-processor's first token) and [SEP] as both EOS and
    // separator; llama.cpp frames an input with them.
    let cls = id("tokenizer.ggml.cls_token_id").or_else(|| id("tokenizer.ggml.bos_token_id"));
    let sep = id("tokenizer.ggml.seperator_token_id").or_else(|| id("tokenizer.ggml.eos_token_id"));
    let frame = cls.zip(sep);
    Ok(GgufEncoder { bert, tokenizer, frame, pooling })
}

fn integer(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

/// `bert.*` metadata -> the encoder's settings and the file's pooling.
fn encoder_config(meta: &GgufMeta, type_vocab_size: usize) -> Result<(EncoderConfig, Option<Pooling>)> {
    let hidden = meta.need_usize("embedding_length")?;
    let heads = meta.need_usize("attention.head_count")?;
    if let Some(kv) = meta.usize("attention.head_count_kv")?.filter(|&kv| kv != heads) {
        return Err(meta.err(format!("bert.attention.head_count_kv = {kv} differs from head_count = {heads}: a BERT encoder has no grouped attention")));
    }
    if meta.bool("attention.causal")? == Some(true) {
        return Err(meta.err("bert.attention.causal is true: a causal BERT is not an embedding encoder"));
    }
    let eps = meta.f64("attention.layer_norm_epsilon")?.unwrap_or(1e-12);
    if !(eps.is_finite() && eps > 0.0) {
        return Err(meta.err(format!("bert.attention.layer_norm_epsilon = {eps} is not a positive number")));
    }
    let pooling = match meta.usize("pooling_type")? {
        None | Some(0) => None,
        Some(1) => Some(Pooling::Mean),
        Some(2) => Some(Pooling::First),
        Some(3) => Some(Pooling::Last),
        Some(other) => return Err(meta.err(format!("bert.pooling_type = {other} (a reranker's head) is not supported: mean, cls, last"))),
    };
    let cfg = EncoderConfig {
        vocab_size: meta.vocab_size()?,
        hidden_size: hidden,
        num_hidden_layers: meta.need_usize("block_count")?,
        num_attention_heads: heads,
        intermediate_size: meta.need_usize("feed_forward_length")?,
        gelu: Gelu::Erf,
        max_position_embeddings: meta.need_usize("context_length")?,
        type_vocab_size,
        layer_norm_eps: eps,
        positions: Positions::FromZero,
    };
    Ok((cfg, pooling))
}

/// llama.cpp's tensor name -> HF BertModel's (no prefix).
fn hf_name(gguf: &str) -> Option<String> {
    let (base, suffix) = gguf.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let fixed = match base {
        "token_embd" => Some("embeddings.word_embeddings"),
        "token_types" => Some("embeddings.token_type_embeddings"),
        "position_embd" => Some("embeddings.position_embeddings"),
        "token_embd_norm" => Some("embeddings.LayerNorm"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(format!("{f}.{suffix}"));
    }
    let rest = base.strip_prefix("blk.")?;
    let (idx, module) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let hf = match module {
        "attn_q" => "attention.self.query",
        "attn_k" => "attention.self.key",
        "attn_v" => "attention.self.value",
        // Split into the three above once all tensors are read.
        "attn_qkv" => "attention.self.qkv",
        "attn_output" => "attention.output.dense",
        "attn_output_norm" => "attention.output.LayerNorm",
        "ffn_up" => "intermediate.dense",
        "ffn_down" => "output.dense",
        "layer_output_norm" => "output.LayerNorm",
        _ => return None,
    };
    Some(format!("encoder.layer.{idx}.{hf}.{suffix}"))
}

/// A fused `attn_qkv` (`[3 * hidden, hidden]`, rows q | k | v) -> separate query, key and value.
fn split_fused_qkv(tensors: &mut HashMap<String, Tensor>, layers: usize, hidden: usize, shown: &str) -> Result<()> {
    for i in 0..layers {
        for suffix in ["weight", "bias"] {
            let Some(fused) = tensors.remove(&format!("encoder.layer.{i}.attention.self.qkv.{suffix}")) else { continue };
            if fused.dim(0)? != 3 * hidden {
                return Err(EngineError::model_load(shown, format!("blk.{i}.attn_qkv.{suffix} has shape {:?}, expected {} rows", fused.dims(), 3 * hidden)));
            }
            for (k, part) in ["query", "key", "value"].iter().enumerate() {
                tensors.insert(format!("encoder.layer.{i}.attention.self.{part}.{suffix}"), fused.narrow(0, k * hidden, hidden)?.contiguous()?);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_map_to_hf() {
        assert_eq!(hf_name("token_types.weight").as_deref(), Some("embeddings.token_type_embeddings.weight"));
        assert_eq!(hf_name("blk.3.attn_output_norm.bias").as_deref(), Some("encoder.layer.3.attention.output.LayerNorm.bias"));
        assert_eq!(hf_name("blk.0.ffn_down.weight").as_deref(), Some("encoder.layer.0.output.dense.weight"));
        assert_eq!(hf_name("cls.output.weight"), None);
        assert_eq!(hf_name("dense_2.weight"), None);
    }

    fn parse(extra: &[(&str, Value)]) -> Result<(EncoderConfig, Option<Pooling>)> {
        let mut md: HashMap<String, Value> = [
            ("block_count", Value::U32(2)),
            ("context_length", Value::U32(64)),
            ("embedding_length", Value::U32(32)),
            ("feed_forward_length", Value::U32(64)),
            ("attention.head_count", Value::U32(4)),
            ("attention.layer_norm_epsilon", Value::F32(1e-12)),
            ("attention.causal", Value::Bool(false)),
            ("pooling_type", Value::U32(2)),
            ("vocab_size", Value::U32(20)),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .map(|(k, v)| (format!("bert.{k}"), v))
        .collect();
        md.insert("general.architecture".into(), Value::String("bert".into()));
        let none = |_: &str| None;
        let meta = GgufMeta { md: &md, path: "m.gguf", has_output_weight: false, read_f32: &none, read: Default::default() };
        let parsed = encoder_config(&meta, 2)?;
        meta.finish()?;
        Ok(parsed)
    }

    #[test]
    fn bert_keys_are_read_or_refused_by_name() {
        let (cfg, pooling) = parse(&[]).unwrap();
        assert_eq!((cfg.num_hidden_layers, cfg.max_position_embeddings, pooling), (2, 64, Some(Pooling::First)));
        assert_eq!(parse(&[("pooling_type", Value::U32(1))]).unwrap().1, Some(Pooling::Mean));
        for (key, value) in [
            ("attention.causal", Value::Bool(true)),
            ("attention.head_count_kv", Value::U32(2)),
            ("pooling_type", Value::U32(4)),
            ("rope.freq_base", Value::F32(10000.0)),
            ("embedding_length_out", Value::U32(16)),
        ] {
            let e = parse(&[(key, value.clone())]).expect_err(key).to_string();
            assert!(e.contains(&format!("bert.{key}")), "{key}: {e}");
        }
    }
}
