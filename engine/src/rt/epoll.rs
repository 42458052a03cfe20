//! The portable driver: level-triggered epoll, `recvmmsg` and `sendmmsg`.
//!
//! Each ready socket is read in batches of [`DriverOptions::recv_batch`] datagrams until a batch
//! comes back short (the socket is then empty; level triggering reports it again if more
//! arrives), at most [`MAX_BATCHES_PER_WAKE`] batches per socket per poll so one flooded port
//! cannot starve the others. Queued sends are grouped by source socket, order kept within a
//! socket, and leave with one `sendmmsg` per socket (per [`SEND_BATCH`] datagrams).
//!
//! The `mmsghdr`/`iovec` arrays point into buffers allocated once, when the driver opens.

#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::time::Duration;

use super::addr::{self, NAME_LEN, RawAddr};
use super::{
    Driver, DriverKind, DriverOptions, DriverStats, PortToken, RecvDatagram, SendQueue, Waker,
};

/// Upper bound on `recvmmsg` batches read from one socket in one poll.
const MAX_BATCHES_PER_WAKE: usize = 4;
/// Datagrams per `sendmmsg` call.
const SEND_BATCH: usize = 64;
/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// The epoll key of the waker's eventfd (no port token packs to it).
const WAKE_KEY: u64 = u64::MAX;

fn key(token: PortToken) -> u64 {
    (u64::from(token.generation()) << 32) | u64::from(token.slot())
}

fn token_of(key: u64) -> PortToken {
    PortToken::new(key as u32, (key >> 32) as u32)
}

/// A heap buffer only ever accessed through its raw pointer, so slices handed to the callback
/// and the pointers the kernel writes through derive from the same place.
struct RawBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl RawBuf {
    fn zeroed(len: usize) -> Self {
        let boxed: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        let ptr = NonNull::from(Box::leak(boxed)).cast::<u8>();
        Self { ptr, len }
    }

    fn slice_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.len, "RawBuf slice out of bounds");
        // SAFETY: in bounds (checked above); `&mut self` makes the slice the only live borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        let slice = ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: `ptr`/`len` came from `Box::leak` of a boxed slice of exactly this length.
        drop(unsafe { Box::from_raw(slice) });
    }
}

struct Slot {
    socket: Option<UdpSocket>,
    fd: RawFd,
    generation: u32,
    local: Option<SocketAddr>,
}

/// The portable driver: level-triggered epoll over the registered sockets, each ready socket
/// drained with `recvmmsg`, queued sends grouped by source socket into one `sendmmsg` each.
/// Implements the [`Driver`] contract; open it with [`open_driver`](super::open_driver).
pub struct EpollDriver {
    epfd: OwnedFd,
    waker: Waker,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    events: Box<[libc::epoll_event]>,
    batch: usize,
    max_datagram: usize,
    rx_data: RawBuf,
    rx_names: Box<[RawAddr]>,
    /// Only referenced through `rx_msgs`.
    _rx_iov: Box<[libc::iovec]>,
    rx_msgs: Box<[libc::mmsghdr]>,
    tx: SendQueue,
    tx_keys: Vec<u64>,
    tx_iov: Box<[libc::iovec]>,
    tx_msgs: Box<[libc::mmsghdr]>,
    stats: DriverStats,
    /// Like the io_uring driver, it stays on the thread that opened it.
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for EpollDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpollDriver")
            .field("epfd", &self.epfd)
            .field("ports", &self.stats.ports)
            .field("tx", &self.tx)
            .finish_non_exhaustive()
    }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a plain C struct of integers and pointers; all-zero is valid (null
    // pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

impl EpollDriver {
    /// Opens an epoll instance and allocates the receive batch and the send pool.
    pub fn new(options: &DriverOptions) -> io::Result<Self> {
        options.validate()?;
        // SAFETY: no pointer arguments; the result is checked.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let waker = Waker::new()?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_KEY,
        };
        // SAFETY: both descriptors are open; `ev` is a live local the kernel copies.
        if unsafe {
            libc::epoll_ctl(
                epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                waker.raw_fd(),
                &mut ev,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }

        let batch = options.recv_batch;
        let max = options.max_datagram;
        let mut rx_data = RawBuf::zeroed(batch * max);
        let mut rx_names = vec![RawAddr::ZERO; batch].into_boxed_slice();
        let mut rx_iov = vec![
            libc::iovec {
                iov_base: ptr::null_mut(),
                iov_len: 0
            };
            batch
        ]
        .into_boxed_slice();
        let mut rx_msgs: Box<[libc::mmsghdr]> = (0..batch).map(|_| zeroed_mmsghdr()).collect();
        for i in 0..batch {
            rx_iov[i].iov_base = rx_data.slice_mut(i * max, max).as_mut_ptr().cast();
            rx_iov[i].iov_len = max;
            let hdr = &mut rx_msgs[i].msg_hdr;
            hdr.msg_name = rx_names[i].bytes.as_mut_ptr().cast();
            hdr.msg_namelen = NAME_LEN as u32;
            hdr.msg_iov = &raw mut rx_iov[i];
            hdr.msg_iovlen = 1;
        }
        let tx_iov = vec![
            libc::iovec {
                iov_base: ptr::null_mut(),
                iov_len: 0
            };
            SEND_BATCH
        ]
        .into_boxed_slice();
        let tx_msgs: Box<[libc::mmsghdr]> = (0..SEND_BATCH).map(|_| zeroed_mmsghdr()).collect();
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS].into_boxed_slice();

        Ok(Self {
            epfd,
            waker,
            slots: Vec::new(),
            free_slots: Vec::new(),
            events,
            batch,
            max_datagram: max,
            rx_data,
            rx_names,
            _rx_iov: rx_iov,
            rx_msgs,
            tx: SendQueue::new(options.send_slots, max),
            tx_keys: Vec::with_capacity(options.send_slots),
            tx_iov,
            tx_msgs,
            stats: DriverStats::default(),
            _not_send: PhantomData,
        })
    }

    fn live_slot(&self, token: PortToken) -> Option<&Slot> {
        self.slots
            .get(token.slot() as usize)
            .filter(|s| s.socket.is_some() && s.generation == token.generation())
    }

    /// Reads `token`'s socket until it is empty or the per-wake budget is spent.
    fn drain_socket<F>(&mut self, token: PortToken, on_recv: &mut F) -> usize
    where
        F: FnMut(RecvDatagram<'_>, &mut SendQueue),
    {
        let Some(fd) = self.live_slot(token).map(|s| s.fd) else {
            return 0;
        };
        let mut delivered = 0;
        for _ in 0..MAX_BATCHES_PER_WAKE {
            for m in self.rx_msgs.iter_mut() {
                m.msg_hdr.msg_namelen = NAME_LEN as u32;
                m.msg_hdr.msg_flags = 0;
                m.msg_len = 0;
            }
            // SAFETY: `rx_msgs` holds `batch` headers whose name and iovec pointers target
            // `rx_names`/`rx_iov`/`rx_data`, all owned by `self`, allocated once and sized as
            // the headers say.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.rx_msgs.as_mut_ptr(),
                    self.batch as u32,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => {}
                    Some(libc::EINTR) => continue,
                    _ => self.stats.recv_errors += 1,
                }
                break;
            }
            let n = n as usize;
            let Self {
                rx_msgs,
                rx_names,
                rx_data,
                tx,
                stats,
                max_datagram,
                ..
            } = self;
            for i in 0..n {
                let msg = &rx_msgs[i];
                if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    stats.truncated += 1;
                    continue;
                }
                let name_len = (msg.msg_hdr.msg_namelen as usize).min(NAME_LEN);
                let Some(src) = addr::decode(&rx_names[i].bytes[..name_len]) else {
                    stats.recv_errors += 1;
                    continue;
                };
                let len = (msg.msg_len as usize).min(*max_datagram);
                let data = rx_data.slice_mut(i * *max_datagram, len);
                stats.received += 1;
                stats.received_bytes += len as u64;
                delivered += 1;
                on_recv(RecvDatagram { token, src, data }, tx);
            }
            if n < self.batch {
                break;
            }
        }
        delivered
    }

    /// Sends every queued datagram: grouped by source socket, one `sendmmsg` per group.
    fn send_pending(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        let pending = self.tx.take_pending();
        self.tx_keys.clear();
        for (pos, &slot) in pending.iter().enumerate() {
            let port = self.tx.meta(slot).token.slot();
            self.tx_keys.push((u64::from(port) << 32) | pos as u64);
        }
        // Unstable sort on (port, queue position): groups by port, keeps order within a port.
        self.tx_keys.sort_unstable();

        let mut i = 0;
        while i < self.tx_keys.len() {
            let port = (self.tx_keys[i] >> 32) as u32;
            let mut end = i;
            while end < self.tx_keys.len() && (self.tx_keys[end] >> 32) as u32 == port {
                end += 1;
            }
            let slot_state = self
                .slots
                .get(port as usize)
                .and_then(|s| s.socket.as_ref().map(|_| (s.fd, s.generation)));
            let mut filled = 0;
            for k in i..end {
                let slot = pending[(self.tx_keys[k] & 0xFFFF_FFFF) as usize];
                let meta = *self.tx.meta(slot);
                let fd = match slot_state {
                    Some((fd, generation)) if generation == meta.token.generation() => fd,
                    _ => {
                        self.stats.send_stale_token += 1;
                        continue;
                    }
                };
                let payload = self.tx.payload(slot);
                self.tx_iov[filled] = libc::iovec {
                    iov_base: payload.as_ptr().cast_mut().cast(),
                    iov_len: payload.len(),
                };
                let hdr = &mut self.tx_msgs[filled].msg_hdr;
                hdr.msg_name = self.tx.meta(slot).name.bytes.as_ptr().cast_mut().cast();
                hdr.msg_namelen = meta.name_len;
                hdr.msg_iov = &raw mut self.tx_iov[filled];
                hdr.msg_iovlen = 1;
                filled += 1;
                if filled == SEND_BATCH {
                    self.send_batch(fd, filled);
                    filled = 0;
                }
                if k + 1 == end && filled > 0 {
                    self.send_batch(fd, filled);
                    filled = 0;
                }
            }
            i = end;
        }
        for &slot in &pending {
            self.tx.release(slot);
        }
        self.tx.restore_pending(pending);
    }

    /// Sends the first `count` prepared headers from `fd`, counting every outcome.
    fn send_batch(&mut self, fd: RawFd, count: usize) {
        let mut done = 0;
        while done < count {
            // SAFETY: headers `done..count` were filled by `send_pending` just now; their name
            // and iovec pointers target `tx_iov` and send-queue slots that stay untouched until
            // this call returns.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.tx_msgs.as_mut_ptr().add(done),
                    (count - done) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                for m in &self.tx_msgs[done..done + n as usize] {
                    self.stats.sent += 1;
                    self.stats.sent_bytes += u64::from(m.msg_len);
                }
                done += n as usize;
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN | libc::ENOBUFS) => self.stats.send_would_block += 1,
                _ => self.stats.send_errors += 1,
            }
            // The failed datagram is dropped; carry on with the rest.
            done += 1;
        }
    }
}

/// Milliseconds for `epoll_wait`, rounded up so a short timeout never becomes a busy loop.
fn timeout_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(d) => i32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
    }
}

impl Driver for EpollDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Epoll
    }

    fn register(&mut self, socket: UdpSocket) -> io::Result<PortToken> {
        socket.set_nonblocking(true)?;
        let local = socket.local_addr().ok();
        let fd = socket.as_raw_fd();
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len())
                    .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "too many ports"))?;
                self.slots.push(Slot {
                    socket: None,
                    fd: -1,
                    generation: 0,
                    local: None,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        let token = PortToken::new(index, slot.generation);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key(token),
        };
        // SAFETY: both descriptors are open; `ev` is a live local the kernel copies.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let err = io::Error::last_os_error();
            self.free_slots.push(index);
            return Err(err);
        }
        slot.socket = Some(socket);
        slot.fd = fd;
        slot.local = local;
        self.stats.ports += 1;
        Ok(token)
    }

    fn deregister(&mut self, token: PortToken) -> io::Result<()> {
        drop(self.take(token)?);
        Ok(())
    }

    fn take(&mut self, token: PortToken) -> io::Result<UdpSocket> {
        if self.live_slot(token).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "unknown or stale port token",
            ));
        }
        let slot = &mut self.slots[token.slot() as usize];
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: both descriptors are open (the socket until `take` below); `ev` is ignored.
        unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_DEL, slot.fd, &mut ev) };
        let socket = slot.socket.take();
        slot.fd = -1;
        slot.local = None;
        slot.generation = (slot.generation + 1) & PortToken::GENERATION_MASK;
        self.free_slots.push(token.slot());
        self.stats.ports -= 1;
        socket.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "port has no socket"))
    }

    fn local_addr(&self, token: PortToken) -> Option<SocketAddr> {
        self.live_slot(token).and_then(|s| s.local)
    }

    fn poll<F>(&mut self, timeout: Option<Duration>, mut on_recv: F) -> io::Result<usize>
    where
        F: FnMut(RecvDatagram<'_>, &mut SendQueue),
    {
        self.stats.polls += 1;
        self.send_pending();
        // SAFETY: `events` is an owned array of `EVENTS` entries the kernel fills.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                EVENTS as i32,
                timeout_ms(timeout),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.raw_os_error() == Some(libc::EINTR) {
                Ok(0)
            } else {
                Err(err)
            };
        }
        let mut delivered = 0;
        for i in 0..n as usize {
            let event = self.events[i];
            let key = event.u64;
            if key == WAKE_KEY {
                if self.waker.reset() {
                    self.stats.wakeups += 1;
                }
                continue;
            }
            delivered += self.drain_socket(token_of(key), &mut on_recv);
        }
        Ok(delivered)
    }

    fn send_queue(&mut self) -> &mut SendQueue {
        &mut self.tx
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending();
        Ok(())
    }

    fn waker(&self) -> Waker {
        self.waker.clone()
    }

    fn stats(&self) -> DriverStats {
        DriverStats {
            send_queue_full: self.tx.queue_full(),
            send_too_large: self.tx.too_large(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_tokens() {
        let t = PortToken::new(12, 34);
        assert_eq!(token_of(key(t)), t);
        assert_ne!(
            key(PortToken::new(u32::MAX, PortToken::GENERATION_MASK)),
            WAKE_KEY
        );
    }

    #[test]
    fn timeouts_round_up_to_milliseconds() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_millis(20))), 20);
    }

    #[test]
    fn take_hands_a_socket_to_another_driver() {
        let old = EpollDriver::new(&DriverOptions::default()).unwrap();
        let new = EpollDriver::new(&DriverOptions::default()).unwrap();
        super::super::check_take_hands_a_socket_over(old, new);
    }
}
