//! An adaptive, bounded jitter buffer for one incoming RTP stream (RFC 3550).
//!
//! [`JitterBuffer`] holds the encoded payloads of one leg's stream in timestamp order and
//! decides when each is due; it does not decode (see [`super::LegInput`]).
//!
//! **Drive contract.** [`JitterBuffer::push`] each received packet with its arrival time;
//! on every tick of the media clock call [`JitterBuffer::tick`], ask
//! [`JitterBuffer::ideal_position`] which timestamp should be playing now, take due packets
//! with [`JitterBuffer::peek`] / [`JitterBuffer::pop`], and report the decoder's position with
//! [`JitterBuffer::set_playout`]: a packet pushed later whose timestamp lies before it is
//! [`PushOutcome::Late`].
//!
//! **Timing.** Each packet's *transit* is its arrival time minus its media time (RTP
//! timestamp over the clock rate). Over a window of recent packets the smallest transit is
//! the base (the fastest path through the network), and a high percentile of the others'
//! excess over it is the measured jitter (compare RFC 3550 §6.4.1 and A.8, which smooth the
//! same differences). The target playout delay follows that jitter between the configured
//! minimum and maximum: it grows at once and shrinks by at most [`SHRINK_US_PER_TICK`] per
//! tick. It is never below one packet time (so that the packet after a lost one is normally
//! buffered when the loss is played, and the loss is concealed rather than heard as an
//! underflow), and packets not aligned to 20 ms frames (10 or 30 ms) add how early a frame
//! needs them. Timestamp `t` is due at `base + media_time(t) + target`.
//!
//! **Streams.** A new SSRC, a change of clock rate, a sequence number jump of more than
//! [`SEQ_JUMP`], a timestamp that runs backwards while the sequence number runs forwards, or
//! a packet arriving far earlier than its timestamp allows starts a new stream
//! ([`PushOutcome::Reset`]); stragglers of the replaced SSRC are late for a second
//! afterwards rather than switching back. Gaps in the timestamps with consecutive sequence numbers are
//! discontinuous transmission, not loss (RFC 3551 §4.1, RFC 3389).
//!
//! **Bounds.** At most `capacity` packets of at most [`MAX_PAYLOAD`] bytes each, stored in
//! slots allocated in [`JitterBuffer::with_slot_bytes`] for the stream's usual payload size.
//! A slot grows (once per size class, to at most [`MAX_PAYLOAD`]) only when a larger payload
//! lands in it; slots are reused most recent first, so a steady stream allocates nothing
//! after its first packets.

use std::collections::VecDeque;

use super::FRAME_MS;
use crate::rtp::SeqUnwrapper;
use crate::time::Micros;

/// The largest payload the buffer holds, bytes.
pub const MAX_PAYLOAD: usize = 1500;

/// Initial slot size of [`JitterBuffer::new`]: 20 ms of G.711.
pub const DEFAULT_SLOT_BYTES: usize = 160;

/// The most packets a buffer may be configured to hold.
pub const MAX_CAPACITY: usize = 1024;

/// A sequence number further than this from the highest one seen starts a new stream.
pub const SEQ_JUMP: i64 = 1000;

/// Packets in the jitter measurement window.
const WINDOW: usize = 50;

/// Percentile of the transit excess taken as the jitter.
const PERCENTILE: usize = 95;

/// How much the target delay may shrink per tick, µs.
pub const SHRINK_US_PER_TICK: i64 = 500;

/// How far a timestamp may run ahead of its arrival time, or back while the sequence number
/// runs forward, before the stream counts as restarted, µs.
const TS_JUMP_US: i64 = 1_000_000;

/// How long packets of a replaced SSRC are dropped as late, µs.
const RETIRED_US: i64 = 1_000_000;

/// The longest packet time taken into account, µs.
const MAX_PTIME_US: i64 = 120_000;

/// Sequence numbers remembered for duplicate detection.
const SEEN_BITS: u64 = 128;

/// Settings of a jitter buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Smallest playout delay, ms (default 20).
    pub min_delay_ms: u32,
    /// Largest playout delay, ms (default 200).
    pub max_delay_ms: u32,
    /// Packets held at most (default 50; at most [`MAX_CAPACITY`]).
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            min_delay_ms: 20,
            max_delay_ms: 200,
            capacity: 50,
        }
    }
}

impl JitterConfig {
    /// Whether the settings make sense: `1 <= capacity <= MAX_CAPACITY`, `min <= max`, and
    /// `max` at most ten seconds.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        (1..=MAX_CAPACITY).contains(&self.capacity)
            && self.min_delay_ms <= self.max_delay_ms
            && self.max_delay_ms <= 10_000
    }
}

/// What became of a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushOutcome {
    /// Stored for playout.
    Queued,
    /// Already held or already played.
    Duplicate,
    /// Its timestamp lies before the playout point: dropped.
    Late,
    /// It started a new stream (new SSRC, clock rate or a jump); the old packets were
    /// dropped and it was stored.
    Reset,
    /// The buffer was full: dropped.
    Overflow,
    /// Not one of the leg's audio payload types: dropped.
    UnknownPayloadType,
    /// Payload larger than [`MAX_PAYLOAD`]: dropped.
    TooLarge,
}

/// Counters of a jitter buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets pushed.
    pub packets: u64,
    /// Packets whose timestamp lay before the playout point.
    pub late: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Packets that arrived after one with a higher sequence number.
    pub reordered: u64,
    /// New streams after the first.
    pub resets: u64,
    /// Packets dropped because the buffer was full.
    pub overflows: u64,
    /// Packets dropped for their size.
    pub too_large: u64,
}

/// The header fields of a packet to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// SSRC.
    pub ssrc: u32,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit (start of a talkspurt for audio, RFC 3551 §4.1).
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// RTP clock rate of the payload type, Hz.
    pub clock_rate: u32,
    /// Duration of the payload in clock ticks, 0 if unknown (then it is inferred from the
    /// timestamps of consecutive packets).
    pub duration: u32,
}

/// A buffered packet, borrowed from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffered<'a> {
    /// Extended sequence number.
    pub seq: u64,
    /// Extended timestamp (the wire value plus 2^32 per wrap).
    pub timestamp: i64,
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// Payload.
    pub payload: &'a [u8],
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    timestamp: i64,
    marker: bool,
    payload_type: u8,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    ssrc: u32,
    clock_rate: u32,
    seqs: SeqUnwrapper,
    ts_wire: u32,
    ts_high: i64,
    /// Highest extended sequence number marked in `seen`.
    seen_top: u64,
    /// Bit `i`: sequence number `seen_top - i` was pushed.
    seen: u128,
    /// Extended sequence number and timestamp of the last packet pushed.
    last: Option<(u64, i64)>,
}

impl Stream {
    fn new(info: &PacketInfo) -> Self {
        Self {
            ssrc: info.ssrc,
            clock_rate: info.clock_rate.max(1),
            seqs: SeqUnwrapper::new(),
            ts_wire: info.timestamp,
            ts_high: i64::from(info.timestamp),
            seen_top: 0,
            seen: 0,
            last: None,
        }
    }

    /// The extended value of `ts` next to the highest timestamp seen (no update).
    fn extend_ts(&self, ts: u32) -> i64 {
        // Two's-complement distance in -2^31..2^31.
        self.ts_high + i64::from(ts.wrapping_sub(self.ts_wire) as i32)
    }

    fn note_ts(&mut self, ext: i64, wire: u32) {
        if ext > self.ts_high {
            self.ts_high = ext;
            self.ts_wire = wire;
        }
    }

    fn was_seen(&self, seq: u64) -> Option<bool> {
        if self.seen == 0 || seq > self.seen_top {
            return Some(false);
        }
        let back = self.seen_top - seq;
        (back < SEEN_BITS).then(|| self.seen & (1u128 << back) != 0)
    }

    fn mark_seen(&mut self, seq: u64) {
        if self.seen == 0 {
            self.seen_top = seq;
            self.seen = 1;
        } else if seq > self.seen_top {
            let shift = seq - self.seen_top;
            self.seen = if shift >= SEEN_BITS {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.seen_top = seq;
        } else if self.seen_top - seq < SEEN_BITS {
            self.seen |= 1u128 << (self.seen_top - seq);
        }
    }
}

/// Measures transit times and derives the target delay.
#[derive(Debug)]
struct Estimator {
    ring: [i64; WINDOW],
    /// The window's transits, ascending (`sorted[..len]`): updated per packet by one
    /// removal and one insertion, so the minimum and the percentile are direct reads.
    sorted: [i64; WINDOW],
    len: usize,
    pos: usize,
    base: Option<i64>,
    raw_us: i64,
    target_us: i64,
    /// The packet time, from consecutive packets: the delay never goes below it, so that
    /// the packet after a lost one is normally buffered when the loss is played.
    ptime_us: i64,
    min_us: i64,
    max_us: i64,
}

impl Estimator {
    fn new(config: &JitterConfig) -> Self {
        let min_us = i64::from(config.min_delay_ms) * 1000;
        let max_us = (i64::from(config.max_delay_ms) * 1000).max(min_us);
        Self {
            ring: [0; WINDOW],
            sorted: [0; WINDOW],
            len: 0,
            pos: 0,
            base: None,
            raw_us: min_us,
            target_us: min_us,
            ptime_us: 0,
            min_us,
            max_us,
        }
    }

    /// Forgets the transit history (a new stream or a pause); keeps the target.
    fn clear(&mut self) {
        self.len = 0;
        self.pos = 0;
        self.base = None;
        self.ptime_us = 0;
    }

    fn record(&mut self, transit: i64) {
        if self.len == WINDOW {
            // The oldest transit leaves the window.
            let old = self.ring[self.pos];
            let sorted = &mut self.sorted[..WINDOW];
            let at = sorted.partition_point(|&v| v < old);
            sorted.copy_within(at + 1.., at);
            self.len -= 1;
        }
        self.ring[self.pos] = transit;
        self.pos = (self.pos + 1) % WINDOW;
        let sorted = &mut self.sorted[..=self.len];
        let at = sorted[..sorted.len() - 1].partition_point(|&v| v <= transit);
        sorted.copy_within(at..sorted.len() - 1, at + 1);
        sorted[at] = transit;
        self.len += 1;
        let base = self.sorted[0];
        self.base = Some(base);
        let k = (self.len * PERCENTILE).div_ceil(100).clamp(1, self.len) - 1;
        let p = self.sorted[k];
        let jitter = p
            .saturating_sub(base)
            .saturating_add(self.lookahead_us())
            .max(self.ptime_us);
        self.raw_us = jitter.clamp(self.min_us, self.max_us);
        if self.raw_us > self.target_us {
            self.target_us = self.raw_us;
        }
    }

    /// How long before its own due time a packet may be needed: a 20 ms frame needs every
    /// packet that starts inside it, so packets not aligned to frames (10 or 30 ms) are
    /// needed up to a frame minus the common step early.
    fn lookahead_us(&self) -> i64 {
        let frame = i64::from(FRAME_MS) * 1000;
        if self.ptime_us <= 0 {
            return 0;
        }
        frame - gcd(self.ptime_us, frame)
    }

    fn tick(&mut self) {
        if self.target_us > self.raw_us {
            self.target_us = (self.target_us - SHRINK_US_PER_TICK).max(self.raw_us);
        }
    }
}

/// An adaptive jitter buffer for one RTP stream; see the [module docs](self).
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Occupied slots, ordered by (timestamp, sequence number).
    order: VecDeque<u16>,
    stream: Option<Stream>,
    playout: Option<i64>,
    estimator: Estimator,
    stats: JitterStats,
    /// The SSRC of the stream a new SSRC replaced, and until when its stragglers are
    /// dropped rather than taken for another switch.
    retired: Option<(u32, i64)>,
}

impl JitterBuffer {
    /// An empty buffer. The capacity is clamped to `1..=MAX_CAPACITY` and the maximum delay
    /// to at least the minimum. Slots hold [`DEFAULT_SLOT_BYTES`] at first; see
    /// [`with_slot_bytes`](Self::with_slot_bytes).
    #[must_use]
    pub fn new(config: JitterConfig) -> Self {
        Self::with_slot_bytes(config, DEFAULT_SLOT_BYTES)
    }

    /// An empty buffer whose slots are allocated here for payloads of `slot_bytes` (clamped
    /// to `1..=MAX_PAYLOAD`; the stream's usual payload size). A slot that receives a larger
    /// payload grows once, to at most [`MAX_PAYLOAD`]; slots are reused most recent first,
    /// so a steady stream touches, and grows, only the few it keeps in use.
    #[must_use]
    pub fn with_slot_bytes(config: JitterConfig, slot_bytes: usize) -> Self {
        let slot_bytes = slot_bytes.clamp(1, MAX_PAYLOAD);
        let capacity = config.capacity.clamp(1, MAX_CAPACITY);
        let config = JitterConfig {
            capacity,
            max_delay_ms: config.max_delay_ms.max(config.min_delay_ms),
            ..config
        };
        let slots = (0..capacity)
            .map(|_| Slot {
                seq: 0,
                timestamp: 0,
                marker: false,
                payload_type: 0,
                payload: Vec::with_capacity(slot_bytes),
            })
            .collect();
        // capacity <= MAX_CAPACITY, so every index fits u16.
        let free = (0..capacity as u16).rev().collect();
        Self {
            config,
            slots,
            free,
            order: VecDeque::with_capacity(capacity),
            stream: None,
            playout: None,
            estimator: Estimator::new(&config),
            stats: JitterStats::default(),
            retired: None,
        }
    }

    /// The settings in use (after clamping).
    #[must_use]
    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &JitterStats {
        &self.stats
    }

    /// Packets held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no packet is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The RTP clock rate of the current stream, if there is one.
    #[must_use]
    pub fn clock_rate(&self) -> Option<u32> {
        self.stream.map(|s| s.clock_rate)
    }

    /// The target playout delay, ms.
    #[must_use]
    pub fn target_delay_ms(&self) -> u32 {
        u32::try_from(self.estimator.target_us / 1000).unwrap_or(u32::MAX)
    }

    /// The jitter measured over the window (clamped to the delay range), ms.
    #[must_use]
    pub fn measured_delay_ms(&self) -> u32 {
        u32::try_from(self.estimator.raw_us / 1000).unwrap_or(u32::MAX)
    }

    /// The playout point: packets before it are late.
    #[must_use]
    pub fn playout(&self) -> Option<i64> {
        self.playout
    }

    /// Sets the playout point (the extended timestamp the decoder continues from); `None`
    /// while nothing plays. Held packets are kept.
    pub fn set_playout(&mut self, timestamp: Option<i64>) {
        self.playout = timestamp;
    }

    /// The extended timestamp that should be playing at `now` by the measured timing, or
    /// `None` before the stream's first packet.
    #[must_use]
    pub fn ideal_position(&self, now: Micros) -> Option<i64> {
        let stream = self.stream?;
        let base = self.estimator.base?;
        let media_us = now_us(now)
            .saturating_sub(base)
            .saturating_sub(self.estimator.target_us);
        Some(us_to_ticks(media_us, stream.clock_rate))
    }

    /// Called once per media clock tick: lets the target delay shrink.
    pub fn tick(&mut self) {
        self.estimator.tick();
    }

    /// Forgets the timing history (after a long pause: the next packet sets a new base);
    /// keeps the stream, the packets and the target delay.
    pub fn rebase(&mut self) {
        self.estimator.clear();
        self.playout = None;
    }

    /// Drops every packet and the stream; keeps the counters and the target delay.
    pub fn clear(&mut self) {
        while let Some(i) = self.order.pop_front() {
            self.free.push(i);
        }
        self.stream = None;
        self.playout = None;
        self.estimator.clear();
    }

    /// The earliest held packet.
    #[must_use]
    pub fn peek(&self) -> Option<Buffered<'_>> {
        self.get(0)
    }

    /// The `n`-th held packet in timestamp order.
    #[must_use]
    pub fn get(&self, n: usize) -> Option<Buffered<'_>> {
        let &i = self.order.get(n)?;
        let s = self.slots.get(usize::from(i))?;
        Some(Buffered {
            seq: s.seq,
            timestamp: s.timestamp,
            marker: s.marker,
            payload_type: s.payload_type,
            payload: &s.payload,
        })
    }

    /// The highest extended timestamp held.
    #[must_use]
    pub fn newest_timestamp(&self) -> Option<i64> {
        self.get(self.order.len().checked_sub(1)?)
            .map(|p| p.timestamp)
    }

    /// Drops the earliest held packet.
    pub fn pop(&mut self) {
        if let Some(i) = self.order.pop_front() {
            self.free.push(i);
        }
    }

    /// Takes one packet that arrived at `now`.
    pub fn push(&mut self, now: Micros, info: &PacketInfo, payload: &[u8]) -> PushOutcome {
        self.stats.packets += 1;
        if payload.len() > MAX_PAYLOAD {
            self.stats.too_large += 1;
            return PushOutcome::TooLarge;
        }
        let arrival = now_us(now);
        if let Some((ssrc, until)) = self.retired {
            if arrival >= until {
                self.retired = None;
            } else if ssrc == info.ssrc && self.stream.is_some_and(|s| s.ssrc != ssrc) {
                // A straggler of the stream just replaced.
                self.stats.late += 1;
                return PushOutcome::Late;
            }
        }
        let mut reset = false;
        match &self.stream {
            None => self.start_stream(info),
            Some(s) if self.is_new_stream(s, info, arrival) => {
                if s.ssrc != info.ssrc {
                    self.retired = Some((s.ssrc, arrival.saturating_add(RETIRED_US)));
                }
                self.clear();
                self.start_stream(info);
                self.stats.resets += 1;
                reset = true;
            }
            Some(_) => {}
        }
        let Some(stream) = self.stream.as_mut() else {
            return PushOutcome::Late;
        };
        let seq = stream.seqs.extend(info.seq).0;
        let ts = stream.extend_ts(info.timestamp);
        match stream.was_seen(seq) {
            Some(false) => {}
            Some(true) => {
                self.stats.duplicates += 1;
                return PushOutcome::Duplicate;
            }
            None => {
                // Too old to tell: it cannot be played anyway.
                self.stats.late += 1;
                return PushOutcome::Late;
            }
        }
        let reordered = stream.seen != 0 && seq < stream.seen_top;
        let clock = stream.clock_rate;
        let stated = ticks_to_us(i64::from(info.duration), clock);
        if (1..=MAX_PTIME_US).contains(&stated) {
            self.estimator.ptime_us = stated;
        } else if let Some((last_seq, last_ts)) = stream.last {
            let ptime = ticks_to_us(ts.saturating_sub(last_ts), clock);
            if seq == last_seq + 1 && (1..=MAX_PTIME_US).contains(&ptime) {
                self.estimator.ptime_us = ptime;
            }
        }
        stream.last = Some((seq, ts));
        self.estimator
            .record(arrival.saturating_sub(ticks_to_us(ts, clock)));
        if let Some(p) = self.playout {
            if ts.saturating_add(i64::from(clock / 400)) < p {
                stream.mark_seen(seq);
                self.stats.late += 1;
                return PushOutcome::Late;
            }
        }
        if self.free.is_empty() {
            self.stats.overflows += 1;
            return PushOutcome::Overflow;
        }
        stream.mark_seen(seq);
        stream.note_ts(ts, info.timestamp);
        if reordered {
            self.stats.reordered += 1;
        }
        // Same timestamp and sequence number is a duplicate caught above; find the place.
        let pos = self
            .order
            .iter()
            .rposition(|&i| {
                let s = &self.slots[usize::from(i)];
                (s.timestamp, s.seq) < (ts, seq)
            })
            .map_or(0, |p| p + 1);
        let Some(slot_index) = self.free.pop() else {
            self.stats.overflows += 1;
            return PushOutcome::Overflow;
        };
        let Some(slot) = self.slots.get_mut(usize::from(slot_index)) else {
            return PushOutcome::Overflow;
        };
        slot.seq = seq;
        slot.timestamp = ts;
        slot.marker = info.marker;
        slot.payload_type = info.payload_type;
        slot.payload.clear();
        if payload.len() > slot.payload.capacity() {
            // Grows once per size class; payload.len() <= MAX_PAYLOAD (checked above).
            let want = payload.len().next_power_of_two().min(MAX_PAYLOAD);
            slot.payload.reserve_exact(want);
        }
        slot.payload.extend_from_slice(payload);
        self.order.insert(pos, slot_index);
        if reset {
            PushOutcome::Reset
        } else {
            PushOutcome::Queued
        }
    }

    fn start_stream(&mut self, info: &PacketInfo) {
        self.stream = Some(Stream::new(info));
        self.playout = None;
        self.estimator.clear();
    }

    fn is_new_stream(&self, s: &Stream, info: &PacketInfo, arrival: i64) -> bool {
        if s.ssrc != info.ssrc || s.clock_rate != info.clock_rate.max(1) {
            return true;
        }
        let Some(high) = s.seqs.highest() else {
            return false;
        };
        let delta = i64::from(info.seq.wrapping_sub(high.wire()) as i16);
        if !(-SEQ_JUMP..=SEQ_JUMP).contains(&delta) {
            return true;
        }
        if delta <= 0 {
            // An older packet: late, duplicate or reordered, never a new stream.
            return false;
        }
        let ts = s.extend_ts(info.timestamp);
        let clock = s.clock_rate;
        // Sequence forward, timestamp far backward: the sender restarted its clock.
        if ticks_to_us(s.ts_high.saturating_sub(ts), clock) > TS_JUMP_US {
            return true;
        }
        // Far earlier than the fastest recent packet allows: the timestamp jumped forward.
        if let Some(base) = self.estimator.base {
            let transit = arrival.saturating_sub(ticks_to_us(ts, clock));
            if base.saturating_sub(transit) > TS_JUMP_US {
                return true;
            }
        }
        false
    }
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

fn now_us(now: Micros) -> i64 {
    i64::try_from(now.0).unwrap_or(i64::MAX)
}

/// Ticks at `clock` Hz to µs.
fn ticks_to_us(ticks: i64, clock: u32) -> i64 {
    // 64-bit arithmetic when the product fits (always, for real timestamps).
    if let Some(p) = ticks.checked_mul(1_000_000) {
        return p / i64::from(clock.max(1));
    }
    let v = i128::from(ticks) * 1_000_000 / i128::from(clock.max(1));
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// µs to ticks at `clock` Hz (rounded towards minus infinity).
fn us_to_ticks(us: i64, clock: u32) -> i64 {
    if let Some(p) = us.checked_mul(i64::from(clock)) {
        return p.div_euclid(1_000_000);
    }
    let v = (i128::from(us) * i128::from(clock)).div_euclid(1_000_000);
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(seq: u16, ts: u32) -> PacketInfo {
        PacketInfo {
            ssrc: 1,
            seq,
            timestamp: ts,
            marker: false,
            payload_type: 0,
            clock_rate: 8000,
            duration: 0,
        }
    }

    #[test]
    fn orders_and_dedupes() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t = Micros::from_millis(1000);
        assert_eq!(jb.push(t, &info(2, 320), &[2]), PushOutcome::Queued);
        assert_eq!(jb.push(t, &info(1, 160), &[1]), PushOutcome::Queued);
        assert_eq!(jb.push(t, &info(1, 160), &[1]), PushOutcome::Duplicate);
        assert_eq!(jb.push(t, &info(3, 480), &[3]), PushOutcome::Queued);
        let order: Vec<u8> = (0..jb.len())
            .map(|i| jb.get(i).unwrap().payload[0])
            .collect();
        assert_eq!(order, [1, 2, 3]);
        assert_eq!(jb.stats().reordered, 1);
        assert_eq!(jb.stats().duplicates, 1);
    }

    #[test]
    fn wraps_timestamps_and_sequence_numbers() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t = Micros::from_millis(1000);
        let ts0 = u32::MAX - 100;
        assert_eq!(jb.push(t, &info(65535, ts0), &[0]), PushOutcome::Queued);
        assert_eq!(
            jb.push(t, &info(0, ts0.wrapping_add(160)), &[1]),
            PushOutcome::Queued
        );
        let a = jb.get(0).unwrap();
        let b = jb.get(1).unwrap();
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.timestamp, a.timestamp + 160);
    }

    #[test]
    fn target_grows_at_once_and_shrinks_slowly() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for i in 0..20u16 {
            let now = Micros::from_millis(1000 + 20 * u64::from(i));
            jb.push(now, &info(i, 160 * u32::from(i)), &[0]);
        }
        assert_eq!(jb.target_delay_ms(), 20);
        // A burst of packets up to 120 ms late lifts the 95th percentile at once.
        for i in 20..25u16 {
            let late = if i < 23 {
                120 - 20 * u64::from(i - 20)
            } else {
                0
            };
            let now = Micros::from_millis(1000 + 20 * u64::from(i) + late);
            jb.push(now, &info(i, 160 * u32::from(i)), &[0]);
        }
        assert!(jb.target_delay_ms() >= 100, "{}", jb.target_delay_ms());
        let high = jb.target_delay_ms();
        jb.tick();
        assert!(jb.target_delay_ms() >= high.saturating_sub(1));
    }

    #[test]
    fn bounded() {
        let cfg = JitterConfig {
            capacity: 4,
            ..JitterConfig::default()
        };
        let mut jb = JitterBuffer::new(cfg);
        let t = Micros::from_millis(5);
        for i in 0..4u16 {
            assert_eq!(
                jb.push(t, &info(i, 160 * u32::from(i)), &[0]),
                PushOutcome::Queued
            );
        }
        assert_eq!(jb.push(t, &info(4, 640), &[0]), PushOutcome::Overflow);
        assert_eq!(jb.push(t, &info(5, 800), &[0; 1501]), PushOutcome::TooLarge);
        assert_eq!(jb.len(), 4);
    }
}
