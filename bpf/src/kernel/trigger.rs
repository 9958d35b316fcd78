//! The trigger: the function whose uprobe runs the engine.
//!
//! Its first instruction is a 5-byte NOP (`nopl 0x0(%rax,%rax,1)`), which
//! Linux 6.18 optimises into a call to a uprobe trampoline (~0.3 us) instead
//! of an int3 trap (~19 us). The test `trigger_starts_with_nop5` checks the
//! bytes in the built binary.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("bpfdb's trigger is an x86-64 5-byte NOP; other architectures are not supported");

/// Symbol the uprobe is attached to; never strip the binary.
pub const SYMBOL: &str = "bpfdb_trigger";

/// The NOP the function must start with.
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// Arguments: engine instance (compared with the attach cookie) and slot.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn bpfdb_trigger(_instance: u32, _slot: u32) {
    core::arch::naked_asm!(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00", "ret")
}

/// Runs the engine on `slot` of `instance`. The call goes through an opaque
/// function pointer so the compiler assumes it reads and writes the slot.
#[inline(always)]
pub fn fire(instance: u32, slot: u32) {
    let f: extern "C" fn(u32, u32) = std::hint::black_box(bpfdb_trigger);
    f(instance, slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_starts_with_nop5() {
        let f: extern "C" fn(u32, u32) = bpfdb_trigger;
        // SAFETY: reading the first five bytes of our own function's code.
        let bytes = unsafe { std::slice::from_raw_parts(f as *const u8, 5) };
        assert_eq!(bytes, NOP5);
    }
}
