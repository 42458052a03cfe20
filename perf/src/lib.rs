//! # switchboard-perf
//!
//! Criterion micro-benchmarks of Switchboard's codecs, parsers, mixer and router decisions.
//! The benchmarks live in `benches/`; run them with `cargo bench -p switchboard-perf`.
//! Figures go into `docs/performance.md` with the command that produced them.

#![warn(missing_docs)]
