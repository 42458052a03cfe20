//! RTP/RTCP port pairs: the configured range, each worker's slice of it, allocation with a
//! quarantine, and binding a pair of sockets.
//!
//! A pair is an even RTP port and the odd port above it for RTCP (RFC 3550 §11). The range
//! `[min, max]` is cut into whole pairs and [`PortRange::partition`] gives each worker a
//! disjoint, contiguous slice, so workers allocate without talking to each other.
//!
//! [`PortAllocator`] is deterministic: time is an argument. A released pair waits out the
//! quarantine before it is handed out again, so late packets of a finished call never reach the
//! next call on the same port; free pairs are reused oldest-first. [`bind_pair`] binds the two
//! sockets and, when another process holds one of the ports, moves on to the next free pair.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Why a port pair could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// The range holds no even/odd pair.
    #[error(
        "port range {min}-{max} holds no RTP/RTCP pair (needs an even port and the odd one above it)"
    )]
    EmptyRange {
        /// Lowest port.
        min: u16,
        /// Highest port.
        max: u16,
    },
    /// Fewer pairs than workers: some worker would get none.
    #[error("port range {range} has {pairs} RTP/RTCP pairs, fewer than the {workers} workers")]
    TooFewPairs {
        /// The range.
        range: PortRange,
        /// Pairs in it.
        pairs: usize,
        /// Workers to share it.
        workers: usize,
    },
    /// Every pair of the worker's slice is in use or in quarantine.
    #[error("worker {worker}: no free RTP/RTCP port pair in {range} ({quarantined} in quarantine)")]
    Exhausted {
        /// The worker.
        worker: usize,
        /// Its slice of the range.
        range: PortRange,
        /// Pairs released too recently to reuse.
        quarantined: usize,
    },
    /// The port is not an allocated pair of this allocator.
    #[error("port {port} is not an allocated pair of worker {worker}")]
    NotAllocated {
        /// The RTP port given back.
        port: u16,
        /// The worker.
        worker: usize,
    },
    /// Binding failed for a reason other than the port being taken, or every attempt found its
    /// port taken.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address of the last attempt.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An inclusive port range holding at least one RTP/RTCP pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    min: u16,
    max: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl PortRange {
    /// `[min, max]`, refused when it holds no even/odd pair.
    pub fn new(min: u16, max: u16) -> Result<Self, PortError> {
        let range = Self { min, max };
        if min > max || range.pairs() == 0 {
            return Err(PortError::EmptyRange { min, max });
        }
        Ok(range)
    }

    /// Lowest port.
    pub fn min(&self) -> u16 {
        self.min
    }

    /// Highest port.
    pub fn max(&self) -> u16 {
        self.max
    }

    /// The first even port in the range (as u32: `min` may be 65535).
    fn first_rtp(&self) -> u32 {
        u32::from(self.min).next_multiple_of(2)
    }

    /// Whole RTP/RTCP pairs in the range.
    pub fn pairs(&self) -> usize {
        let first = self.first_rtp();
        let max = u32::from(self.max);
        if self.min > self.max || first + 1 > max {
            return 0;
        }
        // `max - first + 1` ports, halved and rounded down.
        (max - first).div_ceil(2) as usize
    }

    /// The `i`-th pair of the range.
    fn pair(&self, i: usize) -> PortPair {
        // In range: `i < pairs()`, so the port is at most `max - 1`.
        PortPair {
            rtp: (self.first_rtp() + 2 * i as u32) as u16,
        }
    }

    /// Cuts the range into `workers` disjoint slices of whole pairs, sizes differing by at most
    /// one pair; slice `i` belongs to worker `i`.
    pub fn partition(&self, workers: usize) -> Result<Vec<PortRange>, PortError> {
        let pairs = self.pairs();
        if workers == 0 || pairs < workers {
            return Err(PortError::TooFewPairs {
                range: *self,
                pairs,
                workers,
            });
        }
        Ok((0..workers)
            .map(|w| {
                let start = w * pairs / workers;
                let end = (w + 1) * pairs / workers;
                PortRange {
                    min: self.pair(start).rtp,
                    max: self.pair(end - 1).rtcp(),
                }
            })
            .collect())
    }
}

/// An RTP port (even) and its RTCP port (the odd one above).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPair {
    rtp: u16,
}

impl PortPair {
    /// The pair whose RTP port is `rtp`; `None` unless `rtp` is even (and so below 65535).
    pub fn from_rtp(rtp: u16) -> Option<Self> {
        (rtp % 2 == 0).then_some(Self { rtp })
    }

    /// The RTP port.
    pub fn rtp(self) -> u16 {
        self.rtp
    }

    /// The RTCP port, `rtp + 1`.
    pub fn rtcp(self) -> u16 {
        self.rtp + 1
    }
}

/// One worker's pairs: free (oldest-released first), in use, or in quarantine.
///
/// Drive it with the worker's clock: `allocate(now)` and `release(pair, now)`. Quarantined
/// pairs become free once `now` reaches their release time plus the quarantine.
#[derive(Debug)]
pub struct PortAllocator {
    worker: usize,
    range: PortRange,
    quarantine: Duration,
    free: VecDeque<PortPair>,
    /// Released pairs with the time they may be reused; ordered, as the quarantine is fixed.
    quarantined: VecDeque<(Instant, PortPair)>,
    in_use: Vec<bool>,
    in_use_count: usize,
}

impl PortAllocator {
    /// An allocator over `range` (normally the worker's slice from
    /// [`PortRange::partition`]), with every pair free.
    pub fn new(worker: usize, range: PortRange, quarantine: Duration) -> Self {
        let pairs = range.pairs();
        Self {
            worker,
            range,
            quarantine,
            free: (0..pairs).map(|i| range.pair(i)).collect(),
            quarantined: VecDeque::new(),
            in_use: vec![false; pairs],
            in_use_count: 0,
        }
    }

    /// The worker's slice.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Pairs handed out and not released.
    pub fn in_use(&self) -> usize {
        self.in_use_count
    }

    /// Pairs waiting out the quarantine (as of the last call that took a time).
    pub fn quarantined(&self) -> usize {
        self.quarantined.len()
    }

    /// Pairs that `allocate(now)` could hand out.
    pub fn available(&self, now: Instant) -> usize {
        self.free.len()
            + self
                .quarantined
                .iter()
                .take_while(|(ready, _)| *ready <= now)
                .count()
    }

    fn index(&self, pair: PortPair) -> Option<usize> {
        let offset = u32::from(pair.rtp).checked_sub(self.range.first_rtp())?;
        let i = (offset / 2) as usize;
        (offset % 2 == 0 && i < self.in_use.len()).then_some(i)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(ready, pair)) = self.quarantined.front() {
            if ready > now {
                break;
            }
            self.quarantined.pop_front();
            self.free.push_back(pair);
        }
    }

    /// Hands out the free pair released longest ago.
    pub fn allocate(&mut self, now: Instant) -> Result<PortPair, PortError> {
        self.expire(now);
        let Some(pair) = self.free.pop_front() else {
            return Err(PortError::Exhausted {
                worker: self.worker,
                range: self.range,
                quarantined: self.quarantined.len(),
            });
        };
        if let Some(i) = self.index(pair) {
            self.in_use[i] = true;
        }
        self.in_use_count += 1;
        Ok(pair)
    }

    /// Gives a pair back; it is reusable from `now + quarantine`.
    pub fn release(&mut self, pair: PortPair, now: Instant) -> Result<(), PortError> {
        match self.index(pair) {
            Some(i) if self.in_use[i] => {
                self.in_use[i] = false;
                self.in_use_count -= 1;
                self.quarantined.push_back((now + self.quarantine, pair));
                Ok(())
            }
            _ => Err(PortError::NotAllocated {
                port: pair.rtp,
                worker: self.worker,
            }),
        }
    }
}

/// Socket settings for media ports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// `SO_RCVBUF` request (the kernel doubles it and caps it at `net.core.rmem_max`).
    /// Default 256 KiB: a few hundred RTP packets of slack per port.
    pub recv_buffer: usize,
    /// `SO_SNDBUF` request. Default 256 KiB.
    pub send_buffer: usize,
    /// Pairs tried by [`bind_pair`] before giving up when ports are taken. Default 16.
    pub bind_attempts: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            recv_buffer: 256 * 1024,
            send_buffer: 256 * 1024,
            bind_attempts: 16,
        }
    }
}

/// A bound RTP/RTCP socket pair, ready to [`register`](super::Driver::register).
#[derive(Debug)]
pub struct BoundPair {
    /// The ports.
    pub pair: PortPair,
    /// The RTP socket.
    pub rtp: UdpSocket,
    /// The RTCP socket.
    pub rtcp: UdpSocket,
}

/// Binds one non-blocking UDP socket on `addr` with `options`' buffer sizes (IPv6 sockets are
/// IPv6-only).
pub fn bind_udp(addr: SocketAddr, options: &SocketOptions) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Buffer sizes are best effort: a capped size is not an error.
    let _ = socket.set_recv_buffer_size(options.recv_buffer);
    let _ = socket.set_send_buffer_size(options.send_buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Allocates a pair from `ports` and binds both sockets on `ip`. A port held by another
/// process sends its pair to quarantine and the next pair is tried, up to
/// [`SocketOptions::bind_attempts`] pairs.
pub fn bind_pair(
    ports: &mut PortAllocator,
    ip: IpAddr,
    now: Instant,
    options: &SocketOptions,
) -> Result<BoundPair, PortError> {
    let mut last: Option<PortError> = None;
    for _ in 0..options.bind_attempts.max(1) {
        let pair = ports.allocate(now)?;
        let bound = bind_udp(SocketAddr::new(ip, pair.rtp()), options)
            .map_err(|e| (SocketAddr::new(ip, pair.rtp()), e))
            .and_then(|rtp| {
                bind_udp(SocketAddr::new(ip, pair.rtcp()), options)
                    .map(|rtcp| (rtp, rtcp))
                    .map_err(|e| (SocketAddr::new(ip, pair.rtcp()), e))
            });
        match bound {
            Ok((rtp, rtcp)) => return Ok(BoundPair { pair, rtp, rtcp }),
            Err((addr, source)) => {
                // The pair was allocated just above, so releasing it cannot fail.
                let _ = ports.release(pair, now);
                let taken = source.kind() == io::ErrorKind::AddrInUse;
                let error = PortError::Bind { addr, source };
                if !taken {
                    return Err(error);
                }
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or(PortError::Exhausted {
        worker: ports.worker,
        range: ports.range,
        quarantined: ports.quarantined.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Duration::from_secs(60);

    #[test]
    fn ranges_count_whole_pairs() {
        assert_eq!(PortRange::new(30000, 30009).unwrap().pairs(), 5);
        assert_eq!(PortRange::new(30001, 30010).unwrap().pairs(), 4);
        assert_eq!(PortRange::new(65534, 65535).unwrap().pairs(), 1);
        assert!(matches!(
            PortRange::new(30001, 30002),
            Err(PortError::EmptyRange { .. })
        ));
        assert!(matches!(
            PortRange::new(65535, 65535),
            Err(PortError::EmptyRange { .. })
        ));
        assert!(matches!(
            PortRange::new(40000, 30000),
            Err(PortError::EmptyRange { .. })
        ));
    }

    #[test]
    fn partition_is_disjoint_and_covers_every_pair() {
        let range = PortRange::new(30001, 30100).unwrap();
        let slices = range.partition(3).unwrap();
        let mut all: Vec<PortPair> = Vec::new();
        for s in &slices {
            assert_eq!(s.min() % 2, 0);
            assert_eq!(s.max() % 2, 1);
            all.extend((0..s.pairs()).map(|i| s.pair(i)));
        }
        let expected: Vec<PortPair> = (0..range.pairs()).map(|i| range.pair(i)).collect();
        assert_eq!(all, expected);
        let sizes: Vec<usize> = slices.iter().map(PortRange::pairs).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        assert!(matches!(
            range.partition(range.pairs() + 1),
            Err(PortError::TooFewPairs { .. })
        ));
        assert!(matches!(
            range.partition(0),
            Err(PortError::TooFewPairs { .. })
        ));
    }

    #[test]
    fn released_pairs_wait_out_the_quarantine() {
        let t0 = Instant::now();
        let range = PortRange::new(30000, 30003).unwrap();
        let mut ports = PortAllocator::new(1, range, Q);
        let a = ports.allocate(t0).unwrap();
        let b = ports.allocate(t0).unwrap();
        assert_eq!((a.rtp(), a.rtcp(), b.rtp()), (30000, 30001, 30002));
        match ports.allocate(t0) {
            Err(PortError::Exhausted {
                worker: 1,
                range: r,
                quarantined: 0,
            }) => assert_eq!(r, range),
            other => panic!("expected exhaustion, got {other:?}"),
        }
        ports.release(a, t0).unwrap();
        assert_eq!(ports.available(t0 + Q - Duration::from_millis(1)), 0);
        assert!(matches!(
            ports.allocate(t0 + Q - Duration::from_millis(1)),
            Err(PortError::Exhausted { quarantined: 1, .. })
        ));
        assert_eq!(ports.allocate(t0 + Q).unwrap(), a);
        assert_eq!(ports.in_use(), 2);
    }

    #[test]
    fn free_pairs_are_reused_oldest_first() {
        let t0 = Instant::now();
        let mut ports =
            PortAllocator::new(0, PortRange::new(30000, 30007).unwrap(), Duration::ZERO);
        let first = ports.allocate(t0).unwrap();
        ports.release(first, t0).unwrap();
        // The three never-used pairs come before the one just released.
        let next: Vec<u16> = (0..4).map(|_| ports.allocate(t0).unwrap().rtp()).collect();
        assert_eq!(next, [30002, 30004, 30006, 30000]);
    }

    #[test]
    fn double_or_foreign_release_is_refused() {
        let t0 = Instant::now();
        let mut ports = PortAllocator::new(0, PortRange::new(30000, 30003).unwrap(), Q);
        let a = ports.allocate(t0).unwrap();
        ports.release(a, t0).unwrap();
        assert!(matches!(
            ports.release(a, t0),
            Err(PortError::NotAllocated { port: 30000, .. })
        ));
        assert!(
            ports
                .release(PortPair::from_rtp(40000).unwrap(), t0)
                .is_err()
        );
        assert_eq!(PortPair::from_rtp(30001), None);
        assert!(ports.release(PortPair { rtp: 29998 }, t0).is_err());
        assert_eq!(ports.in_use(), 0);
    }

    #[test]
    fn bind_pair_skips_ports_taken_by_others() {
        // Find two adjacent free pairs by binding an ephemeral port and probing around it.
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = (probe.local_addr().unwrap().port() & !1)
            .saturating_sub(64)
            .max(1024);
        drop(probe);
        let range = PortRange::new(base, base + 63).unwrap();
        let mut ports = PortAllocator::new(0, range, Q);
        let t0 = Instant::now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // Someone else holds the first pair's RTCP port (if it is free for us to take).
        let squatter = UdpSocket::bind((ip, base + 1)).ok();
        let bound = bind_pair(&mut ports, ip, t0, &SocketOptions::default()).unwrap();
        if squatter.is_some() {
            assert_ne!(bound.pair.rtp(), base);
            assert!(ports.quarantined() >= 1);
        }
        assert_eq!(bound.rtp.local_addr().unwrap().port(), bound.pair.rtp());
        assert_eq!(bound.rtcp.local_addr().unwrap().port(), bound.pair.rtcp());
    }
}
