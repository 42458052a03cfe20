//! Per-stream receive accounting: extended sequence numbers, duplicates, reordering and loss.
//!
//! Drive contract: feed every received packet's 16-bit RTP sequence number to
//! [`StreamRx::on_packet`] in arrival order; read the counters at any time. Sequence numbers are
//! extended to 64 bits across wrap-around as in RFC 3550 §A.1: a new number is placed within
//! ±2^15 of the highest one seen so far. Duplicates are recognised within the last
//! [`DUPLICATE_WINDOW`] numbers below the highest; an older packet counts as reordered.

/// An extended (wrap-free) RTP sequence number, RFC 3550 §A.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqNo(pub u64);

/// How far below the highest sequence number duplicates are still recognised.
pub const DUPLICATE_WINDOW: u64 = 64;

/// Where the extended numbering of a stream starts: far enough from zero that packets arriving
/// before the first one (reordered) still get a non-negative number.
const FIRST_CYCLE: u64 = 1 << 32;

/// What one arriving packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Above every number seen so far (in order, or after a gap).
    New(SeqNo),
    /// Below the highest number seen and not seen before: it overtook nothing, it was overtaken.
    Reordered(SeqNo),
    /// Seen before.
    Duplicate(SeqNo),
}

/// Receive counters of one RTP stream.
#[derive(Debug, Clone, Default)]
pub struct StreamRx {
    highest: Option<u64>,
    lowest: u64,
    /// Bit `i` set: `highest - i` was received.
    seen: u64,
    received: u64,
    duplicates: u64,
    reordered: u64,
}

impl StreamRx {
    /// A stream that has received nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accounts one received packet with RTP sequence number `seq`.
    pub fn on_packet(&mut self, seq: u16) -> Arrival {
        self.received += 1;
        let Some(highest) = self.highest else {
            let first = FIRST_CYCLE + u64::from(seq);
            self.highest = Some(first);
            self.lowest = first;
            self.seen = 1;
            return Arrival::New(SeqNo(first));
        };
        let ext = extend(highest, seq);
        self.lowest = self.lowest.min(ext);
        if ext > highest {
            let shift = ext - highest;
            self.seen = if shift >= DUPLICATE_WINDOW {
                0
            } else {
                self.seen << shift
            } | 1;
            self.highest = Some(ext);
            return Arrival::New(SeqNo(ext));
        }
        let back = highest - ext;
        if back < DUPLICATE_WINDOW {
            let bit = 1u64 << back;
            if self.seen & bit != 0 {
                self.duplicates += 1;
                return Arrival::Duplicate(SeqNo(ext));
            }
            self.seen |= bit;
        }
        self.reordered += 1;
        Arrival::Reordered(SeqNo(ext))
    }

    /// Packets received, duplicates included.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets received once (duplicates not counted).
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates
    }

    /// Packets seen more than once.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Packets that arrived after a higher sequence number.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Packets expected from the lowest to the highest sequence number seen (RFC 3550 §A.3).
    pub fn expected(&self) -> u64 {
        self.highest.map_or(0, |h| h - self.lowest + 1)
    }

    /// Packets missing between the lowest and the highest sequence number seen:
    /// `expected - unique`, never negative.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique())
    }

    /// The highest extended sequence number seen.
    pub fn highest(&self) -> Option<SeqNo> {
        self.highest.map(SeqNo)
    }
}

/// Places the 16-bit `seq` within ±2^15 of the extended `highest`.
fn extend(highest: u64, seq: u16) -> u64 {
    let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
    highest.wrapping_add_signed(delta)
}

/// Interarrival jitter of one stream, RFC 3550 §6.4.1 and §A.8: the smoothed mean deviation
/// of the difference in transit time between consecutive packets, here in nanoseconds.
///
/// Feed each packet's arrival time and its send time (or its RTP timestamp converted to
/// nanoseconds: only differences matter) in arrival order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Jitter {
    last_transit: Option<i64>,
    jitter_ns: f64,
}

impl Jitter {
    /// Accounts one packet.
    pub fn on_packet(&mut self, arrival_ns: u64, sent_ns: u64) {
        let transit = arrival_ns.wrapping_sub(sent_ns) as i64;
        if let Some(last) = self.last_transit {
            let d = transit.wrapping_sub(last).unsigned_abs() as f64;
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// The current estimate, microseconds; `None` before two packets.
    pub fn us(&self) -> Option<f64> {
        self.last_transit.map(|_| self.jitter_ns / 1_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(rx: &mut StreamRx, seqs: &[u16]) -> Vec<Arrival> {
        seqs.iter().map(|&s| rx.on_packet(s)).collect()
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut rx = StreamRx::new();
        feed(&mut rx, &(100..200).collect::<Vec<_>>());
        assert_eq!(rx.received(), 100);
        assert_eq!(rx.expected(), 100);
        assert_eq!(rx.lost(), 0);
        assert_eq!((rx.duplicates(), rx.reordered()), (0, 0));
    }

    #[test]
    fn wrap_around_is_continuous() {
        let mut rx = StreamRx::new();
        let seqs: Vec<u16> = (0..20u16).map(|i| 65530u16.wrapping_add(i)).collect();
        let arrivals = feed(&mut rx, &seqs);
        assert!(arrivals.iter().all(|a| matches!(a, Arrival::New(_))));
        assert_eq!(rx.expected(), 20);
        assert_eq!(rx.lost(), 0);
        let first = match arrivals[0] {
            Arrival::New(s) => s.0,
            _ => unreachable!(),
        };
        assert_eq!(rx.highest(), Some(SeqNo(first + 19)));
    }

    #[test]
    fn gaps_count_as_loss_across_wrap() {
        let mut rx = StreamRx::new();
        feed(&mut rx, &[65533, 65534, 1, 2, 5]);
        // 65533..=5 spans 9 numbers; 5 arrived.
        assert_eq!(rx.expected(), 9);
        assert_eq!(rx.lost(), 4);
    }

    #[test]
    fn late_packet_fills_its_gap_and_counts_as_reordered() {
        let mut rx = StreamRx::new();
        let arrivals = feed(&mut rx, &[10, 12, 11, 13]);
        assert!(matches!(arrivals[2], Arrival::Reordered(_)));
        assert_eq!(rx.reordered(), 1);
        assert_eq!(rx.lost(), 0);
        assert_eq!(rx.unique(), 4);
    }

    #[test]
    fn reordering_across_wrap() {
        let mut rx = StreamRx::new();
        feed(&mut rx, &[65534, 0, 65535, 1]);
        assert_eq!(rx.reordered(), 1);
        assert_eq!(rx.expected(), 4);
        assert_eq!(rx.lost(), 0);
    }

    #[test]
    fn packet_before_the_first_one_extends_expected() {
        let mut rx = StreamRx::new();
        feed(&mut rx, &[5, 4, 6]);
        assert_eq!(rx.expected(), 3);
        assert_eq!(rx.reordered(), 1);
        assert_eq!(rx.lost(), 0);
    }

    #[test]
    fn duplicates_are_recognised_in_and_out_of_order() {
        let mut rx = StreamRx::new();
        let arrivals = feed(&mut rx, &[1, 2, 2, 3, 1, 4]);
        assert!(matches!(arrivals[2], Arrival::Duplicate(_)));
        assert!(matches!(arrivals[4], Arrival::Duplicate(_)));
        assert_eq!(rx.duplicates(), 2);
        assert_eq!(rx.received(), 6);
        assert_eq!(rx.unique(), 4);
        assert_eq!(rx.lost(), 0);
    }

    #[test]
    fn very_old_packet_is_reordered_not_duplicate() {
        let mut rx = StreamRx::new();
        feed(&mut rx, &(0..200).collect::<Vec<_>>());
        assert!(matches!(rx.on_packet(10), Arrival::Reordered(_)));
        assert_eq!(rx.duplicates(), 0);
    }

    #[test]
    fn long_gap_clears_duplicate_window() {
        let mut rx = StreamRx::new();
        feed(&mut rx, &[1, 2, 3]);
        rx.on_packet(1000);
        assert!(matches!(rx.on_packet(999), Arrival::Reordered(_)));
        assert!(matches!(rx.on_packet(999), Arrival::Duplicate(_)));
        // 1..=1000 is 1000 numbers; 1, 2, 3, 999 and 1000 arrived.
        assert_eq!(rx.lost(), 995);
    }

    #[test]
    fn jitter_follows_rfc_3550() {
        let mut j = Jitter::default();
        assert_eq!(j.us(), None);
        // Constant transit: no jitter.
        for k in 0..10u64 {
            j.on_packet(k * 20_000_000 + 1_000_000, k * 20_000_000);
        }
        assert_eq!(j.us(), Some(0.0));
        // Transit alternating by 1 ms converges towards 1 ms.
        for k in 10..400u64 {
            j.on_packet(k * 20_000_000 + 1_000_000 * (k % 2), k * 20_000_000);
        }
        assert!((j.us().unwrap() - 1_000.0).abs() < 1.0);
    }
}
