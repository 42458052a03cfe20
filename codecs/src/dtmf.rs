//! In-band DTMF detection: Goertzel filters with ITU-T Q.24 acceptance checks.
//!
//! # Drive contract
//!
//! Build one [`DtmfDetector`] per audio stream and feed it i16 mono PCM in frames of any
//! length with [`DtmfDetector::process`], which reports [`DtmfEvent::Begin`] once per
//! detected digit (with the sample offset where it started) and [`DtmfEvent::End`] when the
//! digit stops. [`DtmfDetector::process_frame`] is the same for callers that only want the
//! begin events and pass frames of at most 30 ms. The detector keeps a fixed buffer
//! allocated at construction; processing does not allocate.
//!
//! # Method
//!
//! Analysis windows of 12.75 ms (102 samples at 8 kHz, 204 at 16 kHz, 612 at 48 kHz) are
//! taken every half window (6.4 ms), so the behaviour in time and frequency is the same at
//! every sample rate. Each window is Hann-weighted and the eight ITU-T Q.23 frequencies are
//! measured with the Goertzel algorithm (coefficients computed for the sample rate). The
//! strongest tone of each group is then checked:
//!
//! * **Frequency** (ITU-T Q.24 reception limits: operate within ±1.5 %, do not operate
//!   beyond ±3.5 %): the actual frequency is estimated from the phase advance between the window
//!   and the same window shifted by one sample, and must be within
//!   [`DtmfConfig::max_frequency_deviation`] (2.5 %) of the nominal one.
//! * **Level**: each tone, corrected for the window's loss at the measured frequency offset,
//!   must reach [`DtmfConfig::min_level_dbm0`].
//! * **Twist** (Q.24 limits): the low-group tone may exceed the high-group tone by
//!   [`DtmfConfig::normal_twist_db`] (8 dB; lines attenuate the high group) and the high
//!   group may exceed the low by [`DtmfConfig::reverse_twist_db`] (4 dB).
//! * **Talk-off**: the two tones must carry [`DtmfConfig::min_tone_energy_ratio`] of the
//!   window's energy, and the second harmonic of the high-group tone must stay
//!   [`DtmfConfig::max_second_harmonic_db`] below it. Speech spreads its energy over many
//!   harmonics and fails one or both. (The second harmonics of the low group, 1394–1882 Hz,
//!   lie within a window's resolution of the high-group tones and are not checked.)
//! * **Steadiness**: the energies of the window's two halves must be within a factor of two,
//!   which rejects windows that only partly overlap a tone.
//!
//! A digit begins after 4 consecutive passing windows of the same digit, so tones of 40 ms
//! or more are always accepted and tones of 20 ms or less never are (Q.24 signal
//! duration limits). It ends after 5 consecutive failing windows, so a pause of 40 ms always
//! separates two digits while an interruption of 10 ms does not split one (Q.24
//! pause duration and signal interruption limits). Reported sample offsets are accurate to about
//! one hop (6.4 ms).

use crate::tone::ToneLevel;

/// Low-group frequencies, ITU-T Q.23 frequency allocation.
const LOW: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
/// High-group frequencies, ITU-T Q.23 frequency allocation.
const HIGH: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
/// Keypad layout: `KEYS[low][high]`.
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Analysis window length in seconds (102 samples at 8 kHz).
const WINDOW_SECONDS: f64 = 0.012_75;
/// Consecutive passing windows that begin a digit.
const MIN_HITS: u32 = 4;
/// Consecutive failing windows that end a digit.
const MIN_MISSES: u32 = 5;
/// Smallest ratio between the energies of a window's two halves.
const MIN_HALF_ENERGY_RATIO: f64 = 0.5;

/// Lowest supported sample rate, in Hz.
pub const MIN_SAMPLE_RATE: u32 = 8000;
/// Highest supported sample rate, in Hz.
pub const MAX_SAMPLE_RATE: u32 = 192_000;

/// Errors from building a detector.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DtmfError {
    /// The sample rate is outside [`MIN_SAMPLE_RATE`]..=[`MAX_SAMPLE_RATE`].
    #[error("unsupported sample rate {sample_rate} Hz")]
    UnsupportedSampleRate {
        /// The rejected rate.
        sample_rate: u32,
    },
    /// A threshold is not finite or out of its range.
    #[error("invalid detector setting {name}")]
    InvalidConfig {
        /// Which setting.
        name: &'static str,
    },
}

/// Acceptance thresholds; see the [module docs](self) for what each checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DtmfConfig {
    /// Largest accepted relative frequency deviation of each tone (0.025 = 2.5 %).
    pub max_frequency_deviation: f32,
    /// How much stronger the low-group tone may be, in dB.
    pub normal_twist_db: f32,
    /// How much stronger the high-group tone may be, in dB.
    pub reverse_twist_db: f32,
    /// Weakest accepted level of each tone, in dBm0.
    pub min_level_dbm0: f32,
    /// Smallest share of the window energy the two tones must carry (0..=1).
    pub min_tone_energy_ratio: f32,
    /// Largest level of the high tone's second harmonic relative to the tone, in dB.
    pub max_second_harmonic_db: f32,
}

impl Default for DtmfConfig {
    fn default() -> Self {
        Self {
            max_frequency_deviation: 0.025,
            normal_twist_db: 8.0,
            reverse_twist_db: 4.0,
            min_level_dbm0: -33.0,
            min_tone_energy_ratio: 0.8,
            max_second_harmonic_db: -15.0,
        }
    }
}

/// A detected digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfDetection {
    /// `0`–`9`, `*`, `#` or `A`–`D`.
    pub digit: char,
    /// Offset of the tone start, in samples since the detector was created or reset.
    pub start_sample: u64,
}

/// What [`DtmfDetector::process`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DtmfEvent {
    /// A digit was recognised; reported once per key press.
    Begin(DtmfDetection),
    /// The digit stopped.
    End {
        /// The digit.
        digit: char,
        /// Offset just after the tone, in samples.
        end_sample: u64,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Filter {
    /// Angular frequency in radians per sample.
    omega: f64,
    cos: f64,
    sin: f64,
}

impl Filter {
    fn new(hz: f64, sample_rate: f64) -> Self {
        let omega = std::f64::consts::TAU * hz / sample_rate;
        Self {
            omega,
            cos: omega.cos(),
            sin: omega.sin(),
        }
    }

    /// Goertzel over `x[n] * w[n]`: returns Σ x[n]w[n]e^{-jωn} up to a phase factor that
    /// depends only on ω and the length.
    fn goertzel(&self, x: &[f64], w: &[f64]) -> (f64, f64) {
        let c = 2.0 * self.cos;
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for (&v, &wn) in x.iter().zip(w) {
            let s = v * wn + c * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        (s1 - self.cos * s2, self.sin * s2)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tracker {
    /// Digit of the current run of passing windows.
    candidate: Option<char>,
    run: u32,
    run_start: u64,
    active: Option<char>,
    misses: u32,
    last_hit_end: u64,
}

impl Tracker {
    const fn new() -> Self {
        Self {
            candidate: None,
            run: 0,
            run_start: 0,
            active: None,
            misses: 0,
            last_hit_end: 0,
        }
    }
}

/// Streaming DTMF detector for one audio stream; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct DtmfDetector {
    sample_rate: u32,
    config: DtmfConfig,
    /// Window length N.
    len: usize,
    hop: usize,
    window: Vec<f64>,
    window_sum: f64,
    window_sq_sum: f64,
    low: [Filter; 4],
    high: [Filter; 4],
    harmonic: [Filter; 4],
    /// `2 cos ω` of the low then the high filters, for the single-precision screening pass.
    coef32: [f32; 8],
    /// The window in single precision.
    window32: Vec<f32>,
    /// Per low then high filter: a lower bound of the gain correction [`Self::tone`] can
    /// apply (the window's response at the largest accepted frequency deviation).
    gain_floor: [f64; 8],
    /// The last N + 1 samples (the shifted window needs one more).
    buf: Vec<f64>,
    filled: usize,
    /// Stream offset of `buf[0]`.
    buf_start: u64,
    min_amplitude: f64,
    normal_twist: f64,
    reverse_twist: f64,
    harmonic_ratio: f64,
    tracker: Tracker,
}

impl DtmfDetector {
    /// A detector with the default thresholds.
    pub fn new(sample_rate: u32) -> Result<Self, DtmfError> {
        Self::with_config(sample_rate, DtmfConfig::default())
    }

    /// A detector with the given thresholds.
    pub fn with_config(sample_rate: u32, config: DtmfConfig) -> Result<Self, DtmfError> {
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&sample_rate) {
            return Err(DtmfError::UnsupportedSampleRate { sample_rate });
        }
        let check = |ok: bool, name| {
            if ok {
                Ok(())
            } else {
                Err(DtmfError::InvalidConfig { name })
            }
        };
        let c = &config;
        check(
            c.max_frequency_deviation > 0.0 && c.max_frequency_deviation < 0.1,
            "max_frequency_deviation",
        )?;
        check(
            c.normal_twist_db.is_finite() && c.normal_twist_db >= 0.0,
            "normal_twist_db",
        )?;
        check(
            c.reverse_twist_db.is_finite() && c.reverse_twist_db >= 0.0,
            "reverse_twist_db",
        )?;
        check(c.min_level_dbm0.is_finite(), "min_level_dbm0")?;
        check(
            (0.0..=1.0).contains(&c.min_tone_energy_ratio),
            "min_tone_energy_ratio",
        )?;
        check(
            c.max_second_harmonic_db.is_finite(),
            "max_second_harmonic_db",
        )?;

        let rate = f64::from(sample_rate);
        // An even length so the window splits into two equal halves.
        let len = ((rate * WINDOW_SECONDS / 2.0).round() as usize) * 2;
        // Hann weights that vanish just outside the window (at n = -1 and n = N).
        let window: Vec<f64> = (0..len)
            .map(|n| {
                let x = std::f64::consts::PI * (n + 1) as f64 / (len + 1) as f64;
                x.sin() * x.sin()
            })
            .collect();
        let window_sum = window.iter().sum();
        let window_sq_sum = window.iter().map(|w| w * w).sum();
        let filters = |hz: [f64; 4], k: f64| hz.map(|f| Filter::new(f * k, rate));
        let (low, high) = (filters(LOW, 1.0), filters(HIGH, 1.0));
        let mut coef32 = [0.0f32; 8];
        for (c, f) in coef32.iter_mut().zip(low.iter().chain(&high)) {
            *c = (2.0 * f.cos) as f32;
        }
        let window32 = window.iter().map(|&w| w as f32).collect();
        Ok(Self {
            sample_rate,
            config,
            len,
            hop: len / 2,
            window,
            window_sum,
            window_sq_sum,
            low,
            high,
            harmonic: filters(HIGH, 2.0),
            coef32,
            window32,
            gain_floor: [0.25; 8],
            buf: vec![0.0; len + 1],
            filled: 0,
            buf_start: 0,
            min_amplitude: f64::from(ToneLevel::Dbm0(config.min_level_dbm0).peak_amplitude()),
            normal_twist: db_to_ratio(config.normal_twist_db),
            reverse_twist: db_to_ratio(config.reverse_twist_db),
            harmonic_ratio: db_to_ratio(config.max_second_harmonic_db),
            tracker: Tracker::new(),
        }
        .with_gain_floors())
    }

    /// Fills [`Self::gain_floor`]. Within the main lobe (up to 4π/(N+1) for this window)
    /// the window's response falls monotonically with the offset, so its value at the
    /// largest accepted offset bounds it from below; beyond, only the 0.25 clamp of
    /// [`Self::tone`] holds.
    fn with_gain_floors(mut self) -> Self {
        let null = 2.0 * std::f64::consts::TAU / (self.len + 1) as f64;
        let dev = f64::from(self.config.max_frequency_deviation);
        let mut floors = [0.25f64; 8];
        for (g, f) in floors.iter_mut().zip(self.low.iter().chain(&self.high)) {
            let delta = dev * f.omega;
            if delta < 0.8 * null {
                *g = (self.window_gain(delta) * 0.99).max(0.25);
            }
        }
        self.gain_floor = floors;
        self
    }

    /// The sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The thresholds in use.
    pub fn config(&self) -> &DtmfConfig {
        &self.config
    }

    /// The digit currently sounding, if one has begun and not ended.
    pub fn active_digit(&self) -> Option<char> {
        self.tracker.active
    }

    /// Forgets all state; sample offsets restart at zero.
    pub fn reset(&mut self) {
        self.filled = 0;
        self.buf_start = 0;
        self.tracker = Tracker::new();
    }

    /// Consumes `pcm` and calls `on_event` for each digit begin and end, in order.
    pub fn process(&mut self, pcm: &[i16], mut on_event: impl FnMut(DtmfEvent)) {
        let mut rest = pcm;
        while !rest.is_empty() {
            let room = self.buf.len() - self.filled;
            let (now, later) = rest.split_at(room.min(rest.len()));
            for (dst, &s) in self.buf[self.filled..].iter_mut().zip(now) {
                *dst = f64::from(s);
            }
            self.filled += now.len();
            rest = later;
            if self.filled == self.buf.len() {
                let hit = self.analyze();
                self.track(hit, &mut on_event);
                self.buf.copy_within(self.hop.., 0);
                self.filled -= self.hop;
                self.buf_start += self.hop as u64;
            }
        }
    }

    /// Consumes a frame of at most 30 ms and returns the digit that began in it, if any.
    ///
    /// Two begins are at least 5 hops (31.9 ms) apart, so such a frame holds at most one; for
    /// longer input use [`process`](Self::process).
    pub fn process_frame(&mut self, pcm: &[i16]) -> Option<DtmfDetection> {
        let mut found = None;
        self.process(pcm, |e| {
            if let (DtmfEvent::Begin(d), None) = (e, found) {
                found = Some(d);
            }
        });
        found
    }

    fn track(&mut self, hit: Option<char>, on_event: &mut impl FnMut(DtmfEvent)) {
        let start = self.buf_start;
        let end = start + self.len as u64;
        let t = &mut self.tracker;
        match hit {
            Some(d) if t.candidate == Some(d) => t.run = t.run.saturating_add(1),
            Some(d) => {
                t.candidate = Some(d);
                t.run = 1;
                t.run_start = start;
            }
            None => {
                t.candidate = None;
                t.run = 0;
            }
        }
        if let Some(a) = t.active {
            if hit == Some(a) {
                t.misses = 0;
                t.last_hit_end = end;
            } else {
                t.misses += 1;
                if t.misses >= MIN_MISSES {
                    t.active = None;
                    on_event(DtmfEvent::End {
                        digit: a,
                        end_sample: t.last_hit_end,
                    });
                }
            }
        }
        if let (None, Some(d)) = (t.active, t.candidate) {
            if t.run >= MIN_HITS {
                t.active = Some(d);
                t.misses = 0;
                t.last_hit_end = end;
                on_event(DtmfEvent::Begin(DtmfDetection {
                    digit: d,
                    start_sample: t.run_start,
                }));
            }
        }
    }

    /// Classifies the window `buf[..len]`: the digit it holds, if it passes every check.
    fn analyze(&self) -> Option<char> {
        let n = self.len;
        let x = &self.buf[..n];
        let shifted = &self.buf[1..=n];
        let weighted = self.energy_gate(x)?;
        if !self.may_pass(x, weighted) {
            return None;
        }
        self.classify(x, shifted, weighted)
    }

    /// The level and steadiness checks: the window's weighted energy if it passes them.
    fn energy_gate(&self, x: &[f64]) -> Option<f64> {
        let n = self.len;
        let w = &self.window[..];
        let half = n / 2;
        let energy = |s: &[f64]| s.iter().map(|v| v * v).sum::<f64>();
        let (first, second) = (energy(&x[..half]), energy(&x[half..]));
        // Windowed mean power; the two tones need at least twice the weakest tone power.
        let weighted: f64 = x.iter().zip(w).map(|(v, wn)| (v * wn) * (v * wn)).sum();
        let min_power = self.min_amplitude * self.min_amplitude;
        if weighted / self.window_sq_sum < 0.5 * min_power {
            return None;
        }
        if first.min(second) < MIN_HALF_ENERGY_RATIO * first.max(second) {
            return None;
        }
        Some(weighted)
    }

    /// The exact checks (frequency, level, twist, tone energy, harmonic) of a window that
    /// passed [`Self::energy_gate`].
    fn classify(&self, x: &[f64], shifted: &[f64], weighted: f64) -> Option<char> {
        let w = &self.window[..];
        let strongest = |filters: &[Filter; 4]| {
            let mut best = (0usize, 0.0f64, (0.0, 0.0));
            for (i, f) in filters.iter().enumerate() {
                let y = f.goertzel(x, w);
                let p = y.0 * y.0 + y.1 * y.1;
                if p > best.1 {
                    best = (i, p, y);
                }
            }
            best
        };
        let (li, _, ly) = strongest(&self.low);
        let (hi, _, hy) = strongest(&self.high);

        let low = self.tone(&self.low[li], ly, shifted)?;
        let high = self.tone(&self.high[hi], hy, shifted)?;
        if low < self.min_amplitude || high < self.min_amplitude {
            return None;
        }
        if low > high * self.normal_twist || high > low * self.reverse_twist {
            return None;
        }
        let tone_power = (low * low + high * high) / 2.0 * self.window_sq_sum;
        if tone_power < f64::from(self.config.min_tone_energy_ratio) * weighted {
            return None;
        }
        let harmonic = &self.harmonic[hi];
        if harmonic.omega < std::f64::consts::PI {
            let h = self.amplitude(harmonic.goertzel(x, w));
            if h > high * self.harmonic_ratio {
                return None;
            }
        }
        Some(KEYS[li][hi])
    }

    /// Screening of a window that passed the energy checks: one single-precision pass with
    /// the eight Goertzel filters side by side bounds from above the tone amplitudes the
    /// exact checks can find, and rejects the window when even those bounds fail the level
    /// or the tone-energy check (speech, noise: nearly every window that is not a digit).
    /// Never rejects a window the exact checks would pass: the bounds allow for rounding
    /// with a wide margin.
    fn may_pass(&self, x: &[f64], weighted: f64) -> bool {
        // The rounding bound below is checked for windows of up to 612 samples (48 kHz).
        if self.len > 640 {
            return true;
        }
        let c = self.coef32;
        let (mut s1, mut s2) = ([0.0f32; 8], [0.0f32; 8]);
        let mut abs_sum = 0.0f32;
        for (&v, &wn) in x.iter().zip(&self.window32) {
            let v = v as f32 * wn;
            abs_sum += v.abs();
            for k in 0..8 {
                let s = v + c[k] * s1[k] - s2[k];
                s2[k] = s1[k];
                s1[k] = s;
            }
        }
        // |y|² = s1² + s2² − 2cos ω · s1·s2.
        let mut peak = [0.0f64; 2];
        for k in 0..8 {
            let (a, b) = (f64::from(s1[k]), f64::from(s2[k]));
            let p = (a * a + b * b - f64::from(c[k]) * a * b).max(0.0);
            peak[k / 4] = peak[k / 4].max(p);
        }
        // Rounding in single precision: at most about N·ε/sin²ω of Σ|x·w| (≥ |y|), below
        // 0.5 % at 48 kHz (N = 612, ω ≥ 0.09); 2 % leaves a wide margin.
        let margin = 0.02 * f64::from(abs_sum);
        let bound = |p: f64, floors: &[f64]| {
            let floor = floors.iter().copied().fold(f64::INFINITY, f64::min);
            2.0 * (p.sqrt() + margin) / self.window_sum / floor
        };
        let low = bound(peak[0], &self.gain_floor[..4]);
        let high = bound(peak[1], &self.gain_floor[4..]);
        if low < self.min_amplitude || high < self.min_amplitude {
            return false;
        }
        let tone_power = (low * low + high * high) / 2.0 * self.window_sq_sum;
        tone_power >= f64::from(self.config.min_tone_energy_ratio) * weighted
    }

    /// Amplitude of a sine from its windowed DFT value.
    fn amplitude(&self, y: (f64, f64)) -> f64 {
        2.0 * y.0.hypot(y.1) / self.window_sum
    }

    /// Checks the frequency of the tone nearest `filter` (whose windowed DFT is `y`) and
    /// returns its amplitude corrected for the frequency offset.
    fn tone(&self, filter: &Filter, y: (f64, f64), shifted: &[f64]) -> Option<f64> {
        // For a sine at ω₁, the window over x[n+1] sees the same sine advanced by ω₁.
        let yb = filter.goertzel(shifted, &self.window);
        let re = yb.0 * y.0 + yb.1 * y.1;
        let im = yb.1 * y.0 - yb.0 * y.1;
        let measured = im.atan2(re);
        let deviation = (measured - filter.omega) / filter.omega;
        if deviation.is_nan() || deviation.abs() > f64::from(self.config.max_frequency_deviation) {
            return None;
        }
        let gain = self.window_gain(measured - filter.omega);
        Some(self.amplitude(y) / gain.max(0.25))
    }

    /// |Σ w[n] e^{jδn}| / Σ w[n]: the window's response at an offset of δ rad/sample.
    fn window_gain(&self, delta: f64) -> f64 {
        let (c, s) = (delta.cos(), delta.sin());
        let (mut pr, mut pi) = (1.0f64, 0.0f64);
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for &wn in &self.window {
            re += wn * pr;
            im += wn * pi;
            (pr, pi) = (pr * c - pi * s, pr * s + pi * c);
        }
        re.hypot(im) / self.window_sum
    }
}

fn db_to_ratio(db: f32) -> f64 {
    10f64.powf(f64::from(db) / 20.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tone::{Cadence, ToneComponent, ToneGenerator};

    const DIGITS: &str = "123A456B789C*0#D";

    /// xorshift64* with a Box–Muller normal; deterministic across runs.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let u1 = self.uniform().max(1e-300);
            let u2 = self.uniform();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
    }

    fn ms(rate: u32, ms: u32) -> usize {
        (rate * ms / 1000) as usize
    }

    /// A dual tone of `ms` milliseconds with explicit frequencies and levels.
    fn dual(rate: u32, f: (f32, f32), dbm0: (f32, f32), duration_ms: u32) -> Vec<i16> {
        let mut g = ToneGenerator::new(
            rate,
            &[
                ToneComponent::new(f.0, ToneLevel::Dbm0(dbm0.0)),
                ToneComponent::new(f.1, ToneLevel::Dbm0(dbm0.1)),
            ],
            Cadence::continuous(),
        )
        .unwrap();
        let mut v = vec![0i16; ms(rate, duration_ms)];
        g.fill(&mut v);
        v
    }

    fn digit(rate: u32, d: char, duration_ms: u32) -> Vec<i16> {
        let mut g = ToneGenerator::dtmf(rate, d, Cadence::continuous()).unwrap();
        let mut v = vec![0i16; ms(rate, duration_ms)];
        g.fill(&mut v);
        v
    }

    fn silence(rate: u32, duration_ms: u32) -> Vec<i16> {
        vec![0; ms(rate, duration_ms)]
    }

    /// Runs the detector over `pcm` in 20 ms frames and returns the begin events.
    fn detect(rate: u32, pcm: &[i16]) -> Vec<DtmfDetection> {
        let mut det = DtmfDetector::new(rate).unwrap();
        let mut out = Vec::new();
        for frame in pcm.chunks(ms(rate, 20)) {
            if let Some(d) = det.process_frame(frame) {
                out.push(d);
            }
        }
        out
    }

    fn digits(rate: u32, pcm: &[i16]) -> String {
        detect(rate, pcm).iter().map(|d| d.digit).collect()
    }

    fn add_noise(pcm: &mut [i16], snr_db: f64, seed: u64) {
        let power = pcm.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / pcm.len() as f64;
        let sigma = (power / 10f64.powf(snr_db / 10.0)).sqrt();
        let mut rng = Rng(seed);
        for v in pcm.iter_mut() {
            *v = (f64::from(*v) + sigma * rng.normal())
                .round()
                .clamp(-32768.0, 32767.0) as i16;
        }
    }

    #[test]
    fn dtmf_every_digit_at_each_rate_exactly_once() {
        for rate in [8000, 16000, 48000] {
            let mut pcm = silence(rate, 30);
            let mut starts = Vec::new();
            for d in DIGITS.chars() {
                starts.push(pcm.len() as u64);
                pcm.extend(digit(rate, d, 60));
                pcm.extend(silence(rate, 60));
            }
            let found = detect(rate, &pcm);
            let got: String = found.iter().map(|d| d.digit).collect();
            assert_eq!(got, DIGITS, "rate {rate}");
            for (d, start) in found.iter().zip(&starts) {
                let error_ms = (d.start_sample as f64 - *start as f64) * 1000.0 / f64::from(rate);
                assert!(
                    error_ms.abs() <= 7.0,
                    "rate {rate} digit {} off by {error_ms} ms",
                    d.digit
                );
            }
        }
    }

    #[test]
    fn dtmf_begin_and_end_events() {
        let rate = 8000;
        let mut pcm = silence(rate, 50);
        pcm.extend(digit(rate, '7', 100));
        pcm.extend(silence(rate, 100));
        let mut det = DtmfDetector::new(rate).unwrap();
        let mut events = Vec::new();
        det.process(&pcm, |e| events.push(e));
        assert_eq!(events.len(), 2);
        let DtmfEvent::Begin(b) = events[0] else {
            panic!("{events:?}")
        };
        let DtmfEvent::End { digit, end_sample } = events[1] else {
            panic!("{events:?}")
        };
        assert_eq!((b.digit, digit), ('7', '7'));
        let duration_ms = (end_sample - b.start_sample) as f64 / 8.0;
        assert!((duration_ms - 100.0).abs() <= 10.0, "{duration_ms} ms");
        assert_eq!(det.active_digit(), None);
    }

    #[test]
    fn dtmf_detected_in_white_noise() {
        for (rate, snr) in [(8000, 15.0), (16000, 15.0), (8000, 20.0), (48000, 18.0)] {
            let mut pcm = Vec::new();
            for d in DIGITS.chars() {
                pcm.extend(digit(rate, d, 70));
                pcm.extend(silence(rate, 70));
            }
            // SNR relative to the tone power, measured over the tones only.
            let tone_power_ratio = 0.5; // half the time is silence
            add_noise(
                &mut pcm,
                snr + 10.0 * f64::log10(tone_power_ratio),
                0x5EED + u64::from(rate),
            );
            assert_eq!(digits(rate, &pcm), DIGITS, "rate {rate} snr {snr}");
        }
    }

    #[test]
    fn dtmf_twist_limits() {
        let rate = 8000;
        let f = (852.0, 1477.0);
        let run = |low: f32, high: f32| {
            let mut pcm = silence(rate, 20);
            pcm.extend(dual(rate, f, (low, high), 80));
            pcm.extend(silence(rate, 40));
            digits(rate, &pcm)
        };
        // Low group stronger (normal twist, 8 dB allowed).
        assert_eq!(run(-6.0, -13.5), "9");
        assert_eq!(run(-6.0, -18.0), "");
        // High group stronger (reverse twist, 4 dB allowed).
        assert_eq!(run(-10.0, -6.5), "9");
        assert_eq!(run(-12.0, -4.0), "");
    }

    #[test]
    fn dtmf_frequency_deviation_limits() {
        for rate in [8000, 16000] {
            for d in DIGITS.chars() {
                let (lo, hi) = crate::tone::dtmf_frequencies(d).unwrap();
                for (k, expect) in [
                    (1.015, true),
                    (0.985, true),
                    (1.035, false),
                    (0.965, false),
                    (1.05, false),
                ] {
                    let mut pcm = silence(rate, 20);
                    pcm.extend(dual(rate, (lo * k, hi * k), (-8.0, -6.0), 80));
                    pcm.extend(silence(rate, 40));
                    let got = digits(rate, &pcm);
                    let want = if expect { d.to_string() } else { String::new() };
                    assert_eq!(got, want, "rate {rate} digit {d} factor {k}");
                }
            }
        }
    }

    #[test]
    fn dtmf_one_tone_off_frequency_is_rejected() {
        let rate = 8000;
        let mut pcm = dual(rate, (770.0 * 1.04, 1336.0), (-8.0, -6.0), 100);
        pcm.extend(dual(rate, (770.0, 1336.0 * 0.96), (-8.0, -6.0), 100));
        assert_eq!(digits(rate, &pcm), "");
    }

    #[test]
    fn dtmf_duration_limits() {
        for rate in [8000, 16000, 48000] {
            // 20 ms never, 40 ms always, at any alignment to the analysis windows.
            for offset_ms in [0u32, 1, 2, 3, 4, 5, 6, 7, 9, 11] {
                let offset = ms(rate, 1) * offset_ms as usize + offset_ms as usize * 3;
                for (len, want) in [(20, 0), (40, 1)] {
                    let mut pcm = vec![0i16; offset];
                    pcm.extend(digit(rate, '5', len));
                    pcm.extend(silence(rate, 60));
                    assert_eq!(
                        detect(rate, &pcm).len(),
                        want,
                        "rate {rate} {len} ms at {offset}"
                    );
                }
            }
        }
    }

    #[test]
    fn dtmf_pause_and_interruption() {
        let rate = 8000;
        // Two digits separated by 50 ms (and by exactly 40 ms) are both detected.
        for pause in [50, 40] {
            for d in ["11", "12"] {
                let mut pcm = Vec::new();
                for c in d.chars() {
                    pcm.extend(digit(rate, c, 60));
                    pcm.extend(silence(rate, pause));
                }
                assert_eq!(digits(rate, &pcm), d, "pause {pause}");
            }
        }
        // A 10 ms drop-out inside one digit does not split it.
        for offset in 0..8 {
            let mut pcm = silence(rate, offset);
            pcm.extend(digit(rate, '4', 60));
            pcm.extend(silence(rate, 10));
            pcm.extend(digit(rate, '4', 60));
            pcm.extend(silence(rate, 50));
            assert_eq!(digits(rate, &pcm), "4", "offset {offset}");
        }
    }

    #[test]
    fn dtmf_level_limit() {
        let rate = 8000;
        let mut loud = dual(rate, (941.0, 1209.0), (-30.0, -30.0), 80);
        loud.extend(silence(rate, 50));
        assert_eq!(digits(rate, &loud), "*");
        let mut quiet = dual(rate, (941.0, 1209.0), (-38.0, -38.0), 80);
        quiet.extend(silence(rate, 50));
        assert_eq!(digits(rate, &quiet), "");
    }

    #[test]
    fn dtmf_no_false_detection_on_non_dtmf_signals() {
        for rate in [8000, 16000] {
            let mut pcm = Vec::new();
            // Single tones at DTMF frequencies.
            for f in LOW.iter().chain(&HIGH) {
                let mut g = ToneGenerator::sine(rate, *f as f32, ToneLevel::Dbm0(-6.0)).unwrap();
                let mut v = vec![0i16; ms(rate, 200)];
                g.fill(&mut v);
                pcm.extend(v);
            }
            // Chords of non-DTMF frequencies, including near misses.
            for f in [
                (500.0, 1000.0),
                (800.0, 1400.0),
                (660.0, 1100.0),
                (900.0, 1270.0),
            ] {
                pcm.extend(dual(rate, f, (-8.0, -8.0), 200));
            }
            // Three tones: a DTMF pair plus a strong third tone is not DTMF.
            let mut g = ToneGenerator::new(
                rate,
                &[
                    ToneComponent::new(697.0, ToneLevel::Dbm0(-10.0)),
                    ToneComponent::new(1209.0, ToneLevel::Dbm0(-10.0)),
                    ToneComponent::new(2000.0, ToneLevel::Dbm0(-10.0)),
                ],
                Cadence::continuous(),
            )
            .unwrap();
            let mut v = vec![0i16; ms(rate, 200)];
            g.fill(&mut v);
            pcm.extend(v);
            // White noise, and a harmonic-rich buzz (100 Hz sawtooth) like voiced speech.
            let mut noise = vec![0i16; ms(rate, 500)];
            let mut rng = Rng(11);
            for v in noise.iter_mut() {
                *v = (rng.normal() * 3000.0) as i16;
            }
            pcm.extend(noise);
            for f0 in [100.0f64, 117.0, 175.0] {
                let period = f64::from(rate) / f0;
                for n in 0..ms(rate, 300) {
                    let phase = (n as f64 / period).fract();
                    pcm.push(((phase - 0.5) * 12000.0) as i16);
                }
            }
            assert_eq!(digits(rate, &pcm), "", "rate {rate}");
        }
    }

    /// The single-precision screening never rejects a window the exact checks pass, and
    /// rejects nearly all speech windows.
    #[test]
    fn dtmf_screening_is_conservative() {
        for rate in [8000, 16000, 48000] {
            let mut signals: Vec<Vec<i16>> = Vec::new();
            for d in DIGITS.chars() {
                signals.push(digit(rate, d, 60));
            }
            for (i, dev) in [-0.03f32, -0.02, -0.015, 0.0, 0.015, 0.02, 0.03]
                .iter()
                .enumerate()
            {
                for (lo, hi) in [(697.0f32, 1209.0f32), (941.0, 1633.0), (852.0, 1477.0)] {
                    for lv in [
                        (-3.0f32, -10.0f32),
                        (-30.0, -26.5),
                        (-10.0, -3.0),
                        (-32.0, -32.0),
                    ] {
                        let mut v = dual(rate, (lo * (1.0 + dev), hi * (1.0 - dev)), lv, 40);
                        add_noise(&mut v, 15.0 + i as f64, i as u64 + 7);
                        signals.push(v);
                    }
                }
            }
            let det = DtmfDetector::new(rate).unwrap();
            let n = det.len;
            let (mut passed, mut screened_speech, mut speech) = (0, 0, 0);
            for v in &signals {
                let x: Vec<f64> = v.iter().map(|&s| f64::from(s)).collect();
                for start in (0..x.len().saturating_sub(n + 1)).step_by(det.hop / 3 + 1) {
                    let win = &x[start..=start + n];
                    if let Some(wt) = det.energy_gate(&win[..n]) {
                        if det.classify(&win[..n], &win[1..], wt).is_some() {
                            passed += 1;
                            assert!(det.may_pass(&win[..n], wt), "rate {rate} at {start}");
                        }
                    }
                }
            }
            assert!(passed > 100, "rate {rate}: only {passed} passing windows");
            let voice = speech_like(rate);
            let x: Vec<f64> = voice.iter().map(|&s| f64::from(s)).collect();
            for start in (0..x.len() - n).step_by(det.hop) {
                if let Some(wt) = det.energy_gate(&x[start..start + n]) {
                    speech += 1;
                    if !det.may_pass(&x[start..start + n], wt) {
                        screened_speech += 1;
                    }
                }
            }
            assert!(
                screened_speech * 10 >= speech * 9,
                "rate {rate}: {screened_speech} of {speech} speech windows screened"
            );
        }
    }

    /// Voiced syllables on a gliding fundamental (harmonics 1–9), 2 s.
    fn speech_like(rate: u32) -> Vec<i16> {
        (0..rate as usize * 2)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                let within = t % 0.24;
                if within >= 0.16 {
                    return 0;
                }
                let f0 = 110.0 + 15.0 * ((t / 0.24).floor() % 5.0) + 250.0 * within;
                let phase = std::f64::consts::TAU * f0 * within;
                let env = (std::f64::consts::PI * within / 0.16).sin();
                let voiced: f64 = (1..10)
                    .map(|h| (phase * f64::from(h)).sin() / f64::from(h))
                    .sum();
                (6000.0 * env * voiced) as i16
            })
            .collect()
    }

    #[test]
    fn dtmf_rejects_bad_configuration() {
        assert!(DtmfDetector::new(4000).is_err());
        assert!(DtmfDetector::new(400_000).is_err());
        let bad = DtmfConfig {
            max_frequency_deviation: f32::NAN,
            ..DtmfConfig::default()
        };
        assert!(DtmfDetector::with_config(8000, bad).is_err());
        let bad = DtmfConfig {
            min_tone_energy_ratio: 2.0,
            ..DtmfConfig::default()
        };
        assert!(DtmfDetector::with_config(8000, bad).is_err());
    }

    #[test]
    fn dtmf_frame_size_does_not_matter_and_reset_restarts_offsets() {
        let rate = 16000;
        let mut pcm = silence(rate, 33);
        for d in "90#".chars() {
            pcm.extend(digit(rate, d, 50));
            pcm.extend(silence(rate, 50));
        }
        let reference = detect(rate, &pcm);
        assert_eq!(reference.len(), 3);
        for chunk in [1usize, 7, 160, 999, pcm.len()] {
            let mut det = DtmfDetector::new(rate).unwrap();
            let mut got = Vec::new();
            for c in pcm.chunks(chunk) {
                det.process(c, |e| {
                    if let DtmfEvent::Begin(d) = e {
                        got.push(d);
                    }
                });
            }
            assert_eq!(got, reference, "chunk {chunk}");
            det.reset();
            let mut again = Vec::new();
            det.process(&pcm, |e| {
                if let DtmfEvent::Begin(d) = e {
                    again.push(d);
                }
            });
            assert_eq!(again, reference);
        }
    }
}
