//! # switchboard-proto
//!
//! Sans-IO protocol logic for Switchboard: RTP/RTCP, SDP offer/answer, NG (bencode) and native
//! (JSON) control messages, call and leg state. No sockets, no threads, no clocks: time is an
//! argument, and every type is driven by `handle_*` calls and drained with `poll_*`.

#![warn(missing_docs)]

pub mod bencode;
pub mod media;
pub mod ng;
pub mod relay;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod stats;
pub mod time;
