pub static PROBES: &[u8] = aya::include_bytes_aligned!(env!("VIGIL_PROBES_OBJECT"));
