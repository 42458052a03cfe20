//! Prompts and tones played into a leg or a whole call.

use std::sync::Arc;

use crate::relay::LegId;

/// Names one prompt of a call; chosen by the caller of [`super::MediaCall::play_start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlayId(pub u32);

/// Who hears a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlayTarget {
    /// One leg.
    Leg(LegId),
    /// Every member of the call.
    Call,
}

/// What a prompt plays.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PlaySource {
    /// Decoded mono audio (a WAV file, decoded and resampled once by the engine and shared).
    Pcm {
        /// The samples.
        samples: Arc<[i16]>,
        /// Their rate, Hz.
        rate: u32,
    },
    /// A tone.
    Tone(ToneSpec),
}

/// A tone to play.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ToneSpec {
    /// A steady sine.
    Sine {
        /// Frequency, Hz.
        hz: f32,
        /// Level, dBm0.
        level_dbm0: f32,
    },
    /// A DTMF digit's two frequencies, steady.
    Dtmf(char),
    /// Ringback (the ITU 425 Hz or North American cadence, as the tone generator defines it).
    Ringback,
    /// Busy.
    Busy,
}
