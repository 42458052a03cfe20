//! Conversation analytics from decoded audio: who talks when, over-talk, silence, monologues,
//! time to the agent's first word, and a prosodic agitation estimate per party.
//!
//! # Drive contract
//!
//! Build one [`ConversationAnalytics`] per call with an [`AnalyticsConfig`] and call
//! [`ConversationAnalytics::process`] once per 20 ms frame with each party's decoded PCM at
//! the configured rate, in party order (party 0 is the caller or customer, party 1 the agent;
//! more parties are allowed up to [`MAX_PARTIES`]). A party with no audio in a frame (on hold,
//! not yet joined, lost packets) passes an empty slice, which counts as silence. Every call
//! advances the call time by exactly [`FRAME_MS`]; no clock is read. When
//! [`AnalyticsConfig::report_interval_ms`] of call time has passed since the last report,
//! `process` returns an [`AnalyticsSummary`] for a live event; [`ConversationAnalytics::summary`]
//! gives the same figures at any time, as if the call ended now, for the call detail record.
//! Everything is deterministic, and after construction nothing allocates: state lives in
//! fixed-size arrays and the summary is a `Copy` value.
//!
//! # Talk decisions
//!
//! Each party has a [`VoiceActivity`] detector (adaptive noise floor, see [`crate::vad`]). A
//! frame is *loud* when its level clears the detector's threshold over the floor and its
//! absolute minimum, exactly the detector's own test. Talk segments are built from loud
//! frames: a quiet gap of at most [`AnalyticsConfig::bridge_ms`] between two loud frames of
//! the same party is bridged (the pauses between words are talk), and a segment starts at its
//! first loud frame and ends at its last one, so the detector's hangover tail is not counted.
//! This needs a look-ahead of `bridge_ms`: frame decisions are final once `bridge_ms` has
//! passed, and the summary treats the still-open frames as if the call ended now. Resolution
//! is one frame (20 ms): a frame partly covered by speech counts whole when its level clears
//! the threshold, so a segment can read up to one frame long at each end (on average about
//! 10 ms per edge that falls inside a frame).
//!
//! # Figures
//!
//! * talk time per party: frames in that party's talk segments;
//! * silence: frames where no party talks;
//! * over-talk: frames where two or more parties talk;
//! * talk share per party: its talk time over the sum of all parties' talk time, and the
//!   talk ratio: the agent's share (0–1; `None` before anyone talks);
//! * longest monologue: the longest single talk segment of any party (over-talk from the
//!   other side does not end it), with the party;
//! * time to first agent word: call time from the first frame to the agent's first talk frame.
//!
//! # Agitation (a heuristic)
//!
//! [`Agitation`] maps prosody to a number in 0–1 that rises with loud, strongly varying,
//! raised and wide-ranging voice. It is a heuristic, not a validated emotion model: it has
//! not been fitted to labelled data and says nothing about *which* emotion is present.
//!
//! Method, on the party's loud frames only:
//!
//! * loudness level: running mean of the frame level in dBov over about the last 3 s of
//!   speech, mapped linearly from −32 dBov (0) to −12 dBov (1);
//! * loudness variability: running standard deviation of the frame level over the same span,
//!   mapped from 4 dB (0) to 12 dB (1);
//! * pitch variability: running standard deviation of F0 in semitones over about the last 3 s
//!   of voiced frames (F0 from [`PitchTracker`]; deviations clipped at one octave so octave
//!   errors of the tracker do not dominate), mapped from 1.5 (0) to 6 semitones (1);
//! * pitch elevation: how far the recent mean F0 is above the speaker's own baseline (a slow
//!   running mean over about 30 s of voiced speech), mapped from 0 (0) to 4 semitones (1).
//!
//! The score is `0.3·level + 0.2·level variability + 0.3·pitch variability + 0.2·elevation`,
//! reported once at least 0.5 s of speech with 0.2 s of voicing has been heard.
//!
//! Limits: absolute loudness depends on the handset, the codec and network gain, so a quiet
//! line reads calm and a hot line reads agitated; the baseline needs tens of seconds to
//! settle, so the elevation term is near zero early in a call and for speakers who are
//! agitated from the start; pitch variability is also high in lively, cheerful or sing-song
//! speech and in tonal languages; noise and music that pass the voice activity test are
//! scored as speech; the weights and ranges were chosen by hand on synthetic speech. Use it
//! to rank and flag calls for a human to review, never as a verdict.

use crate::vad::{VadConfig, VadError, VoiceActivity};

/// Frame length the analytics expects, in ms.
pub const FRAME_MS: u32 = 20;
/// Most parties one [`ConversationAnalytics`] tracks.
pub const MAX_PARTIES: usize = 8;
/// Party index of the caller or customer.
pub const CALLER: usize = 0;
/// Party index of the agent.
pub const AGENT: usize = 1;

/// Errors from building the analytics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyticsError {
    /// A setting is out of range.
    #[error("invalid analytics setting {name}")]
    InvalidConfig {
        /// Which setting.
        name: &'static str,
    },
    /// The voice activity settings are invalid.
    #[error(transparent)]
    Vad(#[from] VadError),
}

/// Settings of [`ConversationAnalytics`]; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalyticsConfig {
    /// Samples per second of the PCM passed in: 8000, 16000, 32000 or 48000.
    pub sample_rate: u32,
    /// Number of parties (1 to [`MAX_PARTIES`]).
    pub parties: usize,
    /// The agent's party index, if there is an agent.
    pub agent_party: Option<usize>,
    /// Longest quiet gap inside one talk segment, in ms (at most 2000).
    pub bridge_ms: u32,
    /// Call time between live reports, in ms (0: never).
    pub report_interval_ms: u32,
    /// Voice activity settings used for every party (its `sample_rate` must match).
    pub vad: VadConfig,
}

impl AnalyticsConfig {
    /// Two parties (caller 0, agent 1) at `sample_rate`: 300 ms bridge, a report every 5 s,
    /// default voice activity settings.
    pub fn new(sample_rate: u32) -> Self {
        Self {
            sample_rate,
            parties: 2,
            agent_party: Some(AGENT),
            bridge_ms: 300,
            report_interval_ms: 5000,
            vad: VadConfig::new(sample_rate),
        }
    }
}

/// Figures for one party in an [`AnalyticsSummary`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PartySummary {
    /// Talk time in ms.
    pub talk_ms: u64,
    /// Share of all parties' talk time (0–1; 0 before anyone talks).
    pub talk_share: f32,
    /// Longest talk segment in ms.
    pub longest_monologue_ms: u64,
    /// Call time of the first talk frame, in ms.
    pub first_talk_ms: Option<u64>,
    /// Current agitation estimate (0–1; `None` until enough speech was heard).
    pub agitation: Option<f32>,
    /// Mean of the agitation estimate over the party's speech.
    pub agitation_mean: Option<f32>,
    /// Highest agitation estimate so far.
    pub agitation_peak: Option<f32>,
    /// The prosodic features behind the current estimate.
    pub features: AgitationFeatures,
}

/// Figures for the call so far; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalyticsSummary {
    /// Call time covered, in ms.
    pub duration_ms: u64,
    /// Time where no party talks, in ms.
    pub silence_ms: u64,
    /// Time where two or more parties talk, in ms.
    pub overtalk_ms: u64,
    /// The agent's share of all talk time (0–1), when there is an agent and anyone talked.
    pub talk_ratio: Option<f32>,
    /// The longest single talk segment: party index and length in ms.
    pub longest_monologue: Option<(usize, u64)>,
    /// Call time until the agent's first talk frame, in ms.
    pub time_to_first_agent_word_ms: Option<u64>,
    party_count: usize,
    party: [PartySummary; MAX_PARTIES],
}

impl AnalyticsSummary {
    /// The per-party figures, indexed by party.
    pub fn parties(&self) -> &[PartySummary] {
        &self.party[..self.party_count]
    }
}

/// Finalised frame counts.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    frames: u64,
    silence: u64,
    overtalk: u64,
    talk: [u64; MAX_PARTIES],
    run: [u64; MAX_PARTIES],
    longest: [u64; MAX_PARTIES],
    first: [Option<u64>; MAX_PARTIES],
}

impl Tally {
    fn push(&mut self, mask: u32, parties: usize) {
        let index = self.frames;
        self.frames += 1;
        match mask.count_ones() {
            0 => self.silence += 1,
            1 => {}
            _ => self.overtalk += 1,
        }
        for p in 0..parties {
            if mask & (1 << p) != 0 {
                self.talk[p] += 1;
                self.run[p] += 1;
                self.longest[p] = self.longest[p].max(self.run[p]);
                if self.first[p].is_none() {
                    self.first[p] = Some(index);
                }
            } else {
                self.run[p] = 0;
            }
        }
    }
}

/// Longest bridge in frames; bounds the look-ahead ring.
const MAX_BRIDGE_FRAMES: usize = 100;

#[derive(Debug, Clone)]
struct Party {
    vad: VoiceActivity,
    pitch: PitchTracker,
    agitation: Agitation,
    last_loud: Option<u64>,
}

/// Per-call conversation analytics; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ConversationAnalytics {
    config: AnalyticsConfig,
    parties: [Option<Party>; MAX_PARTIES],
    bridge_frames: u64,
    /// Talk masks of the frames not yet final, indexed by frame number modulo the length.
    ring: [u32; MAX_BRIDGE_FRAMES + 1],
    ring_len: u64,
    /// Frames processed.
    frame: u64,
    tally: Tally,
    report_frames: u64,
    since_report: u64,
}

impl ConversationAnalytics {
    /// Analytics for one call.
    pub fn new(config: AnalyticsConfig) -> Result<Self, AnalyticsError> {
        let check = |ok: bool, name| {
            if ok {
                Ok(())
            } else {
                Err(AnalyticsError::InvalidConfig { name })
            }
        };
        check(
            matches!(config.sample_rate, 8000 | 16000 | 32000 | 48000),
            "sample_rate",
        )?;
        check((1..=MAX_PARTIES).contains(&config.parties), "parties")?;
        check(
            config.agent_party.is_none_or(|a| a < config.parties),
            "agent_party",
        )?;
        check(
            config.bridge_ms as usize <= MAX_BRIDGE_FRAMES * FRAME_MS as usize,
            "bridge_ms",
        )?;
        check(
            config.vad.sample_rate == config.sample_rate,
            "vad.sample_rate",
        )?;
        let mut parties: [Option<Party>; MAX_PARTIES] = Default::default();
        for slot in parties.iter_mut().take(config.parties) {
            *slot = Some(Party {
                vad: VoiceActivity::new(config.vad)?,
                pitch: PitchTracker::new(config.sample_rate)?,
                agitation: Agitation::new(),
                last_loud: None,
            });
        }
        let bridge_frames = u64::from(config.bridge_ms / FRAME_MS);
        Ok(Self {
            config,
            parties,
            bridge_frames,
            ring: [0; MAX_BRIDGE_FRAMES + 1],
            ring_len: bridge_frames + 1,
            frame: 0,
            tally: Tally::default(),
            report_frames: u64::from(config.report_interval_ms / FRAME_MS),
            since_report: 0,
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &AnalyticsConfig {
        &self.config
    }

    /// Call time covered so far, in ms.
    pub fn elapsed_ms(&self) -> u64 {
        self.frame * u64::from(FRAME_MS)
    }

    /// Feeds one 20 ms frame: `frames[p]` is party `p`'s PCM (missing or empty: silence;
    /// parties beyond the configured count are ignored). Returns a summary when a live report
    /// is due.
    #[must_use]
    pub fn process(&mut self, frames: &[&[i16]]) -> Option<AnalyticsSummary> {
        let t = self.frame;
        let slot = (t % self.ring_len) as usize;
        if t >= self.ring_len {
            // Frame t - ring_len can no longer be bridged: make it final.
            self.tally.push(self.ring[slot], self.config.parties);
        }
        self.ring[slot] = 0;
        let vad_config = self.config.vad;
        for (p, party) in self.parties.iter_mut().enumerate() {
            let Some(party) = party else { continue };
            let pcm = frames.get(p).copied().unwrap_or(&[]);
            let decision = party.vad.process(pcm);
            let loud = !pcm.is_empty()
                && decision.level_dbov >= vad_config.min_active_dbov
                && decision.level_dbov >= decision.noise_floor_dbov + vad_config.threshold_db;
            let pitch = party.pitch.process(pcm);
            if loud {
                party.agitation.update(decision.level_dbov, pitch.f0_hz);
                let bit = 1u32 << p;
                if let Some(last) = party.last_loud {
                    let gap = t - last - 1;
                    if gap > 0 && gap <= self.bridge_frames {
                        for f in last + 1..t {
                            self.ring[(f % self.ring_len) as usize] |= bit;
                        }
                    }
                }
                self.ring[slot] |= bit;
                party.last_loud = Some(t);
            }
        }
        self.frame += 1;
        self.since_report += 1;
        if self.report_frames > 0 && self.since_report >= self.report_frames {
            self.since_report = 0;
            return Some(self.summary());
        }
        None
    }

    /// The figures so far, as if the call ended after the last frame.
    pub fn summary(&self) -> AnalyticsSummary {
        let mut tally = self.tally;
        let pending = self.frame.min(self.ring_len);
        for f in self.frame - pending..self.frame {
            tally.push(self.ring[(f % self.ring_len) as usize], self.config.parties);
        }
        let ms = |frames: u64| frames * u64::from(FRAME_MS);
        let total_talk: u64 = tally.talk.iter().sum();
        let share = |p: usize| {
            if total_talk == 0 {
                0.0
            } else {
                (tally.talk[p] as f64 / total_talk as f64) as f32
            }
        };
        let mut party = [PartySummary::default(); MAX_PARTIES];
        let mut longest: Option<(usize, u64)> = None;
        for (p, out) in party.iter_mut().enumerate().take(self.config.parties) {
            let agitation = self.parties[p].as_ref().map(|s| &s.agitation);
            *out = PartySummary {
                talk_ms: ms(tally.talk[p]),
                talk_share: share(p),
                longest_monologue_ms: ms(tally.longest[p]),
                first_talk_ms: tally.first[p].map(ms),
                agitation: agitation.and_then(Agitation::score),
                agitation_mean: agitation.and_then(Agitation::mean_score),
                agitation_peak: agitation.and_then(Agitation::peak_score),
                features: agitation.map(Agitation::features).unwrap_or_default(),
            };
            if tally.longest[p] > 0 && longest.is_none_or(|(_, l)| ms(tally.longest[p]) > l) {
                longest = Some((p, ms(tally.longest[p])));
            }
        }
        let agent = self.config.agent_party;
        AnalyticsSummary {
            duration_ms: ms(tally.frames),
            silence_ms: ms(tally.silence),
            overtalk_ms: ms(tally.overtalk),
            talk_ratio: agent.filter(|_| total_talk > 0).map(share),
            longest_monologue: longest,
            time_to_first_agent_word_ms: agent.and_then(|a| tally.first[a]).map(ms),
            party_count: self.config.parties,
            party,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pitch

/// Rate the pitch tracker analyses at, in Hz.
const PITCH_RATE: u32 = 4000;
/// Analysis window: 40 ms at [`PITCH_RATE`].
const PITCH_WINDOW: usize = 160;
/// Lowest F0 tracked, in Hz.
pub const MIN_F0_HZ: f32 = 60.0;
/// Highest F0 tracked, in Hz.
pub const MAX_F0_HZ: f32 = 400.0;
/// Shortest lag: 400 Hz.
const TAU_MIN: usize = (PITCH_RATE / 400) as usize;
/// Longest lag: 60 Hz (rounded up).
const TAU_MAX: usize = (PITCH_RATE as usize).div_ceil(60);
/// Samples compared per lag.
const YIN_SPAN: usize = PITCH_WINDOW - TAU_MAX;
/// YIN aperiodicity threshold: below it a lag is taken as the period.
const YIN_THRESHOLD: f32 = 0.2;
/// Windows below this level are unvoiced, in dBov.
const PITCH_MIN_DBOV: f32 = -50.0;

/// One pitch estimate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PitchEstimate {
    /// The fundamental frequency when the window is voiced, in Hz.
    pub f0_hz: Option<f32>,
    /// Periodicity: 1 − the YIN aperiodicity at the chosen lag (0–1).
    pub confidence: f32,
}

/// Fundamental frequency (F0) tracker by the YIN method (de Cheveigné and Kawahara, "YIN, a
/// fundamental frequency estimator for speech and music", JASA 111(4), 2002): cumulative
/// mean normalised difference, absolute threshold, parabolic interpolation.
///
/// Input at 8, 16, 32 or 48 kHz is low-pass filtered (second-order Butterworth at 900 Hz) and
/// decimated to 4 kHz; each frame analyses the last 40 ms for F0 between 60 and 400 Hz. A
/// window is voiced when it is at least −50 dBov and its aperiodicity is below 0.2. Feed
/// every frame in order with [`process`](Self::process) (any length); nothing allocates.
#[derive(Debug, Clone)]
pub struct PitchTracker {
    decimation: u32,
    phase: u32,
    /// Biquad coefficients b0, b1, b2, a1, a2 and state.
    coef: [f32; 5],
    state: [f32; 4],
    window: [f32; PITCH_WINDOW],
    diff: [f32; TAU_MAX + 1],
}

impl PitchTracker {
    /// A tracker for PCM at `sample_rate` (8000, 16000, 32000 or 48000).
    pub fn new(sample_rate: u32) -> Result<Self, AnalyticsError> {
        if !matches!(sample_rate, 8000 | 16000 | 32000 | 48000) {
            return Err(AnalyticsError::InvalidConfig {
                name: "sample_rate",
            });
        }
        // RBJ audio EQ cookbook low-pass, Q = 1/sqrt(2).
        let w0 = 2.0 * std::f64::consts::PI * 900.0 / f64::from(sample_rate);
        let alpha = w0.sin() / (2.0 * std::f64::consts::FRAC_1_SQRT_2);
        let cos = w0.cos();
        let a0 = 1.0 + alpha;
        let b1 = (1.0 - cos) / a0;
        let coef = [
            (b1 / 2.0) as f32,
            b1 as f32,
            (b1 / 2.0) as f32,
            (-2.0 * cos / a0) as f32,
            ((1.0 - alpha) / a0) as f32,
        ];
        Ok(Self {
            decimation: sample_rate / PITCH_RATE,
            phase: 0,
            coef,
            state: [0.0; 4],
            window: [0.0; PITCH_WINDOW],
            diff: [0.0; TAU_MAX + 1],
        })
    }

    /// Forgets the audio heard so far.
    pub fn reset(&mut self) {
        self.phase = 0;
        self.state = [0.0; 4];
        self.window = [0.0; PITCH_WINDOW];
    }

    /// Takes the next frame and estimates F0 over the last 40 ms.
    pub fn process(&mut self, frame: &[i16]) -> PitchEstimate {
        let decimation = self.decimation as usize;
        let total = (self.phase as usize + frame.len()) / decimation;
        let keep = total.min(PITCH_WINDOW);
        let skip = total - keep;
        self.window.copy_within(keep.., 0);
        let start = PITCH_WINDOW - keep;
        let [b0, b1, b2, a1, a2] = self.coef;
        let mut produced = 0usize;
        for &s in frame {
            let x = f32::from(s) / 32768.0;
            let [x1, x2, y1, y2] = self.state;
            let y = b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2;
            self.state = [x, x1, y, y1];
            self.phase += 1;
            if self.phase == self.decimation {
                self.phase = 0;
                if produced >= skip {
                    self.window[start + produced - skip] = y;
                }
                produced += 1;
            }
        }
        self.estimate()
    }

    fn estimate(&mut self) -> PitchEstimate {
        let energy: f32 = self.window.iter().map(|x| x * x).sum();
        let mean = energy / PITCH_WINDOW as f32;
        // The filter passes voice F0 and its low harmonics at about unity gain.
        if mean <= 0.0 || 10.0 * mean.log10() < PITCH_MIN_DBOV {
            return PitchEstimate::default();
        }
        let x = &self.window;
        self.diff[0] = 0.0;
        for tau in 1..=TAU_MAX {
            let mut d = 0.0f32;
            for j in 0..YIN_SPAN {
                let e = x[j] - x[j + tau];
                d += e * e;
            }
            self.diff[tau] = d;
        }
        // Cumulative mean normalised difference, in place.
        let mut running = 0.0f32;
        for tau in 1..=TAU_MAX {
            running += self.diff[tau];
            self.diff[tau] = if running > 0.0 {
                self.diff[tau] * tau as f32 / running
            } else {
                1.0
            };
        }
        let mut best = None;
        let mut tau = TAU_MIN;
        while tau <= TAU_MAX {
            if self.diff[tau] < YIN_THRESHOLD {
                while tau < TAU_MAX && self.diff[tau + 1] < self.diff[tau] {
                    tau += 1;
                }
                best = Some(tau);
                break;
            }
            tau += 1;
        }
        let Some(tau) = best else {
            let min = self.diff[TAU_MIN..=TAU_MAX]
                .iter()
                .fold(1.0f32, |a, &b| a.min(b));
            return PitchEstimate {
                f0_hz: None,
                confidence: (1.0 - min).clamp(0.0, 1.0),
            };
        };
        let mut period = tau as f32;
        if tau > 1 && tau < TAU_MAX {
            let (l, c, r) = (self.diff[tau - 1], self.diff[tau], self.diff[tau + 1]);
            let den = l - 2.0 * c + r;
            if den > 0.0 {
                period += (0.5 * (l - r) / den).clamp(-0.5, 0.5);
            }
        }
        let f0 = PITCH_RATE as f32 / period;
        PitchEstimate {
            f0_hz: (MIN_F0_HZ..=MAX_F0_HZ).contains(&f0).then_some(f0),
            confidence: (1.0 - self.diff[tau]).clamp(0.0, 1.0),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Agitation

/// Loud frames in the short running window (about 3 s of speech).
const SHORT_FRAMES: f64 = 150.0;
/// Voiced frames in the baseline window (about 30 s of voiced speech).
const BASELINE_FRAMES: f64 = 1500.0;
/// Loud frames needed before a score is given (0.5 s).
const MIN_LOUD_FRAMES: u64 = 25;
/// Voiced frames needed before a score is given (0.2 s).
const MIN_VOICED_FRAMES: u64 = 10;

/// Running mean and variance with a window that grows to `span` samples, then slides
/// exponentially.
#[derive(Debug, Clone, Copy, Default)]
struct Running {
    n: u64,
    mean: f64,
    square: f64,
}

impl Running {
    fn push(&mut self, x: f64, span: f64) {
        self.n += 1;
        let alpha = (1.0 / self.n as f64).max(1.0 / span);
        self.mean += alpha * (x - self.mean);
        self.square += alpha * (x * x - self.square);
    }

    fn std(&self) -> f64 {
        (self.square - self.mean * self.mean).max(0.0).sqrt()
    }
}

/// The prosodic features behind an agitation estimate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AgitationFeatures {
    /// Recent mean loudness of speech frames, in dBov.
    pub level_dbov: f32,
    /// Recent standard deviation of the loudness, in dB.
    pub level_std_db: f32,
    /// Recent mean F0, in Hz (0 before any voicing).
    pub f0_hz: f32,
    /// Recent standard deviation of F0, in semitones.
    pub f0_std_semitones: f32,
    /// Recent mean F0 above the speaker's baseline, in semitones.
    pub f0_elevation_semitones: f32,
}

/// Agitation estimate of one speaker from prosody; a heuristic, see the
/// [module docs](self#agitation-a-heuristic).
///
/// Feed it the level and the F0 estimate (if voiced) of each of the speaker's speech frames
/// with [`update`](Self::update); read [`score`](Self::score). Nothing allocates.
#[derive(Debug, Clone, Default)]
pub struct Agitation {
    level: Running,
    pitch: Running,
    baseline: Running,
    loud_frames: u64,
    score_sum: f64,
    scored: u64,
    peak: f32,
}

impl Agitation {
    /// A fresh estimator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one speech frame: its level in dBov and its F0 in Hz when voiced.
    pub fn update(&mut self, level_dbov: f32, f0_hz: Option<f32>) {
        if !level_dbov.is_finite() {
            return;
        }
        self.loud_frames += 1;
        self.level.push(f64::from(level_dbov), SHORT_FRAMES);
        if let Some(f0) = f0_hz.filter(|f| f.is_finite() && *f > 0.0) {
            let semitones = 12.0 * (f64::from(f0) / 100.0).log2();
            // Clip deviations from the running mean at an octave: octave errors of the
            // tracker would otherwise dominate the variance.
            let clipped = if self.pitch.n == 0 {
                semitones
            } else {
                semitones.clamp(self.pitch.mean - 12.0, self.pitch.mean + 12.0)
            };
            self.pitch.push(clipped, SHORT_FRAMES);
            self.baseline.push(clipped, BASELINE_FRAMES);
        }
        if let Some(score) = self.score() {
            self.score_sum += f64::from(score);
            self.scored += 1;
            self.peak = self.peak.max(score);
        }
    }

    /// The features behind the current estimate.
    pub fn features(&self) -> AgitationFeatures {
        let voiced = self.pitch.n > 0;
        AgitationFeatures {
            level_dbov: self.level.mean as f32,
            level_std_db: self.level.std() as f32,
            f0_hz: if voiced {
                (100.0 * (self.pitch.mean / 12.0).exp2()) as f32
            } else {
                0.0
            },
            f0_std_semitones: self.pitch.std() as f32,
            f0_elevation_semitones: (self.pitch.mean - self.baseline.mean) as f32,
        }
    }

    /// The current estimate in 0–1, once 0.5 s of speech with 0.2 s of voicing was heard.
    pub fn score(&self) -> Option<f32> {
        if self.loud_frames < MIN_LOUD_FRAMES || self.pitch.n < MIN_VOICED_FRAMES {
            return None;
        }
        let f = self.features();
        let map = |x: f32, lo: f32, hi: f32| ((x - lo) / (hi - lo)).clamp(0.0, 1.0);
        let score = 0.3 * map(f.level_dbov, -32.0, -12.0)
            + 0.2 * map(f.level_std_db, 4.0, 12.0)
            + 0.3 * map(f.f0_std_semitones, 1.5, 6.0)
            + 0.2 * map(f.f0_elevation_semitones, 0.0, 4.0);
        Some(score.clamp(0.0, 1.0))
    }

    /// Mean of the estimate over the speech frames scored so far.
    pub fn mean_score(&self) -> Option<f32> {
        (self.scored > 0).then(|| (self.score_sum / self.scored as f64) as f32)
    }

    /// Highest estimate so far.
    pub fn peak_score(&self) -> Option<f32> {
        (self.scored > 0).then_some(self.peak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tone::{ToneGenerator, ToneLevel};

    fn sine(rate: u32, hz: f32, n: usize, dbov: f32) -> Vec<i16> {
        let mut g = ToneGenerator::sine(rate, hz, ToneLevel::Dbov(dbov)).unwrap();
        let mut v = vec![0; n];
        g.fill(&mut v);
        v
    }

    /// A glottal-like pulse train: harmonics with falling amplitude.
    fn voice(rate: u32, f0: f32, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let mut v = 0.0;
                for h in 1..=8 {
                    let hf = f0 * h as f32;
                    if hf < rate as f32 / 2.0 {
                        v += (2.0 * std::f32::consts::PI * hf * t).sin() / h as f32;
                    }
                }
                (v * 4000.0) as i16
            })
            .collect()
    }

    #[test]
    fn pitch_tracks_sines_and_harmonic_voices() {
        for rate in [8000u32, 16000, 48000] {
            let frame = rate as usize / 50;
            for f0 in [70.0f32, 100.0, 150.0, 220.0, 310.0, 390.0] {
                for pcm in [
                    sine(rate, f0, frame * 20, -20.0),
                    voice(rate, f0, frame * 20),
                ] {
                    let mut p = PitchTracker::new(rate).unwrap();
                    let mut last = PitchEstimate::default();
                    for chunk in pcm.chunks(frame) {
                        last = p.process(chunk);
                    }
                    let got = last.f0_hz.unwrap_or(0.0);
                    let cents = 1200.0 * (got / f0).log2();
                    assert!(cents.abs() < 30.0, "rate {rate} f0 {f0} got {got}");
                    assert!(last.confidence > 0.8);
                }
            }
        }
    }

    #[test]
    fn pitch_rejects_silence_and_noise() {
        let mut p = PitchTracker::new(8000).unwrap();
        for _ in 0..10 {
            assert_eq!(p.process(&[0; 160]).f0_hz, None);
        }
        let mut s = 12345u32;
        let noise: Vec<i16> = (0..160 * 20)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as i16) / 4
            })
            .collect();
        let voiced = noise
            .chunks(160)
            .filter(|c| p.process(c).f0_hz.is_some())
            .count();
        assert!(voiced <= 2, "{voiced}");
        assert!(PitchTracker::new(11025).is_err());
        // Odd frame lengths and oversized frames do not panic.
        p.process(&[1000; 7]);
        p.process(&vec![1000; 100_000]);
        p.process(&[]);
    }

    #[test]
    fn analytics_rejects_bad_config() {
        let base = AnalyticsConfig::new(8000);
        for c in [
            AnalyticsConfig {
                sample_rate: 11025,
                vad: VadConfig::new(11025),
                ..base
            },
            AnalyticsConfig { parties: 0, ..base },
            AnalyticsConfig {
                parties: MAX_PARTIES + 1,
                ..base
            },
            AnalyticsConfig {
                agent_party: Some(2),
                ..base
            },
            AnalyticsConfig {
                bridge_ms: 5000,
                ..base
            },
            AnalyticsConfig {
                vad: VadConfig::new(16000),
                ..base
            },
        ] {
            assert!(ConversationAnalytics::new(c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn agitation_needs_evidence_and_stays_in_range() {
        let mut a = Agitation::new();
        assert_eq!(a.score(), None);
        for i in 0..1000 {
            let f0 = if i % 2 == 0 { 80.0 } else { 390.0 };
            a.update(if i % 3 == 0 { 0.0 } else { -60.0 }, Some(f0));
            let s = a.score();
            assert!(s.is_none_or(|s| (0.0..=1.0).contains(&s)));
        }
        a.update(f32::NAN, Some(f32::NAN));
        assert!(a.peak_score().unwrap() <= 1.0);
    }
}
