//! Streaming sample-rate conversion of mono 16-bit PCM between 8, 16 and 48 kHz.
//!
//! [`Resampler`] converts one audio stream in any of the six directions between the
//! telephony (8 kHz), wideband (16 kHz) and Opus/WebRTC (48 kHz) rates, or passes it
//! through unchanged when both rates are equal. The ratios are the integers 2, 3 and 6,
//! so each direction is a single polyphase FIR stage: upsampling by `L` inserts `L - 1`
//! zeros per input sample and low-pass filters (computing only the `L` non-trivial phases),
//! downsampling by `L` low-pass filters and keeps every `L`-th sample.
//!
//! # Filter
//!
//! One linear-phase windowed-sinc low-pass per ratio, Kaiser window, designed at the high
//! rate with the band edges expressed relative to the lower rate `f_low`:
//!
//! | band | edge | response |
//! | --- | --- | --- |
//! | passband | up to `0.45 × f_low` (3.6 kHz at 8 kHz, 7.2 kHz at 16 kHz) | flat within ±0.01 dB |
//! | stopband | from `0.5 × f_low` (the lower rate's Nyquist frequency) | at least 70 dB down |
//!
//! For downsampling every input component above the output Nyquist frequency is removed
//! before it can alias; for upsampling every image of the input spectrum is removed. The
//! filter has `2 × 47 × L + 1` taps at the high rate (565 for 8 ↔ 48 kHz), so the group
//! delay is a whole number of samples at either rate: 47 samples at the lower rate
//! ([`Resampler::delay_samples`] gives it at the output rate), 5.9 ms for 8 kHz and 2.9 ms
//! for 16 kHz. Arithmetic is `f32`; the output is rounded to nearest and saturated to the
//! `i16` range. A 20 ms frame costs about 92 000 multiply-adds when one side is 48 kHz and
//! about 31 000 for 8 ↔ 16 kHz.
//!
//! # Drive contract
//!
//! Create one [`Resampler`] per stream and pass consecutive chunks of that stream to
//! [`Resampler::process`]. The filter history is kept between calls, so splitting a stream
//! into chunks of any sizes yields exactly the same output samples as converting it in one
//! call. [`Resampler::reset`] starts a new stream.
//!
//! Output length: after `T` input samples in total, the stream has produced `T × L`
//! samples when upsampling and `ceil(T / L)` when downsampling. Hence a call with `n`
//! input samples produces exactly `n × to / from` samples whenever `n` is a multiple of
//! `from / gcd(from, to)` (1 when upsampling, `L` when downsampling), whatever was fed
//! before — in particular for 20 ms frames (160, 320 or 960 samples). Other chunk sizes
//! produce `floor` or `ceil` of that; [`Resampler::output_len`] gives the exact count for
//! the next call.
//!
//! No allocation happens after [`Resampler::new`]: the coefficients and a fixed-size
//! history are allocated there once.

use std::cmp::Ordering;
use std::fmt;

/// Sample rates the resampler converts between, in Hz.
pub const SUPPORTED_RATES: [u32; 3] = [8_000, 16_000, 48_000];

/// Half the filter length in samples at the lower rate; the FIR spans
/// `2 × L × HALF_LENGTH + 1` taps at the higher rate.
const HALF_LENGTH: usize = 47;

/// Kaiser window shape parameter β. With [`HALF_LENGTH`] and the band edges above, the
/// stopband attenuation exceeds 70 dB.
const KAISER_BETA: f64 = 7.3;

/// Passband edge as a fraction of the lower sample rate.
const PASSBAND_EDGE: f64 = 0.45;

/// Stopband edge as a fraction of the lower sample rate (its Nyquist frequency).
const STOPBAND_EDGE: f64 = 0.5;

/// The dot products run over this many independent accumulators, so the compiler can keep
/// them in SIMD registers; filter lengths are padded with zero taps to a multiple of it.
const LANES: usize = 16;

/// Errors from [`Resampler::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResampleError {
    /// One of the rates is not in [`SUPPORTED_RATES`].
    #[error("unsupported resampling {from_hz} Hz -> {to_hz} Hz (supported: 8000, 16000, 48000)")]
    UnsupportedRate {
        /// The requested input rate in Hz.
        from_hz: u32,
        /// The requested output rate in Hz.
        to_hz: u32,
    },
}

/// Which way the rate changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Same rate: samples are copied.
    Identity,
    /// Output rate is `factor` times the input rate.
    Up,
    /// Input rate is `factor` times the output rate.
    Down,
}

/// The most recent input samples, as a contiguous window.
///
/// Each sample is stored twice, at `pos` and `pos + len`, so the last `len` samples are
/// always the contiguous slice `buf[pos + 1..=pos + len]`, oldest first.
#[derive(Debug, Clone)]
struct History {
    buf: Vec<f32>,
    len: usize,
    pos: usize,
}

impl History {
    fn new(len: usize) -> Self {
        Self {
            buf: vec![0.0; 2 * len],
            len,
            pos: 0,
        }
    }

    #[inline]
    fn push(&mut self, sample: i16) {
        self.pos += 1;
        if self.pos == self.len {
            self.pos = 0;
        }
        let value = f32::from(sample);
        if let Some(slot) = self.buf.get_mut(self.pos) {
            *slot = value;
        }
        if let Some(slot) = self.buf.get_mut(self.pos + self.len) {
            *slot = value;
        }
    }

    /// The last `len` samples, oldest first.
    #[inline]
    fn window(&self) -> &[f32] {
        self.buf
            .get(self.pos + 1..=self.pos + self.len)
            .unwrap_or_default()
    }

    fn clear(&mut self) {
        self.buf.fill(0.0);
        self.pos = 0;
    }
}

/// Streaming sample-rate converter for one mono 16-bit stream.
///
/// See the [module documentation](self) for the filter and the drive contract.
///
/// ```
/// use switchboard_codecs::resample::Resampler;
///
/// let mut up = Resampler::new(8_000, 48_000)?;
/// let frame = [0i16; 160]; // 20 ms at 8 kHz
/// let mut out = [0i16; 960]; // 20 ms at 48 kHz
/// assert_eq!(up.output_len(frame.len()), 960);
/// assert_eq!(up.process(&frame, &mut out), 960);
/// # Ok::<(), switchboard_codecs::resample::ResampleError>(())
/// ```
#[derive(Clone)]
pub struct Resampler {
    from_hz: u32,
    to_hz: u32,
    direction: Direction,
    /// Rate ratio `L` (1 for identity).
    factor: usize,
    /// Taps per dot product: per phase when upsampling, the whole FIR when downsampling.
    taps: usize,
    /// Time-reversed coefficients: `factor` phases of `taps` each when upsampling,
    /// one filter of `taps` when downsampling, empty for identity.
    coefs: Vec<f32>,
    history: History,
    /// Downsampling: index modulo `factor` of the next input sample; an output sample is
    /// produced when a sample with index 0 arrives.
    phase: usize,
}

impl fmt::Debug for Resampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resampler")
            .field("from_hz", &self.from_hz)
            .field("to_hz", &self.to_hz)
            .field("taps", &self.taps)
            .field("delay_samples", &self.delay_samples())
            .finish_non_exhaustive()
    }
}

impl Resampler {
    /// Creates a converter from `from_hz` to `to_hz`; both must be in [`SUPPORTED_RATES`].
    ///
    /// This designs the filter and allocates the coefficient and history buffers; nothing
    /// allocates afterwards.
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, ResampleError> {
        if !SUPPORTED_RATES.contains(&from_hz) || !SUPPORTED_RATES.contains(&to_hz) {
            return Err(ResampleError::UnsupportedRate { from_hz, to_hz });
        }
        // Every supported rate divides 48 kHz, so the larger is an integer multiple of the
        // smaller; the ratio is at most 6.
        let (direction, factor) = match from_hz.cmp(&to_hz) {
            Ordering::Equal => (Direction::Identity, 1),
            Ordering::Less => (Direction::Up, (to_hz / from_hz) as usize),
            Ordering::Greater => (Direction::Down, (from_hz / to_hz) as usize),
        };
        let (taps, coefs) = match direction {
            Direction::Identity => (0, Vec::new()),
            Direction::Up => up_coefficients(factor),
            Direction::Down => down_coefficients(factor),
        };
        Ok(Self {
            from_hz,
            to_hz,
            direction,
            factor,
            taps,
            coefs,
            history: History::new(taps),
            phase: 0,
        })
    }

    /// Input sample rate in Hz.
    #[must_use]
    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    /// Output sample rate in Hz.
    #[must_use]
    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Converts the next chunk of the stream, writing to `out`; returns the number of
    /// samples written.
    ///
    /// All of `input` is always consumed. The call produces
    /// [`output_len(input.len())`](Self::output_len) samples; size `out` for that. If `out`
    /// is shorter, it is filled and the remaining output samples of this call are dropped,
    /// while the stream position still advances by the whole input (the next call continues
    /// where this input ended). Never panics, whatever the lengths.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> usize {
        match self.direction {
            Direction::Identity => {
                let n = input.len().min(out.len());
                for (o, &x) in out.iter_mut().zip(input) {
                    *o = x;
                }
                n
            }
            Direction::Up => self.process_up(input, out),
            Direction::Down => self.process_down(input, out),
        }
    }

    /// Number of samples the next [`process`](Self::process) call with `input_len` input
    /// samples produces (given a large enough output buffer).
    ///
    /// This is `input_len × to / from` when `input_len` is a multiple of `from / gcd(from,
    /// to)`; otherwise it depends on how many samples the stream has received so far.
    #[must_use]
    pub fn output_len(&self, input_len: usize) -> usize {
        match self.direction {
            Direction::Identity => input_len,
            Direction::Up => input_len.saturating_mul(self.factor),
            Direction::Down => {
                // Inputs to consume before the next one that produces an output sample.
                let first = (self.factor - self.phase) % self.factor;
                if input_len > first {
                    (input_len - 1 - first) / self.factor + 1
                } else {
                    0
                }
            }
        }
    }

    /// Forgets the stream: clears the filter history, as if newly created.
    pub fn reset(&mut self) {
        self.history.clear();
        self.phase = 0;
    }

    /// Group delay of the filter in samples at the output rate.
    ///
    /// An input component at stream time `t` appears at output time `t` plus this many
    /// output samples (0 for identity). When upsampling, the filter's centre tap puts input
    /// sample `k` at output sample `k × L + delay_samples()`.
    #[must_use]
    pub fn delay_samples(&self) -> usize {
        match self.direction {
            Direction::Identity => 0,
            Direction::Up => self.factor * HALF_LENGTH,
            Direction::Down => HALF_LENGTH,
        }
    }

    fn process_up(&mut self, input: &[i16], out: &mut [i16]) -> usize {
        let mut written = 0;
        for &x in input {
            self.history.push(x);
            let window = self.history.window();
            let free = out.get_mut(written..).unwrap_or_default();
            // `taps` is non-zero in upsampling mode (set by `up_coefficients`), which
            // `chunks_exact` requires.
            for (o, phase) in free.iter_mut().zip(self.coefs.chunks_exact(self.taps)) {
                *o = saturate(dot(window, phase));
                written += 1;
            }
        }
        written
    }

    fn process_down(&mut self, input: &[i16], out: &mut [i16]) -> usize {
        let mut written = 0;
        for &x in input {
            self.history.push(x);
            if self.phase == 0 {
                if let Some(o) = out.get_mut(written) {
                    *o = saturate(dot(self.history.window(), &self.coefs));
                    written += 1;
                }
            }
            self.phase += 1;
            if self.phase == self.factor {
                self.phase = 0;
            }
        }
        written
    }
}

/// Dot product of two equally long slices whose length is a multiple of [`LANES`].
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum()
}

/// Rounds to nearest (half away from zero) and saturates to the `i16` range; the float to
/// integer `as` conversion truncates toward zero and saturates.
#[inline]
fn saturate(y: f32) -> i16 {
    (y + 0.5f32.copysign(y)) as i16
}

/// Rounds `n` up to a multiple of [`LANES`].
fn padded(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// Kaiser-windowed sinc low-pass for rate ratio `factor`, at the higher rate:
/// `2 × factor × HALF_LENGTH + 1` taps, cutoff midway between the passband and stopband
/// edges, unnormalised.
fn prototype(factor: usize) -> Vec<f64> {
    let len = 2 * factor * HALF_LENGTH + 1;
    let center = (factor * HALF_LENGTH) as f64;
    // Cutoff in cycles per high-rate sample.
    let cutoff = (PASSBAND_EDGE + STOPBAND_EDGE) / 2.0 / factor as f64;
    let i0_beta = bessel_i0(KAISER_BETA);
    (0..len)
        .map(|k| {
            let t = k as f64 - center;
            let x = 2.0 * cutoff * t;
            let sinc = if t == 0.0 {
                1.0
            } else {
                (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
            };
            let r = t / center;
            let window = bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
            2.0 * cutoff * sinc * window
        })
        .collect()
}

/// Polyphase coefficients for upsampling by `factor`: returns the taps per phase and
/// `factor` time-reversed phases, each scaled to unit DC gain.
fn up_coefficients(factor: usize) -> (usize, Vec<f32>) {
    let h = prototype(factor);
    let taps = padded(h.len().div_ceil(factor));
    let mut coefs = vec![0.0f32; factor * taps];
    for (p, phase) in coefs.chunks_exact_mut(taps).enumerate() {
        // Phase p computes output sample n × factor + p from inputs n, n - 1, …:
        // tap i multiplies input n - i with h[i × factor + p].
        let tap = |i: usize| h.get(i * factor + p).copied().unwrap_or(0.0);
        let gain: f64 = (0..taps).map(tap).sum();
        for (j, c) in phase.iter_mut().enumerate() {
            *c = (tap(taps - 1 - j) / gain) as f32;
        }
    }
    (taps, coefs)
}

/// Coefficients for downsampling by `factor`: returns the padded length and the
/// time-reversed filter scaled to unit DC gain.
fn down_coefficients(factor: usize) -> (usize, Vec<f32>) {
    let h = prototype(factor);
    let taps = padded(h.len());
    let gain: f64 = h.iter().sum();
    let mut coefs = vec![0.0f32; taps];
    for (j, c) in coefs.iter_mut().enumerate() {
        *c = (h.get(taps - 1 - j).copied().unwrap_or(0.0) / gain) as f32;
    }
    (taps, coefs)
}

/// Modified Bessel function of the first kind, order 0, by its power series.
fn bessel_i0(x: f64) -> f64 {
    let half = x / 2.0;
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut m = 1.0;
    while term > sum * 1e-16 {
        term *= (half / m) * (half / m);
        sum += term;
        m += 1.0;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::f64::consts::PI;

    /// All supported (from, to) pairs.
    fn all_pairs() -> Vec<(u32, u32)> {
        let mut pairs = Vec::new();
        for &from in &SUPPORTED_RATES {
            for &to in &SUPPORTED_RATES {
                pairs.push((from, to));
            }
        }
        pairs
    }

    fn sine(freq: f64, rate: u32, amplitude: f64, len: usize) -> Vec<i16> {
        (0..len)
            .map(|n| {
                let v = amplitude * (2.0 * PI * freq * n as f64 / f64::from(rate)).sin();
                v.round() as i16
            })
            .collect()
    }

    fn rms(x: &[f64]) -> f64 {
        (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.log10()
    }

    /// Converts a whole signal in one call.
    fn convert(from: u32, to: u32, input: &[i16]) -> Vec<i16> {
        let mut r = Resampler::new(from, to).unwrap();
        let mut out = vec![0i16; r.output_len(input.len())];
        let n = r.process(input, &mut out);
        assert_eq!(n, out.len());
        out
    }

    /// Splits `y` into the component at `freq` (least-squares fit of a sine and cosine,
    /// exact for a whole number of periods) and the residual; returns their RMS values.
    fn tone_and_residual(y: &[i16], freq: f64, rate: u32) -> (f64, f64) {
        let w = 2.0 * PI * freq / f64::from(rate);
        let n = y.len() as f64;
        let (mut a, mut b) = (0.0, 0.0);
        for (k, &v) in y.iter().enumerate() {
            a += f64::from(v) * (w * k as f64).cos();
            b += f64::from(v) * (w * k as f64).sin();
        }
        let (a, b) = (2.0 * a / n, 2.0 * b / n);
        let residual: Vec<f64> = y
            .iter()
            .enumerate()
            .map(|(k, &v)| f64::from(v) - a * (w * k as f64).cos() - b * (w * k as f64).sin())
            .collect();
        ((a * a + b * b).sqrt() / 2f64.sqrt(), rms(&residual))
    }

    /// Steady-state output of a tone at `freq` through `from -> to`: the output after the
    /// filter has filled, over a window of whole 10 Hz periods (100 ms).
    fn steady_output(from: u32, to: u32, freq: f64, amplitude: f64) -> Vec<i16> {
        let r = Resampler::new(from, to).unwrap();
        // Skip twice the delay (the full filter span) plus a margin.
        let skip = 2 * r.delay_samples() + 8;
        let window = to as usize / 10;
        let input_len = (skip + window) * from as usize / to as usize + 8;
        let out = convert(from, to, &sine(freq, from, amplitude, input_len));
        out[skip..skip + window].to_vec()
    }

    #[test]
    fn rejects_unsupported_rates() {
        for (from, to) in [(44_100, 48_000), (8_000, 0), (0, 0), (32_000, 16_000)] {
            assert_eq!(
                Resampler::new(from, to).unwrap_err(),
                ResampleError::UnsupportedRate {
                    from_hz: from,
                    to_hz: to
                }
            );
        }
        for (from, to) in all_pairs() {
            let r = Resampler::new(from, to).unwrap();
            assert_eq!((r.from_hz(), r.to_hz()), (from, to));
        }
    }

    #[test]
    fn frame_lengths_are_exact() {
        for (from, to) in all_pairs() {
            let mut r = Resampler::new(from, to).unwrap();
            let frame = vec![100i16; from as usize / 50];
            let mut out = vec![0i16; to as usize / 50 + 10];
            for _ in 0..3 {
                assert_eq!(r.output_len(frame.len()), to as usize / 50);
                assert_eq!(r.process(&frame, &mut out), to as usize / 50);
            }
        }
    }

    #[test]
    fn passband_is_flat() {
        for (from, to) in all_pairs() {
            let f_low = from.min(to);
            let edge = PASSBAND_EDGE * f64::from(f_low);
            let mut freqs = vec![100.0, 500.0, 1000.0, 2000.0, 3000.0, 3400.0, 3600.0];
            if f_low >= 16_000 {
                freqs.extend([5000.0, 6400.0, 7000.0, 7200.0]);
            }
            for freq in freqs.into_iter().filter(|&f| f <= edge) {
                let amplitude = 16_000.0;
                let y = steady_output(from, to, freq, amplitude);
                let y: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
                let gain = db(rms(&y) / (amplitude / 2f64.sqrt()));
                assert!(
                    gain.abs() <= 0.05,
                    "{from} -> {to} at {freq} Hz: gain {gain:.4} dB"
                );
            }
        }
    }

    #[test]
    fn passband_tones_come_out_clean() {
        // Anything besides the tone itself (images, aliases, distortion) is >= 60 dB down.
        for (from, to) in all_pairs() {
            let f_low = from.min(to);
            for freq in [300.0, 1000.0, 2500.0, 3500.0, 7000.0] {
                if freq > PASSBAND_EDGE * f64::from(f_low) {
                    continue;
                }
                let y = steady_output(from, to, freq, 16_000.0);
                let (tone, residual) = tone_and_residual(&y, freq, to);
                let level = db(residual / tone);
                assert!(
                    level <= -60.0,
                    "{from} -> {to} at {freq} Hz: residual {level:.1} dB"
                );
            }
        }
    }

    #[test]
    fn downsampling_rejects_aliases() {
        // A sweep over the whole band that would alias, from just above the new Nyquist
        // frequency to just below the old one.
        for (from, to) in [(16_000, 8_000), (48_000, 8_000), (48_000, 16_000)] {
            let nyquist_out = f64::from(to) / 2.0;
            let nyquist_in = f64::from(from) / 2.0;
            let steps = 24;
            let mut worst = f64::NEG_INFINITY;
            for i in 0..=steps {
                let freq = nyquist_out
                    + 10.0
                    + (nyquist_in - nyquist_out - 20.0) * i as f64 / steps as f64;
                let amplitude = 20_000.0;
                let y = steady_output(from, to, freq.round(), amplitude);
                let y: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
                let level = db(rms(&y) / (amplitude / 2f64.sqrt()));
                assert!(level <= -60.0, "{from} -> {to} at {freq} Hz: {level:.1} dB");
                worst = worst.max(level);
            }
            assert!(worst.is_finite());
        }
    }

    #[test]
    fn upsampling_rejects_images() {
        // Tones in the transition band of the input: their images lie just above the
        // input Nyquist frequency, where the stopband begins.
        for (from, to) in [(8_000, 16_000), (8_000, 48_000), (16_000, 48_000)] {
            let nyquist_in = f64::from(from) / 2.0;
            for freq in [
                PASSBAND_EDGE * f64::from(from),
                nyquist_in - 200.0,
                nyquist_in - 50.0,
            ] {
                let freq = (freq / 10.0).round() * 10.0;
                let amplitude = 16_000.0;
                let y = steady_output(from, to, freq, amplitude);
                let (_, residual) = tone_and_residual(&y, freq, to);
                let level = db(residual / (amplitude / 2f64.sqrt()));
                assert!(
                    level <= -60.0,
                    "{from} -> {to} at {freq} Hz: images {level:.1} dB"
                );
            }
        }
    }

    /// The filter a resampler applies, as one impulse response at the high rate,
    /// rebuilt from its stored (time-reversed, polyphase) `f32` coefficients.
    fn effective_filter(r: &Resampler) -> Vec<f64> {
        let l = r.factor;
        match r.direction {
            Direction::Identity => vec![1.0],
            Direction::Up => {
                let mut h = vec![0.0; l * r.taps];
                for (p, phase) in r.coefs.chunks_exact(r.taps).enumerate() {
                    for (i, &c) in phase.iter().rev().enumerate() {
                        h[l * i + p] = f64::from(c) / l as f64;
                    }
                }
                h
            }
            Direction::Down => r.coefs.iter().rev().map(|&c| f64::from(c)).collect(),
        }
    }

    #[test]
    fn filters_meet_the_specification() {
        // Frequency response of the coefficients in use, on a fine grid at the high rate.
        for (from, to) in all_pairs().into_iter().filter(|(f, t)| f != t) {
            let r = Resampler::new(from, to).unwrap();
            let h = effective_filter(&r);
            let l = r.factor as f64;
            let response = |f: f64| {
                let (mut re, mut im) = (0.0, 0.0);
                for (k, &c) in h.iter().enumerate() {
                    re += c * (2.0 * PI * f * k as f64).cos();
                    im -= c * (2.0 * PI * f * k as f64).sin();
                }
                db((re * re + im * im).sqrt())
            };
            let points = 200;
            for i in 0..=points {
                let f = PASSBAND_EDGE / l * i as f64 / points as f64;
                let g = response(f);
                assert!(g.abs() < 0.01, "{from} -> {to} passband {f}: {g} dB");
            }
            for i in 0..=points {
                let lo = STOPBAND_EDGE / l;
                let f = lo + (0.5 - lo) * i as f64 / points as f64;
                let g = response(f);
                assert!(g < -70.0, "{from} -> {to} stopband {f}: {g} dB");
            }
        }
    }

    #[test]
    fn impulse_peaks_at_the_delay() {
        for (from, to) in all_pairs() {
            let r = Resampler::new(from, to).unwrap();
            let delay = r.delay_samples();
            let mut input = vec![0i16; 400];
            input[0] = 30_000;
            let y = convert(from, to, &input);
            let peak = y
                .iter()
                .enumerate()
                .max_by_key(|(_, v)| v.unsigned_abs())
                .map(|(i, _)| i)
                .unwrap();
            assert_eq!(peak, delay, "{from} -> {to}");
        }
    }

    #[test]
    fn upsampling_keeps_input_samples_at_the_delay() {
        // A band-limited signal: every input sample reappears at k × L + delay.
        for (from, to) in [(8_000, 16_000), (8_000, 48_000), (16_000, 48_000)] {
            let input = sine(1000.0, from, 12_000.0, 600);
            let y = convert(from, to, &input);
            let r = Resampler::new(from, to).unwrap();
            let l = (to / from) as usize;
            for k in 200..400 {
                let diff = (i32::from(y[k * l + r.delay_samples()]) - i32::from(input[k])).abs();
                assert!(diff <= 4, "{from} -> {to} sample {k}: {diff}");
            }
        }
    }

    #[test]
    fn dc_passes_with_unit_gain() {
        for (from, to) in all_pairs() {
            let y = convert(from, to, &vec![-12_345i16; 2_000]);
            let settled = &y[y.len() / 2..];
            assert!(settled.iter().all(|&v| v == -12_345), "{from} -> {to}");
        }
    }

    #[test]
    fn output_saturates_instead_of_wrapping() {
        // A full-scale square wave: the filter's overshoot at each edge must clip at the
        // rails, never wrap around to the opposite sign.
        for (from, to) in all_pairs() {
            let half_period = from as usize / 200; // 100 Hz
            let input: Vec<i16> = (0..from as usize / 5)
                .map(|n| {
                    if (n / half_period) % 2 == 0 {
                        i16::MAX
                    } else {
                        i16::MIN
                    }
                })
                .collect();
            let y = convert(from, to, &input);
            let r = Resampler::new(from, to).unwrap();
            let out_half = to as usize / 200;
            let margin = out_half / 4;
            for (m, &v) in y.iter().enumerate().skip(r.delay_samples() + out_half) {
                let t = m - r.delay_samples();
                let in_half = t % out_half;
                if in_half < margin || in_half >= out_half - margin {
                    continue; // near an edge
                }
                let positive = (t / out_half) % 2 == 0;
                assert_eq!(v > 0, positive, "{from} -> {to} at {m}: {v}");
            }
            if from != to {
                assert!(
                    y.contains(&i16::MAX) && y.contains(&i16::MIN),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn twenty_ms_frames_join_seamlessly() {
        for (from, to) in all_pairs() {
            let input = sine(440.0, from, 10_000.0, from as usize / 5);
            let whole = convert(from, to, &input);
            let mut r = Resampler::new(from, to).unwrap();
            let mut joined = Vec::new();
            let mut out = vec![0i16; to as usize / 50];
            for frame in input.chunks(from as usize / 50) {
                let n = r.process(frame, &mut out);
                joined.extend_from_slice(&out[..n]);
            }
            assert_eq!(joined, whole, "{from} -> {to}");
        }
    }

    #[test]
    fn reset_starts_a_new_stream() {
        for (from, to) in all_pairs() {
            let input = sine(700.0, from, 9_000.0, 333);
            let fresh = convert(from, to, &input);
            let mut r = Resampler::new(from, to).unwrap();
            let mut out = vec![0i16; 4_000];
            r.process(&sine(300.0, from, 20_000.0, 101), &mut out);
            r.reset();
            let n = r.process(&input, &mut out);
            assert_eq!(&out[..n], &fresh[..], "{from} -> {to}");
        }
    }

    #[test]
    fn short_output_buffer_drops_samples_but_keeps_stream_position() {
        for (from, to) in all_pairs() {
            let input = sine(500.0, from, 8_000.0, 480);
            let whole = convert(from, to, &input);
            let mut r = Resampler::new(from, to).unwrap();
            let mut small = [0i16; 7];
            let (a, b) = input.split_at(240);
            let n = r.process(a, &mut small);
            assert_eq!(&small[..n], &whole[..n]);
            let first = whole.len() - r.output_len(b.len());
            let mut rest = vec![0i16; r.output_len(b.len())];
            let m = r.process(b, &mut rest);
            assert_eq!(&rest[..m], &whole[first..], "{from} -> {to}");
        }
    }

    #[test]
    fn debug_names_the_rates() {
        let r = Resampler::new(48_000, 8_000).unwrap();
        let text = format!("{r:?}");
        assert!(text.contains("48000") && text.contains("8000"), "{text}");
    }

    fn pair_strategy() -> impl Strategy<Value = (u32, u32)> {
        prop::sample::select(all_pairs())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn chunking_does_not_change_output(
            (from, to) in pair_strategy(),
            input in prop::collection::vec(any::<i16>(), 0..700),
            cuts in prop::collection::vec(0usize..150, 0..12),
        ) {
            let whole = convert(from, to, &input);
            let mut r = Resampler::new(from, to).unwrap();
            let mut joined = Vec::new();
            let mut rest = &input[..];
            for cut in cuts.into_iter().chain([usize::MAX]) {
                let (chunk, tail) = rest.split_at(cut.min(rest.len()));
                rest = tail;
                let expected = r.output_len(chunk.len());
                let mut out = vec![0i16; expected];
                prop_assert_eq!(r.process(chunk, &mut out), expected);
                joined.extend_from_slice(&out);
            }
            prop_assert_eq!(joined, whole);
        }

        #[test]
        fn lengths_follow_the_ratio(
            (from, to) in pair_strategy(),
            prefix in 0usize..40,
            blocks in 0usize..60,
        ) {
            let mut r = Resampler::new(from, to).unwrap();
            let mut out = vec![0i16; 2_000];
            r.process(&vec![1i16; prefix], &mut out);
            // Any multiple of from / gcd gives exactly n × to / from, whatever came before.
            let unit = (from / gcd(from, to)) as usize;
            let n = blocks * unit;
            let expected = n * to as usize / from as usize;
            prop_assert_eq!(r.output_len(n), expected);
            prop_assert_eq!(r.process(&vec![7i16; n], &mut out), expected);
            // Totals: T × L up, ceil(T / L) down.
            let total_in = prefix + n;
            let mut fresh = Resampler::new(from, to).unwrap();
            let total_out = fresh.process(&vec![0i16; total_in], &mut vec![0i16; 4_000]);
            prop_assert_eq!(total_out, (total_in * to as usize).div_ceil(from as usize));
        }

        #[test]
        fn never_panics(
            (from, to) in pair_strategy(),
            input in prop::collection::vec(any::<i16>(), 0..400),
            out_len in 0usize..3_000,
        ) {
            let mut r = Resampler::new(from, to).unwrap();
            let mut out = vec![0i16; out_len];
            let expected = r.output_len(input.len()).min(out_len);
            prop_assert_eq!(r.process(&input, &mut out), expected);
            prop_assert_eq!(r.process(&input, &mut []), 0);
        }
    }

    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
}
