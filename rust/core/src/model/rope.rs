//! Rotary position embeddings: the rope types transformers defines (`default`, `linear`, `dynamic`,
//! `llama3`, `yarn`, `longrope`), read from either config form (`rope_theta` + `rope_scaling` of
//! transformers 4, `rope_parameters` of transformers 5), and the per-position cos/sin tables the
//! kernels read.
//!
//! The tables are indexed by position, so a rope whose frequencies depend on the sequence length
//! (`dynamic`, `longrope`) is evaluated per position: the row of position `p` uses the frequencies of
//! a sequence of `p + 1` tokens. That is exactly what transformers computes while decoding (one token
//! at `p`, `seq_len = p + 1`) and for every prompt that fits the original context; for a prompt that
//! exceeds it, transformers applies the prompt length's frequencies to all prompt tokens at once
//! (batch- and chunking-dependent), where we keep each position's own (independent of batching and of
//! how the prompt is chunked).

use crate::error::{EngineError, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{Map, Value};

/// Which elements RoPE rotates together. HF checkpoints rotate the two halves of the rotated part of a
/// head (`rotate_half`); llama.cpp's converter permutes Q/K rows of llama-arch GGUFs so that adjacent
/// pairs are rotated instead, and we keep its layout rather than undoing the permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Half,
    Interleaved,
}

/// How the base frequencies are changed for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// NTK-aware base growth beyond `original_max_position_embeddings`.
    Dynamic { factor: f64, original_max_position_embeddings: usize },
    /// Llama 3.1's frequency-dependent interpolation.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// YaRN: interpolation ramped between `beta_fast` and `beta_slow` rotations; cos and sin scaled by
    /// `attention_factor`.
    Yarn { factor: f64, original_max_position_embeddings: usize, beta_fast: f64, beta_slow: f64, attention_factor: f64, truncate: bool },
    /// Per-dimension divisors of the frequencies (llama.cpp's `rope_freqs.weight`, Llama 3.1's scaling
    /// precomputed).
    Divisors(Vec<f64>),
    /// Phi-3's per-dimension factors: `short` for sequences within the original context, `long` for
    /// longer ones. The tables hold both: rows `0..max_positions` short, then as many long; a sequence
    /// in the long regime reads its rows at `position + max_positions`.
    LongRope { short: Vec<f64>, long: Vec<f64>, original_max_position_embeddings: usize, attention_factor: f64 },
}

/// One rotary embedding: its base, scaling, how many leading dimensions of a head it rotates, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Leading dimensions of each head that rotate (`head_dim * partial_rotary_factor`); the rest pass.
    pub rotary_dim: usize,
    pub style: RopeStyle,
}

/// What the rope parser needs from the rest of the config.
pub struct RopeContext<'a> {
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    /// Where the config came from, for errors.
    pub path: &'a str,
    /// The key the parameters were read from (`rope_scaling`, `rope_parameters.full_attention`), for errors.
    pub key: &'a str,
}

fn num(obj: &Map<String, Value>, k: &str) -> Option<f64> {
    obj.get(k).and_then(|v| v.as_f64())
}

/// The keys each rope type reads; any other key in the object is refused (it would change the math).
const KEYS: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("linear", &["factor"]),
    ("dynamic", &["factor", "original_max_position_embeddings"]),
    ("llama3", &["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]),
    ("yarn", &["factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate"]),
    ("longrope", &["short_factor", "long_factor", "factor", "original_max_position_embeddings", "attention_factor"]),
];

/// Keys of a rope object that never change the math.
const NEUTRAL: &[&str] = &["rope_type", "type", "rope_theta", "partial_rotary_factor"];

impl RopeScaling {
    /// Parses a rope-parameters object (`rope_scaling` or one `rope_parameters` entry; `rope_theta` and
    /// `partial_rotary_factor` in it are read by the caller). `top_original`: the config's top-level
    /// `original_max_position_embeddings` (Phi-3 keeps it there).
    pub fn parse(obj: &Map<String, Value>, top_original: Option<usize>, ctx: &RopeContext<'_>) -> Result<RopeScaling> {
        let err = |m: String| EngineError::model_load(ctx.path, format!("{}: {m}", ctx.key));
        let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
        // transformers 4 called Phi-3's longrope "su"
        let kind = if kind == "su" { "longrope" } else { kind };
        let Some((_, keys)) = KEYS.iter().find(|(k, _)| *k == kind) else {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(err(format!("rope_type {kind:?} is not supported; supported: {}", known.join(", "))));
        };
        if let Some(extra) = obj.keys().find(|k| !keys.contains(&k.as_str()) && !NEUTRAL.contains(&k.as_str()) && !obj[*k].is_null()) {
            return Err(err(format!("key {extra:?} of rope_type {kind:?} is not supported")));
        }
        let need = |k: &str| num(obj, k).ok_or_else(|| err(format!("rope_type {kind:?} needs {k:?}")));
        let orig = |fallback: Option<usize>| -> Result<usize> {
            match num(obj, "original_max_position_embeddings") {
                Some(v) if v >= 1.0 => Ok(v as usize),
                Some(v) => Err(err(format!("original_max_position_embeddings {v} must be at least 1"))),
                None => fallback.ok_or_else(|| err(format!("rope_type {kind:?} needs \"original_max_position_embeddings\""))),
            }
        };
        let factor = |f: f64| if f > 0.0 && f.is_finite() { Ok(f) } else { Err(err(format!("factor {f} must be positive"))) };
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: factor(need("factor")?)? },
            "dynamic" => RopeScaling::Dynamic {
                factor: factor(need("factor")?)?,
                original_max_position_embeddings: orig(Some(ctx.max_position_embeddings))?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor(need("factor")?)?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: orig(None)?,
            },
            "yarn" => Self::yarn(obj, ctx, &err)?,
            "longrope" => {
                let list = |k: &str| -> Result<Vec<f64>> {
                    let v = obj.get(k).and_then(|v| v.as_array()).ok_or_else(|| err(format!("rope_type \"longrope\" needs {k:?}")))?;
                    let out: Vec<f64> = v.iter().filter_map(|x| x.as_f64()).collect();
                    if out.len() != v.len() {
                        return Err(err(format!("{k} must be a list of numbers")));
                    }
                    Ok(out)
                };
                let original = orig(top_original.or(Some(ctx.max_position_embeddings)))?;
                // transformers: the attention factor follows from how far the context was extended.
                let scale = ctx.max_position_embeddings as f64 / original as f64;
                let attention_factor = match num(obj, "attention_factor") {
                    Some(a) => a,
                    None if scale <= 1.0 => 1.0,
                    None => (1.0 + scale.ln() / (original as f64).ln()).sqrt(),
                };
                RopeScaling::LongRope { short: list("short_factor")?, long: list("long_factor")?, original_max_position_embeddings: original, attention_factor }
            }
            _ => unreachable!("every kind in KEYS is handled"),
        })
    }

    fn yarn(obj: &Map<String, Value>, ctx: &RopeContext<'_>, err: &dyn Fn(String) -> EngineError) -> Result<RopeScaling> {
        let original = match num(obj, "original_max_position_embeddings") {
            Some(o) if o >= 1.0 => o as usize,
            Some(o) => return Err(err(format!("original_max_position_embeddings {o} must be at least 1"))),
            None => ctx.max_position_embeddings,
        };
        // transformers 5: the explicit factor, even where it disagrees with max_position_embeddings /
        // original_max_position_embeddings (it only warns); the ratio only when the factor is missing
        // (DeepSeek-V3-style configs that keep the pretrained length beside the extended one).
        let factor = match num(obj, "factor") {
            Some(f) if f > 0.0 => f,
            Some(f) => return Err(err(format!("rope_type \"yarn\" needs a positive \"factor\", got {f}"))),
            None if original < ctx.max_position_embeddings => ctx.max_position_embeddings as f64 / original as f64,
            None => return Err(err("rope_type \"yarn\" needs a \"factor\" (or original_max_position_embeddings below max_position_embeddings)".into())),
        };
        let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
        let attention_factor = match (num(obj, "attention_factor"), num(obj, "mscale"), num(obj, "mscale_all_dim")) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
            _ => mscale(factor, 1.0),
        };
        Ok(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: original,
            beta_fast: num(obj, "beta_fast").unwrap_or(32.0),
            beta_slow: num(obj, "beta_slow").unwrap_or(1.0),
            attention_factor,
            truncate: obj.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true),
        })
    }
}

impl RopeConfig {
    /// Inverse frequencies `[rotary_dim / 2]` and the cos/sin scale for a sequence of `seq_len` tokens.
    fn inv_freq(&self, seq_len: usize) -> (Vec<f64>, f64) {
        let d = self.rotary_dim;
        let base_freq = |base: f64| (0..d / 2).map(|i| 1.0 / base.powf(2.0 * i as f64 / d as f64)).collect::<Vec<f64>>();
        match &self.scaling {
            RopeScaling::None => (base_freq(self.theta), 1.0),
            RopeScaling::Linear { factor } => (base_freq(self.theta).into_iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Dynamic { factor, original_max_position_embeddings: orig } => {
                let len = seq_len.max(*orig) as f64;
                let base = self.theta * ((factor * len / *orig as f64) - (factor - 1.0)).powf(d as f64 / (d as f64 - 2.0));
                (base_freq(base), 1.0)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = *original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                let f = base_freq(self.theta).into_iter().map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                });
                (f.collect(), 1.0)
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor, truncate } => {
                let (dim, base, orig) = (d as f64, self.theta, *original_max_position_embeddings as f64);
                let correction = |rot: f64| dim * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                let f = base_freq(base).into_iter().enumerate().map(|(i, extra)| {
                    // transformers computes the ramp in f32.
                    let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0) as f64;
                    let extrapolation = 1.0 - ramp;
                    (extra / factor) * (1.0 - extrapolation) + extra * extrapolation
                });
                (f.collect(), *attention_factor)
            }
            RopeScaling::Divisors(d) => (base_freq(self.theta).into_iter().zip(d).map(|(f, e)| f / e).collect(), 1.0),
            RopeScaling::LongRope { short, long, original_max_position_embeddings, attention_factor } => {
                let ext = if seq_len > *original_max_position_embeddings { long } else { short };
                let f = base_freq(self.theta).into_iter().zip(ext).map(|(f, e)| f / e);
                (f.collect(), *attention_factor)
            }
        }
    }

    /// Whether the frequencies depend on the sequence length (evaluated per position).
    fn per_position(&self) -> bool {
        matches!(self.scaling, RopeScaling::Dynamic { .. })
    }

    /// Phi-3's longrope: the sequence length beyond which a sequence runs in the long regime.
    pub fn long_context_from(&self) -> Option<usize> {
        match &self.scaling {
            RopeScaling::LongRope { original_max_position_embeddings, .. } => Some(*original_max_position_embeddings),
            _ => None,
        }
    }

    /// Checks that per-dimension lists fit the rotated dimensions.
    pub fn validate(&self, path: &str) -> Result<()> {
        if self.rotary_dim == 0 || self.rotary_dim % 2 != 0 {
            return Err(EngineError::model_load(path, format!("rotary dimension {} must be even and positive", self.rotary_dim)));
        }
        if let RopeScaling::Divisors(d) = &self.scaling {
            if d.len() != self.rotary_dim / 2 {
                return Err(EngineError::model_load(path, format!("rope_freqs has {} entries; the rotated dimensions need {}", d.len(), self.rotary_dim / 2)));
            }
        }
        if let RopeScaling::LongRope { short, long, .. } = &self.scaling {
            if short.len() != self.rotary_dim / 2 || long.len() != self.rotary_dim / 2 {
                return Err(EngineError::model_load(
                    path,
                    format!("longrope short_factor / long_factor have {} / {} entries; the rotated dimensions need {}", short.len(), long.len(), self.rotary_dim / 2),
                ));
            }
        }
        Ok(())
    }

    /// `(cos, sin)`, each `[max_positions, rotary_dim / 2]` in `dtype` on `device` (`[2 max_positions, ..]`
    /// for longrope: short rows, then long rows), attention factor included. Computed in f64, then
    /// rounded once.
    pub fn tables(&self, max_positions: usize, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let half = self.rotary_dim / 2;
        let regimes = match self.long_context_from() {
            // seq_len picks the factors: at most the threshold gives short, above it long.
            Some(t) => vec![self.inv_freq(t), self.inv_freq(t + 1)],
            None if self.per_position() => Vec::new(),
            None => vec![self.inv_freq(max_positions)],
        };
        let rows = max_positions * regimes.len().max(1);
        let mut cos = Vec::with_capacity(rows * half);
        let mut sin = Vec::with_capacity(rows * half);
        for r in 0..rows {
            let p = r % max_positions;
            let own;
            let (freqs, scale) = match regimes.get(r / max_positions) {
                Some(f) => f,
                None => {
                    own = self.inv_freq(p + 1);
                    &own
                }
            };
            for f in freqs {
                // transformers computes the angles in f32: position * inv_freq, both f32.
                let angle = (p as f32 * *f as f32) as f64;
                cos.push((angle.cos() * scale) as f32);
                sin.push((angle.sin() * scale) as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (rows, half), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        let sin = Tensor::from_vec(sin, (rows, half), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        Ok((cos, sin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RopeContext<'static> {
        RopeContext { head_dim: 16, max_position_embeddings: 128, path: "config.json", key: "rope_scaling" }
    }

    fn parse(v: Value) -> Result<RopeScaling> {
        RopeScaling::parse(v.as_object().unwrap(), None, &ctx())
    }

    #[test]
    fn unknown_rope_type_and_unknown_keys_are_refused() {
        let e = parse(serde_json::json!({"rope_type": "ntk-by-parts", "factor": 2.0})).unwrap_err().to_string();
        assert!(e.contains("rope_type \"ntk-by-parts\" is not supported"), "{e}");
        let e = parse(serde_json::json!({"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0})).unwrap_err().to_string();
        assert!(e.contains("low_freq_factor"), "{e}");
        let e = parse(serde_json::json!({"rope_type": "llama3", "factor": 8.0})).unwrap_err().to_string();
        assert!(e.contains("low_freq_factor"), "{e}");
    }

    #[test]
    fn linear_divides_every_frequency_and_dynamic_is_default_within_the_original_context() {
        let plain = RopeConfig { theta: 10000.0, scaling: RopeScaling::None, rotary_dim: 16, style: RopeStyle::Half };
        let linear = RopeConfig { scaling: parse(serde_json::json!({"type": "linear", "factor": 4.0})).unwrap(), ..plain.clone() };
        let (f0, _) = plain.inv_freq(1);
        let (f1, _) = linear.inv_freq(1);
        for (a, b) in f0.iter().zip(&f1) {
            assert!((a / 4.0 - b).abs() < 1e-15);
        }
        let dynamic = RopeConfig {
            scaling: parse(serde_json::json!({"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 64})).unwrap(),
            ..plain.clone()
        };
        assert_eq!(dynamic.inv_freq(64).0, f0);
        assert!(dynamic.inv_freq(65).0[1] < f0[1], "beyond the original context the base grows");
    }

    #[test]
    fn longrope_switches_factors_at_the_original_context() {
        let scaling = RopeScaling::LongRope { short: vec![1.0; 4], long: vec![2.0; 4], original_max_position_embeddings: 32, attention_factor: 1.5 };
        let r = RopeConfig { theta: 10000.0, scaling, rotary_dim: 8, style: RopeStyle::Half };
        let (short, s) = r.inv_freq(32);
        let (long, _) = r.inv_freq(33);
        assert_eq!(s, 1.5);
        assert!((short[2] / 2.0 - long[2]).abs() < 1e-15);
    }
}
