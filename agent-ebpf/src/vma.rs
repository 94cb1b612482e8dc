//! The current process's memory areas, as the kernel keeps them: which area holds an
//! address, with what protection and backed by which file. `bpf_find_vma` (5.17 and newer)
//! looks it up under the mm's lock; before it, the kernel's tree of areas (`mm_rb`, which
//! 6.1 replaced) is walked. A program takes one or the other at build time (`WALK`): a kernel
//! refuses a program whose callback it does not know, even on a branch never taken.
use agent_common::Config;
use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_find_vma, bpf_get_current_task_btf},
};

use crate::task::{current_task, read_kernel, read_kernel_ptr};

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

/// The area of the current process's memory that holds `addr`: by walking the tree of areas
/// when `WALK`, else by `bpf_find_vma`.
#[inline(always)]
pub fn find<const WALK: bool>(cfg: &Config, addr: u64) -> Found {
    if WALK {
        walk(cfg, addr)
    } else {
        look_up(cfg, addr)
    }
}

/// Deeper than a red-black tree of the most areas a process may have (`vm.max_map_count`
/// 65530 by default, depth at most 2·log2(n+1) = 32) gets: a walk that does not end by then
/// says nothing, and the caller fails closed.
const MAX_DEPTH: usize = 40;

/// The area holding `addr`, found as the kernel's `find_vma` does it on kernels that keep
/// the areas in a red-black tree ordered by address. Without the mm's lock: another thread
/// changing the tree meanwhile can make the walk miss (`Unknown` or `Nothing`), as it can
/// change the area right after any lookup.
fn walk(cfg: &Config, addr: u64) -> Found {
    let k = &cfg.kernel;
    let Some(mm) = read_kernel_ptr(current_task(), k.task_mm) else {
        return Found::Unknown;
    };
    // `mm_rb` is a `struct rb_root`, whose only member is the root node.
    let Some(mut node) = read_kernel::<u64>(mm, k.mm_rb) else {
        return Found::Unknown;
    };
    if k.vma_rb == agent_common::OFFSET_UNKNOWN {
        return Found::Unknown;
    }
    for _ in 0..MAX_DEPTH {
        if node == 0 {
            return Found::Nothing;
        }
        let vma = node.wrapping_sub(u64::from(k.vma_rb)) as *const u8;
        let (Some(start), Some(end)) = (
            read_kernel::<u64>(vma, k.vma_start),
            read_kernel::<u64>(vma, k.vma_end),
        ) else {
            return Found::Unknown;
        };
        let child = if addr < start {
            k.rb_left
        } else if addr >= end {
            k.rb_right
        } else {
            let (Some(flags), Some(file)) = (
                read_kernel::<u64>(vma, k.vma_flags),
                read_kernel::<u64>(vma, k.vma_file),
            ) else {
                return Found::Unknown;
            };
            if end <= start {
                return Found::Unknown;
            }
            return Found::Area(Area {
                flags,
                file,
                start,
                end,
                ..Area::default()
            });
        };
        let Some(next) = read_kernel::<u64>(node as *const u8, child) else {
            return Found::Unknown;
        };
        node = next;
    }
    Found::Unknown
}

/// The area holding `addr`, by `bpf_find_vma`.
fn look_up(cfg: &Config, addr: u64) -> Found {
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
