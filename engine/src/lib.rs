//! # switchboard-engine
//!
//! The Switchboard media and routing engine: configuration, the runtime (`rt`), control
//! servers and the `switchboard` binary's commands.

#![warn(missing_docs)]
