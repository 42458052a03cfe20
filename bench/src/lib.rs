//! `switchboard-load`: the load harness that measures a media relay from the outside.
//!
//! It drives any server that speaks rtpengine's NG protocol (Switchboard or rtpengine itself)
//! over its control socket, sends real-sized RTP through it on loopback, and reports loss,
//! added latency (hdrhistogram percentiles) and the CPU time the target spent per forwarded
//! packet, as a text table or one JSON object. Scenarios are subcommands sharing one set of
//! options ([`cli`]) and one report format ([`report`]).
//!
//! Modules:
//! - [`acd`]: the ACD scenario — the router in virtual time against Erlang C/A.
//! - [`relay`]: the relay and record scenarios — N calls set up with `offer`/`answer`, both
//!   directions streamed, then `delete`.
//! - [`mix`]: transcode (NG), conference and barge (native protocol): media the target
//!   re-encodes or mixes.
//! - [`fork`]: media forks to a WebSocket sink inside the harness (native protocol), with
//!   and without conversation analytics.
//! - [`probe`]: the kernel's own cost per packet: a minimal recvmmsg/sendmmsg reflector.
//! - [`ramp`]: `--ramp`, load raised step by step to find the capacity.
//! - [`media`]: real speech (`--media` WAV or espeak-ng) pre-encoded per codec.
//! - [`chart`]: `--svg DIR` charts drawn with plotters.
//! - [`doc`]: the generated section of `docs/performance.md` from a `make bench` run.
//! - [`ng`]: a blocking NG client (JSON over UDP, retransmission on timeout).
//! - [`native`]: a blocking client of Switchboard's native control protocol.
//! - [`sdp`], [`rtp`], [`seq`]: the SDP the harness offers and reads back, the packets and their
//!   probe, per-stream sequence accounting (RFC 3550 §A.1, §A.3).
//! - [`procfs`]: CPU time of the target, the harness and the machine.
//! - [`sys`]: the only `unsafe` code: clock, batched UDP I/O, epoll, signals.
#![warn(missing_docs)]

pub mod acd;
pub mod chart;
pub mod cli;
pub mod doc;
pub mod fork;
pub mod media;
pub mod mix;
pub mod native;
pub mod ng;
pub mod probe;
pub mod procfs;
pub mod ramp;
pub mod relay;
pub mod report;
pub mod rtp;
pub mod sdp;
pub mod seq;
pub mod sys;

/// The error a run returns when SIGINT or SIGTERM stopped it (after cleaning up its calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}
