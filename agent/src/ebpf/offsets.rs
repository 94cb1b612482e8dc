//! The kernel structure and tracepoint field offsets the probes need, found on this kernel.
use std::path::Path;

use agent_common::{KernelOffsets, OFFSET_UNKNOWN, SYSCALL_ARG0_OFFSET, SYSCALL_RET_OFFSET};

use super::{EbpfError, btf::Btf, tracefs::Format};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Offsets of kernel structure members from BTF. A kernel without BTF, or a member this
/// kernel lacks, leaves [`OFFSET_UNKNOWN`]: the probes then report what they cannot read.
pub fn kernel_offsets(btf: Option<&Btf>) -> (KernelOffsets, Vec<String>) {
    let mut missing = Vec::new();
    let mut find = |name: &str, path: &str| -> u32 {
        match btf.and_then(|b| b.offset_of(name, path)) {
            Some(off) => off,
            None => {
                missing.push(format!("{name}.{path}"));
                OFFSET_UNKNOWN
            }
        }
    };
    let offsets = KernelOffsets {
        task_real_parent: find("task_struct", "real_parent"),
        task_tgid: find("task_struct", "tgid"),
        task_personality: find("task_struct", "personality"),
        task_files: find("task_struct", "files"),
        file_dentry: find("file", "f_path.dentry"),
        file_inode: find("file", "f_inode"),
        dentry_name: find("dentry", "d_name.name"),
        inode_nlink: find("inode", "__i_nlink"),
        files_fdt: find("files_struct", "fdt"),
        fdtable_max_fds: find("fdtable", "max_fds"),
        fdtable_fd: find("fdtable", "fd"),
        file_vfsmount: find("file", "f_path.mnt"),
        vfsmount_mnt_root: find("vfsmount", "mnt_root"),
        vfsmount_sb: find("vfsmount", "mnt_sb"),
        sb_flags: find("super_block", "s_flags"),
        mount_mnt: find("mount", "mnt"),
        mount_parent: find("mount", "mnt_parent"),
        mount_mountpoint: find("mount", "mnt_mountpoint"),
        dentry_parent: find("dentry", "d_parent"),
        bprm_file: find("linux_binprm", "file"),
        bprm_filename: find("linux_binprm", "filename"),
        bprm_interp: find("linux_binprm", "interp"),
        task_pid: find("task_struct", "pid"),
        task_signal: find("task_struct", "signal"),
        signal_live: find("signal_struct", "live.counter"),
        sb_magic: find("super_block", "s_magic"),
        cgroup_root: find("cgroup", "root"),
        root_hierarchy_id: find("cgroup_root", "hierarchy_id"),
        cgroup_kn: find("cgroup", "kn"),
        kn_id: find("kernfs_node", "id"),
        cgroup_parent: find("cgroup", "self.parent"),
        file_mode: find("file", "f_mode"),
        thread_status: find("task_struct", "thread_info.status"),
        regs_bx: find("pt_regs", "bx"),
        regs_cx: find("pt_regs", "cx"),
        regs_dx: find("pt_regs", "dx"),
        regs_si: find("pt_regs", "si"),
        regs_di: find("pt_regs", "di"),
        task_mm: find("task_struct", "mm"),
        mm_arg_start: find("mm_struct", "arg_start"),
        mm_arg_end: find("mm_struct", "arg_end"),
        mount_mnt_ns: find("mount", "mnt_ns"),
        mnt_ns_user_ns: find("mnt_namespace", "user_ns"),
        user_ns_level: find("user_namespace", "level"),
        vfsmount_flags: find("vfsmount", "mnt_flags"),
        sb_root: find("super_block", "s_root"),
        sb_user_ns: find("super_block", "s_user_ns"),
        vma_flags: find("vm_area_struct", "vm_flags"),
        vma_file: find("vm_area_struct", "vm_file"),
        vma_start: find("vm_area_struct", "vm_start"),
        vma_end: find("vm_area_struct", "vm_end"),
        mm_start_stack: find("mm_struct", "start_stack"),
        mm_start_code: find("mm_struct", "start_code"),
        mm_start_data: find("mm_struct", "start_data"),
        mm_end_code: find("mm_struct", "end_code"),
        _pad: 0,
    };
    (offsets, missing)
}

pub fn load_btf() -> Result<Btf, EbpfError> {
    Btf::from_file(Path::new(VMLINUX_BTF))
}

/// Checks that syscall tracepoints have the record layout the probes assume.
pub fn check_syscall_layout(tracefs: &Path) -> Result<(), EbpfError> {
    let mmap = Format::read(tracefs, "syscalls", "sys_enter_mmap")?;
    let addr = mmap.offset("addr", 8)?;
    if addr as usize != SYSCALL_ARG0_OFFSET {
        return Err(EbpfError::TracepointField {
            tracepoint: mmap.tracepoint,
            field: "addr".into(),
            reason: format!("is at offset {addr}, the probes expect {SYSCALL_ARG0_OFFSET}"),
        });
    }
    let openat = Format::read(tracefs, "syscalls", "sys_exit_openat")?;
    let ret = openat.offset("ret", 8)?;
    if ret as usize != SYSCALL_RET_OFFSET {
        return Err(EbpfError::TracepointField {
            tracepoint: openat.tracepoint,
            field: "ret".into(),
            reason: format!("is at offset {ret}, the probes expect {SYSCALL_RET_OFFSET}"),
        });
    }
    Ok(())
}
