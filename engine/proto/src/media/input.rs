//! One leg's decoded input: jitter buffer, decoder, concealment and resampling to the
//! call's mixing rate, one 20 ms frame per tick of the media clock.
//!
//! **Drive contract.** [`LegInput::push`] every RTP packet of the leg as it arrives (the
//! caller routes RFC 4733 `telephone-event` and RFC 3389 comfort noise elsewhere: those
//! payload types are not decoded here and come back as
//! [`PushOutcome::UnknownPayloadType`]); on each tick of the worker's media clock call
//! [`LegInput::next_frame`], which always fills the whole frame. Nothing here reads a clock
//! or allocates after construction (except [`LegInput::set_mix_rate`], which rebuilds the
//! decoders and resizes the fifo, and a jitter buffer slot growing once for a payload larger
//! than the codec's usual one).
//!
//! **Playout.** Packets are decoded in timestamp order, only when their audio is needed, into
//! a small PCM fifo at the mixing rate, so any packet time (10 to 120 ms) and any RTP clock
//! (G.722's 8000 Hz for 16 kHz audio, Opus' 48 000 Hz) comes out as continuous 20 ms frames.
//! Opus decodes directly at the mixing rate; G.711, G.722 and L16 go through a
//! [`Resampler`]. The playout position follows the [`JitterBuffer`]'s schedule: when the
//! target delay grows the input inserts a frame (a faded repeat) at once; when it runs more
//! than a frame behind the schedule it drops silent frames (or skips silence in a DTX gap),
//! and after running [`FAR_BEHIND_MS`] behind for [`FAR_BEHIND_TICKS`] ticks it drops a frame
//! even of speech.
//!
//! **Gaps.** A gap in the timestamps before a buffered packet is *discontinuous
//! transmission* when the sequence numbers are consecutive or the packet has the marker bit
//! (RFC 3551 §4.1, a talkspurt start): it plays as silence. Otherwise packets were lost:
//! Opus recovers the last lost frame from the in-band FEC of the next packet (RFC 6716
//! §2.1.7) and conceals the rest with its packet-loss concealment; G.711, G.722 and L16
//! repeat the last 20 ms at −6 dB per frame, reaching silence after 80 ms
//! ([`FrameKind::Concealed`]). When nothing at all is buffered (underflow) the frame is
//! [`FrameKind::Silence`]; after a second of that the input waits for the stream to resume
//! and restarts its schedule from the next packet.

use switchboard_codecs::codec::{CodecKind, CodecSpec, Decoder};
use switchboard_codecs::opus;
use switchboard_codecs::resample::Resampler;

pub use super::jitter::PushOutcome;
use super::jitter::{JitterBuffer, JitterConfig, MAX_PAYLOAD, PacketInfo};
use super::{FRAME_MS, MediaError};
use crate::rtp::RtpPacket;
use crate::time::Micros;

/// Samples of one frame at the highest mixing rate.
const MAX_FRAME: usize = 48_000 / 50;

/// Decoded samples one packet may yield at its codec rate: 120 ms of Opus at 48 kHz, more
/// than a [`MAX_PAYLOAD`] G.722 (two samples per byte) or G.711 payload.
const SCRATCH: usize = 5760;

/// PCM fifo length at 48 kHz: a frame plus the largest packet resampled to 48 kHz; at a
/// lower mixing rate the same duration ([`fifo_samples`]).
const FIFO: usize = MAX_FRAME + 6 * 2 * MAX_PAYLOAD + MAX_FRAME;

/// Fifo length at `mix_rate`: [`FIFO`]'s duration, plus a little for resampler rounding.
fn fifo_samples(mix_rate: u32) -> usize {
    (FIFO * mix_rate as usize).div_ceil(48_000).min(FIFO) + 64
}

/// Decoded samples one packet of these formats may yield (at most [`SCRATCH`]): a
/// [`MAX_PAYLOAD`] payload of G.711 (one sample per byte), G.722 (two) or L16; Opus and
/// anything else the full [`SCRATCH`].
fn scratch_samples(formats: &[Format]) -> usize {
    formats
        .iter()
        .map(|f| match f.spec.kind {
            CodecKind::Pcmu | CodecKind::Pcma | CodecKind::L16 => MAX_PAYLOAD,
            CodecKind::G722 => 2 * MAX_PAYLOAD,
            _ => SCRATCH,
        })
        .max()
        .unwrap_or(MAX_FRAME)
        .clamp(MAX_FRAME, SCRATCH)
}

/// Usual payload size of these formats, for the jitter buffer's slots: 20 ms of the
/// fixed-rate codecs, 128 kbit/s of Opus (larger payloads grow a slot once).
fn slot_bytes(formats: &[Format]) -> usize {
    formats
        .iter()
        .map(|f| match f.spec.kind {
            CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G722 => 160,
            CodecKind::Opus => 320,
            CodecKind::L16 => f.spec.clock_rate as usize / 25 * usize::from(f.spec.channels.max(1)),
            _ => 160,
        })
        .max()
        .unwrap_or(160)
        .min(MAX_PAYLOAD)
}

/// Frames of faded repetition before concealment of G.711, G.722 and L16 is silent.
const FADE_FRAMES: usize = 4;

/// How far behind the schedule counts as far, ms.
pub const FAR_BEHIND_MS: i64 = 40;

/// Ticks far behind the schedule before a frame of speech is dropped.
pub const FAR_BEHIND_TICKS: u32 = 50;

/// Ticks of underflow after which the input waits for the stream to resume.
const IDLE_AFTER_TICKS: u32 = 50;

/// Frames whose mean magnitude is below this count as silent when the delay shrinks.
const QUIET: u64 = 64;

/// Settings of a leg input.
#[derive(Debug, Clone)]
pub struct InputConfig {
    /// Audio formats the leg may send, by payload type (`spec.payload_type`). Formats that
    /// are not audio (telephone-event, CN) are skipped; the first spec of a payload type
    /// wins.
    pub codecs: Vec<CodecSpec>,
    /// The call's mixing rate: 8000, 16000 or 48000.
    pub mix_rate: u32,
    /// Jitter buffer settings.
    pub jitter: JitterConfig,
}

/// What a frame from [`LegInput::next_frame`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameKind {
    /// Decoded audio.
    Audio,
    /// Concealment of lost audio (PLC, FEC, faded repetition), or a frame inserted to grow
    /// the delay.
    Concealed,
    /// Silence: nothing received yet, underflow, or discontinuous transmission.
    Silence,
}

/// Counters of a leg input.
#[derive(Default, Clone, Debug)]
pub struct InputStats {
    /// Packets pushed.
    pub packets: u64,
    /// Packets that arrived after their playout time.
    pub late: u64,
    /// Packets never received (sequence numbers missing at playout).
    pub lost: u64,
    /// Duplicate packets dropped.
    pub duplicates: u64,
    /// Packets that arrived after one with a higher sequence number.
    pub reordered: u64,
    /// Frames holding concealment.
    pub concealed_frames: u64,
    /// New streams (SSRC change, jumps) after the first.
    pub resets: u64,
    /// Packets dropped because the jitter buffer was full.
    pub overflows: u64,
    /// Payloads the decoder refused.
    pub decode_errors: u64,
    /// Packets of a payload type the leg cannot send (or that is not audio).
    pub unknown_payload_type: u64,
    /// Current target playout delay, ms.
    pub target_delay_ms: u32,
    /// Audio buffered ahead of the playout position, ms.
    pub depth_ms: u32,
}

#[derive(Debug)]
struct Format {
    spec: CodecSpec,
    decoder: Decoder,
    resampler: Resampler,
    /// Rate of the decoder's output, Hz.
    audio_rate: u32,
}

impl Format {
    fn new(spec: &CodecSpec, mix_rate: u32) -> Result<Self, MediaError> {
        let codec_err = |e: &dyn std::fmt::Display| {
            MediaError::Codec(format!("payload type {}: {e}", spec.payload_type))
        };
        let decoder = if spec.kind == CodecKind::Opus {
            Decoder::with_audio_rate(spec, mix_rate)
        } else {
            Decoder::new(spec)
        }
        .map_err(|e| codec_err(&e))?;
        let audio_rate = decoder.audio_rate();
        let resampler = Resampler::new(audio_rate, mix_rate).map_err(|e| codec_err(&e))?;
        Ok(Self {
            spec: *spec,
            decoder,
            resampler,
            audio_rate,
        })
    }

    fn is_opus(&self) -> bool {
        self.spec.kind == CodecKind::Opus
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the first due packet of a stream.
    Idle,
    /// Playing from `next_ts`.
    Playing,
}

/// One leg's decoded input; see the [module docs](self).
#[derive(Debug)]
pub struct LegInput {
    formats: Vec<Format>,
    jitter: JitterBuffer,
    mix_rate: u32,
    frame_len: usize,
    stats: InputStats,
    state: State,
    /// Extended RTP timestamp of the next sample to decode.
    next_ts: i64,
    /// Extended sequence number of the last packet decoded (or counted lost).
    last_seq: Option<u64>,
    /// The format last decoded, for concealment.
    last_format: Option<usize>,
    /// Timestamp of the packet after the loss gap being concealed.
    loss_gap: Option<i64>,
    fifo: Vec<i16>,
    fifo_len: usize,
    scratch: Vec<i16>,
    /// The last frame's worth of decoded audio, for faded repetition.
    history: Vec<i16>,
    frame: Vec<i16>,
    /// Samples concealed in a row.
    conceal_run: usize,
    underflow_ticks: u32,
    far_ticks: u32,
    /// Whether the last frame held audio or concealment.
    talking: bool,
    /// What the samples at the end of the fifo are.
    tail_kind: FrameKind,
    /// Buffered packets dropped because playout had passed them.
    stale: u64,
}

impl LegInput {
    /// A leg input for `config`.
    ///
    /// Telephone-event and comfort-noise formats are skipped silently (their packets are
    /// [`PushOutcome::UnknownPayloadType`] here).
    ///
    /// # Errors
    ///
    /// [`MediaError::Invalid`] for a mixing rate other than 8000, 16000 or 48000 or invalid
    /// jitter settings, [`MediaError::Codec`] for an audio format that cannot be decoded or
    /// resampled to the mixing rate (for example L16 at 44 100 Hz).
    pub fn new(config: InputConfig) -> Result<Self, MediaError> {
        check_rate(config.mix_rate)?;
        if !config.jitter.is_valid() {
            return Err(MediaError::Invalid("jitter buffer settings"));
        }
        let formats = build_formats(&config.codecs, config.mix_rate)?;
        let frame_len = frame_len(config.mix_rate);
        let scratch = scratch_samples(&formats);
        let slot_bytes = slot_bytes(&formats);
        Ok(Self {
            formats,
            jitter: JitterBuffer::with_slot_bytes(config.jitter, slot_bytes),
            mix_rate: config.mix_rate,
            frame_len,
            stats: InputStats {
                target_delay_ms: config.jitter.min_delay_ms,
                ..InputStats::default()
            },
            state: State::Idle,
            next_ts: 0,
            last_seq: None,
            last_format: None,
            loss_gap: None,
            fifo: vec![0; fifo_samples(config.mix_rate)],
            fifo_len: 0,
            scratch: vec![0; scratch],
            history: vec![0; MAX_FRAME],
            frame: vec![0; MAX_FRAME],
            conceal_run: 0,
            underflow_ticks: 0,
            far_ticks: 0,
            talking: false,
            tail_kind: FrameKind::Silence,
            stale: 0,
        })
    }

    /// Takes one RTP packet of the leg, arrived at `now`.
    pub fn push(&mut self, now: Micros, packet: &RtpPacket<'_>) -> PushOutcome {
        let pt = packet.payload_type().get();
        let Some(format) = self.formats.iter().find(|f| f.spec.payload_type == pt) else {
            self.stats.packets += 1;
            self.stats.unknown_payload_type += 1;
            return PushOutcome::UnknownPayloadType;
        };
        let info = PacketInfo {
            ssrc: packet.ssrc().0,
            seq: packet.sequence_number(),
            timestamp: packet.timestamp().0,
            marker: packet.marker(),
            payload_type: pt,
            clock_rate: format.spec.clock_rate,
            duration: payload_ticks(&format.spec, packet.payload()),
        };
        let outcome = self.jitter.push(now, &info, packet.payload());
        if outcome == PushOutcome::Reset {
            self.restart();
        }
        self.sync_stats();
        outcome
    }

    /// Fills `out` (exactly [`frame_samples`](Self::frame_samples) samples; a longer slice
    /// is zero-filled past that, a shorter one gets the frame's start) with the next 20 ms of
    /// the leg's audio.
    pub fn next_frame(&mut self, now: Micros, out: &mut [i16]) -> FrameKind {
        self.jitter.tick();
        let kind = self.produce(now);
        if kind == FrameKind::Concealed {
            self.stats.concealed_frames += 1;
        }
        self.talking = kind != FrameKind::Silence;
        let n = self.frame_len.min(out.len());
        out[..n].copy_from_slice(&self.frame[..n]);
        out[n..].fill(0);
        self.sync_stats();
        kind
    }

    /// Changes the mixing rate: rebuilds the decoders and resamplers and drops the decoded
    /// audio not yet played (the packets stay buffered).
    ///
    /// # Errors
    ///
    /// [`MediaError::Invalid`] for a rate other than 8000, 16000 or 48000,
    /// [`MediaError::Codec`] if a format cannot be decoded at it; the input is unchanged then.
    pub fn set_mix_rate(&mut self, rate: u32) -> Result<(), MediaError> {
        check_rate(rate)?;
        if rate == self.mix_rate {
            return Ok(());
        }
        let specs: Vec<CodecSpec> = self.formats.iter().map(|f| f.spec).collect();
        self.formats = build_formats(&specs, rate)?;
        self.mix_rate = rate;
        self.frame_len = frame_len(rate);
        self.fifo = vec![0; fifo_samples(rate)];
        self.fifo_len = 0;
        self.history.fill(0);
        self.conceal_run = 0;
        Ok(())
    }

    /// The mixing rate, Hz.
    #[must_use]
    pub fn mix_rate(&self) -> u32 {
        self.mix_rate
    }

    /// Samples in one frame at the mixing rate.
    #[must_use]
    pub fn frame_samples(&self) -> usize {
        self.frame_len
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &InputStats {
        &self.stats
    }

    /// The jitter buffer.
    #[must_use]
    pub fn jitter(&self) -> &JitterBuffer {
        &self.jitter
    }

    /// Forgets the stream: buffered packets, decoded audio and codec state (not the
    /// counters).
    pub fn reset(&mut self) {
        self.jitter.clear();
        self.restart();
        self.fifo_len = 0;
        self.history.fill(0);
        self.talking = false;
        for f in &mut self.formats {
            f.resampler.reset();
        }
        self.sync_stats();
    }

    /// After a new stream began: wait for its first due packet, with fresh decoders.
    fn restart(&mut self) {
        self.state = State::Idle;
        self.last_seq = None;
        self.last_format = None;
        self.loss_gap = None;
        self.underflow_ticks = 0;
        self.far_ticks = 0;
        for f in &mut self.formats {
            // An Opus reset error leaves the old state, which still decodes.
            let _ = f.decoder.reset();
        }
    }

    fn sync_stats(&mut self) {
        let j = *self.jitter.stats();
        let stale = self.stale;
        let depth = self.depth_ms();
        let target = self.jitter.target_delay_ms();
        let s = &mut self.stats;
        s.packets = s.unknown_payload_type + j.packets;
        s.late = j.late + stale;
        s.duplicates = j.duplicates;
        s.reordered = j.reordered;
        s.resets = j.resets;
        s.overflows = j.overflows;
        s.target_delay_ms = target;
        s.depth_ms = depth;
    }

    fn depth_ms(&self) -> u32 {
        let Some(clock) = self.jitter.clock_rate() else {
            return 0;
        };
        let fifo_ms = self.fifo_len as u64 * 1000 / u64::from(self.mix_rate);
        let queued = match (self.state, self.jitter.newest_timestamp()) {
            (State::Playing, Some(newest)) => newest.saturating_sub(self.next_ts).max(0),
            (State::Idle, Some(newest)) => self
                .jitter
                .peek()
                .map_or(0, |p| newest.saturating_sub(p.timestamp)),
            _ => 0,
        };
        let queued_ms = u64::try_from(queued).unwrap_or(0) * 1000 / u64::from(clock);
        u32::try_from(fifo_ms + queued_ms).unwrap_or(u32::MAX)
    }

    /// Ticks at the stream's clock for `samples` at the mixing rate.
    fn ticks(&self, samples: usize, clock: u32) -> i64 {
        let v = samples as u64 * u64::from(clock) / u64::from(self.mix_rate);
        i64::try_from(v).unwrap_or(i64::MAX)
    }

    /// Samples at the mixing rate for `ticks` at the stream's clock (0 for negative).
    fn samples(&self, ticks: i64, clock: u32) -> usize {
        let t = u64::try_from(ticks.max(0)).unwrap_or(0);
        if let Some(p) = t.checked_mul(u64::from(self.mix_rate)) {
            return usize::try_from(p / u64::from(clock.max(1))).unwrap_or(usize::MAX);
        }
        let v = u128::from(t) * u128::from(self.mix_rate) / u128::from(clock.max(1));
        usize::try_from(v).unwrap_or(usize::MAX)
    }

    /// Writes the next frame into `self.frame[..frame_len]`.
    fn produce(&mut self, now: Micros) -> FrameKind {
        let n = self.frame_len;
        let clock = self.jitter.clock_rate().unwrap_or(8000).max(1);
        if self.state == State::Idle && !self.try_start(now) {
            // Play what is left of a previous stream, then silence.
            return if self.fifo_len > 0 {
                if let Some(rest) = self.fifo.get_mut(self.fifo_len..n) {
                    rest.fill(0);
                }
                self.fifo_len = self.fifo_len.max(n);
                self.take_frame();
                FrameKind::Audio
            } else {
                self.frame[..n].fill(0);
                FrameKind::Silence
            };
        }
        let frame_ticks = i64::from(clock / 50);
        let position = self
            .next_ts
            .saturating_sub(self.ticks(self.fifo_len, clock));
        let behind = self
            .jitter
            .ideal_position(now)
            .map_or(0, |ideal| ideal.saturating_sub(position));
        if behind < -i64::from(clock / 400) {
            // The target delay grew: insert a frame now.
            return self.stretch();
        }
        // Beyond the one frame of slack that tick phase allows.
        let excess = behind.saturating_sub(frame_ticks);
        let far = excess >= i64::from(clock) * FAR_BEHIND_MS / 1000;
        self.far_ticks = if far { self.far_ticks + 1 } else { 0 };
        let kind = self.fill(clock, excess.max(0));
        self.take_frame();
        if excess >= frame_ticks
            && (kind == FrameKind::Silence || self.is_quiet() || self.far_ticks >= FAR_BEHIND_TICKS)
        {
            // Shrink the delay by dropping this frame.
            self.far_ticks = 0;
            let kind = self.fill(clock, 0);
            self.take_frame();
            return kind;
        }
        kind
    }

    /// In `Idle`: starts playing when the earliest packet is due. Stale packets (due more
    /// than a frame ago, as after a burst, and followed by another) are skipped.
    fn try_start(&mut self, now: Micros) -> bool {
        let Some(ideal) = self.jitter.ideal_position(now) else {
            return false;
        };
        let clock = self.jitter.clock_rate().unwrap_or(8000);
        let stale = ideal.saturating_sub(i64::from(clock / 50));
        // Drop packets more than a frame behind the schedule while a later one is held.
        while self.jitter.get(1).is_some() {
            match self.jitter.peek() {
                Some(head) if head.timestamp < stale => {
                    self.jitter.pop();
                    self.stale += 1;
                }
                _ => break,
            }
        }
        let Some(head) = self.jitter.peek() else {
            return false;
        };
        if head.timestamp > ideal {
            return false;
        }
        self.next_ts = head.timestamp;
        self.last_seq = None;
        self.state = State::Playing;
        self.underflow_ticks = 0;
        self.far_ticks = 0;
        self.jitter.set_playout(Some(self.next_ts));
        true
    }

    /// A frame inserted without advancing the stream: faded repetition, or silence.
    fn stretch(&mut self) -> FrameKind {
        let n = self.frame_len;
        if self.talking && self.conceal_run < FADE_FRAMES * n {
            for i in 0..n {
                self.frame[i] = self.faded(self.conceal_run);
                self.conceal_run += 1;
            }
            FrameKind::Concealed
        } else {
            self.frame[..n].fill(0);
            FrameKind::Silence
        }
    }

    /// Sample `run` of a faded repetition of the history.
    fn faded(&self, run: usize) -> i16 {
        let n = self.frame_len.max(1);
        let step = run / n;
        if step >= FADE_FRAMES {
            return 0;
        }
        self.history[run % n] >> (step + 1)
    }

    fn is_quiet(&self) -> bool {
        let n = self.frame_len.max(1);
        let sum: u64 = self.frame[..n]
            .iter()
            .map(|&x| u64::from(x.unsigned_abs()))
            .sum();
        sum / n as u64 <= QUIET
    }

    /// Moves the fifo's first frame into `self.frame`.
    fn take_frame(&mut self) {
        let n = self.frame_len;
        let k = n.min(self.fifo_len);
        self.frame[..k].copy_from_slice(&self.fifo[..k]);
        self.frame[k..n].fill(0);
        self.fifo.copy_within(k..self.fifo_len, 0);
        self.fifo_len -= k;
    }

    /// Decodes, conceals or fills silence until the fifo holds a frame. In a DTX gap up to
    /// `skip` ticks of silence are skipped rather than played.
    fn fill(&mut self, clock: u32, mut skip: i64) -> FrameKind {
        let n = self.frame_len;
        let tolerance = i64::from(clock / 400);
        // Samples left over from the last fill count with the kind they had.
        let leftover = self.fifo_len > 0;
        let mut audio = leftover && self.tail_kind == FrameKind::Audio;
        let mut concealed = leftover && self.tail_kind == FrameKind::Concealed;
        let mut decoded = false;
        let mut underflow = false;
        // Every pass pops a packet, adds samples or moves `next_ts` to the head packet.
        for _ in 0..256 {
            if self.fifo_len >= n {
                break;
            }
            let need = n - self.fifo_len;
            let Some(head) = self.jitter.peek() else {
                underflow = true;
                self.silence(need, clock);
                self.tail_kind = FrameKind::Silence;
                break;
            };
            let gap = head.timestamp.saturating_sub(self.next_ts);
            if gap < -tolerance {
                // Overlaps audio already played: drop it.
                self.jitter.pop();
                self.stale += 1;
                continue;
            }
            if gap <= tolerance {
                if self.decode_head(clock) {
                    audio = true;
                    decoded = true;
                    self.tail_kind = FrameKind::Audio;
                }
                continue;
            }
            let in_loss = self.loss_gap == Some(head.timestamp);
            let consecutive = self.last_seq.is_some_and(|s| head.seq == s + 1);
            if !in_loss && (consecutive || head.marker || self.last_seq.is_none()) {
                // Discontinuous transmission: silence up to the next packet.
                let skipped = skip.min(gap);
                if skipped > 0 {
                    skip -= skipped;
                    self.next_ts += skipped;
                    continue;
                }
                let k = need.min(self.samples(gap, clock));
                if k == 0 {
                    self.next_ts = head.timestamp;
                } else {
                    self.silence(k, clock);
                    self.tail_kind = FrameKind::Silence;
                }
                continue;
            }
            if !in_loss {
                let last = self.last_seq.unwrap_or(head.seq);
                self.stats.lost += head.seq.saturating_sub(last + 1);
                self.loss_gap = Some(head.timestamp);
            }
            if self.conceal_gap(gap, need, clock) {
                concealed = true;
                self.tail_kind = FrameKind::Concealed;
            } else {
                self.tail_kind = FrameKind::Silence;
            }
        }
        self.jitter.set_playout(Some(self.next_ts));
        if decoded {
            self.underflow_ticks = 0;
        } else if underflow {
            self.underflow_ticks += 1;
            if self.underflow_ticks >= IDLE_AFTER_TICKS {
                // The stream paused: restart the schedule from its next packet.
                self.state = State::Idle;
                self.jitter.rebase();
                self.underflow_ticks = 0;
            }
        }
        if concealed {
            FrameKind::Concealed
        } else if audio {
            FrameKind::Audio
        } else {
            FrameKind::Silence
        }
    }

    /// Appends `k` samples of silence and advances the stream by their duration.
    fn silence(&mut self, k: usize, clock: u32) {
        let end = (self.fifo_len + k).min(self.fifo.len());
        self.fifo[self.fifo_len..end].fill(0);
        self.fifo_len = end;
        self.next_ts += self.ticks(k, clock);
    }

    /// Decodes the head packet into the fifo; pops it. Returns whether audio came out.
    fn decode_head(&mut self, clock: u32) -> bool {
        let Some(head) = self.jitter.peek() else {
            return false;
        };
        let (seq, ts) = (head.seq, head.timestamp);
        let Some(index) = self
            .formats
            .iter()
            .position(|f| f.spec.payload_type == head.payload_type)
        else {
            self.jitter.pop();
            return false;
        };
        let format = &mut self.formats[index];
        let decoded = format.decoder.decode(head.payload, &mut self.scratch);
        self.jitter.pop();
        let m = match decoded {
            Ok(m) => m.min(self.scratch.len()),
            Err(_) => {
                // Counted, then treated as lost: the gap before the next packet conceals.
                self.stats.decode_errors += 1;
                return false;
            }
        };
        self.last_seq = Some(seq);
        self.last_format = Some(index);
        let ticks = m as u64 * u64::from(clock) / u64::from(format.audio_rate.max(1));
        self.next_ts = ts.saturating_add(i64::try_from(ticks).unwrap_or(0));
        let start = self.fifo_len;
        let written = format
            .resampler
            .process(&self.scratch[..m], &mut self.fifo[start..]);
        self.fifo_len += written;
        if written > 0 {
            self.conceal_run = 0;
            self.remember(start);
        }
        written > 0
    }

    /// Keeps the last frame of decoded audio (ending at the fifo's end) for repetition.
    fn remember(&mut self, start: usize) {
        let n = self.frame_len;
        let new = self.fifo_len - start;
        if new >= n {
            self.history[..n].copy_from_slice(&self.fifo[self.fifo_len - n..self.fifo_len]);
        } else {
            self.history.copy_within(new..n, 0);
            self.history[n - new..n].copy_from_slice(&self.fifo[start..self.fifo_len]);
        }
    }

    /// Conceals part of a loss gap of `gap` ticks before the head packet, at least `need`
    /// samples where the gap allows. Returns whether the output is concealment rather than
    /// silence.
    fn conceal_gap(&mut self, gap: i64, need: usize, clock: u32) -> bool {
        let gap_samples = self.samples(gap, clock);
        let opus = self
            .last_format
            .or_else(|| {
                let pt = self.jitter.peek()?.payload_type;
                self.formats.iter().position(|f| f.spec.payload_type == pt)
            })
            .filter(|&i| self.formats.get(i).is_some_and(Format::is_opus));
        let Some(index) = opus else {
            let k = need.min(gap_samples);
            if k == 0 {
                self.next_ts = self.next_ts.saturating_add(gap);
                return false;
            }
            let end = (self.fifo_len + k).min(self.fifo.len());
            let mut any = false;
            for i in self.fifo_len..end {
                let v = self.faded(self.conceal_run);
                any |= self.conceal_run < FADE_FRAMES * self.frame_len;
                self.fifo[i] = v;
                self.conceal_run += 1;
            }
            self.fifo_len = end;
            self.next_ts += self.ticks(k, clock);
            return any;
        };
        // Opus: PLC and FEC work in whole 2.5 ms units.
        let unit = (self.mix_rate / 400) as usize;
        let gap_units = gap_samples / unit * unit;
        if gap_units == 0 {
            self.next_ts = self.next_ts.saturating_add(gap);
            return false;
        }
        let head_samples = self
            .jitter
            .peek()
            .and_then(|h| opus::packet_samples(h.payload, self.mix_rate).ok())
            .unwrap_or(0);
        let start = self.fifo_len;
        let room = (self.fifo.len() - start).min(self.scratch.len());
        let (k, result) = if gap_units <= head_samples {
            // The rest of the gap is the frame the head packet's FEC describes.
            let k = gap_units.min(room / unit * unit);
            let out = &mut self.fifo[start..start + k];
            let r = match self.jitter.peek() {
                Some(h) => self.formats[index].decoder.decode_fec(h.payload, out),
                None => Ok(0),
            };
            (k, r)
        } else {
            let k = need
                .div_ceil(unit)
                .saturating_mul(unit)
                .min(gap_units.saturating_sub(head_samples).max(unit))
                .min(gap_units)
                .min(room / unit * unit);
            let out = &mut self.fifo[start..start + k];
            (k, self.formats[index].decoder.conceal(out))
        };
        if result.is_err() {
            self.fifo[start..start + k].fill(0);
        }
        self.fifo_len += k;
        self.conceal_run += k;
        self.next_ts += self.ticks(k, clock);
        k > 0
    }
}

/// The duration of a payload in RTP clock ticks, 0 if it cannot be told.
fn payload_ticks(spec: &CodecSpec, payload: &[u8]) -> u32 {
    let ticks = match spec.kind {
        // One sample per byte at 8000 Hz; G.722 has two 16 kHz samples per byte on an
        // 8000 Hz clock, also one tick per byte.
        CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G722 => payload.len(),
        CodecKind::L16 => payload.len() / 2,
        CodecKind::Opus => opus::packet_samples(payload, 48_000).unwrap_or(0),
        _ => 0,
    };
    u32::try_from(ticks).unwrap_or(0)
}

fn check_rate(rate: u32) -> Result<(), MediaError> {
    if matches!(rate, 8000 | 16_000 | 48_000) {
        Ok(())
    } else {
        Err(MediaError::Invalid("mixing rate"))
    }
}

fn frame_len(rate: u32) -> usize {
    (rate * FRAME_MS / 1000) as usize
}

fn build_formats(specs: &[CodecSpec], mix_rate: u32) -> Result<Vec<Format>, MediaError> {
    let mut formats: Vec<Format> = Vec::with_capacity(specs.len());
    for spec in specs {
        if !spec.kind.is_audio()
            || formats
                .iter()
                .any(|f| f.spec.payload_type == spec.payload_type)
        {
            continue;
        }
        formats.push(Format::new(spec, mix_rate)?);
    }
    Ok(formats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{PayloadType, RtpHeaderWriter, RtpTimestamp, Ssrc};

    fn pcmu_input(rate: u32) -> LegInput {
        LegInput::new(InputConfig {
            codecs: vec![CodecSpec::new(CodecKind::Pcmu)],
            mix_rate: rate,
            jitter: JitterConfig::default(),
        })
        .unwrap()
    }

    fn packet(seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 12 + payload.len()];
        RtpHeaderWriter::new(PayloadType::PCMU, seq, RtpTimestamp(ts), Ssrc(1))
            .write_packet(payload, &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn silence_before_the_first_packet() {
        for rate in [8000, 16_000, 48_000] {
            let mut input = pcmu_input(rate);
            assert_eq!(input.frame_samples(), rate as usize / 50);
            let mut out = vec![1i16; input.frame_samples()];
            assert_eq!(input.next_frame(Micros(0), &mut out), FrameKind::Silence);
            assert!(out.iter().all(|&v| v == 0));
        }
    }

    #[test]
    fn odd_output_lengths_are_filled() {
        let mut input = pcmu_input(8000);
        let bytes = packet(1, 0, &[0x80; 160]);
        input.push(Micros(0), &RtpPacket::parse(&bytes).unwrap());
        let mut long = vec![7i16; 400];
        input.next_frame(Micros(40_000), &mut long);
        assert!(long[160..].iter().all(|&v| v == 0));
        let mut short = vec![7i16; 10];
        input.next_frame(Micros(60_000), &mut short);
        let mut empty: [i16; 0] = [];
        input.next_frame(Micros(80_000), &mut empty);
    }

    #[test]
    fn payload_durations() {
        let pcmu = CodecSpec::new(CodecKind::Pcmu);
        assert_eq!(payload_ticks(&pcmu, &[0; 240]), 240);
        let g722 = CodecSpec::new(CodecKind::G722);
        assert_eq!(payload_ticks(&g722, &[0; 160]), 160);
        let l16 = CodecSpec::new(CodecKind::L16);
        assert_eq!(payload_ticks(&l16, &[0; 640]), 320);
        let opus = CodecSpec::new(CodecKind::Opus);
        assert_eq!(payload_ticks(&opus, &[]), 0);
    }

    #[test]
    fn reset_forgets_the_stream() {
        let mut input = pcmu_input(8000);
        for i in 0..5u16 {
            let bytes = packet(i, u32::from(i) * 160, &[0x10; 160]);
            input.push(
                Micros(u64::from(i) * 20_000),
                &RtpPacket::parse(&bytes).unwrap(),
            );
        }
        assert_eq!(input.jitter().len(), 5);
        input.reset();
        assert!(input.jitter().is_empty());
        let mut out = vec![0i16; 160];
        assert_eq!(
            input.next_frame(Micros(200_000), &mut out),
            FrameKind::Silence
        );
        assert_eq!(input.stats().resets, 0);
    }
}
