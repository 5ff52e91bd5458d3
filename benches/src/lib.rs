//! Criterion benchmarks of the hot layer ops live in `benches/ops.rs`; this library is
//! empty (Cargo needs a target besides the benches).
