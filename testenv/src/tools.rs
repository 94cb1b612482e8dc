//! The pinned Go builds: which module and version each binary comes from, where it goes, and
//! when it must be built again.
//!
//! Each binary is built once with `CGO_ENABLED=0 go build -trimpath` from a small Go module in
//! `k8s-env/` (its `go.mod` and `go.sum` pin every dependency) into [`bin_dir`], next to a stamp
//! file naming the pins, the Go version and the flags it was built with. A later run skips the
//! binary while it exists and its stamp still matches.
//!
//! Each build is also kept, with its stamp, in a cache outside the workspace ([`cache_dir`]),
//! as Go keeps its build cache: a fresh clone takes a binary from there when the stamps match
//! exactly, instead of linking Kubernetes again (minutes of both cores).
use std::{
    env, fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// One binary of the test environment and where it comes from.
#[derive(Debug)]
pub struct Tool {
    /// The binary's file name in [`bin_dir`].
    pub name: &'static str,
    /// The Go module that pins it: `k8s-env/<go_dir>/go.mod`.
    pub go_dir: &'static str,
    /// The package `go build` builds, from `go_dir`.
    pub package: &'static str,
    /// The upstream module the binary comes from, and its pinned version.
    pub module: &'static str,
    pub version: &'static str,
    /// Taken from `$KUBEBUILDER_ASSETS` instead when that is set (the envtest convention).
    pub in_kubebuilder_assets: bool,
}

const KUBERNETES: &str = "v1.37.2";
const ETCD: &str = "v3.7.3";
const HELM: &str = "v3.22.0";

/// Every binary, in build order. The last four before helm run the node of `k8s-env up
/// --node` (see `node.rs`).
pub const TOOLS: [Tool; 8] = [
    Tool {
        name: "kube-apiserver",
        go_dir: "kubernetes",
        package: "k8s.io/kubernetes/cmd/kube-apiserver",
        module: "k8s.io/kubernetes",
        version: KUBERNETES,
        in_kubebuilder_assets: true,
    },
    Tool {
        name: "etcd",
        go_dir: "etcd",
        package: ".",
        module: "go.etcd.io/etcd/server/v3",
        version: ETCD,
        in_kubebuilder_assets: true,
    },
    Tool {
        name: "kubectl",
        go_dir: "kubernetes",
        package: "k8s.io/kubernetes/cmd/kubectl",
        module: "k8s.io/kubernetes",
        version: KUBERNETES,
        in_kubebuilder_assets: false,
    },
    Tool {
        name: "kube-controller-manager",
        go_dir: "kubernetes",
        package: "k8s.io/kubernetes/cmd/kube-controller-manager",
        module: "k8s.io/kubernetes",
        version: KUBERNETES,
        in_kubebuilder_assets: false,
    },
    Tool {
        name: "kube-scheduler",
        go_dir: "kubernetes",
        package: "k8s.io/kubernetes/cmd/kube-scheduler",
        module: "k8s.io/kubernetes",
        version: KUBERNETES,
        in_kubebuilder_assets: false,
    },
    Tool {
        name: "kube-proxy",
        go_dir: "kubernetes",
        package: "k8s.io/kubernetes/cmd/kube-proxy",
        module: "k8s.io/kubernetes",
        version: KUBERNETES,
        in_kubebuilder_assets: false,
    },
    Tool {
        name: "kubelet",
        go_dir: "kubernetes",
        package: "k8s.io/kubernetes/cmd/kubelet",
        module: "k8s.io/kubernetes",
        version: KUBERNETES,
        in_kubebuilder_assets: false,
    },
    Tool {
        name: "helm",
        go_dir: "helm",
        package: "helm.sh/helm/v3/cmd/helm",
        module: "helm.sh/helm/v3",
        version: HELM,
        in_kubebuilder_assets: false,
    },
];

impl Tool {
    /// `-ldflags`: strip symbols, and set the version the binary reports (upstream's release
    /// builds set the same variables; without them Kubernetes says `v0.0.0-master`).
    fn ldflags(&self) -> String {
        let mut flags = vec!["-s".to_owned(), "-w".to_owned()];
        let mut set = |var: &str, value: &str| flags.push(format!("-X={var}={value}"));
        match self.module {
            "k8s.io/kubernetes" => {
                let (major, minor) = major_minor(self.version);
                for package in [
                    "k8s.io/component-base/version",
                    "k8s.io/client-go/pkg/version",
                ] {
                    set(&format!("{package}.gitVersion"), self.version);
                    set(&format!("{package}.gitMajor"), major);
                    set(&format!("{package}.gitMinor"), minor);
                    set(&format!("{package}.gitTreeState"), "clean");
                }
            }
            "helm.sh/helm/v3" => {
                set("helm.sh/helm/v3/internal/version.version", self.version);
                set("helm.sh/helm/v3/internal/version.gitTreeState", "clean");
            }
            _ => {}
        }
        flags.join(" ")
    }
}

/// `("1", "37")` from `v1.37.2`.
fn major_minor(version: &str) -> (&str, &str) {
    let mut parts = version.trim_start_matches('v').split('.');
    (parts.next().unwrap_or(""), parts.next().unwrap_or(""))
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testenv lives inside the workspace")
        .to_path_buf()
}

/// Where the binaries are: `$VIGIL_K8S_BIN` when set, else `<workspace>/target/k8s-env/bin`.
pub fn bin_dir() -> PathBuf {
    env::var_os("VIGIL_K8S_BIN")
        .filter(|dir| !dir.is_empty())
        .map_or_else(
            || workspace_root().join("target/k8s-env/bin"),
            PathBuf::from,
        )
}

/// The binaries of [`TOOLS`] that `dir` lacks.
pub fn missing_binaries(dir: &Path) -> Vec<&'static str> {
    TOOLS
        .iter()
        .filter(|tool| !dir.join(tool.name).is_file())
        .map(|tool| tool.name)
        .collect()
}

/// For a test that needs the binaries: [`bin_dir`] when every binary is there. When some are
/// missing, panics in CI (`CI=true`) or when `VIGIL_K8S_BIN` was set, since the suite must not
/// pass without running the test; otherwise prints why `test` is skipped and returns `None`.
pub fn bin_dir_for_tests(test: &str) -> Option<PathBuf> {
    let dir = bin_dir();
    let missing = missing_binaries(&dir);
    if missing.is_empty() {
        return Some(dir);
    }
    let why = format!(
        "{} missing in {}; `cargo xtask k8s-env` builds them",
        missing.join(", "),
        dir.display()
    );
    let in_ci = env::var("CI").is_ok_and(|ci| ci == "true");
    if in_ci || env::var_os("VIGIL_K8S_BIN").is_some() {
        panic!("{test}: the Kubernetes test binaries are required here: {why}");
    }
    eprintln!("skipping {test}: {why}");
    None
}

/// How [`ensure_built`] came by one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built now, taking this long.
    Built(Duration),
    /// Already there, with a stamp matching the pins.
    UpToDate,
    /// Copied from this directory of [`cache_dir`], where an earlier build with the same
    /// stamp left it.
    Cached(PathBuf),
    /// A symbolic link to this file in `$KUBEBUILDER_ASSETS`.
    KubebuilderAssets(PathBuf),
}

/// One binary [`ensure_built`] made sure of.
#[derive(Debug)]
pub struct Built {
    pub tool: &'static Tool,
    /// The binary in [`bin_dir`].
    pub path: PathBuf,
    pub source: Source,
}

/// The `go` command: the one on `PATH`, else `/usr/local/go/bin/go`.
fn go_command() -> Result<PathBuf> {
    which::which("go")
        .ok()
        .or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|go| go.is_file()))
        .context(
            "Go is required to build the Kubernetes test binaries (kube-apiserver, kubelet, etcd, \
             helm) but no `go` command was found on PATH or in /usr/local/go/bin; install Go \
             1.26 or newer (the pins in k8s-env/*/go.mod need it)",
        )
}

/// The Go that builds the binaries, as `go env GOVERSION` says (`go1.26.8`); fails with a
/// clear message when there is no Go.
pub fn go_version() -> Result<String> {
    let go = go_command()?;
    let out = Command::new(&go)
        .args(["env", "GOVERSION"])
        .output()
        .with_context(|| format!("cannot run {}", go.display()))?;
    if !out.status.success() {
        bail!(
            "`{} env GOVERSION` failed ({}): {}",
            go.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Builds whatever binary is missing or out of date into [`bin_dir`] (linking `kube-apiserver`
/// and `etcd` from `$KUBEBUILDER_ASSETS` instead when that is set), printing progress on
/// stderr. Needs Go, even when everything is up to date (the stamps name its version).
pub fn ensure_built() -> Result<Vec<Built>> {
    let go = go_command()?;
    let go_version = go_version()?;
    let bin = bin_dir();
    fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    let assets = env::var_os("KUBEBUILDER_ASSETS")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    let mut built = Vec::new();
    for tool in &TOOLS {
        let path = bin.join(tool.name);
        let stamp_path = bin.join(format!(".{}.stamp", tool.name));
        let source = match (&assets, tool.in_kubebuilder_assets) {
            (Some(assets), true) => link_asset(tool, assets, &path, &stamp_path)?,
            _ => {
                let stamp = stamp(tool, &go_version)?;
                if path.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
                    keep(tool.name, &stamp, &bin);
                    Source::UpToDate
                } else if let Some(cache) = cache_dir()
                    && from_cache(&cache, tool.name, &stamp, &bin)?
                {
                    Source::Cached(cache)
                } else {
                    let source = build(tool, &go, &path, &stamp_path, &stamp)?;
                    keep(tool.name, &stamp, &bin);
                    source
                }
            }
        };
        built.push(Built { tool, path, source });
    }
    Ok(built)
}

/// The cache of built binaries: `$VIGIL_K8S_CACHE`, else `$XDG_CACHE_HOME/vigil/k8s-env`,
/// else `$HOME/.cache/vigil/k8s-env`; `None` (no cache) when `VIGIL_K8S_CACHE` is set empty
/// or there is no home.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("VIGIL_K8S_CACHE") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })
        .map(|cache| cache.join("vigil/k8s-env"))
}

/// Copies binary `name` from `cache` into `bin` when the cache's stamp for it is `stamp`
/// exactly; false when the cache has no such build.
fn from_cache(cache: &Path, name: &str, stamp: &str, bin: &Path) -> Result<bool> {
    let cached = cache.join(name);
    let cached_stamp = fs::read_to_string(cache.join(format!(".{name}.stamp")));
    if !cached.is_file() || !cached_stamp.is_ok_and(|s| s == stamp) {
        return Ok(false);
    }
    let stamp_path = bin.join(format!(".{name}.stamp"));
    remove_if_present(&stamp_path)?;
    copy_whole(&cached, &bin.join(name))?;
    fs::write(&stamp_path, stamp)
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    Ok(true)
}

/// Puts binary `name` of `bin` into the cache unless the cache has it under `stamp` already.
/// A failure only costs the next clone a build, so it is reported and not returned.
fn keep(name: &str, stamp: &str, bin: &Path) {
    let Some(cache) = cache_dir() else { return };
    if fs::read_to_string(cache.join(format!(".{name}.stamp"))).is_ok_and(|s| s == stamp) {
        return;
    }
    if let Err(err) = to_cache(&cache, name, stamp, bin) {
        eprintln!("testenv: cannot keep {name} in the cache: {err:#}");
    }
}

/// Keeps binary `name` of `bin`, built as `stamp` says, in `cache`.
fn to_cache(cache: &Path, name: &str, stamp: &str, bin: &Path) -> Result<()> {
    fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let stamp_path = cache.join(format!(".{name}.stamp"));
    // As in the workspace: without its stamp a binary is never taken.
    remove_if_present(&stamp_path)?;
    copy_whole(&bin.join(name), &cache.join(name))?;
    fs::write(&stamp_path, stamp).with_context(|| format!("cannot write {}", stamp_path.display()))
}

/// Copies `from` to `to` through a temporary file renamed into place, so that no reader (a
/// test running the old binary, another clone filling the cache) sees half a file.
fn copy_whole(from: &Path, to: &Path) -> Result<()> {
    let partial = to.with_extension(format!("partial-{}", std::process::id()));
    fs::copy(from, &partial)
        .with_context(|| format!("cannot copy {} to {}", from.display(), partial.display()))?;
    fs::rename(&partial, to)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), to.display()))
}

/// The Go module directory of `tool`.
fn go_dir(tool: &Tool) -> PathBuf {
    workspace_root().join("k8s-env").join(tool.go_dir)
}

/// What a binary's stamp says: the pins, the Go version, the flags and the whole go.mod (so
/// that any change to the pins builds again).
fn stamp(tool: &Tool, go_version: &str) -> Result<String> {
    let go_mod_path = go_dir(tool).join("go.mod");
    let go_mod = fs::read_to_string(&go_mod_path)
        .with_context(|| format!("cannot read {}", go_mod_path.display()))?;
    Ok(format!(
        "{} from {} {} ({})\n{go_version}\n-ldflags {}\n--- go.mod\n{go_mod}",
        tool.name,
        tool.module,
        tool.version,
        tool.package,
        tool.ldflags()
    ))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn build(tool: &Tool, go: &Path, path: &Path, stamp_path: &Path, stamp: &str) -> Result<Source> {
    // The stamp goes first and comes back last: an interrupted build is never taken as done.
    remove_if_present(stamp_path)?;
    remove_if_present(path)?;
    eprintln!(
        "testenv: building {} ({} {}) with {} ...",
        tool.name,
        tool.module,
        tool.version,
        go.display()
    );
    let start = Instant::now();
    let mut cmd = Command::new(go);
    cmd.current_dir(go_dir(tool))
        .env("CGO_ENABLED", "0")
        .args(["build", "-trimpath", "-buildvcs=false", "-ldflags"])
        .arg(tool.ldflags())
        .arg("-o")
        .arg(path)
        .arg(tool.package);
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", go.display()))?;
    if !status.success() {
        bail!(
            "building {} failed ({status}): `go build {}` in {}",
            tool.name,
            tool.package,
            go_dir(tool).display()
        );
    }
    let took = start.elapsed();
    fs::write(stamp_path, stamp)
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    eprintln!("testenv: built {} in {:.1}s", tool.name, took.as_secs_f64());
    Ok(Source::Built(took))
}

/// Points `path` at the binary of the same name in `$KUBEBUILDER_ASSETS`.
fn link_asset(tool: &Tool, assets: &Path, path: &Path, stamp_path: &Path) -> Result<Source> {
    let asset = assets.join(tool.name);
    if !asset.is_file() {
        bail!(
            "KUBEBUILDER_ASSETS is {} but it has no {}",
            assets.display(),
            tool.name
        );
    }
    let asset = asset
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", asset.display()))?;
    if fs::read_link(path).ok().as_deref() != Some(asset.as_path()) {
        remove_if_present(path)?;
        std::os::unix::fs::symlink(&asset, path)
            .with_context(|| format!("cannot link {} to {}", path.display(), asset.display()))?;
    }
    let stamp = format!(
        "{} from KUBEBUILDER_ASSETS {}\n",
        tool.name,
        asset.display()
    );
    fs::write(stamp_path, stamp)
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    Ok(Source::KubebuilderAssets(asset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build goes into the cache and comes back only under the very same stamp.
    #[test]
    fn the_cache_gives_back_a_binary_only_for_its_exact_stamp() {
        let root = env::temp_dir().join(format!("vigil-k8s-cache-test-{}", std::process::id()));
        let (cache, first, second) = (root.join("cache"), root.join("a"), root.join("b"));
        for dir in [&first, &second] {
            fs::create_dir_all(dir).expect("mkdir");
        }
        fs::write(first.join("etcd"), "binary v1").expect("write");
        assert!(!from_cache(&cache, "etcd", "stamp v1", &second).expect("empty cache"));
        to_cache(&cache, "etcd", "stamp v1", &first).expect("into the cache");
        assert!(!from_cache(&cache, "etcd", "stamp v2", &second).expect("other stamp"));
        assert!(!second.join("etcd").exists());
        assert!(from_cache(&cache, "etcd", "stamp v1", &second).expect("same stamp"));
        assert_eq!(
            fs::read_to_string(second.join("etcd")).expect("copied"),
            "binary v1"
        );
        assert_eq!(
            fs::read_to_string(second.join(".etcd.stamp")).expect("stamped"),
            "stamp v1"
        );
        fs::remove_dir_all(&root).expect("clean up");
    }

    fn go_mod(dir: &str) -> String {
        fs::read_to_string(workspace_root().join("k8s-env").join(dir).join("go.mod"))
            .expect("go.mod")
    }

    /// The versions in this file (reported and stamped) are the ones the go.mod files pin
    /// (`go mod tidy` marks a module reached only through a `tool` line `// indirect`).
    #[test]
    fn go_mod_files_pin_the_versions_named_here() {
        for tool in &TOOLS {
            let text = go_mod(tool.go_dir);
            let pinned = text.lines().any(|line| {
                let words: Vec<&str> = line
                    .split_whitespace()
                    .skip_while(|w| *w == "require")
                    .take(2)
                    .collect();
                words == [tool.module, tool.version]
            });
            assert!(
                pinned,
                "k8s-env/{}/go.mod should require {} {}",
                tool.go_dir, tool.module, tool.version
            );
            if tool.package != "." {
                assert!(
                    text.contains(&format!("\t{}\n", tool.package))
                        || text.contains(&format!("tool {}\n", tool.package)),
                    "k8s-env/{}/go.mod should have a `tool {}` line",
                    tool.go_dir,
                    tool.package
                );
            }
        }
    }

    /// k8s.io/kubernetes points every staging module at ./staging; each must be replaced by
    /// the release matching the pinned Kubernetes version.
    #[test]
    fn every_staging_module_is_replaced_by_its_matching_release() {
        let text = go_mod("kubernetes");
        let staging = format!("v0.{}", KUBERNETES.trim_start_matches("v1."));
        let replaces: Vec<&str> = text.lines().filter(|l| l.contains("=>")).collect();
        assert!(replaces.len() >= 30, "{replaces:?}");
        for line in replaces {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(
                words.len() == 4 && words[0] == words[2] && words[0].starts_with("k8s.io/"),
                "unexpected replace line: {line}"
            );
            assert_eq!(words[3], staging, "{line}");
        }
    }

    #[test]
    fn kubernetes_binaries_report_their_release() {
        let flags = TOOLS[0].ldflags();
        assert!(flags.contains("-X=k8s.io/component-base/version.gitVersion=v1.37.2"));
        assert!(flags.contains("-X=k8s.io/client-go/pkg/version.gitMinor=37"));
        assert_eq!(major_minor("v1.37.2"), ("1", "37"));
    }
}
