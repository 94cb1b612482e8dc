//! Outgoing connections, by every path the kernel offers.
use std::{
    mem::size_of,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
};

use crate::{Failure, Outcome, egress::sockaddr, os_error, parse_count};

fn addr(s: &str) -> Result<SocketAddr, Failure> {
    s.parse()
        .map_err(|_| Failure::Error(format!("not a socket address: {s}")))
}

pub fn tcp(target: &str) -> Outcome {
    let stream = TcpStream::connect(addr(target)?)?;
    println!(
        "peer={} local={}",
        stream.peer_addr()?,
        stream.local_addr()?
    );
    Ok(())
}

/// Accepts and drops connections on `addr` until killed; prints `listening` once bound.
pub fn listen(addr_text: &str) -> Outcome {
    let listener = std::net::TcpListener::bind(addr(addr_text)?)?;
    println!("listening");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        drop(stream);
    }
    Ok(())
}

pub fn udp(target: &str) -> Outcome {
    let target = addr(target)?;
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .map_err(|_| Failure::Error("bind address".into()))?;
    let socket = UdpSocket::bind(bind)?;
    socket.connect(target)?;
    println!(
        "peer={} local={}",
        socket.peer_addr()?,
        socket.local_addr()?
    );
    Ok(())
}

fn tcp_socket(family: i32) -> Result<i32, Failure> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        Err(os_error("socket"))
    } else {
        Ok(fd)
    }
}

fn peer_of(fd: i32) -> Result<SocketAddr, Failure> {
    // SAFETY: the fd is a connected socket we own; ManuallyDrop leaves closing to the caller.
    let stream = std::mem::ManuallyDrop::new(unsafe {
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    Ok(stream.peer_addr()?)
}

/// connect(2) submitted through io_uring instead of the connect syscall.
pub fn io_uring(target: &str) -> Outcome {
    let target = addr(target)?;
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(ring) => ring,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            return Err(Failure::Unsupported(format!(
                "io_uring_setup: {e} (kernel.io_uring_disabled?)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let fd = tcp_socket(if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    })?;
    let (storage, len) = sockaddr(target);
    let op = io_uring::opcode::Connect::new(
        io_uring::types::Fd(fd),
        &storage as *const _ as *const libc::sockaddr,
        len,
    )
    .build()
    .user_data(1);
    // SAFETY: `storage` outlives the submission, which completes before it is dropped.
    unsafe { ring.submission().push(&op) }.map_err(|e| Failure::Error(e.to_string()))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| Failure::Error("no completion".into()))?;
    if cqe.result() == -libc::EINVAL || cqe.result() == -libc::EOPNOTSUPP {
        return Err(Failure::Unsupported(format!(
            "IORING_OP_CONNECT: {}",
            std::io::Error::from_raw_os_error(-cqe.result())
        )));
    }
    if cqe.result() < 0 {
        return Err(Failure::Error(format!(
            "io_uring connect: {}",
            std::io::Error::from_raw_os_error(-cqe.result())
        )));
    }
    println!("peer={}", peer_of(fd)?);
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Connects `count` times to `a` while another thread keeps rewriting the destination in
/// the caller's sockaddr between `a` and `b`: whichever the kernel copied is where the
/// connection went. Prints the peer of each connection, in order.
pub fn race(a: &str, b: &str, count: &str) -> Outcome {
    let (a, b, count) = (addr(a)?, addr(b)?, parse_count(count)?);
    let (SocketAddr::V4(_), SocketAddr::V4(_)) = (a, b) else {
        return Err(Failure::Error(
            "race-connect takes two IPv4 addresses".into(),
        ));
    };
    let (sa, len) = sockaddr(a);
    let (sb, _) = sockaddr(b);
    // The sockaddr lives in atomics so the racing writes are well-defined on our side.
    let words = |s: &libc::sockaddr_storage| {
        // SAFETY: sockaddr_storage is at least 16 bytes.
        let bytes: [u8; 16] = unsafe { std::ptr::read(s as *const _ as *const [u8; 16]) };
        [0, 4, 8, 12].map(|i| u32::from_ne_bytes(bytes[i..i + 4].try_into().expect("4 bytes")))
    };
    let (wa, wb) = (words(&sa), words(&sb));
    let shared: Arc<[AtomicU32; 4]> = Arc::new(wa.map(AtomicU32::new));
    let stop = Arc::new(AtomicBool::new(false));
    // One flipper for all rounds, running on the other core while we connect.
    let flipper = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flip = false;
            while !stop.load(Ordering::Relaxed) {
                // Word 0 holds the family and the port.
                shared[0].store(if flip { wa[0] } else { wb[0] }, Ordering::Relaxed);
                flip = !flip;
            }
        })
    };
    let mut result = Ok(());
    for _ in 0..count {
        let fd = tcp_socket(libc::AF_INET)?;
        // SAFETY: the pointer covers 16 valid bytes for the duration of the call.
        let rc = unsafe { libc::connect(fd, shared.as_ptr() as *const libc::sockaddr, len) };
        if rc != 0 {
            result = Err(os_error("connect"));
            break;
        }
        println!("peer={}", peer_of(fd)?);
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }
    stop.store(true, Ordering::Relaxed);
    flipper
        .join()
        .map_err(|_| Failure::Error("flipper thread panicked".into()))?;
    result
}

/// Closes a TCP socket with a reset, so that benchmark loops leave no TIME_WAIT behind.
pub fn close_with_reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and option buffer.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}
