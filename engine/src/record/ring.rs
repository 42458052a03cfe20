//! The tap ring: how relayed RTP leaves a media worker for its recorder thread.
//!
//! One single-producer single-consumer byte ring ([`rtrb`]) per media worker, allocated once
//! at start-up. The worker ([`TapProducer`]) appends variable-length records; the recorder
//! ([`TapConsumer`]) drains whole records. A record is a fixed [`HEADER_LEN`]-byte header
//! followed by the RTP payload of a packet (none for a mark):
//!
//! | bytes | packet | mark |
//! | --- | --- | --- |
//! | 0 | kind 1 | kind 2 |
//! | 1 | payload type, marker in bit 7 | mark kind |
//! | 2..4 | payload length (LE) | stop reason |
//! | 4..8 | leg key (LE) | recording key |
//! | 8..16 | call key | call key |
//! | 16..24 | arrival, µs on the engine clock | when, µs on the engine clock |
//! | 24..28 | RTP timestamp | — |
//! | 28..32 | SSRC | — |
//! | 32..34 | RTP sequence number | — |
//!
//! Pushing copies the header and the payload into the ring: no allocation, no lock, no
//! syscall. When the ring has no room the packet is dropped and counted (the recording gets a
//! gap, media is untouched). Marks (start, pause, resume, stop) must not be lost: a mark that
//! does not fit waits in a small queue owned by the worker and is retried every loop turn;
//! while marks wait, [`TapProducer::is_blocked`] tells the worker to drop packets instead of
//! letting them overtake the mark.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard_proto::rtp::RtpPacket;
use switchboard_proto::time::Micros;

/// Bytes of a record header.
pub const HEADER_LEN: usize = 36;
/// Largest RTP payload carried; larger packets are dropped and counted.
pub const MAX_PAYLOAD: usize = 1500;
/// Marks queued on the worker while the ring is full, before the oldest is given up.
const MAX_PENDING_MARKS: usize = 1024;

const KIND_PACKET: u8 = 1;
const KIND_MARK: u8 = 2;

/// What a mark does to a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// The recording's timeline starts.
    Start,
    /// Audio from here on is replaced by silence.
    Pause,
    /// Audio is written again.
    Resume,
    /// The recording ends here.
    Stop,
}

impl MarkKind {
    fn code(self) -> u8 {
        match self {
            Self::Start => 1,
            Self::Pause => 2,
            Self::Resume => 3,
            Self::Stop => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Start,
            2 => Self::Pause,
            3 => Self::Resume,
            4 => Self::Stop,
            _ => return None,
        })
    }
}

/// Why a recording stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `record.stop`, NG `stop recording`, or not a stop mark.
    Requested,
    /// The call ended (deleted or timed out).
    CallEnded,
}

impl StopReason {
    /// The name used in events and the index.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::CallEnded => "call_ended",
        }
    }
}

/// A control point in a recording's stream, stamped by the worker that applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// What happens.
    pub kind: MarkKind,
    /// The recording.
    pub rec: u32,
    /// The call it belongs to.
    pub call: u64,
    /// When, on the engine clock.
    pub at: Micros,
    /// For stops, why.
    pub reason: StopReason,
}

/// The RTP header fields of a tapped packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// The call.
    pub call: u64,
    /// The leg it arrived on (its local RTP port).
    pub leg: u32,
    /// Arrival on the engine clock.
    pub at: Micros,
    /// Payload type.
    pub pt: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub ts: u32,
    /// SSRC.
    pub ssrc: u32,
}

/// One record read from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapRecord<'a> {
    /// A relayed packet and its payload.
    Packet(PacketMeta, &'a [u8]),
    /// A mark.
    Mark(Mark),
}

/// A recording command for the worker that owns the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapOp {
    /// Start tapping these legs (leg keys) for recording `rec`.
    Start {
        /// The recording.
        rec: u32,
        /// Legs whose packets it needs.
        legs: Vec<u32>,
    },
    /// Pause recording `rec`.
    Pause {
        /// The recording.
        rec: u32,
    },
    /// Resume recording `rec`.
    Resume {
        /// The recording.
        rec: u32,
    },
    /// Stop recording `rec`.
    Stop {
        /// The recording.
        rec: u32,
        /// Why.
        reason: StopReason,
    },
}

#[derive(Debug, Clone)]
struct TapRec {
    rec: u32,
    paused: bool,
    legs: Vec<u32>,
}

/// What a worker keeps per call about its recordings: which are running, which legs they
/// need, and tapped packets it had to drop. Empty (no allocation) for calls not recorded.
#[derive(Debug, Clone, Default)]
pub struct CallTap {
    recs: Vec<TapRec>,
    dropped: u64,
    reported: u64,
}

impl CallTap {
    /// Applies `op`; returns the mark to queue (none when it changes nothing).
    pub fn apply(&mut self, op: TapOp) -> Option<(MarkKind, u32, StopReason)> {
        match op {
            TapOp::Start { rec, legs } => {
                if self.recs.iter().any(|r| r.rec == rec) {
                    return None;
                }
                self.recs.push(TapRec {
                    rec,
                    paused: false,
                    legs,
                });
                Some((MarkKind::Start, rec, StopReason::Requested))
            }
            TapOp::Pause { rec } | TapOp::Resume { rec } => {
                let pause = matches!(op, TapOp::Pause { .. });
                let r = self.recs.iter_mut().find(|r| r.rec == rec)?;
                if r.paused == pause {
                    return None;
                }
                r.paused = pause;
                let kind = if pause {
                    MarkKind::Pause
                } else {
                    MarkKind::Resume
                };
                Some((kind, rec, StopReason::Requested))
            }
            TapOp::Stop { rec, reason } => {
                let i = self.recs.iter().position(|r| r.rec == rec)?;
                self.recs.swap_remove(i);
                Some((MarkKind::Stop, rec, reason))
            }
        }
    }

    /// Whether packets from leg `leg` are needed by a recording. Paused recordings take
    /// them too: the recorder writes silence in their place, so the pause ends exactly at
    /// the resume mark rather than at the next whole packet.
    #[must_use]
    pub fn wants(&self, leg: u32) -> bool {
        self.recs.iter().any(|r| r.legs.contains(&leg))
    }

    /// Whether no recording is attached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Every attached recording.
    pub fn recs(&self) -> impl Iterator<Item = u32> + '_ {
        self.recs.iter().map(|r| r.rec)
    }

    /// Counts a tapped packet the ring had no room for.
    pub fn note_drop(&mut self) {
        self.dropped += 1;
    }

    /// The total of dropped packets, when it grew since the last call.
    pub fn take_new_drops(&mut self) -> Option<u64> {
        (self.dropped > self.reported).then(|| {
            self.reported = self.dropped;
            self.dropped
        })
    }
}

/// Counters of one ring's producer side, readable from any thread.
#[derive(Debug, Default)]
pub struct TapCounters {
    /// Packets dropped because the ring was full (or marks were waiting).
    pub queue_full: AtomicU64,
    /// Packets dropped because their payload exceeded [`MAX_PAYLOAD`].
    pub too_large: AtomicU64,
    /// Marks given up because too many were waiting.
    pub marks_lost: AtomicU64,
}

impl TapCounters {
    /// Single writer (the worker): a relaxed load and store.
    fn bump(c: &AtomicU64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }
}

/// Creates a ring of `capacity` bytes; the producer goes to a worker, the consumer to the
/// recorder.
#[must_use]
pub fn tap_ring(capacity: usize, counters: Arc<TapCounters>) -> (TapProducer, TapConsumer) {
    let capacity = capacity.max(4 * (HEADER_LEN + MAX_PAYLOAD));
    let (p, c) = rtrb::RingBuffer::new(capacity);
    (
        TapProducer {
            ring: p,
            counters,
            pending: VecDeque::with_capacity(64),
        },
        TapConsumer {
            ring: c,
            scratch: vec![0; HEADER_LEN + MAX_PAYLOAD],
        },
    )
}

/// The worker's end of the ring.
#[derive(Debug)]
pub struct TapProducer {
    ring: rtrb::Producer<u8>,
    counters: Arc<TapCounters>,
    pending: VecDeque<Mark>,
}

impl TapProducer {
    /// Copies one relayed packet into the ring. Returns false when it was dropped (no room,
    /// marks waiting, or too large); the drop is counted.
    pub fn push_packet(&mut self, call: u64, leg: u32, at: Micros, pkt: &RtpPacket<'_>) -> bool {
        let payload = pkt.payload();
        if payload.len() > MAX_PAYLOAD {
            TapCounters::bump(&self.counters.too_large);
            return false;
        }
        if !self.pending.is_empty() || self.ring.slots() < HEADER_LEN + payload.len() {
            TapCounters::bump(&self.counters.queue_full);
            return false;
        }
        let mut h = [0u8; HEADER_LEN];
        h[0] = KIND_PACKET;
        h[1] = pkt.payload_type().get() | if pkt.marker() { 0x80 } else { 0 };
        // MAX_PAYLOAD < 65536, checked above.
        h[2..4].copy_from_slice(&(payload.len() as u16).to_le_bytes());
        h[4..8].copy_from_slice(&leg.to_le_bytes());
        h[8..16].copy_from_slice(&call.to_le_bytes());
        h[16..24].copy_from_slice(&at.0.to_le_bytes());
        h[24..28].copy_from_slice(&pkt.timestamp().0.to_le_bytes());
        h[28..32].copy_from_slice(&pkt.ssrc().0.to_le_bytes());
        h[32..34].copy_from_slice(&pkt.sequence_number().to_le_bytes());
        // Room for both was checked and only this producer takes room away, so neither push
        // can fail; the consumer never reads a header whose payload is not there yet because
        // it waits for whole records.
        self.ring.push_entire_slice(&h).is_ok() && self.ring.push_entire_slice(payload).is_ok()
    }

    /// Queues a mark in order with the packets. A mark that does not fit now is kept and
    /// retried by [`flush_marks`](Self::flush_marks).
    pub fn push_mark(&mut self, mark: Mark) {
        if self.pending.is_empty() && self.try_mark(&mark) {
            return;
        }
        if self.pending.len() >= MAX_PENDING_MARKS {
            self.pending.pop_front();
            TapCounters::bump(&self.counters.marks_lost);
        }
        self.pending.push_back(mark);
    }

    /// Retries waiting marks, oldest first.
    pub fn flush_marks(&mut self) {
        while let Some(m) = self.pending.front().copied() {
            if !self.try_mark(&m) {
                return;
            }
            self.pending.pop_front();
        }
    }

    /// Marks are waiting for room: packets must not overtake them.
    #[must_use]
    pub fn is_blocked(&self) -> bool {
        !self.pending.is_empty()
    }

    fn try_mark(&mut self, m: &Mark) -> bool {
        if self.ring.slots() < HEADER_LEN {
            return false;
        }
        let mut h = [0u8; HEADER_LEN];
        h[0] = KIND_MARK;
        h[1] = m.kind.code();
        h[2..4].copy_from_slice(
            &(match m.reason {
                StopReason::Requested => 0u16,
                StopReason::CallEnded => 1,
            })
            .to_le_bytes(),
        );
        h[4..8].copy_from_slice(&m.rec.to_le_bytes());
        h[8..16].copy_from_slice(&m.call.to_le_bytes());
        h[16..24].copy_from_slice(&m.at.0.to_le_bytes());
        self.ring.push_entire_slice(&h).is_ok()
    }
}

/// The recorder's end of the ring.
#[derive(Debug)]
pub struct TapConsumer {
    ring: rtrb::Consumer<u8>,
    scratch: Vec<u8>,
}

fn copy_at(a: &[u8], b: &[u8], off: usize, out: &mut [u8]) {
    let n = out.len();
    if off >= a.len() {
        let s = off - a.len();
        out.copy_from_slice(&b[s..s + n]);
    } else if off + n <= a.len() {
        out.copy_from_slice(&a[off..off + n]);
    } else {
        let first = a.len() - off;
        out[..first].copy_from_slice(&a[off..]);
        out[first..].copy_from_slice(&b[..n - first]);
    }
}

fn u16_at(h: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([h[i], h[i + 1]])
}
fn u32_at(h: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]])
}
fn u64_at(h: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[i..i + 8]);
    u64::from_le_bytes(b)
}

impl TapConsumer {
    /// Hands every whole record available (at most about `max_bytes`) to `f`, in order, and
    /// frees their room. Returns how many records were read.
    pub fn drain(&mut self, max_bytes: usize, mut f: impl FnMut(TapRecord<'_>)) -> usize {
        let avail = self
            .ring
            .slots()
            .min(max_bytes.max(HEADER_LEN + MAX_PAYLOAD));
        if avail < HEADER_LEN {
            return 0;
        }
        let Ok(chunk) = self.ring.read_chunk(avail) else {
            return 0;
        };
        let (a, b) = chunk.as_slices();
        let total = a.len() + b.len();
        let mut off = 0;
        let mut count = 0;
        while off + HEADER_LEN <= total {
            let (head, body) = self.scratch.split_at_mut(HEADER_LEN);
            copy_at(a, b, off, head);
            match head[0] {
                KIND_PACKET => {
                    let len = usize::from(u16_at(head, 2));
                    if len > MAX_PAYLOAD {
                        // Cannot happen with our producer; resynchronise by skipping all.
                        off = total;
                        break;
                    }
                    if off + HEADER_LEN + len > total {
                        break;
                    }
                    copy_at(a, b, off + HEADER_LEN, &mut body[..len]);
                    let meta = PacketMeta {
                        pt: head[1] & 0x7f,
                        marker: head[1] & 0x80 != 0,
                        leg: u32_at(head, 4),
                        call: u64_at(head, 8),
                        at: Micros(u64_at(head, 16)),
                        ts: u32_at(head, 24),
                        ssrc: u32_at(head, 28),
                        seq: u16_at(head, 32),
                    };
                    f(TapRecord::Packet(meta, &body[..len]));
                    off += HEADER_LEN + len;
                }
                KIND_MARK => {
                    let kind = MarkKind::from_code(head[1]);
                    let mark = kind.map(|kind| Mark {
                        kind,
                        reason: if u16_at(head, 2) == 1 {
                            StopReason::CallEnded
                        } else {
                            StopReason::Requested
                        },
                        rec: u32_at(head, 4),
                        call: u64_at(head, 8),
                        at: Micros(u64_at(head, 16)),
                    });
                    if let Some(m) = mark {
                        f(TapRecord::Mark(m));
                    }
                    off += HEADER_LEN;
                }
                _ => {
                    off = total;
                    break;
                }
            }
            count += 1;
        }
        chunk.commit(off);
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::rtp::{PayloadType, RtpHeaderWriter, RtpTimestamp, Ssrc};

    fn packet(seq: u16, len: usize, buf: &mut Vec<u8>) -> RtpPacket<'_> {
        buf.resize(12 + len, 0);
        let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seq as u8)).collect();
        let n = RtpHeaderWriter::new(
            PayloadType::PCMU,
            seq,
            RtpTimestamp(u32::from(seq) * 160),
            Ssrc(7),
        )
        .marker(seq == 1)
        .write_packet(&payload, buf)
        .unwrap();
        RtpPacket::parse(&buf[..n]).unwrap()
    }

    #[test]
    fn records_round_trip_across_the_wrap() {
        let counters = Arc::new(TapCounters::default());
        let (mut p, mut c) = tap_ring(8 * (HEADER_LEN + MAX_PAYLOAD), counters.clone());
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        // Many rounds so records straddle the end of the ring.
        for round in 0..200u16 {
            for k in 0..5u16 {
                let seq = round * 5 + k;
                let pkt = packet(seq, 100 + usize::from(seq % 300), &mut buf);
                assert!(p.push_packet(9, 30000, Micros(u64::from(seq)), &pkt));
            }
            p.push_mark(Mark {
                kind: MarkKind::Pause,
                rec: u32::from(round),
                call: 9,
                at: Micros(5),
                reason: StopReason::Requested,
            });
            c.drain(usize::MAX, |r| match r {
                TapRecord::Packet(m, payload) => {
                    assert_eq!(payload.len(), 100 + usize::from(m.seq % 300));
                    assert!(
                        payload
                            .iter()
                            .enumerate()
                            .all(|(i, b)| *b == (i as u8) ^ (m.seq as u8))
                    );
                    assert_eq!(m.ts, u32::from(m.seq) * 160);
                    assert_eq!(m.marker, m.seq == 1);
                    assert_eq!((m.call, m.leg, m.ssrc, m.pt), (9, 30000, 7, 0));
                    seen.push(i64::from(m.seq));
                }
                TapRecord::Mark(m) => {
                    assert_eq!(m.kind, MarkKind::Pause);
                    seen.push(-i64::from(m.rec) - 1);
                }
            });
        }
        assert_eq!(seen.len(), 200 * 6);
        for round in 0..200i64 {
            let base = (round * 6) as usize;
            for k in 0..5 {
                assert_eq!(seen[base + k], round * 5 + k as i64);
            }
            assert_eq!(seen[base + 5], -round - 1);
        }
        assert_eq!(counters.queue_full.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_ring_drops_packets_and_keeps_marks_in_order() {
        let counters = Arc::new(TapCounters::default());
        let (mut p, mut c) = tap_ring(0, counters.clone());
        let mut buf = Vec::new();
        let mut pushed = 0;
        let mut dropped = 0;
        for seq in 0..100 {
            let pkt = packet(seq, 1000, &mut buf);
            if p.push_packet(1, 2, Micros(0), &pkt) {
                pushed += 1;
            } else {
                dropped += 1;
            }
        }
        assert!(dropped > 0 && pushed > 0);
        // Fill what is left with header-only packets until not even a header fits.
        loop {
            let pkt = packet(7, 0, &mut buf);
            if !p.push_packet(1, 2, Micros(0), &pkt) {
                dropped += 1;
                break;
            }
            pushed += 1;
        }
        assert_eq!(counters.queue_full.load(Ordering::Relaxed), dropped);
        let stop = Mark {
            kind: MarkKind::Stop,
            rec: 3,
            call: 1,
            at: Micros(99),
            reason: StopReason::CallEnded,
        };
        p.push_mark(stop);
        assert!(p.is_blocked(), "no room: the mark waits");
        let pkt = packet(500, 10, &mut buf);
        assert!(
            !p.push_packet(1, 2, Micros(0), &pkt),
            "packets may not overtake a mark"
        );
        let mut order = Vec::new();
        c.drain(usize::MAX, |r| {
            order.push(matches!(r, TapRecord::Mark(_)));
        });
        p.flush_marks();
        assert!(!p.is_blocked());
        c.drain(usize::MAX, |r| {
            if let TapRecord::Mark(m) = r {
                assert_eq!(m, stop);
            }
            order.push(matches!(r, TapRecord::Mark(_)));
        });
        assert_eq!(order.len(), pushed as usize + 1);
        assert_eq!(order.iter().filter(|m| **m).count(), 1);
        assert!(
            *order.last().unwrap(),
            "the mark comes after every earlier packet"
        );
    }

    #[test]
    fn call_taps_follow_their_recordings() {
        let mut t = CallTap::default();
        assert!(t.is_empty() && !t.wants(1));
        assert_eq!(
            t.apply(TapOp::Start {
                rec: 1,
                legs: vec![10, 11]
            }),
            Some((MarkKind::Start, 1, StopReason::Requested))
        );
        assert_eq!(
            t.apply(TapOp::Start {
                rec: 1,
                legs: vec![]
            }),
            None
        );
        assert!(t.wants(10) && t.wants(11) && !t.wants(12));
        assert_eq!(
            t.apply(TapOp::Pause { rec: 1 }),
            Some((MarkKind::Pause, 1, StopReason::Requested))
        );
        assert_eq!(t.apply(TapOp::Pause { rec: 1 }), None, "already paused");
        assert!(
            t.wants(10),
            "paused recordings are silenced by the recorder"
        );
        assert_eq!(
            t.apply(TapOp::Start {
                rec: 2,
                legs: vec![11]
            }),
            Some((MarkKind::Start, 2, StopReason::Requested))
        );
        assert!(t.wants(11));
        assert_eq!(
            t.apply(TapOp::Resume { rec: 1 }),
            Some((MarkKind::Resume, 1, StopReason::Requested))
        );
        assert_eq!(
            t.apply(TapOp::Stop {
                rec: 1,
                reason: StopReason::CallEnded
            }),
            Some((MarkKind::Stop, 1, StopReason::CallEnded))
        );
        assert_eq!(
            t.apply(TapOp::Stop {
                rec: 1,
                reason: StopReason::Requested
            }),
            None
        );
        assert_eq!(t.apply(TapOp::Resume { rec: 9 }), None);
        assert_eq!(t.recs().collect::<Vec<_>>(), [2]);
        assert!(!t.wants(10) && t.wants(11));
        assert_eq!(t.take_new_drops(), None);
        t.note_drop();
        t.note_drop();
        assert_eq!(t.take_new_drops(), Some(2));
        assert_eq!(t.take_new_drops(), None);
    }

    #[test]
    fn oversized_payloads_are_counted() {
        let counters = Arc::new(TapCounters::default());
        let (mut p, _c) = tap_ring(1 << 16, counters.clone());
        let mut buf = Vec::new();
        let pkt = packet(1, MAX_PAYLOAD + 1, &mut buf);
        assert!(!p.push_packet(1, 2, Micros(0), &pkt));
        assert_eq!(counters.too_large.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn draining_in_small_steps_never_splits_a_record() {
        let counters = Arc::new(TapCounters::default());
        let (mut p, mut c) = tap_ring(1 << 16, counters);
        let mut buf = Vec::new();
        for seq in 0..20 {
            let pkt = packet(seq, 700, &mut buf);
            assert!(p.push_packet(1, 2, Micros(0), &pkt));
        }
        let mut n = 0;
        for _ in 0..100 {
            n += c.drain(1, |r| {
                assert!(matches!(r, TapRecord::Packet(_, b) if b.len() == 700))
            });
        }
        assert_eq!(n, 20);
    }
}
