//! Giving freed heap back to the kernel. Loading the probes parses the kernel's BTF (several
//! MiB of types, all freed once the programs are loaded), and a cluster's first lists are
//! decoded from JSON in bulk; glibc keeps such freed memory in its heap, where it counts as
//! the agent's RSS until something reuses it. Trimming once after each hands it back.
#[cfg(target_env = "gnu")]
pub fn give_back(after: &'static str) {
    // SAFETY: malloc_trim releases only memory the allocator holds free; no pointer of ours
    // is touched.
    let released = unsafe { libc::malloc_trim(0) } != 0;
    tracing::debug!(after, released, "heap trimmed");
}

/// Other C libraries have no `malloc_trim`; their allocators return memory on their own terms.
#[cfg(not(target_env = "gnu"))]
pub fn give_back(_after: &'static str) {}
