//! Users of a call's decoded audio on its media worker: media forks (the audio streamed to a
//! WebSocket service, the service's bot audio played back into a leg, barge-in) and
//! conversation analytics.
//!
//! [`CallTaps`] lives with the call on its worker and is driven by the media clock around
//! [`MediaCall::tick`]: [`CallTaps::before_tick`] injects each fork's bot audio into its leg,
//! [`CallTaps::on_event`] sees the call's media events (the caller starting to talk while
//! bot audio plays is a barge-in), and [`CallTaps::after_tick`] reads every member's decoded
//! input of the frame, builds each fork's frame (caller, agent, both as stereo or mixed,
//! resampled to 8 or 16 kHz) and feeds the analytics. Nothing here blocks, locks or
//! allocates per frame: buffers and resamplers are made when a fork or the analytics
//! start (and again only when the call's mixing rate changes).

use switchboard_codecs::analytics::{AnalyticsConfig, AnalyticsSummary, ConversationAnalytics};
use switchboard_codecs::resample::Resampler;
use switchboard_proto::media::{FrameKind, MediaCall, MediaEvent};
use switchboard_proto::relay::LegId;

use crate::fork::{ForkMediaSide, ForkWhat};

/// Sample rate the analytics run at.
pub const ANALYTICS_RATE: u32 = 8000;
/// Most forks on one call.
pub const MAX_FORKS: usize = 4;

/// What a fork on the worker needs.
#[derive(Debug)]
pub struct ForkTapSpec {
    /// The fork's id (chosen by the control plane, unique within the call).
    pub id: u32,
    /// The caller's leg.
    pub caller: Option<LegId>,
    /// The agent's leg.
    pub agent: Option<LegId>,
    /// Which audio goes to the service.
    pub what: ForkWhat,
    /// 8000 or 16000.
    pub sample_rate: u32,
    /// The leg the bot audio is played into (none: bot audio is discarded).
    pub bot_leg: Option<LegId>,
    /// The media worker's ends of the fork's rings.
    pub media: ForkMediaSide,
}

/// A resampler kept matching the call's mixing rate.
#[derive(Debug, Default)]
struct Rate {
    r: Option<Resampler>,
}

impl Rate {
    /// Converts `input` (at `from`) to `to` into `out`; samples written. A new mixing rate
    /// makes a new resampler (the only allocation, at a rate change).
    fn convert(&mut self, from: u32, to: u32, input: &[i16], out: &mut [i16]) -> usize {
        if self
            .r
            .as_ref()
            .is_none_or(|r| r.from_hz() != from || r.to_hz() != to)
        {
            self.r = Resampler::new(from, to).ok();
        }
        match self.r.as_mut() {
            Some(r) => r.process(input, out),
            None => {
                out.fill(0);
                0
            }
        }
    }
}

/// Longest frame handled: 20 ms at 48 kHz.
const MAX_FRAME: usize = 960;

#[derive(Debug)]
struct ForkTap {
    id: u32,
    caller: Option<LegId>,
    agent: Option<LegId>,
    what: ForkWhat,
    rate: u32,
    bot_leg: Option<LegId>,
    media: ForkMediaSide,
    down: [Rate; 2],
    up: Rate,
    /// Per channel, at the fork's rate.
    chan: [Vec<i16>; 2],
    /// The frame sent (interleaved when stereo).
    out: Vec<i16>,
    /// Caller and agent summed, at the mixing rate.
    sum: Vec<i16>,
    /// One bot frame at the fork's rate, and at the mixing rate.
    bot: Vec<i16>,
    bot_mix: Vec<i16>,
    /// Bot audio was played in the last frame.
    bot_playing: bool,
}

impl ForkTap {
    fn new(spec: ForkTapSpec) -> Self {
        let per = (spec.sample_rate / 50) as usize;
        Self {
            id: spec.id,
            caller: spec.caller,
            agent: spec.agent,
            what: spec.what,
            rate: spec.sample_rate,
            bot_leg: spec.bot_leg,
            media: spec.media,
            down: [Rate::default(), Rate::default()],
            up: Rate::default(),
            chan: [vec![0; per], vec![0; per]],
            out: vec![0; per * usize::from(spec.what.channels())],
            sum: vec![0; MAX_FRAME],
            bot: vec![0; per],
            bot_mix: vec![0; MAX_FRAME],
            bot_playing: false,
        }
    }

    fn before_tick(&mut self, media: &mut MediaCall) {
        let Some(leg) = self.bot_leg else {
            // Nobody hears the bot: its audio is consumed and dropped.
            self.bot_playing = self.media.bot.pop_frame(&mut self.bot);
            return;
        };
        self.bot_playing = self.media.bot.pop_frame(&mut self.bot);
        if !self.bot_playing {
            return;
        }
        let mix_rate = media.mix_rate();
        let n = media.frame_len().min(self.bot_mix.len());
        let got = self
            .up
            .convert(self.rate, mix_rate, &self.bot, &mut self.bot_mix[..n]);
        let _ = media.inject(leg, &self.bot_mix[..got.min(n)]);
    }

    fn on_talking(&mut self, leg: LegId) {
        if self.caller == Some(leg) && (self.bot_playing || self.media.bot.has_audio()) {
            let _ = self.media.bot.barge_in();
            self.bot_playing = false;
        }
    }

    fn after_tick(&mut self, media: &MediaCall) {
        let mix_rate = media.mix_rate();
        let per = self.chan[0].len();
        let frame = |leg: Option<LegId>| leg.and_then(|l| media.input_frame(l)).unwrap_or(&[]);
        match self.what {
            ForkWhat::Caller | ForkWhat::Agent => {
                let leg = if self.what == ForkWhat::Caller {
                    self.caller
                } else {
                    self.agent
                };
                let input = frame(leg);
                convert_or_silence(&mut self.down[0], mix_rate, self.rate, input, &mut self.out);
            }
            ForkWhat::Stereo => {
                for (c, leg) in [self.caller, self.agent].into_iter().enumerate() {
                    let input = frame(leg);
                    convert_or_silence(
                        &mut self.down[c],
                        mix_rate,
                        self.rate,
                        input,
                        &mut self.chan[c],
                    );
                }
                for (k, pair) in self.out.chunks_exact_mut(2).enumerate().take(per) {
                    pair[0] = self.chan[0][k];
                    pair[1] = self.chan[1][k];
                }
            }
            _ => {
                let a = frame(self.caller);
                let b = frame(self.agent);
                let n = a.len().max(b.len()).min(self.sum.len());
                for (k, s) in self.sum[..n].iter_mut().enumerate() {
                    let x = i32::from(a.get(k).copied().unwrap_or(0))
                        + i32::from(b.get(k).copied().unwrap_or(0));
                    *s = x.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
                }
                let sum = &self.sum[..n];
                convert_or_silence(&mut self.down[0], mix_rate, self.rate, sum, &mut self.out);
            }
        }
        let _ = self.media.audio.push_frame(&self.out);
    }
}

/// Resamples one frame into `out` (whole), silence when there is no input.
fn convert_or_silence(r: &mut Rate, from: u32, to: u32, input: &[i16], out: &mut [i16]) {
    if input.is_empty() {
        out.fill(0);
        return;
    }
    let n = r.convert(from, to, input, out);
    if let Some(rest) = out.get_mut(n..) {
        rest.fill(0);
    }
}

#[derive(Debug)]
struct AnalyticsTap {
    caller: Option<LegId>,
    agent: Option<LegId>,
    engine: ConversationAnalytics,
    down: [Rate; 2],
    buf: [Vec<i16>; 2],
    /// The last summary produced.
    last: Option<AnalyticsSummary>,
}

/// The decoded-audio users of one call; see the [module docs](self).
#[derive(Debug, Default)]
pub struct CallTaps {
    forks: Vec<ForkTap>,
    analytics: Option<Box<AnalyticsTap>>,
}

impl CallTaps {
    /// Whether no fork and no analytics run.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.forks.is_empty() && self.analytics.is_none()
    }

    /// Starts a fork; one with the same id is replaced.
    ///
    /// # Errors
    ///
    /// A message when the rate is not 8 or 16 kHz or the call has too many forks.
    pub fn start_fork(&mut self, spec: ForkTapSpec) -> Result<(), String> {
        if !matches!(spec.sample_rate, 8000 | 16000) {
            return Err("the fork rate is 8000 or 16000".into());
        }
        self.forks.retain(|f| f.id != spec.id);
        if self.forks.len() >= MAX_FORKS {
            return Err(format!("at most {MAX_FORKS} forks per call"));
        }
        self.forks.push(ForkTap::new(spec));
        Ok(())
    }

    /// Stops a fork (its rings are dropped); whether it ran.
    pub fn stop_fork(&mut self, id: u32) -> bool {
        let before = self.forks.len();
        self.forks.retain(|f| f.id != id);
        self.forks.len() != before
    }

    /// Starts the analytics (restarts them when running): party 0 the caller, 1 the agent;
    /// a live summary every `interval_ms` of call time (0: none).
    ///
    /// # Errors
    ///
    /// A message when the settings are refused.
    pub fn start_analytics(
        &mut self,
        caller: Option<LegId>,
        agent: Option<LegId>,
        interval_ms: u32,
    ) -> Result<(), String> {
        let mut config = AnalyticsConfig::new(ANALYTICS_RATE);
        config.report_interval_ms = interval_ms;
        let engine = ConversationAnalytics::new(config).map_err(|e| e.to_string())?;
        let per = (ANALYTICS_RATE / 50) as usize;
        self.analytics = Some(Box::new(AnalyticsTap {
            caller,
            agent,
            engine,
            down: [Rate::default(), Rate::default()],
            buf: [vec![0; per], vec![0; per]],
            last: None,
        }));
        Ok(())
    }

    /// Stops the analytics; their final summary, if they ran.
    pub fn stop_analytics(&mut self) -> Option<AnalyticsSummary> {
        self.analytics.take().map(|a| a.engine.summary())
    }

    /// The analytics' summary so far, if they run.
    #[must_use]
    pub fn analytics_summary(&self) -> Option<AnalyticsSummary> {
        self.analytics.as_ref().map(|a| a.engine.summary())
    }

    /// Before the frame is mixed: each fork's bot audio goes into its leg.
    pub fn before_tick(&mut self, media: &mut MediaCall) {
        for f in &mut self.forks {
            f.before_tick(media);
        }
    }

    /// A media event of the frame: a caller starting to talk while bot audio plays is a
    /// barge-in (the bot audio is discarded at once, the session tells the service).
    pub fn on_event(&mut self, event: &MediaEvent) {
        if let MediaEvent::Talking { leg, talking: true } = event {
            for f in &mut self.forks {
                f.on_talking(*leg);
            }
        }
    }

    /// After the frame: the forks' audio and the analytics. Returns a live analytics
    /// summary when one is due. Forks whose session ended are dropped.
    pub fn after_tick(&mut self, media: &MediaCall) -> Option<AnalyticsSummary> {
        self.forks.retain(|f| !f.media.audio.is_closed());
        for f in &mut self.forks {
            f.after_tick(media);
        }
        let a = self.analytics.as_deref_mut()?;
        let mix_rate = media.mix_rate();
        for (c, leg) in [a.caller, a.agent].into_iter().enumerate() {
            // Only what was received counts as talk: concealment (the tail the jitter buffer
            // plays after a sender stops, a lost packet) is silence here; the analytics'
            // bridging covers short gaps inside a talk segment.
            let input = leg
                .filter(|l| media.input_kind(*l) == Some(FrameKind::Audio))
                .and_then(|l| media.input_frame(l))
                .unwrap_or(&[]);
            convert_or_silence(
                &mut a.down[c],
                mix_rate,
                ANALYTICS_RATE,
                input,
                &mut a.buf[c],
            );
        }
        let [caller, agent] = &a.buf;
        let summary = a.engine.process(&[caller, agent]);
        if summary.is_some() {
            a.last = summary;
        }
        summary
    }

    /// A leg left the call: the forks and analytics stop using it.
    pub fn remove_leg(&mut self, leg: LegId) {
        for f in &mut self.forks {
            for l in [&mut f.caller, &mut f.agent, &mut f.bot_leg] {
                if *l == Some(leg) {
                    *l = None;
                }
            }
        }
        if let Some(a) = self.analytics.as_deref_mut() {
            for l in [&mut a.caller, &mut a.agent] {
                if *l == Some(leg) {
                    *l = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fork::{ForkConfig, pipes};
    use switchboard_codecs::codec::{CodecKind, CodecSpec};
    use switchboard_proto::media::{MediaCallConfig, MediaLegConfig};

    #[test]
    fn fork_frames_and_bot_injection() {
        let mut media = MediaCall::new(MediaCallConfig::default());
        let a = LegId::from_raw(1);
        let b = LegId::from_raw(2);
        for leg in [a, b] {
            let spec = CodecSpec::new(CodecKind::Pcmu);
            let cfg = MediaLegConfig {
                recv: vec![spec],
                send: spec,
                recv_events: None,
                send_events: None,
                ptime_ms: 20,
            };
            media
                .add_leg(switchboard_proto::time::Micros(0), leg, cfg, None)
                .unwrap();
        }
        let config = ForkConfig::new("f", "ws://127.0.0.1:9/", 16000, 2);
        let (side, mut session) = pipes(&config, 200, 200);
        let mut taps = CallTaps::default();
        taps.start_fork(ForkTapSpec {
            id: 1,
            caller: Some(a),
            agent: Some(b),
            what: ForkWhat::Stereo,
            sample_rate: 16000,
            bot_leg: Some(a),
            media: side,
        })
        .unwrap();
        taps.before_tick(&mut media);
        media.tick(switchboard_proto::time::Micros(20_000), &mut |_, _| {});
        assert!(taps.after_tick(&media).is_none());
        assert_eq!(session.audio.slots(), 640);
        session.bot.push_entire_slice(&[1000; 320]).unwrap();
        taps.before_tick(&mut media);
        assert!(taps.forks[0].bot_playing);
        taps.on_event(&MediaEvent::Talking {
            leg: a,
            talking: true,
        });
        assert!(!taps.forks[0].bot_playing);
        assert!(taps.stop_fork(1));
        assert!(taps.is_empty());
    }
}
