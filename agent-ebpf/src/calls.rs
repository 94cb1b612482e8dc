//! Which system call an LSM hook runs under, and with which arguments, from the registers the
//! task entered the kernel with (`bpf_task_pt_regs`). The LSM hooks see the kernel's own
//! objects (the file, the protection it is about to apply), not the call: these are for the
//! record (`mmap` or `shmat`, the address asked for, the descriptor) and to tell a mapping the
//! ELF loader makes at exec from one the process asked for. No decision rests on them but
//! that one, whose failure reports the mapping twice rather than not at all.
use agent_common::{Config, wx_syscall};
use aya_ebpf::helpers::bpf_probe_read_user_buf;

use crate::task::{current_regs, current_task, read_kernel};

/// `thread_info.status` bit: the task is in a 32-bit system call.
const TS_COMPAT: u32 = 0x0002;

/// x86-64 system call numbers.
const NR_MMAP: u64 = 9;
const NR_MPROTECT: u64 = 10;
const NR_SHMAT: u64 = 30;
const NR_EXECVE: u64 = 59;
const NR_EXECVEAT: u64 = 322;
const NR_PKEY_MPROTECT: u64 = 329;
/// i386 system call numbers (the 32-bit entry).
const NR32_EXECVE: u64 = 11;
const NR32_OLD_MMAP: u64 = 90;
const NR32_IPC: u64 = 117;
const NR32_MPROTECT: u64 = 125;
const NR32_MMAP2: u64 = 192;
const NR32_EXECVEAT: u64 = 358;
const NR32_PKEY_MPROTECT: u64 = 380;
const NR32_SHMAT: u64 = 397;
/// `ipc(2)`'s call number for `shmat`.
const IPC_SHMAT: u64 = 21;

/// The call a mapping or protection change came from. Fields the registers do not give keep
/// what the hook's own arguments say.
#[derive(Clone, Copy)]
pub struct Call {
    /// One of [`wx_syscall`].
    pub syscall: u32,
    pub addr: u64,
    pub len: u64,
    /// `mmap`'s descriptor (-1: none or unknown).
    pub fd: i32,
    /// `pkey_mprotect`'s key, `shmat`'s segment id.
    pub extra: u32,
    /// `shmat`'s flags (0 otherwise).
    pub shmflg: u32,
    /// Through the 32-bit entry.
    pub compat: bool,
    /// Made by the kernel's ELF loader for a new image (the task is in `execve`).
    pub exec: bool,
    /// The registers were read: `addr` and `len` are the request's.
    pub known: bool,
}

impl Call {
    /// Nothing known but the hook (`wx_syscall::MMAP` or `MPROTECT`) and the entry.
    pub fn unknown(cfg: &Config, syscall: u32) -> Self {
        let status: u32 = read_kernel(current_task(), cfg.kernel.thread_status).unwrap_or(0);
        let compat = status & TS_COMPAT != 0;
        Self {
            syscall: if compat && syscall == wx_syscall::MMAP {
                wx_syscall::MMAP2
            } else {
                syscall
            },
            addr: 0,
            len: 0,
            fd: -1,
            extra: 0,
            shmflg: 0,
            compat,
            exec: false,
            known: false,
        }
    }

    /// The call the current task is in, for a run of a hook that stands for `syscall`.
    #[inline(always)]
    pub fn current(cfg: &Config, syscall: u32) -> Self {
        let mut call = Self::unknown(cfg, syscall);
        let Some(regs) = current_regs() else {
            return call;
        };
        let k = &cfg.kernel;
        let reg = |offset: u32| read_kernel::<u64>(regs, offset).unwrap_or(0);
        let Some(nr) = read_kernel::<u64>(regs, k.regs_orig_ax) else {
            return call;
        };
        call.known = true;
        if call.compat {
            // 32-bit arguments: bx, cx, dx, si, di.
            let arg = |offset: u32| reg(offset) & 0xffff_ffff;
            match nr {
                NR32_EXECVE | NR32_EXECVEAT => call.exec = true,
                NR32_MMAP2 => {
                    call.addr = arg(k.regs_bx);
                    call.len = arg(k.regs_cx);
                    call.fd = arg(k.regs_di) as i32;
                }
                // Its arguments are a structure in the caller's memory: for the record only
                // (the hook has the protection the kernel applies).
                NR32_OLD_MMAP => {
                    call.syscall = wx_syscall::OLD_MMAP;
                    let mut fields = [0u8; 20];
                    let at = arg(k.regs_bx) as *const u8;
                    // SAFETY: the helper checks the user address; a fault leaves an error.
                    if unsafe { bpf_probe_read_user_buf(at, &mut fields) }.is_ok() {
                        let field = |i: usize| {
                            u32::from_le_bytes([
                                fields[i * 4],
                                fields[i * 4 + 1],
                                fields[i * 4 + 2],
                                fields[i * 4 + 3],
                            ])
                        };
                        call.addr = u64::from(field(0));
                        call.len = u64::from(field(1));
                        call.fd = field(4) as i32;
                    } else {
                        call.known = false;
                    }
                }
                NR32_MPROTECT => {
                    call.addr = arg(k.regs_bx);
                    call.len = arg(k.regs_cx);
                }
                NR32_PKEY_MPROTECT => {
                    call.syscall = wx_syscall::PKEY_MPROTECT;
                    call.addr = arg(k.regs_bx);
                    call.len = arg(k.regs_cx);
                    call.extra = arg(k.regs_si) as u32;
                }
                NR32_SHMAT => {
                    call.syscall = wx_syscall::SHMAT;
                    call.extra = arg(k.regs_bx) as u32;
                    call.addr = arg(k.regs_cx);
                    call.shmflg = arg(k.regs_dx) as u32;
                }
                NR32_IPC if arg(k.regs_bx) == IPC_SHMAT => {
                    call.syscall = wx_syscall::SHMAT;
                    call.extra = arg(k.regs_cx) as u32;
                    call.shmflg = arg(k.regs_dx) as u32;
                    call.addr = arg(k.regs_di);
                }
                _ => call.known = false,
            }
        } else {
            match nr {
                NR_EXECVE | NR_EXECVEAT => call.exec = true,
                NR_MMAP => {
                    call.addr = reg(k.regs_di);
                    call.len = reg(k.regs_si);
                    call.fd = reg(k.regs_r8) as i32;
                }
                NR_MPROTECT => {
                    call.addr = reg(k.regs_di);
                    call.len = reg(k.regs_si);
                }
                NR_PKEY_MPROTECT => {
                    call.syscall = wx_syscall::PKEY_MPROTECT;
                    call.addr = reg(k.regs_di);
                    call.len = reg(k.regs_si);
                    call.extra = reg(k.regs_r10) as u32;
                }
                NR_SHMAT => {
                    call.syscall = wx_syscall::SHMAT;
                    call.extra = reg(k.regs_di) as u32;
                    call.addr = reg(k.regs_si);
                    call.shmflg = reg(k.regs_dx) as u32;
                }
                _ => call.known = false,
            }
        }
        call
    }
}
