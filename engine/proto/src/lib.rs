//! # switchboard-proto
//!
//! Sans-IO protocol logic for Switchboard: RTP/RTCP, SDP offer/answer, NG (bencode) and native
//! (JSON) control messages, call and leg state. No sockets, no threads, no clocks: time is an
//! argument, and every type is driven by `handle_*` calls and drained with `poll_*`.

#![warn(missing_docs)]
