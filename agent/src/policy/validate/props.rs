//! Property: the agent's check that a policy path is canonical agrees with an independent
//! normaliser (`std::path::Path::components`, which drops `.` and empty components and keeps
//! `..`) and with the CRD's patterns, which the API server applies first. A disagreement would
//! let the API server store a policy the agent refuses, or let a path through that the kernel
//! never reports (the kernel's paths are canonical, so such a rule could never match).
use std::path::{Component, Path};

use proptest::prelude::*;
use regex::Regex;

use super::{check_absolute, check_path, check_prefix, without_slash};
use crate::policy::crd::{CGROUP_PATTERN, PATH_PATTERN, PREFIX_PATTERN};

/// Strings made of path-ish pieces, so that `.`, `..`, `//` and dot-names all occur.
fn pathish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "/", "/", "a", "b.c", ".", "..", "...", ".x", "x..", " ",
        ]),
        0..10,
    )
    .prop_map(|parts| parts.concat())
}

/// `p` is what the normaliser makes of it: absolute, and neither `.`, `..` nor an empty
/// component (nor a trailing `/`) in it.
fn is_normal(p: &str) -> bool {
    let path = Path::new(p);
    let mut rebuilt = String::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(name) => {
                rebuilt.push('/');
                rebuilt.push_str(name.to_str().expect("UTF-8 in, UTF-8 out"));
            }
            Component::ParentDir | Component::CurDir | Component::Prefix(_) => return false,
        }
    }
    p.starts_with('/') && (rebuilt == p || (rebuilt.is_empty() && p == "/"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn file_paths_are_accepted_exactly_when_canonical(p in pathish()) {
        let canonical = is_normal(&p) && p != "/";
        prop_assert_eq!(check_path(&p).is_ok(), canonical, "check_path({:?})", p);
        let schema = Regex::new(PATH_PATTERN).expect("pattern");
        prop_assert_eq!(schema.is_match(&p), canonical, "PATH_PATTERN on {:?}", p);
    }

    #[test]
    fn prefixes_are_canonical_directories_with_one_trailing_slash(p in pathish()) {
        let canonical = p == "/"
            || p.strip_suffix('/').is_some_and(|dir| dir != "/" && is_normal(dir) );
        prop_assert_eq!(check_prefix(&p).is_ok(), canonical, "check_prefix({:?})", p);
        let schema = Regex::new(PREFIX_PATTERN).expect("pattern");
        prop_assert_eq!(schema.is_match(&p), canonical, "PREFIX_PATTERN on {:?}", p);
    }

    #[test]
    fn cgroup_prefixes_are_canonical_with_an_optional_trailing_slash(p in pathish()) {
        let dir = p.strip_suffix('/').unwrap_or(&p);
        let canonical = p == "/" || (dir != "/" && is_normal(dir));
        let agent = without_slash(&p).and_then(|d| check_absolute(d).map(|()| d));
        prop_assert_eq!(agent.is_ok(), canonical, "cgroup prefix {:?}", p);
        if let Ok(d) = agent {
            prop_assert!(d == "/" || !d.ends_with('/'), "{:?} keeps its slash", d);
        }
        let schema = Regex::new(CGROUP_PATTERN).expect("pattern");
        prop_assert_eq!(schema.is_match(&p), canonical, "CGROUP_PATTERN on {:?}", p);
    }

    #[test]
    fn a_nul_anywhere_is_refused(p in pathish(), at in 0usize..12) {
        let mut with_nul = p.clone();
        with_nul.insert(at.min(p.len()), '\0');
        prop_assert!(check_path(&with_nul).is_err());
        let prefix = format!("{with_nul}/");
        prop_assert!(check_prefix(&prefix).is_err());
    }
}
