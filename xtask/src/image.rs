//! `cargo xtask image`: Vigil's container image as an OCI archive, without a registry or a
//! container engine. One layer holds exactly what the binary needs: the binary and the shared
//! libraries its dynamic loader resolves (as `ldd` lists them), each at the path the loader
//! looks for it. The archive is an OCI image layout (`oci-layout`, `index.json` with the
//! `io.containerd.image.name` annotation, `blobs/sha256/...`) plus the `manifest.json` of
//! `docker save`, so `ctr images import`, `docker load` and `podman load` all take it. The
//! layer and the archive are deterministic: the same binary gives the same digests.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Where the agent's binary goes in its image.
pub const ENTRYPOINT: &str = "/usr/bin/vigil";

/// One image: its name and tag, the program it is made of (put at `at`, with the libraries
/// it loads), and what it runs.
pub struct Spec<'a> {
    pub name: &'a str,
    pub tag: &'a str,
    pub binary: &'a Path,
    pub at: &'a str,
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
    /// More programs, each at its host path, with the libraries it loads.
    pub also: &'a [&'a str],
    /// More programs from elsewhere: (the file, where it goes), with the libraries it loads.
    pub extra: &'a [(&'a Path, &'a str)],
}

/// The agent's image.
pub fn agent<'a>(binary: &'a Path, tag: &'a str) -> Spec<'a> {
    Spec {
        name: "vigil",
        tag,
        binary,
        at: ENTRYPOINT,
        entrypoint: &[ENTRYPOINT],
        cmd: &["run"],
        also: &[],
        extra: &[],
    }
}

/// Debian's static busybox, the test workloads' shell and tools.
pub const BUSYBOX: &str = "/bin/busybox";

/// GNU grep: `grep -P` compiles its pattern with PCRE2's JIT into a writable and executable
/// mapping, so it is the workloads' JIT runtime (what `memory.allowExecutables` exempts).
pub const JIT_RUNTIME: &str = "/usr/bin/grep";

/// Where the test workloads' image has `vigil-scenario`, when it is built with it.
pub const SCENARIO: &str = "/usr/bin/vigil-scenario";

/// A script of the test workloads' image, run by the image's own interpreter (busybox's
/// shell): what a drift rule must let run.
pub const IMAGE_SCRIPT: &str = "/usr/bin/vigil-image-script";

/// Writes the source of [`IMAGE_SCRIPT`] into `dir`; returns its path.
pub fn image_script(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("vigil-image-script");
    std::fs::write(&path, "#!/bin/busybox sh\necho from-the-image \"$@\"\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The test workloads' image: busybox as `/bin/busybox` (a shell by default), the JIT
/// runtime [`JIT_RUNTIME`], and `extra` programs (the node tests add `vigil-scenario` at
/// [`SCENARIO`], their load generator).
pub fn busybox<'a>(tag: &'a str, extra: &'a [(&'a Path, &'a str)]) -> Spec<'a> {
    Spec {
        name: "vigil-test-busybox",
        tag,
        binary: Path::new(BUSYBOX),
        at: BUSYBOX,
        entrypoint: &[BUSYBOX],
        cmd: &["sh"],
        also: &[JIT_RUNTIME],
        extra,
    }
}

/// The pod sandbox image (kubelet's "pause"): any program that sleeps until killed.
pub fn pause(tag: &str) -> Spec<'_> {
    Spec {
        name: "vigil-test-pause",
        tag,
        binary: Path::new(BUSYBOX),
        at: BUSYBOX,
        entrypoint: &[BUSYBOX, "sleep", "2147483647"],
        cmd: &[],
        also: &[],
        extra: &[],
    }
}

/// The files of an image of `binary` at `at`: where each goes, and where its content comes
/// from. A static binary stands alone.
pub fn contents(binary: &Path, at: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut files = vec![(at.to_string(), binary.to_path_buf())];
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if said.contains("not a dynamic executable") || said.contains("statically linked") {
        return Ok(files);
    }
    if !out.status.success() {
        bail!("ldd {}: {said}", binary.display());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the loader itself:
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let real = std::fs::canonicalize(path).with_context(|| format!("resolving {path}"))?;
        files.push((path.to_string(), real));
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An uncompressed tar of `files` (and their directories), with fixed owners, modes and times.
fn layer(files: &[(String, PathBuf)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _) in files {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| *p != Path::new("/")) {
            dirs.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    for dir in &dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        let name = format!("{}/", dir.display().to_string().trim_start_matches('/'));
        builder.append_data(&mut h, name, std::io::empty())?;
    }
    for (path, source) in files {
        let bytes =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        let mut h = header(tar::EntryType::Regular, 0o755, bytes.len() as u64);
        builder.append_data(&mut h, path.trim_start_matches('/'), bytes.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

/// A blob: its digest and bytes.
struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            digest: sha256(&bytes),
            bytes,
        }
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        serde_json::json!({
            "mediaType": media_type,
            "digest": format!("sha256:{}", self.digest),
            "size": self.bytes.len(),
        })
    }
}

/// Writes the image `spec` as `<out>/<name>-<tag>.oci.tar`, named `<name>:<tag>`; returns
/// the archive's path.
pub fn build(spec: &Spec<'_>, out: &Path) -> Result<PathBuf> {
    let Spec { name, tag, .. } = *spec;
    let mut files = contents(spec.binary, spec.at)?;
    for program in spec.also {
        files.extend(contents(Path::new(program), program)?);
    }
    for (program, at) in spec.extra {
        files.extend(contents(program, at)?);
    }
    files.sort();
    files.dedup();
    let layer = Blob::new(layer(&files)?);
    let config = Blob::new(serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "Env": ["PATH=/usr/bin"],
            "Labels": {"org.opencontainers.image.version": tag},
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", layer.digest)]},
        "history": [{"created_by": "cargo xtask image"}],
    }))?);
    let manifest = Blob::new(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor("application/vnd.oci.image.config.v1+json"),
        "layers": [layer.descriptor("application/vnd.oci.image.layer.v1.tar")],
    }))?);
    let reference = format!("{name}:{tag}");
    let mut manifest_descriptor = manifest.descriptor("application/vnd.oci.image.manifest.v1+json");
    manifest_descriptor["annotations"] = serde_json::json!({
        // containerd names the image by this; a short name is normalized to docker.io/library.
        "io.containerd.image.name": format!("docker.io/library/{reference}"),
        "org.opencontainers.image.ref.name": tag,
    });
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_descriptor],
    }))?;
    let docker_manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("blobs/sha256/{}", config.digest),
        "RepoTags": [reference],
        "Layers": [format!("blobs/sha256/{}", layer.digest)],
    }]))?;

    std::fs::create_dir_all(out)?;
    let path = out.join(format!("{name}-{tag}.oci.tar"));
    let mut archive = tar::Builder::new(Vec::new());
    let mut put = |name: String, bytes: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(bytes.len() as u64);
        archive.append_data(&mut h, name, bytes)?;
        Ok(())
    };
    put("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    put("index.json".into(), &index)?;
    put("manifest.json".into(), &docker_manifest)?;
    for blob in [&layer, &config, &manifest] {
        put(format!("blobs/sha256/{}", blob.digest), &blob.bytes)?;
    }
    let bytes = archive.into_inner()?;
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&bytes))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `cargo xtask image`: the agent's image, and with `workloads` the test workloads' and the
/// pod sandbox's.
pub fn run(binary: Option<PathBuf>, workloads: bool) -> Result<()> {
    let binary = match binary {
        Some(binary) => binary,
        None => crate::build::run(true)?,
    };
    let out = crate::util::workspace_root().join("target/images");
    let tag = app_version()?;
    let mut specs = vec![agent(&binary, &tag)];
    let script = image_script(&out)?;
    let extra = [(script.as_path(), IMAGE_SCRIPT)];
    if workloads {
        crate::setup::run()?;
        specs.extend([busybox(&tag, &extra), pause(&tag)]);
    }
    for spec in &specs {
        println!("image: {}", build(spec, &out)?.display());
    }
    Ok(())
}

/// The images a test node needs, built into `out` from the agent's `binary`: the agent's,
/// the workloads' and the sandbox's; returns their archives and the sandbox image's name.
pub fn for_node(binary: &Path, out: &Path) -> Result<(Vec<PathBuf>, String)> {
    let tag = app_version()?;
    let sandbox = pause(&tag);
    let sandbox_name = format!("docker.io/library/{}:{tag}", sandbox.name);
    // The load generator of the node tests, built beside the agent.
    let scenario = binary.with_file_name("vigil-scenario");
    let script = image_script(out)?;
    let extra = [
        (scenario.as_path(), SCENARIO),
        (script.as_path(), IMAGE_SCRIPT),
    ];
    // The agent without its debug information, which is nine tenths of a debug build (250 MB):
    // containerd hashes and unpacks every byte it imports, which in the emulated node took
    // minutes. The code, symbols and embedded eBPF object stay as built.
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let stripped = out.join("vigil.no-debug");
    crate::util::run_checked(
        std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&stripped),
    )?;
    let archives = [agent(&stripped, &tag), busybox(&tag, &extra), sandbox]
        .iter()
        .map(|spec| build(spec, out))
        .collect::<Result<Vec<_>>>()?;
    Ok((archives, sandbox_name))
}

/// The chart's `appVersion`: the image's tag.
pub fn app_version() -> Result<String> {
    let chart = crate::util::workspace_root().join("charts/vigil/Chart.yaml");
    let text =
        std::fs::read_to_string(&chart).with_context(|| format!("reading {}", chart.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{}: no appVersion", chart.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent binary the suite built before its tests, or why the test cannot run here
    /// (which fails it in CI).
    fn built_agent() -> Option<PathBuf> {
        let binary = crate::util::workspace_root().join("target/debug/vigil");
        let missing = if !binary.exists() {
            Some(format!("{} is not built", binary.display()))
        } else if !crate::util::is_root() {
            Some("chroot needs root".into())
        } else if Command::new("skopeo").arg("--version").output().is_err() {
            Some("skopeo is not installed (cargo xtask setup installs it)".into())
        } else {
            None
        };
        match missing {
            None => Some(binary),
            Some(why) => {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("SKIPPED: {why}");
                None
            }
        }
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().expect("runs");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_image_runs_the_agent_from_its_own_files_and_reads_as_oci_and_docker() {
        let Some(binary) = built_agent() else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("vigil-image-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = build(&agent(&binary, "9.9.9"), &dir.join("a")).unwrap();
        let second = build(&agent(&binary, "9.9.9"), &dir.join("b")).unwrap();
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap(),
            "the same binary makes the same archive"
        );

        // Unpacked by tar alone, as docker-save's manifest.json describes it.
        let unpacked = dir.join("unpacked");
        std::fs::create_dir_all(&unpacked).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&first)
            .arg("-C")
            .arg(&unpacked));
        let docker: serde_json::Value =
            serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(docker[0]["RepoTags"][0], "vigil:9.9.9");
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let layer = unpacked.join(docker[0]["Layers"][0].as_str().unwrap());
        run(Command::new("tar")
            .arg("-xf")
            .arg(&layer)
            .arg("-C")
            .arg(&root));
        // Nothing from the host: the image's own loader and libraries run the agent.
        let version = run(Command::new("chroot")
            .arg(&root)
            .args([ENTRYPOINT, "--version"]));
        assert!(version.starts_with("vigil "), "{version}");

        // An independent reader of OCI archives: its digests check, and its name is ours.
        let inspected =
            run(Command::new("skopeo")
                .args(["inspect", &format!("oci-archive:{}", first.display())]));
        let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
        assert_eq!(inspected["Architecture"], "amd64");
        assert_eq!(inspected["Os"], "linux");
        let copy = dir.join("copy");
        run(Command::new("skopeo").args([
            "copy",
            &format!("oci-archive:{}", first.display()),
            &format!("dir:{}", copy.display()),
        ]));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(unpacked.join("index.json")).unwrap()).unwrap();
        let manifest = &index["manifests"][0];
        assert_eq!(inspected["Digest"], manifest["digest"]);
        assert_eq!(
            manifest["annotations"]["io.containerd.image.name"],
            "docker.io/library/vigil:9.9.9"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod workload_tests {
    use super::*;

    #[test]
    fn the_workload_images_hold_busybox_and_the_jit_runtime_and_run_them() {
        if !Path::new(BUSYBOX).exists() || !crate::util::is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{BUSYBOX} (busybox-static, installed by cargo xtask setup) and root are needed"
            );
            eprintln!("SKIPPED: no {BUSYBOX} or not root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vigil-workload-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for spec in [busybox("1", &[]), pause("1")] {
            let archive = build(&spec, &dir).unwrap();
            let unpacked = dir.join(format!("{}-unpacked", spec.name));
            let root = dir.join(format!("{}-root", spec.name));
            std::fs::create_dir_all(&unpacked).unwrap();
            std::fs::create_dir_all(&root).unwrap();
            let tar = |file: &Path, into: &Path| {
                let status = Command::new("tar")
                    .arg("-xf")
                    .arg(file)
                    .arg("-C")
                    .arg(into)
                    .status()
                    .unwrap();
                assert!(status.success());
            };
            tar(&archive, &unpacked);
            let docker: serde_json::Value =
                serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap())
                    .unwrap();
            tar(
                &unpacked.join(docker[0]["Layers"][0].as_str().unwrap()),
                &root,
            );
            let files: Vec<String> = std::fs::read_dir(root.join("bin"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(files, ["busybox"], "{}: busybox in /bin", spec.name);
            let has_grep = root.join(JIT_RUNTIME.trim_start_matches('/')).is_file();
            assert_eq!(has_grep, !spec.also.is_empty(), "{}", spec.name);
            if has_grep {
                // Its own libraries (PCRE2 among them) run it, with the JIT.
                let out = Command::new("chroot")
                    .arg(&root)
                    .args([BUSYBOX, "sh", "-c", "echo abc | /usr/bin/grep -P 'a.c'"])
                    .output()
                    .unwrap();
                assert_eq!(String::from_utf8_lossy(&out.stdout), "abc\n", "{out:?}");
            }
            let out = Command::new("chroot")
                .arg(&root)
                .args([BUSYBOX, "echo", "from the image"])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "from the image\n");
            let config: serde_json::Value = serde_json::from_slice(
                &std::fs::read(unpacked.join(docker[0]["Config"].as_str().unwrap())).unwrap(),
            )
            .unwrap();
            assert_eq!(config["config"]["Entrypoint"][0], BUSYBOX);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
