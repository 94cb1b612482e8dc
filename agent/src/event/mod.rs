//! Typed events decoded from the kernel's records.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::{
    ConnectEvent, EventHeader, ExecEvent, MoveEvent, WxEvent, connect_hook, exec_flags, kind,
    wx_reason, wx_syscall,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its header ({need} bytes)")]
    Short { len: usize, need: usize },
    #[error("record kind {kind} is {len} bytes, expected {need}")]
    Size { kind: u32, len: usize, need: usize },
    #[error("unknown record kind {0}")]
    Kind(u32),
}

/// A kernel verdict on the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Observed,
    /// A policy was violated; `action` is what the kernel did (`Kill`) or asks for (`Alert`).
    Violation {
        action: Action,
        set: u32,
        rule: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Alert,
    Deny,
    Kill,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Alert => "alert",
            Self::Deny => "deny",
            Self::Kill => "kill",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub verdict: Verdict,
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// Identical violations this record stands for (more than 1 after a flood was held back
    /// in the kernel), and the `boot_ns` of the first of them.
    pub count: u32,
    pub first_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// The path as the kernel recorded it for the exec (`bprm->filename`).
    pub path: String,
    /// The executable's real path (symlinks resolved; a script's interpreter), as seen from
    /// the process's mount namespace; `None` when it could not be walked.
    pub exe_path: Option<String>,
    /// The executable's file name on its file system (e.g. `memfd:payload`).
    pub exe_name: String,
    /// `path` is a script run by the interpreter at `exe_path`.
    pub script: bool,
    /// A policy applies but the kernel could not decide (e.g. a path too long for its maps).
    pub undecided: bool,
    /// The kernel could not resolve the executable's real path and failed closed.
    pub unverifiable: bool,
    /// A file mapped executable by a running process (loader, `dlopen`, `LD_PRELOAD`), not
    /// an exec: `path` is that file.
    pub mapped: bool,
    /// The script of an earlier exec as its interpreter opened it, not an exec: `path` is
    /// the opened file's real path.
    pub opened: bool,
    /// The real path crosses a mount an unprivileged user made in a user namespace of its
    /// own: the path is that user's choice (and so unverifiable).
    pub user_mount: bool,
    /// The policy set that applies, when `undecided`.
    pub undecided_set: Option<u32>,
    pub args: Vec<String>,
    pub memfd: bool,
    pub deleted: bool,
    pub args_truncated: bool,
    pub args_missing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Other(u16),
}

impl Protocol {
    pub fn name(&self) -> String {
        match self {
            Self::Tcp => "tcp".into(),
            Self::Udp => "udp".into(),
            Self::Other(n) => format!("ip-{n}"),
        }
    }
}

/// Where an egress record was decided (see `agent_common::connect_hook`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectHook {
    /// connect(2) and every other path to a connect (io_uring, TCP Fast Open, compat).
    Connect,
    /// A datagram sent with an explicit destination (sendto, sendmsg, sendmmsg).
    Sendmsg,
    /// Creation of a socket that no address hook judges (raw, ICMP, SCTP, ...).
    Socket,
}

impl ConnectHook {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Sendmsg => "sendmsg",
            Self::Socket => "socket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    pub ipv4: bool,
    /// The destination as the kernel uses it (an unspecified address is loopback); `None`
    /// for [`ConnectHook::Socket`], which has none yet.
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    pub hook: ConnectHook,
    /// The socket type (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_RAW` 3, ...).
    pub sock_type: u32,
}

/// A socket type's name as `socket(2)` spells it, lower case.
pub fn sock_type_name(t: u32) -> String {
    match t {
        1 => "stream".into(),
        2 => "dgram".into(),
        3 => "raw".into(),
        4 => "rdm".into(),
        5 => "seqpacket".into(),
        n => format!("type-{n}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WxSyscall {
    Mmap,
    Mprotect,
    PkeyMprotect,
    Personality,
    Shmat,
    Ptrace,
    ProcessVmWritev,
    /// `/proc/<pid>/mem` opened for writing (`open`, `openat`, `openat2`).
    ProcMem,
    /// The 32-bit `mmap2`.
    Mmap2,
    /// Memory the kernel's ELF loader mapped for a new image.
    Exec,
    /// Any system call through the 32-bit entry (`compatSyscalls: Deny`).
    Compat,
    /// A userfaultfd created.
    Userfaultfd,
}

impl WxSyscall {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Mmap => "mmap",
            Self::Mprotect => "mprotect",
            Self::PkeyMprotect => "pkey_mprotect",
            Self::Personality => "personality",
            Self::Shmat => "shmat",
            Self::Ptrace => "ptrace",
            Self::ProcessVmWritev => "process_vm_writev",
            Self::ProcMem => "open",
            Self::Mmap2 => "mmap2",
            Self::Exec => "execve",
            Self::Compat => "compat",
            Self::Userfaultfd => "userfaultfd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wx {
    pub syscall: WxSyscall,
    pub prot: u32,
    pub flags: u32,
    pub addr: u64,
    pub len: u64,
    pub fd: i32,
    /// The process runs with `READ_IMPLIES_EXEC`.
    pub read_implies_exec: bool,
    pub write_exec: bool,
    /// An executable mapping of memory another mapping can write (memfd, `/dev/shm`, SysV
    /// shared memory with `SHM_EXEC`).
    pub shared_exec: bool,
    /// A write into another process's memory, or the means to it (`ptrace` attach).
    pub foreign_write: bool,
    /// Requested through the 32-bit system call entry.
    pub compat: bool,
    /// The new image's stack is executable (`syscall` is `Exec`).
    pub exec_stack: bool,
    /// `pkey_mprotect`'s key or `personality`'s persona.
    pub extra: u32,
}

/// A process under a policy moved to a cgroup outside its binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The cgroup holding the binding the moved process is pinned to.
    pub from_cgroup: u64,
    /// Where it was moved.
    pub to_cgroup: u64,
    /// The moved thread's id (the process id for a whole process).
    pub moved_pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Exec(Exec),
    Connect(Connect),
    Wx(Wx),
    Move(Move),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub header: Header,
    pub body: Body,
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() != need {
        return Err(DecodeError::Size {
            kind,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: the length matches and T is a #[repr(C)] plain-old-data record from
    // agent-common, valid for every bit pattern; the read tolerates any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn header(h: &EventHeader) -> Header {
    Header {
        verdict: if h.verdict == agent_common::verdict::VIOLATION {
            Verdict::Violation {
                action: match h.action {
                    agent_common::action::KILL => Action::Kill,
                    agent_common::action::ALERT => Action::Alert,
                    agent_common::action::DENY => Action::Deny,
                    _ => Action::None,
                },
                set: agent_common::rule_id::set(h.rule),
                rule: agent_common::rule_id::index(h.rule),
            }
        } else {
            Verdict::Observed
        },
        boot_ns: h.boot_ns,
        cgroup_id: h.cgroup_id,
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        uid: h.uid,
        gid: h.gid,
        comm: c_string(&h.comm),
        count: h.count.max(1),
        first_ns: h.first_ns,
    }
}

/// Arguments are NUL-separated in the first `len` bytes.
fn split_args(buf: &[u8], len: u32, argc: u32) -> Vec<String> {
    let used = &buf[..(len as usize).min(buf.len())];
    used.split(|&b| b == 0)
        .take(argc as usize)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

fn ip(family: u16, addr: &[u8; 16]) -> IpAddr {
    if family == libc::AF_INET as u16 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        let v6 = Ipv6Addr::from(*addr);
        // A v4-mapped peer of a dual-stack socket is an IPv4 destination.
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let need = size_of::<EventHeader>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    let record_kind = u32::from_ne_bytes(bytes[..4].try_into().expect("four bytes"));
    match record_kind {
        kind::EXEC => {
            let e: ExecEvent = read(bytes, record_kind)?;
            Ok(Event {
                header: header(&e.header),
                body: Body::Exec(Exec {
                    path: c_string(&e.path),
                    exe_path: Some(c_string(&e.exe_path)).filter(|p| {
                        p.starts_with('/') && e.flags & exec_flags::EXE_PATH_TRUNCATED == 0
                    }),
                    exe_name: c_string(&e.exe_name),
                    script: e.flags & exec_flags::SCRIPT != 0,
                    undecided: e.flags & exec_flags::UNDECIDED != 0,
                    unverifiable: e.flags & exec_flags::UNVERIFIABLE != 0,
                    mapped: e.flags & exec_flags::MAPPED != 0,
                    opened: e.flags & exec_flags::OPENED != 0,
                    user_mount: e.flags & exec_flags::USER_MOUNT != 0,
                    undecided_set: (e.flags & exec_flags::UNDECIDED != 0)
                        .then(|| agent_common::rule_id::set(e.header.rule)),
                    args: split_args(&e.args, e.args_len, e.argc),
                    memfd: e.flags & exec_flags::MEMFD != 0,
                    deleted: e.flags & exec_flags::DELETED != 0,
                    args_truncated: e.flags & exec_flags::ARGS_TRUNCATED != 0,
                    args_missing: e.flags & exec_flags::ARGS_MISSING != 0,
                }),
            })
        }
        kind::CONNECT => {
            let c: ConnectEvent = read(bytes, record_kind)?;
            let hook = match c.hook {
                connect_hook::SENDMSG => ConnectHook::Sendmsg,
                connect_hook::SOCKET => ConnectHook::Socket,
                _ => ConnectHook::Connect,
            };
            let daddr = (hook != ConnectHook::Socket).then(|| ip(c.family, &c.daddr));
            Ok(Event {
                header: header(&c.header),
                body: Body::Connect(Connect {
                    protocol: match c.protocol {
                        6 => Protocol::Tcp,
                        17 => Protocol::Udp,
                        n => Protocol::Other(n),
                    },
                    ipv4: daddr.map_or(c.family == libc::AF_INET as u16, |a| a.is_ipv4()),
                    daddr,
                    dport: (hook != ConnectHook::Socket).then_some(c.dport),
                    hook,
                    sock_type: c.sock_type,
                }),
            })
        }
        kind::WX => {
            let w: WxEvent = read(bytes, record_kind)?;
            Ok(Event {
                header: header(&w.header),
                body: Body::Wx(Wx {
                    syscall: match w.syscall {
                        wx_syscall::MMAP => WxSyscall::Mmap,
                        wx_syscall::MPROTECT => WxSyscall::Mprotect,
                        wx_syscall::PKEY_MPROTECT => WxSyscall::PkeyMprotect,
                        wx_syscall::SHMAT => WxSyscall::Shmat,
                        wx_syscall::PTRACE => WxSyscall::Ptrace,
                        wx_syscall::PROCESS_VM_WRITEV => WxSyscall::ProcessVmWritev,
                        wx_syscall::PROC_MEM => WxSyscall::ProcMem,
                        wx_syscall::MMAP2 => WxSyscall::Mmap2,
                        wx_syscall::EXEC => WxSyscall::Exec,
                        wx_syscall::COMPAT => WxSyscall::Compat,
                        wx_syscall::USERFAULTFD => WxSyscall::Userfaultfd,
                        _ => WxSyscall::Personality,
                    },
                    prot: w.prot,
                    flags: w.flags,
                    addr: w.addr,
                    len: w.len,
                    fd: w.fd,
                    read_implies_exec: w.reason & wx_reason::READ_IMPLIES_EXEC != 0,
                    write_exec: w.reason & wx_reason::WRITE_EXEC != 0,
                    shared_exec: w.reason & wx_reason::SHARED_EXEC != 0,
                    foreign_write: w.reason & wx_reason::FOREIGN_WRITE != 0,
                    compat: w.reason & wx_reason::COMPAT != 0,
                    exec_stack: w.reason & wx_reason::EXEC_STACK != 0,
                    extra: w.extra,
                }),
            })
        }
        kind::MOVE => {
            let m: MoveEvent = read(bytes, record_kind)?;
            Ok(Event {
                header: header(&m.header),
                body: Body::Move(Move {
                    from_cgroup: m.from_cgroup,
                    to_cgroup: m.to_cgroup,
                    moved_pid: m.moved_pid,
                }),
            })
        }
        other => Err(DecodeError::Kind(other)),
    }
}

/// `rwx`-style text for a protection mask.
pub fn prot_text(prot: u32) -> String {
    let flag = |bit: u32, c: char| if prot & bit != 0 { c } else { '-' };
    [flag(1, 'r'), flag(2, 'w'), flag(4, 'x')].iter().collect()
}

#[cfg(test)]
mod tests {
    use agent_common::{ARGS_LEN, NAME_LEN, PATH_LEN};

    use super::*;

    fn as_bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: test records are plain-old-data.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn head(kind: u32) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        EventHeader {
            kind,
            boot_ns: 7,
            cgroup_id: 42,
            pid: 100,
            tid: 101,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            comm,
            ..Default::default()
        }
    }

    #[test]
    fn record_sizes_match_the_kernel_side() {
        assert_eq!(size_of::<EventHeader>(), 80);
        assert_eq!(size_of::<ExecEvent>(), 1440);
        assert_eq!(size_of::<ConnectEvent>(), 128);
        assert_eq!(size_of::<WxEvent>(), 120);
        assert_eq!(size_of::<agent_common::Config>(), 248);
        assert_eq!(size_of::<agent_common::PolicySet>(), 32);
        assert_eq!(size_of::<agent_common::PortRules>(), 136);
        assert_eq!(size_of::<agent_common::ExePath>(), 264);
        assert_eq!(size_of::<agent_common::ExecArgs>(), 784);
    }

    #[test]
    fn decodes_exec_with_args_and_flags() {
        let mut e = ExecEvent {
            header: head(kind::EXEC),
            flags: exec_flags::MEMFD,
            old_tid: 101,
            argc: 3,
            args_len: 0,
            path: [0; PATH_LEN],
            exe_path: [0; PATH_LEN],
            exe_name: [0; NAME_LEN],
            args: [0; ARGS_LEN],
        };
        e.path[..9].copy_from_slice(b"/dev/fd/3");
        e.exe_name[..11].copy_from_slice(b"memfd:x (1)");
        let args = b"sh\0-c\0echo hi\0";
        e.args[..args.len()].copy_from_slice(args);
        e.args_len = args.len() as u32;
        let ev = decode(&as_bytes(&e)).unwrap();
        assert_eq!(ev.header.comm, "curl");
        assert_eq!(ev.header.cgroup_id, 42);
        let Body::Exec(x) = ev.body else {
            panic!("not exec")
        };
        assert_eq!(x.path, "/dev/fd/3");
        assert_eq!(x.args, vec!["sh", "-c", "echo hi"]);
        assert!(x.memfd && !x.deleted && !x.args_missing);
    }

    #[test]
    fn decodes_connect_v4_v6_mapped_and_sockets() {
        let mut c = ConnectEvent {
            header: head(kind::CONNECT),
            family: 2,
            protocol: 6,
            dport: 443,
            hook: connect_hook::CONNECT,
            sock_type: 1,
            ..Default::default()
        };
        c.daddr[..4].copy_from_slice(&[127, 0, 0, 9]);
        let Body::Connect(x) = decode(&as_bytes(&c)).unwrap().body else {
            panic!()
        };
        assert_eq!(x.daddr, Some("127.0.0.9".parse::<IpAddr>().unwrap()));
        assert_eq!(
            (x.dport, x.protocol, x.hook, x.ipv4),
            (Some(443), Protocol::Tcp, ConnectHook::Connect, true)
        );

        c.family = 10;
        c.daddr = "::ffff:127.0.0.2".parse::<Ipv6Addr>().unwrap().octets();
        let Body::Connect(x) = decode(&as_bytes(&c)).unwrap().body else {
            panic!()
        };
        assert_eq!(x.daddr, Some("127.0.0.2".parse::<IpAddr>().unwrap()));
        assert!(x.ipv4);

        c.daddr = Ipv6Addr::LOCALHOST.octets();
        c.protocol = 17;
        c.hook = connect_hook::SENDMSG;
        let Body::Connect(x) = decode(&as_bytes(&c)).unwrap().body else {
            panic!()
        };
        assert_eq!(
            (x.daddr, x.protocol, x.hook, x.ipv4),
            (
                Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                Protocol::Udp,
                ConnectHook::Sendmsg,
                false
            )
        );

        c.hook = connect_hook::SOCKET;
        c.protocol = 1;
        c.sock_type = 3;
        let Body::Connect(x) = decode(&as_bytes(&c)).unwrap().body else {
            panic!()
        };
        assert_eq!(
            (
                x.daddr,
                x.dport,
                x.protocol,
                x.ipv4,
                sock_type_name(x.sock_type)
            ),
            (None, None, Protocol::Other(1), false, "raw".to_string())
        );
    }

    #[test]
    fn refuses_short_wrong_size_and_unknown_records() {
        assert!(matches!(decode(&[0; 10]), Err(DecodeError::Short { .. })));
        let w = WxEvent {
            header: head(kind::WX),
            ..Default::default()
        };
        let mut bytes = as_bytes(&w);
        bytes.pop();
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Size { kind: 3, .. })
        ));
        let other = WxEvent {
            header: head(99),
            ..Default::default()
        };
        assert_eq!(decode(&as_bytes(&other)), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn prot_text_reads_like_proc_maps() {
        assert_eq!(prot_text(7), "rwx");
        assert_eq!(prot_text(3), "rw-");
    }
}
