//! Shared helpers for ltxfs benches. The benches themselves live in `benches/`.
