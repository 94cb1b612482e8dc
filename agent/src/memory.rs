//! How the agent's heap hands memory back. glibc's defaults suit a short program, not a
//! daemon that must stay small for weeks: the threshold above which a block gets its own
//! mapping grows with every such block freed (up to 32 MiB), so after the kernel's BTF
//! (several MiB, parsed once at start) and a cluster's first lists (decoded in bulk) every
//! later buffer of that size stays in the heap, and each thread that allocates may get an
//! arena of its own (up to eight per core) whose freed memory no other thread reuses.

/// Blocks of at least this size get a mapping of their own, returned to the kernel on free.
const OWN_MAPPING_FROM: i32 = 256 * 1024;
/// Heaps (arenas) at most: the runtime's threads share them.
const ARENAS: i32 = 2;

/// glibc's own settings from the environment: an operator who set one keeps it.
const OPERATOR_SETTINGS: [&str; 3] = [
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
];

/// Sets the allocator's thresholds, unless the environment sets glibc's own; called first
/// thing, before any thread exists. False when the allocator refused them (the agent runs
/// the same, only larger).
pub fn tune_allocator() -> bool {
    if OPERATOR_SETTINGS
        .iter()
        .any(|name| std::env::var_os(name).is_some())
    {
        return true;
    }
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes glibc's allocation parameters; called before any
        // other thread allocates.
        let fixed = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM) } == 1;
        // SAFETY: as above.
        let arenas = unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) } == 1;
        fixed && arenas
    }
    #[cfg(not(target_env = "gnu"))]
    true
}
