//! Typed events decoded from the kernel's records: the header every record shares, and the
//! dispatch to each behaviour's own decoding (`crate::behaviour`).
use agent_common::{ConnectEvent, EventHeader, ExecEvent, MoveEvent, WxRecord, kind};

mod inline;
pub use inline::{Comm, EventId};

pub use crate::behaviour::{
    cgroup_move::Move,
    connect::{Connect, ConnectHook, Protocol, sock_type_name},
    exec::Exec,
    wx::{Wx, WxSyscall, prot_text},
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
    /// Allowed under policy set `set`, which learns: reported for the learn tables of its
    /// `Learn` policies, never for the sinks.
    Learned {
        set: u32,
    },
    /// A policy was violated; `action` is what the kernel did (`Kill`) or asks for (`Alert`).
    Violation {
        action: Action,
        set: u32,
        rule: u32,
    },
}

/// Extension `vigilaction`: what Vigil did about it: `none`, `alert` (reported only), `deny`
/// (the act was refused with EPERM before it happened; the process lives), `kill` (the
/// process was killed; for connects, the act was also refused).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
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
    pub comm: Comm,
    /// Identical violations this record stands for (more than 1 after a flood was held back
    /// in the kernel), and the `boot_ns` of the first of them.
    pub count: u32,
    pub first_ns: u64,
    /// The last record of its violation the kernel's flood throttle let out in its window
    /// (`throttle_flags::ENDS_BURST`): the one to keep for a count held back after it.
    pub ends_burst: bool,
    /// What the kernel's flood throttle keys the violation's target by (a connect's folded
    /// destination, a move's cgroup; 0 for the rest), so that user space can name the
    /// throttle's entry for this record.
    pub target: u64,
}

impl Header {
    /// A header for process `pid` named `comm` with `verdict`: its thread is itself, its parent
    /// pid 1, the count one, the rest zero. For tools and tests that build events.
    pub fn new(verdict: Verdict, pid: u32, comm: &str) -> Self {
        Self {
            verdict,
            boot_ns: 0,
            cgroup_id: 0,
            pid,
            tid: pid,
            ppid: 1,
            uid: 0,
            gid: 0,
            comm: comm.into(),
            count: 1,
            first_ns: 0,
            ends_burst: false,
            target: 0,
        }
    }
}

/// The header the unit tests' violations share: pid 42 in cgroup 9, set 1 rule 0.
#[cfg(test)]
pub(crate) fn test_violation(action: Action, comm: &str) -> Header {
    Header {
        cgroup_id: 9,
        ..Header::new(
            Verdict::Violation {
                action,
                set: 1,
                rule: 0,
            },
            42,
            comm,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Exec(Exec),
    Connect(Connect),
    Wx(Wx),
    Move(Move),
}

impl Body {
    /// The policy section that decides this behaviour (`spec.<section>`).
    pub fn section(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Connect(_) => "connect",
            Self::Wx(_) => "memory",
            Self::Move(_) => "cgroup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub header: Header,
    pub body: Body,
}

pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    text(&bytes[..end])
}

/// Bytes as text: valid UTF-8 as it is, every invalid byte written out as `\xNN`, so that a
/// name that is not UTF-8 is shown by value, not replaced or dropped. (A name spelling `\xNN`
/// literally reads the same; decisions on bytes are the kernel's: docs/threat-model.md.)
pub fn text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
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
        } else if h.verdict == agent_common::verdict::LEARNED {
            Verdict::Learned {
                set: agent_common::rule_id::set(h.rule),
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
        comm: Comm::from_kernel(&h.comm),
        count: h.count.max(1),
        first_ns: h.first_ns,
        ends_burst: h.throttle & agent_common::throttle_flags::ENDS_BURST != 0,
        target: 0,
    }
}

/// Arguments are NUL-separated in the first `len` bytes.
pub(crate) fn split_args(buf: &[u8], len: u32, argc: u32) -> Vec<String> {
    let used = &buf[..(len as usize).min(buf.len())];
    if argc == agent_common::ARGC_ALL {
        // Every string is one; the last NUL ends the last one rather than starting another.
        if used.is_empty() {
            return Vec::new();
        }
        let used = used.strip_suffix(&[0]).unwrap_or(used);
        return used.split(|&b| b == 0).map(text).collect();
    }
    used.split(|&b| b == 0)
        .take(argc as usize)
        .map(text)
        .collect()
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
                body: Body::Exec(Exec::decode(&e)),
            })
        }
        kind::CONNECT => {
            let c: ConnectEvent = read(bytes, record_kind)?;
            Ok(Event {
                header: Header {
                    target: agent_common::connect_target(c.dport, &c.daddr),
                    ..header(&c.header)
                },
                body: Body::Connect(Connect::decode(&c)),
            })
        }
        kind::WX => {
            let w: WxRecord = read(bytes, record_kind)?;
            let mut wx = Wx::decode(&w.event);
            wx.exe_path = (w.exe_len > 0)
                .then(|| c_string(&w.exe[..(w.exe_len as usize).min(agent_common::PATH_LEN)]));
            Ok(Event {
                header: header(&w.event.header),
                body: Body::Wx(wx),
            })
        }
        kind::MOVE => {
            let m: MoveEvent = read(bytes, record_kind)?;
            Ok(Event {
                header: Header {
                    target: m.to_cgroup,
                    ..header(&m.header)
                },
                body: Body::Move(Move::decode(&m)),
            })
        }
        other => Err(DecodeError::Kind(other)),
    }
}

impl Event {
    /// The throttle key to keep this record under for a count the kernel holds back after
    /// it: only the last record of a window's burst is kept (`pipeline::carry`).
    pub fn carry_key(&self) -> Option<agent_common::ThrottleKey> {
        self.header
            .ends_burst
            .then(|| self.throttle_key())
            .flatten()
    }

    /// The kernel flood throttle's key of this record; `None` for an observation, which the
    /// throttle never holds back.
    pub fn throttle_key(&self) -> Option<agent_common::ThrottleKey> {
        let Verdict::Violation { set, rule, .. } = self.header.verdict else {
            return None;
        };
        Some(agent_common::ThrottleKey {
            cgroup_id: self.header.cgroup_id,
            target: self.header.target,
            rule: agent_common::rule_id::pack(set, rule),
            kind: match self.body {
                Body::Exec(_) => kind::EXEC,
                Body::Connect(_) => kind::CONNECT,
                Body::Wx(_) => kind::WX,
                Body::Move(_) => kind::MOVE,
            },
            pid: self.header.pid,
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use agent_common::{ARGS_LEN, NAME_LEN, PATH_LEN, WxEvent, connect_hook, exec_flags};

    use super::*;

    fn as_bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: test records are plain-old-data.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn the_new_images_arguments_are_every_string_empty_ones_and_a_cut_one_included() {
        let all = agent_common::ARGC_ALL;
        let buf = b"/bin/sh\0-c\0\0echo hi\0";
        assert_eq!(
            split_args(buf, buf.len() as u32, all),
            ["/bin/sh", "-c", "", "echo hi"]
        );
        // Cut short at the buffer's end: the last one is what fitted.
        assert_eq!(split_args(buf, 9, all), ["/bin/sh", "-"]);
        assert!(split_args(buf, 0, all).is_empty());
        // An exec with no arguments at all: kernels from 5.18 give it one empty argument.
        assert_eq!(split_args(b"\0", 1, all), [""]);
        // Counted arguments (captured at syscall entry) stop at their count.
        assert_eq!(split_args(buf, buf.len() as u32, 2), ["/bin/sh", "-c"]);
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
        assert_eq!(size_of::<ExecEvent>(), 1464);
        assert_eq!(size_of::<ConnectEvent>(), 128);
        assert_eq!(size_of::<WxEvent>(), 120);
        assert_eq!(size_of::<WxRecord>(), 384);
        assert_eq!(size_of::<agent_common::Config>(), 360);
        assert_eq!(size_of::<agent_common::PolicySet>(), 40);
        assert_eq!(size_of::<agent_common::PortRules>(), 136);
        assert_eq!(size_of::<agent_common::ExePath>(), 272);
        assert_eq!(size_of::<agent_common::ExecArgs>(), 784);
    }

    /// The kernel's cached W^X exemption matches only its own process and set stamp.
    #[test]
    fn an_exemption_word_names_its_process_stamp_and_answer() {
        use agent_common::{STAMP_MAX, exempt_word};
        let word = exempt_word(4242, 7, true);
        assert_eq!(word >> 32, 4242);
        assert_eq!((word >> 1) & u64::from(STAMP_MAX), 7);
        assert_eq!(word & 1, 1);
        assert_ne!(word & !1, exempt_word(4243, 7, false));
        assert_ne!(word & !1, exempt_word(4242, 8, false));
        assert_eq!(word & !1, exempt_word(4242, 7, false));
        // The largest stamp keeps to its bits.
        assert_eq!(exempt_word(0, STAMP_MAX, false) >> 32, 0);
        assert_ne!(exempt_word(1, STAMP_MAX, false), 0);
    }

    #[test]
    fn decodes_exec_with_args_and_flags() {
        let mut e = ExecEvent {
            header: head(kind::EXEC),
            flags: exec_flags::MEMFD,
            old_tid: 101,
            argc: 3,
            origin: agent_common::FileOrigin::default(),
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
        assert_eq!(*x.args, ["sh", "-c", "echo hi"]);
        assert!(x.memfd && !x.deleted && !x.args_missing);
    }

    #[test]
    fn a_violation_names_the_kernel_throttle_entry_it_came_from() {
        let mut c = ConnectEvent {
            header: EventHeader {
                verdict: agent_common::verdict::VIOLATION,
                action: agent_common::action::ALERT,
                rule: agent_common::rule_id::pack(3, agent_common::rule_id::NOT_ALLOWED),
                ..head(kind::CONNECT)
            },
            family: 2,
            protocol: 17,
            dport: 1023,
            hook: connect_hook::SENDMSG,
            sock_type: 2,
            ..Default::default()
        };
        c.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let key = decode(&as_bytes(&c))
            .unwrap()
            .throttle_key()
            .expect("a violation");
        assert_eq!(
            key,
            agent_common::ThrottleKey {
                cgroup_id: 42,
                target: agent_common::connect_target(1023, &c.daddr),
                rule: c.header.rule,
                kind: kind::CONNECT,
                pid: 100,
                _pad: 0,
            }
        );
        // Kept for a held-back count only when it ended its window's burst.
        assert_eq!(decode(&as_bytes(&c)).unwrap().carry_key(), None);
        c.header.throttle = agent_common::throttle_flags::ENDS_BURST;
        assert_eq!(decode(&as_bytes(&c)).unwrap().carry_key(), Some(key));
        // Another destination is another entry; an observation has none.
        c.dport = 1024;
        assert_ne!(decode(&as_bytes(&c)).unwrap().throttle_key(), Some(key));
        c.header.verdict = agent_common::verdict::OBSERVED;
        assert_eq!(decode(&as_bytes(&c)).unwrap().throttle_key(), None);
        assert_eq!(decode(&as_bytes(&c)).unwrap().carry_key(), None);
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
            (None, None, Protocol::Other(1), false, "raw".into())
        );
    }

    #[test]
    fn refuses_short_wrong_size_and_unknown_records() {
        assert!(matches!(decode(&[0; 10]), Err(DecodeError::Short { .. })));
        let w = WxRecord {
            event: WxEvent {
                header: head(kind::WX),
                ..Default::default()
            },
            exe_len: 0,
            _pad: 0,
            exe: [0; agent_common::PATH_LEN],
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
    fn bytes_that_are_not_utf8_are_shown_by_value() {
        assert_eq!(text(b"/tmp/\xff\xfeok"), "/tmp/\\xff\\xfeok");
        assert_eq!(text("/tmp/caf\u{e9}".as_bytes()), "/tmp/caf\u{e9}");
        assert_eq!(c_string(b"/a\xc3\0junk"), "/a\\xc3");
    }

    #[test]
    fn prot_text_reads_like_proc_maps() {
        assert_eq!(prot_text(7), "rwx");
        assert_eq!(prot_text(3), "rw-");
    }
}
