//! Shared code for ltxfs benches. The criterion benches live in `benches/`; the end-to-end
//! benches (real SQLite through real `ltxfs` processes) live in [`e2e`] and run from
//! `src/bin/e2e.rs` (full profile) or `benches/e2e.rs` (short profile, `cargo bench`).

pub mod e2e;
