//! # switchboard-engine
//!
//! The Switchboard media and routing engine: configuration, the runtime ([`rt`]: the only
//! I/O on the media path), media workers, control servers and the `switchboard` binary's
//! commands.
//!
//! See `docs/architecture.md` for the threads, who owns which state and the message paths.

#![warn(missing_docs)]

pub mod acd;
pub mod cdr;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod fork;
pub mod http;
pub mod media;
pub mod metrics;
pub mod record;
pub mod rt;
pub mod serve;
pub mod worker;
