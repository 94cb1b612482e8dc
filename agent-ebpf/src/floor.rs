//! Empty programs for `vigil floor`: the cost of merely having a program on each hook Vigil
//! attaches to, which `cargo xtask bench` measures Vigil's own programs against. Never
//! attached by the agent. A hook that takes several of Vigil's programs takes as many of these
//! (the same program cannot be attached twice to one hook), hence the numbered ones.
use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, lsm, raw_tracepoint, tracepoint},
    programs::{LsmContext, RawTracePointContext, SockAddrContext, SockContext, TracePointContext},
};

/// What a cgroup socket program returns to let the call go on.
const ALLOW: i32 = 1;

#[tracepoint]
pub fn floor_tracepoint_0(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_tracepoint_1(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint]
pub fn floor_raw_0(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint]
pub fn floor_raw_1(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint]
pub fn floor_raw_2(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint]
pub fn floor_raw_3(_ctx: RawTracePointContext) -> i32 {
    0
}

#[cgroup_sock_addr(connect4)]
pub fn floor_connect4(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn floor_connect6(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn floor_sendmsg4(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn floor_sendmsg6(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock(sock_create)]
pub fn floor_sock_create(_ctx: SockContext) -> i32 {
    ALLOW
}

// An LSM program returning 0 lets the other LSMs decide.
#[lsm(hook = "bprm_check_security")]
pub fn floor_lsm_bprm_check(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "mmap_file")]
pub fn floor_lsm_mmap_file(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_mprotect")]
pub fn floor_lsm_file_mprotect(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "mmap_file")]
pub fn floor_lsm_mmap_file_1(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_mprotect")]
pub fn floor_lsm_file_mprotect_1(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_open")]
pub fn floor_lsm_file_open(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "ptrace_access_check")]
pub fn floor_lsm_ptrace_access_check(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "ptrace_traceme")]
pub fn floor_lsm_ptrace_traceme(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_init_security_anon")]
pub fn floor_lsm_inode_init_security_anon(_ctx: LsmContext) -> i32 {
    0
}
