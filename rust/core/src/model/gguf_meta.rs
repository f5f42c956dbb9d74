//! GGUF metadata as the architectures read it: `<arch>.<key>` values with typed errors, and the small
//! tensors some architectures keep configuration in (Phi-3's rope factors).

use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file::Value;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

/// `<arch>.` keys that never change the math (sizes the engine does not use, provenance).
const NEUTRAL: &[&str] = &["rope.scaling.finetuned", "tensor_data_layout", "pooling_type", "expert_shared_count", "rope.scaling.yarn_log_multiplier"];

use super::config::MAX_SIZE as MAX_COUNT;

pub struct GgufMeta<'a> {
    pub md: &'a HashMap<String, Value>,
    /// The file, for errors.
    pub path: &'a str,
    /// Whether the file has its own `output.weight` (else the embedding is tied).
    pub has_output_weight: bool,
    /// Reads a small tensor by its GGUF name as f32 values (`None`: not in the file).
    pub read_f32: &'a dyn Fn(&str) -> Option<Vec<f32>>,
    /// `<arch>.` keys looked at so far.
    pub read: RefCell<BTreeSet<String>>,
}

impl GgufMeta<'_> {
    pub fn err(&self, m: impl Into<String>) -> EngineError {
        EngineError::model_load(self.path, m)
    }

    /// `general.architecture` (empty when absent; the registry reports it).
    pub fn arch(&self) -> &str {
        match self.md.get("general.architecture") {
            Some(Value::String(s)) => s,
            _ => "",
        }
    }

    fn value(&self, k: &str) -> Option<&Value> {
        self.read.borrow_mut().insert(k.to_string());
        self.md.get(&format!("{}.{k}", self.arch()))
    }

    /// Refuses any `<arch>.` key nothing read (a mixture of experts in a `llama` file, a norm or rope
    /// option we do not implement), naming it; zero and false values mean "off" and pass.
    pub fn finish(&self) -> Result<()> {
        let prefix = format!("{}.", self.arch());
        let read = self.read.borrow();
        let mut unknown: Vec<&String> = self
            .md
            .iter()
            .filter(|(k, v)| {
                k.strip_prefix(&prefix).is_some_and(|rest| !read.contains(rest) && !NEUTRAL.contains(&rest))
                    && !matches!(v, Value::Bool(false) | Value::U32(0) | Value::U64(0) | Value::I32(0) | Value::I64(0))
            })
            .map(|(k, _)| k)
            .collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(k) => Err(self.err(format!("GGUF key {k:?} is not supported by this engine's {} implementation (it may change the model's math)", self.arch()))),
        }
    }

    pub fn usize(&self, k: &str) -> Result<Option<usize>> {
        let Some(v) = self.value(k) else { return Ok(None) };
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => return Err(self.err(format!("{}.{k} must be a non-negative integer, found {other:?}", self.arch()))),
        };
        // Checked on reading: sizes become allocations (one entry per layer) before the config is whole.
        if n > MAX_COUNT as u64 {
            return Err(self.err(format!("{}.{k} = {n} is out of range (at most {MAX_COUNT})", self.arch())));
        }
        Ok(Some(n as usize))
    }

    pub fn need_usize(&self, k: &str) -> Result<usize> {
        self.usize(k)?.ok_or_else(|| self.err(format!("GGUF is missing {}.{k}", self.arch())))
    }

    pub fn f64(&self, k: &str) -> Result<Option<f64>> {
        match self.value(k) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(other) => Err(self.err(format!("{}.{k} must be a number, found {other:?}", self.arch()))),
        }
    }

    pub fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.value(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(format!("{}.{k} must be true or false, found {other:?}", self.arch()))),
        }
    }

    pub fn str(&self, k: &str) -> Option<&str> {
        match self.value(k) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The vocabulary size: `<arch>.vocab_size`, else the tokenizer's token count.
    pub fn vocab_size(&self) -> Result<usize> {
        if let Some(v) = self.usize("vocab_size")? {
            return Ok(v);
        }
        match self.md.get("tokenizer.ggml.tokens") {
            Some(Value::Array(t)) => Ok(t.len()),
            _ => Err(self.err("GGUF has neither vocab_size nor tokenizer.ggml.tokens")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::AttentionKind;
    use crate::model::registry::config_from_gguf;
    use crate::model::rope::RopeScaling;

    fn md(arch: &str, extra: &[(&str, Value)]) -> HashMap<String, Value> {
        let mut m: HashMap<String, Value> = [
            ("block_count", Value::U32(2)),
            ("embedding_length", Value::U32(64)),
            ("feed_forward_length", Value::U32(128)),
            ("attention.head_count", Value::U32(4)),
            ("attention.head_count_kv", Value::U32(2)),
            ("vocab_size", Value::U32(100)),
            ("context_length", Value::U32(256)),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{arch}.{k}"), v))
        .collect();
        m.insert("general.architecture".into(), Value::String(arch.into()));
        for (k, v) in extra {
            m.insert(format!("{arch}.{k}"), v.clone());
        }
        m
    }

    fn parse(md: &HashMap<String, Value>, tensors: &dyn Fn(&str) -> Option<Vec<f32>>) -> Result<crate::model::ModelConfig> {
        config_from_gguf(&GgufMeta { md, path: "m.gguf", has_output_weight: true, read_f32: tensors, read: Default::default() })
    }

    #[test]
    fn unread_keys_are_refused_and_off_values_pass() {
        let none = |_: &str| None;
        parse(&md("llama", &[("expert_count", Value::U32(0))]), &none).unwrap();
        // A llama file with experts is Mixtral; it must say how many a token uses.
        let e = parse(&md("llama", &[("expert_count", Value::U32(8))]), &none).unwrap_err().to_string();
        assert!(e.contains("llama.expert_used_count"), "{e}");
        let m = parse(&md("llama", &[("expert_count", Value::U32(8)), ("expert_used_count", Value::U32(2))]), &none).unwrap();
        assert_eq!(m.moe.map(|x| (x.num_experts, x.top_k)), Some((8, 2)));
        let e = parse(&md("llama", &[("rope.scaling.type", Value::String("su".into()))]), &none).unwrap_err().to_string();
        assert!(e.contains("rope.scaling.type"), "{e}");
    }

    #[test]
    fn broken_values_are_refused_naming_the_gguf_key() {
        let none = |_: &str| None;
        for (key, value, named) in [
            ("attention.layer_norm_rms_epsilon", Value::F32(-1e-5), "llama.attention.layer_norm_rms_epsilon"),
            ("attention.layer_norm_rms_epsilon", Value::F32(f32::NAN), "llama.attention.layer_norm_rms_epsilon"),
            ("rope.freq_base", Value::F32(0.0), "llama.rope.freq_base"),
            ("context_length", Value::U32(0), "llama.context_length"),
            ("context_length", Value::U32(u32::MAX), "llama.context_length"),
            ("block_count", Value::U32(u32::MAX), "llama.block_count"),
            ("attention.head_count_kv", Value::U32(3), "llama.attention.head_count_kv"),
        ] {
            let e = parse(&md("llama", &[(key, value.clone())]), &none).expect_err(key).to_string();
            assert!(e.contains(named), "{key} = {value:?}: {e}");
        }
    }

    #[test]
    fn gpt_oss_alternates_windows_and_takes_llama_cpp_s_built_in_swiglu() {
        use crate::model::config::{ClampedSwiglu, Routing};
        let none = |_: &str| None;
        let keys = |extra: &[(&str, Value)]| {
            let mut k = vec![
                ("attention.sliding_window", Value::U32(16)),
                ("expert_count", Value::U32(8)),
                ("expert_used_count", Value::U32(2)),
                ("expert_feed_forward_length", Value::U32(48)),
                ("block_count", Value::U32(4)),
            ];
            k.extend(extra.iter().cloned());
            md("gpt-oss", &k)
        };
        let g = parse(&keys(&[]), &none).unwrap();
        let (s, f) = (AttentionKind::Sliding(16), AttentionKind::Full);
        assert_eq!(g.layers.iter().map(|l| l.attention).collect::<Vec<_>>(), [s, f, s, f]);
        assert!(g.attention_sinks && g.attention_bias && g.o_proj_bias);
        let m = g.moe.as_ref().unwrap();
        assert_eq!((m.num_experts, m.top_k, m.expert_intermediate, g.intermediate_size), (8, 2, 48, 48));
        assert_eq!((m.routing, m.norm_topk_prob), (Routing::TopKSoftmax, false));
        assert_eq!(m.clamped_swiglu, Some(ClampedSwiglu { alpha: 1.702, limit: 7.0 }));
        // llama.cpp: layer i slides iff i % pattern < pattern - 1; the sliding layers' own rope base.
        let p3 = parse(&keys(&[("attention.sliding_window_pattern", Value::U32(3)), ("rope.freq_base_swa", Value::F32(500.0))]), &none).unwrap();
        assert_eq!(p3.layers.iter().map(|l| (l.attention, l.rope)).collect::<Vec<_>>(), [(s, 1), (s, 1), (f, 0), (s, 1)]);
        assert_eq!((p3.ropes[0].theta, p3.ropes[1].theta), (10_000.0, 500.0));
        for (extra, named) in [
            (("expert_weights_scale", Value::F32(2.5)), "gpt-oss.expert_weights_scale"),
            (("rope.dimension_count", Value::U32(8)), "gpt-oss.rope.dimension_count"),
            (("attention.sliding_window", Value::U32(0)), "gpt-oss.attention.sliding_window"),
            (("attention.sliding_window_pattern", Value::Array(vec![Value::Bool(true)])), "gpt-oss.attention.sliding_window_pattern"),
        ] {
            let e = parse(&keys(std::slice::from_ref(&extra)), &none).expect_err(extra.0).to_string();
            assert!(e.contains(named), "{}: {e}", extra.0);
        }
        let mut no_window = keys(&[]);
        no_window.remove("gpt-oss.attention.sliding_window");
        let e = parse(&no_window, &none).unwrap_err().to_string();
        assert!(e.contains("gpt-oss.attention.sliding_window"), "{e}");
    }

    #[test]
    fn gemma2_layers_and_llama31_rope_freqs() {
        let none = |_: &str| None;
        let g = parse(
            &md("gemma2", &[("attention.sliding_window", Value::U32(16)), ("attn_logit_softcapping", Value::F32(50.0)), ("final_logit_softcapping", Value::F32(30.0))]),
            &none,
        )
        .unwrap();
        assert_eq!(g.layers[0].attention, AttentionKind::Sliding(16));
        assert_eq!(g.layers[1].attention, AttentionKind::Full);
        assert!(!g.norm_plus_one, "llama.cpp stores Gemma's norms with the 1 added");
        assert_eq!((g.attn_logit_softcap, g.final_logit_softcap), (Some(50.0), Some(30.0)));
        let freqs = |n: &str| (n == "rope_freqs.weight").then(|| vec![1.0f32, 2.0, 4.0, 8.0, 1.0, 1.0, 1.0, 1.0]);
        let l = parse(&md("llama", &[]), &freqs).unwrap();
        assert!(matches!(&l.ropes[0].scaling, RopeScaling::Divisors(d) if d[3] == 8.0));
    }
}
