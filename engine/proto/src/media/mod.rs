//! Decoded media on a call's worker: jitter buffers, the mixer with its hears-matrix,
//! transcoding, prompts and tones, DTMF.
//!
//! A call is *relayed* packet for packet (see [`crate::relay`]) while two legs with the same
//! codec talk to each other. When codecs differ, or a third party, a prompt, a supervisor or
//! a mixed recording joins, the call's legs are handed to a [`MediaCall`]: each leg's RTP
//! goes through its [`LegInput`] (jitter buffer, decoder, concealment, resampling to the
//! call's mixing rate) into 20 ms frames; on every tick of the worker's media clock the
//! mixer sums, per leg, what that leg may hear and [`LegOutput`] encodes and packetises it.
//!
//! Everything here is sans-IO and deterministic: time comes in as [`Micros`], packets come in
//! as bytes and go out through a callback.

pub mod call;
pub mod input;
pub mod jitter;
pub mod mixer;
pub mod output;
pub mod play;

pub use call::{MediaCall, MediaCallConfig, MediaStats};
pub use input::{FrameKind, InputConfig, InputStats, LegInput};
pub use jitter::{JitterBuffer, JitterConfig};
pub use output::LegOutput;
pub use play::{PlayId, PlaySource, PlayTarget, ToneSpec};

use switchboard_codecs::codec::CodecSpec;

use crate::relay::LegId;
use crate::time::Micros;

/// The length of a mixing frame (the media clock's period), ms.
pub const FRAME_MS: u32 = 20;

/// How one leg's media is decoded and encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLegConfig {
    /// Audio payload formats the leg may send to the engine (what its SDP offered or accepted).
    pub recv: Vec<CodecSpec>,
    /// The format the engine sends to the leg.
    pub send: CodecSpec,
    /// The `telephone-event` payload type the leg sends, if it negotiated one.
    pub recv_events: Option<u8>,
    /// The `telephone-event` payload type to send DTMF to the leg with; `None`: digits are
    /// played to it as in-band tones.
    pub send_events: Option<u8>,
    /// Packet time of the engine's output to the leg, ms (a multiple of [`FRAME_MS`]).
    pub ptime_ms: u32,
}

/// Where an output RTP stream carries on from, so that a leg moving from relaying to mixing
/// (or back) sees one stream: same SSRC, the next sequence number, a timestamp advanced by
/// the time elapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSeed {
    /// SSRC of the stream the leg received last.
    pub ssrc: u32,
    /// Last sequence number sent to the leg.
    pub seq: u16,
    /// Last timestamp sent to the leg.
    pub timestamp: u32,
    /// The RTP clock rate of that timestamp.
    pub clock_rate: u32,
    /// When that packet was sent.
    pub at: Micros,
}

/// Something a media call reports. Drain with [`MediaCall::poll_event`] after each tick.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MediaEvent {
    /// A DTMF digit ended (RFC 4733 event or in-band tone).
    Dtmf {
        /// The leg that sent it.
        leg: LegId,
        /// `0`–`9`, `*`, `#`, `A`–`D`.
        digit: char,
        /// How long it lasted, ms.
        duration_ms: u32,
        /// Where it was heard.
        source: DtmfSource,
    },
    /// A leg started or stopped talking (voice activity with hang-over).
    Talking {
        /// The leg.
        leg: LegId,
        /// Talking now.
        talking: bool,
    },
    /// A prompt or tone finished.
    PlayDone {
        /// The prompt.
        id: PlayId,
        /// Why it ended.
        reason: PlayEnd,
    },
}

/// How a DTMF digit arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfSource {
    /// RFC 4733 telephone-event packets.
    Rfc4733,
    /// In-band tones in the decoded audio.
    InBand,
}

impl DtmfSource {
    /// The name used in events.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rfc4733 => "rfc4733",
            Self::InBand => "inband",
        }
    }
}

/// Why a prompt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayEnd {
    /// Played to the end (every repetition).
    Finished,
    /// Stopped by a request.
    Stopped,
    /// Stopped by a DTMF digit from its leg.
    Dtmf,
    /// Its leg left.
    LegGone,
}

impl PlayEnd {
    /// The name used in events.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::Stopped => "stopped",
            Self::Dtmf => "dtmf",
            Self::LegGone => "leg_gone",
        }
    }
}

/// Why a media operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The leg is not part of the media call.
    #[error("unknown leg")]
    UnknownLeg,
    /// The leg is already part of the media call.
    #[error("leg already present")]
    LegExists,
    /// The call has as many members as it may.
    #[error("member limit reached")]
    TooManyMembers,
    /// A codec cannot be decoded or encoded here.
    #[error("unsupported codec: {0}")]
    Codec(String),
    /// A value is out of range (gain, ptime, digit, duration).
    #[error("invalid {0}")]
    Invalid(&'static str),
}
