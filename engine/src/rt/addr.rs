//! Socket addresses in the kernel's `sockaddr_in` / `sockaddr_in6` byte layout, encoded and
//! decoded without `unsafe` so both drivers share one tested implementation.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Bytes reserved for a socket address: `sockaddr_in6` (28) rounded up to 8.
pub(crate) const NAME_LEN: usize = 32;

/// A `sockaddr_in` or `sockaddr_in6` as the kernel reads and writes it.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct RawAddr {
    pub(crate) bytes: [u8; NAME_LEN],
}

impl RawAddr {
    pub(crate) const ZERO: Self = Self {
        bytes: [0; NAME_LEN],
    };

    /// Encodes `addr`, returning the length the kernel expects in `msg_namelen`.
    pub(crate) fn encode(&mut self, addr: &SocketAddr) -> u32 {
        let b = &mut self.bytes;
        match addr {
            SocketAddr::V4(a) => {
                b[..16].fill(0);
                b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&a.port().to_be_bytes());
                b[4..8].copy_from_slice(&a.ip().octets());
                16
            }
            SocketAddr::V6(a) => {
                b[..28].fill(0);
                b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&a.port().to_be_bytes());
                b[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
                b[8..24].copy_from_slice(&a.ip().octets());
                b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
                28
            }
        }
    }
}

/// Decodes the first `len` bytes of a kernel-written socket address; `None` for other families
/// or short names.
pub(crate) fn decode(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    if i32::from(family) == libc::AF_INET && name.len() >= 8 {
        let port = u16::from_be_bytes([name[2], name[3]]);
        let ip = Ipv4Addr::new(name[4], name[5], name[6], name[7]);
        Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    } else if i32::from(family) == libc::AF_INET6 && name.len() >= 28 {
        let port = u16::from_be_bytes([name[2], name[3]]);
        let flowinfo = u32::from_be_bytes([name[4], name[5], name[6], name[7]]);
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&name[8..24]);
        let scope_id = u32::from_ne_bytes([name[24], name[25], name[26], name[27]]);
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(octets),
            port,
            flowinfo,
            scope_id,
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        let addrs: [SocketAddr; 3] = [
            "127.0.0.1:30000".parse().unwrap(),
            "[::1]:40002".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 0x1234, 3)),
        ];
        for addr in addrs {
            let mut raw = RawAddr::ZERO;
            let len = raw.encode(&addr) as usize;
            assert_eq!(decode(&raw.bytes[..len]), Some(addr));
        }
    }

    #[test]
    fn matches_std_layout_of_libc_structs() {
        assert!(NAME_LEN >= std::mem::size_of::<libc::sockaddr_in6>());
        assert_eq!(std::mem::size_of::<libc::sockaddr_in>(), 16);
        assert_eq!(std::mem::size_of::<libc::sockaddr_in6>(), 28);
    }

    #[test]
    fn rejects_unknown_families_and_short_names() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0, 0, 0, 0, 0, 0, 0, 0]), None);
        let mut raw = RawAddr::ZERO;
        raw.encode(&"[::1]:5".parse().unwrap());
        assert_eq!(decode(&raw.bytes[..20]), None);
    }
}
