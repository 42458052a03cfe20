//! One leg's encoded output: resampling from the call's mixing rate to the send codec's
//! audio rate, the encoder, packetisation into `ptime` packets, the RTP header state and
//! RFC 4733 telephone-event packets.
//!
//! Drive contract, once per 20 ms media frame, in this order:
//! 1. either [`LegOutput::push_frame`] (the leg encodes its own mix; returns a payload when
//!    `ptime` worth of frames has been gathered) or, for a listener sharing another one's
//!    encoding, nothing;
//! 2. [`LegOutput::emit`] with the payload to send this frame, if any: writes the audio
//!    packet, or the due telephone-event packets instead while a digit is being sent, and
//!    advances the stream clock by one frame.
//!
//! The stream starts on a fresh SSRC, sequence number and timestamp, or continues an
//! [`OutputSeed`]: same SSRC, next sequence number, timestamp advanced by the wall time since
//! the seed's packet (at the send codec's clock rate). The first packet carries the marker bit.

use std::collections::VecDeque;

use switchboard_codecs::codec::{CodecKind, CodecSpec, Encoder};
use switchboard_codecs::resample::Resampler;
use switchboard_codecs::telephone_event::{DtmfSender, event_from_char};

use super::{FRAME_MS, MediaError, OutputSeed};
use crate::rtp::{PayloadType, RTP_HEADER_LEN, RtpHeaderWriter, RtpTimestamp, Ssrc};
use crate::time::Micros;

/// Largest payload an output writes (Opus at 60 ms: 3 × 1275 + 7 bytes; L16/48000 at 60 ms
/// would be 5760 bytes).
pub const MAX_PAYLOAD: usize = 6000;

/// Largest RTP packet an output writes.
pub const MAX_PACKET: usize = RTP_HEADER_LEN + MAX_PAYLOAD;

/// Digits queued for one leg at most; more are refused.
pub const MAX_QUEUED_DIGITS: usize = 64;

/// Pause between two queued digits, ms.
pub const DIGIT_GAP_MS: u32 = 60;

/// A digit waiting to be sent to a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedDigit {
    /// The digit.
    pub digit: char,
    /// Its length, ms.
    pub duration_ms: u32,
    /// Its level, −dBm0 (0..=63).
    pub volume: u8,
}

/// RFC 4733 event being sent.
#[derive(Debug)]
struct EventState {
    sender: DtmfSender,
    /// RTP timestamp of the event start.
    start_ts: u32,
    /// Timestamp units since the start, at the current frame.
    elapsed: u32,
}

/// One leg's encoded output.
#[derive(Debug)]
pub struct LegOutput {
    spec: CodecSpec,
    ptime_ms: u32,
    mix_rate: u32,
    encoder: Encoder,
    resampler: Option<Resampler>,
    /// Mixed frames gathered for the next packet, at the mixing rate.
    acc: Vec<i16>,
    acc_frames: u32,
    /// Resampled audio of one packet.
    resampled: Vec<i16>,
    ssrc: u32,
    /// Sequence number of the next packet.
    seq: u16,
    /// Timestamp of the current frame (None until the first frame: taken from the seed).
    frame_ts: u32,
    /// Frames since the first frame of the packet being gathered.
    frame_in_packet: u32,
    /// Timestamp of the first frame of the packet being gathered.
    packet_ts: u32,
    seed: Option<OutputSeed>,
    started: bool,
    marker_pending: bool,
    last_sent: Option<(u16, u32, Micros)>,
    packets_sent: u64,
    events_pt: Option<u8>,
    digits: VecDeque<QueuedDigit>,
    event: Option<EventState>,
    /// Frames left in the gap after an event.
    gap_frames: u32,
    /// Least timestamp advance when the stream continues from its seed (the length of the
    /// last packet sent in direct mode; 0 for a seed from elsewhere).
    min_advance: u32,
    /// Direct mode: samples at the mixing rate gathered in `acc` for the next packet.
    direct_len: usize,
    /// Direct mode: timestamp of `acc[0]`.
    direct_ts: u32,
}

/// Random-looking but deterministic values from a seed (SplitMix64).
#[must_use]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn codec_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Codec(e.to_string())
}

/// The audio rate an encoder for `spec` runs at when the call mixes at `mix_rate`.
fn encoder_rate(spec: &CodecSpec, mix_rate: u32) -> u32 {
    if spec.kind == CodecKind::Opus {
        mix_rate
    } else {
        spec.audio_rate()
    }
}

impl LegOutput {
    /// An output sending `spec` every `ptime_ms` (20, 40 or 60) from mixed frames at
    /// `mix_rate`. `fresh` seeds the SSRC, sequence number and timestamp when `seed` is
    /// `None`.
    ///
    /// # Errors
    ///
    /// [`MediaError::Invalid`] for a bad ptime, [`MediaError::Codec`] when the codec cannot
    /// be encoded at that rate.
    pub fn new(
        spec: &CodecSpec,
        ptime_ms: u32,
        mix_rate: u32,
        events_pt: Option<u8>,
        seed: Option<OutputSeed>,
        fresh: u64,
    ) -> Result<Self, MediaError> {
        if !matches!(ptime_ms, 20 | 40 | 60) {
            return Err(MediaError::Invalid("ptime"));
        }
        if events_pt.is_some_and(|pt| pt > 127) || spec.payload_type > 127 {
            return Err(MediaError::Invalid("payload type"));
        }
        let (encoder, resampler) = Self::build_codec(spec, ptime_ms, mix_rate)?;
        let mix_samples = (mix_rate / 1000 * ptime_ms) as usize;
        let enc_samples = encoder.frame().samples;
        let r = mix64(fresh);
        Ok(Self {
            spec: *spec,
            ptime_ms,
            mix_rate,
            encoder,
            resampler,
            acc: vec![0; mix_samples],
            acc_frames: 0,
            resampled: vec![0; enc_samples],
            ssrc: seed.map_or(r as u32, |s| s.ssrc),
            seq: seed.map_or((r >> 32) as u16, |s| s.seq.wrapping_add(1)),
            frame_ts: (r >> 48) as u32 ^ ((r as u32) << 7),
            frame_in_packet: 0,
            packet_ts: 0,
            seed,
            started: false,
            marker_pending: true,
            last_sent: None,
            packets_sent: 0,
            events_pt,
            digits: VecDeque::with_capacity(if events_pt.is_some() {
                MAX_QUEUED_DIGITS
            } else {
                0
            }),
            event: None,
            gap_frames: 0,
            min_advance: 0,
            direct_len: 0,
            direct_ts: 0,
        })
    }

    fn build_codec(
        spec: &CodecSpec,
        ptime_ms: u32,
        mix_rate: u32,
    ) -> Result<(Encoder, Option<Resampler>), MediaError> {
        let rate = encoder_rate(spec, mix_rate);
        let encoder = Encoder::with_audio_rate(spec, ptime_ms, rate).map_err(codec_error)?;
        let resampler = if rate == mix_rate {
            None
        } else {
            Some(Resampler::new(mix_rate, rate).map_err(codec_error)?)
        };
        Ok((encoder, resampler))
    }

    /// Changes the mixing rate the frames come at (rebuilds the encoder; a short glitch).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn set_mix_rate(&mut self, mix_rate: u32) -> Result<(), MediaError> {
        if mix_rate == self.mix_rate {
            return Ok(());
        }
        let (encoder, resampler) = Self::build_codec(&self.spec, self.ptime_ms, mix_rate)?;
        self.encoder = encoder;
        self.resampler = resampler;
        self.mix_rate = mix_rate;
        self.acc = vec![0; (mix_rate / 1000 * self.ptime_ms) as usize];
        self.resampled = vec![0; self.encoder.frame().samples];
        self.acc_frames = 0;
        self.direct_len = 0;
        Ok(())
    }

    /// The send format.
    #[must_use]
    pub fn spec(&self) -> &CodecSpec {
        &self.spec
    }

    /// Packet time, ms.
    #[must_use]
    pub fn ptime_ms(&self) -> u32 {
        self.ptime_ms
    }

    /// Whether the encoder (or resampler) keeps state from frame to frame, so that switching
    /// between two encoders' streams is audible.
    #[must_use]
    pub fn is_stateful(&self) -> bool {
        self.resampler.is_some() || matches!(self.spec.kind, CodecKind::G722 | CodecKind::Opus)
    }

    /// The SSRC of the stream.
    #[must_use]
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Packets sent so far (audio and events).
    #[must_use]
    pub fn packets_sent(&self) -> u64 {
        self.packets_sent
    }

    /// Where a following stream would continue from.
    #[must_use]
    pub fn seed(&self, now: Micros) -> OutputSeed {
        match (self.last_sent, self.seed) {
            (Some((seq, timestamp, at)), _) => OutputSeed {
                ssrc: self.ssrc,
                seq,
                timestamp,
                clock_rate: self.spec.clock_rate,
                at,
            },
            (None, Some(seed)) => seed,
            (None, None) => OutputSeed {
                ssrc: self.ssrc,
                seq: self.seq.wrapping_sub(1),
                timestamp: self.frame_ts,
                clock_rate: self.spec.clock_rate,
                at: now,
            },
        }
    }

    /// RTP clock ticks in one frame.
    fn frame_ticks(&self) -> u32 {
        self.spec.clock_ticks(FRAME_MS)
    }

    /// Adds one mixed frame (at the mixing rate); returns the payload length written into
    /// `payload` when a packet is complete.
    pub fn push_frame(&mut self, pcm: &[i16], payload: &mut [u8]) -> Option<usize> {
        let n = (self.mix_rate / 50) as usize;
        let start = self.acc_frames as usize * n;
        let dst = self.acc.get_mut(start..start + n)?;
        let len = pcm.len().min(n);
        dst[..len].copy_from_slice(&pcm[..len]);
        dst[len..].fill(0);
        self.acc_frames += 1;
        if self.acc_frames * FRAME_MS < self.ptime_ms {
            return None;
        }
        self.acc_frames = 0;
        let input: &[i16] = match self.resampler.as_mut() {
            Some(r) => {
                let got = r.process(&self.acc, &mut self.resampled);
                self.resampled[got..].fill(0);
                &self.resampled
            }
            None => &self.acc,
        };
        self.encoder.encode(input, payload).ok()
    }

    /// Queues a digit to send as telephone events.
    ///
    /// # Errors
    ///
    /// [`MediaError::Invalid`] when the leg takes no events, the digit is unknown or the
    /// queue is full.
    pub fn queue_event(&mut self, digit: QueuedDigit) -> Result<(), MediaError> {
        if self.events_pt.is_none() {
            return Err(MediaError::Invalid("telephone-event"));
        }
        if event_from_char(digit.digit).is_none() {
            return Err(MediaError::Invalid("digit"));
        }
        if self.digits.len() >= MAX_QUEUED_DIGITS {
            return Err(MediaError::Invalid("digit queue full"));
        }
        self.digits.push_back(digit);
        Ok(())
    }

    /// Whether the leg takes telephone events.
    #[must_use]
    pub fn takes_events(&self) -> bool {
        self.events_pt.is_some()
    }

    /// Whether telephone events are being (or about to be) sent.
    #[must_use]
    pub fn events_busy(&self) -> bool {
        self.event.is_some() || !self.digits.is_empty()
    }

    /// Ends the current frame: sends the audio `payload` (when a packet is due) or the due
    /// event packets, through `send`, using `buf` for the packet bytes.
    pub fn emit(
        &mut self,
        now: Micros,
        payload: Option<&[u8]>,
        buf: &mut [u8],
        send: &mut dyn FnMut(&[u8]),
    ) {
        if !self.started {
            self.started = true;
            if let Some(seed) = self.seed {
                let elapsed = now.0.saturating_sub(seed.at.0);
                let ticks = u128::from(elapsed) * u128::from(self.spec.clock_rate) / 1_000_000;
                let ticks = (ticks as u32).max(self.min_advance);
                self.frame_ts = seed.timestamp.wrapping_add(ticks);
            }
        }
        if self.frame_in_packet == 0 {
            self.packet_ts = self.frame_ts;
        }
        self.frame_in_packet += 1;
        if self.frame_in_packet * FRAME_MS >= self.ptime_ms {
            self.frame_in_packet = 0;
        }
        self.start_event_if_due();
        if self.event.is_some() {
            self.emit_events(now, buf, send);
        } else if let Some(payload) = payload {
            let pt = PayloadType::from_masked(self.spec.payload_type);
            let ts = self.packet_ts;
            self.write(now, pt, ts, self.marker_pending, payload, buf, send);
            self.marker_pending = false;
        }
        self.frame_ts = self.frame_ts.wrapping_add(self.frame_ticks());
    }

    /// RTP clock ticks in one packet.
    fn packet_ticks(&self) -> u32 {
        self.spec.clock_ticks(self.ptime_ms)
    }

    /// The timestamp a packet sent at `now` continues the stream with: the last one sent
    /// advanced by the time elapsed, and at least by that packet's length.
    #[must_use]
    pub fn next_timestamp(&self, now: Micros) -> u32 {
        let seed = self.seed(now);
        let elapsed = now.0.saturating_sub(seed.at.0);
        let ticks = u128::from(elapsed) * u128::from(self.spec.clock_rate) / 1_000_000;
        let least = if self.last_sent.is_some() {
            self.packet_ticks()
        } else {
            self.min_advance
        };
        seed.timestamp
            .wrapping_add(u32::try_from(ticks).unwrap_or(u32::MAX).max(least))
    }

    /// Starts direct mode: audio comes through [`push_direct`](Self::push_direct) instead
    /// of frames.
    pub fn enter_direct(&mut self) {
        self.direct_len = 0;
        self.acc_frames = 0;
    }

    /// Ends direct mode: the next [`emit`](Self::emit) continues the stream from the last
    /// packet sent (same SSRC, next sequence number, timestamp advanced by the time elapsed
    /// and at least by that packet's length).
    pub fn leave_direct(&mut self, now: Micros) {
        if self.last_sent.is_some() {
            self.seed = Some(self.seed(now));
            self.min_advance = self.packet_ticks();
            self.started = false;
        }
        self.frame_in_packet = 0;
        self.acc_frames = 0;
        self.direct_len = 0;
    }

    /// Direct mode: adds decoded audio at the mixing rate whose first sample has stream
    /// timestamp `ts`; each packet completed is encoded and sent at once. A gap in the
    /// timestamps drops the partial packet. Returns the packets sent.
    pub fn push_direct(
        &mut self,
        now: Micros,
        pcm: &[i16],
        ts: u32,
        payload: &mut [u8],
        buf: &mut [u8],
        send: &mut dyn FnMut(&[u8]),
    ) -> u32 {
        let cap = self.acc.len();
        let to_ticks = |n: usize, s: &Self| -> u32 {
            (n as u64 * u64::from(s.spec.clock_rate) / u64::from(s.mix_rate.max(1))) as u32
        };
        if self.direct_len > 0 {
            let expect = self.direct_ts.wrapping_add(to_ticks(self.direct_len, self));
            let off = ts.wrapping_sub(expect) as i32;
            if off.unsigned_abs() > self.spec.clock_ticks(5) {
                self.direct_len = 0;
            }
        }
        if self.direct_len == 0 {
            self.direct_ts = ts;
        }
        let mut sent = 0;
        let mut rest = pcm;
        while !rest.is_empty() && cap > 0 {
            let take = (cap - self.direct_len).min(rest.len());
            let start = self.direct_len;
            self.acc[start..start + take].copy_from_slice(&rest[..take]);
            self.direct_len += take;
            rest = &rest[take..];
            if self.direct_len < cap {
                break;
            }
            self.direct_len = 0;
            let input: &[i16] = match self.resampler.as_mut() {
                Some(r) => {
                    let got = r.process(&self.acc, &mut self.resampled);
                    self.resampled[got..].fill(0);
                    &self.resampled
                }
                None => &self.acc,
            };
            let ts = self.direct_ts;
            self.direct_ts = ts.wrapping_add(self.packet_ticks());
            if let Ok(n) = self.encoder.encode(input, payload) {
                if let Some(p) = payload.get(..n) {
                    let pt = PayloadType::from_masked(self.spec.payload_type);
                    self.write(now, pt, ts, self.marker_pending, p, buf, send);
                    self.marker_pending = false;
                    sent += 1;
                }
            }
        }
        sent
    }

    /// Direct mode: sends an RFC 4733 payload as it came, with the leg's `telephone-event`
    /// payload type. Returns false when the leg takes no events.
    pub fn send_event_direct(
        &mut self,
        now: Micros,
        payload: &[u8],
        ts: u32,
        marker: bool,
        buf: &mut [u8],
        send: &mut dyn FnMut(&[u8]),
    ) -> bool {
        let Some(pt) = self.events_pt else {
            return false;
        };
        let pt = PayloadType::from_masked(pt);
        self.write(now, pt, ts, marker, payload, buf, send);
        self.marker_pending = false;
        true
    }

    fn start_event_if_due(&mut self) {
        if self.event.is_some() {
            return;
        }
        if self.gap_frames > 0 {
            self.gap_frames -= 1;
            return;
        }
        let Some(digit) = self.digits.pop_front() else {
            return;
        };
        let ticks = self.frame_ticks();
        let Ok(mut sender) = DtmfSender::new(ticks.max(1)) else {
            return;
        };
        let duration = u64::from(digit.duration_ms) * u64::from(self.spec.clock_rate) / 1000;
        let duration = u32::try_from(duration).unwrap_or(u32::MAX).max(1);
        if sender
            .start_digit(digit.digit, duration, digit.volume.min(63))
            .is_err()
        {
            return;
        }
        self.event = Some(EventState {
            sender,
            start_ts: self.frame_ts,
            elapsed: 0,
        });
    }

    fn emit_events(&mut self, now: Micros, buf: &mut [u8], send: &mut dyn FnMut(&[u8])) {
        let Some(mut ev) = self.event.take() else {
            return;
        };
        let Some(pt) = self.events_pt else {
            return;
        };
        let pt = PayloadType::from_masked(pt);
        while let Some(p) = ev.sender.poll_due(ev.elapsed) {
            let ts = ev.start_ts.wrapping_add(p.timestamp_offset);
            self.write(now, pt, ts, p.marker, &p.payload, buf, send);
            self.marker_pending = false;
        }
        ev.elapsed = ev.elapsed.saturating_add(self.frame_ticks());
        if ev.sender.is_idle() {
            self.gap_frames = DIGIT_GAP_MS.div_ceil(FRAME_MS);
            // The audio that follows starts a new talkspurt.
            self.marker_pending = true;
        } else {
            self.event = Some(ev);
        }
    }

    #[allow(clippy::too_many_arguments, reason = "private helper")]
    fn write(
        &mut self,
        now: Micros,
        pt: PayloadType,
        ts: u32,
        marker: bool,
        payload: &[u8],
        buf: &mut [u8],
        send: &mut dyn FnMut(&[u8]),
    ) {
        let header =
            RtpHeaderWriter::new(pt, self.seq, RtpTimestamp(ts), Ssrc(self.ssrc)).marker(marker);
        if let Ok(n) = header.write_packet(payload, buf) {
            send(&buf[..n]);
            self.last_sent = Some((self.seq, ts, now));
            self.seq = self.seq.wrapping_add(1);
            self.packets_sent += 1;
        }
    }
}
