//! The threads the kernels run on: one per physical core. Two SMT siblings share one core's integer
//! units and L1, so a second thread per core adds contention, not throughput, to these kernels.
//!
//! Where rayon's global pool already has one thread per physical core (no SMT), the kernels use it, so
//! the process keeps one set of workers for them, attention and candle's ops, which run one after the
//! other on the engine thread and never at once. Elsewhere a dedicated pool is built once.
//! `MLC_CPU_THREADS` sets the count (benchmarks match llama.cpp's thread count with it).

use std::sync::OnceLock;

enum Pool {
    Global,
    Own(rayon::ThreadPool),
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let want = std::env::var("MLC_CPU_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(num_cpus::get_physical);
        if want == rayon::current_num_threads() {
            return Pool::Global;
        }
        match rayon::ThreadPoolBuilder::new().num_threads(want).thread_name(|i| format!("mlc-cpu-{i}")).build() {
            Ok(p) => Pool::Own(p),
            Err(e) => {
                log::warn!("cpu kernels: cannot start {want} threads ({e}); using rayon's global pool");
                Pool::Global
            }
        }
    })
}

/// Threads the kernels split work over.
pub fn threads() -> usize {
    match pool() {
        Pool::Global => rayon::current_num_threads(),
        Pool::Own(p) => p.current_num_threads(),
    }
}

/// Runs `f` (which uses rayon's parallel iterators) on the kernels' pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Pool::Global => f(),
        Pool::Own(p) => p.install(f),
    }
}
