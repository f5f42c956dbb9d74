//! The CPU engine's step buffers stay in the process instead of going back to the kernel after every
//! step. glibc's malloc serves large blocks (from 128 KiB, rising with use to at most 32 MiB) with fresh
//! `mmap`s and returns freed heap tops past 128 KiB with `trim`: every prefill step then faults in and the
//! kernel zeroes its activation buffers again (Qwen2.5-1.5B, a 256-token prefill: a quarter of the step's
//! time in the kernel's `clear_page`, 4 % with the settings below). Raising both thresholds once at the
//! first CPU engine keeps freed blocks for the next step; blocks above 256 MiB (weights at load) still map
//! and unmap on their own. Memory held after a burst is bounded by the trim threshold (512 MiB).

/// Sets malloc's mmap and trim thresholds once per process (glibc only; a no-op elsewhere).
pub fn keep_step_buffers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; both values are valid thresholds.
        unsafe {
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
            if mmap != 1 || trim != 1 {
                log::debug!("mallopt refused the step-buffer thresholds (mmap {mmap}, trim {trim})");
            }
        }
    });
}
