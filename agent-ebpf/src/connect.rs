//! connect: TCP from `sock/inet_sock_set_state` (the kernel's own addresses, whatever path
//! started the connection: connect(2), io_uring, TCP Fast Open), datagram sockets from
//! `sys_enter_connect`.
use agent_common::{Config, ConnectEvent, KernelOffsets, connect_hook, kind, mode};
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    policy::mark,
    policy::{current_set, decide_connect, enforce, mapped_v6, policy_set},
    task::syscall_arg,
    task::{config, current_task, emit, header, read_kernel, read_kernel_ptr, traced},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_SYN_SENT: i32 = 2;
const SOCK_DGRAM: u16 = 2;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_tcp_state(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    match try_datagram_connect(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_tcp_state(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    let tp = &cfg.tracepoints;
    // SAFETY: all offsets come from this tracepoint's format file.
    unsafe {
        let newstate: i32 = ctx.read_at(tp.sock_newstate as usize).map_err(i64::from)?;
        if newstate != TCP_SYN_SENT {
            return Ok(());
        }
        let protocol: u16 = ctx.read_at(tp.sock_protocol as usize).map_err(i64::from)?;
        if protocol != IPPROTO_TCP || !traced(cfg) {
            return Ok(());
        }
        let family: u16 = ctx.read_at(tp.sock_family as usize).map_err(i64::from)?;
        let mut event = ConnectEvent {
            header: header(kind::CONNECT, cfg),
            family,
            protocol,
            sport: ctx.read_at(tp.sock_sport as usize).map_err(i64::from)?,
            dport: ctx.read_at(tp.sock_dport as usize).map_err(i64::from)?,
            hook: connect_hook::TCP_STATE,
            ..ConnectEvent::default()
        };
        if family == AF_INET {
            let s: [u8; 4] = ctx.read_at(tp.sock_saddr as usize).map_err(i64::from)?;
            let d: [u8; 4] = ctx.read_at(tp.sock_daddr as usize).map_err(i64::from)?;
            event.saddr[..4].copy_from_slice(&s);
            event.daddr[..4].copy_from_slice(&d);
        } else {
            event.saddr = ctx.read_at(tp.sock_saddr_v6 as usize).map_err(i64::from)?;
            event.daddr = ctx.read_at(tp.sock_daddr_v6 as usize).map_err(i64::from)?;
        }
        decide_and_emit(cfg, event);
    }
    Ok(())
}

/// In enforce mode: decide against the policy set, kill if so, and report violations only.
fn decide_and_emit(cfg: &Config, mut event: ConnectEvent) {
    if cfg.mode == mode::ENFORCE {
        let set = current_set();
        let Some(ps) = policy_set(set) else { return };
        let addr = mapped_v6(event.family == AF_INET, &event.daddr);
        let v = decide_connect(set, ps, &addr, event.dport, event.protocol);
        if !v.is_hit() {
            return;
        }
        enforce(v);
        mark(&mut event.header, v);
    }
    emit(kind::CONNECT, event);
}

/// The IP protocol of a datagram socket behind `fd` of the current task; `None` for stream
/// sockets (reported by the state tracepoint instead), non-sockets and unknown offsets.
fn datagram_protocol(k: &KernelOffsets, fd: u32) -> Option<u16> {
    let files = read_kernel_ptr(current_task(), k.task_files)?;
    let fdt = read_kernel_ptr(files, k.files_fdt)?;
    let max_fds: u32 = read_kernel(fdt, k.fdtable_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let fd_array = read_kernel_ptr(fdt, k.fdtable_fd)? as *const *const u8;
    // SAFETY: bounds-checked against max_fds above; the helper checks the address anyway.
    let file = unsafe { bpf_probe_read_kernel(fd_array.wrapping_add(fd as usize)) }.ok()?;
    let inode = read_kernel_ptr(file, k.file_inode)?;
    let mode: u16 = read_kernel(inode, k.inode_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket = read_kernel_ptr(file, k.file_private_data)?;
    let sock_type: u16 = read_kernel(socket, k.socket_type)?;
    if sock_type != SOCK_DGRAM {
        return None;
    }
    let sk = read_kernel_ptr(socket, k.socket_sk)?;
    read_kernel(sk, k.sock_protocol)
}

fn try_datagram_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    if !traced(cfg) {
        return Ok(());
    }
    let fd = syscall_arg(ctx, 0)? as u32;
    let addr = syscall_arg(ctx, 1)? as *const u8;
    let Some(protocol) = datagram_protocol(&cfg.kernel, fd) else {
        return Ok(());
    };
    // SAFETY: bpf_probe_read_user checks the user address. Read at syscall entry, so another
    // thread may change it afterwards; datagram sockets have no later kernel hook to confirm.
    unsafe {
        let family: u16 = bpf_probe_read_user(addr as *const u16).map_err(i64::from)?;
        let port: u16 =
            bpf_probe_read_user(addr.wrapping_add(2) as *const u16).map_err(i64::from)?;
        let mut event = ConnectEvent {
            header: header(kind::CONNECT, cfg),
            family,
            protocol,
            dport: u16::from_be(port),
            hook: connect_hook::SYSCALL,
            ..ConnectEvent::default()
        };
        match family {
            AF_INET => {
                let d: [u8; 4] = bpf_probe_read_user(addr.wrapping_add(4) as *const [u8; 4])
                    .map_err(i64::from)?;
                event.daddr[..4].copy_from_slice(&d);
            }
            AF_INET6 => {
                event.daddr = bpf_probe_read_user(addr.wrapping_add(8) as *const [u8; 16])
                    .map_err(i64::from)?;
            }
            _ => return Ok(()),
        }
        decide_and_emit(cfg, event);
    }
    Ok(())
}
