//! Which arithmetic this process's ed25519 checks run on.
//!
//! curve25519-dalek compiles its AVX-512 IFMA code only when the build passes
//! `--cfg curve25519_dalek_backend="avx512"` (the repository's `.cargo/config.toml` does, on
//! x86_64), and then picks IFMA, AVX2 or its portable code when the process starts, from what the
//! CPU has. The same cfg reaches this crate, so it can tell which one that is.

/// The name of the arithmetic dalek runs this process's signature checks on: `avx512ifma`,
/// `avx2`, or the portable `serial` (or `fiat`, when a build asks for it).
pub fn arithmetic() -> &'static str {
    // 32-bit limbs have no vector code.
    if cfg!(curve25519_dalek_bits = "32") || cfg!(curve25519_dalek_backend = "serial") {
        return "serial";
    }
    if cfg!(curve25519_dalek_backend = "fiat") {
        return "fiat";
    }
    #[cfg(target_arch = "x86_64")]
    {
        if ifma_compiled()
            && std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return "avx512ifma";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    "serial"
}

/// Whether dalek compiled its IFMA code: asked for by the cfg, or chosen by dalek's build script
/// when no backend is named and the build targets a CPU with IFMA (`-C target-cpu=znver4`,
/// `native` on such a CPU).
fn ifma_compiled() -> bool {
    cfg!(curve25519_dalek_backend = "avx512")
        || (cfg!(all(
            target_feature = "avx512ifma",
            target_feature = "avx512vl"
        )) && !cfg!(curve25519_dalek_backend = "simd"))
}

#[cfg(test)]
mod tests {
    /// A build without the cfg still works, on AVX2: the loss is only speed (an ed25519 check
    /// 1.75× as long on a CPU with IFMA), so nothing else would notice it.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x86_64_builds_have_the_avx512_ifma_arithmetic() {
        assert!(
            super::ifma_compiled(),
            "built without --cfg curve25519_dalek_backend=\"avx512\": .cargo/config.toml is \
             missing, or RUSTFLAGS in the environment replaced it (then pass the cfg there too)"
        );
        if std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            assert_eq!(super::arithmetic(), "avx512ifma");
        } else {
            assert_ne!(super::arithmetic(), "avx512ifma");
        }
    }
}
