//! The engine's port allocator for the NG call-signalling state: port pairs come from the
//! slice of the range owned by the call's worker, and are bound at once, so a port held by
//! another process is skipped before any SDP names it. The bound sockets wait here until the
//! media command that hands them to the worker.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use switchboard_proto::ng::AddressFamily;
use switchboard_proto::session::{InterfaceUsage, LocalPair, PortAllocator, PortError};
use tracing::warn;

use crate::config::Interface;
use crate::rt::ports::{self, BoundPair, PortPair, PortRange, SocketOptions};

/// Port pairs of every worker, and which worker each call lives on.
#[derive(Debug)]
pub struct EnginePorts {
    interfaces: Vec<Interface>,
    range: PortRange,
    workers: Vec<ports::PortAllocator>,
    options: SocketOptions,
    /// Call-id → (worker, pairs allocated).
    calls: HashMap<String, (usize, usize)>,
    /// Pairs allocated: (worker, rtp port) → pair.
    allocated: HashMap<(usize, u16), PortPair>,
    /// Sockets bound and not yet handed to a worker.
    pending: HashMap<(usize, u16), BoundPair>,
    /// Calls per worker, to place new calls on the least loaded.
    load: Vec<usize>,
}

impl EnginePorts {
    /// Partitions `[min, max]` among `workers` workers.
    pub fn new(
        interfaces: Vec<Interface>,
        min: u16,
        max: u16,
        workers: usize,
        quarantine: Duration,
    ) -> Result<Self, ports::PortError> {
        let range = PortRange::new(min, max)?;
        let slices = range.partition(workers)?;
        Ok(Self {
            interfaces,
            range,
            workers: slices
                .into_iter()
                .enumerate()
                .map(|(i, r)| ports::PortAllocator::new(i, r, quarantine))
                .collect(),
            options: SocketOptions::default(),
            calls: HashMap::new(),
            allocated: HashMap::new(),
            pending: HashMap::new(),
            load: vec![0; workers],
        })
    }

    /// The worker a call lives on, if it holds any pair.
    #[must_use]
    pub fn worker_of(&self, call_id: &str) -> Option<usize> {
        self.calls.get(call_id).map(|(w, _)| *w)
    }

    /// Counts an allocated pair under call `to` instead of call `from` (a leg that moved
    /// between calls and outlives the call that allocated it): the pair is released under
    /// `to` from now on. The pair itself (port, worker slice) is unchanged.
    pub fn transfer_pair(&mut self, from: &str, to: &str, pair: &LocalPair) {
        if !self.allocated.contains_key(&(pair.worker, pair.rtp_port)) {
            return;
        }
        if let Some(entry) = self.calls.get_mut(from) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                let w = entry.0;
                self.calls.remove(from);
                if let Some(n) = self.load.get_mut(w) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        let entry = self.calls.entry(to.to_owned()).or_insert((pair.worker, 0));
        if entry.1 == 0 {
            if let Some(n) = self.load.get_mut(entry.0) {
                *n += 1;
            }
        }
        entry.1 += 1;
    }

    /// Takes the bound sockets of a pair, to hand them to its worker.
    pub fn take_sockets(&mut self, pair: &LocalPair) -> Option<BoundPair> {
        self.pending.remove(&(pair.worker, pair.rtp_port))
    }

    fn interface(
        &self,
        family: AddressFamily,
        name: Option<&str>,
    ) -> Result<&Interface, PortError> {
        let want_v4 = matches!(family, AddressFamily::Ip4);
        let named: Vec<&Interface> = match name {
            Some(n) => {
                let v: Vec<&Interface> = self.interfaces.iter().filter(|i| i.name == n).collect();
                if v.is_empty() {
                    return Err(PortError::UnknownInterface(n.to_owned()));
                }
                v
            }
            None => self.interfaces.iter().collect(),
        };
        named
            .iter()
            .find(|i| i.local.is_ipv4() == want_v4)
            .or_else(|| named.first())
            .copied()
            .ok_or(PortError::Exhausted)
    }
}

impl PortAllocator for EnginePorts {
    fn allocate_pair(
        &mut self,
        call_id: &str,
        family: AddressFamily,
        interface: Option<&str>,
    ) -> Result<LocalPair, PortError> {
        let iface = self.interface(family, interface)?.clone();
        let worker = match self.calls.get(call_id) {
            Some((w, _)) => *w,
            None => self
                .load
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| **n)
                .map_or(0, |(i, _)| i),
        };
        let alloc = self.workers.get_mut(worker).ok_or(PortError::Exhausted)?;
        let bound = match ports::bind_pair(alloc, iface.local, Instant::now(), &self.options) {
            Ok(b) => b,
            Err(e) => {
                warn!(worker, error = %e, "no port pair");
                return Err(PortError::Exhausted);
            }
        };
        let pair = LocalPair {
            address: iface.advertised,
            rtp_port: bound.pair.rtp(),
            rtcp_port: bound.pair.rtcp(),
            worker,
        };
        self.allocated.insert((worker, pair.rtp_port), bound.pair);
        self.pending.insert((worker, pair.rtp_port), bound);
        let entry = self.calls.entry(call_id.to_owned()).or_insert((worker, 0));
        if entry.1 == 0 {
            self.load[worker] += 1;
        }
        entry.1 += 1;
        Ok(pair)
    }

    fn release_pair(&mut self, call_id: &str, pair: &LocalPair) {
        let key = (pair.worker, pair.rtp_port);
        self.pending.remove(&key);
        if let Some(p) = self.allocated.remove(&key) {
            if let Some(a) = self.workers.get_mut(pair.worker) {
                let _ = a.release(p, Instant::now());
            }
        }
        if let Some(entry) = self.calls.get_mut(call_id) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                let w = entry.0;
                self.calls.remove(call_id);
                if let Some(n) = self.load.get_mut(w) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    fn address(&self, family: AddressFamily, interface: Option<&str>) -> Option<IpAddr> {
        self.interface(family, interface).ok().map(|i| i.advertised)
    }

    fn usage(&self) -> Vec<InterfaceUsage> {
        let used: usize = self.workers.iter().map(ports::PortAllocator::in_use).sum();
        let total = self.range.pairs();
        self.interfaces
            .iter()
            .map(|i| InterfaceUsage {
                name: i.name.clone(),
                address: i.advertised,
                min: self.range.min(),
                max: self.range.max(),
                used: u32::try_from(used * 2).unwrap_or(u32::MAX),
                free: u32::try_from(total.saturating_sub(used) * 2).unwrap_or(u32::MAX),
                last: 0,
            })
            .collect()
    }
}

/// The local RTP address of a pair as the SDP advertises it (the key of stream statistics).
#[must_use]
pub fn advertised_rtp(pair: &LocalPair) -> SocketAddr {
    SocketAddr::new(pair.address, pair.rtp_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(workers: usize) -> EnginePorts {
        let iface: Interface = "127.0.0.1".parse().unwrap();
        // A high range, unlikely to be in use by anything else on the machine.
        EnginePorts::new(vec![iface], 47000, 47019, workers, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn a_call_stays_on_one_worker_and_calls_spread() {
        let mut p = ports(2);
        let a1 = p.allocate_pair("a", AddressFamily::Ip4, None).unwrap();
        let a2 = p.allocate_pair("a", AddressFamily::Ip4, None).unwrap();
        let b1 = p.allocate_pair("b", AddressFamily::Ip4, None).unwrap();
        assert_eq!(a1.worker, a2.worker);
        assert_ne!(a1.worker, b1.worker);
        assert_eq!(a1.rtp_port % 2, 0);
        assert_eq!(a1.rtcp_port, a1.rtp_port + 1);
        assert!(p.take_sockets(&a1).is_some());
        assert!(p.take_sockets(&a1).is_none());
        p.release_pair("a", &a1);
        p.release_pair("a", &a2);
        assert_eq!(p.worker_of("a"), None);
        assert_eq!(p.worker_of("b"), Some(b1.worker));
    }

    #[test]
    fn a_transferred_pair_is_released_under_its_new_call() {
        let mut p = ports(2);
        let a1 = p.allocate_pair("a", AddressFamily::Ip4, None).unwrap();
        let b1 = p.allocate_pair("b", AddressFamily::Ip4, None).unwrap();
        p.transfer_pair("a", "b", &a1);
        assert_eq!(p.worker_of("a"), None);
        p.release_pair("b", &b1);
        assert_eq!(p.worker_of("b"), Some(b1.worker));
        p.release_pair("b", &a1);
        assert_eq!(p.worker_of("b"), None);
        assert_eq!(p.load, vec![0, 0]);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut p = ports(1);
        let mut n = 0;
        while p.allocate_pair("x", AddressFamily::Ip4, None).is_ok() {
            n += 1;
            assert!(n <= 10);
        }
        assert!(n <= 10);
        assert!(matches!(
            p.allocate_pair("y", AddressFamily::Ip4, Some("nope")),
            Err(PortError::UnknownInterface(_))
        ));
    }
}
