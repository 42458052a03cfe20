//! The retransmission cache: Kamailio resends a request (same cookie) when the reply is late; the
//! repeat must get the first reply again without running the command twice.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::time::Micros;

/// Sizing of a [`RetransmitCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitCacheConfig {
    /// How long a reply is kept (at least 30 s to cover Kamailio's retries comfortably).
    pub ttl: Duration,
    /// Most replies kept; beyond it the oldest are evicted first.
    pub max_entries: usize,
    /// Most reply bytes kept; beyond it the oldest are evicted first.
    pub max_bytes: usize,
}

impl Default for RetransmitCacheConfig {
    fn default() -> Self {
        RetransmitCacheConfig {
            ttl: Duration::from_secs(30),
            max_entries: 65_536,
            max_bytes: 64 << 20,
        }
    }
}

/// Replies by cookie, kept for [`RetransmitCacheConfig::ttl`].
///
/// Drive contract: before executing a request, [`lookup`](Self::lookup) its cookie and resend
/// the stored reply on a hit; after executing, [`insert`](Self::insert) the encoded reply. Call
/// [`expire`](Self::expire) whenever [`poll_timeout`](Self::poll_timeout) is due (or just
/// periodically). Entries live at least `ttl` unless more than `max_entries` replies or
/// `max_bytes` bytes arrive within one `ttl`, in which case the oldest go first: memory stays
/// bounded under a flood.
#[derive(Debug)]
pub struct RetransmitCache {
    config: RetransmitCacheConfig,
    entries: HashMap<Vec<u8>, Entry>,
    order: VecDeque<(Micros, Vec<u8>, u64)>,
    bytes: usize,
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    reply: Vec<u8>,
    generation: u64,
}

impl RetransmitCache {
    /// An empty cache.
    #[must_use]
    pub fn new(config: RetransmitCacheConfig) -> Self {
        RetransmitCache {
            config,
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            generation: 0,
        }
    }

    /// The reply stored for `cookie`, if it has not expired at `now`.
    #[must_use]
    pub fn lookup(&mut self, cookie: &[u8], now: Micros) -> Option<&[u8]> {
        self.expire(now);
        self.entries.get(cookie).map(|e| e.reply.as_slice())
    }

    /// Stores `reply` for `cookie` (replacing any earlier one).
    pub fn insert(&mut self, cookie: &[u8], reply: Vec<u8>, now: Micros) {
        self.expire(now);
        self.generation += 1;
        let generation = self.generation;
        self.bytes += reply.len() + cookie.len();
        if let Some(old) = self
            .entries
            .insert(cookie.to_vec(), Entry { reply, generation })
        {
            self.bytes -= old.reply.len() + cookie.len();
        }
        self.order.push_back((now, cookie.to_vec(), generation));
        while self.entries.len() > self.config.max_entries || self.bytes > self.config.max_bytes {
            if !self.evict_oldest() {
                break;
            }
        }
    }

    /// Drops replies older than the ttl.
    pub fn expire(&mut self, now: Micros) {
        while let Some((at, _, _)) = self.order.front() {
            if now.saturating_since(*at) < self.config.ttl {
                break;
            }
            self.evict_oldest();
        }
    }

    /// When the oldest entry expires.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Micros> {
        self.order.front().map(|(at, _, _)| *at + self.config.ttl)
    }

    /// Number of replies held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, cookie, generation)) = self.order.pop_front() else {
            return false;
        };
        // A cookie re-inserted later has a newer generation: only the newest entry counts.
        if self
            .entries
            .get(&cookie)
            .is_some_and(|e| e.generation == generation)
        {
            if let Some(e) = self.entries.remove(&cookie) {
                self.bytes -= e.reply.len() + cookie.len();
            }
        }
        true
    }
}

impl Default for RetransmitCache {
    fn default() -> Self {
        RetransmitCache::new(RetransmitCacheConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_within_ttl_then_expires() {
        let mut c = RetransmitCache::default();
        c.insert(b"k1", b"reply".to_vec(), Micros::from_secs(10));
        assert_eq!(c.lookup(b"k1", Micros::from_secs(11)), Some(&b"reply"[..]));
        assert_eq!(c.lookup(b"k1", Micros::from_secs(39)), Some(&b"reply"[..]));
        assert_eq!(c.poll_timeout(), Some(Micros::from_secs(40)));
        assert_eq!(c.lookup(b"k1", Micros::from_secs(40)), None);
        assert!(c.is_empty());
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let mut c = RetransmitCache::new(RetransmitCacheConfig {
            ttl: Duration::from_secs(30),
            max_entries: 3,
            max_bytes: 1000,
        });
        for i in 0..10u8 {
            c.insert(&[i], vec![0; 10], Micros::from_secs(1));
        }
        assert_eq!(c.len(), 3);
        assert!(c.lookup(&[9], Micros::from_secs(1)).is_some());
        assert!(c.lookup(&[0], Micros::from_secs(1)).is_none());
        c.insert(b"big", vec![0; 990], Micros::from_secs(2));
        assert!(c.lookup(b"big", Micros::from_secs(2)).is_some());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn reinsert_keeps_newest() {
        let mut c = RetransmitCache::default();
        c.insert(b"k", b"a".to_vec(), Micros::from_secs(0));
        c.insert(b"k", b"b".to_vec(), Micros::from_secs(20));
        assert_eq!(c.lookup(b"k", Micros::from_secs(35)), Some(&b"b"[..]));
        assert_eq!(c.lookup(b"k", Micros::from_secs(50)), None);
        assert_eq!(c.bytes, 0);
    }
}
