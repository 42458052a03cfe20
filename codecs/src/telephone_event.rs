//! RFC 4733 telephone-events: the 4-byte payload, a sans-IO sender and a sans-IO receiver.
//!
//! # Payload (RFC 4733 §2.3)
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     event     |E|R| volume    |          duration             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! [`TelephoneEvent::parse`] reads exactly one 4-byte block. A payload may pack several
//! consecutive events (RFC 4733 §2.5.1.5): every block but the last has the E bit set, the
//! packet's RTP timestamp is the start of the first event, and each later event starts where
//! the previous one ended (its start is the packet timestamp plus the durations of the blocks
//! before it). [`parse_packed`] walks such a payload and yields each event with that offset.
//! The R bit is ignored on receipt and written as zero (§2.3.3).
//!
//! Event codes for DTMF (RFC 4733 §3.2, Table 7): 0–9 are the digits, 10 is `*`, 11 is `#`,
//! 12–15 are `A`–`D`. Code 16 is hook flash, assigned by RFC 2833 §3.10 and still used by
//! most gateways; [`event_from_char`] maps it from `'!'`.
//!
//! # Sending: [`DtmfSender`]
//!
//! Drive contract: call [`DtmfSender::start`] with the event, its total duration and volume,
//! then drain [`DtmfSender::poll_packet`] (or [`DtmfSender::poll_due`] with the elapsed time)
//! until it returns `None`. Each [`EventPacket`] says when it is due (`send_offset`, in
//! timestamp units after the event start) and which RTP timestamp to stamp on it
//! (`timestamp_offset`, added to the timestamp the caller chose for the event start). The
//! sender follows RFC 4733 §2.5.1.2 (marker on the first packet, one timestamp for the event,
//! cumulative durations), §2.5.1.3 (events longer than 0xFFFF units are cut into segments,
//! each with its own timestamp) and §2.5.1.4 (the final packet of each segment is sent three
//! times). It does no I/O and reads no clock.
//!
//! # Receiving: [`DtmfReceiver`]
//!
//! Drive contract: feed each received packet with [`DtmfReceiver::handle_payload`] (or an
//! already parsed block with [`DtmfReceiver::handle_event`]), call
//! [`DtmfReceiver::handle_timeout`] when the instant from [`DtmfReceiver::poll_timeout`] is
//! reached, and drain [`DtmfReceiver::poll_event`] after each call. The receiver reports
//! each event once as [`DigitEvent::Begin`] and once as [`DigitEvent::End`]: it drops the
//! retransmitted end packets, starts an event on whichever of its packets arrives first (the
//! marked one may be lost), and ends an event whose end packets were all lost when the next
//! event starts or when no packet arrived for [`DtmfReceiverConfig::end_timeout`]
//! (RFC 4733 §2.5.2).

use std::time::{Duration, Instant};

/// Length in bytes of one event block (RFC 4733 §2.3).
pub const EVENT_LEN: usize = 4;

/// Largest volume value: the field is 6 bits, power in -dBm0 (RFC 4733 §2.3.4).
pub const MAX_VOLUME: u8 = 63;

/// Event code of hook flash (RFC 2833 §3.10).
pub const EVENT_FLASH: u8 = 16;

/// Largest duration of one segment (RFC 4733 §2.5.1.3).
pub const MAX_SEGMENT_DURATION: u32 = 0xFFFF;

/// Times the final packet of an event or segment is sent (RFC 4733 §2.5.1.4).
pub const END_PACKET_COPIES: u8 = 3;

/// Largest packet interval accepted by [`DtmfSender::new`], in timestamp units.
pub const MAX_PACKET_TIME: u32 = 0x3FFF;

/// Errors from parsing, writing and sending telephone-events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TelephoneEventError {
    /// The payload is not a whole, non-zero number of 4-byte blocks.
    #[error("telephone-event payload of {len} bytes; expected {expected}")]
    Length {
        /// Bytes received.
        len: usize,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// The output buffer is shorter than one block.
    #[error("output buffer of {len} bytes is shorter than {EVENT_LEN}")]
    BufferTooSmall {
        /// Bytes available.
        len: usize,
    },
    /// The volume does not fit the 6-bit field.
    #[error("volume {volume} exceeds {MAX_VOLUME}")]
    VolumeOutOfRange {
        /// The rejected volume.
        volume: u8,
    },
    /// The packet interval is zero or larger than [`MAX_PACKET_TIME`].
    #[error("packet time {packet_time} is outside 1..={MAX_PACKET_TIME}")]
    InvalidPacketTime {
        /// The rejected interval, in timestamp units.
        packet_time: u32,
    },
    /// An event of zero duration was requested.
    #[error("event duration must be positive")]
    ZeroDuration,
    /// The character is not a DTMF digit or `'!'` (flash).
    #[error("{digit:?} is not a DTMF digit")]
    NotADigit {
        /// The rejected character.
        digit: char,
    },
    /// [`DtmfSender::start`] was called while packets of the previous event remain.
    #[error("the previous event has not been fully sent")]
    Busy,
}

/// One telephone-event block (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TelephoneEvent {
    /// Event code (RFC 4733 §2.3.1); DTMF digits are 0–15.
    pub event: u8,
    /// The E bit: this packet ends the event (RFC 4733 §2.3.2).
    pub end: bool,
    /// Power level in -dBm0, 0..=63 (RFC 4733 §2.3.4).
    pub volume: u8,
    /// Duration so far, in timestamp units (RFC 4733 §2.3.5).
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses exactly one 4-byte block. A payload packing several events is rejected here;
    /// use [`parse_packed`] for those (RFC 4733 §2.5.1.5).
    pub fn parse(payload: &[u8]) -> Result<Self, TelephoneEventError> {
        match payload {
            &[event, flags, d0, d1] => Ok(Self::from_block([event, flags, d0, d1])),
            _ => Err(TelephoneEventError::Length {
                len: payload.len(),
                expected: "exactly 4",
            }),
        }
    }

    fn from_block(b: [u8; EVENT_LEN]) -> Self {
        Self {
            event: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3F,
            duration: u16::from_be_bytes([b[2], b[3]]),
        }
    }

    /// Writes the block into the start of `out` and returns the bytes written (always 4).
    pub fn write(&self, out: &mut [u8]) -> Result<usize, TelephoneEventError> {
        let block = self.to_bytes()?;
        let len = out.len();
        let dst = out
            .get_mut(..EVENT_LEN)
            .ok_or(TelephoneEventError::BufferTooSmall { len })?;
        dst.copy_from_slice(&block);
        Ok(EVENT_LEN)
    }

    /// The block as bytes, with the R bit clear.
    pub fn to_bytes(&self) -> Result<[u8; EVENT_LEN], TelephoneEventError> {
        if self.volume > MAX_VOLUME {
            return Err(TelephoneEventError::VolumeOutOfRange {
                volume: self.volume,
            });
        }
        let [d0, d1] = self.duration.to_be_bytes();
        Ok([self.event, (u8::from(self.end) << 7) | self.volume, d0, d1])
    }
}

/// Parses a payload of one or more 4-byte blocks (RFC 4733 §2.5.1.5).
///
/// The returned iterator yields each event with its start offset from the packet's RTP
/// timestamp: the sum of the durations of the blocks before it.
pub fn parse_packed(payload: &[u8]) -> Result<PackedEvents<'_>, TelephoneEventError> {
    if payload.is_empty() || payload.len() % EVENT_LEN != 0 {
        return Err(TelephoneEventError::Length {
            len: payload.len(),
            expected: "a non-zero multiple of 4",
        });
    }
    Ok(PackedEvents {
        blocks: payload.chunks_exact(EVENT_LEN),
        offset: 0,
    })
}

/// Iterator over the events of a packed payload; see [`parse_packed`].
#[derive(Debug, Clone)]
pub struct PackedEvents<'a> {
    blocks: std::slice::ChunksExact<'a, u8>,
    offset: u32,
}

impl Iterator for PackedEvents<'_> {
    /// (start offset in timestamp units, event)
    type Item = (u32, TelephoneEvent);

    fn next(&mut self) -> Option<Self::Item> {
        let block = self.blocks.next()?;
        let event = match block {
            &[a, b, c, d] => TelephoneEvent::from_block([a, b, c, d]),
            _ => return None,
        };
        let start = self.offset;
        self.offset = self.offset.wrapping_add(u32::from(event.duration));
        Some((start, event))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.blocks.size_hint()
    }
}

/// Event code for a DTMF character: `0`–`9`, `*`, `#`, `A`–`D` (either case) and `!` for
/// flash (RFC 4733 §3.2; RFC 2833 §3.10 for flash).
pub fn event_from_char(digit: char) -> Option<u8> {
    Some(match digit {
        '0'..='9' => digit as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => digit as u8 - b'A' + 12,
        'a'..='d' => digit as u8 - b'a' + 12,
        '!' => EVENT_FLASH,
        _ => return None,
    })
}

/// DTMF character for an event code, the inverse of [`event_from_char`] (upper case).
pub fn char_from_event(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => char::from(b'0' + event),
        10 => '*',
        11 => '#',
        12..=15 => char::from(b'A' + event - 12),
        EVENT_FLASH => '!',
        _ => return None,
    })
}

/// One packet to send, produced by [`DtmfSender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// The event block carried.
    pub event: TelephoneEvent,
    /// The payload bytes of `event`.
    pub payload: [u8; EVENT_LEN],
    /// Whether to set the RTP marker bit (first packet of the event, RFC 4733 §2.5.1.2).
    pub marker: bool,
    /// Add to the event's start RTP timestamp to get this packet's timestamp; non-zero only
    /// for later segments of a long event (RFC 4733 §2.5.1.3).
    pub timestamp_offset: u32,
    /// When the packet is due, in timestamp units after the event start.
    pub send_offset: u32,
}

/// Where the sender is in its current segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Next is an update packet reporting this duration.
    Update(u32),
    /// Next is the first copy of the segment's final packet.
    Final,
}

/// Pending copies of the previous segment's final packet, interleaved with the new segment.
#[derive(Debug, Clone, Copy)]
struct Retransmit {
    packet: EventPacket,
    remaining: u8,
}

#[derive(Debug, Clone, Copy)]
struct Sending {
    event: u8,
    volume: u8,
    total: u32,
    /// Start of the current segment, in timestamp units from the event start.
    segment_start: u32,
    stage: Stage,
    marker_pending: bool,
}

/// Sans-IO RFC 4733 sender for one event at a time; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct DtmfSender {
    packet_time: u32,
    sending: Option<Sending>,
    retransmit: Option<Retransmit>,
}

impl DtmfSender {
    /// A sender that updates every `packet_time` timestamp units (e.g. 160 for 20 ms at
    /// 8 kHz), within `1..=`[`MAX_PACKET_TIME`].
    pub fn new(packet_time: u32) -> Result<Self, TelephoneEventError> {
        if packet_time == 0 || packet_time > MAX_PACKET_TIME {
            return Err(TelephoneEventError::InvalidPacketTime { packet_time });
        }
        Ok(Self {
            packet_time,
            sending: None,
            retransmit: None,
        })
    }

    /// The packet interval, in timestamp units.
    pub fn packet_time(&self) -> u32 {
        self.packet_time
    }

    /// Whether every packet of the last event has been drained.
    pub fn is_idle(&self) -> bool {
        self.sending.is_none() && self.retransmit.is_none()
    }

    /// Starts an event of `duration` timestamp units at `volume` (-dBm0). Durations above
    /// 0xFFFF are split into segments (RFC 4733 §2.5.1.3).
    pub fn start(
        &mut self,
        event: u8,
        duration: u32,
        volume: u8,
    ) -> Result<(), TelephoneEventError> {
        if !self.is_idle() {
            return Err(TelephoneEventError::Busy);
        }
        if duration == 0 {
            return Err(TelephoneEventError::ZeroDuration);
        }
        if volume > MAX_VOLUME {
            return Err(TelephoneEventError::VolumeOutOfRange { volume });
        }
        let mut sending = Sending {
            event,
            volume,
            total: duration,
            segment_start: 0,
            stage: Stage::Update(0),
            marker_pending: true,
        };
        sending.stage = first_stage(self.packet_time, sending.segment_len());
        self.sending = Some(sending);
        Ok(())
    }

    /// [`start`](Self::start) for a DTMF character (see [`event_from_char`]).
    pub fn start_digit(
        &mut self,
        digit: char,
        duration: u32,
        volume: u8,
    ) -> Result<(), TelephoneEventError> {
        let event = event_from_char(digit).ok_or(TelephoneEventError::NotADigit { digit })?;
        self.start(event, duration, volume)
    }

    /// The next packet, in send order (non-decreasing `send_offset`), or `None` when the
    /// event is complete.
    #[must_use]
    pub fn poll_packet(&mut self) -> Option<EventPacket> {
        let current = self.sending.map(|s| self.build(&s));
        let use_retransmit = match (&self.retransmit, &current) {
            (Some(r), Some(c)) => r.packet.send_offset <= c.send_offset,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if use_retransmit {
            let r = self.retransmit.as_mut()?;
            let packet = r.packet;
            r.remaining -= 1;
            r.packet.send_offset = r.packet.send_offset.saturating_add(self.packet_time);
            if r.remaining == 0 {
                self.retransmit = None;
            }
            return Some(packet);
        }
        let packet = current?;
        self.advance(packet);
        Some(packet)
    }

    /// Like [`poll_packet`](Self::poll_packet) but only returns a packet whose `send_offset`
    /// is at most `elapsed` (timestamp units since the event start).
    #[must_use]
    pub fn poll_due(&mut self, elapsed: u32) -> Option<EventPacket> {
        if self.next_send_offset()? <= elapsed {
            self.poll_packet()
        } else {
            None
        }
    }

    /// When the next packet is due, in timestamp units after the event start.
    pub fn next_send_offset(&self) -> Option<u32> {
        let current = self.sending.map(|s| self.build(&s).send_offset);
        let retransmit = self.retransmit.map(|r| r.packet.send_offset);
        match (retransmit, current) {
            (Some(r), Some(c)) => Some(r.min(c)),
            (r, c) => r.or(c),
        }
    }

    fn build(&self, s: &Sending) -> EventPacket {
        let segment_len = s.segment_len();
        let is_last = s.segment_start.saturating_add(segment_len) >= s.total;
        let (duration, end, send_offset) = match s.stage {
            Stage::Update(d) => (d, false, s.segment_start.saturating_add(d)),
            // Only copy 0 of the final packet comes from here; later copies are queued.
            Stage::Final => (
                segment_len,
                is_last,
                s.segment_start.saturating_add(segment_len),
            ),
        };
        let event = TelephoneEvent {
            event: s.event,
            end,
            volume: s.volume,
            // segment_len <= 0xFFFF by construction, so this never saturates.
            duration: u16::try_from(duration).unwrap_or(u16::MAX),
        };
        EventPacket {
            event,
            payload: block_bytes(&event),
            marker: s.marker_pending,
            timestamp_offset: s.segment_start,
            send_offset,
        }
    }

    fn advance(&mut self, sent: EventPacket) {
        let packet_time = self.packet_time;
        let Some(s) = self.sending.as_mut() else {
            return;
        };
        s.marker_pending = false;
        let segment_len = s.segment_len();
        match s.stage {
            Stage::Update(d) => {
                let next = d.saturating_add(packet_time);
                s.stage = if next < segment_len {
                    Stage::Update(next)
                } else {
                    Stage::Final
                };
            }
            Stage::Final => {
                let mut copy = sent;
                copy.marker = false;
                copy.send_offset = copy.send_offset.saturating_add(packet_time);
                self.retransmit = Some(Retransmit {
                    packet: copy,
                    remaining: END_PACKET_COPIES - 1,
                });
                let next_start = s.segment_start.saturating_add(segment_len);
                if next_start >= s.total {
                    self.sending = None;
                } else {
                    s.segment_start = next_start;
                    s.stage = first_stage(packet_time, s.segment_len());
                }
            }
        }
    }
}

impl Sending {
    fn segment_len(&self) -> u32 {
        (self.total - self.segment_start).min(MAX_SEGMENT_DURATION)
    }
}

fn first_stage(packet_time: u32, segment_len: u32) -> Stage {
    if packet_time < segment_len {
        Stage::Update(packet_time)
    } else {
        Stage::Final
    }
}

fn block_bytes(e: &TelephoneEvent) -> [u8; EVENT_LEN] {
    let [d0, d1] = e.duration.to_be_bytes();
    [e.event, (u8::from(e.end) << 7) | (e.volume & 0x3F), d0, d1]
}

/// Why the receiver ended an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// A packet with the E bit arrived.
    EndBit,
    /// A packet of a later event arrived before any end packet.
    NextEvent,
    /// No packet arrived for [`DtmfReceiverConfig::end_timeout`].
    Timeout,
}

/// What the receiver reports, each at most once per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigitEvent {
    /// An event started.
    Begin {
        /// Event code (see [`char_from_event`]).
        event: u8,
        /// RTP timestamp of the event start.
        timestamp: u32,
    },
    /// An event ended.
    End {
        /// Event code.
        event: u8,
        /// RTP timestamp of the event start.
        timestamp: u32,
        /// Total duration in timestamp units, across segments; for ends not signalled by the
        /// E bit, the longest duration received.
        duration: u32,
        /// Why the event was ended.
        reason: EndReason,
    },
}

/// Settings for [`DtmfReceiver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfReceiverConfig {
    /// An active event with no packet for this long is ended with [`EndReason::Timeout`].
    pub end_timeout: Duration,
}

impl Default for DtmfReceiverConfig {
    fn default() -> Self {
        Self {
            end_timeout: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Active {
    event: u8,
    /// RTP timestamp of the event start.
    timestamp: u32,
    /// RTP timestamp of the current segment.
    segment_ts: u32,
    /// Duration of the completed segments.
    completed: u32,
    /// Longest duration seen in the current segment.
    segment_duration: u32,
    last_packet: Instant,
}

impl Active {
    fn duration(&self) -> u32 {
        self.completed.saturating_add(self.segment_duration)
    }
}

const QUEUE_LEN: usize = 32;

/// Sans-IO RFC 4733 receiver; see the [module docs](self) for the drive contract.
#[derive(Debug, Clone)]
pub struct DtmfReceiver {
    config: DtmfReceiverConfig,
    active: Option<Active>,
    /// (timestamp, event) of the last ended event, to drop its retransmissions.
    ended: Option<(u32, u8)>,
    /// Timestamp of the latest event or segment seen, to drop late packets.
    latest_ts: Option<u32>,
    highest_seq: Option<u16>,
    queue: [Option<DigitEvent>; QUEUE_LEN],
    head: usize,
    len: usize,
    overflowed: u64,
}

impl Default for DtmfReceiver {
    fn default() -> Self {
        Self::new(DtmfReceiverConfig::default())
    }
}

impl DtmfReceiver {
    /// A receiver with the given settings.
    pub fn new(config: DtmfReceiverConfig) -> Self {
        Self {
            config,
            active: None,
            ended: None,
            latest_ts: None,
            highest_seq: None,
            queue: [None; QUEUE_LEN],
            head: 0,
            len: 0,
            overflowed: 0,
        }
    }

    /// Handles one received telephone-event payload, possibly packing several events
    /// (RFC 4733 §2.5.1.5). `seq` and `timestamp` are from its RTP header.
    pub fn handle_payload(
        &mut self,
        now: Instant,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<(), TelephoneEventError> {
        let events = parse_packed(payload)?;
        let late = self.note_seq(seq);
        for (offset, event) in events {
            self.handle_block(now, late, timestamp.wrapping_add(offset), event);
        }
        Ok(())
    }

    /// Handles one event block received in a packet with RTP `seq` and `timestamp`.
    pub fn handle_event(&mut self, now: Instant, seq: u16, timestamp: u32, event: TelephoneEvent) {
        let late = self.note_seq(seq);
        self.handle_block(now, late, timestamp, event);
    }

    /// Ends the active event if no packet arrived for the configured timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(a) = self.active {
            if now.saturating_duration_since(a.last_packet) >= self.config.end_timeout {
                self.finish(EndReason::Timeout);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called, if an event is
    /// active.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active
            .and_then(|a| a.last_packet.checked_add(self.config.end_timeout))
    }

    /// The next event to report, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<DigitEvent> {
        if self.len == 0 {
            return None;
        }
        let event = self.queue[self.head].take();
        self.head = (self.head + 1) % QUEUE_LEN;
        self.len -= 1;
        event
    }

    /// Whether an event is in progress.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Events dropped because more than 32 were queued without being drained.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Records `seq`; returns whether the packet is older than the newest seen.
    fn note_seq(&mut self, seq: u16) -> bool {
        match self.highest_seq {
            Some(h) if (seq.wrapping_sub(h) as i16) < 0 => true,
            _ => {
                self.highest_seq = Some(seq);
                false
            }
        }
    }

    fn handle_block(&mut self, now: Instant, late: bool, ts: u32, ev: TelephoneEvent) {
        if self.ended == Some((ts, ev.event)) {
            return; // retransmitted end packet (§2.5.1.4) or a late packet of an ended event
        }
        if let Some(a) = self.active.as_mut() {
            if ev.event == a.event {
                if ts == a.segment_ts {
                    a.segment_duration = a.segment_duration.max(u32::from(ev.duration));
                    a.last_packet = now;
                    if ev.end {
                        self.finish(EndReason::EndBit);
                    }
                    return;
                }
                if ts == a.segment_ts.wrapping_add(MAX_SEGMENT_DURATION) {
                    // Next segment of a long event (§2.5.1.3).
                    a.completed = a.completed.saturating_add(MAX_SEGMENT_DURATION);
                    a.segment_ts = ts;
                    a.segment_duration = u32::from(ev.duration);
                    a.last_packet = now;
                    self.latest_ts = Some(ts);
                    if ev.end {
                        self.finish(EndReason::EndBit);
                    }
                    return;
                }
                if is_before(ts, a.segment_ts) {
                    return; // late packet of an earlier segment of this event
                }
            }
        }
        if late {
            return;
        }
        if let Some(latest) = self.latest_ts {
            if !is_before(latest, ts) {
                return; // not newer than the current or last event
            }
        }
        if self.active.is_some() {
            self.finish(EndReason::NextEvent);
        }
        self.latest_ts = Some(ts);
        self.active = Some(Active {
            event: ev.event,
            timestamp: ts,
            segment_ts: ts,
            completed: 0,
            segment_duration: u32::from(ev.duration),
            last_packet: now,
        });
        self.push(DigitEvent::Begin {
            event: ev.event,
            timestamp: ts,
        });
        if ev.end {
            self.finish(EndReason::EndBit);
        }
    }

    fn finish(&mut self, reason: EndReason) {
        if let Some(a) = self.active.take() {
            self.ended = Some((a.segment_ts, a.event));
            self.push(DigitEvent::End {
                event: a.event,
                timestamp: a.timestamp,
                duration: a.duration(),
                reason,
            });
        }
    }

    fn push(&mut self, event: DigitEvent) {
        if self.len == QUEUE_LEN {
            self.overflowed += 1;
            return;
        }
        self.queue[(self.head + self.len) % QUEUE_LEN] = Some(event);
        self.len += 1;
    }
}

/// Whether RTP timestamp `a` is strictly before `b` (RFC 3550 §5.1 modular arithmetic).
fn is_before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telephone_event_parse_and_write_round_trip() {
        let bytes = [5u8, 0x80 | 10, 0x03, 0x20];
        let e = TelephoneEvent::parse(&bytes).unwrap();
        assert_eq!(
            e,
            TelephoneEvent {
                event: 5,
                end: true,
                volume: 10,
                duration: 800
            }
        );
        let mut out = [0u8; 6];
        assert_eq!(e.write(&mut out).unwrap(), 4);
        assert_eq!(&out[..4], &bytes);
    }

    #[test]
    fn telephone_event_r_bit_ignored_and_cleared() {
        let e = TelephoneEvent::parse(&[1, 0x40 | 0x3F, 0, 160]).unwrap();
        assert!(!e.end);
        assert_eq!(e.volume, 63);
        assert_eq!(e.to_bytes().unwrap(), [1, 0x3F, 0, 160]);
    }

    #[test]
    fn telephone_event_rejects_bad_lengths_and_values() {
        for len in [0usize, 1, 3, 5, 8] {
            let buf = [0u8; 8];
            assert!(matches!(
                TelephoneEvent::parse(&buf[..len]),
                Err(TelephoneEventError::Length { len: l, .. }) if l == len
            ));
        }
        let e = TelephoneEvent {
            event: 1,
            end: false,
            volume: 64,
            duration: 0,
        };
        assert_eq!(
            e.write(&mut [0u8; 4]),
            Err(TelephoneEventError::VolumeOutOfRange { volume: 64 })
        );
        let ok = TelephoneEvent { volume: 0, ..e };
        assert_eq!(
            ok.write(&mut [0u8; 3]),
            Err(TelephoneEventError::BufferTooSmall { len: 3 })
        );
    }

    #[test]
    fn telephone_event_parse_packed_offsets() {
        // '1' for 400 units, then '2' for 400, then '3' still running at 160.
        let payload = [
            1, 0x8A, 0x01, 0x90, 2, 0x8A, 0x01, 0x90, 3, 0x0A, 0x00, 0xA0,
        ];
        let got: Vec<_> = parse_packed(&payload).unwrap().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, 0);
        assert_eq!(got[1].0, 400);
        assert_eq!(got[2].0, 800);
        assert_eq!(got[2].1.event, 3);
        assert!(!got[2].1.end);
        assert!(parse_packed(&payload[..7]).is_err());
        assert!(parse_packed(&[]).is_err());
    }

    #[test]
    fn telephone_event_digit_mapping() {
        let digits = "0123456789*#ABCD!";
        for (code, c) in digits.chars().enumerate() {
            assert_eq!(event_from_char(c), Some(code as u8));
            assert_eq!(char_from_event(code as u8), Some(c));
        }
        assert_eq!(event_from_char('b'), Some(13));
        assert_eq!(event_from_char('E'), None);
        assert_eq!(char_from_event(17), None);
    }

    fn drain(sender: &mut DtmfSender) -> Vec<EventPacket> {
        std::iter::from_fn(|| sender.poll_packet()).collect()
    }

    #[test]
    fn telephone_event_sender_short_event() {
        let mut s = DtmfSender::new(160).unwrap();
        s.start_digit('5', 800, 10).unwrap();
        let p = drain(&mut s);
        let durations: Vec<u16> = p.iter().map(|p| p.event.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        let sends: Vec<u32> = p.iter().map(|p| p.send_offset).collect();
        assert_eq!(sends, [160, 320, 480, 640, 800, 960, 1120]);
        assert!(p[0].marker);
        assert!(p[1..].iter().all(|p| !p.marker));
        assert!(
            p.iter()
                .all(|p| p.timestamp_offset == 0 && p.event.event == 5)
        );
        assert!(p[..4].iter().all(|p| !p.event.end));
        assert!(
            p[4..]
                .iter()
                .all(|q| q.event.end && q.payload == p[4].payload)
        );
        assert!(
            p.iter()
                .all(|p| TelephoneEvent::parse(&p.payload).unwrap() == p.event)
        );
        assert!(s.is_idle());
    }

    #[test]
    fn telephone_event_sender_event_shorter_than_packet_time() {
        let mut s = DtmfSender::new(160).unwrap();
        s.start(1, 100, 0).unwrap();
        let p = drain(&mut s);
        assert_eq!(p.len(), 3);
        assert!(p[0].marker && !p[1].marker);
        assert!(p.iter().all(|p| p.event.end && p.event.duration == 100));
    }

    #[test]
    fn telephone_event_sender_busy_and_errors() {
        assert!(DtmfSender::new(0).is_err());
        assert!(DtmfSender::new(MAX_PACKET_TIME + 1).is_err());
        let mut s = DtmfSender::new(160).unwrap();
        assert_eq!(s.start(1, 0, 0), Err(TelephoneEventError::ZeroDuration));
        assert!(s.start(1, 10, 64).is_err());
        assert!(s.start_digit('x', 10, 1).is_err());
        s.start(1, 320, 0).unwrap();
        assert_eq!(s.start(2, 320, 0), Err(TelephoneEventError::Busy));
        assert!(s.poll_due(159).is_none());
        assert_eq!(s.poll_due(160).map(|p| p.event.duration), Some(160));
        let rest = drain(&mut s);
        assert_eq!(rest.len(), 3);
        s.start(2, 320, 0).unwrap();
    }

    #[test]
    fn telephone_event_sender_long_event_segments() {
        let ptime = 160;
        let total = 2 * MAX_SEGMENT_DURATION + 1000;
        let mut s = DtmfSender::new(ptime).unwrap();
        s.start(9, total, 5).unwrap();
        let p = drain(&mut s);
        // Non-decreasing send order.
        assert!(p.windows(2).all(|w| w[0].send_offset <= w[1].send_offset));
        assert_eq!(p.iter().filter(|p| p.marker).count(), 1);
        assert!(p[0].marker);
        // Three segments, by timestamp.
        for (i, base) in [0, MAX_SEGMENT_DURATION, 2 * MAX_SEGMENT_DURATION]
            .iter()
            .enumerate()
        {
            let seg: Vec<_> = p.iter().filter(|p| p.timestamp_offset == *base).collect();
            let len = if i < 2 { 0xFFFF } else { 1000 };
            let finals: Vec<_> = seg
                .iter()
                .filter(|p| u32::from(p.event.duration) == len)
                .collect();
            assert_eq!(finals.len(), 3, "segment {i}");
            assert!(finals.iter().all(|f| f.event.end == (i == 2)));
            // Durations grow within the segment and never exceed 0xFFFF.
            assert!(
                seg.windows(2)
                    .all(|w| w[0].event.duration <= w[1].event.duration)
            );
            assert_eq!(finals[0].send_offset, base + len);
            assert_eq!(finals[2].send_offset, base + len + 2 * ptime);
        }
        assert_eq!(p.iter().filter(|p| p.event.end).count(), 3);
        assert_eq!(p.last().map(|p| p.event.end), Some(true));
    }

    fn collect(r: &mut DtmfReceiver) -> Vec<DigitEvent> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    /// Sends `packets` through a receiver, each at its send time, with `drop` deciding loss.
    fn feed(
        r: &mut DtmfReceiver,
        t0: Instant,
        start_ts: u32,
        seq: &mut u16,
        packets: &[EventPacket],
        drop: impl Fn(usize) -> bool,
    ) -> Vec<DigitEvent> {
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            let now = t0 + Duration::from_micros(u64::from(p.send_offset) * 125);
            *seq = seq.wrapping_add(1);
            if drop(i) {
                continue;
            }
            r.handle_payload(
                now,
                *seq,
                start_ts.wrapping_add(p.timestamp_offset),
                &p.payload,
            )
            .unwrap();
            out.extend(collect(r));
        }
        out
    }

    fn packets(event: u8, duration: u32) -> Vec<EventPacket> {
        let mut s = DtmfSender::new(160).unwrap();
        s.start(event, duration, 10).unwrap();
        drain(&mut s)
    }

    #[test]
    fn telephone_event_receiver_dedups_end_retransmissions() {
        let mut r = DtmfReceiver::default();
        let t0 = Instant::now();
        let mut seq = 100;
        let got = feed(&mut r, t0, 1000, &mut seq, &packets(3, 800), |_| false);
        assert_eq!(
            got,
            [
                DigitEvent::Begin {
                    event: 3,
                    timestamp: 1000
                },
                DigitEvent::End {
                    event: 3,
                    timestamp: 1000,
                    duration: 800,
                    reason: EndReason::EndBit
                }
            ]
        );
        assert!(!r.is_active());
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn telephone_event_receiver_lost_start_packets() {
        let mut r = DtmfReceiver::default();
        let t0 = Instant::now();
        let mut seq = 0;
        let got = feed(&mut r, t0, 0, &mut seq, &packets(7, 800), |i| i < 2);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            DigitEvent::Begin {
                event: 7,
                timestamp: 0
            }
        );
        assert!(matches!(got[1], DigitEvent::End { duration: 800, .. }));
    }

    #[test]
    fn telephone_event_receiver_lost_end_then_next_event() {
        let mut r = DtmfReceiver::default();
        let t0 = Instant::now();
        let mut seq = 65530; // wraps during the test
        let first = packets(1, 800);
        let got = feed(&mut r, t0, u32::MAX - 500, &mut seq, &first, |i| i >= 4);
        assert_eq!(got.len(), 1);
        assert!(r.is_active());
        let ts2 = (u32::MAX - 500).wrapping_add(1600);
        let t1 = t0 + Duration::from_millis(200);
        let got = feed(&mut r, t1, ts2, &mut seq, &packets(2, 480), |_| false);
        assert_eq!(
            got,
            [
                DigitEvent::End {
                    event: 1,
                    timestamp: u32::MAX - 500,
                    duration: 640,
                    reason: EndReason::NextEvent
                },
                DigitEvent::Begin {
                    event: 2,
                    timestamp: ts2
                },
                DigitEvent::End {
                    event: 2,
                    timestamp: ts2,
                    duration: 480,
                    reason: EndReason::EndBit
                }
            ]
        );
    }

    #[test]
    fn telephone_event_receiver_timeout() {
        let mut r = DtmfReceiver::default();
        let t0 = Instant::now();
        let mut seq = 0;
        let got = feed(&mut r, t0, 0, &mut seq, &packets(4, 800), |i| i >= 2);
        assert_eq!(got.len(), 1);
        let deadline = r.poll_timeout().unwrap();
        r.handle_timeout(deadline - Duration::from_millis(1));
        assert!(r.poll_event().is_none());
        r.handle_timeout(deadline);
        assert_eq!(
            r.poll_event(),
            Some(DigitEvent::End {
                event: 4,
                timestamp: 0,
                duration: 320,
                reason: EndReason::Timeout
            })
        );
        // A late end packet after the timeout is ignored.
        let end = packets(4, 800)[5];
        r.handle_payload(deadline, 99, 0, &end.payload).unwrap();
        assert!(r.poll_event().is_none());
    }

    #[test]
    fn telephone_event_receiver_long_event_is_one_digit() {
        let mut r = DtmfReceiver::default();
        let t0 = Instant::now();
        let mut seq = 0;
        let total = MAX_SEGMENT_DURATION + 5000;
        let got = feed(&mut r, t0, 42, &mut seq, &packets(0, total), |_| false);
        assert_eq!(
            got,
            [
                DigitEvent::Begin {
                    event: 0,
                    timestamp: 42
                },
                DigitEvent::End {
                    event: 0,
                    timestamp: 42,
                    duration: total,
                    reason: EndReason::EndBit
                }
            ]
        );
    }

    #[test]
    fn telephone_event_receiver_packed_and_reordered() {
        let mut r = DtmfReceiver::default();
        let t0 = Instant::now();
        // '1' (ended) and '2' (running) packed into one packet.
        let payload = [1, 0x8A, 0x01, 0x90, 2, 0x0A, 0x00, 0xA0];
        r.handle_payload(t0, 10, 8000, &payload).unwrap();
        let got = collect(&mut r);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            DigitEvent::Begin {
                event: 2,
                timestamp: 8400
            }
        );
        // A late packet of '1' (older seq) changes nothing.
        r.handle_payload(t0, 9, 8000, &[1, 0x0A, 0x00, 0xA0])
            .unwrap();
        assert!(r.poll_event().is_none());
        // An older event timestamp with a newer seq is also ignored.
        r.handle_payload(t0, 11, 7000, &[5, 0x0A, 0x00, 0xA0])
            .unwrap();
        assert!(r.poll_event().is_none());
        assert!(r.handle_payload(t0, 12, 9000, &[1, 2, 3]).is_err());
    }

    /// xorshift64, deterministic.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    #[test]
    fn telephone_event_sender_to_receiver_over_a_lossy_link() {
        let mut rng = Rng(0xD1CE_5EED);
        let mut sender = DtmfSender::new(160).unwrap();
        let mut receiver = DtmfReceiver::default();
        let t0 = Instant::now();
        let mut seq = 40_000u16;
        let mut sent_digits = Vec::new();
        let mut events = Vec::new();
        for i in 0..300u32 {
            let event = (rng.next() % 17) as u8;
            let duration = if i % 50 == 7 {
                MAX_SEGMENT_DURATION * 2 + 777
            } else {
                400 + (rng.next() % 2000) as u32
            };
            let start_ts = i.wrapping_mul(400_000).wrapping_add(u32::MAX - 1_000_000);
            let start_at = t0 + Duration::from_secs(u64::from(i) * 60);
            sender.start(event, duration, 10).unwrap();
            let mut packets: Vec<EventPacket> =
                std::iter::from_fn(|| sender.poll_packet()).collect();
            // Swap neighbours now and then (reordering), then drop 20 % and duplicate 5 %.
            for k in 1..packets.len() {
                if rng.chance(10) {
                    packets.swap(k - 1, k);
                }
            }
            let mut delivered = 0;
            for p in &packets {
                seq = seq.wrapping_add(1);
                if rng.chance(20) {
                    continue;
                }
                let now = start_at + Duration::from_micros(u64::from(p.send_offset) * 125);
                // Timeouts are driven after even digits only, so an odd digit that lost all its
                // end packets is ended by the next digit instead.
                if let Some(deadline) = receiver.poll_timeout() {
                    if deadline <= now && i % 2 == 1 {
                        receiver.handle_timeout(deadline);
                    }
                }
                let ts = start_ts.wrapping_add(p.timestamp_offset);
                let copies = if rng.chance(5) { 2 } else { 1 };
                for _ in 0..copies {
                    receiver.handle_payload(now, seq, ts, &p.payload).unwrap();
                }
                events.extend(std::iter::from_fn(|| receiver.poll_event()));
                delivered += 1;
            }
            if delivered > 0 {
                sent_digits.push((event, start_ts, duration));
            }
        }
        if let Some(deadline) = receiver.poll_timeout() {
            receiver.handle_timeout(deadline);
        }
        events.extend(std::iter::from_fn(|| receiver.poll_event()));

        // Exactly one begin and one end per digit that got through, in order.
        assert_eq!(events.len(), 2 * sent_digits.len());
        for (pair, &(event, ts, duration)) in events.chunks(2).zip(&sent_digits) {
            assert_eq!(
                pair[0],
                DigitEvent::Begin {
                    event,
                    timestamp: ts
                }
            );
            let DigitEvent::End {
                event: e,
                timestamp: t,
                duration: d,
                reason,
            } = pair[1]
            else {
                panic!("{pair:?}");
            };
            assert_eq!((e, t), (event, ts));
            assert!(d <= duration);
            if reason == EndReason::EndBit && duration <= MAX_SEGMENT_DURATION {
                assert_eq!(d, duration);
            }
        }
        assert_eq!(receiver.overflowed(), 0);
        // All three ways of ending occur: the E bit, a timeout, and the next event.
        let count = |r| {
            events
                .iter()
                .filter(|e| matches!(e, DigitEvent::End { reason, .. } if *reason == r))
                .count()
        };
        assert!(count(EndReason::EndBit) > 250);
        assert!(count(EndReason::Timeout) > 0);
        assert!(count(EndReason::NextEvent) > 0);
    }

    proptest::proptest! {
        #[test]
        fn telephone_event_block_round_trip(bytes in proptest::prelude::any::<[u8; 4]>()) {
            let e = TelephoneEvent::parse(&bytes).unwrap();
            let mut cleared = bytes;
            cleared[1] &= !0x40;
            proptest::prop_assert_eq!(e.to_bytes().unwrap(), cleared);
        }

        #[test]
        fn telephone_event_receiver_never_panics(
            packets in proptest::collection::vec(
                (proptest::prelude::any::<u16>(), 0u32..5000, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..13)),
                0..40,
            )
        ) {
            let mut r = DtmfReceiver::default();
            let t0 = Instant::now();
            let (mut begins, mut ends) = (0, 0);
            for (i, (seq, ts, payload)) in packets.iter().enumerate() {
                let now = t0 + Duration::from_millis(i as u64 * 20);
                r.handle_timeout(now);
                let _ = r.handle_payload(now, *seq, *ts, payload);
                while let Some(e) = r.poll_event() {
                    match e {
                        DigitEvent::Begin { .. } => begins += 1,
                        DigitEvent::End { .. } => ends += 1,
                    }
                    proptest::prop_assert!(ends <= begins && begins <= ends + 1);
                }
            }
        }
    }
}
