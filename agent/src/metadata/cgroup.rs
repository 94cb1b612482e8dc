//! The cgroup v2 hierarchy: where it is mounted, a path's id and depth (for the in-kernel
//! filter), and an id's path (for events).
use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::container::{self, PodCgroup};
use crate::cloudevents::shared::Shared;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 file system is mounted (looked in /proc/self/mountinfo); pass --cgroup-root"
    )]
    NoRoot,
    #[error(
        "--cgroup-root {0}: not a cgroup v2 file system, and neither is {0}/unified (a hybrid \
         host's cgroup v2 mount)"
    )]
    NotCgroup2(PathBuf),
    #[error("cgroup {path}: {reason}")]
    Path { path: PathBuf, reason: String },
}

/// The cgroup v2 mount: `/sys/fs/cgroup` on most nodes, `/sys/fs/cgroup/unified` on hybrid
/// systemd hosts.
pub fn detect_root() -> Result<PathBuf, CgroupError> {
    let mut roots: Vec<PathBuf> = crate::mountinfo::cgroup2_mounts()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    // Prefer the conventional places when several are mounted.
    roots.sort_by_key(|p| match p.to_str() {
        Some("/sys/fs/cgroup") => 0,
        Some("/sys/fs/cgroup/unified") => 1,
        _ => 2,
    });
    roots.into_iter().next().ok_or(CgroupError::NoRoot)
}

/// Whether `path` is the root of a mounted cgroup v2 file system.
fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is a valid C string and `stat` is large enough for the kernel's answer.
    let ok = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } == 0;
    // SAFETY: initialised by the successful call.
    ok && unsafe { stat.assume_init() }.f_type == libc::CGROUP2_SUPER_MAGIC
}

/// The cgroup v2 root for `--cgroup-root PATH`: PATH itself, or on a hybrid host (where a
/// DaemonSet mounts the node's /sys/fs/cgroup, whose cgroup v2 lives in `unified/`)
/// `PATH/unified`. Anything else is refused: programs attached to a directory that is not
/// cgroup v2 would see nothing.
pub fn resolve_root(given: &Path) -> Result<PathBuf, CgroupError> {
    if is_cgroup2(given) {
        return Ok(given.to_path_buf());
    }
    let unified = given.join("unified");
    if is_cgroup2(&unified) {
        return Ok(unified);
    }
    Err(CgroupError::NotCgroup2(given.to_path_buf()))
}

/// The id of the cgroup at `path` (relative to the cgroup v2 root): the inode number of its
/// directory.
pub fn cgroup_id(root: &Path, path: &str) -> Result<u64, CgroupError> {
    let relative = path.trim_start_matches('/');
    let full = root.join(relative);
    let err = |reason: String| CgroupError::Path {
        path: PathBuf::from(path),
        reason,
    };
    if relative.split('/').any(|c| c == "..") {
        return Err(err("must not contain `..`".into()));
    }
    let meta = std::fs::metadata(&full).map_err(|e| err(format!("{}: {e}", full.display())))?;
    if !meta.is_dir() || !full.join("cgroup.procs").exists() {
        return Err(err(format!(
            "{} is not a cgroup v2 directory",
            full.display()
        )));
    }
    Ok(std::os::unix::fs::MetadataExt::ino(&meta))
}

/// Limits the probes to one cgroup v2 subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupFilter {
    /// The cgroup's id (the inode number of its directory).
    pub id: u64,
    /// Its depth below the cgroup v2 root (the root is 0).
    pub level: u32,
}

/// Resolves `path` (relative to the cgroup v2 root, e.g. `/system.slice/foo.service`) to the
/// filter the probes understand.
pub fn filter_for(root: &Path, path: &str) -> Result<CgroupFilter, CgroupError> {
    filter_among(root, path, &crate::mountinfo::cgroup2_mounts())
}

/// [`filter_for`] with the cgroup v2 mounts already read: resolving a thousand pods' bindings
/// read the mount table a thousand times, every watch tick.
pub fn filter_among(
    root: &Path,
    path: &str,
    mounts: &[(PathBuf, PathBuf)],
) -> Result<CgroupFilter, CgroupError> {
    let id = cgroup_id(root, path)?;
    let relative = path.trim_start_matches('/');
    let full = root.join(relative);
    let level = absolute_level(&full, mounts).unwrap_or_else(|| components(Path::new(relative)));
    Ok(CgroupFilter { id, level })
}

fn components(path: &Path) -> u32 {
    path.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count() as u32
}

/// The depth of `dir` in the whole cgroup v2 hierarchy, which is what the kernel's
/// `bpf_get_current_ancestor_cgroup_id` counts, even when `--cgroup-root` names a directory
/// below the mount or the mount shows only part of the hierarchy.
fn absolute_level(dir: &Path, mounts: &[(PathBuf, PathBuf)]) -> Option<u32> {
    let (mount_point, mounted_root) = mounts
        .iter()
        .filter(|(mount_point, _)| dir.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.as_os_str().len())?;
    Some(components(mounted_root) + components(dir.strip_prefix(mount_point).ok()?))
}

/// Maps cgroup ids to paths below the root, through the kernel's cgroup file handles.
pub struct CgroupPaths {
    root: PathBuf,
    root_dir: Option<std::fs::File>,
    cache: HashMap<u64, Resolved>,
}

/// A cgroup's path and, when it is a pod's, where in the pod: parsed once per cgroup rather
/// than once per event (a cgroup id is never reused while the machine is up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: Shared<str>,
    pub pod: Option<Arc<PodCgroup>>,
}

const FILEID_KERNFS: i32 = 0xfe;
const CACHE_LIMIT: usize = 16_384;

impl CgroupPaths {
    pub fn new(root: PathBuf) -> Self {
        let root_dir = std::fs::File::open(&root).ok();
        Self {
            root,
            root_dir,
            cache: HashMap::new(),
        }
    }

    /// The path of cgroup `id` relative to the root (`/` for the root itself), or `None` when
    /// the cgroup is gone or cannot be opened.
    pub fn path(&mut self, id: u64) -> Option<Shared<str>> {
        self.resolve(id).map(|r| r.path)
    }

    /// The cgroup's path and pod, `None` when the id names no cgroup (yet).
    pub fn resolve(&mut self, id: u64) -> Option<Resolved> {
        if let Some(hit) = self.cache.get(&id) {
            return Some(hit.clone());
        }
        // A miss is not cached: the cgroup may be created a moment later.
        let path = self.lookup(id)?;
        let found = Resolved {
            pod: container::parse(&path).map(Arc::new),
            path: path.into(),
        };
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(id, found.clone());
        Some(found)
    }

    fn lookup(&self, id: u64) -> Option<String> {
        let dir = self.root_dir.as_ref()?;
        // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[8]; }
        let mut handle = [0u8; 16];
        handle[..4].copy_from_slice(&8u32.to_ne_bytes());
        handle[4..8].copy_from_slice(&FILEID_KERNFS.to_ne_bytes());
        handle[8..].copy_from_slice(&id.to_ne_bytes());
        // SAFETY: `handle` is a valid file_handle of 8 bytes; the result is an fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                dir.as_raw_fd(),
                handle.as_mut_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"));
        // SAFETY: fd was returned to us above and is closed once.
        unsafe { libc::close(fd as i32) };
        let full = link.ok()?;
        let rel = full.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rel.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_cgroup2_is_refused_by_name() {
        let dir = std::env::temp_dir();
        let err = resolve_root(&dir).expect_err("a temp directory is not cgroup v2");
        let message = err.to_string();
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(message.contains("unified"), "{message}");
    }

    /// The mounted cgroup v2 root, or `None` after printing why the test skips; in CI a
    /// missing cgroup v2 fails the test instead.
    fn mounted_root() -> Option<PathBuf> {
        let root = detect_root().ok();
        if root.is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI machines mount cgroup v2"
            );
            eprintln!("SKIPPED: no cgroup v2 mounted");
        }
        root
    }

    #[test]
    fn the_mounted_cgroup2_root_resolves_to_itself_and_from_its_parent_on_hybrid_hosts() {
        let Some(root) = mounted_root() else {
            return;
        };
        assert_eq!(resolve_root(&root).expect("cgroup v2"), root);
        if root.ends_with("unified") {
            let parent = root.parent().expect("parent");
            assert_eq!(resolve_root(parent).expect("hybrid"), root);
        }
    }

    /// Removes the directories it was given, deepest first.
    struct Dirs(Vec<PathBuf>);

    impl Drop for Dirs {
        fn drop(&mut self) {
            for dir in self.0.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    #[test]
    fn a_pods_cgroup_resolves_to_its_path_and_pod_once() {
        use std::os::unix::fs::MetadataExt;
        let Some(root) = mounted_root() else {
            return;
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs the tests as root"
            );
            eprintln!("SKIPPED: making a cgroup needs root");
            return;
        }
        let uid = "8f7c0e1a-3b2d-4c5e-9f60-1a2b3c4d5e6f";
        let cid = "4b825dc642cb6eb9a060e54bf8d69288fbee4904b825dc642cb6eb9a060e54bf";
        let top = format!("vigil-unit-{}", std::process::id());
        let rel = [
            top.clone(),
            format!(
                "{top}/kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ),
        ];
        let container = format!("{}/cri-containerd-{cid}.scope", rel[1]);
        let mut dirs = Dirs(Vec::new());
        for dir in rel.iter().chain([&container]) {
            let path = root.join(dir);
            std::fs::create_dir(&path).expect("creating a cgroup (as root)");
            dirs.0.push(path);
        }
        let mut paths = CgroupPaths::new(root.clone());
        let id = std::fs::metadata(root.join(&container)).unwrap().ino();
        let found = paths.resolve(id).expect("resolved");
        assert_eq!(&*found.path, format!("/{container}"));
        let pod = found.pod.as_deref().expect("a pod's cgroup");
        assert_eq!(pod.pod_uid, uid);
        assert_eq!(pod.container_id.as_deref(), Some(cid));
        let again = paths.resolve(id).expect("cached");
        assert!(
            Arc::ptr_eq(found.pod.as_ref().unwrap(), again.pod.as_ref().unwrap()),
            "parsed once, shared after"
        );
        let host = std::fs::metadata(root.join(&rel[0])).unwrap().ino();
        assert_eq!(paths.resolve(host).expect("resolved").pod, None);
        drop(dirs);
    }

    #[test]
    fn filter_refuses_parent_components_and_missing_dirs() {
        let root = Path::new("/nonexistent-cgroup-root");
        let err = filter_for(root, "/a/../b").unwrap_err().to_string();
        assert!(err.contains("/a/../b") && err.contains(".."), "{err}");
        let err = filter_for(root, "/system.slice/x.service")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/system.slice/x.service"), "{err}");
    }

    #[test]
    fn filter_for_a_directory_counts_its_depth() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        let f = filter_for(tmp.path(), "/a/b").unwrap();
        assert_eq!(f.level, 2);
        assert_eq!(
            f.id,
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).unwrap())
        );
    }
}

/// The cgroups of one pod on this node, relative to the cgroup root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDirs {
    pub pod: String,
    /// Container id -> its cgroup.
    pub containers: HashMap<String, String>,
}

/// Every pod cgroup below `root` (the kubelet's `kubepods` tree, wherever it is), by pod UID.
/// Only directories are read, a few levels deep: cheap enough to repeat every half second.
pub fn pod_dirs(root: &Path) -> HashMap<String, PodDirs> {
    let mut out: HashMap<String, PodDirs> = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = format!("/{}", rel.display());
            match super::container::parse(&rel) {
                Some(found) => {
                    let pod = out.entry(found.pod_uid.clone()).or_default();
                    match found.container_id {
                        Some(id) => {
                            pod.containers.insert(id, rel);
                        }
                        None => {
                            pod.pod = rel;
                            stack.push((path, depth + 1));
                        }
                    }
                }
                // Only the kubelet's trees lead to pods.
                None if depth < 4
                    && (depth > 0 || is_kube_tree(&entry.file_name().to_string_lossy())) =>
                {
                    stack.push((path, depth + 1));
                }
                None => {}
            }
        }
    }
    out.retain(|_, dirs| !dirs.pod.is_empty());
    out
}

fn is_kube_tree(name: &str) -> bool {
    name.starts_with("kubepods") || name.starts_with("kubelet")
}
