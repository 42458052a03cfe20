//! RTCP packets (RFC 3550 §6): compound-packet iteration, sender and receiver report views,
//! report blocks, builders, and the round-trip time of §6.4.1.
//!
//! - [`RtcpCompound::parse`] validates a whole datagram: every packet's common header (version,
//!   length in 32-bit words, padding) and the report blocks of SR and RR; [`RtcpCompound::packets`]
//!   then walks it without further checks. [`iter`] walks a datagram lazily, yielding errors.
//! - [`SenderReport`] (§6.4.1) and [`ReceiverReport`] (§6.4.2) borrow their packet; their
//!   [`ReportBlock`]s are decoded into plain values. SDES, BYE, APP and feedback packets are
//!   length-checked and handed back as [`RtcpOther`] without looking inside.
//! - [`SenderReportWriter`] and [`ReceiverReportWriter`] build reports into a caller's buffer.
//! - [`round_trip_time`] is §6.4.1's `A - LSR - DLSR`.
//!
//! The first packet of a compound is not required to be an SR or RR: reduced-size RTCP
//! (RFC 5506) is accepted as well. Nothing here allocates.

use std::time::Duration;

use crate::rtp::{RtpTimestamp, Ssrc, WriteError};
use crate::stats::DropReason;

/// Packet type of a sender report (RFC 3550 §6.4.1).
pub const PT_SR: u8 = 200;
/// Packet type of a receiver report (RFC 3550 §6.4.2).
pub const PT_RR: u8 = 201;
/// Packet type of source description items (RFC 3550 §6.5).
pub const PT_SDES: u8 = 202;
/// Packet type of a goodbye (RFC 3550 §6.6).
pub const PT_BYE: u8 = 203;
/// Packet type of an application-defined packet (RFC 3550 §6.7).
pub const PT_APP: u8 = 204;

/// Length of the common RTCP header (RFC 3550 §6.4.1).
pub const RTCP_HEADER_LEN: usize = 4;
/// Length of one report block (RFC 3550 §6.4.1).
pub const REPORT_BLOCK_LEN: usize = 24;
/// Most report blocks one SR or RR can carry: the RC field has five bits.
pub const MAX_REPORT_BLOCKS: usize = 31;

const SR_SENDER_INFO_LEN: usize = 24;
const RR_FIXED_LEN: usize = 4;

/// Why an RTCP datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    /// Fewer than four bytes where a packet header should start (or an empty datagram).
    #[error("RTCP packet too short: {len} bytes left at a packet start")]
    TooShort {
        /// Bytes left.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTCP version {version}, expected 2")]
    BadVersion {
        /// Version found.
        version: u8,
    },
    /// The length field runs past the end of the datagram.
    #[error("RTCP packet declares {declared} bytes, {available} available")]
    BadLength {
        /// Bytes the length field declares, header included.
        declared: usize,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// The padding count is zero or larger than the packet body.
    #[error("RTCP padding of {padding} bytes invalid in a {len}-byte packet")]
    BadPadding {
        /// Padding count from the packet's last byte.
        padding: u8,
        /// Packet length, header included.
        len: usize,
    },
    /// An SR or RR whose report blocks do not fit its length.
    #[error("RTCP report with {count} blocks does not fit in a {len}-byte body")]
    BadReportCount {
        /// Report count from the header.
        count: u8,
        /// Body length, without header and padding.
        len: usize,
    },
}

impl RtcpError {
    /// The drop counter this error belongs to.
    #[must_use]
    pub const fn reason(&self) -> DropReason {
        match self {
            RtcpError::TooShort { .. } => DropReason::RtcpTooShort,
            RtcpError::BadVersion { .. } => DropReason::RtcpBadVersion,
            RtcpError::BadLength { .. } => DropReason::RtcpBadLength,
            RtcpError::BadPadding { .. } => DropReason::RtcpBadPadding,
            RtcpError::BadReportCount { .. } => DropReason::RtcpBadReportCount,
        }
    }
}

/// A 64-bit NTP timestamp: seconds since 1900 in the high 32 bits, fraction in the low 32
/// (RFC 3550 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// From a duration since the NTP epoch (1900-01-01), wrapping at 2^32 seconds.
    #[must_use]
    pub fn from_duration(since_1900: Duration) -> Self {
        let secs = since_1900.as_secs() & 0xffff_ffff;
        let frac = (u64::from(since_1900.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// Duration since the NTP epoch.
    #[must_use]
    pub fn as_duration(self) -> Duration {
        let secs = self.0 >> 32;
        let nanos = ((self.0 & 0xffff_ffff) * 1_000_000_000) >> 32;
        // nanos < 10^9 because the fraction is below 2^32.
        Duration::new(secs, nanos as u32)
    }

    /// The middle 32 bits, as carried in LSR (RFC 3550 §6.4.1).
    #[must_use]
    pub const fn middle(self) -> u32 {
        // Truncation keeps bits 16..48 by construction.
        (self.0 >> 16) as u32
    }
}

/// Converts a duration to 1/65536 s units (the unit of DLSR and of RTT arithmetic), saturating.
#[must_use]
pub fn duration_to_q16(d: Duration) -> u32 {
    let q = (d.as_secs() << 16) + ((u64::from(d.subsec_nanos()) << 16) / 1_000_000_000);
    u32::try_from(q).unwrap_or(u32::MAX)
}

/// Converts 1/65536 s units to a duration.
#[must_use]
pub fn q16_to_duration(q: u32) -> Duration {
    let secs = u64::from(q >> 16);
    // (q & 0xffff) * 10^9 >> 16 stays below 10^9.
    let nanos = ((u64::from(q & 0xffff) * 1_000_000_000) >> 16) as u32;
    Duration::new(secs, nanos)
}

/// Round-trip time from a report block (RFC 3550 §6.4.1): `A - LSR - DLSR`, where `A` is the
/// arrival time of the report in the same NTP clock that stamped the sender report whose middle
/// bits are `last_sr`. `None` when no SR was received yet (`last_sr == 0`) or when the result
/// would be negative (clocks that disagree).
#[must_use]
pub fn round_trip_time(
    arrival: NtpTime,
    last_sr: u32,
    delay_since_last_sr: u32,
) -> Option<Duration> {
    if last_sr == 0 {
        return None;
    }
    let since_sr = arrival.middle().wrapping_sub(last_sr);
    if since_sr >= 0x8000_0000 || delay_since_last_sr > since_sr {
        return None;
    }
    Some(q16_to_duration(since_sr - delay_since_last_sr))
}

/// One reception report block (RFC 3550 §6.4.1), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: Ssrc,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost, 24-bit signed (negative with duplicates).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received: cycles in the high 16 bits.
    pub extended_highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received from the source, 0 if none.
    pub last_sr: u32,
    /// Delay since that SR in 1/65536 s, 0 if none.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    /// Decode 24 bytes; the caller has checked the length.
    fn decode(b: &[u8]) -> Self {
        let lost = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        // Shift the 24-bit field to the top and back to sign-extend it.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        ReportBlock {
            ssrc: Ssrc(read_u32(b, 0)),
            fraction_lost: b[4],
            cumulative_lost,
            extended_highest_seq: read_u32(b, 8),
            jitter: read_u32(b, 12),
            last_sr: read_u32(b, 16),
            delay_since_last_sr: read_u32(b, 20),
        }
    }

    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.ssrc.0.to_be_bytes());
        out[4] = self.fraction_lost;
        let lost = self
            .cumulative_lost
            .clamp(-0x80_0000, 0x7f_ffff)
            .to_be_bytes();
        out[5..8].copy_from_slice(&lost[1..4]);
        out[8..12].copy_from_slice(&self.extended_highest_seq.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        out[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }

    /// Round-trip time seen by the receiver of this block, given the block's arrival time in the
    /// NTP clock of the SR it answers ([`round_trip_time`]).
    #[must_use]
    pub fn round_trip_time(&self, arrival: NtpTime) -> Option<Duration> {
        round_trip_time(arrival, self.last_sr, self.delay_since_last_sr)
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Report blocks of an SR or RR, decoded one at a time.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;
    fn next(&mut self) -> Option<ReportBlock> {
        self.chunks.next().map(ReportBlock::decode)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for ReportBlocks<'_> {}

/// A sender report (RFC 3550 §6.4.1), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport<'a> {
    body: &'a [u8],
    count: u8,
}

impl<'a> SenderReport<'a> {
    /// SSRC of the sender.
    #[must_use]
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(read_u32(self.body, 0))
    }

    /// Wall-clock time when the report was sent.
    #[must_use]
    pub fn ntp_time(&self) -> NtpTime {
        NtpTime((u64::from(read_u32(self.body, 4)) << 32) | u64::from(read_u32(self.body, 8)))
    }

    /// RTP timestamp corresponding to [`Self::ntp_time`].
    #[must_use]
    pub fn rtp_timestamp(&self) -> RtpTimestamp {
        RtpTimestamp(read_u32(self.body, 12))
    }

    /// Packets sent since the start of transmission.
    #[must_use]
    pub fn packet_count(&self) -> u32 {
        read_u32(self.body, 16)
    }

    /// Payload octets sent since the start of transmission.
    #[must_use]
    pub fn octet_count(&self) -> u32 {
        read_u32(self.body, 20)
    }

    /// Reception report blocks.
    #[must_use]
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        let end = SR_SENDER_INFO_LEN + REPORT_BLOCK_LEN * usize::from(self.count);
        ReportBlocks {
            chunks: self.body[SR_SENDER_INFO_LEN..end].chunks_exact(REPORT_BLOCK_LEN),
        }
    }
}

/// A receiver report (RFC 3550 §6.4.2), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    body: &'a [u8],
    count: u8,
}

impl<'a> ReceiverReport<'a> {
    /// SSRC of the packet's sender.
    #[must_use]
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(read_u32(self.body, 0))
    }

    /// Reception report blocks.
    #[must_use]
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        let end = RR_FIXED_LEN + REPORT_BLOCK_LEN * usize::from(self.count);
        ReportBlocks {
            chunks: self.body[RR_FIXED_LEN..end].chunks_exact(REPORT_BLOCK_LEN),
        }
    }
}

/// Any other RTCP packet (SDES, BYE, APP, feedback, XR …): length-checked, contents unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpOther<'a> {
    /// Packet type.
    pub packet_type: u8,
    /// The five-bit count or subtype field.
    pub count: u8,
    /// Body after the 4-byte header, without padding.
    pub body: &'a [u8],
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcpPacket<'a> {
    /// Sender report (§6.4.1).
    SenderReport(SenderReport<'a>),
    /// Receiver report (§6.4.2).
    ReceiverReport(ReceiverReport<'a>),
    /// Anything else, skipped by length.
    Other(RtcpOther<'a>),
}

impl RtcpPacket<'_> {
    /// The packet type byte.
    #[must_use]
    pub fn packet_type(&self) -> u8 {
        match self {
            RtcpPacket::SenderReport(_) => PT_SR,
            RtcpPacket::ReceiverReport(_) => PT_RR,
            RtcpPacket::Other(o) => o.packet_type,
        }
    }
}

/// Walks the packets of a compound RTCP datagram, validating each as it goes; stops after the
/// first error.
#[derive(Debug, Clone)]
pub struct RtcpIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// Iterate over the packets of a compound RTCP datagram (RFC 3550 §6.1).
#[must_use]
pub fn iter(datagram: &[u8]) -> RtcpIter<'_> {
    RtcpIter {
        rest: datagram,
        failed: false,
    }
}

fn parse_one(buf: &[u8]) -> Result<(RtcpPacket<'_>, usize), RtcpError> {
    if buf.len() < RTCP_HEADER_LEN {
        return Err(RtcpError::TooShort { len: buf.len() });
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion { version });
    }
    let count = buf[0] & 0x1f;
    let packet_type = buf[1];
    let len = 4 * (usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 1);
    if len > buf.len() {
        return Err(RtcpError::BadLength {
            declared: len,
            available: buf.len(),
        });
    }
    let packet = &buf[..len];
    let mut body_end = len;
    if buf[0] & 0x20 != 0 {
        let padding = packet[len - 1];
        if padding == 0 || usize::from(padding) > len - RTCP_HEADER_LEN {
            return Err(RtcpError::BadPadding { padding, len });
        }
        body_end -= usize::from(padding);
    }
    let body = &packet[RTCP_HEADER_LEN..body_end];
    let blocks = REPORT_BLOCK_LEN * usize::from(count);
    let parsed = match packet_type {
        PT_SR => {
            if body.len() < SR_SENDER_INFO_LEN + blocks {
                return Err(RtcpError::BadReportCount {
                    count,
                    len: body.len(),
                });
            }
            RtcpPacket::SenderReport(SenderReport { body, count })
        }
        PT_RR => {
            if body.len() < RR_FIXED_LEN + blocks {
                return Err(RtcpError::BadReportCount {
                    count,
                    len: body.len(),
                });
            }
            RtcpPacket::ReceiverReport(ReceiverReport { body, count })
        }
        _ => RtcpPacket::Other(RtcpOther {
            packet_type,
            count,
            body,
        }),
    };
    Ok((parsed, len))
}

impl<'a> Iterator for RtcpIter<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match parse_one(self.rest) {
            Ok((packet, len)) => {
                self.rest = &self.rest[len..];
                Some(Ok(packet))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// A compound RTCP datagram whose every packet has been validated (RFC 3550 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpCompound<'a> {
    bytes: &'a [u8],
}

impl<'a> RtcpCompound<'a> {
    /// Validate every packet of `datagram`; an empty datagram is [`RtcpError::TooShort`].
    pub fn parse(datagram: &'a [u8]) -> Result<Self, RtcpError> {
        if datagram.is_empty() {
            return Err(RtcpError::TooShort { len: 0 });
        }
        for packet in iter(datagram) {
            packet?;
        }
        Ok(RtcpCompound { bytes: datagram })
    }

    /// The whole datagram.
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The packets, in order.
    pub fn packets(&self) -> impl Iterator<Item = RtcpPacket<'a>> + 'a {
        // Every packet was validated by `parse`, so no error is dropped here.
        iter(self.bytes).map_while(Result::ok)
    }
}

fn write_header(out: &mut [u8], count: usize, packet_type: u8, len: usize) {
    // count <= 31 and len <= 4 + 24 + 31 * 24 are checked by the callers.
    out[0] = 0x80 | (count as u8);
    out[1] = packet_type;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
}

fn check_space(blocks: &[ReportBlock], needed: usize, buf: &[u8]) -> Result<(), WriteError> {
    if blocks.len() > MAX_REPORT_BLOCKS {
        return Err(WriteError::TooManyReportBlocks {
            count: blocks.len(),
        });
    }
    if needed > buf.len() {
        return Err(WriteError::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    }
    Ok(())
}

/// Builds a sender report (RFC 3550 §6.4.1) into a caller's buffer.
#[derive(Debug, Clone, Copy)]
pub struct SenderReportWriter<'b> {
    /// SSRC of the sender.
    pub ssrc: Ssrc,
    /// Wall-clock time of sending.
    pub ntp_time: NtpTime,
    /// RTP timestamp matching `ntp_time`.
    pub rtp_timestamp: RtpTimestamp,
    /// Packets sent so far.
    pub packet_count: u32,
    /// Payload octets sent so far.
    pub octet_count: u32,
    /// Reception report blocks, at most 31.
    pub report_blocks: &'b [ReportBlock],
}

impl SenderReportWriter<'_> {
    /// Length of the packet this writer produces.
    #[must_use]
    pub fn len(&self) -> usize {
        RTCP_HEADER_LEN + SR_SENDER_INFO_LEN + REPORT_BLOCK_LEN * self.report_blocks.len()
    }

    /// Whether the packet would be empty (never: a report has a header).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Write the report at the start of `buf`; returns its length.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, WriteError> {
        let len = self.len();
        check_space(self.report_blocks, len, buf)?;
        let out = &mut buf[..len];
        write_header(out, self.report_blocks.len(), PT_SR, len);
        out[4..8].copy_from_slice(&self.ssrc.0.to_be_bytes());
        out[8..16].copy_from_slice(&self.ntp_time.0.to_be_bytes());
        out[16..20].copy_from_slice(&self.rtp_timestamp.0.to_be_bytes());
        out[20..24].copy_from_slice(&self.packet_count.to_be_bytes());
        out[24..28].copy_from_slice(&self.octet_count.to_be_bytes());
        for (chunk, block) in out[28..]
            .chunks_exact_mut(REPORT_BLOCK_LEN)
            .zip(self.report_blocks)
        {
            block.encode(chunk);
        }
        Ok(len)
    }
}

/// Builds a receiver report (RFC 3550 §6.4.2) into a caller's buffer.
#[derive(Debug, Clone, Copy)]
pub struct ReceiverReportWriter<'b> {
    /// SSRC of the packet's sender.
    pub ssrc: Ssrc,
    /// Reception report blocks, at most 31.
    pub report_blocks: &'b [ReportBlock],
}

impl ReceiverReportWriter<'_> {
    /// Length of the packet this writer produces.
    #[must_use]
    pub fn len(&self) -> usize {
        RTCP_HEADER_LEN + RR_FIXED_LEN + REPORT_BLOCK_LEN * self.report_blocks.len()
    }

    /// Whether the packet would be empty (never: a report has a header).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Write the report at the start of `buf`; returns its length.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, WriteError> {
        let len = self.len();
        check_space(self.report_blocks, len, buf)?;
        let out = &mut buf[..len];
        write_header(out, self.report_blocks.len(), PT_RR, len);
        out[4..8].copy_from_slice(&self.ssrc.0.to_be_bytes());
        for (chunk, block) in out[8..]
            .chunks_exact_mut(REPORT_BLOCK_LEN)
            .zip(self.report_blocks)
        {
            block.encode(chunk);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: u32) -> ReportBlock {
        ReportBlock {
            ssrc: Ssrc(n),
            fraction_lost: 25,
            cumulative_lost: -3,
            extended_highest_seq: 0x0001_0005,
            jitter: 80,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 0x0001_8000,
        }
    }

    fn sr(buf: &mut [u8], blocks: &[ReportBlock]) -> usize {
        SenderReportWriter {
            ssrc: Ssrc(0xaabb_ccdd),
            ntp_time: NtpTime(0x1122_3344_5566_7788),
            rtp_timestamp: RtpTimestamp(16000),
            packet_count: 50,
            octet_count: 8000,
            report_blocks: blocks,
        }
        .write(buf)
        .unwrap()
    }

    #[test]
    fn rtcp_sr_round_trip() {
        let mut buf = [0u8; 128];
        let blocks = [block(1), block(2)];
        let n = sr(&mut buf, &blocks);
        assert_eq!(n, 4 + 24 + 48);
        let compound = RtcpCompound::parse(&buf[..n]).unwrap();
        let packets: Vec<_> = compound.packets().collect();
        assert_eq!(packets.len(), 1);
        let RtcpPacket::SenderReport(sr) = packets[0] else {
            panic!("not an SR: {:?}", packets[0]);
        };
        assert_eq!(sr.ssrc(), Ssrc(0xaabb_ccdd));
        assert_eq!(sr.ntp_time(), NtpTime(0x1122_3344_5566_7788));
        assert_eq!(sr.ntp_time().middle(), 0x3344_5566);
        assert_eq!(sr.rtp_timestamp(), RtpTimestamp(16000));
        assert_eq!(sr.packet_count(), 50);
        assert_eq!(sr.octet_count(), 8000);
        assert_eq!(sr.report_blocks().collect::<Vec<_>>(), blocks);
    }

    #[test]
    fn rtcp_rr_sdes_bye_compound() {
        let mut buf = [0u8; 128];
        let n = ReceiverReportWriter {
            ssrc: Ssrc(9),
            report_blocks: &[block(7)],
        }
        .write(&mut buf)
        .unwrap();
        assert_eq!(n, 32);
        // SDES with one CNAME chunk "ab", padded to a word boundary.
        let sdes = [0x81, PT_SDES, 0, 2, 0, 0, 0, 9, 1, 2, b'a', b'b'];
        buf[n..n + 12].copy_from_slice(&sdes);
        // BYE with padding bit and 4 bytes of padding.
        let bye = [0xa1, PT_BYE, 0, 2, 0, 0, 0, 9, 0, 0, 0, 4];
        buf[n + 12..n + 24].copy_from_slice(&bye);
        let total = n + 24;
        let compound = RtcpCompound::parse(&buf[..total]).unwrap();
        let kinds: Vec<u8> = compound.packets().map(|p| p.packet_type()).collect();
        assert_eq!(kinds, [PT_RR, PT_SDES, PT_BYE]);
        let packets: Vec<_> = compound.packets().collect();
        let RtcpPacket::ReceiverReport(rr) = packets[0] else {
            panic!()
        };
        assert_eq!(rr.ssrc(), Ssrc(9));
        assert_eq!(rr.report_blocks().next(), Some(block(7)));
        let RtcpPacket::Other(bye) = packets[2] else {
            panic!()
        };
        assert_eq!(bye.body, &[0, 0, 0, 9]);
    }

    #[test]
    fn rtcp_errors_by_reason() {
        assert_eq!(
            RtcpCompound::parse(&[]).unwrap_err().reason(),
            DropReason::RtcpTooShort
        );
        let mut buf = [0u8; 64];
        let n = sr(&mut buf, &[]);
        // Trailing garbage shorter than a header.
        assert_eq!(
            RtcpCompound::parse(&buf[..n + 2]).unwrap_err(),
            RtcpError::TooShort { len: 2 }
        );
        assert_eq!(
            RtcpCompound::parse(&buf[..n - 4]).unwrap_err(),
            RtcpError::BadLength {
                declared: 28,
                available: 24
            }
        );
        let mut bad = buf;
        bad[0] = 0x40;
        assert_eq!(
            RtcpCompound::parse(&bad[..n]).unwrap_err().reason(),
            DropReason::RtcpBadVersion
        );
        let mut bad = buf;
        bad[0] |= 1; // claims one report block, which does not fit
        assert_eq!(
            RtcpCompound::parse(&bad[..n]).unwrap_err(),
            RtcpError::BadReportCount { count: 1, len: 24 }
        );
        let mut bad = buf;
        bad[0] |= 0x20;
        bad[n - 1] = 0;
        assert_eq!(
            RtcpCompound::parse(&bad[..n]).unwrap_err().reason(),
            DropReason::RtcpBadPadding
        );
        bad[n - 1] = 25;
        assert!(RtcpCompound::parse(&bad[..n]).is_err());
        // Padding that eats into the sender info makes the report too short.
        bad[n - 1] = 8;
        assert_eq!(
            RtcpCompound::parse(&bad[..n]).unwrap_err().reason(),
            DropReason::RtcpBadReportCount
        );
        // The lazy iterator yields the good packets then one error.
        buf[n..n + 4].copy_from_slice(&[0x80, PT_APP, 0, 5]);
        let items: Vec<_> = iter(&buf[..n + 8]).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
    }

    #[test]
    fn rtcp_writer_errors_and_clamping() {
        let mut small = [0u8; 27];
        let w = SenderReportWriter {
            ssrc: Ssrc(1),
            ntp_time: NtpTime(0),
            rtp_timestamp: RtpTimestamp(0),
            packet_count: 0,
            octet_count: 0,
            report_blocks: &[],
        };
        assert_eq!(
            w.write(&mut small),
            Err(WriteError::BufferTooSmall {
                needed: 28,
                available: 27
            })
        );
        let many = [ReportBlock::default(); 32];
        let mut big = [0u8; 1024];
        assert_eq!(
            ReceiverReportWriter {
                ssrc: Ssrc(1),
                report_blocks: &many
            }
            .write(&mut big),
            Err(WriteError::TooManyReportBlocks { count: 32 })
        );
        let mut b = block(1);
        b.cumulative_lost = -10_000_000;
        let n = ReceiverReportWriter {
            ssrc: Ssrc(1),
            report_blocks: &[b],
        }
        .write(&mut big)
        .unwrap();
        let c = RtcpCompound::parse(&big[..n]).unwrap();
        let Some(RtcpPacket::ReceiverReport(rr)) = c.packets().next() else {
            panic!()
        };
        assert_eq!(
            rr.report_blocks().next().unwrap().cumulative_lost,
            -0x80_0000
        );
    }

    #[test]
    fn rtcp_round_trip_time_from_lsr_dlsr() {
        // RFC 3550 §6.4.1 example: A = 0xb710:8000 (46864.500 s), LSR = 0xb705:2000
        // (46853.125 s), DLSR = 0x0005:4000 (5.250 s) → RTT 6.125 s.
        let arrival = NtpTime(0x0000_b710_8000_0000);
        let rtt = round_trip_time(arrival, 0xb705_2000, 0x0005_4000).unwrap();
        assert_eq!(rtt, Duration::from_millis(6125));
        assert_eq!(round_trip_time(arrival, 0, 0), None);
        assert_eq!(round_trip_time(arrival, 0xb705_2000, 0x0100_0000), None);
        let mut b = block(1);
        b.last_sr = 0xb705_2000;
        b.delay_since_last_sr = 0x0005_4000;
        assert_eq!(b.round_trip_time(arrival), Some(rtt));
    }

    #[test]
    fn rtcp_ntp_and_q16_conversions() {
        let t = NtpTime::from_duration(Duration::new(3_900_000_000, 500_000_000));
        assert_eq!(t.0 >> 32, 3_900_000_000);
        assert_eq!(t.0 & 0xffff_ffff, 0x8000_0000);
        assert_eq!(t.as_duration(), Duration::new(3_900_000_000, 500_000_000));
        assert_eq!(duration_to_q16(Duration::from_millis(1500)), 0x0001_8000);
        assert_eq!(q16_to_duration(0x0001_8000), Duration::from_millis(1500));
        assert_eq!(duration_to_q16(Duration::from_secs(1 << 20)), u32::MAX);
    }

    proptest::proptest! {
        #[test]
        fn rtcp_parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            for packet in iter(&data) {
                match packet {
                    Ok(RtcpPacket::SenderReport(sr)) => {
                        let _ = (sr.ntp_time(), sr.octet_count(), sr.report_blocks().count());
                    }
                    Ok(RtcpPacket::ReceiverReport(rr)) => {
                        let _ = rr.report_blocks().count();
                    }
                    Ok(RtcpPacket::Other(_)) | Err(_) => {}
                }
            }
            if let Ok(c) = RtcpCompound::parse(&data) {
                proptest::prop_assert!(c.packets().count() >= 1);
            }
        }

        #[test]
        fn rtcp_report_block_round_trip(
            ssrc: u32, fraction: u8, lost in -0x80_0000i32..0x80_0000, ehs: u32, jitter: u32, lsr: u32, dlsr: u32,
        ) {
            let b = ReportBlock {
                ssrc: Ssrc(ssrc), fraction_lost: fraction, cumulative_lost: lost,
                extended_highest_seq: ehs, jitter, last_sr: lsr, delay_since_last_sr: dlsr,
            };
            let mut buf = [0u8; 24];
            b.encode(&mut buf);
            proptest::prop_assert_eq!(ReportBlock::decode(&buf), b);
        }
    }
}
