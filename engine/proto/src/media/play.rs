//! Prompts and tones played into a leg or a whole call.

use std::sync::Arc;

use switchboard_codecs::resample::Resampler;
use switchboard_codecs::tone::{Cadence, ToneGenerator, ToneLevel};

use super::MediaError;
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

/// Length of one repetition of a steady tone (sine, DTMF), ms.
pub const STEADY_TONE_REPEAT_MS: u32 = 1000;

/// A prompt being played: its source rendered at the call's mixing rate.
#[derive(Debug)]
pub(crate) struct Prompt {
    pub(crate) id: PlayId,
    pub(crate) target: PlayTarget,
    pub(crate) source: PlaySource,
    pub(crate) stop_on_dtmf: bool,
    /// Repetitions left after the current one; `None`: until stopped.
    repeats_left: Option<u32>,
    render: Render,
}

#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per prompt, built once; the tone state stays inline"
)]
enum Render {
    Pcm {
        samples: Vec<i16>,
        pos: usize,
    },
    Tone {
        generator: ToneGenerator,
        /// Frames in one repetition.
        frames_per_repeat: u32,
        frame: u32,
    },
}

fn tone_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Codec(e.to_string())
}

impl Prompt {
    /// A prompt rendered at `mix_rate`; `repeat` 0 plays until stopped.
    pub(crate) fn new(
        id: PlayId,
        target: PlayTarget,
        source: PlaySource,
        repeat: u32,
        stop_on_dtmf: bool,
        mix_rate: u32,
    ) -> Result<Self, MediaError> {
        let render = Self::render(&source, mix_rate)?;
        Ok(Self {
            id,
            target,
            source,
            stop_on_dtmf,
            repeats_left: repeat.checked_sub(1),
            render,
        })
    }

    fn render(source: &PlaySource, mix_rate: u32) -> Result<Render, MediaError> {
        match source {
            PlaySource::Pcm { samples, rate } => {
                if samples.len() > MAX_PCM_SAMPLES {
                    return Err(MediaError::Invalid("prompt length"));
                }
                let out = if *rate == mix_rate {
                    samples.to_vec()
                } else {
                    let mut r = Resampler::new(*rate, mix_rate).map_err(tone_error)?;
                    let mut out = vec![0; r.output_len(samples.len())];
                    let n = r.process(samples, &mut out);
                    out.truncate(n);
                    out
                };
                Ok(Render::Pcm {
                    samples: out,
                    pos: 0,
                })
            }
            PlaySource::Tone(spec) => {
                let (generator, cycle_ms) = match *spec {
                    ToneSpec::Sine { hz, level_dbm0 } => (
                        ToneGenerator::sine(mix_rate, hz, ToneLevel::Dbm0(level_dbm0)),
                        STEADY_TONE_REPEAT_MS,
                    ),
                    ToneSpec::Dtmf(digit) => (
                        ToneGenerator::dtmf(mix_rate, digit, Cadence::continuous()),
                        STEADY_TONE_REPEAT_MS,
                    ),
                    ToneSpec::Ringback => (ToneGenerator::ringback(mix_rate), 6000),
                    ToneSpec::Busy => (ToneGenerator::busy(mix_rate), 1000),
                };
                let generator = generator.map_err(tone_error)?;
                if let ToneSpec::Sine { level_dbm0, .. } = spec {
                    if !(-60.0..=3.0).contains(level_dbm0) {
                        return Err(MediaError::Invalid("tone level"));
                    }
                }
                Ok(Render::Tone {
                    generator,
                    frames_per_repeat: cycle_ms / super::FRAME_MS,
                    frame: 0,
                })
            }
        }
    }

    /// Renders the prompt again at another mixing rate, keeping its position.
    pub(crate) fn set_mix_rate(&mut self, old_rate: u32, mix_rate: u32) -> Result<(), MediaError> {
        let mut render = Self::render(&self.source, mix_rate)?;
        match (&self.render, &mut render) {
            (Render::Pcm { pos: old, .. }, Render::Pcm { pos, .. }) => {
                *pos = (*old as u64 * u64::from(mix_rate) / u64::from(old_rate.max(1))) as usize;
            }
            (Render::Tone { frame: old, .. }, Render::Tone { frame, .. }) => *frame = *old,
            _ => {}
        }
        self.render = render;
        Ok(())
    }

    /// Adds the next frame of the prompt to `mix` (at the mixing rate); returns `true` when
    /// the prompt finished with this frame.
    pub(crate) fn mix_into(&mut self, mix: &mut [i32], scratch: &mut [i16]) -> bool {
        match &mut self.render {
            Render::Pcm { samples, pos } => {
                if samples.is_empty() {
                    return true;
                }
                let mut i = 0;
                while i < mix.len() {
                    if *pos >= samples.len() {
                        match self.repeats_left {
                            Some(0) => return true,
                            Some(ref mut n) => *n -= 1,
                            None => {}
                        }
                        *pos = 0;
                    }
                    let take = (samples.len() - *pos).min(mix.len() - i);
                    for (m, s) in mix[i..i + take].iter_mut().zip(&samples[*pos..*pos + take]) {
                        *m += i32::from(*s);
                    }
                    *pos += take;
                    i += take;
                }
                *pos >= samples.len() && self.repeats_left == Some(0)
            }
            Render::Tone {
                generator,
                frames_per_repeat,
                frame,
            } => {
                let n = mix.len().min(scratch.len());
                generator.fill(&mut scratch[..n]);
                for (m, s) in mix.iter_mut().zip(&scratch[..n]) {
                    *m += i32::from(*s);
                }
                *frame += 1;
                if *frame >= (*frames_per_repeat).max(1) {
                    *frame = 0;
                    match self.repeats_left {
                        Some(0) => return true,
                        Some(ref mut r) => *r -= 1,
                        None => {}
                    }
                }
                false
            }
        }
    }
}

/// Longest PCM prompt accepted, samples (one hour at 48 kHz).
pub const MAX_PCM_SAMPLES: usize = 48_000 * 3600;
