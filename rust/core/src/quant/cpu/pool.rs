//! The threads the CPU kernels (quantized matmuls, paged attention) run on: one per physical core, the
//! calling thread included. Two SMT siblings share one core's integer units and L1, so a second thread
//! per core adds contention, not throughput, to these kernels. `MLC_CPU_THREADS` sets the count
//! (benchmarks match llama.cpp's thread count with it).
//!
//! Why not rayon: a decode step of a small model is ~120 matmuls of tens of microseconds each. Rayon
//! parks idle workers and the caller (not a worker) sleeps until the job is done, so every matmul paid
//! two futex wake-ups (about 14% of a SmolLM2 decode step in a profile). Here the caller does a share of
//! the work itself and helpers spin between jobs for a short while (llama.cpp's threadpool does the
//! same), yielding the core when other threads want it and parking after [`SPIN`] without work.
//! Work is handed out one task at a time from a shared counter, so a core slowed by another process
//! takes fewer tasks; and once every task is claimed the caller waits only for the helpers working on
//! one, not for those that have not joined (a helper the scheduler has not run yet, while other
//! processes load the machine, made every call wait a time slice: SmolLM2 decoded 3 tok/s at a load of
//! 5 where it decodes 150 idle).
//! A waiting helper is not idle where a region is set ([`prefetch_when_idle`]): it reads the next
//! kernel's weights while the caller runs the ops between two kernels (see `ahead.rs`).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper waits for the next job before parking: longer than the gaps between the kernels of
/// one decode step (norms, rope, sampling's share), short enough that an engine between steps, or one
/// of several engine processes on a shared machine, does not hold a core. Measured on 2 cores
/// (SmolLM2 decode, idle machine): 143-145 tok/s against 118-123 with rayon; spinning 2 ms instead cost
/// a third of the speed when other processes were busy.
const SPIN: Duration = Duration::from_micros(100);
/// Pure spins (a few microseconds) before a waiting helper starts yielding its core to other threads.
const PURE_SPINS: u32 = 500;

/// One parallel call: tasks `0..tasks` handed out one at a time to whichever thread asks next.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    next: AtomicUsize,
    tasks: usize,
}

impl Job<'_> {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                return;
            }
            (self.f)(i);
        }
    }
}

struct Shared {
    /// Bumped once per job; a helper looks at each generation at most once.
    generation: AtomicU64,
    /// The current job, valid while `open` (and, for a helper counted in `active`, until it leaves).
    job: AtomicPtr<Job<'static>>,
    /// Whether the current job still takes helpers. The caller closes it once every task is claimed.
    open: AtomicBool,
    /// Helpers inside the current job (between their check of `open` and their last task).
    active: AtomicUsize,
    /// A helper's panic, re-raised on the caller's thread.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// The bytes a waiting helper reads ([`prefetch_when_idle`]): the next chunk and the region's end.
    /// A helper reads each chunk holding the lock, so clearing the region under it ([`forget`]) waits
    /// for a chunk in flight.
    ahead: Mutex<(usize, usize)>,
}

pub struct Pool {
    shared: Arc<Shared>,
    helpers: Vec<Thread>,
    /// One job at a time (the engine thread is the only caller in practice).
    call: Mutex<()>,
}

static POOL: OnceLock<Pool> = OnceLock::new();

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let want = crate::switches::number("MLC_CPU_THREADS").filter(|&n| n > 0).unwrap_or_else(num_cpus::get_physical);
        Pool::new(want)
    })
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            open: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            panic: Mutex::new(None),
            ahead: Mutex::new((0, 0)),
        });
        let mut helpers = Vec::new();
        for i in 1..threads {
            let s = shared.clone();
            match std::thread::Builder::new().name(format!("mlc-cpu-{i}")).spawn(move || helper(&s)) {
                Ok(h) => helpers.push(h.thread().clone()),
                Err(e) => {
                    log::warn!("cpu kernels: cannot start helper thread {i} ({e}); running on {}", helpers.len() + 1);
                    break;
                }
            }
        }
        Pool { shared, helpers, call: Mutex::new(()) }
    }

    /// Runs `f(i)` for every `i` in `0..tasks` on the caller and the helpers; returns when all are done.
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let job = Job { f, next: AtomicUsize::new(0), tasks };
        if self.helpers.is_empty() || tasks <= 1 {
            return job.work();
        }
        let _one_at_a_time = self.call.lock().unwrap_or_else(|e| e.into_inner());
        let s = &self.shared;
        // SAFETY: a helper dereferences `job` only while counted in `active` after seeing `open` (see
        // `helper`), and `Close` (also on unwind) closes the job and keeps this frame alive until no
        // helper is counted.
        s.job.store(&job as *const Job as *mut Job<'static>, Ordering::SeqCst);
        s.open.store(true, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        for h in &self.helpers {
            h.unpark();
        }
        struct Close<'a>(&'a Shared);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                // Every task is claimed: helpers that have not joined yet (descheduled by another
                // process, or parked) are not waited for; those inside finish their task. A helper that
                // joined and was descheduled holds its task until it runs again: spin briefly, then give
                // the core away so that it can.
                self.0.open.store(false, Ordering::SeqCst);
                let mut spins = 0u32;
                while self.0.active.load(Ordering::SeqCst) != 0 {
                    spins = spins.saturating_add(1);
                    if spins < PURE_SPINS {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        let close = Close(s);
        job.work();
        drop(close);
        if let Some(p) = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::panic::resume_unwind(p);
        }
    }
}

impl Pool {
    /// See [`prefetch_when_idle`].
    unsafe fn set_ahead(&self, addr: usize, len: usize) {
        if !self.helpers.is_empty() {
            *self.shared.ahead.lock().unwrap_or_else(|e| e.into_inner()) = (addr, addr.saturating_add(len));
            // A parked helper (the engine between steps) reads it too; one awake costs an atomic swap.
            for h in &self.helpers {
                h.unpark();
            }
        }
    }

    /// See [`forget`].
    fn forget_ahead(&self, addr: usize, len: usize) {
        let mut r = self.shared.ahead.lock().unwrap_or_else(|e| e.into_inner());
        if r.0 < addr.saturating_add(len) && addr < r.1 {
            *r = (0, 0);
        }
    }
}

fn helper(s: &Shared) {
    let mut seen = 0u64;
    loop {
        seen = wait_for_job(s, seen);
        // Join, then check that the job is still open: with both SeqCst, either the caller's closing
        // wait sees this helper counted (and waits for it), or this load sees the job closed (and the
        // helper leaves without touching it). A job opened since the generation was read is as good.
        s.active.fetch_add(1, Ordering::SeqCst);
        if s.open.load(Ordering::SeqCst) {
            seen = s.generation.load(Ordering::SeqCst);
            // SAFETY: the job is open and this helper is counted in `active`: the caller keeps it alive.
            let job = unsafe { &*s.job.load(Ordering::SeqCst) };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| job.work())) {
                *s.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes a waiting helper reads between two looks at the generation: about 40 ns of the memory's
/// time, so a job posted meanwhile waits no longer than a spin.
const AHEAD_CHUNK: usize = 1024;

/// Reads the next [`AHEAD_CHUNK`] of the region [`prefetch_when_idle`] set, if any is left (and no other
/// helper holds it). Loads, not prefetch instructions: Zen 4 drops software prefetches issued faster
/// than the memory answers them, so a helper asking for a region with `prefetcht1` left most of it in
/// memory (measured: a core reading 512 KB another core had asked for at 24-28 GB/s, as from memory,
/// against 61-66 GB/s after the other core loaded it).
fn prefetch_ahead(s: &Shared) -> bool {
    let Ok(mut r) = s.ahead.try_lock() else { return false };
    let (from, end) = *r;
    if from >= end {
        return false;
    }
    r.0 = from + AHEAD_CHUNK;
    let mut sum = 0u8;
    for a in (from..(from + AHEAD_CHUNK).min(end)).step_by(64) {
        // SAFETY: the region is readable memory while it is set (`prefetch_when_idle`'s contract), and
        // it cannot be cleared while this lock is held.
        sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(a as *const u8) });
    }
    std::hint::black_box(sum);
    true
}

/// Waits for a generation after `seen`: spins (asking for the region of [`prefetch_when_idle`] while one
/// is set), then spins yielding the core, then parks.
fn wait_for_job(s: &Shared, seen: u64) -> u64 {
    let mut start = Instant::now();
    let mut spins = 0u32;
    let mut reading = false;
    loop {
        let g = s.generation.load(Ordering::Acquire);
        if g != seen {
            return g;
        }
        if prefetch_ahead(s) {
            reading = true;
            continue;
        }
        if std::mem::take(&mut reading) {
            // The spin before parking counts from the end of the reads, as from the end of a job.
            (start, spins) = (Instant::now(), 0);
        }
        spins = spins.saturating_add(1);
        if spins < PURE_SPINS {
            std::hint::spin_loop();
        } else if start.elapsed() < SPIN {
            std::thread::yield_now();
        } else {
            // A job posted after the load above unparks this thread, so the park returns at once.
            std::thread::park();
        }
    }
}

/// Has the helpers, while they wait for the next job, read the bytes at `addr..addr + len` (into their
/// L2, from where the L3 keeps what they evict), in place of any region set before. For a weight the
/// next kernel will read: a decode step's matmuls stream ~1 GB of weights at the memory's read
/// bandwidth, and between them the caller runs norms, rope and activations on its own while the memory
/// idles; another core then reads those lines 2-3x as fast as from memory.
///
/// # Safety
/// `addr..addr + len` stays readable until a later call replaces it or [`forget`] clears it.
pub unsafe fn prefetch_when_idle(addr: usize, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { pool().set_ahead(addr, len) }
}

/// Clears the region of [`prefetch_when_idle`] if it overlaps `addr..addr + len`; on return no helper
/// reads it.
pub fn forget(addr: usize, len: usize) {
    if let Some(p) = POOL.get() {
        p.forget_ahead(addr, len);
    }
}

/// Threads the kernels split work over (the caller included).
pub fn threads() -> usize {
    pool().helpers.len() + 1
}

/// Runs `f(i)` for every `i` in `0..tasks` across the kernels' threads; returns when all have run.
pub fn run(tasks: usize, f: impl Fn(usize) + Sync) {
    pool().run(tasks, &f)
}

/// `f(i, chunk)` for every `chunk` of `data` (the `i`-th, `chunk_len` long, the last maybe shorter),
/// across the kernels' threads.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    // Each chunk is taken by exactly one task; the (uncontended) lock hands its `&mut` across threads.
    let chunks: Vec<Mutex<&mut [T]>> = data.chunks_mut(chunk_len.max(1)).map(Mutex::new).collect();
    run(chunks.len(), |i| {
        let mut c = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
        f(i, &mut c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_panics_reach_the_caller() {
        let p = Pool::new(3);
        for tasks in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            p.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{tasks} tasks");
        }
        let r = catch_unwind(AssertUnwindSafe(|| p.run(8, &|i| assert!(i != 5, "task 5"))));
        assert!(r.is_err());
        // The pool still works after a panic.
        let n = AtomicUsize::new(0);
        p.run(8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }

    /// Waiting helpers read a region set for them to its end, and one cleared is not read any further.
    #[test]
    fn waiting_helpers_read_the_region_ahead_and_stop_when_it_is_forgotten() {
        let p = Pool::new(2);
        let data = vec![1u8; 1 << 20];
        let (a, len) = (data.as_ptr() as usize, data.len());
        // SAFETY: `data` outlives the region (forgotten below).
        unsafe { p.set_ahead(a, len) };
        let start = Instant::now();
        while p.shared.ahead.lock().unwrap().0 < a + len {
            assert!(start.elapsed() < Duration::from_secs(10), "the helper did not read the region");
            std::thread::sleep(Duration::from_millis(1));
        }
        unsafe { p.set_ahead(a, len) };
        p.forget_ahead(a + len - 1, 1);
        // Cleared, or (on a busy machine, the helper reading all of it before the forget) used up: either
        // way nothing of it is read any further.
        let (from, end) = *p.shared.ahead.lock().unwrap();
        assert!((from, end) == (0, 0) || from >= end, "{from:#x}..{end:#x} left after the forget");
        // A region elsewhere stays.
        unsafe { p.set_ahead(a, 4096) };
        p.forget_ahead(a + 4096, 4096);
        assert_eq!(p.shared.ahead.lock().unwrap().1, a + 4096);
        p.forget_ahead(a, 1);
        drop(data);
    }

    /// Many short jobs back to back (helpers joining late, after the caller has claimed every task, or
    /// into the next job): every task of every job runs exactly once.
    #[test]
    fn short_jobs_back_to_back_run_each_task_once() {
        let p = Pool::new(3);
        let total = AtomicUsize::new(0);
        for j in 0..20_000usize {
            let tasks = 1 + j % 4;
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            p.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
                total.fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "job {j}");
        }
        assert_eq!(total.load(Ordering::Relaxed), (0..20_000usize).map(|j| 1 + j % 4).sum::<usize>());
    }
}
