//! Egress: cgroup socket programs on the cgroup v2 root. They run on the kernel's own copy of
//! the destination for every path that reaches it (connect, sendto, sendmsg, sendmmsg, TCP
//! Fast Open, io_uring, 32-bit compat calls), before any packet leaves, and can refuse the
//! call with `EPERM`. Sockets of protocols no address hook judges (raw, ICMP, SCTP, ...) are
//! decided when they are created.
use core::ptr::read_volatile;

use agent_common::{Config, action, connect_hook, kind, mode, rule_id, set_flags};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};

use crate::{
    kill::kill_at_syscall_exit,
    policy::{Violation, current_set, decide_connect, mapped_v6, mark, policy_set, violation},
    scratch::{self, Claim},
    task::{config, count_loss, emit_from, header, traced},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_UDPLITE: u32 = 136;

/// What the hook returns to the kernel.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide_address(&ctx, AF_INET, connect_hook::CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide_address(&ctx, AF_INET6, connect_hook::CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide_address(&ctx, AF_INET, connect_hook::SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide_address(&ctx, AF_INET6, connect_hook::SENDMSG)
}

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    decide_socket(&ctx)
}

/// UDP-Lite is UDP to the rules (it is sent by the same code and can carry the same data).
fn rule_protocol(protocol: u32) -> u16 {
    if protocol == IPPROTO_UDPLITE {
        IPPROTO_UDP as u16
    } else {
        protocol as u16
    }
}

/// The destination as the kernel will use it: an unspecified address (`0.0.0.0`, `::`,
/// `::ffff:0.0.0.0`) means this host's loopback.
fn effective_destination(family: u16, addr: &mut [u8; 16]) {
    if family == AF_INET {
        if addr[..4] == [0; 4] {
            addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        }
    } else if addr[..10] == [0; 10] && addr[12..] == [0; 4] {
        if addr[10..12] == [0xff, 0xff] {
            addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        } else if addr[10..12] == [0; 2] {
            addr[15] = 1;
        }
    }
}

fn decide_address(ctx: &SockAddrContext, family: u16, hook: u32) -> i32 {
    let Some(cfg) = config() else { return ALLOW };
    if !traced(cfg) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context is the kernel's `bpf_sock_addr`; the verifier checks each access.
    // Volatile loads keep each a single load at a constant offset from the context pointer:
    // the verifier refuses a load through a context pointer the compiler moved.
    let (port, protocol, sock_type, mut daddr) = unsafe {
        let mut daddr = [0u8; 16];
        if family == AF_INET {
            let ip4 = read_volatile(&raw const (*sa).user_ip4);
            daddr[..4].copy_from_slice(&ip4.to_ne_bytes());
        } else {
            let words = [
                read_volatile(&raw const (*sa).user_ip6[0]),
                read_volatile(&raw const (*sa).user_ip6[1]),
                read_volatile(&raw const (*sa).user_ip6[2]),
                read_volatile(&raw const (*sa).user_ip6[3]),
            ];
            for (i, w) in words.iter().enumerate() {
                daddr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
        }
        (
            u16::from_be(read_volatile(&raw const (*sa).user_port) as u16),
            read_volatile(&raw const (*sa).protocol),
            read_volatile(&raw const (*sa).type_),
            daddr,
        )
    };
    effective_destination(family, &mut daddr);
    let destination = Destination {
        family,
        protocol: protocol as u16,
        port,
        daddr,
        hook,
        sock_type,
    };
    if cfg.mode != mode::ENFORCE {
        send(cfg, &destination, None);
        return ALLOW;
    }
    let set = current_set();
    let Some(ps) = policy_set(set) else {
        return ALLOW;
    };
    let addr = mapped_v6(family == AF_INET, &daddr);
    let v = decide_connect(set, &ps, &addr, port, rule_protocol(protocol));
    if !v.is_hit() {
        if let Some(learned) = Violation::allowed_in(set, ps.flags) {
            send(cfg, &destination, Some(learned));
        }
        return ALLOW;
    }
    report(cfg, &destination, v)
}

/// What a connect record says of the call, kept on the stack for the decision.
struct Destination {
    family: u16,
    protocol: u16,
    port: u16,
    daddr: [u8; 16],
    hook: u32,
    sock_type: u32,
}

/// Emits a violation and carries out its action: the return value refuses the call for
/// Deny and Kill; Kill also kills the process when the call returns to it (these hooks
/// cannot signal).
#[inline(always)]
fn report(cfg: &Config, destination: &Destination, v: Violation) -> i32 {
    if !v.is_hit() {
        return ALLOW;
    }
    let pid = send(cfg, destination, Some(v));
    if v.action == action::KILL {
        kill_at_syscall_exit(pid);
    }
    if v.action >= action::DENY {
        REFUSE
    } else {
        ALLOW
    }
}

/// Builds the record in this thread's scratch entry (the decision's call chain, policy set and
/// hand-over, and the report's, throttle, leave no room for it on the 512-byte stack; 6.1
/// counts a chain's frames together) and sends it from there. Only a record that is sent is
/// built, after the decision, which never reads it. Returns the caller's pid.
#[inline(always)]
fn send(cfg: &Config, destination: &Destination, v: Option<Violation>) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Ok(claim) = Claim::<scratch::Connect>::new() else {
        count_loss(kind::CONNECT);
        return pid;
    };
    // SAFETY: this thread's scratch entry, which nobody else writes while the claim lives.
    let event = unsafe { &mut *claim.entry() };
    event.header = header(kind::CONNECT, cfg);
    event.family = destination.family;
    event.protocol = destination.protocol;
    event.sport = 0;
    event.dport = destination.port;
    event.saddr = [0; 16];
    event.daddr = destination.daddr;
    event.hook = destination.hook;
    event.sock_type = destination.sock_type;
    if let Some(v) = v {
        mark(&mut event.header, v);
    }
    emit_from(kind::CONNECT, event);
    pid
}

/// Whether the address hooks judge sockets of this type and protocol.
fn judged_by_address(sock_type: u32, protocol: u32) -> bool {
    match sock_type {
        SOCK_STREAM => protocol == IPPROTO_TCP,
        SOCK_DGRAM => protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE,
        _ => false,
    }
}

fn decide_socket(ctx: &SockContext) -> i32 {
    let Some(cfg) = config() else { return ALLOW };
    let sk = ctx.sock;
    // SAFETY: the context is the kernel's `bpf_sock`; volatile loads as in `decide_address`.
    let (family, sock_type, protocol) = unsafe {
        (
            read_volatile(&raw const (*sk).family),
            read_volatile(&raw const (*sk).type_),
            read_volatile(&raw const (*sk).protocol),
        )
    };
    if judged_by_address(sock_type, protocol) || !traced(cfg) {
        return ALLOW;
    }
    let destination = Destination {
        family: family as u16,
        protocol: protocol as u16,
        port: 0,
        daddr: [0; 16],
        hook: connect_hook::SOCKET,
        sock_type,
    };
    if cfg.mode != mode::ENFORCE {
        send(cfg, &destination, None);
        return ALLOW;
    }
    let set = current_set();
    let Some(ps) = policy_set(set) else {
        return ALLOW;
    };
    // Any connect rule (allow or deny) names destinations; a socket that reaches them
    // without passing the address hooks would walk around it.
    if ps.flags & (set_flags::CONNECT_ALLOWLIST | set_flags::CONNECT_RULES) == 0 {
        if let Some(learned) = Violation::allowed_in(set, ps.flags) {
            send(cfg, &destination, Some(learned));
        }
        return ALLOW;
    }
    report(
        cfg,
        &destination,
        violation(ps.connect_action, set, rule_id::PROTOCOL),
    )
}
