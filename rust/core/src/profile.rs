//! Wall time per part of the engine's one-token steps (batch-1 decode), for finding where a CPU decode
//! step goes: `MLC_CPU_PROFILE=1` turns it on (off, each span costs one relaxed load), and every
//! [`REPORT_EVERY`] one-token steps the engine thread prints ms per step and per part to stderr.
//!
//! Spans are timed on the engine thread, around whole ops (a matmul's time includes waiting for the
//! kernel pool's helpers). Steps of more than one token (prefill chunks, batches) are not counted, so a
//! benchmark's prefill does not blur its decode figures. `engine` is the whole `EngineCore::step`;
//! `between` is the engine thread's time from one step's end to the next one's start (stream-back,
//! request intake); `other` is the rest of the forward pass (embedding, rope tables, copies, small ops).

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// One-token steps per printed report.
pub const REPORT_EVERY: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Part {
    Forward,
    Norm,
    Qkv,
    RopeKv,
    Attn,
    OProj,
    GateUp,
    Act,
    Down,
    LmHead,
    Sample,
    Engine,
    Between,
}

const PARTS: usize = 13;
const NAMES: [&str; PARTS] = ["forward", "norm+add", "qkv", "rope+kv", "attention", "o_proj", "gate_up", "silu*up", "down", "lm_head", "sample", "engine", "between"];

/// Whether profiling is on (`MLC_CPU_PROFILE` set to anything but `0`), read once.
#[inline(always)]
pub fn on() -> bool {
    static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 off, 2 on
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let v = crate::switches::on("MLC_CPU_PROFILE");
            STATE.store(if v { 2 } else { 1 }, Ordering::Relaxed);
            v
        }
    }
}

thread_local! {
    /// This thread's nanoseconds per part in the current step.
    static STEP: Cell<[u64; PARTS]> = const { Cell::new([0; PARTS]) };
    /// When the previous step ended on this thread.
    static LAST_END: Cell<Option<Instant>> = const { Cell::new(None) };
}

struct Totals {
    ns: [u64; PARTS],
    steps: u64,
}

static TOTALS: Mutex<Totals> = Mutex::new(Totals { ns: [0; PARTS], steps: 0 });

/// Times its scope into `part` when dropped (nothing when profiling is off).
pub struct Span(Option<(Part, Instant)>);

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((part, start)) = self.0 {
            add(part, start.elapsed().as_nanos() as u64);
        }
    }
}

/// A [`Span`] for `part`.
#[inline(always)]
pub fn span(part: Part) -> Span {
    Span(if on() { Some((part, Instant::now())) } else { None })
}

fn add(part: Part, ns: u64) {
    STEP.with(|s| {
        let mut v = s.get();
        v[part as usize] += ns;
        s.set(v);
    });
}

/// Marks the start of an engine step: the time since the previous one's end counts as `between`.
pub fn step_start() -> Option<Instant> {
    if !on() {
        return None;
    }
    let now = Instant::now();
    STEP.with(|s| s.set([0; PARTS]));
    if let Some(end) = LAST_END.with(|l| l.get()) {
        add(Part::Between, now.duration_since(end).as_nanos() as u64);
    }
    Some(now)
}

/// Ends the step begun at `start` over `tokens` tokens: a one-token step joins the totals, printed every
/// [`REPORT_EVERY`] such steps.
pub fn step_end(start: Option<Instant>, tokens: usize) {
    let Some(start) = start else { return };
    let now = Instant::now();
    add(Part::Engine, now.duration_since(start).as_nanos() as u64);
    LAST_END.with(|l| l.set(Some(now)));
    let step = STEP.with(|s| s.get());
    if tokens != 1 {
        return;
    }
    let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    for (a, b) in t.ns.iter_mut().zip(step) {
        *a += b;
    }
    t.steps += 1;
    if t.steps >= REPORT_EVERY {
        eprintln!("{}", report(&t.ns, t.steps));
        *t = Totals { ns: [0; PARTS], steps: 0 };
    }
}

/// `ms per step` per part; `other` = forward minus its timed parts.
fn report(ns: &[u64; PARTS], steps: u64) -> String {
    let ms = |p: Part| ns[p as usize] as f64 / steps as f64 / 1e6;
    let inner = [Part::Norm, Part::Qkv, Part::RopeKv, Part::Attn, Part::OProj, Part::GateUp, Part::Act, Part::Down];
    let other = ms(Part::Forward) - inner.iter().map(|&p| ms(p)).sum::<f64>();
    let mut s = format!("mlc cpu profile, ms per one-token step over {steps} steps:");
    for (i, name) in NAMES.iter().enumerate() {
        s += &format!(" {name} {:.3}", ns[i] as f64 / steps as f64 / 1e6);
    }
    s + &format!(" other(forward) {other:.3}")
}
