//! The runtime: the only place in the engine that touches sockets.
//!
//! A media worker owns one [`Driver`]. The driver owns the worker's UDP sockets and moves
//! datagrams in batches; the worker sees only `(PortToken, remote address, bytes)`, never a
//! socket. Two drivers implement the same contract:
//!
//! - [`UringDriver`]: one io_uring per worker, a multishot `recvmsg` armed on every socket, all
//!   of them filling one provided-buffer ring; sends are `sendto`-style submissions batched per
//!   loop turn. A loop turn costs one `io_uring_enter`, whatever the number of sockets and
//!   packets.
//! - [`EpollDriver`]: level-triggered epoll over the sockets, each ready socket drained with
//!   `recvmmsg`; queued sends leave with one `sendmmsg` per source socket.
//!
//! A driver that captures a whole port range (AF_XDP, DPDK) fits the same contract: the
//! [`PortToken`] names a local port, not a file descriptor.
//!
//! # Drive contract
//!
//! ```text
//! let mut driver = rt::open_driver(DriverKind::Auto, &DriverOptions::default())?; // on the worker thread
//! let waker = driver.waker();                // hand clones to the control threads
//! let token = driver.register(rtp_socket)?;  // the driver owns the socket from now on
//! loop {
//!     // Hands queued sends to the kernel, waits up to `timeout` for datagrams or a wake-up,
//!     // then calls `on_recv` once per datagram. The callback may queue sends.
//!     driver.poll(Some(until_next_timer), |dgram, tx| {
//!         let _ = tx.push(peer_token, peer_addr, dgram.data);
//!     })?;
//!     // commands, timers: may `register`, `deregister` and `queue_send` ...
//!     driver.flush()?; // optional: sends now instead of at the start of the next `poll`
//! }
//! ```
//!
//! - [`Driver::poll`] first submits every queued send, then blocks until something happens
//!   (a datagram, a wake-up, an internal completion) or `timeout` passes, then delivers every
//!   datagram it has. It may return early with zero datagrams; callers loop.
//! - Datagrams are borrowed from the driver's receive buffers ([`RecvDatagram::data`]) and the
//!   buffer goes back to the kernel when the callback returns: copy out what must outlive it.
//! - Sends are copied into a bounded pool of send slots ([`SendQueue`]). A full pool is a counted
//!   drop ([`SendError::QueueFull`]), never a block or an allocation.
//! - [`Waker::wake`] from any thread makes a blocked `poll` return promptly.
//! - The driver is `!Send`: open it on the thread that polls it (the io_uring driver ties its
//!   ring to that thread).
//!
//! Nothing on the receive or send path allocates or takes a lock (`tests/rt_no_alloc.rs` checks
//! it with a counting allocator). Errors that concern one
//! datagram (truncation, a refused send, a full pool) are counted in [`DriverStats`], never
//! logged per packet.
//!
//! [`ports`] hands out RTP/RTCP port pairs from each worker's slice of the range and binds them;
//! [`pin_to_core`] pins a worker thread.

mod addr;
mod epoll;
pub mod ports;
mod tx;
mod uring;
mod wake;

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

pub use epoll::EpollDriver;
pub use tx::{SendError, SendQueue};
pub use uring::UringDriver;
pub use wake::Waker;

/// A socket registered with a [`Driver`]: the worker's name for one local port.
///
/// Tokens are dense: [`PortToken::index`] is small and is reused after the port is deregistered,
/// so a worker can keep per-port state in a `Vec` indexed by it. The generation makes a stale
/// token (one kept after `deregister`) harmless: the driver refuses it and drops sends to it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortToken {
    index: u32,
    generation: u32,
}

impl PortToken {
    /// Generations are kept to 24 bits so a token fits in an io_uring `user_data` next to an
    /// operation code.
    pub(crate) const GENERATION_MASK: u32 = 0x00FF_FFFF;

    pub(crate) fn new(index: u32, generation: u32) -> Self {
        Self {
            index,
            generation: generation & Self::GENERATION_MASK,
        }
    }

    /// The dense slot index of this port, unique among the ports registered at the same time.
    pub fn index(self) -> usize {
        self.index as usize
    }

    pub(crate) fn slot(self) -> u32 {
        self.index
    }

    pub(crate) fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Debug for PortToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortToken({}#{})", self.index, self.generation)
    }
}

/// One received datagram, lent to the [`Driver::poll`] callback.
#[derive(Debug)]
#[non_exhaustive]
pub struct RecvDatagram<'a> {
    /// The registered port it arrived on.
    pub token: PortToken,
    /// The sender.
    pub src: SocketAddr,
    /// The payload, in the driver's receive buffer. Mutable so a worker can rewrite headers in
    /// place; the buffer is reused as soon as the callback returns.
    pub data: &'a mut [u8],
}

/// Which I/O driver to use; the config's `driver = "auto" | "io_uring" | "epoll"`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DriverKind {
    /// io_uring when the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring only; opening fails where the kernel or a seccomp profile refuses it.
    IoUring,
    /// epoll with `recvmmsg`/`sendmmsg`.
    Epoll,
}

impl DriverKind {
    /// The config spelling: `auto`, `io_uring` or `epoll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A driver name that is not `auto`, `io_uring` or `epoll`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown I/O driver {name:?}: expected auto, io_uring or epoll")]
pub struct UnknownDriverKind {
    /// The rejected name.
    pub name: String,
}

impl FromStr for DriverKind {
    type Err = UnknownDriverKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(Self::IoUring),
            "epoll" => Ok(Self::Epoll),
            other => Err(UnknownDriverKind {
                name: other.to_owned(),
            }),
        }
    }
}

/// Sizes of a driver's fixed pools. All memory is allocated when the driver opens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverOptions {
    /// The largest datagram delivered or sent, in bytes. Larger incoming datagrams are dropped
    /// and counted in [`DriverStats::truncated`]; larger sends are refused with
    /// [`SendError::TooLarge`]. Default 2000 (an Ethernet-MTU RTP packet with room to spare).
    pub max_datagram: usize,
    /// Receive buffers shared by all sockets of an io_uring driver (a power of two, at most
    /// 32768). Default 4096.
    pub recv_buffers: u16,
    /// Datagrams read per `recvmmsg` call by the epoll driver. Default 32.
    pub recv_batch: usize,
    /// Send slots: datagrams queued and not yet handed to the kernel (plus, with io_uring,
    /// handed but not yet completed). Default 4096.
    pub send_slots: usize,
    /// Submission queue entries of an io_uring driver (a power of two). Default 1024.
    pub ring_entries: u32,
    /// io_uring wake-up coalescing under load: when the previous `poll` delivered more than one
    /// datagram, the next wait ends after [`coalesce_packets`](Self::coalesce_packets)
    /// completions or after this long, whichever comes first (never later than the caller's
    /// timeout). Fewer wake-ups (and context switches) per packet at the price of at most this
    /// much added latency, and only while traffic is heavy. Zero disables it. Default 200 µs.
    pub coalesce_wait: Duration,
    /// See [`coalesce_wait`](Self::coalesce_wait). Default 16.
    pub coalesce_packets: u32,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            max_datagram: 2000,
            recv_buffers: 4096,
            recv_batch: 32,
            send_slots: 4096,
            ring_entries: 1024,
            coalesce_wait: Duration::from_micros(200),
            coalesce_packets: 16,
        }
    }
}

impl DriverOptions {
    /// Checks the sizes, returning `InvalidInput` with the reason.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
        if self.max_datagram == 0 || self.max_datagram > 65_535 {
            return bad("max_datagram must be within 1..=65535");
        }
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32_768 {
            return bad("recv_buffers must be a power of two no larger than 32768");
        }
        if self.recv_batch == 0 || self.recv_batch > 1024 {
            return bad("recv_batch must be within 1..=1024");
        }
        if self.send_slots == 0 || self.send_slots > 1 << 20 {
            return bad("send_slots must be within 1..=1048576");
        }
        if !self.ring_entries.is_power_of_two() || self.ring_entries > 32_768 {
            return bad("ring_entries must be a power of two no larger than 32768");
        }
        if self.coalesce_wait > Duration::from_millis(10) {
            return bad("coalesce_wait must be at most 10 ms");
        }
        if self.coalesce_packets == 0 || self.coalesce_packets > 4096 {
            return bad("coalesce_packets must be within 1..=4096");
        }
        Ok(())
    }
}

/// Counters of one driver since it opened. Plain numbers: the worker reads them with
/// [`Driver::stats`] and publishes them however it publishes its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Datagrams delivered to the callback.
    pub received: u64,
    /// Payload bytes delivered.
    pub received_bytes: u64,
    /// Datagrams larger than [`DriverOptions::max_datagram`], dropped.
    pub truncated: u64,
    /// Receive errors reported by the kernel (other than "no buffer" and "try again").
    pub recv_errors: u64,
    /// io_uring: the provided-buffer ring ran dry; the socket's receive was re-armed.
    pub recv_no_buffers: u64,
    /// io_uring: a socket's multishot receive kept failing and was given up.
    pub recv_abandoned: u64,
    /// Datagrams the kernel accepted for sending. io_uring counts a send (and its errors) when
    /// its completion is reaped, during the `poll` after the one that submitted it.
    pub sent: u64,
    /// Payload bytes the kernel accepted.
    pub sent_bytes: u64,
    /// Sends the kernel refused (unreachable, address family mismatch, ...).
    pub send_errors: u64,
    /// Sends refused because the socket's send buffer was full (`EAGAIN`, `ENOBUFS`).
    pub send_would_block: u64,
    /// Sends refused because every send slot was in use.
    pub send_queue_full: u64,
    /// Sends refused because they exceeded [`DriverOptions::max_datagram`].
    pub send_too_large: u64,
    /// Queued sends dropped because their port was deregistered before they left.
    pub send_stale_token: u64,
    /// Wake-ups received through the [`Waker`].
    pub wakeups: u64,
    /// Calls to [`Driver::poll`].
    pub polls: u64,
    /// Ports registered now.
    pub ports: u64,
}

/// The batch I/O contract between a media worker and its sockets. See the [module docs](self).
pub trait Driver {
    /// Which driver this is: [`DriverKind::IoUring`] or [`DriverKind::Epoll`].
    fn kind(&self) -> DriverKind;

    /// Takes ownership of a bound UDP socket (made non-blocking here) and starts receiving on
    /// it; datagrams arrive from the next [`poll`](Self::poll).
    fn register(&mut self, socket: UdpSocket) -> io::Result<PortToken>;

    /// Stops delivery for `token` at once and closes its socket (io_uring: once the kernel has
    /// confirmed the cancellation, normally during the next `poll`). Sends still queued for it
    /// are dropped and counted. A stale or unknown token is `NotFound`.
    fn deregister(&mut self, token: PortToken) -> io::Result<()>;

    /// Stops delivery for `token` at once, like [`deregister`](Self::deregister), but hands
    /// the socket back instead of closing it, so another driver (another worker) can
    /// register it with the same local port. Datagrams the kernel queued on the socket and
    /// not yet delivered stay queued for its next owner. Sends still queued for `token` are
    /// dropped and counted. A stale or unknown token is `NotFound`.
    ///
    /// io_uring: the driver keeps its own descriptor until the kernel has confirmed the
    /// cancellation of the socket's multishot receive and returns a duplicate (`dup`) of it:
    /// the same socket, which stays open as long as either descriptor does.
    fn take(&mut self, token: PortToken) -> io::Result<UdpSocket>;

    /// The local address of a registered port.
    fn local_addr(&self, token: PortToken) -> Option<SocketAddr>;

    /// Submits queued sends, waits up to `timeout` (`None`: until something happens) and calls
    /// `on_recv` for every received datagram, lending it the send queue. Returns the number of
    /// datagrams delivered; zero after a timeout, a wake-up or an interrupted wait.
    fn poll<F>(&mut self, timeout: Option<Duration>, on_recv: F) -> io::Result<usize>
    where
        F: FnMut(RecvDatagram<'_>, &mut SendQueue);

    /// The send queue, for sends that do not answer a received datagram (timers, mixing).
    fn send_queue(&mut self) -> &mut SendQueue;

    /// Copies `data` into a send slot, to leave from `token`'s port to `dst` at the next
    /// [`flush`](Self::flush) or [`poll`](Self::poll).
    fn queue_send(
        &mut self,
        token: PortToken,
        dst: SocketAddr,
        data: &[u8],
    ) -> Result<(), SendError> {
        self.send_queue().push(token, dst, data)
    }

    /// Hands every queued send to the kernel now (io_uring: one submission; epoll: one
    /// `sendmmsg` per source socket).
    fn flush(&mut self) -> io::Result<()>;

    /// A handle that interrupts a blocked [`poll`](Self::poll) from any thread.
    fn waker(&self) -> Waker;

    /// Counters since the driver opened.
    fn stats(&self) -> DriverStats;
}

/// Either driver, chosen at run time; dispatch is one `match` per call, and the per-datagram
/// callback is monomorphised inside each arm.
#[derive(Debug)]
// One per worker, created once and never moved on the packet path: boxing would only add an
// indirection per call.
#[allow(clippy::large_enum_variant)]
pub enum AnyDriver {
    /// The io_uring driver.
    IoUring(UringDriver),
    /// The epoll driver.
    Epoll(EpollDriver),
}

macro_rules! dispatch {
    ($self:expr, $d:ident => $body:expr) => {
        match $self {
            AnyDriver::IoUring($d) => $body,
            AnyDriver::Epoll($d) => $body,
        }
    };
}

impl Driver for AnyDriver {
    fn kind(&self) -> DriverKind {
        dispatch!(self, d => d.kind())
    }

    fn register(&mut self, socket: UdpSocket) -> io::Result<PortToken> {
        dispatch!(self, d => d.register(socket))
    }

    fn deregister(&mut self, token: PortToken) -> io::Result<()> {
        dispatch!(self, d => d.deregister(token))
    }

    fn take(&mut self, token: PortToken) -> io::Result<UdpSocket> {
        dispatch!(self, d => d.take(token))
    }

    fn local_addr(&self, token: PortToken) -> Option<SocketAddr> {
        dispatch!(self, d => d.local_addr(token))
    }

    fn poll<F>(&mut self, timeout: Option<Duration>, on_recv: F) -> io::Result<usize>
    where
        F: FnMut(RecvDatagram<'_>, &mut SendQueue),
    {
        dispatch!(self, d => d.poll(timeout, on_recv))
    }

    fn send_queue(&mut self) -> &mut SendQueue {
        dispatch!(self, d => d.send_queue())
    }

    fn flush(&mut self) -> io::Result<()> {
        dispatch!(self, d => d.flush())
    }

    fn waker(&self) -> Waker {
        dispatch!(self, d => d.waker())
    }

    fn stats(&self) -> DriverStats {
        dispatch!(self, d => d.stats())
    }
}

/// Opens the driver `kind` names. `Auto` tries io_uring and falls back to epoll when the kernel
/// or a seccomp profile refuses it; the choice and the reason are logged.
///
/// Call it on the thread that will poll the driver.
pub fn open_driver(kind: DriverKind, options: &DriverOptions) -> io::Result<AnyDriver> {
    options.validate()?;
    match kind {
        DriverKind::IoUring => {
            let driver = UringDriver::new(options)?;
            tracing::info!(driver = "io_uring", "I/O driver opened");
            Ok(AnyDriver::IoUring(driver))
        }
        DriverKind::Epoll => {
            let driver = EpollDriver::new(options)?;
            tracing::info!(driver = "epoll", "I/O driver opened");
            Ok(AnyDriver::Epoll(driver))
        }
        DriverKind::Auto => match UringDriver::new(options) {
            Ok(driver) => {
                tracing::info!(driver = "io_uring", "I/O driver opened (auto)");
                Ok(AnyDriver::IoUring(driver))
            }
            Err(error) => {
                let driver = EpollDriver::new(options)?;
                tracing::warn!(driver = "epoll", %error, "io_uring unavailable; I/O driver fell back to epoll");
                Ok(AnyDriver::Epoll(driver))
            }
        },
    }
}

/// Pins the calling thread to the `index`-th core (modulo the number of cores). Returns whether
/// it worked; a failure is logged and otherwise ignored (the worker still runs, unpinned).
pub fn pin_to_core(index: usize) -> bool {
    let Some(cores) = core_affinity::get_core_ids().filter(|c| !c.is_empty()) else {
        tracing::warn!(index, "cannot list cores; worker thread left unpinned");
        return false;
    };
    let core = cores[index % cores.len()];
    let pinned = core_affinity::set_for_current(core);
    if pinned {
        tracing::debug!(index, core = core.id, "worker thread pinned");
    } else {
        tracing::warn!(
            index,
            core = core.id,
            "pinning failed; worker thread left unpinned"
        );
    }
    pinned
}

/// Checks [`Driver::take`] the same way for every driver: the taken socket keeps its port, its
/// token goes stale at once, a datagram sent while it moves waits in the kernel for its next
/// owner, and the old driver delivers nothing more.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
pub(crate) fn check_take_hands_a_socket_over<D: Driver>(mut old: D, mut new: D) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = socket.local_addr().unwrap();
    let token = old.register(socket).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = old.take(token).unwrap();
    assert_eq!(taken.local_addr().unwrap(), local);
    assert!(old.take(token).is_err(), "a taken token is stale");
    assert!(old.local_addr(token).is_none());
    // Sent while the socket moves: queued in the kernel for its next owner.
    peer.send_to(b"while moving", local).unwrap();
    let moved = new.register(taken).unwrap();
    assert_eq!(new.local_addr(moved), Some(local));
    peer.send_to(b"after", local).unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        // The old driver reaps its cancellation and must deliver nothing.
        old.poll(Some(Duration::from_millis(1)), |_, _| {
            panic!("delivered after take")
        })
        .unwrap();
        new.poll(Some(Duration::from_millis(10)), |d, _| {
            got.push(d.data.to_vec())
        })
        .unwrap();
        if got.len() == 2 {
            break;
        }
    }
    assert_eq!(got, vec![b"while moving".to_vec(), b"after".to_vec()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_kind_round_trips_its_config_spelling() {
        for kind in [DriverKind::Auto, DriverKind::IoUring, DriverKind::Epoll] {
            assert_eq!(kind.as_str().parse::<DriverKind>(), Ok(kind));
        }
        assert!("kqueue".parse::<DriverKind>().is_err());
    }

    #[test]
    fn default_options_are_valid_and_bad_ones_are_not() {
        assert!(DriverOptions::default().validate().is_ok());
        let bad = DriverOptions {
            recv_buffers: 1000,
            ..DriverOptions::default()
        };
        assert!(bad.validate().is_err());
        let bad = DriverOptions {
            max_datagram: 0,
            ..DriverOptions::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn token_generation_wraps_within_its_mask() {
        let t = PortToken::new(7, PortToken::GENERATION_MASK + 2);
        assert_eq!(t.index(), 7);
        assert_eq!(t.generation(), 1);
    }
}
