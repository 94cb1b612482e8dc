//! tracefs and bpffs: mounted when missing, and the tracepoint format files that tell where
//! each field of a tracepoint record lives on this kernel.
use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

use super::EbpfError;
use crate::mountinfo::mounts;

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
pub const BPFFS: &str = "/sys/fs/bpf";

fn is_mounted(target: &Path, fstype: &str) -> bool {
    mounts()
        .iter()
        .any(|(path, ty)| path == target && ty == fstype)
}

fn mount(fstype: &str, target: &str) -> Result<(), EbpfError> {
    std::fs::create_dir_all(target).map_err(|source| EbpfError::Io {
        path: target.into(),
        source,
    })?;
    let c = |s: &str| CString::new(s).expect("no NUL in constant");
    let (source, fs, dir) = (c(fstype), c(fstype), c(target));
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(EbpfError::Mount {
            fstype: fstype.into(),
            target: target.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!(fstype, target, "mounted");
    Ok(())
}

/// Where tracepoints live, mounting tracefs first if no tracing directory is present.
pub fn ensure_tracefs() -> Result<PathBuf, EbpfError> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    mount("tracefs", TRACEFS)?;
    Ok(PathBuf::from(TRACEFS))
}

/// The active LSMs, in order, from securityfs (mounted first when it is not).
pub fn active_lsms() -> Result<Vec<String>, EbpfError> {
    let lsm = Path::new(SECURITYFS).join("lsm");
    if !lsm.exists() && !is_mounted(Path::new(SECURITYFS), "securityfs") {
        mount("securityfs", SECURITYFS)?;
    }
    let text = std::fs::read_to_string(&lsm).map_err(|source| EbpfError::Io {
        path: lsm.clone(),
        source,
    })?;
    Ok(text
        .trim()
        .split(',')
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

pub const SECURITYFS: &str = "/sys/kernel/security";

pub fn ensure_bpffs() -> Result<(), EbpfError> {
    if is_mounted(Path::new(BPFFS), "bpf") {
        return Ok(());
    }
    mount("bpf", BPFFS)
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint, by name.
#[derive(Debug, Default)]
pub struct Format {
    pub tracepoint: String,
    pub fields: HashMap<String, Field>,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self, EbpfError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| EbpfError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self::parse(&format!("{category}/{name}"), &text))
    }

    pub fn parse(tracepoint: &str, text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or_default();
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // The name is the last word of the declaration, without an array suffix.
            let name = decl.split_whitespace().last().unwrap_or_default();
            let name = name.split('[').next().unwrap_or_default();
            if let (Some(offset), Some(size)) = (offset, size)
                && !name.is_empty()
            {
                fields.insert(name.to_string(), Field { offset, size });
            }
        }
        Self {
            tracepoint: tracepoint.to_string(),
            fields,
        }
    }

    /// The offset of `name`, which must be `size` bytes wide.
    pub fn offset(&self, name: &str, size: u32) -> Result<u32, EbpfError> {
        match self.fields.get(name) {
            Some(field) if field.size == size => Ok(field.offset),
            Some(field) => Err(EbpfError::TracepointField {
                tracepoint: self.tracepoint.clone(),
                field: name.to_string(),
                reason: format!("is {} bytes wide, expected {size}", field.size),
            }),
            None => Err(EbpfError::TracepointField {
                tracepoint: self.tracepoint.clone(),
                field: name.to_string(),
                reason: "is missing".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCK_FORMAT: &str = "name: inet_sock_set_state
ID: 1370
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"
";

    #[test]
    fn parses_fields_arrays_and_pointers() {
        let f = Format::parse("sock/inet_sock_set_state", SOCK_FORMAT);
        assert_eq!(f.offset("newstate", 4).unwrap(), 20);
        assert_eq!(f.offset("daddr_v6", 16).unwrap(), 56);
        assert_eq!(f.offset("skaddr", 8).unwrap(), 8);
        assert_eq!(f.fields["common_pid"], Field { offset: 4, size: 4 });
    }

    #[test]
    fn a_field_of_the_wrong_width_is_refused_with_its_name() {
        let f = Format::parse("sock/inet_sock_set_state", SOCK_FORMAT);
        let err = f.offset("protocol", 1).unwrap_err().to_string();
        assert!(
            err.contains("sock/inet_sock_set_state") && err.contains("protocol"),
            "{err}"
        );
        let err = f.offset("nope", 4).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("missing"), "{err}");
    }
}
