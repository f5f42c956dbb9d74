//! The code images of a kernel module ([`KernelModule`]: its PTX and its ahead-of-time SASS) and which
//! one a device loads ([`module_code`]).
//!
//! build.rs assembles every PTX with ptxas for the PTX's own target (sm_90a for
//! CUDA_COMPUTE_CAP=90) and embeds the cubins beside the PTX. A device the SASS runs on loads the cubin
//! (no driver JIT: the first request of a fresh machine no longer waits seconds for it); any other
//! device, or a cubin that fails to load, takes the PTX through the driver's JIT as before.
//! `MLC_KERNEL_IMAGES=0` forces the PTX (to measure or rule out the cubins).

/// One kernel module: the name it is cached under per device, its PTX, and its SASS for [`SASS_ARCH`].
#[derive(Debug, Clone, Copy)]
pub struct KernelModule {
    pub name: &'static str,
    pub ptx: &'static str,
    pub sass: &'static [u8],
}

/// The SASS target of the embedded cubins (`sm_90a`; empty without feature `cuda`).
#[cfg(feature = "cuda")]
pub const SASS_ARCH: &str = crate::sass::SASS_ARCH;
#[cfg(not(feature = "cuda"))]
pub const SASS_ARCH: &str = "";

/// What a module is loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleCode {
    /// The embedded cubin.
    Sass,
    /// The PTX, compiled by the driver's JIT (or found in its disk cache).
    Ptx,
}

/// Parses `sm_90`, `sm_90a`, `sm_100f`, `sm_86` into (major, minor, suffix).
pub fn parse_sm_arch(arch: &str) -> Option<(u32, u32, Option<char>)> {
    let digits = arch.strip_prefix("sm_")?;
    let (num, suffix) = match digits.chars().last()? {
        c @ ('a' | 'f') => (&digits[..digits.len() - 1], Some(c)),
        _ => (digits, None),
    };
    if num.len() < 2 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = num.parse().ok()?;
    Some((n / 10, n % 10, suffix))
}

/// Whether SASS for `arch` runs on a device of compute capability `(major, minor)`: cubins run on the
/// same major version at an equal or higher minor; arch-specific ones (`sm_90a`) only on that exact
/// capability.
pub fn sass_runs_on(arch: &str, major: u32, minor: u32) -> bool {
    match parse_sm_arch(arch) {
        Some((ma, mi, Some('a'))) => (ma, mi) == (major, minor),
        Some((ma, mi, _)) => ma == major && minor >= mi,
        None => false,
    }
}

/// Where to load `module` from on a device of compute capability `(major, minor)`, with the cubins
/// allowed (`images`, false under `MLC_KERNEL_IMAGES=0`) or not.
pub fn module_code(module: &KernelModule, sass_arch: &str, major: u32, minor: u32, images: bool) -> ModuleCode {
    if images && !module.sass.is_empty() && sass_runs_on(sass_arch, major, minor) {
        ModuleCode::Sass
    } else {
        ModuleCode::Ptx
    }
}

#[cfg(test)]
mod sass_tests {
    use super::*;

    #[test]
    fn sass_is_chosen_only_where_it_runs() {
        assert_eq!(parse_sm_arch("sm_90a"), Some((9, 0, Some('a'))));
        assert_eq!(parse_sm_arch("sm_86"), Some((8, 6, None)));
        assert_eq!(parse_sm_arch("sm_100f"), Some((10, 0, Some('f'))));
        assert_eq!(parse_sm_arch("sm_120a"), Some((12, 0, Some('a'))));
        for bad in ["", "sm_", "sm_9", "compute_90", "sm_9x", "sm_a"] {
            assert_eq!(parse_sm_arch(bad), None, "{bad}");
        }
        // H100 / H200 (9.0) take the sm_90a cubins; Blackwell and Ampere fall back to the PTX.
        assert!(sass_runs_on("sm_90a", 9, 0));
        assert!(!sass_runs_on("sm_90a", 10, 0));
        assert!(!sass_runs_on("sm_90a", 8, 9));
        assert!(sass_runs_on("sm_80", 8, 6) && sass_runs_on("sm_80", 8, 0));
        assert!(!sass_runs_on("sm_86", 8, 0) && !sass_runs_on("sm_80", 9, 0));
        assert!(!sass_runs_on("", 9, 0));

        let m = KernelModule { name: "m", ptx: ".version 9.0", sass: &[0x7f, b'E', b'L', b'F'] };
        assert_eq!(module_code(&m, "sm_90a", 9, 0, true), ModuleCode::Sass);
        assert_eq!(module_code(&m, "sm_90a", 9, 0, false), ModuleCode::Ptx);
        assert_eq!(module_code(&m, "sm_90a", 12, 0, true), ModuleCode::Ptx);
        let no_sass = KernelModule { sass: &[], ..m };
        assert_eq!(module_code(&no_sass, "sm_90a", 9, 0, true), ModuleCode::Ptx);
    }
}
