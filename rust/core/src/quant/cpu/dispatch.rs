//! Which instruction set the CPU kernels use: detected once at run time, so one x86-64 wheel runs the
//! AVX-512 VNNI kernels where the CPU has them and the AVX2 or scalar ones elsewhere. `MLC_CPU_ISA`
//! (`scalar`, `avx2`, `avx512`) lowers the choice, never raises it past what the CPU has, so the lower
//! levels are tested on an AVX-512 machine too.

use std::sync::OnceLock;

/// A kernel family, in increasing order of what it needs from the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust: the reference the SIMD kernels are tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell, Zen 1 and later).
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL and VNNI (`vpdpbusd`: u8 x i8 dot products into i32 in one instruction).
    Avx512Vnni,
    // aarch64 NEON + dotprod (`sdot`) belongs here: a `neon` module beside `x86` in each type's file and
    // one more arm in `detect`. No machine here can build or test it, so it is not written yet.
}

impl Isa {
    /// Every level this CPU can run, lowest first (tests run each one).
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|i| *i <= detect()).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx512vnni" => Some(Isa::Avx512Vnni),
            _ => None,
        }
    }
}

/// The best level this CPU supports (ignores `MLC_CPU_ISA`).
pub fn detect() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(detect_uncached)
}

#[cfg(target_arch = "x86_64")]
fn detect_uncached() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni");
    if avx512 {
        Isa::Avx512Vnni
    } else if avx2 {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_uncached() -> Isa {
    Isa::Scalar
}

/// The level the kernels use: [`detect`], lowered by `MLC_CPU_ISA` when that names a lower level (read
/// once; an unknown value or a level above the CPU's is logged and ignored).
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let best = detect();
        match crate::switches::value("MLC_CPU_ISA") {
            Some(v) => match Isa::parse(&v) {
                Some(isa) if isa <= best => isa,
                Some(isa) => {
                    log::warn!("MLC_CPU_ISA={v}: this CPU has no {}, using {}", isa.name(), best.name());
                    best
                }
                None => {
                    log::warn!("MLC_CPU_ISA={v} is not one of scalar, avx2, avx512; using {}", best.name());
                    best
                }
            },
            None => best,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_parse() {
        assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx2 < Isa::Avx512Vnni);
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni] {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse("sse"), None);
        assert!(Isa::available().contains(&Isa::Scalar));
        assert!(active() <= detect());
    }
}
