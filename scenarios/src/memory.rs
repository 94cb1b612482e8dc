//! Mappings that are writable and executable at once, and one that is benign.
use std::os::fd::AsRawFd;

use crate::{Failure, Outcome, os_error, parse_count};

const PAGE: usize = 4096;

fn map(prot: i32, flags: i32, fd: i32) -> Result<*mut libc::c_void, Failure> {
    // SAFETY: a fresh mapping chosen by the kernel.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), PAGE, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        Err(os_error("mmap"))
    } else {
        Ok(p)
    }
}

fn anon(prot: i32) -> Result<*mut libc::c_void, Failure> {
    map(prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
}

fn unmap(p: *mut libc::c_void) {
    // SAFETY: p is a mapping of PAGE bytes made by this module.
    unsafe { libc::munmap(p, PAGE) };
}

pub fn mmap_rwx() -> Outcome {
    let p = anon(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC)?;
    println!("addr={p:p}");
    unmap(p);
    Ok(())
}

pub fn mprotect_rwx() -> Outcome {
    let p = anon(libc::PROT_READ | libc::PROT_WRITE)?;
    // SAFETY: p is our mapping.
    if unsafe {
        libc::mprotect(
            p,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        )
    } != 0
    {
        return Err(os_error("mprotect"));
    }
    println!("addr={p:p}");
    unmap(p);
    Ok(())
}

/// Asks for RW to become RWX and says what came of it: `mprotect=ok` or the error, then the
/// area's protection as `/proc/self/maps` shows it, after a write into it (a mapping left as
/// it was is still writable).
pub fn mprotect_rwx_outcome() -> Outcome {
    let p = anon(libc::PROT_READ | libc::PROT_WRITE)?;
    // SAFETY: p is our writable mapping of PAGE bytes.
    unsafe { p.cast::<u8>().write_volatile(0xc3) };
    // SAFETY: p is our mapping.
    let rc = unsafe {
        libc::mprotect(
            p,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        )
    };
    let outcome = if rc == 0 {
        "ok".to_owned()
    } else {
        std::io::Error::last_os_error()
            .raw_os_error()
            .map_or_else(|| "error".to_owned(), |e| format!("errno {e}"))
    };
    // SAFETY: as above; still writable whatever mprotect did.
    unsafe { p.cast::<u8>().write_volatile(0x90) };
    let start = format!("{:x}-", p as usize);
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let perms = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_owned();
    println!("mprotect={outcome} perms={perms}");
    unmap(p);
    Ok(())
}

/// pkey_mprotect with key -1 (no key) works with or without protection-key hardware.
pub fn pkey_mprotect_rwx() -> Outcome {
    let p = anon(libc::PROT_READ | libc::PROT_WRITE)?;
    // SAFETY: p is our mapping.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pkey_mprotect,
            p,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            -1,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOSYS) {
            return Err(Failure::Unsupported(format!("pkey_mprotect: {err}")));
        }
        return Err(Failure::Error(format!("pkey_mprotect: {err}")));
    }
    println!("addr={p:p}");
    unmap(p);
    Ok(())
}

/// With READ_IMPLIES_EXEC, a plain read-write mapping is executable too.
pub fn read_implies_exec_rw() -> Outcome {
    const READ_IMPLIES_EXEC: libc::c_ulong = 0x0040_0000;
    // SAFETY: querying and setting this process's own personality.
    let current = unsafe { libc::personality(0xffff_ffff) };
    if current < 0 || unsafe { libc::personality(current as libc::c_ulong | READ_IMPLIES_EXEC) } < 0
    {
        return Err(os_error("personality"));
    }
    let p = anon(libc::PROT_READ | libc::PROT_WRITE)?;
    println!("addr={p:p}");
    unmap(p);
    Ok(())
}

/// What the dynamic loader does: a file mapped read + execute. Must not be reported.
pub fn mmap_file_rx(path: &str) -> Outcome {
    let file = std::fs::File::open(path)?;
    let p = map(
        libc::PROT_READ | libc::PROT_EXEC,
        libc::MAP_PRIVATE,
        file.as_raw_fd(),
    )?;
    println!("addr={p:p}");
    unmap(p);
    Ok(())
}

/// Maps `path` readable, then makes it executable with `mprotect`: a loader of its own.
/// Prints `executable` when the kernel granted it.
pub fn mprotect_file_exec(path: &str) -> Outcome {
    let file = std::fs::File::open(path)?;
    let p = map(libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd())?;
    // SAFETY: `p` is a mapping of PAGE bytes made above.
    if unsafe { libc::mprotect(p, PAGE, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
        return Err(os_error("mprotect"));
    }
    println!("executable");
    unmap(p);
    Ok(())
}

/// `count` RWX mappings as fast as possible, each unmapped at once.
pub fn flood(count: &str) -> Outcome {
    let count = parse_count(count)?;
    for _ in 0..count {
        let p = anon(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC)?;
        unmap(p);
    }
    println!("mapped={count}");
    Ok(())
}

/// RWX mappings as fast as possible for `seconds` s, each unmapped at once: a flood that spans
/// throttle windows however fast the machine; prints `mapped=<n>`.
pub fn flood_for(seconds: &str) -> Outcome {
    let end =
        std::time::Instant::now() + std::time::Duration::from_secs(parse_count(seconds)? as u64);
    let mut count = 0u64;
    while std::time::Instant::now() < end {
        let p = anon(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC)?;
        unmap(p);
        count += 1;
    }
    println!("mapped={count}");
    Ok(())
}

/// For the benchmark: one RWX map + unmap round trip.
pub fn rwx_round_trip() -> Result<(), Failure> {
    let p = anon(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC)?;
    unmap(p);
    Ok(())
}

/// What every allocator does: an RW page mapped and unmapped.
pub fn rw_round_trip() -> Result<(), Failure> {
    let p = anon(libc::PROT_READ | libc::PROT_WRITE)?;
    unmap(p);
    Ok(())
}

/// Waits until `go` exists, then maps RWX: a process that started before the agent.
pub fn wait_then_rwx(go: &str) -> Outcome {
    // Only a bound for a test that died without saying go: an agent loading its probes on
    // an old kernel under emulation, beside other guests, took about a minute.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    while !std::path::Path::new(go).exists() {
        if std::time::Instant::now() > deadline {
            return Err(Failure::Error(format!("{go} did not appear within 900 s")));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    mmap_rwx()
}

/// One RWX mapping (made and unmade) per line read on stdin, each answered with `mapped N`
/// on stdout once done; ends at end of input. The same process maps again whenever its
/// driver says, across whatever the driver changes meanwhile.
pub fn rwx_per_line() -> Outcome {
    use std::io::{BufRead, Write};
    let mut out = std::io::stdout().lock();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        line.map_err(|e| Failure::Error(format!("reading stdin: {e}")))?;
        let p = anon(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC)?;
        unmap(p);
        writeln!(out, "mapped {}", n + 1)
            .and_then(|()| out.flush())
            .map_err(|e| Failure::Error(format!("writing stdout: {e}")))?;
    }
    Ok(())
}

/// The main thread exits on its own (`exit`, not `exit_group`) while a second thread goes on
/// and maps RWX: the process is the same, so is its executable. The second thread prints
/// `mapped` and ends the process with status 0.
pub fn rwx_after_leader_exit() -> Outcome {
    std::thread::spawn(|| {
        // Long enough for the leader to be gone.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let code = match anon(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) {
            Ok(p) => {
                println!("mapped");
                unmap(p);
                0
            }
            Err(_) => 1,
        };
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    });
    // SAFETY: ends only this thread; the spawned one keeps the process alive.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    Err(Failure::Error("exit returned".into()))
}

/// Replaces this process image with `path args...`.
pub fn exec_into(path: &str, args: &[&str]) -> Outcome {
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(path).args(args).exec();
    Err(Failure::Error(format!("exec {path}: {err}")))
}

/// Maps `fd` twice, writable and executable, sharing the same pages (the dual-mapping
/// pattern); prints `mapped` when both mappings exist.
fn dual_map(fd: i32) -> Outcome {
    // SAFETY: fd is ours.
    if unsafe { libc::ftruncate(fd, PAGE as libc::off_t) } != 0 {
        return Err(os_error("ftruncate"));
    }
    let w = map(libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd)?;
    let x = map(libc::PROT_READ | libc::PROT_EXEC, libc::MAP_SHARED, fd)?;
    // SAFETY: `w` is a writable mapping of PAGE bytes.
    unsafe { *(w as *mut u8) = 0xc3 };
    println!("mapped");
    unmap(x);
    unmap(w);
    Ok(())
}

pub fn memfd_dual_map() -> Outcome {
    // SAFETY: a valid C string.
    let fd = unsafe { libc::memfd_create(c"vigil-jit".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_error("memfd_create"));
    }
    dual_map(fd)
}

pub fn shm_dual_map() -> Outcome {
    let path = format!("/dev/shm/vigil-dual-{}", std::process::id());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    dual_map(file.as_raw_fd())
}

/// SysV shared memory attached with `flags` (`SHM_EXEC` or 0); prints `attached`.
pub fn shmat(exec: bool) -> Outcome {
    // SAFETY: plain syscalls on a private segment this process creates and removes.
    unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, PAGE, libc::IPC_CREAT | 0o600);
        if id < 0 {
            return Err(os_error("shmget"));
        }
        let flags = if exec { 0o100000 } else { 0 };
        let p = libc::shmat(id, std::ptr::null(), flags);
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        if p as isize == -1 {
            return Err(os_error("shmat"));
        }
        println!("attached");
        libc::shmdt(p);
    }
    Ok(())
}

/// A child that sleeps (up to 30 s) until its parent is done with it, and dies with it. It
/// holds none of the parent's output open, and is set up before this returns (a child
/// stopped by a tracer before it asked to die with its parent would outlive it).
fn sleeping_child() -> Result<libc::pid_t, Failure> {
    let mut ready = [0i32; 2];
    // SAFETY: a pipe for the handshake.
    if unsafe { libc::pipe(ready.as_mut_ptr()) } != 0 {
        return Err(os_error("pipe"));
    }
    // SAFETY: fork in a single-threaded scenario; the child only calls async-signal-safe
    // functions before it exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_error("fork"));
    }
    if pid == 0 {
        // SAFETY: plain syscalls in the child.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::write(ready[1], b"r".as_ptr().cast(), 1);
            libc::sleep(30);
            libc::_exit(0);
        }
    }
    let mut byte = 0u8;
    // SAFETY: reads one byte from our pipe; closes both ends.
    unsafe {
        libc::close(ready[1]);
        libc::read(ready[0], (&mut byte as *mut u8).cast(), 1);
        libc::close(ready[0]);
    }
    Ok(pid)
}

fn end_child(pid: libc::pid_t) {
    // SAFETY: our own child, by pid.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

static TARGET_WORD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Attaches to a child with ptrace and writes a word into its memory; prints `poked`.
pub fn ptrace_poke() -> Outcome {
    let child = sleeping_child()?;
    let addr = TARGET_WORD.as_ptr() as usize;
    // SAFETY: ptrace on our own child; the word exists at the same address in its copy of
    // our memory.
    let outcome = unsafe {
        if libc::ptrace(libc::PTRACE_ATTACH, child, 0, 0) != 0 {
            Err(os_error("PTRACE_ATTACH"))
        } else {
            libc::waitpid(child, std::ptr::null_mut(), 0);
            let rc = libc::ptrace(libc::PTRACE_POKEDATA, child, addr, 0xc3c3usize);
            libc::ptrace(libc::PTRACE_DETACH, child, 0, 0);
            if rc != 0 {
                Err(os_error("PTRACE_POKEDATA"))
            } else {
                Ok(())
            }
        }
    };
    end_child(child);
    outcome?;
    println!("poked");
    Ok(())
}

/// A child offers itself to be traced (`PTRACE_TRACEME`) and stops; this process writes a
/// word into its memory without ever attaching; prints `poked`. The child's own request
/// fails with the reason on its stderr, and then this process's write fails too. With
/// `move_to` (a cgroup directory) the child first moves itself there.
pub fn traceme_poke(move_to: Option<&str>) -> Outcome {
    let procs = move_to.map(|dir| format!("{dir}/cgroup.procs"));
    // SAFETY: fork in a single-threaded scenario; the child makes plain system calls.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(os_error("fork"));
    }
    if child == 0 {
        // SAFETY: plain system calls in the child.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(procs) = &procs
                && let Err(err) = std::fs::write(procs, "0")
            {
                eprintln!("moving to {procs}: {err}");
                libc::_exit(5);
            }
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize) != 0 {
                eprintln!("PTRACE_TRACEME: {}", std::io::Error::last_os_error());
                libc::_exit(4);
            }
            libc::raise(libc::SIGSTOP);
            libc::sleep(30);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    if !libc::WIFSTOPPED(status) {
        return Err(Failure::Error(format!(
            "the child did not stop for its tracer: status {status:#x}"
        )));
    }
    let addr = TARGET_WORD.as_ptr() as usize;
    // SAFETY: ptrace on our own stopped tracee; the word exists at the same address in its
    // copy of our memory.
    let rc = unsafe { libc::ptrace(libc::PTRACE_POKEDATA, child, addr, 0xc3c3usize) };
    let poked = if rc != 0 {
        Err(os_error("PTRACE_POKEDATA"))
    } else {
        Ok(())
    };
    end_child(child);
    poked?;
    println!("poked");
    Ok(())
}

/// Writes into (`write`) or reads from a child's memory with process_vm_writev/readv.
pub fn vm_copy(write: bool) -> Outcome {
    let child = sleeping_child()?;
    let mut word: u64 = 0xc3c3;
    let local = libc::iovec {
        iov_base: (&mut word as *mut u64).cast(),
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: TARGET_WORD.as_ptr().cast(),
        iov_len: 8,
    };
    // SAFETY: valid iovecs over our own word and the child's copy of TARGET_WORD.
    let rc = unsafe {
        if write {
            libc::process_vm_writev(child, &local, 1, &remote, 1, 0)
        } else {
            libc::process_vm_readv(child, &local, 1, &remote, 1, 0)
        }
    };
    end_child(child);
    if rc != 8 {
        return Err(os_error("process_vm_writev/readv"));
    }
    println!("copied");
    Ok(())
}

/// Opens this process's own /proc/self/mem for writing (`write`) or reading; prints
/// `opened`.
pub fn proc_mem(write: bool) -> Outcome {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open("/proc/self/mem")?;
    drop(file);
    println!("opened");
    Ok(())
}

/// `/proc/self/mem` opened for writing through the 32-bit entry (`int 0x80`, i386 `open`), the
/// name in memory under 4 GiB. Prints `opened`; exits 77 when the kernel has no 32-bit entry.
pub fn compat_proc_mem_write() -> Outcome {
    const NR_OPEN: u32 = 5;
    let page = map(
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
        -1,
    )?;
    let name = b"/proc/self/mem\0";
    // SAFETY: a fresh writable page, larger than the name.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), page.cast::<u8>(), name.len()) };
    let fd = int80_6(NR_OPEN, [page as u64 as u32, libc::O_RDWR as u32, 0, 0, 0]);
    if fd == -libc::ENOSYS {
        return Err(Failure::Unsupported(
            "the 32-bit syscall entry is disabled (ia32_emulation=0?)".into(),
        ));
    }
    if fd < 0 {
        return Err(Failure::Error(format!(
            "compat open: {}",
            std::io::Error::from_raw_os_error(-fd)
        )));
    }
    // SAFETY: the descriptor just opened, closed once.
    unsafe { libc::close(fd) };
    println!("opened");
    Ok(())
}

/// `/proc/self/mem` opened for writing through io_uring (`IORING_OP_OPENAT`), which passes no
/// syscall tracepoint of `open`. Prints `opened`; exits 77 where io_uring is unavailable.
pub fn uring_proc_mem_write() -> Outcome {
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(ring) => ring,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            return Err(Failure::Unsupported(format!(
                "io_uring_setup: {e} (kernel.io_uring_disabled?)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let name = c"/proc/self/mem";
    let op = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), name.as_ptr())
        .flags(libc::O_RDWR | libc::O_CLOEXEC)
        .build()
        .user_data(1);
    // SAFETY: `name` is a static string, alive past the submission's completion.
    unsafe { ring.submission().push(&op) }.map_err(|e| Failure::Error(e.to_string()))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| Failure::Error("no completion".into()))?;
    if cqe.result() == -libc::EINVAL || cqe.result() == -libc::EOPNOTSUPP {
        return Err(Failure::Unsupported(format!(
            "IORING_OP_OPENAT: {}",
            std::io::Error::from_raw_os_error(-cqe.result())
        )));
    }
    if cqe.result() < 0 {
        return Err(Failure::Refused(-cqe.result()));
    }
    // SAFETY: the descriptor io_uring just opened, closed once.
    unsafe { libc::close(cqe.result()) };
    println!("opened");
    Ok(())
}

/// W^X requests the kernel refuses: `mprotect` of an unmapped range and `mmap` of a bad
/// descriptor. Prints `refused` when both failed as they must.
pub fn refused_rwx() -> Outcome {
    let p = anon(libc::PROT_READ)?;
    unmap(p);
    // SAFETY: the range was just unmapped: the kernel refuses with ENOMEM.
    let rc = unsafe {
        libc::mprotect(
            p,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        )
    };
    if rc == 0 {
        return Err(Failure::Error(
            "mprotect of an unmapped range succeeded".into(),
        ));
    }
    // SAFETY: a bad descriptor: the kernel refuses with EBADF.
    let q = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_SHARED,
            987_654,
            0,
        )
    };
    if q != libc::MAP_FAILED {
        return Err(Failure::Error("mmap of a bad descriptor succeeded".into()));
    }
    println!("refused");
    Ok(())
}

/// Which 32-bit call [`compat_wx`] makes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CompatCall {
    Mmap2,
    /// `old_mmap` (i386 number 90), whose arguments are a structure in memory.
    OldMmap,
    /// `old_mmap` with its structure on a page not yet faulted in (a file's, mapped and never
    /// touched): the kernel's copy faults it in, a probe's read does not.
    OldMmapUnfaulted,
    Mprotect,
}

/// W^X through the 32-bit system call entry (`int 0x80`) of this 64-bit process: `mmap2` or
/// the old `mmap` of anonymous memory with `prot`, or (`mprotect`) a low RW mapping made
/// `prot`. Prints `mapped`; exits 77 when the kernel has no 32-bit entry.
pub fn compat_wx(call: CompatCall, prot: u32) -> Outcome {
    let rc = if call == CompatCall::OldMmap {
        // The i386 `mmap` of old: its six arguments in a structure in the caller's memory,
        // under 4 GiB where a 32-bit pointer reaches it.
        let args = map(
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
        )?;
        let fields: [u32; 6] = [
            0,
            PAGE as u32,
            prot,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            u32::MAX,
            0,
        ];
        // SAFETY: a fresh writable page, larger than the structure.
        unsafe { std::ptr::copy_nonoverlapping(fields.as_ptr(), args.cast::<u32>(), 6) };
        int80_6(NR_OLD_MMAP, [args as u64 as u32, 0, 0, 0, 0])
    } else if call == CompatCall::Mprotect {
        let low = map(
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
        )?;
        int80_6(NR_MPROTECT, [low as u64 as u32, PAGE as u32, prot, 0, 0])
    } else {
        int80_6(
            NR_MMAP2,
            [
                0,
                PAGE as u32,
                prot,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
                u32::MAX,
            ],
        )
    };
    mapped_or_why(rc)
}

/// A file mapped read + execute through the 32-bit entry (`int 0x80`) of this 64-bit process:
/// `mmap2` or the old `mmap` of `path`, or (`mprotect`) a low read-only mapping of it made
/// executable. What a 32-bit dynamic loader does with a library. Prints `mapped`; exits 77
/// when the kernel has no 32-bit entry.
pub fn compat_file_exec(call: CompatCall, path: &str) -> Outcome {
    let file = std::fs::File::open(path)?;
    let fd = file.as_raw_fd() as u32;
    let rx = (libc::PROT_READ | libc::PROT_EXEC) as u32;
    let rc = match call {
        CompatCall::OldMmap => {
            let args = map(
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
            )?;
            let fields: [u32; 6] = [0, PAGE as u32, rx, libc::MAP_PRIVATE as u32, fd, 0];
            // SAFETY: a fresh writable page, larger than the structure.
            unsafe { std::ptr::copy_nonoverlapping(fields.as_ptr(), args.cast::<u32>(), 6) };
            int80_6(NR_OLD_MMAP, [args as u64 as u32, 0, 0, 0, 0])
        }
        CompatCall::OldMmapUnfaulted => {
            let fields: [u32; 6] = [0, PAGE as u32, rx, libc::MAP_PRIVATE as u32, fd, 0];
            let bytes: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
            let holder = format!("{path}.args");
            std::fs::write(&holder, &bytes)?;
            let holder_file = std::fs::File::open(&holder)?;
            let args = map(
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_32BIT,
                holder_file.as_raw_fd(),
            )?;
            let _ = std::fs::remove_file(&holder);
            int80_6(NR_OLD_MMAP, [args as u64 as u32, 0, 0, 0, 0])
        }
        CompatCall::Mprotect => {
            let low = map(
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_32BIT,
                fd as i32,
            )?;
            int80_6(NR_MPROTECT, [low as u64 as u32, PAGE as u32, rx, 0, 0])
        }
        CompatCall::Mmap2 => int80_6(NR_MMAP2, [0, PAGE as u32, rx, libc::MAP_PRIVATE as u32, fd]),
    };
    mapped_or_why(rc)
}

/// i386 system call numbers of the mapping calls.
const NR_OLD_MMAP: u32 = 90;
const NR_MPROTECT: u32 = 125;
const NR_MMAP2: u32 = 192;

/// A 32-bit mapping call's return: prints `mapped` when it succeeded; exit 77 when the
/// kernel has no 32-bit entry; the error otherwise.
fn mapped_or_why(rc: i32) -> Outcome {
    if rc == -libc::ENOSYS {
        return Err(Failure::Unsupported(
            "the 32-bit syscall entry is disabled (ia32_emulation=0?)".into(),
        ));
    }
    if (-4095..0).contains(&rc) {
        return Err(Failure::Error(format!(
            "compat call: {}",
            std::io::Error::from_raw_os_error(-rc)
        )));
    }
    println!("mapped");
    Ok(())
}

/// `int 0x80` with five arguments (ebx, ecx, edx, esi, edi) and ebp 0; the kernel's return
/// value. ebx and ebp are reserved by the compiler, so they are saved around the call.
fn int80_6(nr: u32, args: [u32; 5]) -> i32 {
    let ret: u32;
    // SAFETY: a system call through the 32-bit entry; rbx and rbp are restored before the
    // block ends, and the stack is left as found.
    unsafe {
        core::arch::asm!(
            "push rbp",
            "xor ebp, ebp",
            "xchg rbx, {a}",
            "int 0x80",
            "xchg rbx, {a}",
            "pop rbp",
            a = inout(reg) u64::from(args[0]) => _,
            inlateout("eax") nr => ret,
            in("ecx") args[1],
            in("edx") args[2],
            in("esi") args[3],
            in("edi") args[4],
        );
    }
    ret as i32
}

/// Creates a userfaultfd, by the system call (`syscall`) or through `/dev/userfaultfd`
/// (`device`); prints `created`.
pub fn userfaultfd(how: &str) -> Outcome {
    let fd = match how {
        // SAFETY: a plain system call.
        "syscall" => (unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) }) as i32,
        // The i386 system call (374) through `int 0x80`.
        "compat" => {
            let fd = int80_6(374, [libc::O_CLOEXEC as u32, 0, 0, 0, 0]);
            if fd == -libc::ENOSYS {
                return Err(Failure::Unsupported(
                    "the 32-bit syscall entry is disabled (ia32_emulation=0?)".into(),
                ));
            }
            if fd < 0 {
                return Err(Failure::Error(format!(
                    "compat userfaultfd: {}",
                    std::io::Error::from_raw_os_error(-fd)
                )));
            }
            fd
        }
        "device" => {
            let dev = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/userfaultfd")?;
            std::os::fd::IntoRawFd::into_raw_fd(dev)
        }
        other => {
            return Err(Failure::Error(format!(
                "userfaultfd {other}: syscall, compat or device"
            )));
        }
    };
    if fd < 0 {
        return Err(os_error("userfaultfd"));
    }
    println!("created");
    Ok(())
}
