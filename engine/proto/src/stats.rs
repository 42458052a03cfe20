//! Counters and per-stream receive statistics, all fixed-size and updated without allocation.
//!
//! - [`DropReason`] names every reason a packet is dropped, with [`DropReason::as_str`] labels
//!   for metrics, and [`DropCounters`] counts them.
//! - [`RtpReceiveStats`] follows one inbound RTP stream: packets, bytes, errors, the sequence
//!   bookkeeping of RFC 3550 Appendix A.1 (source validation with probation) and A.3 (expected,
//!   lost, fraction lost), interarrival jitter per A.8, duplicates, late (reordered) packets and
//!   the time of the last packet.
//! - [`RtcpReceiveStats`] follows the RTCP a peer sends: its latest sender report (§6.4.1), the
//!   latest report block it sent about what it receives (remote loss and jitter, §6.4.2) and the
//!   round-trip time worked out from it.
//! - [`MosParams`], [`r_factor`] and [`mos`] estimate a listening-quality MOS with a simplified
//!   ITU-T G.107 E-model.
//!
//! Drive contract: call `record_*` once per packet with the packet's arrival time; read the
//! accessors at any time. Nothing here keeps time by itself.

use std::time::Duration;

use crate::rtcp::ReportBlock;
use crate::rtp::{RtpPacket, SeqUnwrapper, Ssrc};
use crate::time::Micros;

/// Why a packet was dropped instead of forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// RTP shorter than its fixed header.
    RtpTooShort,
    /// RTP version other than 2.
    RtpBadVersion,
    /// RTP CSRC list past the end.
    RtpBadCsrcCount,
    /// RTP header extension truncated.
    RtpBadExtension,
    /// RTP padding count invalid.
    RtpBadPadding,
    /// RTCP truncated header or empty datagram.
    RtcpTooShort,
    /// RTCP version other than 2.
    RtcpBadVersion,
    /// RTCP length field past the end.
    RtcpBadLength,
    /// RTCP padding count invalid.
    RtcpBadPadding,
    /// RTCP SR/RR report blocks do not fit.
    RtcpBadReportCount,
    /// The packet named a leg the relay does not have.
    UnknownLeg,
    /// The receiving leg forwards to no other leg yet.
    NoPeer,
    /// No forward target has a known address yet (no SDP address, nothing learned).
    NoDestination,
    /// The source address differs from the one the leg is locked to (`strict source`).
    StrictSource,
    /// Media from this leg is blocked.
    Blocked,
    /// An RFC 4733 event from a leg whose DTMF is blocked.
    DtmfBlocked,
    /// An RTP payload type the leg did not negotiate (decoded media).
    UnknownPayloadType,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 17;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::RtpTooShort,
        DropReason::RtpBadVersion,
        DropReason::RtpBadCsrcCount,
        DropReason::RtpBadExtension,
        DropReason::RtpBadPadding,
        DropReason::RtcpTooShort,
        DropReason::RtcpBadVersion,
        DropReason::RtcpBadLength,
        DropReason::RtcpBadPadding,
        DropReason::RtcpBadReportCount,
        DropReason::UnknownLeg,
        DropReason::NoPeer,
        DropReason::NoDestination,
        DropReason::StrictSource,
        DropReason::Blocked,
        DropReason::DtmfBlocked,
        DropReason::UnknownPayloadType,
    ];

    /// A stable snake-case name for metric labels.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::RtpTooShort => "rtp_too_short",
            DropReason::RtpBadVersion => "rtp_bad_version",
            DropReason::RtpBadCsrcCount => "rtp_bad_csrc_count",
            DropReason::RtpBadExtension => "rtp_bad_extension",
            DropReason::RtpBadPadding => "rtp_bad_padding",
            DropReason::RtcpTooShort => "rtcp_too_short",
            DropReason::RtcpBadVersion => "rtcp_bad_version",
            DropReason::RtcpBadLength => "rtcp_bad_length",
            DropReason::RtcpBadPadding => "rtcp_bad_padding",
            DropReason::RtcpBadReportCount => "rtcp_bad_report_count",
            DropReason::UnknownLeg => "unknown_leg",
            DropReason::NoPeer => "no_peer",
            DropReason::NoDestination => "no_destination",
            DropReason::StrictSource => "strict_source",
            DropReason::Blocked => "blocked",
            DropReason::DtmfBlocked => "dtmf_blocked",
            DropReason::UnknownPayloadType => "unknown_payload_type",
        }
    }

    /// Whether the packet itself was malformed (as opposed to refused by policy or state).
    #[must_use]
    pub const fn is_malformed(self) -> bool {
        (self as usize) < DropReason::UnknownLeg as usize
    }

    /// Position in [`DropReason::ALL`], for counter tables.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A counter per [`DropReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounters {
    counts: [u64; DropReason::COUNT],
}

impl DropCounters {
    /// Count one drop.
    pub fn record(&mut self, reason: DropReason) {
        let slot = &mut self.counts[reason.index()];
        *slot = slot.saturating_add(1);
    }

    /// Drops for one reason.
    #[must_use]
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Drops for all reasons.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every reason with its count, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    /// Add another set of counters to this one.
    pub fn add(&mut self, other: &DropCounters) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }
}

/// Packets, bytes and the time of the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketCounters {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (whole datagrams).
    pub bytes: u64,
    /// When the last packet was counted.
    pub last_packet: Option<Micros>,
}

impl PacketCounters {
    /// Count one datagram of `len` bytes at `now`.
    pub fn record(&mut self, now: Micros, len: usize) {
        self.packets = self.packets.saturating_add(1);
        self.bytes = self.bytes.saturating_add(len as u64);
        self.last_packet = Some(now);
    }
}

/// RFC 3550 A.1: sequential packets needed before a source counts as valid.
const MIN_SEQUENTIAL: u32 = 2;
/// RFC 3550 A.1: largest forward jump still taken as in sequence.
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: largest backward step taken as misordering rather than a restart.
const MAX_MISORDER: u16 = 100;
const RTP_SEQ_MOD: u32 = 1 << 16;
/// Width of the window used to tell duplicates from late packets.
const DUP_WINDOW: u64 = 128;

/// RFC 3550 A.1 `source` sequence state.
#[derive(Debug, Clone, Copy, Default)]
struct SeqState {
    max_seq: u16,
    /// Shifted count of wraps (a multiple of 2^16).
    cycles: u64,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u64,
    /// Of `received`, how many were duplicates.
    received_duplicates: u64,
    expected_prior: u64,
    received_prior: u64,
}

impl SeqState {
    fn new_source(seq: u16) -> Self {
        let mut s = SeqState::default();
        s.init(seq);
        s.max_seq = seq.wrapping_sub(1);
        s.probation = MIN_SEQUENTIAL;
        s
    }

    fn init(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_duplicates = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// RFC 3550 A.1 `update_seq`: whether the packet counts as valid.
    fn update(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        } else if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += u64::from(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets after a jump: the sender restarted.
                self.init(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // Otherwise a duplicate or a late packet: counted, no state change.
        self.received += 1;
        true
    }

    fn extended_max(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        if self.probation > 0 {
            return 0;
        }
        (self.extended_max() + 1).saturating_sub(u64::from(self.base_seq))
    }
}

/// Statistics of one inbound RTP stream (RFC 3550 §6.4.1, Appendix A.1, A.3, A.8).
///
/// Sequence statistics (expected, lost, extended highest sequence number) follow A.1: a new
/// source is validated after two sequential packets and counting starts from the second of them;
/// a jump of more than 3000 or a step back of more than 100 is refused unless the next packet
/// follows it, which is taken as a sender restart. A change of SSRC starts a new source: sequence
/// and jitter state restart; packets, bytes, errors, duplicates and late counts carry on.
///
/// Jitter is A.8's estimator (`J += (|D| - J) / 16`, kept scaled by 16 as in the RFC's integer
/// version) over every packet except duplicates, with arrival time converted to timestamp units
/// at the stream's clock rate.
#[derive(Debug, Clone)]
pub struct RtpReceiveStats {
    clock_rate: u32,
    counters: PacketCounters,
    errors: u64,
    ssrc: Option<Ssrc>,
    ssrc_changes: u64,
    seq: SeqState,
    unwrapper: SeqUnwrapper,
    /// Bit `i` set: extended sequence number `highest - i` was seen.
    window: u128,
    duplicates: u64,
    late: u64,
    transit: Option<u32>,
    jitter_q4: u32,
    mos_params: MosParams,
}

impl RtpReceiveStats {
    /// Statistics for a stream whose timestamps run at `clock_rate` Hz (8000 for G.711); a rate of
    /// 0 is taken as 8000.
    #[must_use]
    pub fn new(clock_rate: u32) -> Self {
        RtpReceiveStats {
            clock_rate: if clock_rate == 0 { 8000 } else { clock_rate },
            counters: PacketCounters::default(),
            errors: 0,
            ssrc: None,
            ssrc_changes: 0,
            seq: SeqState::default(),
            unwrapper: SeqUnwrapper::new(),
            window: 0,
            duplicates: 0,
            late: 0,
            transit: None,
            jitter_q4: 0,
            mos_params: MosParams::G711_PLC,
        }
    }

    /// Change the clock rate (after a re-negotiation); restarts the jitter estimate.
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        let rate = if clock_rate == 0 { 8000 } else { clock_rate };
        if rate != self.clock_rate {
            self.clock_rate = rate;
            self.transit = None;
            self.jitter_q4 = 0;
        }
    }

    /// Codec parameters used by [`Self::mos`]; [`MosParams::G711_PLC`] by default.
    pub fn set_mos_params(&mut self, params: MosParams) {
        self.mos_params = params;
    }

    /// Count one valid RTP packet that arrived at `now` in a datagram of `len` bytes.
    pub fn record_packet(&mut self, now: Micros, packet: &RtpPacket<'_>, len: usize) {
        self.counters.record(now, len);
        let ssrc = packet.ssrc();
        let seq = packet.sequence_number();
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.ssrc_changes = self.ssrc_changes.saturating_add(1);
            }
            self.ssrc = Some(ssrc);
            self.seq = SeqState::new_source(seq);
            self.unwrapper = SeqUnwrapper::new();
            self.window = 0;
            self.transit = None;
            self.jitter_q4 = 0;
        }

        let duplicate = self.track_order(seq);
        let valid = self.seq.update(seq);
        if valid && duplicate {
            self.seq.received_duplicates += 1;
        }
        if !duplicate {
            self.update_jitter(now, packet.timestamp().0);
        }
    }

    /// Count one malformed packet received on this stream's port.
    pub fn record_error(&mut self) {
        self.errors = self.errors.saturating_add(1);
    }

    /// Classify `seq` as new, duplicate or late against the recent window; true for a duplicate.
    fn track_order(&mut self, seq: u16) -> bool {
        let before = self.unwrapper.highest();
        let ext = self.unwrapper.extend(seq).0;
        let Some(highest) = before.map(|s| s.0) else {
            self.window = 1;
            return false;
        };
        if ext > highest {
            let shift = ext - highest;
            self.window = if shift >= DUP_WINDOW {
                1
            } else {
                (self.window << shift) | 1
            };
            return false;
        }
        let age = highest - ext;
        if age < DUP_WINDOW && self.window & (1 << age) != 0 {
            self.duplicates = self.duplicates.saturating_add(1);
            return true;
        }
        if age < DUP_WINDOW {
            self.window |= 1 << age;
        }
        self.late = self.late.saturating_add(1);
        false
    }

    /// RFC 3550 A.8.
    fn update_jitter(&mut self, now: Micros, timestamp: u32) {
        let arrival = micros_to_rtp_units(now, self.clock_rate);
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(prev) = self.transit {
            let d = transit.wrapping_sub(prev) as i32;
            let d = i64::from(d.unsigned_abs());
            let j = i64::from(self.jitter_q4);
            let next = j + d - ((j + 8) >> 4);
            self.jitter_q4 = u32::try_from(next.max(0)).unwrap_or(u32::MAX);
        }
        self.transit = Some(transit);
    }

    /// Timestamp clock rate in Hz.
    #[must_use]
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// Valid RTP packets counted (all of them, before source validation too).
    #[must_use]
    pub fn packets(&self) -> u64 {
        self.counters.packets
    }

    /// Bytes of those packets (whole datagrams).
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.counters.bytes
    }

    /// Malformed packets received on this stream's port.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Arrival time of the last valid packet.
    #[must_use]
    pub fn last_packet(&self) -> Option<Micros> {
        self.counters.last_packet
    }

    /// SSRC of the current source.
    #[must_use]
    pub fn ssrc(&self) -> Option<Ssrc> {
        self.ssrc
    }

    /// How many times the SSRC changed.
    #[must_use]
    pub fn ssrc_changes(&self) -> u64 {
        self.ssrc_changes
    }

    /// Whether the current source passed A.1 probation.
    #[must_use]
    pub fn is_source_valid(&self) -> bool {
        self.ssrc.is_some() && self.seq.probation == 0
    }

    /// Extended highest sequence number received (A.3), as carried in a report block.
    #[must_use]
    pub fn extended_highest_seq(&self) -> u32 {
        // The report-block field is 32 bits; the count of cycles wraps there by definition.
        self.seq.extended_max() as u32
    }

    /// Packets expected from the current source (A.3); 0 before validation.
    #[must_use]
    pub fn expected(&self) -> u64 {
        self.seq.expected()
    }

    /// Packets received from the current source as counted by A.1, duplicates included.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.seq.received
    }

    /// Cumulative packets lost (A.3): expected minus received; negative when duplicates
    /// outnumber losses.
    #[must_use]
    pub fn lost(&self) -> i64 {
        let expected = i64::try_from(self.expected()).unwrap_or(i64::MAX);
        let received = i64::try_from(self.seq.received).unwrap_or(i64::MAX);
        expected - received
    }

    /// Share of expected packets that never arrived (duplicates not counted as arrivals),
    /// 0.0–1.0.
    #[must_use]
    pub fn loss_ratio(&self) -> f64 {
        let expected = self.expected();
        if expected == 0 {
            return 0.0;
        }
        let unique = self.seq.received - self.seq.received_duplicates;
        expected.saturating_sub(unique) as f64 / expected as f64
    }

    /// Duplicate packets seen.
    #[must_use]
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Packets that arrived after a higher sequence number (reordered), duplicates excluded.
    #[must_use]
    pub fn reordered(&self) -> u64 {
        self.late
    }

    /// Interarrival jitter in timestamp units (A.8), as carried in a report block.
    #[must_use]
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Interarrival jitter in milliseconds.
    #[must_use]
    pub fn jitter_ms(&self) -> f64 {
        f64::from(self.jitter_q4) / 16.0 * 1000.0 / f64::from(self.clock_rate)
    }

    /// A report block about this stream for an RR or SR we originate (§6.4.1), advancing the
    /// fraction-lost interval (A.3). LSR and DLSR are left at 0 for the caller to fill in.
    /// `None` before the source is valid.
    pub fn next_report_block(&mut self) -> Option<ReportBlock> {
        let ssrc = self.ssrc?;
        if !self.is_source_valid() {
            return None;
        }
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.seq.expected_prior);
        self.seq.expected_prior = expected;
        let received_interval = self.seq.received.saturating_sub(self.seq.received_prior);
        self.seq.received_prior = self.seq.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            // lost_interval <= expected_interval, so the quotient is at most 256; 256 means all
            // lost and saturates to 255.
            u8::try_from((lost_interval << 8) / expected_interval).unwrap_or(u8::MAX)
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: i32::try_from(self.lost().clamp(-0x80_0000, 0x7f_ffff)).unwrap_or(0),
            extended_highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            last_sr: 0,
            delay_since_last_sr: 0,
        })
    }

    /// MOS estimate of this stream as received (simplified E-model, [`mos`]), from its loss and
    /// jitter and the round-trip time if known. `None` before the source is valid.
    #[must_use]
    pub fn mos(&self, rtt: Option<Duration>) -> Option<f64> {
        if !self.is_source_valid() {
            return None;
        }
        Some(mos(
            &self.mos_params,
            self.loss_ratio(),
            self.jitter_ms(),
            rtt,
        ))
    }
}

/// `now` in units of a `rate` Hz clock, wrapping at 2^32 like RTP timestamps.
fn micros_to_rtp_units(now: Micros, rate: u32) -> u32 {
    let secs = now.0 / 1_000_000;
    let sub = now.0 % 1_000_000;
    let units = secs
        .wrapping_mul(u64::from(rate))
        .wrapping_add(sub * u64::from(rate) / 1_000_000);
    // RTP timestamps wrap at 2^32; keeping the low bits is the intent.
    units as u32
}

/// What a peer's last sender report said (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    /// When it arrived.
    pub received_at: Micros,
    /// The sender.
    pub ssrc: Ssrc,
    /// Middle 32 bits of its NTP time: the LSR a report about this sender echoes.
    pub ntp_middle: u32,
    /// Packets the peer says it sent.
    pub packet_count: u32,
    /// Payload octets the peer says it sent.
    pub octet_count: u32,
}

/// The latest report block a peer sent: how it receives the stream it reports on (RFC 3550
/// §6.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteReport {
    /// When the report arrived.
    pub received_at: Micros,
    /// The peer's SSRC (sender of the report).
    pub reporter: Ssrc,
    /// The block itself.
    pub block: ReportBlock,
}

impl RemoteReport {
    /// Fraction lost as a ratio, 0.0–1.0.
    #[must_use]
    pub fn fraction_lost(&self) -> f64 {
        f64::from(self.block.fraction_lost) / 256.0
    }

    /// Reported jitter in milliseconds at `clock_rate`.
    #[must_use]
    pub fn jitter_ms(&self, clock_rate: u32) -> f64 {
        f64::from(self.block.jitter) * 1000.0 / f64::from(clock_rate.max(1))
    }
}

/// What a peer's RTCP told us: packet counts, last SR, remote loss and jitter, round-trip time.
#[derive(Debug, Clone, Copy, Default)]
pub struct RtcpReceiveStats {
    counters: PacketCounters,
    errors: u64,
    sender_reports: u64,
    receiver_reports: u64,
    last_sender_report: Option<SenderInfo>,
    remote: Option<RemoteReport>,
    rtt: Option<Duration>,
}

impl RtcpReceiveStats {
    /// Count one valid RTCP datagram.
    pub fn record_packet(&mut self, now: Micros, len: usize) {
        self.counters.record(now, len);
    }

    /// Count one malformed RTCP datagram.
    pub fn record_error(&mut self) {
        self.errors = self.errors.saturating_add(1);
    }

    /// Remember a sender report.
    pub fn record_sender_report(&mut self, info: SenderInfo) {
        self.sender_reports = self.sender_reports.saturating_add(1);
        self.last_sender_report = Some(info);
    }

    /// Count a receiver report packet.
    pub fn record_receiver_report(&mut self) {
        self.receiver_reports = self.receiver_reports.saturating_add(1);
    }

    /// Remember a report block and, when it could be worked out, the round-trip time.
    pub fn record_report_block(&mut self, report: RemoteReport, rtt: Option<Duration>) {
        self.remote = Some(report);
        if rtt.is_some() {
            self.rtt = rtt;
        }
    }

    /// Valid RTCP datagrams.
    #[must_use]
    pub fn packets(&self) -> u64 {
        self.counters.packets
    }

    /// Bytes of valid RTCP datagrams.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.counters.bytes
    }

    /// Malformed RTCP datagrams.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Arrival time of the last valid RTCP datagram.
    #[must_use]
    pub fn last_packet(&self) -> Option<Micros> {
        self.counters.last_packet
    }

    /// Sender reports seen.
    #[must_use]
    pub fn sender_reports(&self) -> u64 {
        self.sender_reports
    }

    /// Receiver report packets seen.
    #[must_use]
    pub fn receiver_reports(&self) -> u64 {
        self.receiver_reports
    }

    /// The latest sender report.
    #[must_use]
    pub fn last_sender_report(&self) -> Option<SenderInfo> {
        self.last_sender_report
    }

    /// The latest report block: the peer's view of the stream it receives.
    #[must_use]
    pub fn remote_report(&self) -> Option<RemoteReport> {
        self.remote
    }

    /// The latest round-trip time worked out from a report block.
    #[must_use]
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}

/// Codec figures for the E-model's equipment impairment (ITU-T G.107 §3.6, G.113 Appendix I).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MosParams {
    /// Equipment impairment factor `Ie` of the codec without loss.
    pub ie: f64,
    /// Packet-loss robustness factor `Bpl`.
    pub bpl: f64,
    /// One-way delay added by the codec and packetization, in ms.
    pub codec_delay_ms: f64,
}

impl MosParams {
    /// G.711 with packet-loss concealment (G.711 Appendix I): `Ie` 0, `Bpl` 25.1, 20 ms packets.
    /// The default, since the phones and gateways behind a contact center conceal loss.
    pub const G711_PLC: MosParams = MosParams {
        ie: 0.0,
        bpl: 25.1,
        codec_delay_ms: 20.0,
    };

    /// G.711 without concealment: `Ie` 0, `Bpl` 4.3, 20 ms packets.
    pub const G711_NO_PLC: MosParams = MosParams {
        ie: 0.0,
        bpl: 4.3,
        codec_delay_ms: 20.0,
    };
}

impl Default for MosParams {
    fn default() -> Self {
        MosParams::G711_PLC
    }
}

/// Transmission rating `R` of a simplified ITU-T G.107 E-model:
///
/// `R = 93.2 − Id − Ie_eff`, with
/// - one-way delay `d = 2 × jitter + RTT / 2 + codec delay` in ms (a jitter buffer sized at
///   twice the jitter; no network delay term without an RTT),
/// - `Id = 0.024 d + 0.11 (d − 177.3) H(d − 177.3)` (the usual fit of G.107's delay impairment
///   for default echo settings; `H` is the step function),
/// - `Ie_eff = Ie + (95 − Ie) · Ppl / (Ppl + Bpl)` with `Ppl` the loss in percent and random loss
///   (`BurstR = 1`).
///
/// `loss_ratio` is 0.0–1.0.
#[must_use]
pub fn r_factor(params: &MosParams, loss_ratio: f64, jitter_ms: f64, rtt: Option<Duration>) -> f64 {
    let rtt_ms = rtt.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let delay = 2.0 * jitter_ms.max(0.0) + rtt_ms / 2.0 + params.codec_delay_ms;
    let id = 0.024 * delay
        + if delay > 177.3 {
            0.11 * (delay - 177.3)
        } else {
            0.0
        };
    let ppl = (loss_ratio * 100.0).clamp(0.0, 100.0);
    let ie_eff = params.ie + (95.0 - params.ie) * ppl / (ppl + params.bpl);
    93.2 - id - ie_eff
}

/// MOS from `R` (ITU-T G.107 Annex B): `1 + 0.035 R + R (R − 60)(100 − R) · 7·10⁻⁶`, clamped to
/// 1.0–4.5.
#[must_use]
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        return 1.0;
    }
    if r >= 100.0 {
        return 4.5;
    }
    (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).clamp(1.0, 4.5)
}

/// MOS estimate from loss, jitter and round-trip time ([`r_factor`] then [`mos_from_r`]).
#[must_use]
pub fn mos(params: &MosParams, loss_ratio: f64, jitter_ms: f64, rtt: Option<Duration>) -> f64 {
    mos_from_r(r_factor(params, loss_ratio, jitter_ms, rtt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{PayloadType, RtpHeaderWriter, RtpTimestamp};

    fn feed(stats: &mut RtpReceiveStats, now_us: u64, seq: u16, ts: u32) {
        let mut buf = [0u8; 172];
        RtpHeaderWriter::new(PayloadType::PCMU, seq, RtpTimestamp(ts), Ssrc(7))
            .write(&mut buf)
            .unwrap();
        let p = RtpPacket::parse(&buf).unwrap();
        stats.record_packet(Micros(now_us), &p, buf.len());
    }

    #[test]
    fn stats_drop_reason_labels_are_unique() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert!(DropReason::RtcpBadReportCount.is_malformed());
        assert!(!DropReason::StrictSource.is_malformed());
        let mut c = DropCounters::default();
        c.record(DropReason::Blocked);
        c.record(DropReason::Blocked);
        c.record(DropReason::NoPeer);
        assert_eq!(c.get(DropReason::Blocked), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(c.iter().filter(|(_, n)| *n > 0).count(), 2);
    }

    #[test]
    fn stats_in_order_stream_no_loss_no_jitter() {
        let mut s = RtpReceiveStats::new(8000);
        for i in 0..100u32 {
            feed(
                &mut s,
                u64::from(i) * 20_000,
                65500u16.wrapping_add(i as u16),
                i * 160,
            );
        }
        assert_eq!(s.packets(), 100);
        assert_eq!(s.bytes(), 17_200);
        // A.1: counting starts at the second packet.
        assert_eq!(s.expected(), 99);
        assert_eq!(s.received(), 99);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.jitter(), 0);
        assert_eq!(s.duplicates(), 0);
        assert_eq!(s.reordered(), 0);
        assert_eq!(s.extended_highest_seq(), (1 << 16) | 63);
        assert_eq!(s.last_packet(), Some(Micros(99 * 20_000)));
        let mos = s.mos(None).unwrap();
        assert!((4.3..=4.5).contains(&mos), "{mos}");
    }

    #[test]
    fn stats_loss_duplicates_reordering() {
        let mut s = RtpReceiveStats::new(8000);
        let order: [u16; 12] = [0, 1, 2, 4, 3, 3, 6, 7, 9, 10, 10, 11];
        for (i, &seq) in order.iter().enumerate() {
            feed(&mut s, i as u64 * 20_000, seq, u32::from(seq) * 160);
        }
        // Base is seq 1; highest 11 → 11 expected; received 11 (incl. 2 duplicates, seq 0 not
        // counted); missing 5 and 8.
        assert_eq!(s.expected(), 11);
        assert_eq!(s.received(), 11);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.duplicates(), 2);
        assert_eq!(s.reordered(), 1);
        assert!((s.loss_ratio() - 2.0 / 11.0).abs() < 1e-9);
        let block = s.next_report_block().unwrap();
        assert_eq!(block.ssrc, Ssrc(7));
        assert_eq!(block.fraction_lost, 0);
        assert_eq!(block.extended_highest_seq, 11);
        // Next interval: 3 expected, 1 received.
        feed(&mut s, 400_000, 14, 14 * 160);
        let block = s.next_report_block().unwrap();
        assert_eq!(u32::from(block.fraction_lost), (2 << 8) / 3);
        assert_eq!(block.cumulative_lost, 2);
    }

    #[test]
    fn stats_probation_and_restart() {
        let mut s = RtpReceiveStats::new(8000);
        feed(&mut s, 0, 100, 0);
        assert!(!s.is_source_valid());
        assert!(s.mos(None).is_none());
        assert!(s.next_report_block().is_none());
        feed(&mut s, 20_000, 102, 320);
        assert!(!s.is_source_valid());
        feed(&mut s, 40_000, 103, 480);
        assert!(s.is_source_valid());
        assert_eq!(s.expected(), 1);
        // A jump of 10000 is refused once, then accepted as a restart when the next follows.
        feed(&mut s, 60_000, 10_103, 640);
        assert_eq!(s.received(), 1);
        feed(&mut s, 80_000, 10_104, 800);
        assert_eq!(s.expected(), 1);
        assert_eq!(s.received(), 1);
        feed(&mut s, 100_000, 10_105, 960);
        assert_eq!(s.expected(), 2);
    }

    #[test]
    fn stats_jitter_matches_a8() {
        // Alternate 0 and 10 ms extra delay: |D| = 80 units every packet → J → 80.
        let mut s = RtpReceiveStats::new(8000);
        for i in 0..500u32 {
            let extra = if i % 2 == 0 { 0 } else { 10_000 };
            feed(&mut s, u64::from(i) * 20_000 + extra, i as u16, i * 160);
        }
        assert!((78..=80).contains(&s.jitter()), "{}", s.jitter());
        assert!((s.jitter_ms() - 10.0).abs() < 0.3, "{}", s.jitter_ms());
    }

    #[test]
    fn stats_ssrc_change_restarts_sequence_state() {
        let mut s = RtpReceiveStats::new(8000);
        for i in 0..10u16 {
            feed(&mut s, u64::from(i) * 20_000, i, u32::from(i) * 160);
        }
        let mut buf = [0u8; 172];
        RtpHeaderWriter::new(PayloadType::PCMU, 5000, RtpTimestamp(0), Ssrc(8))
            .write(&mut buf)
            .unwrap();
        s.record_packet(Micros(400_000), &RtpPacket::parse(&buf).unwrap(), 172);
        assert_eq!(s.ssrc(), Some(Ssrc(8)));
        assert_eq!(s.ssrc_changes(), 1);
        assert!(!s.is_source_valid());
        assert_eq!(s.packets(), 11);
    }

    #[test]
    fn stats_mos_e_model() {
        let p = MosParams::G711_PLC;
        let perfect = mos(&p, 0.0, 0.0, None);
        assert!((4.35..4.45).contains(&perfect), "{perfect}");
        assert!(mos(&p, 0.01, 0.0, None) < perfect);
        let five = mos(&p, 0.05, 0.0, None);
        assert!((3.7..4.1).contains(&five), "{five}");
        assert!(mos(&MosParams::G711_NO_PLC, 0.05, 0.0, None) < five);
        assert!(mos(&p, 0.0, 0.0, Some(Duration::from_millis(600))) < 4.1);
        assert_eq!(mos(&p, 1.0, 500.0, Some(Duration::from_secs(5))), 1.0);
        assert_eq!(mos_from_r(f64::NAN), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
    }

    #[test]
    fn stats_rtp_units_conversion() {
        assert_eq!(micros_to_rtp_units(Micros(1_000_000), 8000), 8000);
        assert_eq!(micros_to_rtp_units(Micros(20_000), 8000), 160);
        assert_eq!(micros_to_rtp_units(Micros(1_500_000), 48_000), 72_000);
        let _ = micros_to_rtp_units(Micros(u64::MAX), 192_000);
    }

    proptest::proptest! {
        #[test]
        fn stats_never_panic(seqs in proptest::collection::vec((proptest::prelude::any::<u16>(), proptest::prelude::any::<u32>(), 0u64..100_000), 1..200)) {
            let mut s = RtpReceiveStats::new(8000);
            let mut now = 0;
            for (seq, ts, dt) in seqs {
                now += dt;
                feed(&mut s, now, seq, ts);
                let _ = (s.lost(), s.loss_ratio(), s.jitter_ms(), s.mos(None));
            }
            let _ = s.next_report_block();
            proptest::prop_assert!(s.loss_ratio() >= 0.0 && s.loss_ratio() <= 1.0);
        }
    }
}
