//! A pure cgroup v2 host: a Debian kernel booted in QEMU with `cgroup_no_v1=all`.
//!
//! These machines mount the cgroup v1 controllers (the hybrid layout) and must not remount
//! them, so the only way to show the node on a host with nothing but cgroup v2 is another
//! kernel. The guest's root file system is this host's own, shared read-only over 9p with a
//! tmpfs above it: the guest runs the very binaries, images and Go tools this build made, at
//! the same paths. It has no network device, so nothing it does leaves it, and nothing it
//! writes reaches the host except through its `out` share.
//!
//! TCG, not KVM: KVM hung at boot on these machines.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util::{output_of, run_checked};

/// Debian 12's newest kernel: the 6.12 series, whose BPF verifier still gives a program and the
/// functions it calls 512 bytes of stack together (per-program stacks came in 6.13).
pub const KERNEL_PACKAGE: &str = "linux-image-6.12.107+deb12-amd64-unsigned";
/// What the init needs before the root is there: the virtio PCI transport (built in from 6.12,
/// a module before), 9p over virtio and overlayfs. Their dependencies are added by
/// `modprobe --show-depends`; a built-in one is skipped.
const INIT_MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];
const MEMORY_MIB: u32 = 6144;
const CPUS: u32 = 2;
/// QEMU is killed after this long, unless the caller sets another bound
/// ([`Guest::set_timeout`]): a guest that hangs must fail the step, not CI.
const TIMEOUT_SECS: u64 = 2400;

/// A prepared guest: its kernel, its initramfs, and the directory it reports into.
pub struct Guest {
    kernel: PathBuf,
    initramfs: PathBuf,
    out: PathBuf,
    pub version: String,
    timeout_secs: u64,
    root: Root,
}

/// How the guest reaches this host's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// 9p over virtio, from the kernel's modules, with an overlay to write on.
    NinePOverlay,
    /// virtiofs, built into Debian's kernels from 6.12, read-only with tmpfs where the guest
    /// writes: for a kernel whose modules the archive does not hold.
    Virtiofs,
}

/// [`prepare_kernel`] with [`KERNEL_PACKAGE`], fetched through the host's apt sources.
pub fn prepare(dir: &Path) -> Result<Guest> {
    prepare_kernel(
        dir,
        KERNEL_PACKAGE,
        &|| Command::new("apt-get"),
        Root::NinePOverlay,
    )
}

/// The kernel's version: its modules' directory, or else its image's name.
fn kernel_version(tree: &Path) -> Result<String> {
    let modules = tree.join("lib/modules");
    if let Ok(entries) = fs::read_dir(&modules)
        && let Some(version) = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .next()
    {
        return Ok(version);
    }
    fs::read_dir(tree.join("boot"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find_map(|name| name.strip_prefix("vmlinuz-").map(str::to_owned))
        .with_context(|| {
            format!(
                "{} holds neither lib/modules/VERSION nor boot/vmlinuz-VERSION",
                tree.display()
            )
        })
}

/// Fetches (`apt_get download PACKAGE`, with whatever options the caller gave `apt_get`) and
/// unpacks the kernel package into `dir` (once), and writes the initramfs and the guest's
/// second stage. With [`Root::Virtiofs`] the kernel's modules are neither fetched nor used.
pub fn prepare_kernel(
    dir: &Path,
    package: &str,
    apt_get: &dyn Fn() -> Command,
    root: Root,
) -> Result<Guest> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tree = dir.join("kernel");
    // What the tree was unpacked from: another package, or one with modules now, unpacks
    // again.
    let source = dir.join("kernel.source");
    let wanted = format!("{package} {root:?}\n");
    if tree.is_dir() && fs::read_to_string(&source).ok().as_deref() != Some(wanted.as_str()) {
        fs::remove_dir_all(&tree).with_context(|| format!("cannot remove {}", tree.display()))?;
    }
    // Renamed into place only once whole.
    if !tree.is_dir() {
        unpack_kernel(dir, &tree, package, apt_get, root)?;
        fs::write(&source, &wanted)
            .with_context(|| format!("cannot write {}", source.display()))?;
    }
    // Packages from trixie on ship their modules under usr/lib (merged /usr).
    if !tree.join("lib").exists() && tree.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", tree.join("lib"))
            .with_context(|| format!("cannot link {}/lib to usr/lib", tree.display()))?;
    }
    let modules = tree.join("lib/modules");
    let version = kernel_version(&tree)?;
    if root == Root::NinePOverlay && !modules.join(&version).join("modules.dep").exists() {
        run_checked(Command::new("depmod").arg("-b").arg(&tree).arg(&version))?;
    }
    let kernel = [
        tree.join(format!("boot/vmlinuz-{version}")),
        // Where the split packaging puts it.
        modules.join(&version).join("vmlinuz"),
    ]
    .into_iter()
    .find(|k| k.exists())
    .unwrap_or_else(|| tree.join(format!("boot/vmlinuz-{version}")));
    if !kernel.exists() {
        bail!("{package} has no {}", kernel.display());
    }
    let stage2 = dir.join("stage2.sh");
    fs::write(&stage2, STAGE2).with_context(|| format!("cannot write {}", stage2.display()))?;
    let initramfs = dir.join("initramfs.cpio");
    write_initramfs(dir, &tree, &version, &stage2, &initramfs, root)?;
    let out = dir.join("out");
    Ok(Guest {
        kernel,
        initramfs,
        out,
        version,
        timeout_secs: TIMEOUT_SECS,
        root,
    })
}

fn unpack_kernel(
    dir: &Path,
    tree: &Path,
    package_name: &str,
    apt_get: &dyn Fn() -> Command,
    root: Root,
) -> Result<()> {
    let partial = dir.join("kernel.partial");
    let _ = fs::remove_dir_all(&partial);
    unpack_package(dir, &partial, package_name, apt_get)?;
    if !partial.join("boot").is_dir() {
        // Newer packaging splits the image: the kernel and its modules are packages of
        // their own, which the image package depends on.
        let version = package_name
            .trim_start_matches("linux-image-")
            .trim_end_matches("-unsigned");
        let parts: &[&str] = match root {
            Root::NinePOverlay => &["linux-binary", "linux-modules"],
            Root::Virtiofs => &["linux-binary"],
        };
        for part in parts {
            unpack_package(dir, &partial, &format!("{part}-{version}"), apt_get)?;
        }
    }
    fs::rename(&partial, tree)
        .with_context(|| format!("cannot move {} to {}", partial.display(), tree.display()))?;
    Ok(())
}

/// `apt-get download PACKAGE` into `dir`, unpacked into `into`.
fn unpack_package(
    dir: &Path,
    into: &Path,
    package_name: &str,
    apt_get: &dyn Fn() -> Command,
) -> Result<()> {
    run_checked(apt_get().args(["download", package_name]).current_dir(dir))?;
    let prefix = format!("{}_", package_name.replace('+', "%2b"));
    let package = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.ends_with(".deb") && (n.starts_with(&prefix) || n.starts_with(package_name))
            })
        })
        .with_context(|| {
            format!(
                "apt-get download {package_name} left no package in {}",
                dir.display()
            )
        })?;
    run_checked(Command::new("dpkg-deb").arg("-x").arg(&package).arg(into))?;
    fs::remove_file(&package)?;
    Ok(())
}

/// Whether `dir` holds a file for `module` (`name.ko`, compressed or not, `-` or `_`).
fn module_file_exists(dir: &Path, module: &str) -> bool {
    let wanted = module.replace('-', "_");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && name.split(".ko").next().map(|n| n.replace('-', "_")) == Some(wanted.clone())
                && name.contains(".ko")
            {
                return true;
            }
        }
    }
    false
}

/// The initramfs: busybox, the modules the init loads in dependency order (unpacked: busybox
/// `insmod` does not read xz), and the init itself.
fn write_initramfs(
    dir: &Path,
    tree: &Path,
    version: &str,
    stage2: &Path,
    archive: &Path,
    guest_root: Root,
) -> Result<()> {
    let root = dir.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    for sub in ["bin", "dev", "proc", "sys", "host", "newroot", "rw", "mods"] {
        fs::create_dir_all(root.join(sub))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("cannot copy /bin/busybox (package busybox-static)")?;
    for applet in [
        "sh",
        "mount",
        "mkdir",
        "insmod",
        "switch_root",
        "poweroff",
        "cat",
        "echo",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let mut order: Vec<String> = Vec::new();
    let wanted: &[&str] = match guest_root {
        Root::NinePOverlay => &INIT_MODULES,
        Root::Virtiofs => &[],
    };
    for module in wanted {
        let deps = match output_of(Command::new("modprobe").arg("-d").arg(tree).args([
            "-S",
            version,
            "--show-depends",
            module,
        ])) {
            Some(deps) => deps,
            // The host's modprobe may not read a newer kernel's index of built-in modules:
            // a module with no file in the tree is built in.
            None if !module_file_exists(&tree.join("lib/modules").join(version), module) => {
                continue;
            }
            None => bail!("modprobe cannot resolve {module} for {version}"),
        };
        for line in deps.lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = path.trim().to_owned();
                if !order.contains(&path) {
                    order.push(path);
                }
            }
        }
    }
    for (index, module) in order.iter().enumerate() {
        let name = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .context("a module path without a name")?;
        let target =
            root.join("mods")
                .join(format!("{:02}-{}", index + 1, name.trim_end_matches(".xz")));
        if name.ends_with(".xz") {
            let unpacked = Command::new("xz")
                .arg("-dc")
                .arg(module)
                .output()
                .context("cannot run xz")?;
            if !unpacked.status.success() {
                bail!("xz -dc {module} failed");
            }
            fs::write(&target, unpacked.stdout)?;
        } else {
            fs::copy(module, &target)?;
        }
    }
    let init = match guest_root {
        Root::NinePOverlay => INIT,
        Root::Virtiofs => INIT_VIRTIOFS,
    };
    let init = init
        .replace("@MODULES@", &tree.join("lib/modules").display().to_string())
        .replace("@STAGE2@", &stage2.display().to_string());
    let init_path = root.join("init");
    fs::write(&init_path, init)?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
    let file = fs::File::create(archive)?;
    let status = Command::new("sh")
        .args(["-c", "find . | cpio --quiet -o -H newc"])
        .current_dir(&root)
        .stdout(file)
        .status()
        .context("cannot run cpio")?;
    if !status.success() {
        bail!("packing {} with cpio failed ({status})", root.display());
    }
    Ok(())
}

impl Guest {
    /// QEMU running `script` (a shell script on this host's file system) as the guest's
    /// work. The serial console is QEMU's standard output.
    pub fn command(&self, script: &Path) -> Result<Command> {
        self.command_with(script, "")
    }

    /// How long QEMU may run before it is killed.
    pub fn set_timeout(&mut self, timeout: std::time::Duration) {
        self.timeout_secs = timeout.as_secs().max(1);
    }

    /// [`Guest::command`] with more kernel parameters.
    pub fn command_with(&self, script: &Path, parameters: &str) -> Result<Command> {
        let _ = fs::remove_dir_all(&self.out);
        fs::create_dir_all(&self.out)?;
        let mut cmd = Command::new("timeout");
        // `timeout` kills its whole process group: QEMU and, for virtiofs, its daemons.
        cmd.args(["--signal=KILL", &self.timeout_secs.to_string()]);
        match self.root {
            Root::NinePOverlay => {
                cmd.arg("qemu-system-x86_64");
            }
            Root::Virtiofs => {
                let dir = self.out.parent().unwrap_or(&self.out);
                cmd.args(["sh", "-c", VIRTIOFS_QEMU, "sh"])
                    .arg(virtiofsd()?)
                    .arg(dir.join("root.sock"))
                    .arg(dir.join("out.sock"))
                    .arg(&self.out)
                    .arg(dir.join("virtiofsd.log"))
                    .arg(dir.join("root-view"));
            }
        }
        let out_fs = match self.root {
            Root::NinePOverlay => "9p",
            Root::Virtiofs => "virtiofs",
        };
        cmd
        // One host thread runs both vCPUs: with a thread each (MTTCG), the kernel's own text
        // patching (static keys, as tracepoints are switched) was seen to leave a stale int3
        // that oopsed in `syscall_trace_enter`.
        .args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-m", &MEMORY_MIB.to_string(), "-smp", &CPUS.to_string()])
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&self.initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 cgroup_no_v1=all {parameters} vigil.out={out_fs} vigil.run={}",
            script.display()
        ))
        .args([
            "-nic",
            "none",
            "-nographic",
            "-no-reboot",
            "-serial",
            "mon:stdio",
        ])
        .stdin(std::process::Stdio::null());
        match self.root {
            Root::NinePOverlay => {
                cmd.args([
                    "-fsdev",
                    "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
                    "-device",
                    "virtio-9p-pci,fsdev=root,mount_tag=hostroot",
                    "-fsdev",
                ])
                .arg(format!(
                    "local,id=out,path={},security_model=none",
                    self.out.display()
                ))
                .args(["-device", "virtio-9p-pci,fsdev=out,mount_tag=out"]);
            }
            Root::Virtiofs => {
                let dir = self.out.parent().unwrap_or(&self.out);
                // vhost-user needs the guest's memory shared with the daemons.
                cmd.arg("-object")
                    .arg(format!(
                        "memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on"
                    ))
                    .args(["-numa", "node,memdev=mem"]);
                for (id, tag) in [("root", "hostroot"), ("out", "out")] {
                    cmd.arg("-chardev")
                        .arg(format!(
                            "socket,id={id},path={}",
                            dir.join(format!("{id}.sock")).display()
                        ))
                        .args([
                            "-device",
                            &format!("vhost-user-fs-pci,chardev={id},tag={tag}"),
                        ]);
                }
            }
        }
        Ok(cmd)
    }

    /// The host's end of the guest's `out` share.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Whether the guest reached its second stage: TCG has been seen to oops while the
    /// kernel patches its own text at boot (int3 in `sched_clock_cpu`), before any of ours ran
    /// (with a host thread per vCPU).
    pub fn booted(&self) -> bool {
        self.out.join("booted").exists()
    }

    /// The exit code of the guest's script, which the second stage wrote into the `out`
    /// share before powering off; none when the guest never got that far.
    pub fn exit_code(&self) -> Result<i32> {
        let path = self.out.join("rc");
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "the guest wrote no exit code to {} (it did not boot, or hung until killed; \
                 its console is above)",
                path.display()
            )
        })?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: not an exit code: {text:?}", path.display()))
    }
}

/// The guest's first stage: loads 9p and overlayfs, makes the root (this host's root over 9p,
/// read-only, with a tmpfs above it), binds the guest kernel's modules in, and hands over.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in /mods/*.ko; do insmod "$module" || echo "guest: insmod $module failed"; done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /host; then
    echo "guest: the host's root could not be mounted"; poweroff -f
fi
mount -t tmpfs -o size=4g,mode=755 rw /rw
mkdir -p /rw/upper /rw/work
if ! mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work root /newroot; then
    echo "guest: the overlay root could not be mounted"; poweroff -f
fi
version=$(cat /proc/sys/kernel/osrelease)
mkdir -p /newroot/lib/modules/$version
mount --bind /newroot@MODULES@/$version /newroot/lib/modules/$version
mkdir -p /newroot/.host
mount --move /host /newroot/.host
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /bin/sh @STAGE2@
"#;

/// The first stage of a guest without modules: this host's root over virtiofs, read-only
/// (no overlayfs without modules), with tmpfs where the guest writes.
const INIT_VIRTIOFS: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
if ! mount -t virtiofs -o ro hostroot /newroot; then
    echo "guest: the host's root could not be mounted over virtiofs"; poweroff -f
fi
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mount -t tmpfs -o mode=1777 var-tmp /newroot/var/tmp
mount -t tmpfs -o mode=700 root-home /newroot/root
mount -t tmpfs -o mode=755 run /newroot/run
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /bin/sh @STAGE2@
"#;

/// QEMU with virtiofs: `sh -c VIRTIOFS_QEMU sh DAEMON ROOT_SOCKET OUT_SOCKET OUT LOG VIEW
/// QEMU-ARGS...` starts a daemon for this host's root and one for `OUT`, then QEMU, and
/// stops the daemons when QEMU ends. The daemon cannot export read-only: the root is served
/// from `VIEW`, a read-only bind of `/` alone (no submounts: the host's `/proc`, `/sys` and
/// `/dev` are not reachable), made in a mount namespace of the daemon's own.
const VIRTIOFS_QEMU: &str = r#"daemon=$1 root_socket=$2 out_socket=$3 out=$4 log=$5 view=$6
shift 6
rm -f "$root_socket" "$out_socket"
mkdir -p "$view"
unshare -m --propagation private sh -c 'mount --bind / "$1" && mount -o remount,bind,ro "$1" && exec "$2" --socket-path="$3" -o source="$1" -o cache=auto -o sandbox=chroot' sh "$view" "$daemon" "$root_socket" >>"$log" 2>&1 </dev/null &
root_daemon=$!
"$daemon" --socket-path="$out_socket" -o source="$out" -o cache=none -o sandbox=chroot >>"$log" 2>&1 </dev/null &
out_daemon=$!
stop_daemons() {
    kill "$root_daemon" "$out_daemon" 2>/dev/null
    wait
}
tries=0
while [ ! -S "$root_socket" ] || [ ! -S "$out_socket" ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ] || ! kill -0 "$root_daemon" 2>/dev/null || ! kill -0 "$out_daemon" 2>/dev/null; then
        echo "vm-test: virtiofsd is not listening (see $log)"
        stop_daemons
        exit 1
    fi
    sleep 0.1
done
qemu-system-x86_64 "$@"
rc=$?
stop_daemons
exit "$rc"
"#;

/// The virtiofs daemon: QEMU's (Debian 12 ships it with QEMU) or the packaged one.
fn virtiofsd() -> Result<PathBuf> {
    ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context(
            "no virtiofsd (/usr/lib/qemu/virtiofsd from qemu-system-x86 on Debian 12, or the \
             virtiofsd package): a kernel without modules has no other way to the host's root",
        )
}

/// The guest's second stage, PID 1 on the shared root: what a systemd host has mounted, the
/// script named on the kernel command line (`vigil.run=`), its exit code into `out`.
const STAGE2: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
# What udev links on a systemd host: an interpreter handed a script by `execveat` on a
# directory descriptor opens it as /dev/fd/N/NAME.
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf -o mode=700 bpf /sys/fs/bpf
mount -t tmpfs -o mode=755 run /run
mount --make-rshared /
ip link set lo up
hostname vigil-guest
out=/.out
if grep -q 'vigil\.out=virtiofs' /proc/cmdline; then
    # The root is read-only: the share goes under /run.
    out=/run/.out
    mkdir -p "$out"
    mount -t virtiofs out "$out"
else
    mkdir -p "$out"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out "$out"
fi
echo booted > "$out/booted"
# Debian's and Ubuntu's kernels refuse perf_event_open (the agent's tracepoints) to anything
# without CAP_SYS_ADMIN at level 3; a node running the agent with the chart's capabilities is
# set to 2, as docs/kubernetes.md tells its operator.
echo 2 > /proc/sys/kernel/perf_event_paranoid
script=$(sed -n 's/.*vigil\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "guest: Linux $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s; running $script"
sh "$script"
rc=$?
echo "guest: $script exited $rc"
echo "$rc" > "$out/rc"
sync
poweroff -f
"#;
