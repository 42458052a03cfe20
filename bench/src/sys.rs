//! The Linux system calls the harness needs, behind safe wrappers.
//!
//! This is the only module of the crate with `unsafe` code: clocks and absolute sleeps, batched
//! UDP I/O with `sendmmsg(2)`/`recvmmsg(2)` and kernel receive timestamps (`SO_TIMESTAMPNS`),
//! `epoll(7)`, process CPU time from `getrusage(2)`, `sysconf(_SC_CLK_TCK)`, socket buffer sizes,
//! the open-file limit and a SIGINT/SIGTERM flag. Batches own their buffers and are reused, so a
//! steady-state send or receive allocates nothing.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock every timestamp of the harness is taken on.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux, so
    // the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds on `CLOCK_REALTIME`, the clock of kernel receive timestamps.
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `deadline_ns` on `CLOCK_MONOTONIC` (returns at once if it has passed, and
/// early when a signal arrives).
pub fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec; no remaining time is requested with TIMER_ABSTIME.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// `SO_TIMESTAMPNS` (`SO_TIMESTAMPNS_OLD` of the generic `asm/socket.h`; with a 64-bit
/// `time_t` it carries a plain `timespec`). Not exported by `libc` for glibc targets.
const SO_TIMESTAMPNS: libc::c_int = 35;

/// `SO_RXQ_OVFL` of the generic `asm/socket.h`; not exported by `libc` for glibc targets.
const SO_RXQ_OVFL: libc::c_int = 40;

/// Asks the kernel to attach to every datagram `socket` receives its arrival time
/// (`CLOCK_REALTIME`) and the socket's count of datagrams dropped so far on a full receive
/// buffer, read back with [`RecvBatch::meta`].
pub fn enable_receive_metadata(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    for name in [SO_TIMESTAMPNS, SO_RXQ_OVFL] {
        // SAFETY: the descriptor is open and `on` is a c_int of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&on as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What the kernel said about one received datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvMeta {
    /// Arrival time on `CLOCK_REALTIME`, nanoseconds.
    pub arrival_realtime_ns: Option<u64>,
    /// Datagrams the socket had dropped on a full receive buffer before this one (cumulative).
    pub socket_drops: Option<u32>,
}

/// CPU time (user + system) this process has used so far, all threads, in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF is always accepted.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    (micros(usage.ru_utime) + micros(usage.ru_stime)) * 1_000
}

/// Clock ticks per second, the unit of the CPU times in `/proc/PID/stat` and `/proc/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory arguments; _SC_CLK_TCK is a valid name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Raises the soft limit of open files to at least `wanted` (never above the hard limit).
///
/// Returns the soft limit in force afterwards.
pub fn raise_open_file_limit(wanted: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: `limit` is a valid rlimit whose soft value does not exceed its hard value.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// Sets a socket's receive and send buffers to `bytes` each, beyond `net.core.rmem_max` /
/// `wmem_max` when the process may (`SO_RCVBUFFORCE` needs `CAP_NET_ADMIN`), otherwise as far as
/// those limits allow.
pub fn set_buffer_sizes(socket: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    for (forced, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |name| {
            // SAFETY: the descriptor is open and `value` is a c_int of the length passed.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    name,
                    (&value as *const libc::c_int).cast(),
                    mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(forced) != 0 && set(plain) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Installs a SIGINT and SIGTERM handler that only raises the flag read by [`is_interrupted`].
///
/// The handler is one-shot (`SA_RESETHAND`): a second Ctrl-C ends the process the default way,
/// in case clean-up itself hangs.
pub fn install_interrupt_handler() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero `sigaction` is a valid value of this plain C struct.
        let mut action: libc::sigaction = unsafe { mem::zeroed() };
        action.sa_sigaction = on_interrupt as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND;
        // SAFETY: `action.sa_mask` is a valid, writable sigset_t.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialised and its handler only stores to an atomic, which
        // is async-signal-safe; the old action is not requested.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since [`install_interrupt_handler`].
pub fn is_interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// A socket address in the C layout `sendmmsg` takes, built once per stream.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAddr").field("len", &self.len).finish()
    }
}

impl From<SocketAddr> for RawAddr {
    fn from(addr: SocketAddr) -> Self {
        // SAFETY: an all-zero `sockaddr_storage` is a valid value of this plain C struct.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write(
                        (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                        sin,
                    )
                };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe {
                    std::ptr::write(
                        (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(),
                        sin6,
                    )
                };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            storage,
            len: len as libc::socklen_t,
        }
    }
}

/// What one `sendmmsg` round achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams refused (socket buffer full or an error); they are not retried.
    pub failed: usize,
}

/// Up to `capacity` datagrams for one socket, sent with one `sendmmsg` call per flush.
pub struct SendBatch {
    stride: usize,
    data: Vec<u8>,
    lens: Vec<usize>,
    tags: Vec<u32>,
    failed: Vec<u32>,
    addrs: Vec<RawAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
    fd: RawFd,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("capacity", &self.lens.len())
            .field("count", &self.count)
            .field("fd", &self.fd)
            .finish()
    }
}

// SAFETY: the raw pointers inside `iovs` and `hdrs` only ever point into buffers owned by the
// same batch, are rewritten before every system call, and are never dereferenced otherwise;
// moving the batch to another thread moves those buffers' owner with it.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// A batch of `capacity` datagrams of at most `max_len` bytes each.
    pub fn new(capacity: usize, max_len: usize) -> Self {
        let capacity = capacity.max(1);
        // SAFETY: all-zero iovec and mmsghdr are valid values of these plain C structs.
        let (iov, hdr) = unsafe { (mem::zeroed(), mem::zeroed()) };
        Self {
            stride: max_len,
            data: vec![0; capacity * max_len],
            lens: vec![0; capacity],
            tags: vec![0; capacity],
            failed: Vec::with_capacity(capacity),
            addrs: vec![RawAddr::from(SocketAddr::from(([127, 0, 0, 1], 9))); capacity],
            iovs: vec![iov; capacity],
            hdrs: vec![hdr; capacity],
            count: 0,
            fd: -1,
        }
    }

    /// Datagrams queued and not yet flushed.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the next [`SendBatch::push`] would not fit.
    pub fn is_full(&self) -> bool {
        self.count == self.lens.len()
    }

    /// The socket the queued datagrams go out on (`-1` when nothing is queued).
    pub fn fd(&self) -> RawFd {
        if self.count == 0 { -1 } else { self.fd }
    }

    /// Queues one datagram for `fd` to `dest`, written by `fill` into a buffer of the batch's
    /// `max_len`; `fill` returns the length used. `tag` names the datagram in
    /// [`SendBatch::failed`]. The caller flushes first when the batch is full or bound to another
    /// socket.
    pub fn push(
        &mut self,
        fd: RawFd,
        dest: &RawAddr,
        tag: u32,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) {
        debug_assert!(!self.is_full() && (self.count == 0 || self.fd == fd));
        let i = self.count;
        let buf = &mut self.data[i * self.stride..(i + 1) * self.stride];
        self.lens[i] = fill(buf).min(self.stride);
        self.addrs[i] = *dest;
        self.tags[i] = tag;
        self.fd = fd;
        self.count += 1;
    }

    /// Sends everything queued and empties the batch.
    pub fn flush(&mut self) -> SendOutcome {
        let total = self.count;
        self.failed.clear();
        let mut done = 0;
        let mut failed = 0;
        for i in 0..total {
            self.iovs[i] = libc::iovec {
                iov_base: self.data[i * self.stride..].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i].storage as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = self.addrs[i].len;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
        }
        while done + failed < total {
            let start = done + failed;
            // SAFETY: hdrs[start..total] are initialised above and point into buffers owned by
            // `self` that live, unmoved, until this call returns; the count is in bounds.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd,
                    self.hdrs[start..].as_mut_ptr(),
                    (total - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                done += rc as usize;
            } else {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The datagram at `start` cannot go (buffer full, or refused): skip it.
                self.failed.push(self.tags[start]);
                failed += 1;
            }
        }
        self.count = 0;
        SendOutcome { sent: done, failed }
    }

    /// Tags of the datagrams the last [`SendBatch::flush`] could not send.
    pub fn failed(&self) -> &[u32] {
        &self.failed
    }
}

/// Control-message space per datagram, in `u64`s (room for a timestamp and a drop count).
const CONTROL_WORDS: usize = 12;

/// Buffers for up to `capacity` datagrams received with one `recvmmsg` call, with their kernel
/// arrival timestamps when the socket has them enabled.
pub struct RecvBatch {
    stride: usize,
    data: Vec<u8>,
    control: Vec<u64>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.hdrs.len())
            .field("count", &self.count)
            .finish()
    }
}

// SAFETY: as for `SendBatch`: the pointers refer only to the batch's own buffers and are
// rewritten before every system call.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// A batch of `capacity` buffers of `max_len` bytes.
    pub fn new(capacity: usize, max_len: usize) -> Self {
        let capacity = capacity.max(1);
        // SAFETY: all-zero iovec and mmsghdr are valid values of these plain C structs.
        let (iov, hdr) = unsafe { (mem::zeroed(), mem::zeroed()) };
        Self {
            stride: max_len,
            data: vec![0; capacity * max_len],
            control: vec![0; capacity * CONTROL_WORDS],
            iovs: vec![iov; capacity],
            hdrs: vec![hdr; capacity],
            count: 0,
        }
    }

    /// Whether the last receive filled every buffer (more may be waiting).
    pub fn is_full(&self) -> bool {
        self.count == self.hdrs.len()
    }

    /// Receives what is waiting on `fd` without blocking; returns the number of datagrams
    /// (0 when none is waiting).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let capacity = self.hdrs.len();
        for i in 0..capacity {
            self.iovs[i] = libc::iovec {
                iov_base: self.data[i * self.stride..].as_mut_ptr().cast(),
                iov_len: self.stride,
            };
            let hdr = &mut self.hdrs[i];
            hdr.msg_len = 0;
            hdr.msg_hdr.msg_name = std::ptr::null_mut();
            hdr.msg_hdr.msg_namelen = 0;
            hdr.msg_hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = self.control[i * CONTROL_WORDS..].as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = CONTROL_WORDS * mem::size_of::<u64>();
            hdr.msg_hdr.msg_flags = 0;
        }
        self.count = 0;
        loop {
            // SAFETY: every header points at a buffer of `stride` bytes owned by `self` that
            // stays in place until the call returns; the count is the number of headers.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    capacity as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                self.count = rc as usize;
                return Ok(self.count);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(err),
            }
        }
    }

    /// The `i`-th datagram of the last receive (truncated datagrams are cut at `max_len`).
    pub fn datagram(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(self.stride);
        &self.data[i * self.stride..i * self.stride + len]
    }

    /// The kernel's metadata of the `i`-th datagram of the last receive; empty unless
    /// [`enable_receive_metadata`] was called on the socket.
    pub fn meta(&self, i: usize) -> RecvMeta {
        let mut meta = RecvMeta::default();
        let hdr = &self.hdrs[i].msg_hdr;
        let fits = |len: usize, size: usize| {
            // SAFETY: CMSG_LEN is plain arithmetic.
            len >= unsafe { libc::CMSG_LEN(size as u32) } as usize
        };
        // SAFETY: `hdr` is the header the kernel filled in the last recvmmsg; its control
        // pointer and length describe this batch's own control buffer, of which the kernel
        // wrote `msg_controllen` bytes; the CMSG macros stay inside that length, and each
        // payload is read only after checking that its cmsg_len covers it.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
            while !cmsg.is_null() {
                let c = &*cmsg;
                let len = c.cmsg_len as usize;
                if c.cmsg_level == libc::SOL_SOCKET {
                    if c.cmsg_type == SO_TIMESTAMPNS && fits(len, mem::size_of::<libc::timespec>())
                    {
                        let ts: libc::timespec = std::ptr::read_unaligned(
                            libc::CMSG_DATA(cmsg).cast::<libc::timespec>(),
                        );
                        meta.arrival_realtime_ns =
                            Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                    } else if c.cmsg_type == SO_RXQ_OVFL && fits(len, mem::size_of::<u32>()) {
                        meta.socket_drops = Some(std::ptr::read_unaligned(
                            libc::CMSG_DATA(cmsg).cast::<u32>(),
                        ));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
            }
        }
        meta
    }
}

/// An epoll instance waiting for readable sockets, with a nanosecond deadline.
#[derive(Debug)]
pub struct Poller {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
    ready: usize,
}

impl Poller {
    /// An empty poller reporting up to `capacity` ready sockets per wait.
    pub fn new(capacity: usize) -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            ready: 0,
        })
    }

    /// Watches `socket` for readability; ready events carry `token`.
    pub fn add(&mut self, socket: &impl AsRawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open and `event` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &mut event,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until a socket is readable or `timeout_ns` passes; returns the number of ready
    /// sockets, whose tokens [`Poller::token`] gives.
    pub fn wait(&mut self, timeout_ns: u64) -> io::Result<usize> {
        let timeout = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: `events` has room for `events.len()` entries and `timeout` is valid; no
        // signal mask is passed.
        let mut rc = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                &timeout,
                std::ptr::null(),
            )
        };
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            // Kernels before 5.11: millisecond resolution, rounded up.
            let ms = timeout_ns.div_ceil(1_000_000).min(i32::MAX as u64) as libc::c_int;
            // SAFETY: as above.
            rc = unsafe {
                libc::epoll_wait(
                    self.fd.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    self.events.len() as libc::c_int,
                    ms,
                )
            };
        }
        if rc < 0 {
            let err = io::Error::last_os_error();
            self.ready = 0;
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        self.ready = rc as usize;
        Ok(self.ready)
    }

    /// Most ready sockets one wait reports.
    pub fn capacity(&self) -> usize {
        self.events.len()
    }

    /// The token of the `i`-th ready socket of the last wait.
    pub fn token(&self, i: usize) -> u64 {
        debug_assert!(i < self.ready);
        self.events[i].u64
    }
}

/// CPU time (user + system) of the calling thread so far, nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_THREAD_CPUTIME_ID always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sets a receive timeout on a blocking socket, so a blocked `recvmmsg` returns now and then.
pub fn set_receive_timeout(socket: &impl AsRawFd, timeout_ns: u64) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_usec: ((timeout_ns % 1_000_000_000) / 1_000) as libc::suseconds_t,
    };
    // SAFETY: the descriptor is open and `tv` is a timeval of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The minimal UDP reflector of the `probe` scenario: one blocking `recvmmsg` that waits for
/// at least one datagram, then one `sendmmsg` that returns each datagram to its sender. With
/// a batch of one, that is one system-call round per packet: the least a relay that wakes per
/// packet can pay.
pub struct Reflector {
    stride: usize,
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for Reflector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflector")
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

// SAFETY: as for `SendBatch`: the pointers refer only to the reflector's own buffers and are
// rewritten before every system call.
unsafe impl Send for Reflector {}

impl Reflector {
    /// A reflector handling up to `batch` datagrams of `max_len` bytes per round.
    pub fn new(batch: usize, max_len: usize) -> Self {
        let batch = batch.max(1);
        // SAFETY: all-zero sockaddr_storage, iovec and mmsghdr are valid values of these plain
        // C structs.
        let (name, iov, hdr) = unsafe { (mem::zeroed(), mem::zeroed(), mem::zeroed()) };
        Self {
            stride: max_len,
            data: vec![0; batch * max_len],
            names: vec![name; batch],
            iovs: vec![iov; batch],
            hdrs: vec![hdr; batch],
        }
    }

    fn prepare(&mut self, lens: Option<usize>) {
        let n = lens.unwrap_or(self.hdrs.len());
        for i in 0..n {
            let len = match lens {
                Some(_) => self.hdrs[i].msg_len as usize,
                None => self.stride,
            };
            self.iovs[i] = libc::iovec {
                iov_base: self.data[i * self.stride..].as_mut_ptr().cast(),
                iov_len: len.min(self.stride),
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            if lens.is_none() {
                hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
        }
    }

    /// One round on the blocking socket `fd`: waits for datagrams (until the socket's receive
    /// timeout), and sends each back to where it came from. Returns the datagrams reflected
    /// (0 on a timeout).
    pub fn round(&mut self, fd: RawFd) -> io::Result<usize> {
        self.prepare(None);
        // SAFETY: every header points at a buffer of `stride` bytes and a sockaddr_storage
        // owned by `self` that stay in place until the call returns; the count is the number
        // of headers.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = rc as usize;
        self.prepare(Some(n));
        let mut done = 0;
        while done < n {
            // SAFETY: headers 0..n were filled by recvmmsg and re-pointed above at this
            // reflector's buffers and source addresses, which outlive the call.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if rc <= 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Drop what cannot be sent, as a relay would.
                break;
            }
            done += rc as usize;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batches_send_and_receive_over_loopback() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        enable_receive_metadata(&rx).unwrap();
        let before = realtime_ns();
        let dest = RawAddr::from(rx.local_addr().unwrap());
        let mut batch = SendBatch::new(4, 64);
        for n in 0..4u8 {
            batch.push(tx.as_raw_fd(), &dest, u32::from(n), |buf| {
                buf[..3].copy_from_slice(&[n, n, n]);
                3
            });
        }
        assert!(batch.is_full());
        assert_eq!(batch.flush(), SendOutcome { sent: 4, failed: 0 });
        assert!(batch.failed().is_empty());
        let mut poller = Poller::new(4).unwrap();
        poller.add(&rx, 7).unwrap();
        assert_eq!(poller.wait(1_000_000_000).unwrap(), 1);
        assert_eq!(poller.token(0), 7);
        let mut recv = RecvBatch::new(8, 64);
        let mut got = Vec::new();
        while got.len() < 4 {
            let n = recv.recv(rx.as_raw_fd()).unwrap();
            got.extend((0..n).map(|i| recv.datagram(i).to_vec()));
            for i in 0..n {
                let at = recv.meta(i).arrival_realtime_ns.unwrap();
                assert!(at >= before && at <= realtime_ns());
            }
        }
        assert_eq!(got, (0..4u8).map(|n| vec![n; 3]).collect::<Vec<_>>());
        assert_eq!(recv.recv(rx.as_raw_fd()).unwrap(), 0);
    }

    #[test]
    fn sleeps_until_an_absolute_time() {
        let deadline = monotonic_ns() + 2_000_000;
        sleep_until(deadline);
        assert!(monotonic_ns() >= deadline);
    }

    #[test]
    fn clocks_move_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
        assert!(clock_ticks_per_second() > 0);
        let spent = process_cpu_ns();
        assert!(process_cpu_ns() >= spent);
    }
}
