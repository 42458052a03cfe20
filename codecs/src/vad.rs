//! Frame energy in dBov and a voice activity detector with an adaptive noise floor.
//!
//! # Levels
//!
//! [`energy_dbov`] is the RMS of a frame relative to the overload point of the 16-bit
//! scale, as dBov is defined in ITU-T G.100.1: 0 dBov is the RMS of a
//! full-scale square wave (amplitude 32768), so a full-scale sine is −3.01 dBov. Digital
//! silence and empty frames give [`SILENCE_DBOV`] (−127), the floor of the RFC 6464
//! audio-level range. (dBm0 = dBov + 6.15; see [`crate::tone`].)
//!
//! # Drive contract
//!
//! Build one [`VoiceActivity`] per stream and call [`VoiceActivity::process`] with each
//! frame in order (any length; 10–30 ms is typical). Each call returns a [`VadDecision`]:
//! the frame level, the noise floor, whether the stream is active, and a
//! [`VadTransition`] on the frame where it starts or stops talking. Time is counted in
//! samples from the frame lengths; no clock is read and nothing allocates.
//!
//! # Method
//!
//! The noise floor is the minimum frame level over the last
//! [`VadConfig::noise_window_ms`] (minimum statistics, kept as 8 sub-window minima), capped
//! at [`VadConfig::max_noise_floor_dbov`] so a long loud signal is never taken for noise. A
//! frame is loud when its level is [`VadConfig::threshold_db`] above the floor and at least
//! [`VadConfig::min_active_dbov`]. The stream starts talking after
//! [`VadConfig::onset_ms`] of consecutive loud frames and stops after
//! [`VadConfig::hangover_ms`] of consecutive quiet ones, which bridges the short pauses
//! inside speech.

/// Level reported for digital silence and empty frames, in dBov (RFC 6464 §3).
pub const SILENCE_DBOV: f32 = -127.0;

/// Sub-windows the noise window is split into.
const SUB_WINDOWS: usize = 8;

/// RMS level of `pcm` in dBov (0 dBov = full-scale square wave; ITU-T G.100.1), at least
/// [`SILENCE_DBOV`].
pub fn energy_dbov(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return SILENCE_DBOV;
    }
    // Each square is at most 2^30, so u64 holds the sum of 2^34 samples.
    let sum: u64 = pcm
        .iter()
        .map(|&s| {
            let v = i64::from(s);
            (v * v) as u64
        })
        .sum();
    if sum == 0 {
        return SILENCE_DBOV;
    }
    let mean = sum as f64 / pcm.len() as f64;
    let db = 10.0 * (mean / (32768.0 * 32768.0)).log10();
    (db as f32).max(SILENCE_DBOV)
}

/// Errors from building a detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VadError {
    /// A setting is out of range.
    #[error("invalid voice activity setting {name}")]
    InvalidConfig {
        /// Which setting.
        name: &'static str,
    },
}

/// Settings of [`VoiceActivity`]; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// Samples per second (at least 1000).
    pub sample_rate: u32,
    /// How far above the noise floor a frame must be to count as loud, in dB.
    pub threshold_db: f32,
    /// Frames below this level are never loud, in dBov.
    pub min_active_dbov: f32,
    /// The noise floor never rises above this, in dBov.
    pub max_noise_floor_dbov: f32,
    /// Span of the noise-floor minimum, in ms (at least 80).
    pub noise_window_ms: u32,
    /// Loud time needed to start talking, in ms (0: the first loud frame).
    pub onset_ms: u32,
    /// Quiet time needed to stop talking, in ms.
    pub hangover_ms: u32,
}

impl VadConfig {
    /// Defaults for `sample_rate`: 9 dB over the floor, −55 dBov minimum, floor capped at
    /// −35 dBov, 2 s noise window, 20 ms onset, 300 ms hangover.
    pub fn new(sample_rate: u32) -> Self {
        Self {
            sample_rate,
            threshold_db: 9.0,
            min_active_dbov: -55.0,
            max_noise_floor_dbov: -35.0,
            noise_window_ms: 2000,
            onset_ms: 20,
            hangover_ms: 300,
        }
    }
}

/// A change of talking state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VadTransition {
    /// The stream became active on this frame.
    StartedTalking,
    /// The stream became inactive on this frame.
    StoppedTalking,
}

/// The result for one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadDecision {
    /// Whether the stream is active (talking, including hangover).
    pub active: bool,
    /// The frame level in dBov.
    pub level_dbov: f32,
    /// The noise floor in dBov after this frame.
    pub noise_floor_dbov: f32,
    /// Set on the frame where the state changed.
    pub transition: Option<VadTransition>,
}

/// Voice activity detector for one stream; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct VoiceActivity {
    config: VadConfig,
    sub_window_samples: u64,
    onset_samples: u64,
    hangover_samples: u64,
    /// Minima of the completed sub-windows (ring).
    minima: [f32; SUB_WINDOWS - 1],
    completed: usize,
    next: usize,
    /// Minimum of the current sub-window.
    current_min: f32,
    current_samples: u64,
    active: bool,
    loud_run: u64,
    quiet_run: u64,
}

impl VoiceActivity {
    /// A detector with the given settings.
    pub fn new(config: VadConfig) -> Result<Self, VadError> {
        let check = |ok: bool, name| {
            if ok {
                Ok(())
            } else {
                Err(VadError::InvalidConfig { name })
            }
        };
        check(config.sample_rate >= 1000, "sample_rate")?;
        check(
            config.threshold_db.is_finite() && config.threshold_db >= 0.0,
            "threshold_db",
        )?;
        check(config.min_active_dbov.is_finite(), "min_active_dbov")?;
        check(
            config.max_noise_floor_dbov.is_finite(),
            "max_noise_floor_dbov",
        )?;
        check(config.noise_window_ms >= 80, "noise_window_ms")?;
        let samples = |ms: u32| u64::from(ms) * u64::from(config.sample_rate) / 1000;
        let mut vad = Self {
            config,
            sub_window_samples: samples(config.noise_window_ms) / SUB_WINDOWS as u64,
            onset_samples: samples(config.onset_ms),
            hangover_samples: samples(config.hangover_ms),
            minima: [0.0; SUB_WINDOWS - 1],
            completed: 0,
            next: 0,
            current_min: f32::INFINITY,
            current_samples: 0,
            active: false,
            loud_run: 0,
            quiet_run: 0,
        };
        vad.reset();
        Ok(vad)
    }

    /// The settings in use.
    pub fn config(&self) -> &VadConfig {
        &self.config
    }

    /// Whether the stream is currently active.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The current noise floor in dBov ([`SILENCE_DBOV`] before any frame).
    pub fn noise_floor_dbov(&self) -> f32 {
        let completed = self.minima[..self.completed]
            .iter()
            .fold(f32::INFINITY, |a, &b| a.min(b));
        let floor = completed.min(self.current_min);
        if floor.is_finite() {
            floor.min(self.config.max_noise_floor_dbov)
        } else {
            SILENCE_DBOV
        }
    }

    /// Forgets the noise floor and the talking state.
    pub fn reset(&mut self) {
        self.completed = 0;
        self.next = 0;
        self.current_min = f32::INFINITY;
        self.current_samples = 0;
        self.active = false;
        self.loud_run = 0;
        self.quiet_run = 0;
    }

    /// Classifies the next frame.
    pub fn process(&mut self, frame: &[i16]) -> VadDecision {
        let level = energy_dbov(frame);
        let len = frame.len() as u64;
        if len > 0 {
            self.track_floor(level, len);
        }
        let floor = self.noise_floor_dbov();
        let loud = len > 0
            && level >= self.config.min_active_dbov
            && level >= floor + self.config.threshold_db;
        if loud {
            self.loud_run = self.loud_run.saturating_add(len);
            self.quiet_run = 0;
        } else if len > 0 {
            self.quiet_run = self.quiet_run.saturating_add(len);
            self.loud_run = 0;
        }
        let mut transition = None;
        if !self.active && loud && self.loud_run >= self.onset_samples {
            self.active = true;
            transition = Some(VadTransition::StartedTalking);
        } else if self.active && !loud && self.quiet_run >= self.hangover_samples {
            self.active = false;
            transition = Some(VadTransition::StoppedTalking);
        }
        VadDecision {
            active: self.active,
            level_dbov: level,
            noise_floor_dbov: floor,
            transition,
        }
    }

    fn track_floor(&mut self, level: f32, len: u64) {
        self.current_min = self.current_min.min(level);
        self.current_samples += len;
        if self.current_samples >= self.sub_window_samples {
            // The ring holds the newest completed sub-windows; with the current one they
            // span the configured window.
            self.minima[self.next] = self.current_min;
            self.next = (self.next + 1) % self.minima.len();
            self.completed = (self.completed + 1).min(self.minima.len());
            self.current_min = f32::INFINITY;
            self.current_samples = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tone::{Cadence, ToneComponent, ToneGenerator, ToneLevel};

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Roughly normal (sum of 12 uniforms).
        fn normal(&mut self) -> f64 {
            (0..12)
                .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
                .sum::<f64>()
                - 6.0
        }
    }

    fn noise(n: usize, dbov: f64, seed: u64) -> Vec<i16> {
        let sigma = 32768.0 * 10f64.powf(dbov / 20.0);
        let mut rng = Rng(seed);
        (0..n)
            .map(|_| (rng.normal() * sigma).round().clamp(-32768.0, 32767.0) as i16)
            .collect()
    }

    fn tone(rate: u32, n: usize, dbov: f32) -> Vec<i16> {
        let mut g = ToneGenerator::sine(rate, 1004.0, ToneLevel::Dbov(dbov)).unwrap();
        let mut v = vec![0; n];
        g.fill(&mut v);
        v
    }

    #[test]
    fn vad_energy_dbov_reference_levels() {
        assert_eq!(energy_dbov(&[]), SILENCE_DBOV);
        assert_eq!(energy_dbov(&[0; 160]), SILENCE_DBOV);
        assert_eq!(energy_dbov(&[i16::MIN; 160]), 0.0);
        let square: Vec<i16> = (0..160)
            .map(|i| if i % 8 < 4 { 32767 } else { -32767 })
            .collect();
        assert!(energy_dbov(&square).abs() < 0.001);
        let full_sine = tone(8000, 8000, -3.0103);
        assert!((energy_dbov(&full_sine) + 3.01).abs() < 0.01);
        for level in [-10.0f32, -20.0, -40.0, -60.0] {
            let x = tone(16000, 16000, level);
            assert!((energy_dbov(&x) - level).abs() < 0.05, "{level}");
        }
        let lsb: Vec<i16> = (0..160).map(|i| if i % 2 == 0 { 1 } else { -1 }).collect();
        assert!((energy_dbov(&lsb) + 90.31).abs() < 0.01);
        let n = noise(16000, -30.0, 1);
        assert!((energy_dbov(&n) + 30.0).abs() < 0.2);
    }

    fn run(vad: &mut VoiceActivity, pcm: &[i16], frame: usize) -> Vec<VadDecision> {
        pcm.chunks(frame).map(|f| vad.process(f)).collect()
    }

    #[test]
    fn vad_silence_and_stationary_noise_are_inactive() {
        for rate in [8000u32, 16000, 48000] {
            let frame = rate as usize / 50;
            for level in [-70.0, -50.0, -40.0, -30.0] {
                let mut vad = VoiceActivity::new(VadConfig::new(rate)).unwrap();
                let d = run(&mut vad, &noise(rate as usize * 5, level, 3), frame);
                assert!(d.iter().all(|d| !d.active), "rate {rate} noise {level}");
            }
            let mut vad = VoiceActivity::new(VadConfig::new(rate)).unwrap();
            let d = run(&mut vad, &vec![0; rate as usize], frame);
            assert!(d.iter().all(|d| !d.active && d.level_dbov == SILENCE_DBOV));
        }
    }

    #[test]
    fn vad_tone_burst_in_noise_with_exact_hangover() {
        let rate = 8000;
        let frame = 160;
        let mut pcm = noise(rate * 2, -50.0, 5);
        let burst: Vec<i16> = tone(rate as u32, rate / 2, -20.0);
        let mut noisy_burst = noise(rate / 2, -50.0, 6);
        for (a, b) in noisy_burst.iter_mut().zip(&burst) {
            *a = a.saturating_add(*b);
        }
        pcm.extend(noisy_burst);
        pcm.extend(noise(rate * 2, -50.0, 7));
        let mut vad = VoiceActivity::new(VadConfig::new(rate as u32)).unwrap();
        let d = run(&mut vad, &pcm, frame);
        let start = 2 * 50; // first burst frame
        let end = start + 25; // first frame after the burst
        assert!(d[..start].iter().all(|d| !d.active));
        assert_eq!(d[start].transition, Some(VadTransition::StartedTalking));
        assert!(d[start..end].iter().all(|d| d.active));
        assert!((d[start].level_dbov + 20.0).abs() < 0.1);
        assert!(
            (d[start].noise_floor_dbov + 51.0).abs() < 2.0,
            "{}",
            d[start].noise_floor_dbov
        );
        // 300 ms hangover: 15 quiet frames, inactive on the 15th.
        assert!(
            d[end..end + 14]
                .iter()
                .all(|d| d.active && d.transition.is_none())
        );
        assert_eq!(d[end + 14].transition, Some(VadTransition::StoppedTalking));
        assert!(d[end + 14..].iter().all(|d| !d.active));
        let transitions = d.iter().filter(|d| d.transition.is_some()).count();
        assert_eq!(transitions, 2);
    }

    #[test]
    fn vad_hangover_bridges_pauses_and_onset_ignores_clicks() {
        let rate = 16000;
        let frame = 160; // 10 ms
        let mut pcm = Vec::new();
        for _ in 0..5 {
            pcm.extend(tone(rate, 3200, -25.0)); // 200 ms on
            pcm.extend(vec![0; 1600]); // 100 ms pause
        }
        let mut vad = VoiceActivity::new(VadConfig::new(rate)).unwrap();
        let d = run(&mut vad, &pcm, frame as usize);
        let starts = d
            .iter()
            .filter(|d| d.transition == Some(VadTransition::StartedTalking))
            .count();
        assert_eq!(starts, 1);
        // onset 20 ms = two 10 ms frames: the first loud frame is not yet active.
        assert!(!d[0].active && d[1].active);

        // A 10 ms click in silence does not start talking.
        let mut vad = VoiceActivity::new(VadConfig::new(rate)).unwrap();
        let mut pcm = vec![0; 3200];
        pcm.extend(tone(rate, 160, -10.0));
        pcm.extend(vec![0; 3200]);
        assert!(run(&mut vad, &pcm, 160).iter().all(|d| !d.active));
    }

    #[test]
    fn vad_adapts_to_a_noise_step() {
        let rate = 8000;
        let mut vad = VoiceActivity::new(VadConfig::new(rate)).unwrap();
        let mut pcm = noise(rate as usize * 3, -65.0, 8);
        pcm.extend(noise(rate as usize * 5, -42.0, 9));
        let d = run(&mut vad, &pcm, 160);
        // The step is loud at first, then becomes the floor within the 2 s window plus
        // hangover.
        assert!(d[150].active);
        assert!(d[150 + 125..].iter().all(|d| !d.active));
        let last = d.last().unwrap();
        assert!(
            (last.noise_floor_dbov + 43.0).abs() < 2.0,
            "{}",
            last.noise_floor_dbov
        );
    }

    #[test]
    fn vad_loud_signal_never_becomes_floor() {
        let rate = 8000;
        let mut vad = VoiceActivity::new(VadConfig::new(rate)).unwrap();
        let x = tone(rate, rate as usize * 6, -20.0);
        let d = run(&mut vad, &x, 160);
        assert!(d[1..].iter().all(|d| d.active));
        assert!(d.iter().all(|d| d.noise_floor_dbov <= -35.0));
        vad.reset();
        assert!(!vad.is_active());
        assert_eq!(vad.noise_floor_dbov(), SILENCE_DBOV);
    }

    #[test]
    fn vad_rejects_bad_config_and_handles_empty_frames() {
        let bad = [
            VadConfig {
                sample_rate: 0,
                ..VadConfig::new(8000)
            },
            VadConfig {
                threshold_db: f32::NAN,
                ..VadConfig::new(8000)
            },
            VadConfig {
                noise_window_ms: 10,
                ..VadConfig::new(8000)
            },
            VadConfig {
                max_noise_floor_dbov: f32::INFINITY,
                ..VadConfig::new(8000)
            },
        ];
        for c in bad {
            assert!(VoiceActivity::new(c).is_err());
        }
        let mut vad = VoiceActivity::new(VadConfig {
            onset_ms: 0,
            ..VadConfig::new(8000)
        })
        .unwrap();
        let d = vad.process(&[]);
        assert!(!d.active && d.level_dbov == SILENCE_DBOV);
        assert!(vad.process(&tone(8000, 160, -20.0)).active);
        assert!(vad.process(&[]).active);
    }

    #[test]
    fn vad_ringback_cadence_follows_the_tone() {
        let rate = 8000;
        let mut g = ToneGenerator::new(
            rate,
            &[
                ToneComponent::new(440.0, ToneLevel::Dbm0(-19.0)),
                ToneComponent::new(480.0, ToneLevel::Dbm0(-19.0)),
            ],
            Cadence::repeating(&[(2000, 4000)]).unwrap(),
        )
        .unwrap();
        let mut vad = VoiceActivity::new(VadConfig::new(rate)).unwrap();
        let mut frame = [0i16; 160];
        let mut active = Vec::new();
        for _ in 0..300 {
            g.fill(&mut frame);
            active.push(vad.process(&frame).active);
        }
        // Ringback: on for 2 s, then off after the 300 ms hangover.
        assert!(active[..100].iter().all(|&a| a));
        assert!(active[115..300].iter().all(|&a| !a));
    }
}
