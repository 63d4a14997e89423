//! Which x86 instruction-set level dreamd's own CPU kernels run at: the best the CPU has,
//! detected once, optionally capped by the `DREAMD_CPU_MAX_ISA` environment variable.
//!
//! The Winograd convolutions ([`super::winograd`]) have a build of their transforms per level,
//! and their Winograd-domain products ([`super::tile_products`]) use AVX-512 microkernels from
//! [`Isa::Avx512`] and `vdpbf16ps` from [`Isa::Avx512Bf16`]. The cap exists to compare levels on
//! one machine (`DREAMD_CPU_MAX_ISA=avx2 dreamd bench decode …`) and to step around a level
//! that misbehaves on some CPU, as oneDNN's `ONEDNN_MAX_CPU_ISA` does; it does not reach the
//! `gemm` crate used by the `exact` convolutions, which detects the CPU itself.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that caps the level.
pub const MAX_ISA_VAR: &str = "DREAMD_CPU_MAX_ISA";

/// An instruction-set level, ordered from the least to the most capable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Whatever the compilation target guarantees (SSE2 on x86-64).
    Portable,
    /// AVX2 and FMA: 8-wide f32.
    Avx2,
    /// AVX-512 F, BW and VL: 16-wide f32 with masks.
    Avx512,
    /// [`Isa::Avx512`] plus AVX512_BF16: `vdpbf16ps`, two bf16 multiply-adds per f32 lane.
    Avx512Bf16,
}

/// `DREAMD_CPU_MAX_ISA` holds something that is not a level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_ISA_VAR}={value:?} is not an instruction-set level (one of: portable, avx2, avx512, avx512-bf16)")]
pub struct IsaError {
    /// The value found.
    pub value: String,
}

impl Isa {
    /// Every level, least capable first.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];

    /// The best level this CPU has.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// The level the kernels use: [`Isa::detected`], capped by `DREAMD_CPU_MAX_ISA` when it
    /// names a level (an invalid value is reported by [`Isa::check_env`] and otherwise ignored).
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| match Isa::check_env() {
            Ok(Some(cap)) => cap.min(Isa::detected()),
            Ok(None) | Err(_) => Isa::detected(),
        })
    }

    /// Every level this CPU can run, least capable first (tests check each).
    pub fn available() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| *isa <= Isa::detected())
    }

    /// The cap `DREAMD_CPU_MAX_ISA` asks for, if set; an error naming the value if it is not a
    /// level. The command line calls this at start so a typo is an error, not a silent default.
    pub fn check_env() -> Result<Option<Isa>, IsaError> {
        match std::env::var(MAX_ISA_VAR) {
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => value.parse().map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(value)) => Err(IsaError {
                value: value.to_string_lossy().into_owned(),
            }),
        }
    }
}

/// The AVX-512 mask with lanes `0..n.min(16)` set: the lanes of a 16-wide f32 vector that hold
/// values when `n` are left (the kernels' masked tails).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn lanes(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma");
        if avx512 && has!("avx512bf16") {
            return Isa::Avx512Bf16;
        }
        if avx512 {
            return Isa::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512-bf16",
        })
    }
}

impl FromStr for Isa {
    type Err = IsaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Isa::ALL
            .into_iter()
            .find(|isa| isa.to_string() == wanted)
            .ok_or_else(|| IsaError {
                value: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_typos_are_named() {
        for isa in Isa::ALL {
            assert_eq!(isa.to_string().parse::<Isa>(), Ok(isa));
        }
        assert_eq!("AVX512_BF16".parse::<Isa>(), Ok(Isa::Avx512Bf16));
        let err = "avx-512".parse::<Isa>().unwrap_err();
        assert!(err.to_string().contains("\"avx-512\""), "{err}");
        assert!(err.to_string().contains(MAX_ISA_VAR), "{err}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lane_masks_cover_what_is_left() {
        assert_eq!(lanes(0), 0);
        assert_eq!(lanes(3), 0b111);
        assert_eq!(lanes(16), 0xffff);
        assert_eq!(lanes(40), 0xffff);
    }

    #[test]
    fn levels_are_ordered_and_the_detected_one_is_available() {
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(Isa::Avx512 < Isa::Avx512Bf16);
        assert_eq!(Isa::available().last(), Some(Isa::detected()));
        assert!(Isa::active() <= Isa::detected());
    }
}
