//! `/proc/self/mountinfo`: where file systems are mounted. Used to find tracefs and bpffs
//! (`ebpf::tracefs`) and the cgroup v2 root (`metadata::cgroup`).
use std::path::PathBuf;

/// Mount points and file system types from `/proc/self/mountinfo`.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((
                PathBuf::from(unescape_mount_path(fields.get(4)?)),
                (*fields.get(sep + 1)?).to_string(),
            ))
        })
        .collect()
}

/// cgroup v2 mounts: (mount point, the mounted directory's path within the hierarchy).
pub fn cgroup2_mounts() -> Vec<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(sep + 1) == Some(&"cgroup2")).then(|| {
                (
                    PathBuf::from(unescape_mount_path(fields[4])),
                    PathBuf::from(unescape_mount_path(fields[3])),
                )
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
pub fn unescape_mount_path(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(byte) = u8::from_str_radix(&code, 8) {
                out.push(byte as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mount_path("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
