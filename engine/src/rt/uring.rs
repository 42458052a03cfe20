//! The io_uring driver: one ring per worker, multishot receives into a provided-buffer ring,
//! batched `sendto`-style submissions.
//!
//! - Every registered socket carries one multishot `IORING_OP_RECVMSG`. All of them draw
//!   buffers from a single provided-buffer ring of [`DriverOptions::recv_buffers`] buffers; each
//!   buffer receives a `io_uring_recvmsg_out` header, the source address and the payload. The
//!   buffer goes back to the ring as soon as the callback returns (published once per batch of
//!   completions). When a multishot receive ends (buffers ran out: `ENOBUFS`, an error, a CQ
//!   overflow) it is re-armed with the next submission, after the returned buffers are
//!   published; a socket whose receive keeps failing is abandoned and counted.
//! - Sends are `IORING_OP_SEND` entries with a destination address (Linux 6.0), pointing into
//!   the send slots; a slot returns to the pool when its completion arrives.
//! - The waker's eventfd carries a multishot poll; its completion ends a blocked wait.
//! - A loop turn is one `io_uring_enter`: it submits the queued sends and re-arms, then waits
//!   for one completion beyond the sends it just submitted (their completions would otherwise
//!   end the wait at once), or the timeout.
//!
//! The ring is created with `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has them (6.1):
//! completion work runs only inside the worker's own `io_uring_enter`, never interrupting it.
//! That ties the ring to the thread that created it, hence the driver is `!Send`.
//!
//! Needs Linux 6.0 (multishot `recvmsg`) and `IORING_FEAT_EXT_ARG`; [`UringDriver::new`] fails
//! with `Unsupported` otherwise, and with the kernel's error when io_uring itself is refused
//! (`EPERM` from a seccomp profile, `ENOSYS`), so [`open_driver`](super::open_driver) can fall
//! back to epoll.

#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use super::addr::{self, NAME_LEN};
use super::{
    Driver, DriverKind, DriverOptions, DriverStats, PortToken, RecvDatagram, SendQueue, Waker,
};

const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_WAKE: u64 = 3;
const OP_CANCEL: u64 = 4;
const OP_SHUTDOWN: u64 = 5;

/// Buffer group id of the provided-buffer ring.
const BUF_GROUP: u16 = 0;
/// `struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags (4 × u32).
const RECVMSG_OUT_LEN: usize = 16;
/// Where the payload starts in a receive buffer: header, then the fixed-size name field.
const PAYLOAD_OFFSET: usize = RECVMSG_OUT_LEN + NAME_LEN;
/// Consecutive failed multishot receives after which a socket is abandoned.
const MAX_RECV_FAILURES: u32 = 16;
/// Completions copied out of the CQ at a time.
const CQE_BATCH: usize = 256;

fn user_data(op: u64, generation: u32, index: u32) -> u64 {
    (op << 56) | (u64::from(generation & PortToken::GENERATION_MASK) << 32) | u64::from(index)
}

fn split_user_data(data: u64) -> (u64, u32, u32) {
    (
        data >> 56,
        (data >> 32) as u32 & PortToken::GENERATION_MASK,
        data as u32,
    )
}

/// The running kernel's `(major, minor)`, from `/proc/sys/kernel/osrelease`.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn unsupported(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, why)
}

/// An anonymous private mapping (page aligned, as the buffer ring requires), unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous mapping with no address hint touches no existing memory; the
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, which nothing references any more
        // (the owner guarantees the kernel is done with it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `struct io_uring_buf`; in entry 0, `resv` is the ring's tail.
#[repr(C)]
struct RawBufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// The provided-buffer ring: `entries` descriptors shared with the kernel and the buffers they
/// point to.
struct BufRing {
    ring: Mmap,
    buffers: Mmap,
    entries: u16,
    buf_size: usize,
    tail: u16,
}

impl BufRing {
    fn new(entries: u16, buf_size: usize) -> io::Result<Self> {
        let ring = Mmap::new(usize::from(entries) * size_of::<RawBufEntry>())?;
        let buffers = Mmap::new(usize::from(entries) * buf_size)?;
        let mut this = Self {
            ring,
            buffers,
            entries,
            buf_size,
            tail: 0,
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    fn entry_ptr(&self, index: u16) -> *mut RawBufEntry {
        debug_assert!(index < self.entries);
        // SAFETY: `index < entries` and the mapping holds `entries` descriptors.
        unsafe {
            self.ring
                .ptr
                .as_ptr()
                .cast::<RawBufEntry>()
                .add(usize::from(index))
        }
    }

    /// Queues buffer `bid` for the kernel (visible after [`publish`](Self::publish)).
    fn push(&mut self, bid: u16) {
        let entry = self.entry_ptr(self.tail & (self.entries - 1));
        let addr = self.buffers.ptr.as_ptr() as u64 + (usize::from(bid) * self.buf_size) as u64;
        // SAFETY: the descriptor at `tail` is beyond the published tail, so the kernel does not
        // read it; fields are written through the raw pointer without touching `resv` (the
        // tail, in entry 0), which the kernel may read concurrently.
        unsafe {
            ptr::addr_of_mut!((*entry).addr).write(addr);
            ptr::addr_of_mut!((*entry).len).write(self.buf_size as u32);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed buffer available to the kernel.
    fn publish(&self) {
        let entry0 = self.entry_ptr(0);
        // SAFETY: `resv` of entry 0 is the ring tail, a naturally aligned u16 the kernel reads
        // with acquire semantics; it is only ever accessed atomically here.
        let tail = unsafe { AtomicU16::from_ptr(ptr::addr_of_mut!((*entry0).resv)) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The filled part of buffer `bid`, which the kernel handed back with a completion.
    fn filled(&mut self, bid: u16, len: usize) -> &mut [u8] {
        assert!(
            bid < self.entries && len <= self.buf_size,
            "buffer id or length out of range"
        );
        // SAFETY: in bounds (checked); the kernel has returned buffer `bid` to us and it is not
        // pushed back before this borrow of `self` ends, so the slice is exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.buffers
                    .ptr
                    .as_ptr()
                    .add(usize::from(bid) * self.buf_size),
                len,
            )
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PortState {
    Free,
    Active,
    /// Deregistered; the socket closes once its receive and the cancellation have completed.
    Closing,
}

struct Slot {
    socket: Option<UdpSocket>,
    fd: RawFd,
    generation: u32,
    state: PortState,
    recv_armed: bool,
    cancel_pending: bool,
    failures: u32,
    local: Option<SocketAddr>,
}

/// The io_uring driver: one ring, a multishot `recvmsg` per registered socket drawing on one
/// shared provided-buffer ring, sends batched as `IORING_OP_SEND` entries, one
/// `io_uring_enter` per loop turn. Needs Linux 6.0. Implements the [`Driver`] contract; open it
/// with [`open_driver`](super::open_driver) on the thread that will poll it.
pub struct UringDriver {
    ring: IoUring,
    /// `None` only after a shutdown that could not confirm the kernel was done with the buffers
    /// (they are then leaked rather than unmapped).
    bufs: Option<BufRing>,
    /// The `msghdr` every multishot receive uses: only `msg_namelen` matters.
    recv_msghdr: Box<libc::msghdr>,
    waker: Waker,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    tx: SendQueue,
    /// Sends submitted whose completion has not been reaped.
    in_flight_sends: usize,
    /// Operations of any kind whose final completion has not been reaped.
    outstanding: usize,
    shutting_down: bool,
    /// Ports whose multishot receive ended during a reap, to re-arm before the next wait.
    /// Never holds more entries than there are slots, so it never reallocates after `register`.
    rearm: Vec<u32>,
    stats: DriverStats,
    /// Wake-up coalescing under load (see [`DriverOptions::coalesce_wait`]).
    coalesce_wait: Duration,
    coalesce_packets: u32,
    /// Datagrams the previous `poll` delivered.
    last_delivered: usize,
    /// The ring belongs to the thread that created it (`SINGLE_ISSUER`).
    _not_send: PhantomData<*const ()>,
}

/// Datagrams one `poll` must deliver for the next wait to coalesce: more than one means they
/// arrive faster than the thread wakes up.
const COALESCE_ENTER: usize = 2;

impl std::fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDriver")
            .field("ports", &self.stats.ports)
            .field("outstanding", &self.outstanding)
            .field("tx", &self.tx)
            .finish_non_exhaustive()
    }
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: `msghdr` is a plain C struct of integers and pointers; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// Pushes `entry`, submitting first if the submission queue is full.
///
/// # Safety
///
/// Every pointer in `entry` must stay valid until the operation's final completion.
unsafe fn push_sqe(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: the caller guarantees the entry's pointers outlive the operation.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        // Full: hand the queued entries to the kernel and retry. A failure here (EBUSY: the
        // completion queue must be reaped first) is the caller's to count and retry.
        if ring.submit()? == 0 {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
    }
}

fn build_ring(options: &DriverOptions) -> io::Result<IoUring> {
    let cq = (options.ring_entries as usize)
        .max(options.send_slots * 2 + usize::from(options.recv_buffers) * 2)
        .next_power_of_two()
        .min(1 << 18) as u32;
    let mut tuned = IoUring::builder();
    tuned
        .setup_cqsize(cq)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag();
    match tuned.build(options.ring_entries) {
        Ok(ring) => return Ok(ring),
        // An older kernel rejects a flag it does not know; retry with the basics.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(e),
    }
    let mut basic = IoUring::builder();
    basic.setup_cqsize(cq);
    basic.build(options.ring_entries)
}

impl UringDriver {
    /// Creates the ring and the buffer ring. Fails when io_uring is refused or the kernel lacks
    /// a feature the driver needs; call it on the thread that will poll.
    pub fn new(options: &DriverOptions) -> io::Result<Self> {
        options.validate()?;
        match kernel_version() {
            Some(v) if v >= (6, 0) => {}
            Some((major, minor)) => {
                return Err(unsupported(format!(
                    "kernel {major}.{minor} lacks multishot recvmsg (needs 6.0)"
                )));
            }
            None => return Err(unsupported("cannot read the kernel version".into())),
        }
        let ring = build_ring(options)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup: {e}")))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(unsupported(
                "io_uring lacks IORING_FEAT_EXT_ARG (needs 5.11)".into(),
            ));
        }

        let bufs = BufRing::new(options.recv_buffers, options.max_datagram + PAYLOAD_OFFSET)?;
        // SAFETY: the descriptor ring is a page-aligned mapping of `recv_buffers` entries owned
        // by `bufs`, which `Drop` keeps alive until the kernel has finished with it.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring.ptr.as_ptr() as u64,
                options.recv_buffers,
                BUF_GROUP,
                0,
            )
        }
        .map_err(|e| io::Error::new(e.kind(), format!("io_uring provided-buffer ring: {e}")))?;

        let mut recv_msghdr = Box::new(zeroed_msghdr());
        recv_msghdr.msg_namelen = NAME_LEN as u32;
        let mut driver = Self {
            ring,
            bufs: Some(bufs),
            recv_msghdr,
            waker: Waker::new()?,
            slots: Vec::new(),
            free_slots: Vec::new(),
            tx: SendQueue::new(options.send_slots, options.max_datagram),
            in_flight_sends: 0,
            outstanding: 0,
            shutting_down: false,
            rearm: Vec::new(),
            stats: DriverStats::default(),
            coalesce_wait: options.coalesce_wait,
            coalesce_packets: options.coalesce_packets,
            last_delivered: 0,
            _not_send: PhantomData,
        };
        driver.arm_wake()?;
        // Fails here, rather than at the first poll, if the ring is unusable.
        driver.ring.submit()?;
        Ok(driver)
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let entry = opcode::PollAdd::new(Fd(self.waker.raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(OP_WAKE, 0, 0));
        // SAFETY: the eventfd is owned by `self.waker`, open for the driver's lifetime.
        unsafe { push_sqe(&mut self.ring, &entry) }?;
        self.outstanding += 1;
        Ok(())
    }

    fn arm_recv(&mut self, index: u32) -> io::Result<()> {
        let slot = &mut self.slots[index as usize];
        let entry = opcode::RecvMsgMulti::new(Fd(slot.fd), &raw const *self.recv_msghdr, BUF_GROUP)
            .build()
            .user_data(user_data(OP_RECV, slot.generation, index));
        // SAFETY: the socket stays open until this receive's final completion (see
        // `maybe_close`); `recv_msghdr` and the buffer ring live as long as the ring.
        unsafe { push_sqe(&mut self.ring, &entry) }?;
        slot.recv_armed = true;
        self.outstanding += 1;
        Ok(())
    }

    /// Closes a deregistered port's socket once the kernel holds no request on it.
    fn maybe_close(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if slot.state == PortState::Closing && !slot.recv_armed && !slot.cancel_pending {
            drop(slot.socket.take());
            slot.fd = -1;
            slot.local = None;
            slot.state = PortState::Free;
            slot.generation = (slot.generation + 1) & PortToken::GENERATION_MASK;
            self.free_slots.push(index);
        }
    }

    fn active_slot(&self, token: PortToken) -> Option<&Slot> {
        self.slots
            .get(token.slot() as usize)
            .filter(|s| s.state == PortState::Active && s.generation == token.generation())
    }

    /// Turns queued sends into `SEND` entries carrying their destination (`sendto`). Returns
    /// how many were pushed.
    fn push_sends(&mut self) -> usize {
        if self.tx.is_empty() {
            return 0;
        }
        let mut pushed = 0;
        let pending = self.tx.take_pending();
        let Self {
            ring,
            tx,
            slots,
            stats,
            in_flight_sends,
            outstanding,
            ..
        } = self;
        for &slot in &pending {
            let meta = tx.meta(slot);
            let fd = match slots.get(meta.token.slot() as usize) {
                Some(s)
                    if s.state == PortState::Active && s.generation == meta.token.generation() =>
                {
                    s.fd
                }
                _ => {
                    stats.send_stale_token += 1;
                    tx.release(slot);
                    continue;
                }
            };
            let payload = tx.payload(slot);
            let entry = opcode::Send::new(Fd(fd), payload.as_ptr(), payload.len() as u32)
                .dest_addr(meta.name.bytes.as_ptr().cast())
                .dest_addr_len(meta.name_len)
                .build()
                .user_data(user_data(OP_SEND, 0, slot));
            // SAFETY: the payload and the destination address belong to send slot `slot`, which
            // is neither reused nor moved until this send's completion releases it; the socket
            // is open (in flight, the kernel holds its own reference).
            match unsafe { push_sqe(ring, &entry) } {
                Ok(()) => {
                    pushed += 1;
                    *in_flight_sends += 1;
                    *outstanding += 1;
                }
                Err(_) => {
                    stats.send_errors += 1;
                    tx.release(slot);
                }
            }
        }
        self.tx.restore_pending(pending);
        pushed
    }

    /// Reaps every completion, calling `on_recv` per datagram. Returns datagrams delivered.
    fn reap<F>(&mut self, on_recv: &mut F) -> usize
    where
        F: FnMut(RecvDatagram<'_>, &mut SendQueue),
    {
        let mut delivered = 0;
        loop {
            let mut cqes = [const { MaybeUninit::<cqueue::Entry>::uninit() }; CQE_BATCH];
            let got = self.ring.completion().fill(&mut cqes);
            if got.is_empty() {
                break;
            }
            for cqe in got.iter() {
                delivered += self.complete(cqe, on_recv);
            }
            // Hand the buffers back as soon as a chunk is done.
            if let Some(bufs) = &self.bufs {
                bufs.publish();
            }
        }
        delivered
    }

    fn complete<F>(&mut self, cqe: &cqueue::Entry, on_recv: &mut F) -> usize
    where
        F: FnMut(RecvDatagram<'_>, &mut SendQueue),
    {
        let (op, generation, index) = split_user_data(cqe.user_data());
        let res = cqe.result();
        match op {
            OP_RECV => return self.complete_recv(index, generation, res, cqe.flags(), on_recv),
            OP_SEND => {
                self.in_flight_sends -= 1;
                self.outstanding -= 1;
                if res >= 0 {
                    self.stats.sent += 1;
                    self.stats.sent_bytes += res as u64;
                } else if matches!(-res, libc::EAGAIN | libc::ENOBUFS) {
                    self.stats.send_would_block += 1;
                } else {
                    self.stats.send_errors += 1;
                }
                self.tx.release(index);
            }
            OP_WAKE => {
                if self.waker.reset() {
                    self.stats.wakeups += 1;
                }
                if !cqueue::more(cqe.flags()) {
                    self.outstanding -= 1;
                    if !self.shutting_down && self.arm_wake().is_err() {
                        tracing::error!("io_uring driver could not re-arm its waker");
                    }
                }
            }
            OP_CANCEL => {
                self.outstanding -= 1;
                if let Some(slot) = self.slots.get_mut(index as usize)
                    && slot.generation == generation
                {
                    slot.cancel_pending = false;
                    self.maybe_close(index);
                }
            }
            _ => {}
        }
        0
    }

    fn complete_recv<F>(
        &mut self,
        index: u32,
        generation: u32,
        res: i32,
        flags: u32,
        on_recv: &mut F,
    ) -> usize
    where
        F: FnMut(RecvDatagram<'_>, &mut SendQueue),
    {
        let mut delivered = 0;
        let live = self
            .slots
            .get(index as usize)
            .is_some_and(|s| s.generation == generation && s.state == PortState::Active);
        if let (Some(bid), Some(bufs)) = (cqueue::buffer_select(flags), self.bufs.as_mut()) {
            if live && res >= 0 && bid < bufs.entries {
                let len = (res as usize).min(bufs.buf_size);
                let buf = bufs.filled(bid, len);
                match parse_recvmsg(buf) {
                    Parsed::Datagram { src, payload } => {
                        self.stats.received += 1;
                        self.stats.received_bytes += payload.len() as u64;
                        self.slots[index as usize].failures = 0;
                        delivered = 1;
                        let token = PortToken::new(index, generation);
                        on_recv(
                            RecvDatagram {
                                token,
                                src,
                                data: &mut buf[payload],
                            },
                            &mut self.tx,
                        );
                    }
                    Parsed::Truncated => self.stats.truncated += 1,
                    Parsed::Malformed => self.stats.recv_errors += 1,
                }
            }
            if bid < bufs.entries {
                bufs.push(bid);
            }
        }
        if res < 0 {
            match -res {
                libc::ENOBUFS => self.stats.recv_no_buffers += 1,
                libc::ECANCELED => {}
                _ => {
                    self.stats.recv_errors += 1;
                    if live {
                        self.slots[index as usize].failures += 1;
                    }
                }
            }
        }
        if !cqueue::more(flags) {
            self.outstanding -= 1;
            let Some(slot) = self
                .slots
                .get_mut(index as usize)
                .filter(|s| s.generation == generation)
            else {
                return delivered;
            };
            slot.recv_armed = false;
            match slot.state {
                PortState::Active if !self.shutting_down => {
                    if slot.failures > MAX_RECV_FAILURES {
                        self.stats.recv_abandoned += 1;
                        tracing::warn!(port = ?slot.local, error = res, "receive keeps failing; port abandoned");
                    } else {
                        // Re-armed at the start of the next poll, after the buffers returned
                        // during this reap are published: re-arming now, with the buffer ring
                        // possibly empty, could end at once in ENOBUFS again, and again.
                        self.rearm.push(index);
                    }
                }
                PortState::Closing => self.maybe_close(index),
                _ => {}
            }
        }
        delivered
    }

    /// Re-arms the receives that ended during the last reap. An entry stays listed if the
    /// submission queue cannot take it now.
    fn rearm_receives(&mut self) {
        while let Some(&index) = self.rearm.last() {
            let slot = &self.slots[index as usize];
            if slot.state == PortState::Active && !slot.recv_armed && self.arm_recv(index).is_err()
            {
                break;
            }
            self.rearm.pop();
        }
    }

    /// Cancels everything and reaps until the kernel holds no request on the driver's memory.
    /// Returns whether that was confirmed.
    fn quiesce(&mut self) -> bool {
        self.shutting_down = true;
        let _ = self.push_sends();
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(user_data(OP_SHUTDOWN, 0, 0));
        // SAFETY: a cancellation carries no pointers.
        if unsafe { push_sqe(&mut self.ring, &entry) }.is_err() {
            return false;
        }
        for _ in 0..100 {
            let ts = Timespec::from(Duration::from_millis(10));
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut discard = |_: RecvDatagram<'_>, _: &mut SendQueue| {};
            self.reap(&mut discard);
            if self.outstanding == 0 {
                return true;
            }
        }
        false
    }
}

/// What a multishot `recvmsg` buffer holds.
enum Parsed {
    Datagram {
        src: SocketAddr,
        payload: std::ops::Range<usize>,
    },
    Truncated,
    Malformed,
}

/// Reads the `io_uring_recvmsg_out` layout: header, name field of `NAME_LEN`, payload.
fn parse_recvmsg(buf: &[u8]) -> Parsed {
    if buf.len() < PAYLOAD_OFFSET {
        return Parsed::Malformed;
    }
    let word =
        |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
    let (name_len, payload_len, flags) = (word(0), word(8), word(12));
    if flags & libc::MSG_TRUNC as usize != 0 {
        return Parsed::Truncated;
    }
    let Some(src) = addr::decode(&buf[RECVMSG_OUT_LEN..RECVMSG_OUT_LEN + name_len.min(NAME_LEN)])
    else {
        return Parsed::Malformed;
    };
    let end = PAYLOAD_OFFSET + payload_len.min(buf.len() - PAYLOAD_OFFSET);
    Parsed::Datagram {
        src,
        payload: PAYLOAD_OFFSET..end,
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        if !self.quiesce() {
            // The kernel may still write into the receive buffers: leak them rather than unmap.
            tracing::warn!(
                outstanding = self.outstanding,
                "io_uring driver closed with requests in flight"
            );
            std::mem::forget(self.bufs.take());
        }
    }
}

impl Driver for UringDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::IoUring
    }

    fn register(&mut self, socket: UdpSocket) -> io::Result<PortToken> {
        socket.set_nonblocking(true)?;
        let local = socket.local_addr().ok();
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len())
                    .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "too many ports"))?;
                // Keeps the re-arm list allocation-free on the packet path.
                self.rearm.reserve(self.slots.len() + 1 - self.rearm.len());
                self.slots.push(Slot {
                    socket: None,
                    fd: -1,
                    generation: 0,
                    state: PortState::Free,
                    recv_armed: false,
                    cancel_pending: false,
                    failures: 0,
                    local: None,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.fd = socket.as_raw_fd();
        slot.socket = Some(socket);
        slot.local = local;
        slot.state = PortState::Active;
        slot.failures = 0;
        let token = PortToken::new(index, slot.generation);
        if let Err(e) = self.arm_recv(index) {
            let slot = &mut self.slots[index as usize];
            drop(slot.socket.take());
            slot.state = PortState::Free;
            self.free_slots.push(index);
            return Err(e);
        }
        self.stats.ports += 1;
        Ok(token)
    }

    fn deregister(&mut self, token: PortToken) -> io::Result<()> {
        if self.active_slot(token).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "unknown or stale port token",
            ));
        }
        let index = token.slot();
        let recv = user_data(OP_RECV, token.generation(), index);
        let entry = opcode::AsyncCancel::new(recv).build().user_data(user_data(
            OP_CANCEL,
            token.generation(),
            index,
        ));
        // SAFETY: a cancellation carries no pointers.
        unsafe { push_sqe(&mut self.ring, &entry) }?;
        self.outstanding += 1;
        let slot = &mut self.slots[index as usize];
        slot.state = PortState::Closing;
        slot.cancel_pending = true;
        self.stats.ports -= 1;
        Ok(())
    }

    fn take(&mut self, token: PortToken) -> io::Result<UdpSocket> {
        // The multishot receive holds the driver's descriptor until the kernel confirms its
        // cancellation; the caller gets a duplicate of it (the same socket). The driver's
        // descriptor is closed in `maybe_close` once the receive has ended, which leaves the
        // socket open through the duplicate.
        let dup = self
            .active_slot(token)
            .and_then(|s| s.socket.as_ref())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown or stale port token"))?
            .try_clone()?;
        self.deregister(token)?;
        // Submit the cancellation now rather than at the next poll, so the old receive stops
        // competing with the socket's next owner for datagrams at once (if the kernel is
        // busy, the next poll submits it).
        let _ = self.ring.submit();
        Ok(dup)
    }

    fn local_addr(&self, token: PortToken) -> Option<SocketAddr> {
        self.active_slot(token).and_then(|s| s.local)
    }

    fn poll<F>(&mut self, timeout: Option<Duration>, mut on_recv: F) -> io::Result<usize>
    where
        F: FnMut(RecvDatagram<'_>, &mut SendQueue),
    {
        self.stats.polls += 1;
        self.rearm_receives();
        // UDP sends complete (almost always inline) during this very enter: wait for one
        // completion beyond them. Older sends still in flight are not counted, so a send stuck
        // in the kernel can only end a wait early, never prolong it.
        let sends = self.push_sends();
        // Under load, wait for a batch (or a short while) instead of waking per datagram.
        let busy = !self.coalesce_wait.is_zero() && self.last_delivered >= COALESCE_ENTER;
        let (want, timeout) = if busy {
            let wait = timeout.map_or(self.coalesce_wait, |t| t.min(self.coalesce_wait));
            (sends + self.coalesce_packets as usize, Some(wait))
        } else {
            (sends + 1, timeout)
        };
        let submitted = match timeout {
            None => self.ring.submitter().submit_and_wait(want),
            Some(d) => {
                let ts = Timespec::from(d);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
        };
        if let Err(e) = submitted {
            match e.raw_os_error() {
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => return Err(e),
            }
        }
        let delivered = self.reap(&mut on_recv);
        self.last_delivered = delivered;
        Ok(delivered)
    }

    fn send_queue(&mut self) -> &mut SendQueue {
        &mut self.tx
    }

    fn flush(&mut self) -> io::Result<()> {
        self.rearm_receives();
        let _ = self.push_sends();
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
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
    fn user_data_round_trips() {
        let data = user_data(OP_RECV, PortToken::GENERATION_MASK, u32::MAX);
        assert_eq!(
            split_user_data(data),
            (OP_RECV, PortToken::GENERATION_MASK, u32::MAX)
        );
        assert_eq!(split_user_data(user_data(OP_SEND, 5, 9)), (OP_SEND, 5, 9));
    }

    #[test]
    fn parses_recvmsg_out_layout() {
        let mut buf = vec![0u8; PAYLOAD_OFFSET + 3];
        let mut name = addr::RawAddr::ZERO;
        let name_len = name.encode(&"127.0.0.1:5004".parse().unwrap());
        buf[0..4].copy_from_slice(&name_len.to_ne_bytes());
        buf[8..12].copy_from_slice(&3u32.to_ne_bytes());
        buf[RECVMSG_OUT_LEN..PAYLOAD_OFFSET].copy_from_slice(&name.bytes);
        buf[PAYLOAD_OFFSET..].copy_from_slice(b"abc");
        match parse_recvmsg(&buf) {
            Parsed::Datagram { src, payload } => {
                assert_eq!(src, "127.0.0.1:5004".parse().unwrap());
                assert_eq!(&buf[payload], b"abc");
            }
            _ => panic!("not parsed"),
        }
        buf[12..16].copy_from_slice(&(libc::MSG_TRUNC as u32).to_ne_bytes());
        assert!(matches!(parse_recvmsg(&buf), Parsed::Truncated));
        assert!(matches!(parse_recvmsg(&buf[..10]), Parsed::Malformed));
    }

    #[test]
    fn shutdown_waits_for_every_request() {
        let Ok(mut driver) = UringDriver::new(&DriverOptions::default()) else {
            eprintln!("io_uring refused here; shutdown not tested");
            return;
        };
        let a = driver
            .register(UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let b = driver
            .register(UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let dst = driver.local_addr(b).unwrap();
        driver.queue_send(a, dst, b"x").unwrap();
        driver.deregister(b).unwrap();
        driver.flush().unwrap();
        assert!(driver.outstanding > 0);
        assert!(driver.quiesce());
        assert_eq!(driver.outstanding, 0);
    }

    #[test]
    fn kernel_version_is_readable_here() {
        assert!(kernel_version().is_some());
    }

    #[test]
    fn take_hands_a_socket_to_another_driver() {
        let Ok(old) = UringDriver::new(&DriverOptions::default()) else {
            eprintln!("io_uring refused here; take not tested");
            return;
        };
        let new = UringDriver::new(&DriverOptions::default()).unwrap();
        super::super::check_take_hands_a_socket_over(old, new);
    }
}
