//! `vigil policy check` as a user runs it: the built binary on the fixtures, the example
//! policies and the host baseline. No root, no cluster.
//!
//! Each invalid fixture's first line is `# expect: FIELD`, the field path its error must name.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// `VIGIL_BIN`, else `target/<profile>/vigil` next to this test's directory (the same lookup
/// as `tests/common`, which this non-kernel test does not pull in).
fn vigil_bin() -> PathBuf {
    if let Ok(path) = std::env::var("VIGIL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("vigil"))
        .expect("target dir");
    assert!(
        candidate.exists(),
        "{} not found; build it first (cargo build -p agent) or set VIGIL_BIN",
        candidate.display()
    );
    candidate
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies")
}

fn check(paths: &[PathBuf]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(vigil_bin())
        .args(["policy", "check"])
        .args(paths)
        .output()
        .expect("run vigil");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (status.code(), text(stdout), text(stderr))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_fixtures_pass_with_one_summary_per_policy() {
    let dir = fixtures().join("valid");
    let (code, stdout, stderr) = check(std::slice::from_ref(&dir));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    // platform.yml holds two policies.
    assert_eq!(lines.len(), yaml_files(&dir).len() + 1, "{stdout}");
    assert!(
        lines.iter().any(|l| l.ends_with(
            "shop-web.yaml: RuntimePolicy shop/web: Enforce; selects pods \
             app.kubernetes.io/name=web in namespace shop (containers nginx); exec: 5 allow, \
             3 deny, Kill; connect: 2 allow + Services, 1 deny, Alert; memory: writeExecute \
             Deny, foreignWrites Allow, compatSyscalls Allow, 0 allowed executables, Alert"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("ClusterRuntimePolicy node-local-dns: Enforce; selects host processes under /system.slice/node-local-dns.service"), "{stdout}");
}

#[test]
fn every_invalid_fixture_fails_naming_its_field() {
    let files = yaml_files(&fixtures().join("invalid"));
    assert!(files.len() >= 10, "at least ten kinds of invalid policy");
    let mut failures = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: FIELD`", file.display()));
        let (code, stdout, _) = check(std::slice::from_ref(file));
        let prefix = format!("{}: {expected}: ", file.display());
        if code != Some(1) || !stdout.lines().any(|l| l.starts_with(&prefix)) {
            failures.push(format!(
                "{}: exit {code:?}, wanted a line starting {prefix:?}; got:\n{stdout}",
                file.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_bad_file_refuses_the_whole_set_and_prints_no_summary() {
    let valid = fixtures().join("valid");
    let bad = fixtures().join("invalid/bad-mode.yaml");
    let (code, stdout, stderr) = check(&[valid, bad.clone()]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stdout.lines().count(),
        1,
        "errors only, no summaries:\n{stdout}"
    );
    assert!(
        stdout.starts_with(&format!("{}: spec.mode: ", bad.display())),
        "{stdout}"
    );
    assert!(stderr.contains("1 error(s)"), "{stderr}");
}

#[test]
fn a_missing_path_is_an_error() {
    let missing = fixtures().join("no-such-dir");
    let (code, stdout, _) = check(std::slice::from_ref(&missing));
    assert_eq!(code, Some(1));
    assert!(
        stdout.starts_with(&format!("{}: cannot read", missing.display())),
        "{stdout}"
    );
}

/// The policies shipped for users must pass as they are.
#[test]
fn shipped_policies_pass() {
    let mut dirs: Vec<PathBuf> = fs::read_dir(workspace().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let mut checked = 0;
    for dir in &dirs {
        let (code, stdout, stderr) = check(std::slice::from_ref(dir));
        assert_eq!(code, Some(0), "{}:\n{stdout}{stderr}", dir.display());
        assert!(!stdout.is_empty(), "{} has policies", dir.display());
        checked += stdout.lines().count();
    }
    assert!(checked >= 8, "the policy library has {checked} policies");
    let (_, stdout, _) = check(&[workspace().join("policies/host")]);
    assert!(
        stdout.contains("ClusterRuntimePolicy host-baseline: Audit; selects every host process"),
        "{stdout}"
    );
}

#[test]
fn a_directory_without_policies_is_an_error() {
    let empty = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = check(&[empty.path().to_path_buf()]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("no policies found"), "{stderr}");
}
