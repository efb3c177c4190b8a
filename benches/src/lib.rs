//! cardvm's benchmarks (`benches/`) and the DESIGN §5 targets report
//! (`benches/examples/targets.rs`), in their own crate: building cardvm, its examples and its
//! tests never builds the Lua 5.4 peer (mlua, vendored C) or criterion.
//!
//! ```sh
//! cargo bench -p cardvm-bench --bench vm
//! cargo run --release -p cardvm-bench --example targets
//! ```
#![forbid(unsafe_code)]
