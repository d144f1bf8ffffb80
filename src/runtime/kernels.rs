//! Which of tract's matrix-product kernels run on this CPU.
//!
//! tract 0.23 picks its x86 kernels with a cost model per vendor. Its AMD AVX-512 model was
//! fitted on a Zen 5 desktop part (Ryzen 9 9950X3D), whose FMA units are 512 bits wide.
//! Zen 4 (family 19h, the only family-19h parts with AVX-512) runs each 512-bit FMA as two
//! 256-bit halves, and there tract's 256-bit FMA kernels run the paper's full-width model
//! about 10% faster than the AVX-512 ones the model picks (`scripts/bench_tract.sh`, docs/engines.md). So on Zen 4
//! allconv hands tract `TRACT_CPU_ISA=-avx512f` as a process-wide default. tract's knobs put
//! the environment above that default: a user's own `TRACT_CPU_ISA` (`+avx512f` to keep
//! the AVX-512 kernels) wins. Everywhere else tract's own choice stands.

use std::sync::Once;

/// tract's knob that edits the instruction sets it detected.
pub const ISA_KNOB: &str = "TRACT_CPU_ISA";

/// The edit allconv makes to tract's detected instruction sets on a CPU: `Some((edit,
/// reason))`, or `None` to leave tract's choice. `family` is the x86 display family
/// (base family plus extended family).
pub fn isa_edit(vendor: &str, family: u32, avx512f: bool) -> Option<(&'static str, &'static str)> {
    (vendor == "AuthenticAMD" && family == 0x19 && avx512f).then_some((
        "-avx512f",
        "AMD Zen 4 (family 19h) splits 512-bit FMAs in two; tract's 256-bit FMA kernels run faster there",
    ))
}

/// This CPU's vendor string and display family (x86_64 only).
#[cfg(target_arch = "x86_64")]
fn cpu_identity() -> (String, u32) {
    use std::arch::x86_64::__cpuid;
    // SAFETY: cpuid leaves 0 and 1 exist on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let (leaf0, leaf1) = unsafe { (__cpuid(0), __cpuid(1)) };
    let mut vendor = Vec::with_capacity(12);
    for r in [leaf0.ebx, leaf0.edx, leaf0.ecx] {
        vendor.extend_from_slice(&r.to_le_bytes());
    }
    let base = (leaf1.eax >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((leaf1.eax >> 20) & 0xff)
    } else {
        base
    };
    (String::from_utf8_lossy(&vendor).into_owned(), family)
}

/// The edit [`isa_edit`] makes on this machine.
pub fn this_cpu_edit() -> Option<(&'static str, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        let (vendor, family) = cpu_identity();
        isa_edit(
            &vendor,
            family,
            std::arch::is_x86_feature_detected!("avx512f"),
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Install this CPU's edit as tract's default, once per process, before tract first looks
/// at the machine (every tract model allconv builds calls this first).
pub fn tune_for_this_cpu() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Some((edit, _)) = this_cpu_edit() {
            // Fails only if another config in this process set the knob differently; tract
            // then keeps that one, which is the right outcome.
            let _ = tract_onnx::tract_core::knobs::set_config_global(ISA_KNOB, edit);
        }
    });
}

/// What decides tract's kernels in this process, for reports: the user's
/// `TRACT_CPU_ISA`, allconv's edit for this CPU, or tract's own choice.
pub fn describe() -> String {
    if let Some(v) = std::env::var(ISA_KNOB)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        return format!("{ISA_KNOB}={v} from the environment");
    }
    match this_cpu_edit() {
        Some((edit, why)) => format!("{ISA_KNOB}={edit} set by allconv: {why}"),
        None => "tract's own choice for this CPU".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_zen4_with_avx512_gets_the_edit() {
        assert_eq!(
            isa_edit("AuthenticAMD", 0x19, true).map(|e| e.0),
            Some("-avx512f")
        );
        // Zen 3 (family 19h, no AVX-512), Zen 5 (1Ah), Intel: tract's choice.
        assert_eq!(isa_edit("AuthenticAMD", 0x19, false), None);
        assert_eq!(isa_edit("AuthenticAMD", 0x1a, true), None);
        assert_eq!(isa_edit("GenuineIntel", 0x6, true), None);
    }

    /// After tuning, tract's view of the machine has AVX-512 exactly where this CPU has it
    /// and the rule does not take it away.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn tract_sees_the_edit() {
        use tract_onnx::tract_core::tract_linalg::isa::{native, Isa};
        if std::env::var_os(ISA_KNOB).is_some() {
            return; // the user's knob decides; nothing of allconv's to check
        }
        tune_for_this_cpu();
        let has = std::arch::is_x86_feature_detected!("avx512f");
        assert_eq!(
            native().has(Isa::X86_64Avx512f),
            has && this_cpu_edit().is_none(),
            "{}",
            describe()
        );
    }
}
