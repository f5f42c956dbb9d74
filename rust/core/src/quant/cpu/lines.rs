//! The memory of a repacked weight ([`kpack`](super::kpack)): 64-byte lines, on 2 MiB pages where the
//! system gives them. A batch-1 decode streams every weight once per token, and on 4 KiB pages that is
//! a TLB miss every 4 KiB with the hardware prefetchers stopping at each page's end: reading 1 GiB
//! with two threads on the 2-core AVX-512 EPYC build machine (transparent huge pages on `madvise`),
//! 16 interleaved passes gave 17.6 GB/s on average from 4 KiB pages and 21.7 from 2 MiB ones, one
//! thread 20.5 and 26.4.
//!
//! Linux only (`madvise(MADV_HUGEPAGE)` on an anonymous mapping aligned to 2 MiB, before the packing
//! touches it); elsewhere, below [`HUGE_MIN`] bytes, where the mapping fails, or with
//! `MLC_CPU_HUGE_PAGES=0`, a `Vec`.

/// One cache line of a packed weight.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Line(pub [u8; 64]);

/// Weights smaller than this stay in a `Vec`: a 2 MiB page covers only whole 2 MiB of a mapping, so a
/// smaller one would have none.
const HUGE_MIN: usize = 2 << 20;
const HUGE: usize = 2 << 20;

/// Whether large weights are mapped for huge pages (`MLC_CPU_HUGE_PAGES=0` keeps them in a `Vec`, to
/// compare), read once.
fn huge_pages() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !crate::switches::off("MLC_CPU_HUGE_PAGES"))
}

/// Zeroed lines, owned.
pub enum Lines {
    Vec(Vec<Line>),
    /// `len` lines at `ptr`, 2 MiB aligned, mapped (`map_len` bytes) for this buffer alone.
    #[cfg(target_os = "linux")]
    Mapped { ptr: *mut Line, len: usize, map_len: usize },
}

// SAFETY: `Mapped` owns its mapping as a `Vec` owns its allocation; lines are plain bytes.
unsafe impl Send for Lines {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for Lines {}

impl Lines {
    /// `n` zeroed lines.
    pub fn zeroed(n: usize) -> Lines {
        #[cfg(target_os = "linux")]
        if n * 64 >= HUGE_MIN && huge_pages() {
            if let Some(l) = Self::mapped(n) {
                return l;
            }
        }
        Lines::Vec(vec![Line([0; 64]); n])
    }

    /// An anonymous mapping of `n` lines (zeroed by the kernel), its start aligned to 2 MiB and the
    /// slack before and after unmapped, asked for huge pages before anything touches it.
    #[cfg(target_os = "linux")]
    fn mapped(n: usize) -> Option<Lines> {
        let page = 4096;
        let len = (n * 64).div_ceil(page) * page;
        // SAFETY: a fresh private anonymous mapping; the pieces unmapped below lie within it.
        unsafe {
            let raw = libc::mmap(std::ptr::null_mut(), len + HUGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            if raw == libc::MAP_FAILED {
                return None;
            }
            let start = (raw as usize).next_multiple_of(HUGE);
            let head = start - raw as usize;
            if head > 0 {
                libc::munmap(raw, head);
            }
            let tail = HUGE - head;
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
            // Advice only: without it (THP off) the lines are on 4 KiB pages, as in a Vec.
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            Some(Lines::Mapped { ptr: start as *mut Line, len: n, map_len: len })
        }
    }
}

impl std::ops::Deref for Lines {
    type Target = [Line];
    fn deref(&self) -> &[Line] {
        match self {
            Lines::Vec(v) => v,
            // SAFETY: `len` lines of the mapping, which lives as long as `self`.
            #[cfg(target_os = "linux")]
            Lines::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [Line] {
        match self {
            Lines::Vec(v) => v,
            // SAFETY: as in `deref`, and `&mut self` is the only access.
            #[cfg(target_os = "linux")]
            Lines::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Lines::Mapped { ptr, map_len, .. } = self {
            // SAFETY: the mapping made in `mapped`, unmapped once.
            unsafe { libc::munmap(*ptr as *mut libc::c_void, *map_len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Lines, HUGE_MIN};

    #[test]
    fn lines_are_zeroed_writable_and_sized_on_either_side_of_the_mapping_threshold() {
        for n in [1, 1000, HUGE_MIN / 64, HUGE_MIN / 64 + 7, 3 * HUGE_MIN / 64 + 1] {
            let mut l = Lines::zeroed(n);
            assert_eq!(l.len(), n);
            assert!(l.iter().all(|x| x.0 == [0; 64]), "{n} lines not zeroed");
            assert_eq!(l.as_ptr() as usize % 64, 0);
            l[n - 1].0[63] = 7;
            l[0].0[0] = 9;
            assert_eq!((l[0].0[0], l[n - 1].0[63]), (9, 7));
            #[cfg(target_os = "linux")]
            if n * 64 >= HUGE_MIN && super::huge_pages() {
                assert!(matches!(l, Lines::Mapped { .. }), "{n} lines not mapped");
                assert_eq!(l.as_ptr() as usize % (2 << 20), 0);
            }
        }
    }
}
