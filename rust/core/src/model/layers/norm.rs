//! RMSNorm weights. Gemma applies its weights as `1 + w`; the 1 is folded in at load (in f32, then
//! rounded to the compute dtype once), so every norm runs the same kernel.

use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::weights::WeightSource;
use candle_core::{DType, Tensor};

/// The norm weight `name` (`[dim]`), as the model multiplies by it.
pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, name: &str) -> Result<Tensor> {
    let t = w.tensor(name)?;
    if !cfg.norm_plus_one {
        return Ok(t);
    }
    let dtype = t.dtype();
    Ok((t.to_dtype(DType::F32)? + 1.0)?.to_dtype(dtype)?)
}

/// `load` when the checkpoint has the tensor, else `None`.
pub fn load_opt(cfg: &ModelConfig, w: &dyn WeightSource, name: &str) -> Result<Option<Tensor>> {
    if w.contains(name) {
        Ok(Some(load(cfg, w, name)?))
    } else {
        Ok(None)
    }
}
