//! The media call: members, hears-matrix, the 20 ms tick.
//!
//! # Model
//!
//! Every member (leg) has a row of the hears-matrix: the legs it hears. A new member hears
//! nobody and is heard by nobody until [`MediaCall::set_hears`]. Supervision modes are rows
//! (see the tests for listen, whisper, barge and talk-to-customer). A muted leg is heard by
//! nobody; a deaf leg hears no member (prompts and digits played to it still reach it).
//!
//! # One frame ([`MediaCall::tick`])
//!
//! 1. Every member's [`LegInput`] yields one 20 ms frame at the call's mixing rate; the
//!    leg's gain is applied, voice activity and in-band DTMF are tracked.
//! 2. The talkers to mix are the members with audio (not silence) that are not muted; in a
//!    room with more than [`MediaCallConfig::large_room`] members only the
//!    [`MediaCallConfig::loudest`] of them by frame energy (a talker already mixed counts
//!    3 dB louder, so that two talkers of the same level do not alternate).
//! 3. The total of all talkers is summed once; a listener that hears every other member gets
//!    the total minus its own contribution (O(N) for the whole room), others the sum of the
//!    talkers they hear.
//! 4. Listeners with the same send format (payload type, clock, ptime 20 ms) and the same
//!    set of talkers heard, and nothing played to them alone, share one encoding: the payload
//!    is encoded once by the group's first member and each leg gets its own RTP header.
//!    Listeners with a 40 or 60 ms ptime, a prompt or in-band digits of their own encode
//!    alone. For stateful encoders (G.722, Opus, or any resampling on output) a listener
//!    joins a group only when it has sent nothing yet, when the frame is silent (no talker,
//!    no prompt: the streams of two encoders agree there), or when it was fed in the
//!    previous frame by the group's encoder or by the same encoder as the group's first
//!    member (a group whose first member left stays together); otherwise it encodes alone
//!    until such a frame. A listener leaving a group goes on with its own encoder, whose
//!    state is older: a short glitch for that listener.
//! 5. Every member gets a packet every ptime, even when it hears nobody or is deaf (encoded
//!    silence keeps the stream and the carrier's media timers alive).
//!
//! Mixing rate: 8000 Hz while every member uses G.711 (or L16/8000); 16000 Hz as soon as one
//! uses G.722, Opus or L16/16000; 48000 Hz only for an L16/48000 member. Changing it
//! rebuilds decoders, encoders and prompts (a short glitch at that moment).
//!
//! DTMF: RFC 4733 digits from a leg's `telephone-event` payload type (a digit ends on the E
//! bit or 100 ms after its last packet; retransmitted end packets are ignored) and, for legs
//! without a `telephone-event` payload type, in-band digits detected in the decoded audio.
//! Each digit is reported once ([`MediaEvent::Dtmf`], when it ends, with the length it had)
//! and then passed on, unless blocked or muted, to every member hearing the sender: as RFC 4733 events to members that take
//! them, as in-band tones to the others (an in-band digit is already in the audio they hear).
//!
//! Steady state does not allocate: frames, sums, groups and packets use buffers sized when
//! members join or the mixing rate changes.
//!
//! # Direct mode ([`MediaCall::push_rtp_with`])
//!
//! A call of two members that hear each other and nothing else (no prompt, tone, digit
//! being sent, injected audio, gain, mute or deafness; every leg that sends RFC 4733 events
//! facing one that takes them; allowed by [`MediaCall::set_direct_allowed`]) transcodes
//! packet by packet: each audio packet is decoded (by decoders of its own, not the jitter
//! buffer's), resampled to the mixing rate and encoded at once by the other leg's
//! [`LegOutput`] (gathered up to its ptime when the packet is shorter), with a timestamp
//! mapped from the input's; RFC 4733 packets pass through with the other leg's payload type.
//! Duplicate and stale sequence numbers are dropped, losses are left to the receiver. The
//! ticks send nothing for the pair then. Leaving direct mode (a third member, a prompt, ...)
//! or entering it keeps every output stream (SSRC, next sequence number, timestamps moving
//! on by at least a packet) and its encoder; the jitter buffers start over.

use std::collections::{HashMap, VecDeque};

use switchboard_codecs::codec::{CodecKind, CodecSpec, Decoder};
use switchboard_codecs::dtmf::{DtmfDetector, DtmfEvent};
use switchboard_codecs::resample::Resampler;
use switchboard_codecs::telephone_event::{TelephoneEvent, char_from_event, event_from_char};
use switchboard_codecs::tone::{Cadence, ToneGenerator};
use switchboard_codecs::vad::{VadConfig, VadTransition, VoiceActivity};

use super::input::{FrameKind, InputConfig, InputStats, LegInput};
use super::jitter::JitterConfig;
use super::mixer;
use super::output::{
    DIGIT_GAP_MS, LegOutput, MAX_PACKET, MAX_PAYLOAD, MAX_QUEUED_DIGITS, QueuedDigit, mix64,
};
use super::play::{PlayId, PlaySource, PlayTarget, Prompt};
use super::{DtmfSource, FRAME_MS, MediaError, MediaEvent, MediaLegConfig, OutputSeed, PlayEnd};
use crate::relay::LegId;
use crate::rtp::RtpPacket;
use crate::stats::DropReason;
use crate::time::Micros;

/// Events held at most between two [`MediaCall::poll_event`] drains; later ones are counted
/// in [`MediaStats::events_dropped`].
pub const MAX_EVENTS: usize = 1024;

/// An RFC 4733 digit ends this long after its last packet when no end packet came.
pub const EVENT_TIMEOUT: Micros = Micros(100_000);

/// For this long after an event ended, packets with its timestamp or an older one are
/// taken for retransmissions or late packets of it (later: a new stream).
pub const LATE_EVENT_WINDOW: Micros = Micros(2_000_000);

/// Smallest and largest digit length accepted by [`MediaCall::send_dtmf`], ms.
pub const DTMF_DURATION_MS: (u32, u32) = (40, 8000);

/// Gain range, dB.
pub const GAIN_DB: (f32, f32) = (-40.0, 20.0);

/// Settings of a media call.
#[derive(Debug, Clone)]
pub struct MediaCallConfig {
    /// Members at most.
    pub max_members: usize,
    /// Talkers mixed in a large room (at most 64).
    pub loudest: usize,
    /// With more members than this, only the `loudest` talkers are mixed.
    pub large_room: usize,
    /// Jitter buffer settings of every input.
    pub jitter: JitterConfig,
    /// Seeds the SSRCs, sequence numbers and timestamps of fresh output streams.
    pub ssrc_seed: u64,
    /// Detect in-band DTMF digits in the decoded audio (legs without `telephone-event`).
    pub inband_dtmf: bool,
}

impl Default for MediaCallConfig {
    fn default() -> Self {
        Self {
            max_members: 1000,
            loudest: 3,
            large_room: 8,
            jitter: JitterConfig::default(),
            ssrc_seed: 0,
            inband_dtmf: true,
        }
    }
}

/// Counters of a media call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Members.
    pub members: usize,
    /// The mixing rate, Hz.
    pub mix_rate: u32,
    /// Talkers summed in the last frame.
    pub talkers_mixed: usize,
    /// Encoder runs in the last frame.
    pub encodes: usize,
    /// Listener groups (distinct mixes) in the last frame.
    pub groups: usize,
    /// Frames ticked.
    pub frames: u64,
    /// RTP packets sent (audio and events).
    pub packets_sent: u64,
    /// Prompts playing.
    pub prompts: usize,
    /// Events dropped because nobody drained them.
    pub events_dropped: u64,
    /// Whether the call transcodes packet by packet now (direct mode).
    pub direct: bool,
    /// Packets transcoded in direct mode.
    pub direct_packets: u64,
    /// Duplicate or stale packets dropped in direct mode.
    pub direct_dropped: u64,
}

/// Decoded samples of one packet at most in direct mode (120 ms at 48 kHz).
const DIRECT_SAMPLES: usize = 5760;

/// A sequence number this far ahead (or a new SSRC) starts a new input stream in direct
/// mode; one up to this far behind is stale.
const DIRECT_SEQ_JUMP: u16 = 1000;

/// One decodable format of a leg in direct mode.
#[derive(Debug)]
struct DirectFormat {
    payload_type: u8,
    clock_rate: u32,
    decoder: Decoder,
    resampler: Resampler,
}

/// The receiving side of a leg in direct mode: its decoders (apart from the jitter
/// buffer's), duplicate detection and the timestamp mapping onto the other leg's output.
#[derive(Debug)]
struct DirectIn {
    formats: Vec<DirectFormat>,
    /// SSRC and sequence number of the newest packet taken.
    last: Option<(u32, u16)>,
    /// An input timestamp and the output timestamp it maps to.
    anchor: Option<(u32, u32)>,
}

impl DirectIn {
    fn new(config: &MediaLegConfig, mix_rate: u32) -> Result<Self, MediaError> {
        let mut formats = Vec::with_capacity(config.recv.len());
        for spec in config.recv.iter().filter(|c| c.kind.is_audio()) {
            let err = |e: &dyn std::fmt::Display| MediaError::Codec(e.to_string());
            let decoder = if spec.kind == CodecKind::Opus {
                Decoder::with_audio_rate(spec, mix_rate)
            } else {
                Decoder::new(spec)
            }
            .map_err(|e| err(&e))?;
            let resampler = Resampler::new(decoder.audio_rate(), mix_rate).map_err(|e| err(&e))?;
            formats.push(DirectFormat {
                payload_type: spec.payload_type,
                clock_rate: spec.clock_rate.max(1),
                decoder,
                resampler,
            });
        }
        Ok(Self {
            formats,
            last: None,
            anchor: None,
        })
    }

    /// Whether the packet is new (not a duplicate nor stale); a new stream forgets the
    /// timestamp mapping.
    fn accept(&mut self, ssrc: u32, seq: u16) -> bool {
        match self.last {
            Some((s, last)) if s == ssrc => {
                let ahead = seq.wrapping_sub(last);
                if ahead == 0 || last.wrapping_sub(seq) <= DIRECT_SEQ_JUMP {
                    return false;
                }
                if ahead > DIRECT_SEQ_JUMP {
                    self.anchor = None;
                }
            }
            _ => self.anchor = None,
        }
        self.last = Some((ssrc, seq));
        true
    }

    /// The output timestamp of input timestamp `ts` (clock `from`) at clock `to`; `next`
    /// anchors a new mapping.
    fn map(&mut self, ts: u32, from: u32, to: u32, next: impl FnOnce() -> u32) -> u32 {
        let (a_in, a_out) = *self.anchor.get_or_insert_with(|| (ts, next()));
        let d = i64::from(ts.wrapping_sub(a_in) as i32);
        let out = a_out.wrapping_add((d * i64::from(to) / i64::from(from.max(1))) as u32);
        if d > 0 {
            self.anchor = Some((ts, out));
        }
        out
    }
}

/// An RFC 4733 digit being received.
#[derive(Debug, Clone, Copy)]
struct RxEvent {
    event: u8,
    timestamp: u32,
    duration: u32,
    last_at: Micros,
}

/// Receiving side of RFC 4733 for one leg.
#[derive(Debug, Clone, Copy, Default)]
struct EventRx {
    active: Option<RxEvent>,
    /// Timestamp of the last ended event and when it ended.
    last_end: Option<(u32, Micros)>,
}

/// An in-band digit played to a leg.
#[derive(Debug)]
struct ToneDigit {
    generator: ToneGenerator,
    frames_left: u32,
}

#[derive(Debug)]
struct Member {
    leg: LegId,
    config: MediaLegConfig,
    input: LegInput,
    output: LegOutput,
    /// The hears row as set.
    hears: Vec<LegId>,
    /// The hears row as member indices, ascending.
    hears_idx: Vec<u32>,
    /// Hears every other member.
    hears_all: bool,
    muted: bool,
    deaf: bool,
    gain_db: f32,
    gain: f32,
    dtmf_blocked: bool,
    frame: Vec<i16>,
    kind: FrameKind,
    vad: Option<VoiceActivity>,
    talking: bool,
    detector: Option<DtmfDetector>,
    inband_start: u64,
    rx: EventRx,
    events_clock: u32,
    tone_queue: VecDeque<QueuedDigit>,
    tone: Option<ToneDigit>,
    prompt: Option<Prompt>,
    /// The leg whose encoder fed this member in the previous frame.
    prev_encoder: LegId,
    /// Audio injected for the next frame only (bot speech), mixed into what the leg hears.
    injected: Vec<i16>,
    inject_on: bool,
    /// The receiving side in direct mode.
    direct: Option<DirectIn>,
}

/// A group of listeners sharing one mix (and, for ptime 20, one encoding).
#[derive(Debug, Clone, Copy)]
struct Group {
    spec: CodecSpec,
    hash: u64,
    start: u32,
    len: u32,
    leader: u32,
    tail: u32,
    shareable: bool,
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct PendingDigit {
    member: u32,
    digit: char,
    duration_ms: u32,
    source: DtmfSource,
}

/// A call's decoded media.
#[derive(Debug)]
pub struct MediaCall {
    config: MediaCallConfig,
    mix_rate: u32,
    members: Vec<Member>,
    index: HashMap<LegId, usize>,
    call_prompt: Option<Prompt>,
    events: VecDeque<MediaEvent>,
    now: Micros,
    stats: MediaStats,
    // Scratch, sized with the members and the mixing rate.
    energies: Vec<u64>,
    candidate: Vec<bool>,
    selected: Vec<bool>,
    total: Vec<i32>,
    call_mix: Vec<i32>,
    mix: Vec<i32>,
    mix16: Vec<i16>,
    scratch16: Vec<i16>,
    arena: Vec<u32>,
    sets: Vec<(u32, u32, u64)>,
    groups: Vec<Group>,
    next_in_group: Vec<u32>,
    pending: Vec<PendingDigit>,
    payload: Vec<u8>,
    packet: Vec<u8>,
    /// Direct mode allowed (nothing outside the call needs its frames).
    direct_allowed: bool,
    /// Direct mode could not start with these members (a codec error).
    direct_failed: bool,
    /// Transcoding packet by packet now.
    direct: bool,
    dec: Vec<i16>,
    dec_mix: Vec<i16>,
}

/// Whether RTP timestamp `a` is after `b` (modulo 2^32).
fn newer(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000_0000
}

/// FNV-1a over member indices.
fn hash_set(set: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &v in set {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The mixing rate `config` needs.
fn needed_rate(config: &MediaLegConfig) -> u32 {
    config
        .recv
        .iter()
        .chain(std::iter::once(&config.send))
        .map(|spec| match spec.kind {
            CodecKind::G722 | CodecKind::Opus => 16_000,
            CodecKind::L16 if spec.clock_rate >= 48_000 => 48_000,
            CodecKind::L16 if spec.clock_rate > 8_000 => 16_000,
            _ => 8_000,
        })
        .max()
        .unwrap_or(8_000)
}

fn audio_codecs(config: &MediaLegConfig) -> Vec<CodecSpec> {
    config
        .recv
        .iter()
        .filter(|c| c.kind.is_audio())
        .copied()
        .collect()
}

/// The RTP clock of a leg's telephone events: that of its audio (RFC 4733 §2.1).
fn events_clock(config: &MediaLegConfig) -> u32 {
    config
        .recv
        .iter()
        .find(|c| c.kind.is_audio())
        .map_or(8000, |c| c.clock_rate)
        .max(1)
}

fn check_leg_config(config: &MediaLegConfig) -> Result<(), MediaError> {
    if !matches!(config.ptime_ms, 20 | 40 | 60) {
        return Err(MediaError::Invalid("ptime"));
    }
    if !config.send.kind.is_audio() {
        return Err(MediaError::Codec(format!(
            "{} cannot be sent as audio",
            config.send.kind.encoding_name()
        )));
    }
    if config.recv.len() > 32 {
        return Err(MediaError::Invalid("codec list"));
    }
    Ok(())
}

impl MediaCall {
    /// An empty media call.
    #[must_use]
    pub fn new(config: MediaCallConfig) -> Self {
        let mut call = Self {
            config,
            mix_rate: 8000,
            members: Vec::new(),
            index: HashMap::new(),
            call_prompt: None,
            events: VecDeque::with_capacity(64),
            now: Micros::ZERO,
            stats: MediaStats::default(),
            energies: Vec::new(),
            candidate: Vec::new(),
            selected: Vec::new(),
            total: Vec::new(),
            call_mix: Vec::new(),
            mix: Vec::new(),
            mix16: Vec::new(),
            scratch16: Vec::new(),
            arena: Vec::new(),
            sets: Vec::new(),
            groups: Vec::new(),
            next_in_group: Vec::new(),
            pending: Vec::with_capacity(16),
            payload: vec![0; MAX_PAYLOAD],
            packet: vec![0; MAX_PACKET],
            direct_allowed: true,
            direct_failed: false,
            direct: false,
            dec: vec![0; DIRECT_SAMPLES],
            dec_mix: vec![0; DIRECT_SAMPLES],
        };
        call.resize_scratch();
        call
    }

    fn frame_samples(&self) -> usize {
        (self.mix_rate / 1000 * FRAME_MS) as usize
    }

    fn resize_scratch(&mut self) {
        let n = self.members.len();
        let f = self.frame_samples();
        self.energies.resize(n, 0);
        self.candidate.resize(n, false);
        self.selected.resize(n, false);
        self.next_in_group.resize(n, NONE);
        self.sets.resize(n, (0, 0, 0));
        self.total.resize(f, 0);
        self.call_mix.resize(f, 0);
        self.mix.resize(f, 0);
        self.mix16.resize(f, 0);
        self.scratch16.resize(f, 0);
        let per = self
            .config
            .large_room
            .max(self.config.loudest)
            .max(8)
            .min(n.max(1));
        // One set per listener plus the talkers list at the head (`build_groups`).
        let want = n.saturating_add(1).saturating_mul(per).min(1 << 22);
        if self.arena.capacity() < want {
            self.arena.reserve(want - self.arena.len());
        }
        if self.groups.capacity() < n {
            self.groups.reserve(n - self.groups.len());
        }
    }

    fn push_event(&mut self, event: MediaEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.stats.events_dropped += 1;
        } else {
            self.events.push_back(event);
        }
    }

    fn member_index(&self, leg: LegId) -> Result<usize, MediaError> {
        self.index.get(&leg).copied().ok_or(MediaError::UnknownLeg)
    }

    /// The mixing rate now, Hz.
    #[must_use]
    pub fn mix_rate(&self) -> u32 {
        self.mix_rate
    }

    fn wanted_rate(&self, extra: Option<&MediaLegConfig>, skip: Option<usize>) -> u32 {
        self.members
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, m)| needed_rate(&m.config))
            .chain(extra.map(needed_rate))
            .max()
            .unwrap_or(8000)
    }

    fn set_mix_rate(&mut self, rate: u32) {
        if rate == self.mix_rate {
            return;
        }
        let old = self.mix_rate;
        self.mix_rate = rate;
        let f = self.frame_samples();
        let inband = self.config.inband_dtmf;
        for m in &mut self.members {
            // A rate from {8000, 16000, 48000} is always accepted; on an error the member
            // keeps running at its old rate and its frames are cut or padded.
            let _ = m.input.set_mix_rate(rate);
            let _ = m.output.set_mix_rate(rate);
            m.frame.resize(f, 0);
            m.injected.resize(f, 0);
            m.inject_on = false;
            m.vad = VoiceActivity::new(VadConfig::new(rate)).ok();
            m.detector = if inband && m.config.recv_events.is_none() {
                DtmfDetector::new(rate).ok()
            } else {
                None
            };
            m.tone = None;
            if let Some(p) = m.prompt.as_mut() {
                let _ = p.set_mix_rate(old, rate);
            }
        }
        if let Some(p) = self.call_prompt.as_mut() {
            let _ = p.set_mix_rate(old, rate);
        }
        self.resize_scratch();
    }

    /// Updates every row after `swap_remove(removed)` of leg `leg`: the member that was last
    /// (index `n`, the new length) now sits at `removed`. Rows stay sorted; O(row) each,
    /// without lookups.
    fn remap_hears_after_remove(&mut self, leg: LegId, removed: usize) {
        let n = self.members.len();
        let (removed, moved) = (removed as u32, n as u32);
        for m in &mut self.members {
            if let Ok(p) = m.hears.binary_search(&leg) {
                m.hears.remove(p);
            }
            let idx = &mut m.hears_idx;
            if let Ok(p) = idx.binary_search(&removed) {
                idx.remove(p);
            }
            // `moved` is the largest old index: the row's last entry when it hears it.
            if removed != moved && idx.last() == Some(&moved) {
                idx.pop();
                if let Err(p) = idx.binary_search(&removed) {
                    idx.insert(p, removed);
                }
            }
            m.hears_all = n > 1 && idx.len() == n - 1;
        }
    }

    fn fresh_seed(&self, leg: LegId) -> u64 {
        mix64(self.config.ssrc_seed ^ u64::from(leg.to_raw()).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn build_input(&self, config: &MediaLegConfig, rate: u32) -> Result<LegInput, MediaError> {
        LegInput::new(InputConfig {
            codecs: audio_codecs(config),
            mix_rate: rate,
            jitter: self.config.jitter,
        })
    }

    /// Adds a leg; it hears nobody and is heard by nobody until [`set_hears`](Self::set_hears).
    /// Its output continues `seed` (same SSRC, next sequence number, timestamp advanced by
    /// the time since `seed.at`) or starts a fresh stream.
    ///
    /// # Errors
    ///
    /// [`MediaError::LegExists`], [`MediaError::TooManyMembers`], [`MediaError::Invalid`]
    /// (ptime), [`MediaError::Codec`].
    pub fn add_leg(
        &mut self,
        now: Micros,
        leg: LegId,
        config: MediaLegConfig,
        seed: Option<OutputSeed>,
    ) -> Result<(), MediaError> {
        if self.index.contains_key(&leg) {
            return Err(MediaError::LegExists);
        }
        if self.members.len() >= self.config.max_members {
            return Err(MediaError::TooManyMembers);
        }
        check_leg_config(&config)?;
        self.now = self.now.max(now);
        self.leave_direct(self.now);
        self.direct_failed = false;
        let rate = self.wanted_rate(Some(&config), None).max(8000);
        let input = self.build_input(&config, rate)?;
        let output = LegOutput::new(
            &config.send,
            config.ptime_ms,
            rate,
            config.send_events,
            seed,
            self.fresh_seed(leg),
        )?;
        self.set_mix_rate(rate);
        let f = self.frame_samples();
        let events_clock = events_clock(&config);
        let member = Member {
            leg,
            input,
            output,
            hears: Vec::new(),
            hears_idx: Vec::new(),
            hears_all: false,
            muted: false,
            deaf: false,
            gain_db: 0.0,
            gain: 1.0,
            dtmf_blocked: false,
            frame: vec![0; f],
            kind: FrameKind::Silence,
            vad: VoiceActivity::new(VadConfig::new(rate)).ok(),
            talking: false,
            detector: if self.config.inband_dtmf && config.recv_events.is_none() {
                DtmfDetector::new(rate).ok()
            } else {
                None
            },
            inband_start: 0,
            rx: EventRx::default(),
            events_clock,
            tone_queue: VecDeque::with_capacity(4),
            tone: None,
            prompt: None,
            prev_encoder: leg,
            injected: vec![0; f],
            inject_on: false,
            direct: None,
            config,
        };
        self.index.insert(leg, self.members.len());
        self.members.push(member);
        self.resize_scratch();
        // Nobody hears the new member yet: no other row changes, but none hears all now.
        for m in &mut self.members {
            m.hears_all = false;
        }
        Ok(())
    }

    /// Changes a leg's codecs, events or ptime. The output stream continues (same SSRC).
    ///
    /// # Errors
    ///
    /// [`MediaError::UnknownLeg`], [`MediaError::Invalid`], [`MediaError::Codec`].
    pub fn update_leg(
        &mut self,
        now: Micros,
        leg: LegId,
        config: MediaLegConfig,
    ) -> Result<(), MediaError> {
        let i = self.member_index(leg)?;
        check_leg_config(&config)?;
        self.now = self.now.max(now);
        self.leave_direct(self.now);
        self.direct_failed = false;
        let rate = self.wanted_rate(Some(&config), Some(i)).max(8000);
        let old = &self.members[i].config;
        let input = if old.recv == config.recv {
            None
        } else {
            Some(self.build_input(&config, rate)?)
        };
        let output = if old.send == config.send
            && old.ptime_ms == config.ptime_ms
            && old.send_events == config.send_events
        {
            None
        } else {
            let seed = self.members[i].output.seed(self.now);
            Some(LegOutput::new(
                &config.send,
                config.ptime_ms,
                rate,
                config.send_events,
                Some(seed),
                self.fresh_seed(leg),
            )?)
        };
        let m = &mut self.members[i];
        if let Some(input) = input {
            m.input = input;
        }
        if let Some(output) = output {
            m.output = output;
        }
        let redetect = self.config.inband_dtmf && config.recv_events.is_none();
        m.events_clock = events_clock(&config);
        m.config = config;
        if !redetect {
            m.detector = None;
        } else if m.detector.is_none() {
            m.detector = DtmfDetector::new(m.input.mix_rate()).ok();
        }
        self.set_mix_rate(rate);
        Ok(())
    }

    /// Removes a leg: from every hears row too; its prompt ends with [`PlayEnd::LegGone`].
    /// Returns where its output stream stopped, for a relay to continue it.
    pub fn remove_leg(&mut self, leg: LegId) -> Option<OutputSeed> {
        if !self.index.contains_key(&leg) {
            return None;
        }
        self.leave_direct(self.now);
        self.direct_failed = false;
        let i = self.index.remove(&leg)?;
        let m = self.members.swap_remove(i);
        if let Some(moved) = self.members.get(i) {
            self.index.insert(moved.leg, i);
        }
        self.remap_hears_after_remove(leg, i);
        if let Some(p) = m.prompt.as_ref() {
            self.push_event(MediaEvent::PlayDone {
                id: p.id,
                reason: PlayEnd::LegGone,
            });
        }
        self.resize_scratch();
        let rate = self.wanted_rate(None, None);
        self.set_mix_rate(rate);
        Some(m.output.seed(self.now))
    }

    /// Whether the leg is a member.
    #[must_use]
    pub fn contains(&self, leg: LegId) -> bool {
        self.index.contains_key(&leg)
    }

    /// Members.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// No members.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members, in no particular order.
    pub fn legs(&self) -> impl Iterator<Item = LegId> + '_ {
        self.members.iter().map(|m| m.leg)
    }

    /// Sets the legs `listener` hears (its own id and unknown legs are ignored).
    ///
    /// # Errors
    ///
    /// [`MediaError::UnknownLeg`] for the listener; [`MediaError::Invalid`] for a list
    /// longer than the member limit.
    pub fn set_hears(&mut self, listener: LegId, speakers: &[LegId]) -> Result<(), MediaError> {
        let i = self.member_index(listener)?;
        if speakers.len() > self.config.max_members.max(1) * 2 {
            return Err(MediaError::Invalid("hears list"));
        }
        // Only this row changes: O(k log k) for k speakers, one lookup each.
        let mut hears = std::mem::take(&mut self.members[i].hears);
        let mut idx = std::mem::take(&mut self.members[i].hears_idx);
        hears.clear();
        idx.clear();
        for &l in speakers {
            if l == listener {
                continue;
            }
            if let Some(&j) = self.index.get(&l) {
                hears.push(l);
                idx.push(j as u32);
            }
        }
        hears.sort_unstable();
        hears.dedup();
        idx.sort_unstable();
        idx.dedup();
        let n = self.members.len();
        let m = &mut self.members[i];
        m.hears_all = n > 1 && idx.len() == n - 1;
        m.hears = hears;
        m.hears_idx = idx;
        Ok(())
    }

    /// The legs `listener` hears (empty for an unknown leg).
    #[must_use]
    pub fn hears(&self, listener: LegId) -> Vec<LegId> {
        self.index
            .get(&listener)
            .map(|&i| self.members[i].hears.clone())
            .unwrap_or_default()
    }

    /// Mutes a leg: nobody hears it.
    ///
    /// # Errors
    ///
    /// [`MediaError::UnknownLeg`].
    pub fn set_mute(&mut self, leg: LegId, muted: bool) -> Result<(), MediaError> {
        let i = self.member_index(leg)?;
        self.members[i].muted = muted;
        Ok(())
    }

    /// Deafens a leg: it hears no member (prompts and digits to it still play).
    ///
    /// # Errors
    ///
    /// [`MediaError::UnknownLeg`].
    pub fn set_deaf(&mut self, leg: LegId, deaf: bool) -> Result<(), MediaError> {
        let i = self.member_index(leg)?;
        self.members[i].deaf = deaf;
        Ok(())
    }

    /// Gain applied to what the leg says, −40..=+20 dB.
    ///
    /// # Errors
    ///
    /// [`MediaError::UnknownLeg`], [`MediaError::Invalid`] out of range.
    pub fn set_gain_db(&mut self, leg: LegId, db: f32) -> Result<(), MediaError> {
        if !(GAIN_DB.0..=GAIN_DB.1).contains(&db) {
            return Err(MediaError::Invalid("gain"));
        }
        let i = self.member_index(leg)?;
        let m = &mut self.members[i];
        m.gain_db = db;
        m.gain = mixer::gain_factor(db);
        Ok(())
    }

    /// The leg's gain, dB.
    #[must_use]
    pub fn gain_db(&self, leg: LegId) -> Option<f32> {
        self.index.get(&leg).map(|&i| self.members[i].gain_db)
    }

    /// Takes one RTP packet from a leg: audio goes to its input, its `telephone-event`
    /// payload type to the DTMF receiver.
    ///
    /// # Errors
    ///
    /// [`DropReason::UnknownLeg`], the parse error's reason,
    /// [`DropReason::UnknownPayloadType`] for a payload type the leg did not negotiate, [`DropReason::DtmfBlocked`] for an event
    /// packet of a leg whose DTMF is blocked (its digits are still reported as events, but
    /// passed on to nobody).
    ///
    /// The call is in tick mode afterwards (see [`push_rtp_with`](Self::push_rtp_with)).
    pub fn push_rtp(&mut self, now: Micros, leg: LegId, data: &[u8]) -> Result<(), DropReason> {
        let i = self
            .index
            .get(&leg)
            .copied()
            .ok_or(DropReason::UnknownLeg)?;
        if self.direct {
            self.leave_direct(now.max(self.now));
        }
        self.push_rtp_tick(now, i, data)
    }

    fn push_rtp_tick(&mut self, now: Micros, i: usize, data: &[u8]) -> Result<(), DropReason> {
        let packet = RtpPacket::parse(data).map_err(|e| e.reason())?;
        self.now = self.now.max(now);
        let pt = packet.payload_type().get();
        let m = &mut self.members[i];
        if m.config.recv_events == Some(pt) {
            let blocked = m.dtmf_blocked;
            if let Ok(ev) = TelephoneEvent::parse(packet.payload()) {
                self.receive_event(now, i, packet.timestamp().0, ev);
            }
            return if blocked {
                Err(DropReason::DtmfBlocked)
            } else {
                Ok(())
            };
        }
        if m.config
            .recv
            .iter()
            .any(|c| c.payload_type == pt && c.kind.is_audio())
        {
            let _ = m.input.push(now, &packet);
            Ok(())
        } else {
            Err(DropReason::UnknownPayloadType)
        }
    }

    /// Allows (or forbids) direct mode; forbid it while something outside the call needs
    /// its frames every tick (media forks, analytics, injected bot audio). Allowed by
    /// default; takes effect at the next [`push_rtp_with`](Self::push_rtp_with) or
    /// [`tick`](Self::tick).
    pub fn set_direct_allowed(&mut self, allowed: bool) {
        self.direct_allowed = allowed;
    }

    /// Whether the call transcodes packet by packet now.
    #[must_use]
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Whether the call may transcode packet by packet: two members hearing each other
    /// and nothing else (no prompt, tone, digit being sent, injected audio, gain, mute or
    /// deafness), and every leg sending RFC 4733 events to a leg that takes them.
    fn direct_ok(&self) -> bool {
        if !self.direct_allowed
            || self.direct_failed
            || self.members.len() != 2
            || self.call_prompt.is_some()
        {
            return false;
        }
        let (a, b) = (&self.members[0], &self.members[1]);
        [(a, b), (b, a)].iter().all(|(m, o)| {
            m.hears_all
                && !m.deaf
                && !m.muted
                && m.gain == 1.0
                && m.prompt.is_none()
                && m.tone.is_none()
                && m.tone_queue.is_empty()
                && !m.inject_on
                && !m.output.events_busy()
                && (m.config.recv_events.is_none() || o.output.takes_events())
        })
    }

    fn enter_direct(&mut self) -> bool {
        let rate = self.mix_rate;
        for i in 0..self.members.len() {
            match DirectIn::new(&self.members[i].config, rate) {
                Ok(d) => self.members[i].direct = Some(d),
                Err(_) => {
                    for m in &mut self.members {
                        m.direct = None;
                    }
                    self.direct_failed = true;
                    return false;
                }
            }
        }
        for m in &mut self.members {
            // What the jitter buffer holds is not played: direct packets follow at once.
            m.input.reset();
            m.output.enter_direct();
            m.kind = FrameKind::Silence;
        }
        self.direct = true;
        self.stats.direct = true;
        true
    }

    fn leave_direct(&mut self, now: Micros) {
        if !self.direct {
            return;
        }
        self.direct = false;
        self.stats.direct = false;
        for m in &mut self.members {
            m.direct = None;
            m.input.reset();
            m.output.leave_direct(now);
        }
    }

    /// Takes one RTP packet from a leg. In tick mode this is [`push_rtp`](Self::push_rtp).
    /// While the call may transcode packet by packet (two members hearing only each other,
    /// see [`set_direct_allowed`](Self::set_direct_allowed)) an audio packet is decoded,
    /// resampled and encoded for the other leg at once and its packets (as many as complete
    /// the other leg's ptime) go out through `send`, on the other leg's stream (its SSRC,
    /// next sequence numbers, timestamps following the input's); RFC 4733 packets pass
    /// through with the other leg's payload type. Duplicate and stale packets are dropped;
    /// losses are left to the receiver's concealment. The ticks send nothing then.
    ///
    /// # Errors
    ///
    /// As [`push_rtp`](Self::push_rtp).
    pub fn push_rtp_with(
        &mut self,
        now: Micros,
        leg: LegId,
        data: &[u8],
        send: &mut dyn FnMut(LegId, &[u8]),
    ) -> Result<(), DropReason> {
        let i = self
            .index
            .get(&leg)
            .copied()
            .ok_or(DropReason::UnknownLeg)?;
        let want = self.direct_ok();
        if want != self.direct {
            if want {
                self.enter_direct();
            } else {
                self.leave_direct(now.max(self.now));
            }
        }
        if !self.direct {
            return self.push_rtp_tick(now, i, data);
        }
        self.push_direct(now, i, data, send)
    }

    fn push_direct(
        &mut self,
        now: Micros,
        i: usize,
        data: &[u8],
        send: &mut dyn FnMut(LegId, &[u8]),
    ) -> Result<(), DropReason> {
        let packet = RtpPacket::parse(data).map_err(|e| e.reason())?;
        self.now = self.now.max(now);
        let o = 1 - i;
        let pt = packet.payload_type().get();
        let ts = packet.timestamp().0;
        let (is_event, in_clock) = {
            let m = &self.members[i];
            if m.config.recv_events == Some(pt) {
                (true, m.events_clock)
            } else {
                let Some(f) = m
                    .direct
                    .as_ref()
                    .and_then(|d| d.formats.iter().find(|f| f.payload_type == pt))
                else {
                    return Err(DropReason::UnknownPayloadType);
                };
                (false, f.clock_rate)
            }
        };
        let Some(d) = self.members[i].direct.as_mut() else {
            return Ok(());
        };
        if !d.accept(packet.ssrc().0, packet.sequence_number()) {
            self.stats.direct_dropped += 1;
            return Ok(());
        }
        let out_leg = self.members[o].leg;
        let out_clock = self.members[o].output.spec().clock_rate;
        let now_out = self.now;
        let (left, right) = self.members.split_at_mut(1);
        let (m, other) = if i == 0 {
            (&mut left[0], &mut right[0])
        } else {
            (&mut right[0], &mut left[0])
        };
        let Some(d) = m.direct.as_mut() else {
            return Ok(());
        };
        let out_ts = d.map(ts, in_clock, out_clock, || {
            other.output.next_timestamp(now_out)
        });
        if is_event {
            let blocked = m.dtmf_blocked;
            let parsed = TelephoneEvent::parse(packet.payload());
            if !blocked && parsed.is_ok() {
                let mut ev = [0u8; 64];
                let p = packet.payload();
                let n = p.len().min(ev.len());
                ev[..n].copy_from_slice(&p[..n]);
                if in_clock != out_clock {
                    // Event durations are in RTP clock units.
                    for block in ev[..n].chunks_exact_mut(4) {
                        let dur = u64::from(u16::from_be_bytes([block[2], block[3]]));
                        let dur = dur * u64::from(out_clock) / u64::from(in_clock.max(1));
                        let dur = u16::try_from(dur).unwrap_or(u16::MAX).to_be_bytes();
                        block[2] = dur[0];
                        block[3] = dur[1];
                    }
                }
                let sent = other.output.send_event_direct(
                    now,
                    &ev[..n],
                    out_ts,
                    packet.marker(),
                    &mut self.packet,
                    &mut |b| send(out_leg, b),
                );
                if sent {
                    self.stats.packets_sent += 1;
                    self.stats.direct_packets += 1;
                }
            }
            if let Ok(ev) = parsed {
                self.receive_event(now, i, ts, ev);
            }
            return if blocked {
                Err(DropReason::DtmfBlocked)
            } else {
                Ok(())
            };
        }
        let Some(f) = d.formats.iter_mut().find(|f| f.payload_type == pt) else {
            return Err(DropReason::UnknownPayloadType);
        };
        let Ok(n) = f.decoder.decode(packet.payload(), &mut self.dec) else {
            // Treated as lost: the receiver conceals.
            return Ok(());
        };
        let n = n.min(self.dec.len());
        let got = f.resampler.process(&self.dec[..n], &mut self.dec_mix);
        let pcm = &self.dec_mix[..got];
        let sent = other.output.push_direct(
            now,
            pcm,
            out_ts,
            &mut self.payload,
            &mut self.packet,
            &mut |b| send(out_leg, b),
        );
        self.stats.packets_sent += u64::from(sent);
        self.stats.direct_packets += u64::from(sent);
        // Voice activity and in-band digits, as the tick would track them.
        let leg = m.leg;
        if let Some(vad) = m.vad.as_mut().filter(|_| got > 0) {
            if let Some(t) = vad.process(pcm).transition {
                let talking = t == VadTransition::StartedTalking;
                m.talking = talking;
                self.push_event(MediaEvent::Talking { leg, talking });
            }
        }
        let m = &mut self.members[i];
        if let Some(det) = m.detector.as_mut() {
            self.pending.clear();
            let start = &mut m.inband_start;
            let pending = &mut self.pending;
            det.process(&self.dec_mix[..got], |ev| match ev {
                DtmfEvent::Begin(d) => *start = d.start_sample,
                DtmfEvent::End { digit, end_sample } => {
                    let samples = end_sample.saturating_sub(*start);
                    pending.push(PendingDigit {
                        member: i as u32,
                        digit,
                        duration_ms: u32::try_from(samples).unwrap_or(u32::MAX),
                        source: DtmfSource::InBand,
                    });
                }
                _ => {}
            });
            let rate = self.mix_rate;
            for k in 0..self.pending.len() {
                let mut d = self.pending[k];
                d.duration_ms = (u64::from(d.duration_ms) * 1000 / u64::from(rate)) as u32;
                self.on_digit(d);
            }
        }
        Ok(())
    }

    fn receive_event(&mut self, now: Micros, i: usize, timestamp: u32, ev: TelephoneEvent) {
        if char_from_event(ev.event).is_none() || ev.event > 15 {
            return;
        }
        let m = &mut self.members[i];
        let mut done = None;
        if let Some(mut a) = m.rx.active {
            if a.timestamp == timestamp {
                a.duration = a.duration.max(u32::from(ev.duration));
                a.last_at = now;
                if ev.end {
                    m.rx.active = None;
                    m.rx.last_end = Some((timestamp, now));
                    done = Some(a);
                } else {
                    m.rx.active = Some(a);
                }
                if let Some(a) = done {
                    self.finish_rx(i, a);
                }
                return;
            }
            if !newer(timestamp, a.timestamp) {
                // A late packet of an earlier event.
                return;
            }
            // A new event without the previous one's end: the previous one is over.
            m.rx.active = None;
            m.rx.last_end = Some((a.timestamp, now));
            done = Some(a);
        }
        if let Some(a) = done {
            self.finish_rx(i, a);
        }
        let m = &mut self.members[i];
        if m.rx.last_end.is_some_and(|(end, at)| {
            !newer(timestamp, end) && now.0.saturating_sub(at.0) < LATE_EVENT_WINDOW.0
        }) {
            // A repeated end packet, or a late packet of an ended event.
            return;
        }
        let a = RxEvent {
            event: ev.event,
            timestamp,
            duration: u32::from(ev.duration),
            last_at: now,
        };
        if ev.end {
            m.rx.last_end = Some((timestamp, now));
            self.finish_rx(i, a);
        } else {
            m.rx.active = Some(a);
        }
    }

    fn finish_rx(&mut self, i: usize, a: RxEvent) {
        let Some(digit) = char_from_event(a.event) else {
            return;
        };
        let clock = u64::from(self.members[i].events_clock);
        let duration_ms = (u64::from(a.duration) * 1000 / clock.max(1)) as u32;
        self.on_digit(PendingDigit {
            member: i as u32,
            digit,
            duration_ms,
            source: DtmfSource::Rfc4733,
        });
    }

    fn on_digit(&mut self, d: PendingDigit) {
        let i = d.member as usize;
        let Some(sender) = self.members.get(i) else {
            return;
        };
        let leg = sender.leg;
        let forward = !sender.dtmf_blocked && !sender.muted;
        self.push_event(MediaEvent::Dtmf {
            leg,
            digit: d.digit,
            duration_ms: d.duration_ms,
            source: d.source,
        });
        // Prompts stopped by the digit.
        let mut stopped = [None, None];
        if let Some(p) = self.members[i].prompt.as_ref() {
            if p.stop_on_dtmf {
                stopped[0] = Some(p.id);
                self.members[i].prompt = None;
            }
        }
        if let Some(p) = self.call_prompt.as_ref() {
            if p.stop_on_dtmf {
                stopped[1] = Some(p.id);
                self.call_prompt = None;
            }
        }
        for id in stopped.into_iter().flatten() {
            self.push_event(MediaEvent::PlayDone {
                id,
                reason: PlayEnd::Dtmf,
            });
        }
        // In direct mode RFC 4733 packets pass through and in-band digits are in the audio.
        if !forward || self.direct {
            return;
        }
        let duration_ms = d.duration_ms.clamp(DTMF_DURATION_MS.0, DTMF_DURATION_MS.1);
        let digit = QueuedDigit {
            digit: d.digit,
            duration_ms,
            volume: 10,
        };
        for (j, l) in self.members.iter_mut().enumerate() {
            if j == i || l.deaf || !(l.hears_all || l.hears_idx.binary_search(&(i as u32)).is_ok())
            {
                continue;
            }
            if l.output.takes_events() {
                let _ = l.output.queue_event(digit);
            } else if d.source == DtmfSource::Rfc4733 && l.tone_queue.len() < MAX_QUEUED_DIGITS {
                l.tone_queue.push_back(digit);
            }
        }
    }

    /// Starts a prompt; one to the same target plays no longer ([`PlayEnd::Stopped`]), nor
    /// one with the same id. `repeat` 0 plays until stopped; a tone's repetition is its
    /// cadence (1 s for steady tones).
    ///
    /// # Errors
    ///
    /// [`MediaError::UnknownLeg`] for a leg target, [`MediaError::Invalid`] or
    /// [`MediaError::Codec`] for a source that cannot be played.
    pub fn play_start(
        &mut self,
        id: PlayId,
        target: PlayTarget,
        source: PlaySource,
        repeat: u32,
        stop_on_dtmf: bool,
    ) -> Result<(), MediaError> {
        let slot = match target {
            PlayTarget::Leg(leg) => Some(self.member_index(leg)?),
            PlayTarget::Call => None,
        };
        let prompt = Prompt::new(id, target, source, repeat, stop_on_dtmf, self.mix_rate)?;
        // Same id elsewhere, then the same target.
        self.play_stop(Some(id), None);
        self.play_stop(None, Some(target));
        match slot {
            Some(i) => self.members[i].prompt = Some(prompt),
            None => self.call_prompt = Some(prompt),
        }
        Ok(())
    }

    /// Stops the prompts matching `id` and `target` (both `None`: every prompt); each ends
    /// with [`PlayEnd::Stopped`]. Returns how many stopped.
    pub fn play_stop(&mut self, id: Option<PlayId>, target: Option<PlayTarget>) -> usize {
        let matches =
            |p: &Prompt| id.is_none_or(|id| p.id == id) && target.is_none_or(|t| p.target == t);
        let mut stopped = 0;
        let mut ids = Vec::new();
        if self.call_prompt.as_ref().is_some_and(matches) {
            if let Some(p) = self.call_prompt.take() {
                ids.push(p.id);
            }
        }
        for m in &mut self.members {
            if m.prompt.as_ref().is_some_and(matches) {
                if let Some(p) = m.prompt.take() {
                    ids.push(p.id);
                }
            }
        }
        for id in ids {
            stopped += 1;
            self.push_event(MediaEvent::PlayDone {
                id,
                reason: PlayEnd::Stopped,
            });
        }
        stopped
    }

    /// Whether a prompt is playing.
    #[must_use]
    pub fn is_playing(&self, id: PlayId) -> bool {
        self.call_prompt.as_ref().is_some_and(|p| p.id == id)
            || self
                .members
                .iter()
                .any(|m| m.prompt.as_ref().is_some_and(|p| p.id == id))
    }

    /// Queues a digit for a leg: RFC 4733 events when it takes them, an in-band tone
    /// otherwise. Queued digits play one after the other with a 60 ms gap.
    ///
    /// # Errors
    ///
    /// [`MediaError::UnknownLeg`]; [`MediaError::Invalid`] for an unknown digit, a duration
    /// outside 40..=8000 ms, a volume outside −63..=0 dBm0 or a full queue (64).
    pub fn send_dtmf(
        &mut self,
        leg: LegId,
        digit: char,
        duration_ms: u32,
        volume_dbm0: i8,
    ) -> Result<(), MediaError> {
        let i = self.member_index(leg)?;
        let digit = digit.to_ascii_uppercase();
        if event_from_char(digit).is_none() || digit == '!' {
            return Err(MediaError::Invalid("digit"));
        }
        if !(DTMF_DURATION_MS.0..=DTMF_DURATION_MS.1).contains(&duration_ms) {
            return Err(MediaError::Invalid("duration"));
        }
        if !(-63..=0).contains(&volume_dbm0) {
            return Err(MediaError::Invalid("volume"));
        }
        let digit = QueuedDigit {
            digit,
            duration_ms,
            volume: volume_dbm0.unsigned_abs(),
        };
        let m = &mut self.members[i];
        if m.output.takes_events() {
            m.output.queue_event(digit)
        } else if m.tone_queue.len() >= MAX_QUEUED_DIGITS {
            Err(MediaError::Invalid("digit queue full"))
        } else {
            m.tone_queue.push_back(digit);
            Ok(())
        }
    }

    /// Blocks (or unblocks) passing the leg's digits on to the members hearing it; they are
    /// still reported as events.
    ///
    /// # Errors
    ///
    /// [`MediaError::UnknownLeg`].
    pub fn set_dtmf_blocked(&mut self, leg: LegId, blocked: bool) -> Result<(), MediaError> {
        let i = self.member_index(leg)?;
        self.members[i].dtmf_blocked = blocked;
        Ok(())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// Where the leg's output stream is now.
    #[must_use]
    pub fn output_seed(&self, leg: LegId) -> Option<OutputSeed> {
        self.index
            .get(&leg)
            .map(|&i| self.members[i].output.seed(self.now))
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> MediaStats {
        MediaStats {
            members: self.members.len(),
            mix_rate: self.mix_rate,
            prompts: usize::from(self.call_prompt.is_some())
                + self.members.iter().filter(|m| m.prompt.is_some()).count(),
            direct: self.direct,
            ..self.stats
        }
    }

    /// The input counters of a leg.
    #[must_use]
    pub fn input_stats(&self, leg: LegId) -> Option<&InputStats> {
        self.index.get(&leg).map(|&i| self.members[i].input.stats())
    }

    /// The codec a leg is sent (its negotiated audio codec).
    #[must_use]
    pub fn send_codec(&self, leg: LegId) -> Option<CodecKind> {
        self.index
            .get(&leg)
            .map(|&i| self.members[i].config.send.kind)
    }

    /// Samples in one 20 ms frame at the mixing rate.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        self.frame_samples()
    }

    /// The leg's decoded input of the last [`tick`](Self::tick): one frame at the mixing rate
    /// (zeros for silence, after the leg's gain), until the next tick.
    #[must_use]
    pub fn input_frame(&self, leg: LegId) -> Option<&[i16]> {
        self.index
            .get(&leg)
            .map(|&i| self.members[i].frame.as_slice())
    }

    /// What the leg's input of the last [`tick`](Self::tick) was: decoded audio,
    /// concealment (a lost packet, or the tail after the sender stopped) or silence.
    #[must_use]
    pub fn input_kind(&self, leg: LegId) -> Option<FrameKind> {
        self.index.get(&leg).map(|&i| self.members[i].kind)
    }

    /// Mixes `samples` (one frame at the mixing rate; shorter is padded with silence, longer
    /// cut) into what `leg` hears in the next [`tick`](Self::tick) only: audio injected from
    /// outside the call, such as a voice bot's speech. No allocation.
    ///
    /// # Errors
    ///
    /// [`MediaError::UnknownLeg`].
    pub fn inject(&mut self, leg: LegId, samples: &[i16]) -> Result<(), MediaError> {
        let i = self.member_index(leg)?;
        let m = &mut self.members[i];
        let n = samples.len().min(m.injected.len());
        m.injected[..n].copy_from_slice(&samples[..n]);
        m.injected[n..].fill(0);
        m.inject_on = true;
        Ok(())
    }

    /// Whether the leg is talking (voice activity with hang-over).
    #[must_use]
    pub fn is_talking(&self, leg: LegId) -> bool {
        self.index
            .get(&leg)
            .is_some_and(|&i| self.members[i].talking)
    }

    /// One 20 ms frame: reads a frame from every input, mixes per listener, encodes and
    /// packetises; `send` gets each leg's complete RTP packets.
    pub fn tick(&mut self, now: Micros, send: &mut dyn FnMut(LegId, &[u8])) {
        self.now = self.now.max(now);
        self.stats.frames += 1;
        if self.direct {
            if self.direct_ok() {
                // Packets went out as they came: nothing to mix or send.
                self.expire_events(now);
                self.stats.talkers_mixed = 0;
                self.stats.encodes = 0;
                self.stats.groups = 0;
                return;
            }
            self.leave_direct(self.now);
        }
        self.read_inputs(now);
        self.expire_events(now);
        self.select_talkers();
        self.build_groups();
        self.mix_call_prompt();
        self.mix_and_send(now, send);
    }

    fn read_inputs(&mut self, now: Micros) {
        self.pending.clear();
        let n = self.members.len();
        for i in 0..n {
            let m = &mut self.members[i];
            m.kind = m.input.next_frame(now, &mut m.frame);
            let audio = m.kind != FrameKind::Silence;
            if !audio {
                m.frame.fill(0);
            }
            if let Some(det) = m.detector.as_mut() {
                if audio || det.active_digit().is_some() {
                    let start = &mut m.inband_start;
                    let pending = &mut self.pending;
                    det.process(&m.frame, |ev| match ev {
                        DtmfEvent::Begin(d) => *start = d.start_sample,
                        DtmfEvent::End { digit, end_sample } => {
                            let samples = end_sample.saturating_sub(*start);
                            pending.push(PendingDigit {
                                member: i as u32,
                                digit,
                                // In samples until converted below.
                                duration_ms: u32::try_from(samples).unwrap_or(u32::MAX),
                                source: DtmfSource::InBand,
                            });
                        }
                        _ => {}
                    });
                }
            }
            // Silence while not talking changes nothing but the noise floor: skipped.
            if let Some(vad) = m.vad.as_mut().filter(|v| audio || v.is_active()) {
                let d = vad.process(&m.frame);
                if let Some(t) = d.transition {
                    let talking = t == VadTransition::StartedTalking;
                    m.talking = talking;
                    let leg = m.leg;
                    self.push_event(MediaEvent::Talking { leg, talking });
                }
            }
            let m = &mut self.members[i];
            if audio && m.gain != 1.0 {
                mixer::apply_gain(&mut m.frame, m.gain);
            }
            self.energies[i] = if audio { mixer::energy(&m.frame) } else { 0 };
            self.candidate[i] = audio && !m.muted;
        }
        let rate = self.mix_rate;
        for k in 0..self.pending.len() {
            let mut d = self.pending[k];
            d.duration_ms = (u64::from(d.duration_ms) * 1000 / u64::from(rate)) as u32;
            self.on_digit(d);
        }
    }

    fn expire_events(&mut self, now: Micros) {
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            if let Some(a) = m.rx.active {
                if now.0.saturating_sub(a.last_at.0) > EVENT_TIMEOUT.0 {
                    m.rx.active = None;
                    m.rx.last_end = Some((a.timestamp, now));
                    self.finish_rx(i, a);
                }
            }
        }
    }

    fn select_talkers(&mut self) {
        let n = self.members.len();
        if n > self.config.large_room {
            mixer::select_loudest(
                &self.energies,
                &self.candidate,
                &mut self.selected,
                self.config.loudest,
            );
        } else {
            self.selected.copy_from_slice(&self.candidate);
        }
        self.total.fill(0);
        let mut talkers = 0;
        for i in 0..n {
            if self.selected[i] {
                talkers += 1;
                mixer::add(&mut self.total, &self.members[i].frame);
            }
        }
        self.stats.talkers_mixed = talkers;
    }

    fn has_private(&self, i: usize) -> bool {
        let m = &self.members[i];
        m.output.ptime_ms() != FRAME_MS
            || m.prompt.is_some()
            || m.tone.is_some()
            || !m.tone_queue.is_empty()
            || m.inject_on
    }

    fn build_groups(&mut self) {
        let n = self.members.len();
        self.arena.clear();
        self.groups.clear();
        // The selected talkers, ascending, head the arena: at most `loudest` in a large
        // room, so a listener's set costs O(talkers), not O(members).
        for (j, &s) in self.selected.iter().enumerate().take(n) {
            if s {
                self.arena.push(j as u32);
            }
        }
        let talkers = self.arena.len();
        let call_sound = self.call_prompt.is_some();
        for l in 0..n {
            let start = self.arena.len() as u32;
            {
                let m = &self.members[l];
                if !m.deaf {
                    if m.hears_all {
                        for t in 0..talkers {
                            let j = self.arena[t];
                            if j as usize != l {
                                self.arena.push(j);
                            }
                        }
                    } else if talkers < m.hears_idx.len() {
                        for t in 0..talkers {
                            let j = self.arena[t];
                            if m.hears_idx.binary_search(&j).is_ok() {
                                self.arena.push(j);
                            }
                        }
                    } else {
                        for &j in &m.hears_idx {
                            if self.selected.get(j as usize).copied().unwrap_or(false) {
                                self.arena.push(j);
                            }
                        }
                    }
                }
            }
            let len = self.arena.len() as u32 - start;
            let set = &self.arena[start as usize..];
            let hash = hash_set(set);
            self.sets[l] = (start, len, hash);
            self.next_in_group[l] = NONE;
            let private = self.has_private(l);
            let m = &self.members[l];
            let spec = *m.output.spec();
            let silent = len == 0 && !call_sound;
            let stateful = m.output.is_stateful();
            let mut joined = None;
            if !private {
                for (g, group) in self.groups.iter().enumerate() {
                    if !group.shareable
                        || group.hash != hash
                        || group.len != len
                        || group.spec != spec
                    {
                        continue;
                    }
                    let gs = &self.arena[group.start as usize..(group.start + group.len) as usize];
                    if gs != set {
                        continue;
                    }
                    let lm = &self.members[group.leader as usize];
                    if stateful
                        && !silent
                        && m.output.packets_sent() > 0
                        && m.prev_encoder != lm.leg
                        && m.prev_encoder != lm.prev_encoder
                    {
                        continue;
                    }
                    joined = Some(g);
                    break;
                }
            }
            match joined {
                Some(g) => {
                    let tail = self.groups[g].tail as usize;
                    self.next_in_group[tail] = l as u32;
                    self.groups[g].tail = l as u32;
                }
                None => self.groups.push(Group {
                    spec,
                    hash,
                    start,
                    len,
                    leader: l as u32,
                    tail: l as u32,
                    shareable: !private,
                }),
            }
        }
        self.stats.groups = self.groups.len();
    }

    fn mix_call_prompt(&mut self) {
        self.call_mix.fill(0);
        let done = match self.call_prompt.as_mut() {
            Some(p) => p.mix_into(&mut self.call_mix, &mut self.scratch16),
            None => false,
        };
        if done {
            if let Some(p) = self.call_prompt.take() {
                self.push_event(MediaEvent::PlayDone {
                    id: p.id,
                    reason: PlayEnd::Finished,
                });
            }
        }
    }

    fn mix_and_send(&mut self, now: Micros, send: &mut dyn FnMut(LegId, &[u8])) {
        let mut encodes = 0;
        let mut packets = 0u64;
        let rate = self.mix_rate;
        for g in 0..self.groups.len() {
            let group = self.groups[g];
            let leader = group.leader as usize;
            let (start, len, _) = self.sets[leader];
            let set = &self.arena[start as usize..(start + len) as usize];
            // The mix of the group.
            let lm = &self.members[leader];
            if lm.hears_all && !lm.deaf && self.members.len() > 2 {
                self.mix.copy_from_slice(&self.total);
                if self.selected[leader] {
                    mixer::sub(&mut self.mix, &lm.frame);
                }
            } else {
                self.mix.fill(0);
                for &j in set {
                    mixer::add(&mut self.mix, &self.members[j as usize].frame);
                }
            }
            for (a, c) in self.mix.iter_mut().zip(&self.call_mix) {
                *a += *c;
            }
            // Sounds for the leader alone (a private group has one member).
            let mut prompt_done = None;
            {
                let m = &mut self.members[leader];
                if let Some(p) = m.prompt.as_mut() {
                    if p.mix_into(&mut self.mix, &mut self.scratch16) {
                        prompt_done = m.prompt.take().map(|p| p.id);
                    }
                }
                if m.tone.is_none() {
                    if let Some(d) = m.tone_queue.pop_front() {
                        let cadence = Cadence::once(&[(d.duration_ms, DIGIT_GAP_MS)]);
                        if let Ok(generator) =
                            cadence.and_then(|c| ToneGenerator::dtmf(rate, d.digit, c))
                        {
                            m.tone = Some(ToneDigit {
                                generator,
                                frames_left: (d.duration_ms + DIGIT_GAP_MS).div_ceil(FRAME_MS),
                            });
                        }
                    }
                }
                if m.inject_on {
                    mixer::add(&mut self.mix, &m.injected);
                    m.inject_on = false;
                }
                if let Some(t) = m.tone.as_mut() {
                    t.generator.fill(&mut self.scratch16);
                    mixer::add(&mut self.mix, &self.scratch16);
                    t.frames_left = t.frames_left.saturating_sub(1);
                    if t.frames_left == 0 {
                        m.tone = None;
                    }
                }
            }
            if let Some(id) = prompt_done {
                self.push_event(MediaEvent::PlayDone {
                    id,
                    reason: PlayEnd::Finished,
                });
            }
            mixer::saturate(&self.mix, &mut self.mix16);
            let leader_leg = self.members[leader].leg;
            let got = self.members[leader]
                .output
                .push_frame(&self.mix16, &mut self.payload);
            if got.is_some() {
                encodes += 1;
            }
            let payload = got.and_then(|n| self.payload.get(..n));
            let mut l = leader as u32;
            while l != NONE {
                let m = &mut self.members[l as usize];
                let before = m.output.packets_sent();
                let leg = m.leg;
                m.output.emit(now, payload, &mut self.packet, &mut |bytes| {
                    send(leg, bytes)
                });
                packets += m.output.packets_sent() - before;
                m.prev_encoder = leader_leg;
                l = self.next_in_group[l as usize];
            }
        }
        self.stats.encodes = encodes;
        self.stats.packets_sent += packets;
    }
}

#[cfg(test)]
mod hears_tests {
    use super::*;

    fn cfg() -> MediaLegConfig {
        MediaLegConfig {
            recv: vec![CodecSpec::new(CodecKind::Pcmu)],
            send: CodecSpec::new(CodecKind::Pcmu),
            recv_events: Some(101),
            send_events: Some(101),
            ptime_ms: 20,
        }
    }

    /// Every row's indices and `hears_all` as a full rebuild from the legs would give them.
    fn check_rows(call: &MediaCall) {
        let n = call.members.len();
        for (i, m) in call.members.iter().enumerate() {
            assert!(m.hears.windows(2).all(|w| w[0] < w[1]), "row {i} sorted");
            let mut want: Vec<u32> = m
                .hears
                .iter()
                .filter_map(|l| call.index.get(l).map(|&j| j as u32))
                .filter(|&j| j as usize != i)
                .collect();
            want.sort_unstable();
            assert_eq!(m.hears_idx, want, "row {i}");
            assert_eq!(m.hears.len(), want.len(), "row {i}: no stale legs");
            assert_eq!(m.hears_all, n > 1 && want.len() == n - 1, "row {i}");
        }
    }

    /// Incremental row updates on add, remove and set_hears match a full rebuild.
    #[test]
    fn hears_rows_stay_consistent() {
        let mut call = MediaCall::new(MediaCallConfig::default());
        let mut seed = 0x2545_F491_u64;
        let mut next = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..3000 {
            let l = LegId::from_raw(next(24) as u32 + 1);
            match next(10) {
                0..=2 => {
                    let _ = call.add_leg(Micros::ZERO, l, cfg(), None);
                }
                3 => {
                    call.remove_leg(l);
                }
                4 => {
                    // Everyone else.
                    let all: Vec<LegId> = call.legs().collect();
                    let _ = call.set_hears(l, &all);
                }
                _ => {
                    let k = next(30) as usize;
                    let v: Vec<LegId> = (0..k)
                        .map(|_| LegId::from_raw(next(26) as u32 + 1))
                        .collect();
                    let _ = call.set_hears(l, &v);
                }
            }
            check_rows(&call);
        }
    }
}
