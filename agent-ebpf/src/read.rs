//! Reads from kernel structures at offsets user space found in BTF.
use agent_common::OFFSET_UNKNOWN;
use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Reads a `T` at `base + offset` from kernel memory; `None` when the offset is unknown on
/// this kernel or the read faults.
pub fn read_kernel<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() || offset == OFFSET_UNKNOWN {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T).ok() }
}

pub fn read_kernel_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    let ptr: *const u8 = read_kernel(base, offset)?;
    if ptr.is_null() { None } else { Some(ptr) }
}
