//! `send METHOD ADDR`: one outgoing act by one of the kernel's many paths, for the egress
//! tests. Prints `result=ok` when the kernel let it through and `result=errno:N` when the
//! call failed with errno N; exits 0 either way (the test decides which was expected).
//! Exits 77 when this kernel lacks the path (the test says so and skips it).
use std::{
    mem::size_of,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::{Failure, Outcome};

/// Bytes every datagram and Fast Open SYN carries, so a receiver can tell them apart.
pub const PAYLOAD: &[u8] = b"vigil-egress";

fn addr(s: &str) -> Result<SocketAddr, Failure> {
    s.parse()
        .map_err(|_| Failure::Error(format!("not a socket address: {s}")))
}

fn family(a: &SocketAddr) -> i32 {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// A `sockaddr_storage` for `addr`, and its length (shared with the connect scenarios).
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn socket(family: i32, ty: i32, protocol: i32) -> Result<OwnedFd, Failure> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::ESOCKTNOSUPPORT) => Err(
                Failure::Unsupported(format!("socket({family}, {ty}, {protocol}): {err}")),
            ),
            Some(errno) => Err(Failure::Refused(errno)),
            None => Err(Failure::Error(err.to_string())),
        };
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The outcome of a syscall's return value: `Refused(errno)` for -1.
fn checked(rc: isize) -> Outcome {
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        return Err(err
            .raw_os_error()
            .map_or_else(|| Failure::Error(err.to_string()), Failure::Refused));
    }
    Ok(())
}

pub fn send(method: &str, target: &str) -> Outcome {
    let target = addr(target)?;
    let result = match method {
        "tcp-connect" => connect(target, libc::SOCK_STREAM, 0),
        "udp-connect" => connect(target, libc::SOCK_DGRAM, 0),
        "tcp-fastopen" => fastopen(target),
        "udp-sendto" => sendto(target, libc::IPPROTO_UDP),
        "udplite-sendto" => sendto(target, libc::IPPROTO_UDPLITE),
        "udp-sendmsg" => sendmsg(target),
        "udp-sendmmsg" => sendmmsg(target),
        "tcp-connect-unfaulted" => unfaulted(target, libc::SOCK_STREAM),
        "udp-sendto-unfaulted" => unfaulted(target, libc::SOCK_DGRAM),
        "uring-tcp-connect" => uring_connect(target, libc::SOCK_STREAM),
        "uring-udp-connect" => uring_connect(target, libc::SOCK_DGRAM),
        "uring-udp-sendmsg" => uring_sendmsg(target),
        "compat-udp-connect" => compat::udp_connect(target),
        "raw-socket" => socket(family(&target), libc::SOCK_RAW, libc::IPPROTO_ICMP).map(drop),
        _ => return Err(Failure::Error(format!("unknown method {method}"))),
    };
    match result {
        Ok(()) => println!("result=ok"),
        Err(Failure::Refused(errno)) => println!("result=errno:{errno}"),
        Err(other) => return Err(other),
    }
    Ok(())
}

fn connect(target: SocketAddr, ty: i32, protocol: i32) -> Outcome {
    let fd = socket(family(&target), ty, protocol)?;
    let (sa, len) = sockaddr(target);
    // SAFETY: a valid sockaddr of `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    checked(rc as isize)?;
    if ty == libc::SOCK_DGRAM {
        // SAFETY: a valid buffer.
        let rc = unsafe { libc::send(fd.as_raw_fd(), PAYLOAD.as_ptr().cast(), PAYLOAD.len(), 0) };
        checked(rc)?;
    }
    Ok(())
}

/// TCP Fast Open: the SYN itself carries data, sent by `sendto` without a `connect`.
fn fastopen(target: SocketAddr) -> Outcome {
    let fd = socket(family(&target), libc::SOCK_STREAM, 0)?;
    let (sa, len) = sockaddr(target);
    // SAFETY: valid buffers.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            PAYLOAD.as_ptr().cast(),
            PAYLOAD.len(),
            libc::MSG_FASTOPEN,
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    checked(rc)
}

fn sendto(target: SocketAddr, protocol: i32) -> Outcome {
    let fd = socket(family(&target), libc::SOCK_DGRAM, protocol)?;
    let (sa, len) = sockaddr(target);
    // SAFETY: valid buffers.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            PAYLOAD.as_ptr().cast(),
            PAYLOAD.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    checked(rc)
}

/// A `msghdr` naming `sa` and carrying [`PAYLOAD`]; `iov` must outlive its use.
fn msghdr(
    sa: &mut libc::sockaddr_storage,
    len: libc::socklen_t,
    iov: &mut libc::iovec,
) -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (sa as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg
}

fn payload_iov() -> libc::iovec {
    libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD.len(),
    }
}

fn sendmsg(target: SocketAddr) -> Outcome {
    let fd = socket(family(&target), libc::SOCK_DGRAM, 0)?;
    let (mut sa, len) = sockaddr(target);
    let mut iov = payload_iov();
    let msg = msghdr(&mut sa, len, &mut iov);
    // SAFETY: msg points at live buffers.
    checked(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) })
}

fn sendmmsg(target: SocketAddr) -> Outcome {
    let fd = socket(family(&target), libc::SOCK_DGRAM, 0)?;
    let (mut sa, len) = sockaddr(target);
    let mut iov = payload_iov();
    let mut msgs = [libc::mmsghdr {
        msg_hdr: msghdr(&mut sa, len, &mut iov),
        msg_len: 0,
    }];
    // SAFETY: msgs points at live buffers.
    let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), 1, 0) };
    checked(rc as isize)?;
    if rc == 0 {
        return Err(Failure::Error("sendmmsg sent nothing".into()));
    }
    Ok(())
}

/// The sockaddr lives on a file-backed page this process never touched, so a probe that
/// reads it from user memory at syscall entry finds the page not faulted in.
fn unfaulted(target: SocketAddr, ty: i32) -> Outcome {
    let (sa, len) = sockaddr(target);
    let file = tempfile_with(&sa)?;
    // SAFETY: a fresh read-only private mapping of our own file.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(Failure::Error(format!(
            "mmap: {}",
            std::io::Error::last_os_error()
        )));
    }
    let fd = socket(family(&target), ty, 0)?;
    // SAFETY: the mapping holds `len` bytes of sockaddr; never dereferenced here.
    let rc = unsafe {
        if ty == libc::SOCK_STREAM {
            libc::connect(fd.as_raw_fd(), page as *const libc::sockaddr, len) as isize
        } else {
            libc::sendto(
                fd.as_raw_fd(),
                PAYLOAD.as_ptr().cast(),
                PAYLOAD.len(),
                0,
                page as *const libc::sockaddr,
                len,
            )
        }
    };
    // SAFETY: our own mapping.
    unsafe { libc::munmap(page, 4096) };
    checked(rc)
}

fn tempfile_with(sa: &libc::sockaddr_storage) -> Result<std::fs::File, Failure> {
    use std::io::Write as _;
    let path = std::env::temp_dir().join(format!("vigil-sockaddr-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    // SAFETY: sockaddr_storage is plain bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (sa as *const libc::sockaddr_storage).cast::<u8>(),
            size_of::<libc::sockaddr_storage>(),
        )
    };
    file.write_all(bytes)?;
    file.write_all(&[0u8; 4096 - size_of::<libc::sockaddr_storage>()])?;
    // Drop the page cache's copy from this process's view: the mapping faults on access.
    file.sync_all()?;
    Ok(file)
}

fn ring() -> Result<io_uring::IoUring, Failure> {
    io_uring::IoUring::new(4).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS | libc::EPERM) => {
            Failure::Unsupported(format!("io_uring_setup: {e} (kernel.io_uring_disabled?)"))
        }
        _ => e.into(),
    })
}

/// Submits one operation and returns its result (a negative errno on failure).
fn submit(ring: &mut io_uring::IoUring, op: io_uring::squeue::Entry) -> Outcome {
    // SAFETY: the caller keeps every buffer the operation points at alive until this returns,
    // and it returns only after the completion.
    unsafe { ring.submission().push(&op) }.map_err(|e| Failure::Error(e.to_string()))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| Failure::Error("no completion".into()))?;
    match cqe.result() {
        r if r >= 0 => Ok(()),
        r if r == -libc::EINVAL || r == -libc::EOPNOTSUPP => Err(Failure::Unsupported(format!(
            "io_uring opcode: {}",
            std::io::Error::from_raw_os_error(-r)
        ))),
        r => Err(Failure::Refused(-r)),
    }
}

fn uring_connect(target: SocketAddr, ty: i32) -> Outcome {
    let mut ring = ring()?;
    let fd = socket(family(&target), ty, 0)?;
    let (sa, len) = sockaddr(target);
    let op = io_uring::opcode::Connect::new(
        io_uring::types::Fd(fd.as_raw_fd()),
        &sa as *const _ as *const libc::sockaddr,
        len,
    )
    .build();
    submit(&mut ring, op)?;
    if ty == libc::SOCK_DGRAM {
        let op = io_uring::opcode::Send::new(
            io_uring::types::Fd(fd.as_raw_fd()),
            PAYLOAD.as_ptr(),
            PAYLOAD.len() as u32,
        )
        .build();
        submit(&mut ring, op)?;
    }
    Ok(())
}

fn uring_sendmsg(target: SocketAddr) -> Outcome {
    let mut ring = ring()?;
    let fd = socket(family(&target), libc::SOCK_DGRAM, 0)?;
    let (mut sa, len) = sockaddr(target);
    let mut iov = payload_iov();
    let msg = msghdr(&mut sa, len, &mut iov);
    let op = io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd.as_raw_fd()), &msg).build();
    submit(&mut ring, op)
}

/// The 32-bit system call entry (`int 0x80`), which a 64-bit process can use too: other
/// syscall numbers, other argument registers, pointers below 4 GiB.
mod compat {
    use std::net::SocketAddr;

    use super::{Failure, Outcome, PAYLOAD, checked, sockaddr};

    const NR_SOCKET: u32 = 359;
    const NR_CONNECT: u32 = 362;
    const NR_WRITE: u32 = 4;
    const NR_CLOSE: u32 = 6;

    /// `int 0x80` with up to three arguments; the kernel's return value.
    fn int80(nr: u32, a: u32, b: u32, c: u32) -> i32 {
        let ret: u32;
        // SAFETY: a system call through the 32-bit entry; ebx is reserved by the compiler,
        // so the first argument is swapped in and out around the call.
        unsafe {
            core::arch::asm!(
                "xchg rbx, {a}",
                "int 0x80",
                "xchg rbx, {a}",
                a = inout(reg) u64::from(a) => _,
                inlateout("eax") nr => ret,
                in("ecx") b,
                in("edx") c,
                options(nostack),
            );
        }
        ret as i32
    }

    fn result(rc: i32) -> Outcome {
        if rc < 0 {
            if rc == -libc::ENOSYS {
                return Err(Failure::Unsupported(
                    "the 32-bit syscall entry is disabled (ia32_emulation=0?)".into(),
                ));
            }
            return Err(Failure::Refused(-rc));
        }
        Ok(())
    }

    pub fn udp_connect(target: SocketAddr) -> Outcome {
        let SocketAddr::V4(_) = target else {
            return Err(Failure::Error(
                "compat-udp-connect takes an IPv4 address".into(),
            ));
        };
        // Memory the 32-bit entry can address.
        // SAFETY: a fresh anonymous mapping.
        let low = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        checked(if low == libc::MAP_FAILED { -1 } else { 0 })?;
        let (sa, len) = sockaddr(target);
        // SAFETY: the mapping is 4096 writable bytes; the sockaddr and payload fit.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &sa as *const _ as *const u8,
                low.cast::<u8>(),
                len as usize,
            );
            std::ptr::copy_nonoverlapping(
                PAYLOAD.as_ptr(),
                low.cast::<u8>().add(256),
                PAYLOAD.len(),
            );
        }
        let base = low as u64 as u32;
        let fd = int80(NR_SOCKET, libc::AF_INET as u32, libc::SOCK_DGRAM as u32, 0);
        result(fd)?;
        let outcome = result(int80(NR_CONNECT, fd as u32, base, len))
            .and_then(|()| result(int80(NR_WRITE, fd as u32, base + 256, PAYLOAD.len() as u32)));
        int80(NR_CLOSE, fd as u32, 0, 0);
        // SAFETY: our own mapping.
        unsafe { libc::munmap(low, 4096) };
        outcome
    }
}
