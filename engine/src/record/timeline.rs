//! A recording's timeline: where each leg's decoded audio goes, and silence everywhere else.
//!
//! Sans-IO. Positions are sample counts at the recording's rate from the moment the recording
//! started (its start mark). A [`Track`] holds one leg's audio in a window that starts at the
//! first position not yet written to the file (`base`) and reaches a little past the jitter
//! delay. A packet's position comes from its RTP timestamp (RFC 3550 §5.1) mapped through an
//! anchor — the first packet's arrival — so packets that arrive out of order or with jitter
//! still land where they belong, and a lost packet leaves silence of its exact length. The
//! anchor is re-taken from the arrival time when the SSRC or the clock rate changes, or when
//! the timestamp and the arrival disagree by more than [`MAX_SKEW_MS`] (a sender restart, a
//! timestamp jump, a clock drifting too far).
//!
//! Drive contract: for each packet, [`Track::position`] then [`Track::place`] with its decoded
//! samples; to write, [`Track::take`] the samples from `base` on (they leave the window,
//! which advances). Samples placed before `base` arrived too late and are counted; so are
//! samples beyond the window.

/// Timestamp and arrival may disagree by this much before the track re-anchors.
pub const MAX_SKEW_MS: u64 = 500;

#[derive(Debug, Clone, Copy)]
struct Anchor {
    ssrc: u32,
    clock: u32,
    /// Extended timestamp and position of the anchor packet.
    anchor_ext: i64,
    anchor_pos: i64,
    /// Highest timestamp seen, raw and extended (RFC 3550 §A.1-style unwrapping).
    last_ts: u32,
    last_ext: i64,
}

/// What [`Track::place`] did with a packet's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    /// Samples written into the window.
    pub written: usize,
    /// Samples that arrived after their position had been written to the file.
    pub late: usize,
    /// Samples beyond the end of the window.
    pub ahead: usize,
}

/// One leg's audio on the timeline.
#[derive(Debug, Clone)]
pub struct Track {
    rate: u32,
    window: Vec<i16>,
    base: u64,
    anchor: Option<Anchor>,
    max_skew: i64,
    reanchors: u64,
}

impl Track {
    /// A track at `rate` Hz whose window holds `window` samples.
    #[must_use]
    pub fn new(rate: u32, window: usize) -> Self {
        Track {
            rate,
            window: vec![0; window.max(1)],
            base: 0,
            anchor: None,
            max_skew: i64::from(rate) * MAX_SKEW_MS as i64 / 1000,
            reanchors: 0,
        }
    }

    /// The first position not yet taken.
    #[must_use]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// How often the anchor was re-taken after the first packet.
    #[must_use]
    pub fn reanchors(&self) -> u64 {
        self.reanchors
    }

    /// The position of a packet's first sample. `arrival_pos` is its arrival time as a
    /// position; `clock` the RTP clock rate of its payload type.
    pub fn position(&mut self, arrival_pos: i64, ssrc: u32, ts: u32, clock: u32) -> i64 {
        let clock = clock.max(1);
        if let Some(a) = &mut self.anchor {
            if a.ssrc == ssrc && a.clock == clock {
                let diff = i64::from(ts.wrapping_sub(a.last_ts) as i32);
                let ext = a.last_ext + diff;
                if diff > 0 {
                    a.last_ts = ts;
                    a.last_ext = ext;
                }
                let pos = a.anchor_pos
                    + ((i128::from(ext - a.anchor_ext) * i128::from(self.rate)) / i128::from(clock))
                        as i64;
                if (pos - arrival_pos).abs() <= self.max_skew {
                    return pos;
                }
            }
            self.reanchors += 1;
        }
        self.anchor = Some(Anchor {
            ssrc,
            clock,
            anchor_ext: 0,
            anchor_pos: arrival_pos,
            last_ts: ts,
            last_ext: 0,
        });
        arrival_pos
    }

    /// Writes `samples` from position `pos` on (overwriting: a duplicate packet lands on
    /// itself).
    pub fn place(&mut self, pos: i64, samples: &[i16]) -> Placement {
        let mut out = Placement::default();
        let base = i64::try_from(self.base).unwrap_or(i64::MAX);
        let mut start = pos;
        let mut src = samples;
        if start < base {
            let skip = usize::try_from(base - start)
                .unwrap_or(usize::MAX)
                .min(src.len());
            out.late = skip;
            src = &src[skip..];
            start = base;
        }
        let w = self.window.len();
        let room = usize::try_from(base + w as i64 - start).unwrap_or(0);
        if src.len() > room {
            out.ahead = src.len() - room;
            src = &src[..room];
        }
        let mut idx = usize::try_from(start).unwrap_or(0) % w;
        for s in src {
            self.window[idx] = *s;
            idx += 1;
            if idx == w {
                idx = 0;
            }
        }
        out.written = src.len();
        out
    }

    /// Moves `out.len()` samples from `base` on into `out` (silence where nothing was
    /// placed) and advances `base`.
    pub fn take(&mut self, out: &mut [i16]) {
        let w = self.window.len();
        let mut idx = usize::try_from(self.base % w as u64).unwrap_or(0);
        for o in out.iter_mut() {
            *o = std::mem::take(&mut self.window[idx]);
            idx += 1;
            if idx == w {
                idx = 0;
            }
        }
        self.base += out.len() as u64;
    }
}

/// Adds `src` into `dst` with saturation.
pub fn mix_into(dst: &mut [i16], src: &[i16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = d.saturating_add(*s);
    }
}

/// Interleaves two channels.
pub fn interleave(left: &[i16], right: &[i16], out: &mut [i16]) {
    for ((o, l), r) in out.chunks_exact_mut(2).zip(left).zip(right) {
        o[0] = *l;
        o[1] = *r;
    }
}

/// Paused stretches of a recording, as positions: audio inside them is written as silence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseMask {
    intervals: Vec<(u64, Option<u64>)>,
}

impl PauseMask {
    /// Starts a pause at `pos` (no effect while paused).
    pub fn pause(&mut self, pos: u64) {
        if !self.is_paused() {
            self.intervals.push((pos, None));
        }
    }

    /// Ends the running pause at `pos` (no effect when not paused).
    pub fn resume(&mut self, pos: u64) {
        if let Some(last) = self.intervals.last_mut() {
            if last.1.is_none() {
                last.1 = Some(pos.max(last.0));
            }
        }
    }

    /// Whether a pause is running.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.intervals.last().is_some_and(|i| i.1.is_none())
    }

    /// Every pause: start and end (`None` while running).
    #[must_use]
    pub fn intervals(&self) -> &[(u64, Option<u64>)] {
        &self.intervals
    }

    /// Silences the parts of `frames` (interleaved, `channels` per frame, first frame at
    /// position `start`) that fall inside a pause.
    pub fn apply(&self, start: u64, frames: &mut [i16], channels: usize) {
        let channels = channels.max(1);
        let end = start + (frames.len() / channels) as u64;
        for &(from, to) in &self.intervals {
            let to = to.unwrap_or(u64::MAX);
            let a = from.max(start);
            let b = to.min(end);
            if a < b {
                let i = usize::try_from(a - start).unwrap_or(0) * channels;
                let j = usize::try_from(b - start).unwrap_or(0) * channels;
                frames[i..j].fill(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16, n: usize) -> Vec<i16> {
        vec![v; n]
    }

    #[test]
    fn reordered_packets_land_in_place_and_gaps_are_silent() {
        let mut t = Track::new(8000, 8000);
        // Packets 0, 2, 1, (3 lost), 4 of 160 samples each, clock 8000, all arriving near 0.
        let order = [0u32, 2, 1, 4];
        for k in order {
            let pos = t.position(0, 1, 1000 + k * 160, 8000);
            assert_eq!(pos, i64::from(k) * 160);
            let p = t.place(pos, &frame(k as i16 + 1, 160));
            assert_eq!(p.written, 160);
        }
        let mut out = vec![7i16; 800];
        t.take(&mut out);
        for k in 0..5 {
            let want = if k == 3 { 0 } else { k as i16 + 1 };
            assert!(
                out[k * 160..(k + 1) * 160].iter().all(|s| *s == want),
                "frame {k}"
            );
        }
        assert_eq!(t.base(), 800);
        // The window is clean after a take.
        let mut again = vec![1i16; 800];
        t.take(&mut again);
        assert!(again.iter().all(|s| *s == 0));
    }

    #[test]
    fn late_and_early_samples_are_counted() {
        let mut t = Track::new(8000, 1000);
        let mut out = vec![0i16; 500];
        t.take(&mut out);
        // Half of this frame is before base.
        let p = t.place(420, &frame(1, 160));
        assert_eq!(
            p,
            Placement {
                written: 80,
                late: 80,
                ahead: 0
            }
        );
        // Beyond the window (base 500 + 1000).
        let p = t.place(1450, &frame(1, 160));
        assert_eq!(
            p,
            Placement {
                written: 50,
                late: 0,
                ahead: 110
            }
        );
    }

    #[test]
    fn timestamps_unwrap_and_ssrc_changes_reanchor() {
        let mut t = Track::new(8000, 8000);
        let start = u32::MAX - 200;
        assert_eq!(t.position(0, 5, start, 8000), 0);
        assert_eq!(t.position(0, 5, start.wrapping_add(160), 8000), 160);
        assert_eq!(
            t.position(0, 5, start.wrapping_add(480), 8000),
            480,
            "across the wrap"
        );
        assert_eq!(
            t.position(0, 5, start.wrapping_add(320), 8000),
            320,
            "late one"
        );
        // New SSRC: anchored on its arrival.
        assert_eq!(t.position(3000, 6, 77, 8000), 3000);
        assert_eq!(t.position(3000, 6, 77 + 160, 8000), 3160);
        assert_eq!(t.reanchors(), 1);
        // A timestamp jump of an hour: re-anchored on arrival.
        assert_eq!(t.position(3400, 6, 77 + 8000 * 3600, 8000), 3400);
        assert_eq!(t.reanchors(), 2);
    }

    #[test]
    fn clock_rates_scale_to_the_recording_rate() {
        // Opus (clock 48000) into a 16 kHz recording: 960 ticks = 320 samples.
        let mut t = Track::new(16000, 16000);
        assert_eq!(t.position(100, 1, 0, 48000), 100);
        assert_eq!(t.position(100, 1, 960, 48000), 420);
        // G.722 (clock 8000, audio 16 kHz): 160 ticks = 320 samples.
        let mut t = Track::new(16000, 16000);
        assert_eq!(t.position(0, 1, 0, 8000), 0);
        assert_eq!(t.position(0, 1, 160, 8000), 320);
    }

    #[test]
    fn pauses_silence_their_span() {
        let mut m = PauseMask::default();
        m.pause(100);
        assert!(m.is_paused());
        m.pause(150); // ignored while paused
        m.resume(300);
        m.resume(400); // ignored: not paused
        assert_eq!(m.intervals(), &[(100, Some(300))]);
        let mut frames = vec![1i16; 2 * 400];
        m.apply(0, &mut frames, 2);
        for (i, f) in frames.chunks(2).enumerate() {
            let silent = (100..300).contains(&i);
            assert_eq!(f[0] == 0, silent, "frame {i}");
            assert_eq!(f[1] == 0, silent, "frame {i}");
        }
        // A running pause silences everything after it.
        m.pause(350);
        let mut frames = vec![1i16; 100];
        m.apply(300, &mut frames, 1);
        assert!(frames[..50].iter().all(|s| *s == 1));
        assert!(frames[50..].iter().all(|s| *s == 0));
    }

    #[test]
    fn mixing_saturates() {
        let mut d = vec![30000i16, -30000, 5];
        mix_into(&mut d, &[10000, -10000, 5]);
        assert_eq!(d, vec![i16::MAX, i16::MIN, 10]);
        let mut out = vec![0; 4];
        interleave(&[1, 2], &[3, 4], &mut out);
        assert_eq!(out, vec![1, 3, 2, 4]);
    }
}
