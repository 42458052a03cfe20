//! The cross-thread wake-up of a worker: an `eventfd` both drivers watch.
//!
//! A control thread pushes a command on the worker's queue, then calls [`Waker::wake`]; the
//! worker's blocked `poll` returns, and the worker drains its queue. Wake-ups coalesce: any
//! number of `wake` calls before the worker notices make one wake-up.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Interrupts a worker's blocked [`Driver::poll`](super::Driver::poll). `Send + Sync + Clone`;
/// each `wake` is one `write(2)` on an eventfd.
#[derive(Clone, Debug)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// A new non-blocking, close-on-exec eventfd.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no pointer arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd: Arc::new(fd) })
    }

    /// Makes the owning worker's `poll` return promptly (or its next `poll` return at once).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd this handle keeps open. A
        // failure can only be EAGAIN (the counter is saturated, so a wake-up is pending anyway).
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Clears pending wake-ups; returns whether there was one.
    pub(crate) fn reset(&self) -> bool {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live local from the non-blocking eventfd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut count).cast(), 8) };
        n == 8 && count > 0
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_coalesce_and_reset_clears() {
        let w = Waker::new().unwrap();
        assert!(!w.reset());
        w.wake();
        w.clone().wake();
        assert!(w.reset());
        assert!(!w.reset());
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Waker>();
    }
}
