//! The caller's side of the engine: loads the model, starts the engine thread, and talks to it over
//! channels. Requests are validated here, on the caller's thread, so a bad request fails at once
//! without waiting for the current step.

use super::config::{infer_sizes, system_memory_bytes, EngineArgs, EngineSizes};
use super::core::EngineCore;
use super::metrics::Metrics;
use super::output::Delta;
use crate::attention::PagedKvCache;
use crate::device::{device_name, parse_device};
use crate::error::{EngineError, Result};
use crate::grammar::{GrammarCompiler, GrammarMatcher, Vocab};
use crate::loader::{self, QuantMode};
use crate::request::SamplingParams;
use crate::runner::ModelRunner;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::tokenizer::Tokenizer;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

enum Command {
    Add { request_id: String, prompt: Vec<u32>, params: SamplingParams, max_new_tokens: usize, grammar: Option<GrammarMatcher> },
    Abort(String),
    Metrics(Sender<Metrics>),
    Trace(Sender<String>),
    Terminate,
}

/// Static facts about the loaded model and the chosen sizes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineInfo {
    pub model: String,
    pub model_path: String,
    pub architecture: String,
    pub device: String,
    /// The compute dtype of weights, activations and KV cache: float32, bfloat16 or float16.
    pub dtype: String,
    pub vocab_size: usize,
    pub context_window_size: usize,
    pub max_num_sequence: usize,
    pub max_total_sequence_length: usize,
    pub prefill_chunk_size: usize,
    pub kv_block_size: usize,
    pub num_kv_blocks: usize,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub eos_token_ids: Vec<u32>,
    pub has_chat_template: bool,
    pub mode: super::config::Mode,
    pub quantized_matmul: bool,
    /// Decode steps replay captured CUDA graphs (CUDA devices, unless switched off).
    pub cuda_graph: bool,
    /// Sampling defaults for fields a request leaves unset: the model's generation_config.json where it
    /// has one, else temperature 0.7 and top_p 0.95 (MLC's chat defaults).
    pub generation_defaults: serde_json::Map<String, serde_json::Value>,
    /// Stop strings of the model's MLC conversation template, added to every request's own.
    pub template_stop: Vec<String>,
    /// "disable", "small_draft", "eagle" or "ngram".
    pub speculative_mode: String,
}

impl EngineInfo {
    /// Parses a request's sampling parameters (JSON), filling unset fields from the model's defaults.
    pub fn sampling_params(&self, json: &str) -> Result<SamplingParams> {
        let mut v: serde_json::Value = serde_json::from_str(json).map_err(|e| EngineError::bad_request("sampling parameters", e.to_string()))?;
        let obj = v.as_object_mut().ok_or_else(|| EngineError::bad_request("sampling parameters", "must be a JSON object"))?;
        for (k, d) in &self.generation_defaults {
            if obj.get(k).is_none_or(|x| x.is_null()) {
                obj.insert(k.clone(), d.clone());
            }
        }
        obj.retain(|_, x| !x.is_null());
        let mut params: SamplingParams = serde_json::from_value(v).map_err(|e| {
            let msg = e.to_string();
            let field = msg.split('`').nth(1).unwrap_or("sampling parameters").to_string();
            EngineError::bad_request(field, msg)
        })?;
        for s in &self.template_stop {
            if !params.stop.contains(s) {
                params.stop.push(s.clone());
            }
        }
        Ok(params)
    }

    /// Checks a request against the model and the sizes; returns how many tokens it may generate.
    pub fn validate(&self, prompt: &[u32], params: &SamplingParams) -> Result<usize> {
        params.validate(self.vocab_size)?;
        if prompt.is_empty() {
            return Err(EngineError::bad_request("prompt", "the prompt has no tokens"));
        }
        if let Some(t) = prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(EngineError::bad_request("prompt", format!("token id {t} is outside the vocabulary (size {})", self.vocab_size)));
        }
        let window = self.context_window_size;
        if prompt.len() >= window {
            return Err(EngineError::bad_request(
                "prompt",
                format!("the prompt has {} tokens; the context window is {window} (prompt plus at least one new token must fit)", prompt.len()),
            ));
        }
        if let Some(id) = params.stop_token_ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(EngineError::bad_request("stop_token_ids", format!("token id {id} is outside the vocabulary")));
        }
        let room = window - prompt.len();
        Ok(params.max_tokens.map_or(room, |m| m.min(room)))
    }
}

pub struct EngineHandle {
    commands: Sender<Command>,
    outputs: Receiver<Delta>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Ids of requests whose final delta has not been handed out yet (duplicate detection).
    active: Mutex<HashSet<String>>,
    tokenizer: Arc<Tokenizer>,
    grammars: Arc<GrammarCompiler>,
    info: EngineInfo,
}

/// Memory the KV cache is sized from: the GPU's total memory, or system memory on the CPU.
fn memory_bytes(device: &candle_core::Device) -> u64 {
    match crate::device::total_device_memory(device) {
        Some(b) => b,
        None => system_memory_bytes(),
    }
}

impl EngineHandle {
    pub fn start(model: &str, device: &str, args: EngineArgs) -> Result<Self> {
        let (core, info, tokenizer) = build(model, device, &args)?;
        let grammars = core.grammars().clone();
        let (cmd_tx, cmd_rx) = unbounded();
        let (out_tx, out_rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("mlc-engine".into())
            .spawn(move || engine_loop(core, cmd_rx, out_tx))?;
        Ok(EngineHandle {
            commands: cmd_tx,
            outputs: out_rx,
            thread: Mutex::new(Some(thread)),
            active: Mutex::new(HashSet::new()),
            tokenizer,
            grammars,
            info,
        })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Validates and queues a request. Errors name the offending field.
    pub fn add_request(&self, request_id: String, prompt: Vec<u32>, params: SamplingParams) -> Result<()> {
        if request_id.is_empty() {
            return Err(EngineError::bad_request("request_id", "must not be empty"));
        }
        let max_new_tokens = self.info.validate(&prompt, &params)?;
        // Compiled here, on the caller's thread: an invalid schema fails this call, and the engine
        // thread never waits for a compile.
        let grammar = params.grammar.as_ref().map(|g| self.grammars.compile(g)).transpose()?;
        {
            let mut active = self.active.lock().map_err(|_| EngineError::EngineDead("lock poisoned".into()))?;
            if !active.insert(request_id.clone()) {
                return Err(EngineError::bad_request("request_id", format!("request id {request_id:?} is already in use")));
            }
        }
        let sent = self.commands.send(Command::Add { request_id: request_id.clone(), prompt, params, max_new_tokens, grammar });
        if sent.is_err() {
            self.release(&request_id);
            return Err(EngineError::EngineDead("the engine has been terminated".into()));
        }
        Ok(())
    }

    fn release(&self, request_id: &str) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(request_id);
        }
    }

    pub fn abort(&self, request_id: &str) {
        let _ = self.commands.send(Command::Abort(request_id.to_string()));
    }

    /// Waits up to `timeout` for deltas and returns everything available.
    pub fn poll(&self, timeout: Duration) -> Result<Vec<Delta>> {
        let mut out = Vec::new();
        match self.outputs.recv_timeout(timeout) {
            Ok(d) => out.push(d),
            Err(RecvTimeoutError::Timeout) => return Ok(out),
            Err(RecvTimeoutError::Disconnected) => return Err(EngineError::EngineDead("the engine has stopped".into())),
        }
        out.extend(self.outputs.try_iter());
        for d in out.iter().filter(|d| d.finish_reason.is_some()) {
            self.release(&d.request_id);
        }
        Ok(out)
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.commands.send(make(tx)).map_err(|_| EngineError::EngineDead("the engine has been terminated".into()))?;
        rx.recv().map_err(|_| EngineError::EngineDead("the engine stopped before answering".into()))
    }

    pub fn metrics(&self) -> Result<Metrics> {
        self.ask(Command::Metrics)
    }

    pub fn trace_json(&self) -> Result<String> {
        self.ask(Command::Trace)
    }

    /// Stops the engine thread (pending requests end with "abort"); idempotent.
    pub fn terminate(&self) {
        let _ = self.commands.send(Command::Terminate);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Loads the model and sizes the engine: everything that can fail happens here, on the caller's thread.
pub fn build(model: &str, device: &str, args: &EngineArgs) -> Result<(EngineCore, EngineInfo, Arc<Tokenizer>)> {
    let device = parse_device(device)?;
    // HF:// paths are fetched (or found in the cache) once, here; the loader then reads local files.
    let local = crate::hub::resolve(model)?;
    let path = local.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|| model.to_string());
    // CPU computes in f32 (16-bit weights are widened); GPUs keep a checkpoint's own 16-bit type (f16 or bf16)
    // for weights, activations and KV cache, and run bf16 otherwise.
    let dtype = match args.dtype.as_deref() {
        None | Some("auto") if device.is_cuda() => loader::native_dtype(&path).unwrap_or(candle_core::DType::BF16),
        None | Some("auto") => candle_core::DType::F32,
        Some("float32") | Some("f32") => candle_core::DType::F32,
        Some("bfloat16") | Some("bf16") => candle_core::DType::BF16,
        Some("float16") | Some("f16") => candle_core::DType::F16,
        Some(other) => return Err(EngineError::bad_request("dtype", format!("{other:?} is not one of float32, bfloat16, float16"))),
    };
    let elem_bytes = dtype.size_in_bytes();
    // MLC_QUANTIZED_MATMUL=1 opts in without an API change (the Python signature follows MLC's).
    let quantized = args.quantized_matmul || std::env::var("MLC_QUANTIZED_MATMUL").is_ok_and(|v| v == "1");
    let quant = if quantized { QuantMode::Quantized } else { QuantMode::Dequantize };
    let mut loaded = loader::load(&path, &device, dtype, quant)?;
    if local.is_some() {
        loaded.name = crate::hub::repo_id(model).unwrap_or(loaded.name);
    }
    let cfg = loaded.config.clone();
    // The CUDA context, cuBLAS workspaces and graph memory live outside the weights and the KV cache.
    let runtime = if device.is_cuda() { 1u64 << 30 } else { 0 };
    let sizes: EngineSizes = infer_sizes(args, &cfg, memory_bytes(&device), cfg.weight_bytes(elem_bytes), runtime, elem_bytes)?;
    if args.verbose {
        log::info!(
            "mode={:?}: max_num_sequence={}, max_total_sequence_length={}, prefill_chunk_size={}, kv blocks={}x{} (memory allows {} tokens)",
            sizes.mode, sizes.max_num_sequence, sizes.max_total_sequence_length, sizes.prefill_chunk_size,
            sizes.num_kv_blocks, sizes.kv_block_size, sizes.memory_max_total_sequence_length
        );
    }
    let model_impl = crate::model::registry::build(&cfg, &loaded.weights, &device, dtype)?;
    drop(loaded.weights);
    let kv = PagedKvCache::new(cfg.num_hidden_layers, sizes.num_kv_blocks, sizes.kv_block_size, cfg.num_key_value_heads, cfg.head_dim, dtype, &device)?;
    let scheduler = Scheduler::new(SchedulerConfig {
        max_num_seqs: sizes.max_num_sequence,
        max_num_batched_tokens: sizes.prefill_chunk_size.max(sizes.max_num_sequence),
        prefill_chunk_size: sizes.prefill_chunk_size,
        block_size: sizes.kv_block_size,
        num_blocks: sizes.num_kv_blocks,
        enable_prefix_cache: args.prefix_cache,
        sliding_window: cfg.uniform_sliding_window(),
        long_context_from: cfg.long_context_from(),
    });
    let tokenizer = Arc::new(loaded.tokenizer);
    let info = EngineInfo {
        model: loaded.name,
        model_path: loaded.path.display().to_string(),
        architecture: cfg.architecture.name().to_string(),
        device: device_name(&device),
        dtype: dtype_name(dtype).to_string(),
        vocab_size: cfg.vocab_size,
        context_window_size: sizes.max_single_sequence_length.min(sizes.max_total_sequence_length),
        max_num_sequence: sizes.max_num_sequence,
        max_total_sequence_length: sizes.max_total_sequence_length,
        prefill_chunk_size: sizes.prefill_chunk_size,
        kv_block_size: sizes.kv_block_size,
        num_kv_blocks: sizes.num_kv_blocks,
        bos_token: tokenizer.bos_token().map(String::from),
        eos_token: tokenizer.eos_token().map(String::from),
        eos_token_ids: tokenizer.eos_token_ids().to_vec(),
        has_chat_template: tokenizer.has_chat_template(),
        mode: sizes.mode,
        quantized_matmul: quantized,
        cuda_graph: false,
        generation_defaults: generation_defaults(&loaded.path, loaded.mlc_config.as_ref()),
        template_stop: tokenizer.conv_template().map(|c| c.stop_strs().to_vec()).unwrap_or_default(),
        speculative_mode: "disable".to_string(),
    };
    let mut runner = ModelRunner::new(model_impl, kv);
    let mut info = info;
    if args.cuda_graph {
        info.cuda_graph = runner.enable_cuda_graphs(sizes.max_num_sequence, sizes.max_single_sequence_length)?;
    }
    let spec = crate::spec::build(args, &device, dtype, quant, &tokenizer, cfg.hidden_size, &sizes)?;
    // An EAGLE head drafts from the target's hidden states of every step.
    runner.keep_hidden = spec.as_ref().is_some_and(|s| s.eagle.is_some());
    info.speculative_mode = args.speculative_mode.clone();
    let grammars = Arc::new(GrammarCompiler::new(Vocab::from_tokenizer(tokenizer.clone(), cfg.vocab_size)));
    let mut core = EngineCore::with_grammars(runner, scheduler, tokenizer.clone(), sizes, args.enable_tracing, grammars);
    core.spec = spec;
    Ok((core, info, tokenizer))
}

/// Sampling defaults from an HF directory's generation_config.json, else MLC's chat defaults.
fn dtype_name(dtype: candle_core::DType) -> &'static str {
    match dtype {
        candle_core::DType::F16 => "float16",
        candle_core::DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

fn generation_defaults(model_path: &std::path::Path, mlc: Option<&crate::loader::MlcChatConfig>) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    out.insert("temperature".into(), 0.7.into());
    out.insert("top_p".into(), 0.95.into());
    if let Some(mlc) = mlc {
        // MLC directories carry their defaults in mlc-chat-config.json (from the model's generation config).
        for (key, value) in mlc.generation_defaults() {
            out.insert(key.into(), value.into());
        }
        return out;
    }
    let file = if model_path.is_dir() { model_path.join("generation_config.json") } else { model_path.with_file_name("generation_config.json") };
    if let Some(cfg) = std::fs::read_to_string(file).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
        for key in ["temperature", "top_p", "top_k", "repetition_penalty"] {
            if let Some(v) = cfg.get(key).filter(|v| v.is_number()) {
                out.insert(key.into(), v.clone());
            }
        }
    }
    out
}

fn engine_loop(mut core: EngineCore, commands: Receiver<Command>, outputs: Sender<Delta>) {
    loop {
        // Block only when idle; otherwise take whatever arrived since the last step.
        let first = if core.has_work() {
            commands.try_recv().ok()
        } else {
            match commands.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        };
        let mut terminate = false;
        for cmd in first.into_iter().chain(std::iter::from_fn(|| commands.try_recv().ok())) {
            match cmd {
                Command::Add { request_id, prompt, params, max_new_tokens, grammar } => {
                    core.add_compiled(request_id, prompt, params, max_new_tokens, grammar)
                }
                Command::Abort(id) => {
                    if let Some(d) = core.abort(&id) {
                        let _ = outputs.send(d);
                    }
                }
                Command::Metrics(tx) => {
                    let _ = tx.send(core.metrics());
                }
                Command::Trace(tx) => {
                    let _ = tx.send(core.trace_json());
                }
                Command::Terminate => terminate = true,
            }
        }
        if terminate {
            for d in core.abort_all() {
                let _ = outputs.send(d);
            }
            break;
        }
        if core.has_work() {
            // A panic inside a step must not take the process (or the Python interpreter) down:
            // fail the in-flight requests and keep serving.
            match std::panic::catch_unwind(AssertUnwindSafe(|| core.step())) {
                Ok(deltas) => {
                    for d in deltas {
                        let _ = outputs.send(d);
                    }
                }
                Err(p) => {
                    let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "panic".into());
                    log::error!("engine step panicked: {msg}");
                    for mut d in core.abort_all() {
                        d.finish_reason = Some(super::output::FinishReason::Error);
                        d.error = Some(format!("internal error: {msg}"));
                        let _ = outputs.send(d);
                    }
                }
            }
        }
    }
}
