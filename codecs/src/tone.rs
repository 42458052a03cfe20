//! Tone generation into caller buffers: any sine, dual tones (DTMF), cadenced call-progress
//! tones (ringback, busy).
//!
//! A [`ToneGenerator`] sums up to [`MAX_COMPONENTS`] sines and gates them with a
//! [`Cadence`] of on/off steps. [`ToneGenerator::fill`] overwrites a caller buffer of i16 mono
//! PCM; calls may have any length, and the waveform is the same however the output is cut
//! into frames: the oscillators keep their phase across calls (and keep running through the
//! off steps), and the cadence is counted in samples, so on/off edges fall on exact sample
//! positions. Edges are hard switches, with no ramp. Nothing allocates after construction.
//!
//! # Levels
//!
//! Levels are set per component as [`ToneLevel::Dbm0`] or [`ToneLevel::Dbov`]:
//!
//! * dBm0: a full-scale sine (peak 32768) is +3.14 dBm0, the theoretical load capacity of
//!   ITU-T G.711 A-law (µ-law's is +3.17 dBm0). So 0 dBm0 is a sine of peak
//!   32768 × 10^(−3.14/20) ≈ 22 827.
//! * dBov: RMS relative to a full-scale square wave, as in ITU-T G.100.1 and
//!   [`crate::vad`]; a full-scale sine is −3.01 dBov, so dBm0 = dBov + 6.15.
//!
//! The sum of components saturates at the i16 range.
//!
//! # Presets
//!
//! * [`ToneGenerator::dtmf`]: the frequency pairs of the ITU-T Q.23 frequency allocation,
//!   low group at −7 dBm0 and high group at −5 dBm0 (the high group 2 dB stronger, within
//!   the twist limits receivers accept).
//! * [`ToneGenerator::ringback`]: North American (Precise Tone Plan) audible ringing,
//!   440 + 480 Hz at −19 dBm0 each, 2 s on / 4 s off.
//! * [`ToneGenerator::busy`]: North American busy, 480 + 620 Hz at −24 dBm0 each,
//!   0.5 s on / 0.5 s off.
//!
//! Other national tones come from [`ToneGenerator::new`] with a [`Cadence`]; for example the
//! common European ringing tone (425 Hz, 1 s on / 4 s off; ITU-T E.180 gives the ranges
//! administrations choose from):
//!
//! ```
//! use switchboard_codecs::tone::{Cadence, ToneComponent, ToneGenerator, ToneLevel};
//!
//! let cadence = Cadence::repeating(&[(1000, 4000)])?;
//! let tone = ToneComponent::new(425.0, ToneLevel::Dbm0(-10.0));
//! let mut ringing = ToneGenerator::new(8000, &[tone], cadence)?;
//! let mut frame = [0i16; 160];
//! ringing.fill(&mut frame);
//! # Ok::<(), switchboard_codecs::tone::ToneError>(())
//! ```

use std::f64::consts::TAU;

/// Most sine components one generator sums.
pub const MAX_COMPONENTS: usize = 4;

/// Most (on, off) steps in a [`Cadence`].
pub const MAX_CADENCE_STEPS: usize = 8;

/// Level of a full-scale sine in dBm0 (ITU-T G.711 A-law overload point).
#[allow(clippy::approx_constant)] // +3.14 dBm0 is G.711's figure, not an approximation of π
pub const FULL_SCALE_SINE_DBM0: f32 = 3.14;

/// Lowest supported sample rate, in Hz.
pub const MIN_SAMPLE_RATE: u32 = 8000;

/// Highest supported sample rate, in Hz.
pub const MAX_SAMPLE_RATE: u32 = 192_000;

/// Errors from building a tone generator.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ToneError {
    /// The sample rate is outside [`MIN_SAMPLE_RATE`]..=[`MAX_SAMPLE_RATE`].
    #[error("unsupported sample rate {sample_rate} Hz")]
    UnsupportedSampleRate {
        /// The rejected rate.
        sample_rate: u32,
    },
    /// A frequency is not finite, not positive, or not below half the sample rate.
    #[error("frequency {frequency_hz} Hz is outside (0, {nyquist_hz}) Hz")]
    FrequencyOutOfRange {
        /// The rejected frequency.
        frequency_hz: f32,
        /// Half the sample rate.
        nyquist_hz: f32,
    },
    /// A level is not finite.
    #[error("level is not a finite number")]
    InvalidLevel,
    /// Zero or more than [`MAX_COMPONENTS`] components were given.
    #[error("{count} tone components; expected 1..={MAX_COMPONENTS}")]
    ComponentCount {
        /// Components given.
        count: usize,
    },
    /// Zero or more than [`MAX_CADENCE_STEPS`] cadence steps were given, or a step is
    /// entirely zero.
    #[error("invalid cadence of {steps} steps")]
    InvalidCadence {
        /// Steps given.
        steps: usize,
    },
    /// The character is not a DTMF digit.
    #[error("{digit:?} is not a DTMF digit")]
    NotADigit {
        /// The rejected character.
        digit: char,
    },
}

/// Level of one tone component; see the [module docs](self) for the references.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ToneLevel {
    /// Power relative to 0 dBm0 (a full-scale sine is +3.14 dBm0).
    Dbm0(f32),
    /// RMS relative to a full-scale square wave (a full-scale sine is −3.01 dBov).
    Dbov(f32),
}

impl ToneLevel {
    /// Peak amplitude on the i16 scale of a sine at this level.
    pub fn peak_amplitude(self) -> f32 {
        match self {
            Self::Dbm0(l) => 32768.0 * 10f32.powf((l - FULL_SCALE_SINE_DBM0) / 20.0),
            Self::Dbov(l) => 32768.0 * std::f32::consts::SQRT_2 * 10f32.powf(l / 20.0),
        }
    }

    fn value(self) -> f32 {
        match self {
            Self::Dbm0(l) | Self::Dbov(l) => l,
        }
    }
}

/// One sine of a tone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToneComponent {
    /// Frequency in Hz.
    pub frequency_hz: f32,
    /// Level.
    pub level: ToneLevel,
}

impl ToneComponent {
    /// A component at `frequency_hz` and `level`.
    pub const fn new(frequency_hz: f32, level: ToneLevel) -> Self {
        Self {
            frequency_hz,
            level,
        }
    }
}

/// On/off pattern of a tone, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    steps: [(u32, u32); MAX_CADENCE_STEPS],
    len: usize,
    repeat: bool,
}

impl Cadence {
    /// Always on.
    pub const fn continuous() -> Self {
        Self {
            steps: [(0, 0); MAX_CADENCE_STEPS],
            len: 0,
            repeat: true,
        }
    }

    /// The (on ms, off ms) steps, repeated forever (e.g. `&[(400, 200), (400, 2000)]` for
    /// the UK double ring).
    pub fn repeating(steps: &[(u32, u32)]) -> Result<Self, ToneError> {
        Self::build(steps, true)
    }

    /// The (on ms, off ms) steps played once, then silence (e.g. one DTMF digit).
    pub fn once(steps: &[(u32, u32)]) -> Result<Self, ToneError> {
        Self::build(steps, false)
    }

    fn build(steps: &[(u32, u32)], repeat: bool) -> Result<Self, ToneError> {
        let invalid = ToneError::InvalidCadence { steps: steps.len() };
        if steps.is_empty()
            || steps.len() > MAX_CADENCE_STEPS
            || steps.iter().any(|&(on, off)| on == 0 && off == 0)
        {
            return Err(invalid);
        }
        let mut out = Self {
            steps: [(0, 0); MAX_CADENCE_STEPS],
            len: steps.len(),
            repeat,
        };
        out.steps[..steps.len()].copy_from_slice(steps);
        Ok(out)
    }

    /// The (on ms, off ms) steps; empty for a continuous tone.
    pub fn steps(&self) -> &[(u32, u32)] {
        &self.steps[..self.len]
    }

    /// Whether the steps repeat.
    pub fn is_repeating(&self) -> bool {
        self.repeat
    }
}

impl Default for Cadence {
    fn default() -> Self {
        Self::continuous()
    }
}

/// Low- and high-group frequencies of a DTMF digit (ITU-T Q.23 frequency allocation): `0`–`9`,
/// `*`, `#`, `A`–`D` (either case).
pub fn dtmf_frequencies(digit: char) -> Option<(f32, f32)> {
    const LOW: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
    const HIGH: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    let (row, col) = match digit.to_ascii_uppercase() {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    Some((LOW[row], HIGH[col]))
}

#[derive(Debug, Clone, Copy, Default)]
struct Oscillator {
    /// Phase in cycles, in [0, 1).
    phase: f64,
    /// Cycles per sample.
    increment: f64,
    /// Per-sample rotation (cos, sin).
    step: (f64, f64),
    amplitude: f64,
}

/// Phase-continuous, cadenced tone generator; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    sample_rate: u32,
    oscillators: [Oscillator; MAX_COMPONENTS],
    count: usize,
    cadence: Cadence,
    /// Index of the current cadence step.
    step: usize,
    /// Whether the current step is in its on part.
    on: bool,
    /// Samples left in the current on or off part.
    remaining: u64,
    finished: bool,
}

impl ToneGenerator {
    /// A generator summing `components`, gated by `cadence`.
    pub fn new(
        sample_rate: u32,
        components: &[ToneComponent],
        cadence: Cadence,
    ) -> Result<Self, ToneError> {
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&sample_rate) {
            return Err(ToneError::UnsupportedSampleRate { sample_rate });
        }
        if components.is_empty() || components.len() > MAX_COMPONENTS {
            return Err(ToneError::ComponentCount {
                count: components.len(),
            });
        }
        let nyquist_hz = sample_rate as f32 / 2.0;
        let mut oscillators = [Oscillator::default(); MAX_COMPONENTS];
        for (osc, c) in oscillators.iter_mut().zip(components) {
            if !(c.frequency_hz.is_finite() && c.frequency_hz > 0.0 && c.frequency_hz < nyquist_hz)
            {
                return Err(ToneError::FrequencyOutOfRange {
                    frequency_hz: c.frequency_hz,
                    nyquist_hz,
                });
            }
            if !c.level.value().is_finite() {
                return Err(ToneError::InvalidLevel);
            }
            let increment = f64::from(c.frequency_hz) / f64::from(sample_rate);
            let w = TAU * increment;
            *osc = Oscillator {
                phase: 0.0,
                increment,
                step: (w.cos(), w.sin()),
                amplitude: f64::from(c.level.peak_amplitude()),
            };
        }
        let mut generator = Self {
            sample_rate,
            oscillators,
            count: components.len(),
            cadence,
            step: 0,
            on: true,
            remaining: 0,
            finished: false,
        };
        generator.restart();
        Ok(generator)
    }

    /// A single sine, always on.
    pub fn sine(sample_rate: u32, frequency_hz: f32, level: ToneLevel) -> Result<Self, ToneError> {
        Self::new(
            sample_rate,
            &[ToneComponent::new(frequency_hz, level)],
            Cadence::continuous(),
        )
    }

    /// Two sines of the same level, always on.
    pub fn dual(
        sample_rate: u32,
        f1_hz: f32,
        f2_hz: f32,
        level: ToneLevel,
    ) -> Result<Self, ToneError> {
        Self::new(
            sample_rate,
            &[
                ToneComponent::new(f1_hz, level),
                ToneComponent::new(f2_hz, level),
            ],
            Cadence::continuous(),
        )
    }

    /// A DTMF digit (ITU-T Q.23 frequencies; low group −7 dBm0, high group −5 dBm0) gated by
    /// `cadence`, e.g. `Cadence::once(&[(100, 100)])` for one 100 ms digit and its pause.
    pub fn dtmf(sample_rate: u32, digit: char, cadence: Cadence) -> Result<Self, ToneError> {
        let (low, high) = dtmf_frequencies(digit).ok_or(ToneError::NotADigit { digit })?;
        Self::new(
            sample_rate,
            &[
                ToneComponent::new(low, ToneLevel::Dbm0(-7.0)),
                ToneComponent::new(high, ToneLevel::Dbm0(-5.0)),
            ],
            cadence,
        )
    }

    /// North American ringback: 440 + 480 Hz at −19 dBm0 each, 2 s on / 4 s off.
    pub fn ringback(sample_rate: u32) -> Result<Self, ToneError> {
        let level = ToneLevel::Dbm0(-19.0);
        Self::new(
            sample_rate,
            &[
                ToneComponent::new(440.0, level),
                ToneComponent::new(480.0, level),
            ],
            Cadence::repeating(&[(2000, 4000)])?,
        )
    }

    /// North American busy: 480 + 620 Hz at −24 dBm0 each, 0.5 s on / 0.5 s off.
    pub fn busy(sample_rate: u32) -> Result<Self, ToneError> {
        let level = ToneLevel::Dbm0(-24.0);
        Self::new(
            sample_rate,
            &[
                ToneComponent::new(480.0, level),
                ToneComponent::new(620.0, level),
            ],
            Cadence::repeating(&[(500, 500)])?,
        )
    }

    /// The sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Whether a [`Cadence::once`] pattern has completed (the output is silence from now).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Goes back to the start of the cadence; the oscillator phases continue.
    pub fn restart(&mut self) {
        self.step = 0;
        self.finished = false;
        self.on = true;
        self.remaining = match self.cadence.steps().first() {
            Some(&(on, _)) => self.ms_to_samples(on),
            None => u64::MAX,
        };
        self.skip_empty_parts();
    }

    /// Overwrites `out` with the next `out.len()` samples.
    pub fn fill(&mut self, out: &mut [i16]) {
        let mut rest = out;
        while !rest.is_empty() {
            let run = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(rest.len());
            let (now, later) = rest.split_at_mut(run);
            if self.on && !self.finished {
                self.synthesize(now);
            } else {
                now.fill(0);
                self.advance_phases(run);
            }
            rest = later;
            if self.remaining != u64::MAX {
                self.remaining -= run as u64;
                if self.remaining == 0 {
                    self.next_part();
                }
            }
        }
    }

    fn synthesize(&mut self, out: &mut [i16]) {
        // Each oscillator starts from its exact phase and rotates sample by sample; the
        // phase is then advanced arithmetically so rounding does not accumulate across calls.
        let mut state = [(0.0f64, 0.0f64); MAX_COMPONENTS];
        for (s, osc) in state.iter_mut().zip(&self.oscillators[..self.count]) {
            let a = TAU * osc.phase;
            *s = (a.cos(), a.sin());
        }
        let oscillators = &self.oscillators[..self.count];
        for sample in out.iter_mut() {
            let mut acc = 0.0f64;
            for (s, osc) in state.iter_mut().zip(oscillators) {
                acc += s.1 * osc.amplitude;
                let (c, si) = osc.step;
                *s = (s.0 * c - s.1 * si, s.0 * si + s.1 * c);
            }
            // `as` saturates at the i16 range.
            *sample = acc.round() as i16;
        }
        self.advance_phases(out.len());
    }

    fn advance_phases(&mut self, samples: usize) {
        for osc in &mut self.oscillators[..self.count] {
            osc.phase = (osc.phase + osc.increment * samples as f64).fract();
        }
    }

    fn next_part(&mut self) {
        self.next_part_once();
        self.skip_empty_parts();
    }

    /// Moves past parts of zero samples (a step with 0 ms on or off).
    fn skip_empty_parts(&mut self) {
        // Every step has a non-zero part (checked by `Cadence::build`), so this ends within
        // two passes over the steps.
        for _ in 0..=2 * MAX_CADENCE_STEPS {
            if self.remaining != 0 || self.finished {
                return;
            }
            self.next_part_once();
        }
    }

    fn next_part_once(&mut self) {
        let steps = self.cadence.steps();
        if self.on {
            self.on = false;
            self.remaining = steps.get(self.step).map_or(0, |s| self.ms_to_samples(s.1));
        } else {
            self.step += 1;
            if self.step >= steps.len() {
                if self.cadence.is_repeating() {
                    self.step = 0;
                } else {
                    self.finished = true;
                    self.remaining = u64::MAX;
                    return;
                }
            }
            self.on = true;
            self.remaining = steps.get(self.step).map_or(0, |s| self.ms_to_samples(s.0));
        }
    }

    fn ms_to_samples(&self, ms: u32) -> u64 {
        (u64::from(ms) * u64::from(self.sample_rate) + 500) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Power of `x` at `f` Hz (Goertzel), normalised so a sine of amplitude A gives A.
    fn amplitude_at(x: &[i16], f: f64, rate: f64) -> f64 {
        let w = TAU * f / rate;
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s = f64::from(v) + c * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let p = s1 * s1 + s2 * s2 - c * s1 * s2;
        2.0 * p.sqrt() / x.len() as f64
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    fn render(g: &mut ToneGenerator, n: usize) -> Vec<i16> {
        let mut v = vec![0i16; n];
        g.fill(&mut v);
        v
    }

    #[test]
    fn tone_frequency_is_at_the_dft_peak() {
        for rate in [8000u32, 16000, 48000] {
            for f in [425.0f32, 1000.0, 1633.0, 3000.0] {
                let mut g = ToneGenerator::sine(rate, f, ToneLevel::Dbm0(-10.0)).unwrap();
                let x = render(&mut g, rate as usize); // 1 s: 1 Hz resolution
                let at = |df: f64| amplitude_at(&x, f64::from(f) + df, f64::from(rate));
                let peak = at(0.0);
                for df in [-5.0, -2.0, -1.0, 1.0, 2.0, 5.0] {
                    assert!(at(df) < peak * 0.1, "rate {rate} f {f} df {df}");
                }
            }
        }
    }

    #[test]
    fn tone_level_accuracy() {
        let mut g = ToneGenerator::sine(8000, 1004.0, ToneLevel::Dbm0(-10.0)).unwrap();
        let x = render(&mut g, 8000);
        let expected_peak = 32768.0 * 10f64.powf((-10.0 - f64::from(FULL_SCALE_SINE_DBM0)) / 20.0);
        let db = 20.0 * (rms(&x) / (expected_peak / 2f64.sqrt())).log10();
        assert!(db.abs() < 0.02, "{db} dB");

        let mut g = ToneGenerator::sine(16000, 1004.0, ToneLevel::Dbov(-20.0)).unwrap();
        let x = render(&mut g, 16000);
        let dbov = 20.0 * (rms(&x) / 32768.0).log10();
        assert!((dbov + 20.0).abs() < 0.02, "{dbov} dBov");

        // Full-scale sine: +3.14 dBm0 reaches the i16 peak without wrapping.
        let mut g =
            ToneGenerator::sine(8000, 1000.0, ToneLevel::Dbm0(FULL_SCALE_SINE_DBM0)).unwrap();
        let x = render(&mut g, 800);
        assert!(x.iter().any(|&v| v >= 32760) && x.iter().any(|&v| v <= -32760));
    }

    #[test]
    fn tone_saturates_instead_of_wrapping() {
        let level = ToneLevel::Dbm0(3.0);
        let mut g = ToneGenerator::dual(8000, 500.0, 1000.0, level).unwrap();
        let x = render(&mut g, 800);
        let amp = f64::from(level.peak_amplitude());
        let mut clipped = 0;
        for (n, &v) in x.iter().enumerate() {
            let t = n as f64 / 8000.0;
            let exact = amp * ((TAU * 500.0 * t).sin() + (TAU * 1000.0 * t).sin());
            let expected = exact.clamp(-32768.0, 32767.0);
            clipped += usize::from(exact.abs() > 32767.0);
            assert!((f64::from(v) - expected).abs() <= 1.0, "sample {n}");
        }
        assert!(clipped > 0);
    }

    #[test]
    fn tone_matches_analytic_sine_and_is_continuous_across_frames() {
        let rate = 8000.0f64;
        let mut whole = ToneGenerator::dual(8000, 697.0, 1209.0, ToneLevel::Dbm0(-6.0)).unwrap();
        let reference = render(&mut whole, 40_000);
        let amp = f64::from(ToneLevel::Dbm0(-6.0).peak_amplitude());
        for (n, &v) in reference.iter().enumerate() {
            let t = n as f64 / rate;
            let exact = amp * ((TAU * 697.0 * t).sin() + (TAU * 1209.0 * t).sin());
            assert!((f64::from(v) - exact).abs() <= 1.0, "sample {n}");
        }
        // Odd frame sizes, including single samples.
        let mut chunked = ToneGenerator::dual(8000, 697.0, 1209.0, ToneLevel::Dbm0(-6.0)).unwrap();
        let mut out = vec![0i16; reference.len()];
        let mut pos = 0;
        let mut size = 1;
        while pos < out.len() {
            let end = (pos + size).min(out.len());
            chunked.fill(&mut out[pos..end]);
            pos = end;
            size = size * 7 % 331 + 1;
        }
        let max_diff = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();
        assert!(max_diff <= 1, "max diff {max_diff}");
    }

    /// Checks `cadenced` equals the continuous tone inside the on windows and is exactly zero
    /// outside.
    fn check_cadence(
        rate: u32,
        mut cadenced: ToneGenerator,
        mut continuous: ToneGenerator,
        on_off: &[(u32, u32)],
        total_ms: u32,
    ) {
        let n = (u64::from(total_ms) * u64::from(rate) / 1000) as usize;
        let mut x = vec![0i16; n];
        // Frames of 20 ms, as a media worker would call it.
        for frame in x.chunks_mut(rate as usize / 50) {
            cadenced.fill(frame);
        }
        let reference = render(&mut continuous, n);
        let mut mask = Vec::with_capacity(n);
        'outer: loop {
            for &(on, off) in on_off {
                for (len, value) in [(on, true), (off, false)] {
                    for _ in 0..(len as usize * rate as usize / 1000) {
                        if mask.len() == n {
                            break 'outer;
                        }
                        mask.push(value);
                    }
                }
            }
        }
        for i in 0..n {
            let expected = if mask[i] { reference[i] } else { 0 };
            assert_eq!(x[i], expected, "sample {i} (on = {})", mask[i]);
        }
    }

    #[test]
    fn tone_cadence_busy_and_ringback_exact_in_samples() {
        for rate in [8000, 16000, 48000] {
            let level = ToneLevel::Dbm0(-24.0);
            check_cadence(
                rate,
                ToneGenerator::busy(rate).unwrap(),
                ToneGenerator::dual(rate, 480.0, 620.0, level).unwrap(),
                &[(500, 500)],
                3000,
            );
        }
        let level = ToneLevel::Dbm0(-19.0);
        check_cadence(
            8000,
            ToneGenerator::ringback(8000).unwrap(),
            ToneGenerator::dual(8000, 440.0, 480.0, level).unwrap(),
            &[(2000, 4000)],
            13_000,
        );
    }

    #[test]
    fn tone_cadence_configurable_eu_and_double_ring() {
        let c = ToneComponent::new(425.0, ToneLevel::Dbm0(-10.0));
        let steps = [(400, 200), (400, 2000)];
        check_cadence(
            16000,
            ToneGenerator::new(16000, &[c], Cadence::repeating(&steps).unwrap()).unwrap(),
            ToneGenerator::new(16000, &[c], Cadence::continuous()).unwrap(),
            &steps,
            7000,
        );
        let eu = Cadence::repeating(&[(1000, 4000)]).unwrap();
        let mut g = ToneGenerator::new(8000, &[c], eu).unwrap();
        let x = render(&mut g, 8000 * 5);
        assert!(x[..8000].iter().any(|&v| v != 0));
        assert!(x[8000..].iter().all(|&v| v == 0));
        let amp = amplitude_at(&x[..8000], 425.0, 8000.0);
        let expected = f64::from(ToneLevel::Dbm0(-10.0).peak_amplitude());
        assert!((amp / expected - 1.0).abs() < 0.01);
    }

    #[test]
    fn tone_once_cadence_finishes() {
        let mut g = ToneGenerator::dtmf(8000, '5', Cadence::once(&[(50, 30)]).unwrap()).unwrap();
        let x = render(&mut g, 1000);
        assert!(g.is_finished());
        assert!(x[..400].iter().any(|&v| v != 0));
        assert!(x[400..].iter().all(|&v| v == 0));
        g.restart();
        assert!(!g.is_finished());
        assert!(render(&mut g, 400).iter().any(|&v| v != 0));
        // A step that is only silence is allowed.
        let c = Cadence::repeating(&[(0, 10), (10, 0)]).unwrap();
        let mut g = ToneGenerator::dtmf(8000, '1', c).unwrap();
        let x = render(&mut g, 240);
        assert!(x[..80].iter().all(|&v| v == 0));
        assert!(x[80..160].iter().any(|&v| v != 0));
        assert!(x[160..240].iter().all(|&v| v == 0));
    }

    #[test]
    fn tone_rejects_bad_parameters() {
        let l = ToneLevel::Dbm0(-10.0);
        assert!(matches!(
            ToneGenerator::sine(4000, 100.0, l),
            Err(ToneError::UnsupportedSampleRate { .. })
        ));
        assert!(matches!(
            ToneGenerator::sine(8000, 4000.0, l),
            Err(ToneError::FrequencyOutOfRange { .. })
        ));
        assert!(ToneGenerator::sine(8000, f32::NAN, l).is_err());
        assert!(ToneGenerator::sine(8000, -5.0, l).is_err());
        assert_eq!(
            ToneGenerator::sine(8000, 100.0, ToneLevel::Dbm0(f32::INFINITY)).err(),
            Some(ToneError::InvalidLevel)
        );
        assert!(ToneGenerator::new(8000, &[], Cadence::continuous()).is_err());
        assert!(
            ToneGenerator::new(
                8000,
                &[ToneComponent::new(100.0, l); 5],
                Cadence::continuous()
            )
            .is_err()
        );
        assert!(Cadence::repeating(&[]).is_err());
        assert!(Cadence::repeating(&[(0, 0)]).is_err());
        assert!(Cadence::once(&[(1, 1); 9]).is_err());
        assert!(ToneGenerator::dtmf(8000, 'x', Cadence::continuous()).is_err());
    }

    #[test]
    fn tone_dtmf_is_detected_by_the_detector() {
        use crate::dtmf::{DtmfDetector, DtmfEvent};
        let keys = "0123456789*#ABCD";
        for rate in [8000u32, 16000, 48000] {
            let mut detector = DtmfDetector::new(rate).unwrap();
            let mut got = String::new();
            let mut frame = vec![0i16; rate as usize / 50];
            for key in keys.chars() {
                // 50 ms digit, 50 ms pause, generated and detected frame by frame.
                let cadence = Cadence::once(&[(50, 50)]).unwrap();
                let mut g = ToneGenerator::dtmf(rate, key, cadence).unwrap();
                while !g.is_finished() {
                    g.fill(&mut frame);
                    detector.process(&frame, |e| {
                        if let DtmfEvent::Begin(d) = e {
                            got.push(d.digit);
                        }
                    });
                }
            }
            assert_eq!(got, keys, "rate {rate}");
        }
    }

    #[test]
    fn tone_dtmf_frequencies_match_q23() {
        assert_eq!(dtmf_frequencies('1'), Some((697.0, 1209.0)));
        assert_eq!(dtmf_frequencies('0'), Some((941.0, 1336.0)));
        assert_eq!(dtmf_frequencies('#'), Some((941.0, 1477.0)));
        assert_eq!(dtmf_frequencies('d'), Some((941.0, 1633.0)));
        assert_eq!(dtmf_frequencies('E'), None);
        let mut g = ToneGenerator::dtmf(8000, '9', Cadence::continuous()).unwrap();
        let x = render(&mut g, 8000);
        let low = amplitude_at(&x, 852.0, 8000.0);
        let high = amplitude_at(&x, 1477.0, 8000.0);
        assert!((20.0 * (high / low).log10() - 2.0).abs() < 0.05);
    }
}
