//! How the policy layer says what is wrong: [`FieldError`] names the file, the document, the
//! policy and the field; [`ValueError`] is the reason a single value does not parse.
use std::{fmt, path::PathBuf};

/// One problem in one policy document. A set of files yields all of them at once, so a user
/// fixes everything in one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The file; `None` when the policy came from the API server.
    pub file: Option<PathBuf>,
    /// 1-based position of the YAML document in its file; 0 when the error concerns the whole
    /// file (e.g. it cannot be read).
    pub document: usize,
    /// `RuntimePolicy shop/web`, or empty when the document does not get that far.
    pub policy: String,
    /// `spec.connect.allow[1].cidr`; empty when the error concerns the whole document or file.
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: None,
            document: 0,
            policy: String::new(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `file: field.path: reason [policy, document N]`: the first three parts are the format the
/// docs promise to tools; the bracket helps a human find the document.
impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: ", file.display())?,
            None => f.write_str("<api>: ")?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.reason)?;
        match (self.policy.is_empty(), self.document) {
            (true, 0) => Ok(()),
            (true, n) => write!(f, " [document {n}]"),
            (false, 0) => write!(f, " [{}]", self.policy),
            (false, n) => write!(f, " [{}, document {n}]", self.policy),
        }
    }
}

impl std::error::Error for FieldError {}

/// Why one value is invalid; becomes a [`FieldError::reason`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a port or port range (write \"443\" or \"8000-8080\")")]
    PortSyntax(String),
    #[error("{0:?}: port 0 is not a destination port (ports are 1-65535)")]
    PortZero(String),
    #[error("{0:?}: ports are 1-65535")]
    PortTooLarge(String),
    #[error("{0:?}: the range is reversed (write low-high)")]
    PortRangeReversed(String),
    #[error("{cidr:?} has no prefix length (for this one address write {cidr}/{bits})")]
    CidrNoPrefix { cidr: String, bits: u8 },
    #[error("{0:?} is not a CIDR ({1})")]
    CidrSyntax(String, String),
    #[error("{cidr:?} has host bits set; the network is {network}")]
    CidrHostBits { cidr: String, network: String },
    #[error(
        "{0:?} is an IPv4-mapped IPv6 network, which never matches: the agent sees IPv4 \
         destinations as IPv4, so write the IPv4 CIDR"
    )]
    CidrMapped(String),
    #[error("{0:?} is not absolute (it must start with /)")]
    NotAbsolute(String),
    #[error(
        "{0:?} has an empty, \".\" or \"..\" component; the kernel reports canonical paths, \
         so it could never match"
    )]
    NotCanonical(String),
    #[error("{0:?} ends with /: a directory is matched with prefix, not path")]
    PathIsDirectory(String),
    #[error(
        "{0:?} does not end with /: a prefix is a directory (write \"{0}/\"); a single file is \
         matched with path"
    )]
    PrefixNotDirectory(String),
    #[error("is {0} bytes; the kernel's paths are at most {max} bytes", max = super::crd::PATH_MAX)]
    PathTooLong(usize),
    #[error("contains a NUL byte")]
    Nul,
    #[error("{0:?} is not a SHA-256 digest: 64 lowercase hexadecimal digits, as sha256sum prints")]
    Digest(String),
}
