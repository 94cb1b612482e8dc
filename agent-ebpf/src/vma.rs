//! The current process's memory areas, as the kernel keeps them: which area holds an
//! address, with what protection and backed by which file (`bpf_find_vma`).
use agent_common::Config;
use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_find_vma, bpf_get_current_task_btf},
};

use crate::task::read_kernel;

pub const VM_READ: u64 = 0x1;
pub const VM_WRITE: u64 = 0x2;
pub const VM_EXEC: u64 = 0x4;

/// What the callback fills in about the area found (offsets in, facts out).
#[repr(C)]
#[derive(Default)]
pub struct Area {
    flags_offset: u32,
    file_offset: u32,
    start_offset: u32,
    end_offset: u32,
    pub flags: u64,
    pub file: u64,
    pub start: u64,
    pub end: u64,
}

/// Called by the kernel with the area that holds the address, under the mm's lock.
extern "C" fn area_facts(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    let area = ctx.cast::<Area>();
    let vma = vma as *const u8;
    // SAFETY: `ctx` is the `Area` on the caller's stack that `find` passed.
    unsafe {
        (*area).flags = read_kernel(vma, (*area).flags_offset).unwrap_or(0);
        (*area).file = read_kernel(vma, (*area).file_offset).unwrap_or(0);
        (*area).start = read_kernel(vma, (*area).start_offset).unwrap_or(0);
        (*area).end = read_kernel(vma, (*area).end_offset).unwrap_or(0);
    }
    0
}

/// What `find` saw.
pub enum Found {
    Area(Area),
    /// No area holds the address.
    Nothing,
    /// The kernel could not look (the mm's lock was taken, the helper busy): nothing can be
    /// said about the address, and the caller fails closed.
    Unknown,
}

const ENOENT: i64 = 2;

/// The area of the current process's memory that holds `addr`.
pub fn find(cfg: &Config, addr: u64) -> Found {
    let k = &cfg.kernel;
    let mut area = Area {
        flags_offset: k.vma_flags,
        file_offset: k.vma_file,
        start_offset: k.vma_start,
        end_offset: k.vma_end,
        ..Area::default()
    };
    // SAFETY: the task is the current one, as the helper wants it (a BTF pointer); the
    // callback is a BPF function and the context a stack object that outlives the call.
    let rc = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf() as *mut _,
            addr,
            area_facts as *mut c_void,
            core::ptr::addr_of_mut!(area).cast(),
            0,
        )
    };
    match rc {
        0 if area.end > area.start => Found::Area(area),
        0 => Found::Unknown,
        rc if rc == -ENOENT => Found::Nothing,
        _ => Found::Unknown,
    }
}
