//! A Python virtual environment with one package from PyPI, for tests that check Vigil's
//! output with an independent implementation.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// `python3` of a virtual environment `name` (under the target directory) where `import`
/// runs, `package` (a pip requirement) installed there first if need be. `None`, said, where
/// that is not possible; in CI that fails the test.
pub fn with_package(name: &str, package: &str, import: &str) -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python3");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", import])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return Some(python);
    }
    let attempt = || -> Result<(), String> {
        let status = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .map_err(|e| format!("python3 -m venv: {e}"))?;
        if !status.success() {
            return Err(format!("python3 -m venv {}: {status}", venv.display()));
        }
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", package])
            .status()
            .map_err(|e| format!("pip: {e}"))?;
        if !status.success() {
            return Err(format!("pip install {package}: {status}"));
        }
        Ok(())
    };
    match attempt() {
        Ok(()) if ready(&python) => Some(python),
        result => {
            let why = result.err().unwrap_or_else(|| "cannot import it".into());
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "Python's {package} is needed in CI: {why}"
            );
            eprintln!("SKIPPED: no Python {package} ({why})");
            None
        }
    }
}
