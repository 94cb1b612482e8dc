//! Where events go. One file per sink.
pub mod stdout;
