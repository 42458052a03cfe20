//! # switchboard-router
//!
//! The ACD router: queues, agents, tasks, skills, priorities and offers, as a pure,
//! deterministic state machine with no I/O and no clock (time is an argument).

#![warn(missing_docs)]
