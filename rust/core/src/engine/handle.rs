//! The caller's side of the engine: loads the model, starts the engine thread, and talks to it over
//! channels. Requests are validated here, on the caller's thread, so a bad request fails at once
//! without waiting for the current step.

use super::config::{available_memory_bytes, infer_sizes, EngineArgs, EngineSizes};
use super::core::EngineCore;
use super::kv_dtype::{dtype_name, kv_cache_dtype};
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
use crate::kv_cache::KvEvent;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

enum Command {
    Add { request_id: String, prompt: Vec<u32>, params: SamplingParams, max_new_tokens: usize, grammar: Option<GrammarMatcher> },
    Abort(String),
    Trace(Sender<String>),
    CachedBlocks(Sender<Vec<u64>>),
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
    /// The KV cache's element type (`kv_cache_dtype`): "float16" on the CPU by default, else the compute
    /// dtype's name; or "float32" / "float8_e4m3" as asked.
    pub kv_cache_dtype: String,
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
    /// Seconds of each phase of construction, in order (also logged at info level): device (CUDA
    /// context and cuBLAS handle), weights mapped, weights uploaded and converted (the model built), KV
    /// cache, kernel modules (the wait for [`crate::cuda_kernels::preload`], which runs beside the
    /// phases before it), first step (a warm-up step on scratch data). The phases that do not apply to
    /// a device are left out.
    pub startup_s: Vec<(String, f64)>,
}

/// The clock of [`build`]'s phases; on CUDA each phase ends with a device synchronisation, so the
/// time of the work a phase queued is its own.
struct StartupClock {
    start: Instant,
    last: Instant,
    phases: Vec<(String, f64)>,
}

impl StartupClock {
    fn new() -> Self {
        let now = Instant::now();
        StartupClock { start: now, last: now, phases: Vec::new() }
    }

    fn mark(&mut self, phase: &str, device: Option<&candle_core::Device>) {
        if let Some(d) = device.filter(|d| d.is_cuda()) {
            let _ = d.synchronize();
        }
        let now = Instant::now();
        self.phases.push((phase.to_string(), (now - self.last).as_secs_f64()));
        self.last = now;
    }

    fn log(&self, model: &str) {
        let phases: Vec<String> = self.phases.iter().map(|(p, s)| format!("{p} {s:.2} s")).collect();
        log::info!("engine for {model} ready in {:.2} s: {}", self.start.elapsed().as_secs_f64(), phases.join(", "));
    }
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
    /// The engine thread's latest metrics, published between steps: reading them never waits for a
    /// step (a CPU prefill step can take seconds, and liveness probes read them).
    metrics: Arc<Mutex<Metrics>>,
    /// Prefix-cache events the engine thread moved out between steps, for [`Self::kv_events`].
    kv_events: Arc<Mutex<VecDeque<KvEvent>>>,
    tokenizer: Arc<Tokenizer>,
    grammars: Arc<GrammarCompiler>,
    info: EngineInfo,
}

/// Prefix-cache events kept for a reader between two reads (the oldest go first when a reader falls
/// behind: a router then re-learns those blocks from later events, the engine's memory stays bounded).
const KV_EVENTS_CAPACITY: usize = 1 << 16;

/// What the engine thread publishes between steps.
struct Published {
    metrics: Arc<Mutex<Metrics>>,
    kv_events: Arc<Mutex<VecDeque<KvEvent>>>,
}

/// What the CPU engine leaves to the rest of the machine (the interpreter, the tokenizer, other
/// processes' growth) out of the memory available when it starts.
const CPU_MEMORY_MARGIN: u64 = 1 << 30;

/// Rope-table rows beyond the context window (speculative drafts are verified past a sequence's end).
const ROPE_TABLE_MARGIN: usize = 256;

/// Memory the KV cache is sized from: the GPU's total memory (MLC's `gpu_memory_utilization` is a
/// fraction of it), or on the CPU the memory available now less a margin. Read before the weights load.
fn memory_bytes(device: &candle_core::Device) -> u64 {
    match crate::device::total_device_memory(device) {
        Some(b) => b,
        None => available_memory_bytes().saturating_sub(CPU_MEMORY_MARGIN),
    }
}

impl EngineHandle {
    pub fn start(model: &str, device: &str, args: EngineArgs) -> Result<Self> {
        // A panic while loading is a file this engine failed to reject properly: report it as a load
        // failure of that model.
        let (mut core, info, tokenizer) = crate::error::catch_panics(|| build(model, device, &args)).map_err(|e| match e {
            EngineError::Internal(m) => EngineError::model_load(model, format!("internal error while loading: {m}")),
            other => other,
        })?;
        let grammars = core.grammars().clone();
        let (cmd_tx, cmd_rx) = unbounded();
        let (out_tx, out_rx) = unbounded();
        if args.kv_events {
            core.enable_kv_events(KV_EVENTS_CAPACITY);
        }
        let metrics = Arc::new(Mutex::new(core.metrics()));
        let kv_events = Arc::new(Mutex::new(VecDeque::new()));
        let published = Published { metrics: metrics.clone(), kv_events: kv_events.clone() };
        let thread = std::thread::Builder::new()
            .name("mlc-engine".into())
            .spawn(move || engine_loop(core, cmd_rx, out_tx, published))?;
        Ok(EngineHandle {
            commands: cmd_tx,
            outputs: out_rx,
            thread: Mutex::new(Some(thread)),
            active: Mutex::new(HashSet::new()),
            metrics,
            kv_events,
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

    /// The metrics as of the last step boundary; `EngineDead` once the engine thread has ended.
    pub fn metrics(&self) -> Result<Metrics> {
        let running = self.thread.lock().map_err(|_| EngineError::EngineDead("lock poisoned".into()))?.as_ref().is_some_and(|t| !t.is_finished());
        if !running {
            return Err(EngineError::EngineDead("the engine has stopped".into()));
        }
        self.metrics.lock().map(|m| m.clone()).map_err(|_| EngineError::EngineDead("lock poisoned".into()))
    }

    /// The prefix-cache events since the last call, oldest first (empty unless `EngineArgs::kv_events`).
    /// Never waits for a step.
    pub fn kv_events(&self) -> Result<Vec<KvEvent>> {
        self.kv_events.lock().map(|mut q| q.drain(..).collect()).map_err(|_| EngineError::EngineDead("lock poisoned".into()))
    }

    /// The hashes of the prefix cache's findable blocks between two steps, as KV events name them
    /// (for checking a replay of [`Self::kv_events`]; waits for the current step).
    pub fn cached_block_hashes(&self) -> Result<Vec<u64>> {
        self.ask(Command::CachedBlocks)
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
    let mut clock = StartupClock::new();
    let device = parse_device(device)?;
    clock.mark("device", Some(&device));
    if device.is_cpu() {
        super::host_memory::keep_step_buffers();
    }
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
    let kv_dtype = kv_cache_dtype(args, dtype, &device)?;
    // An explicit argument wins, then MLC_QUANTIZED_MATMUL (1 / 0; the Python signature follows MLC's), then
    // the device: quantized on the CPU (quant::cpu's kernels meet the fidelity bound, README "CPU").
    let from_env = || crate::switches::value("MLC_QUANTIZED_MATMUL").map(|v| v == "1");
    let quantized = args.quantized_matmul.or_else(from_env).unwrap_or(device.is_cpu());
    let quant = if quantized { QuantMode::Quantized } else { QuantMode::Dequantize };
    // Every kernel module loads on background threads while the weights are read, not at the first
    // request (cuda_kernels.rs); joined before the warm-up step below.
    #[cfg(feature = "cuda")]
    let preload = match &device {
        candle_core::Device::Cuda(d) if crate::cuda_kernels::preload_enabled() => Some(crate::cuda_kernels::preload(d)),
        _ => None,
    };
    let memory = memory_bytes(&device);
    let mut loaded = loader::load(&path, &device, dtype, quant)?;
    clock.mark("weights mapped", Some(&device));
    if local.is_some() {
        loaded.name = crate::hub::repo_id(model).unwrap_or(loaded.name);
    }
    let cfg = loaded.config.clone();
    // The CUDA context, cuBLAS workspaces and graph memory live outside the weights and the KV cache.
    let runtime = if device.is_cuda() { 1u64 << 30 } else { 0 };
    let sizing_cfg = crate::model::sharded::sizing_config(&cfg, args.tensor_parallel_shards, device.is_cuda())?;
    // Sharded models read their experts dense (model/sharded.rs slices dense tensors).
    let mxfp4 = loader::keeps_mxfp4(device.location(), dtype, quant) && args.tensor_parallel_shards <= 1 && loaded.weights.keeps_mxfp4_experts();
    let sizes: EngineSizes = infer_sizes(args, &sizing_cfg, memory, resident_weight_bytes(&path, &cfg, quant, elem_bytes, mxfp4), runtime, kv_dtype.size_in_bytes())?;
    if args.verbose {
        log::info!(
            "mode={:?}: max_num_sequence={}, max_total_sequence_length={}, prefill_chunk_size={}, kv blocks={}x{} (memory allows {} tokens)",
            sizes.mode, sizes.max_num_sequence, sizes.max_total_sequence_length, sizes.prefill_chunk_size,
            sizes.num_kv_blocks, sizes.kv_block_size, sizes.memory_max_total_sequence_length
        );
    }
    // Rope tables cover the positions this engine can reach, not the file's claim (a corrupt or
    // optimistic context length would otherwise size them); the margin covers draft positions.
    let window = sizes.max_single_sequence_length.min(sizes.max_total_sequence_length);
    let model_cfg = cfg.with_max_positions(window.saturating_add(ROPE_TABLE_MARGIN));
    let model_impl: Box<dyn crate::model::CausalLm> = match args.tensor_parallel_shards {
        1 => crate::model::registry::build(&model_cfg, &loaded.weights, &device, dtype)?,
        n => Box::new(crate::model::sharded_lm::ShardedLm::load(&model_cfg, &loaded.weights, &device, dtype, n, sizes.num_kv_blocks, sizes.kv_block_size)?),
    };
    drop(loaded.weights);
    clock.mark("weights uploaded and converted", Some(&device));
    let kv = PagedKvCache::new(cfg.num_hidden_layers, sizes.num_kv_blocks, sizes.kv_block_size, model_impl.kv_heads(), cfg.head_dim, kv_dtype, &device)?;
    clock.mark("kv cache", Some(&device));
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
        kv_cache_dtype: dtype_name(kv_dtype).to_string(),
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
        startup_s: Vec::new(),
    };
    let mut runner = ModelRunner::new(model_impl, kv);
    let mut info = info;
    if args.cuda_graph {
        info.cuda_graph = runner.enable_cuda_graphs(sizes.max_num_sequence, sizes.max_single_sequence_length)?;
    }
    let spec = crate::spec::build(args, &device, dtype, quant, &tokenizer, cfg.hidden_size, &sizes)?;
    if spec.is_some() {
        clock.mark("draft model", Some(&device));
    }
    // An EAGLE head drafts from the target's hidden states of every step.
    runner.keep_hidden = spec.as_ref().is_some_and(|s| s.eagle.is_some());
    info.speculative_mode = args.speculative_mode.clone();
    #[cfg(feature = "cuda")]
    if let Some(preload) = preload {
        let report = preload.wait();
        for e in &report.errors {
            log::warn!("kernel preload: {e} (loads again at first use)");
        }
        let modules: Vec<String> = report.modules.iter().map(|(m, from, s)| format!("{m} ({from}) {:.0} ms", s * 1e3)).collect();
        log::info!("kernel modules loaded in {:.2} s wall: {}", report.wall_s, modules.join(", "));
        clock.mark("kernel modules", Some(&device));
        // One step on scratch data: the first request then finds cuBLAS's kernels and every lazily
        // loaded function ready.
        if let Err(e) = warm_up(&mut runner, sizes.kv_block_size, sizes.prefill_chunk_size) {
            log::warn!("warm-up step failed: {e}");
        }
        clock.mark("first step", Some(&device));
    }
    clock.log(&info.model);
    info.startup_s = clock.phases.clone();
    let grammars = Arc::new(GrammarCompiler::new(Vocab::from_tokenizer(tokenizer.clone(), cfg.vocab_size)));
    let mut core = EngineCore::with_grammars(runner, scheduler, tokenizer.clone(), sizes, args.enable_tracing, grammars);
    core.spec = spec;
    Ok((core, info, tokenizer))
}

/// Runs a prefill of a few tokens of id 0 at positions 0.. through the model, the lm_head and the
/// device argmax. Its KV lands in block 0, which no sequence holds yet (each one writes its own KV
/// before reading it).
#[cfg(feature = "cuda")]
fn warm_up(runner: &mut ModelRunner, block_size: usize, max_tokens: usize) -> Result<()> {
    use crate::scheduler::{ScheduledSeq, SchedulerOutput};
    let n = block_size.min(max_tokens).clamp(1, 8);
    let seq = ScheduledSeq { seq_id: 0, start_pos: 0, token_ids: vec![0; n], block_table: vec![0], sample: true, num_draft: 0, long_rope: false };
    let out = SchedulerOutput { seqs: vec![seq], num_batched_tokens: n, ..Default::default() };
    runner.execute(&out, crate::runner::SampleOn::Argmax)?;
    runner.last_hidden = None;
    Ok(())
}

/// What the weights will occupy: GGUF weights kept quantized stay about the size of the file (plus the
/// embedding, which is dequantized for row lookups); anything else is widened to the compute dtype.
/// `mxfp4`: the experts stay MXFP4 (4.25 bits per weight: the CPU's quantized path, CUDA's fused MoE).
fn resident_weight_bytes(path: &str, cfg: &crate::model::ModelConfig, quant: QuantMode, elem_bytes: usize, mxfp4: bool) -> u64 {
    let widened = if mxfp4 { cfg.weight_bytes_with_experts(elem_bytes, 4.25) } else { cfg.weight_bytes(elem_bytes) };
    let file = std::path::Path::new(path);
    let is_gguf = file.is_file() && file.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    match (quant, is_gguf, std::fs::metadata(file)) {
        (QuantMode::Quantized, true, Ok(m)) => {
            let embedding = (cfg.vocab_size as u64).saturating_mul(cfg.hidden_size as u64).saturating_mul(elem_bytes as u64);
            m.len().saturating_add(embedding).min(widened)
        }
        _ => widened,
    }
}

/// Sampling defaults from an HF directory's generation_config.json, else MLC's chat defaults.
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

fn engine_loop(mut core: EngineCore, commands: Receiver<Command>, outputs: Sender<Delta>, published: Published) {
    // Metrics are published before the deltas they account for are sent, so a caller that saw a
    // request end also sees it counted.
    let publish = |core: &mut EngineCore| {
        if let Ok(mut m) = published.metrics.lock() {
            *m = core.metrics();
        }
        let events = core.take_kv_events();
        if !events.is_empty() {
            if let Ok(mut q) = published.kv_events.lock() {
                q.extend(events);
                let excess = q.len().saturating_sub(KV_EVENTS_CAPACITY);
                q.drain(..excess);
            }
        }
    };
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
        let mut ended = Vec::new();
        for cmd in first.into_iter().chain(std::iter::from_fn(|| commands.try_recv().ok())) {
            match cmd {
                Command::Add { request_id, prompt, params, max_new_tokens, grammar } => {
                    core.add_compiled(request_id, prompt, params, max_new_tokens, grammar)
                }
                Command::Abort(id) => ended.extend(core.abort(&id)),
                Command::Trace(tx) => {
                    let _ = tx.send(core.trace_json());
                }
                Command::CachedBlocks(tx) => {
                    let _ = tx.send(core.cached_block_hashes());
                }
                Command::Terminate => terminate = true,
            }
        }
        if terminate {
            ended.extend(core.abort_all());
        }
        publish(&mut core);
        for d in ended {
            let _ = outputs.send(d);
        }
        if terminate {
            break;
        }
        if core.has_work() {
            // A panic inside a step must not take the process (or the Python interpreter) down:
            // fail the in-flight requests and keep serving.
            let deltas = match std::panic::catch_unwind(AssertUnwindSafe(|| core.step())) {
                Ok(deltas) => deltas,
                Err(p) => {
                    let msg = crate::error::panic_message(p.as_ref());
                    log::error!("engine step panicked: {msg}");
                    let mut failed = core.abort_all();
                    for d in &mut failed {
                        d.finish_reason = Some(super::output::FinishReason::Error);
                        d.error = Some(format!("internal error: {msg}"));
                    }
                    failed
                }
            };
            publish(&mut core);
            for d in deltas {
                let _ = outputs.send(d);
            }
        }
    }
}
