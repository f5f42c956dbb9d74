//! Sampling on the device: [`sample_on_device`] runs kernels/sampling.cu over a `[batch, vocab]` f32
//! logits tensor on candle's CUDA stream, with the semantics of [`SequenceSampler::sample`] row by row.
//!
//! Per call: one host-to-device copy (every row's parameters and penalty / bias entries, see
//! `device_rows`), one launch (one block per row), one device-to-host copy of the tokens, their logprobs
//! and the requested top logprobs. The logits never leave the device; only rows with penalised or biased
//! tokens get a processed copy in a scratch buffer (`[rows with entries, vocab]`).
//!
//! The uniform number of each row is drawn here from the sequence's own generator, exactly one per row
//! as `sample` consumes, so a seeded request gives the tokens of the CPU sampler wherever it runs (up to
//! f64 summation order at CDF boundaries; see sampling.cu).

use super::{device_rows, Sampled, SequenceSampler};
use crate::error::{EngineError, Result};
use crate::request::SamplingParams;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{DType, Storage, Tensor};
use mlc_kernels as kernels;

/// Samples one token per row of `logits` (`[batch, vocab]` f32 on a CUDA device), row `i` with
/// `seqs[i]`: [`super::sample_batch`]'s contract, without copying the logits to the host. Each
/// sequence's generator advances by one number per row, as in `sample`; penalty state is read, not
/// changed (the caller observes the emitted tokens).
///
/// Wrong dtype, rank, batch or device, or more top logprobs than the kernel returns, are errors
/// raised before any generator advances; a failed launch or copy is an error after they advanced.
pub fn sample_on_device(logits: &Tensor, seqs: &mut [(&mut SequenceSampler, &SamplingParams)]) -> Result<Vec<Sampled>> {
    let (batch, vocab) = check_logits(logits, seqs.len())?;
    device_rows::check_params(seqs)?;
    if batch == 0 {
        return Ok(Vec::new());
    }
    if vocab == 0 {
        // Nothing to launch: the CPU path gives token 0 and consumes the row's number.
        return Ok(seqs.iter_mut().map(|(seq, params)| seq.sample(&mut [], params)).collect());
    }
    let uniforms: Vec<f64> = seqs.iter_mut().map(|(seq, _)| seq.next_uniform()).collect();
    let packed = device_rows::pack(vocab, seqs, &uniforms)?;
    let words = launch(logits, &packed, batch, vocab)?;
    let params: Vec<&SamplingParams> = seqs.iter().map(|(_, p)| *p).collect();
    Ok(device_rows::unpack(&words, &params))
}

/// The argmax of each row of `logits` (`[batch, vocab]` f32 on a CUDA device; lowest id on ties, NaN
/// below everything): plain greedy decoding without copying the logits to the host.
pub fn argmax_on_device(logits: &Tensor) -> Result<Vec<u32>> {
    let batch = logits.dim(0)?;
    let (batch, vocab) = check_logits(logits, batch)?;
    if batch == 0 {
        return Ok(Vec::new());
    }
    with_logits(logits, "device argmax", |dev, src| {
        let func = crate::cuda_kernels::func(&dev, kernels::ARGMAX_FUNC, &kernels::modules::SAMPLING)?;
        // SAFETY: the launch writes one token per row.
        let mut out = unsafe { dev.alloc::<u32>(batch) }?;
        let (b32, v32) = (batch as u32, vocab as u32); // checked in check_logits
        let mut b = func.builder();
        b.arg(src);
        b.arg(&mut out);
        b.arg(&b32);
        b.arg(&v32);
        let config = LaunchConfig { grid_dim: (b32, 1, 1), block_dim: (kernels::SAMPLING_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches argmax_rows_f32 in sampling.cu: logits hold batch * vocab f32, out batch words.
        unsafe { b.launch(config) }.w()?;
        Ok(dev.clone_dtoh(&out)?)
    })
}

/// Runs `f` with the device and the f32 elements of a contiguous copy of `logits` (a CUDA tensor); `op`
/// names the caller in errors.
fn with_logits<T>(logits: &Tensor, op: &'static str, f: impl FnOnce(&CudaDevice, &CudaView<'_, f32>) -> Result<T>) -> Result<T> {
    let logits = logits.contiguous()?; // [batch, vocab]
    let (storage, layout) = logits.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return Err(EngineError::Unsupported(format!("{op}: logits storage is not CUDA")));
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(candle_core::Error::RequiresContiguous { op }.into());
    };
    let all = cs.as_cuda_slice::<f32>()?;
    let len = all.len();
    let src = all
        .try_slice(start..end)
        .ok_or_else(|| EngineError::Unsupported(format!("{op}: logits range {start}..{end} outside a buffer of {len}")))?;
    f(cs.device(), &src)
}

/// `(batch, vocab)` of a `[batch, vocab]` f32 CUDA tensor with one row per sequence.
fn check_logits(logits: &Tensor, num_seqs: usize) -> Result<(usize, usize)> {
    if !logits.device().is_cuda() {
        return Err(EngineError::Unsupported(format!(
            "device sampling needs logits on a CUDA device, got {:?} (sample_batch samples on the CPU)",
            logits.device().location()
        )));
    }
    if logits.dtype() != DType::F32 {
        let got = logits.dtype();
        return Err(candle_core::Error::UnexpectedDType { msg: "device sampling: logits", expected: DType::F32, got }.into());
    }
    let dims = logits.dims();
    let &[batch, vocab] = dims else {
        return Err(candle_core::Error::UnexpectedNumberOfDims { expected: 2, got: dims.len(), shape: logits.shape().clone() }.into());
    };
    if batch != num_seqs {
        return Err(candle_core::Error::UnexpectedShape {
            msg: "device sampling: one logits row per sequence".to_string(),
            expected: (num_seqs, vocab).into(),
            got: logits.shape().clone(),
        }
        .into());
    }
    if u32::try_from(vocab).is_err() || u32::try_from(batch).is_err() || batch.checked_mul(vocab).is_none() {
        return Err(EngineError::Unsupported(format!("device sampling over [{batch}, {vocab}] logits")));
    }
    Ok((batch, vocab))
}

/// One launch of `sample_rows_f32`; returns its `[batch, SAMPLING_OUT_WORDS]` output words.
fn launch(logits: &Tensor, packed: &device_rows::Packed, batch: usize, vocab: usize) -> Result<Vec<u32>> {
    with_logits(logits, "device sampling", |dev, src| {
        let func = crate::cuda_kernels::func(&dev, kernels::SAMPLING_FUNC, &kernels::modules::SAMPLING)?;
        let params = dev.clone_htod(&packed.words)?;
        // SAFETY: scratch; the block of each row that lists tokens writes its whole work row before reading it.
        let work_len = packed.work_rows.max(1).checked_mul(vocab).ok_or_else(|| {
            EngineError::Unsupported(format!("device sampling: {} work rows of {vocab}", packed.work_rows))
        })?;
        let mut work = unsafe { dev.alloc::<f32>(work_len) }?; // [work_rows, vocab]
        let mut out = dev.alloc_zeros::<u32>(batch * kernels::SAMPLING_OUT_WORDS)?; // [batch, SAMPLING_OUT_WORDS]
        let (b32, v32) = (batch as u32, vocab as u32); // checked in check_logits
        let mut b = func.builder();
        b.arg(src);
        b.arg(&mut work);
        b.arg(&params);
        b.arg(&mut out);
        b.arg(&b32);
        b.arg(&v32);
        let config = LaunchConfig { grid_dim: (b32, 1, 1), block_dim: (kernels::SAMPLING_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches sample_rows_f32 in sampling.cu: logits hold batch * vocab f32, work one row of vocab
        // f32 per row that lists entries (work_row < work_rows), params batch rows of SAMPLING_ROW_WORDS then
        // the entries those rows index (every token < vocab, built by device_rows::pack), out
        // batch * SAMPLING_OUT_WORDS words.
        unsafe { b.launch(config) }.w()?;
        Ok(dev.clone_dtoh(&out)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cpu_logits_are_refused_before_any_number_is_drawn() {
        let params = SamplingParams { seed: Some(3), ..Default::default() };
        let mut seq = SequenceSampler::new(&params, &[]);
        let mut twin = seq.clone();
        let logits = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        let err = sample_on_device(&logits, &mut [(&mut seq, &params)]).unwrap_err();
        assert!(matches!(err, EngineError::Unsupported(_)), "{err}");
        assert_eq!(seq.next_uniform(), twin.next_uniform());
    }
}
