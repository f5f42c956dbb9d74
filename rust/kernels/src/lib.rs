//! Our own CUDA kernels (paged attention, KV write, fused norm / rope / activation, sampling).
//! Empty on CPU builds: the CPU engine computes the same operations in `mlc_core` with candle.
