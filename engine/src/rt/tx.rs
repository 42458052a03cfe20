//! The send queue: a fixed pool of send slots shared by both drivers.
//!
//! A send is copied into a free slot and its index appended to the pending list. At a flush the
//! driver hands the pending slots to the kernel; the epoll driver frees them right after
//! `sendmmsg`, the io_uring driver when their completion arrives. The pool never grows.

use std::net::SocketAddr;

use super::PortToken;
use super::addr::RawAddr;

/// Why a send was refused before reaching the kernel. Both are counted in
/// [`DriverStats`](super::DriverStats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Every send slot is queued or in flight.
    #[error("send queue full ({capacity} slots)")]
    QueueFull {
        /// The pool size.
        capacity: usize,
    },
    /// The datagram exceeds the slot size ([`DriverOptions::max_datagram`](super::DriverOptions)).
    #[error("datagram of {len} bytes exceeds the {max} byte send slot")]
    TooLarge {
        /// The refused length.
        len: usize,
        /// The slot size.
        max: usize,
    },
}

/// Where a slot's datagram goes.
#[derive(Clone, Copy)]
pub(crate) struct SlotMeta {
    pub(crate) token: PortToken,
    pub(crate) name: RawAddr,
    pub(crate) name_len: u32,
    pub(crate) len: u32,
}

/// Datagrams waiting to leave, in bounded, preallocated send slots.
///
/// Obtained from [`Driver::send_queue`](super::Driver::send_queue) or lent to the
/// [`Driver::poll`](super::Driver::poll) callback. Pushing copies the payload; it never blocks
/// or allocates, and a full pool is a counted [`SendError::QueueFull`].
pub struct SendQueue {
    slot_size: usize,
    data: Box<[u8]>,
    meta: Box<[SlotMeta]>,
    free: Vec<u32>,
    pending: Vec<u32>,
    queue_full: u64,
    too_large: u64,
}

impl std::fmt::Debug for SendQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendQueue")
            .field("capacity", &self.capacity())
            .field("queued", &self.len())
            .field("available", &self.available())
            .finish_non_exhaustive()
    }
}

impl SendQueue {
    pub(crate) fn new(slots: usize, slot_size: usize) -> Self {
        let meta = SlotMeta {
            token: PortToken::new(u32::MAX, 0),
            name: RawAddr::ZERO,
            name_len: 0,
            len: 0,
        };
        let count = u32::try_from(slots).unwrap_or(u32::MAX);
        Self {
            slot_size,
            data: vec![0u8; slots * slot_size].into_boxed_slice(),
            meta: vec![meta; slots].into_boxed_slice(),
            // Popped from the end: slot 0 is used first.
            free: (0..count).rev().collect(),
            pending: Vec::with_capacity(slots),
            queue_full: 0,
            too_large: 0,
        }
    }

    /// Copies `data` into a free slot, to leave from `token`'s port to `dst`.
    pub fn push(
        &mut self,
        token: PortToken,
        dst: SocketAddr,
        data: &[u8],
    ) -> Result<(), SendError> {
        self.push_with(token, dst, data.len(), |buf| buf.copy_from_slice(data))
    }

    /// Reserves a slot of `len` bytes and lets `fill` write the datagram in place (a mixed
    /// frame, a rewritten header) without an intermediate buffer.
    pub fn push_with<F>(
        &mut self,
        token: PortToken,
        dst: SocketAddr,
        len: usize,
        fill: F,
    ) -> Result<(), SendError>
    where
        F: FnOnce(&mut [u8]),
    {
        if len > self.slot_size {
            self.too_large += 1;
            return Err(SendError::TooLarge {
                len,
                max: self.slot_size,
            });
        }
        let Some(slot) = self.free.pop() else {
            self.queue_full += 1;
            return Err(SendError::QueueFull {
                capacity: self.capacity(),
            });
        };
        let i = slot as usize;
        let start = i * self.slot_size;
        fill(&mut self.data[start..start + len]);
        let meta = &mut self.meta[i];
        meta.token = token;
        meta.name_len = meta.name.encode(&dst);
        // `len` fits: it is at most `slot_size`, which `DriverOptions::validate` bounds.
        meta.len = len as u32;
        self.pending.push(slot);
        Ok(())
    }

    /// Datagrams queued and not yet handed to the kernel.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Free slots.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// The pool size.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// The largest datagram a slot holds.
    pub fn max_datagram(&self) -> usize {
        self.slot_size
    }

    /// Sends refused because the pool was full.
    pub(crate) fn queue_full(&self) -> u64 {
        self.queue_full
    }

    /// Sends refused for their size.
    pub(crate) fn too_large(&self) -> u64 {
        self.too_large
    }

    /// Moves the pending list out (keeping its allocation); give it back with
    /// [`restore_pending`](Self::restore_pending).
    pub(crate) fn take_pending(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.pending)
    }

    /// Returns the (handled) pending list's allocation.
    pub(crate) fn restore_pending(&mut self, mut list: Vec<u32>) {
        list.clear();
        if self.pending.capacity() < list.capacity() {
            list.append(&mut self.pending);
            self.pending = list;
        }
    }

    pub(crate) fn meta(&self, slot: u32) -> &SlotMeta {
        &self.meta[slot as usize]
    }

    pub(crate) fn payload(&self, slot: u32) -> &[u8] {
        let start = slot as usize * self.slot_size;
        &self.data[start..start + self.meta[slot as usize].len as usize]
    }

    /// Returns a slot to the pool.
    pub(crate) fn release(&mut self, slot: u32) {
        debug_assert!(self.free.len() < self.meta.len());
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    #[test]
    fn push_fills_slots_until_full() {
        let mut q = SendQueue::new(2, 8);
        let t = PortToken::new(0, 0);
        q.push(t, dst(), b"ab").unwrap();
        q.push(t, dst(), b"").unwrap();
        assert_eq!(
            q.push(t, dst(), b"c"),
            Err(SendError::QueueFull { capacity: 2 })
        );
        assert_eq!(q.queue_full(), 1);
        assert_eq!(q.len(), 2);
        let pending = q.take_pending();
        assert_eq!(q.payload(pending[0]), b"ab");
        assert_eq!(q.payload(pending[1]), b"");
        for &slot in &pending {
            q.release(slot);
        }
        q.restore_pending(pending);
        assert!(q.is_empty());
        assert_eq!(q.available(), 2);
    }

    #[test]
    fn oversized_push_is_refused_and_counted() {
        let mut q = SendQueue::new(2, 8);
        let err = q.push(PortToken::new(0, 0), dst(), &[0; 9]).unwrap_err();
        assert_eq!(err, SendError::TooLarge { len: 9, max: 8 });
        assert_eq!(q.too_large(), 1);
        assert_eq!(q.available(), 2);
    }

    #[test]
    fn push_with_writes_in_place() {
        let mut q = SendQueue::new(1, 8);
        q.push_with(PortToken::new(3, 1), dst(), 3, |b| {
            b.copy_from_slice(b"xyz")
        })
        .unwrap();
        let pending = q.take_pending();
        assert_eq!(q.payload(pending[0]), b"xyz");
        assert_eq!(q.meta(pending[0]).token, PortToken::new(3, 1));
    }
}
