//! End-to-end tests of both I/O drivers over real loopback sockets.
//!
//! Every test runs once per driver (`epoll::*`, `io_uring::*`). A kernel that refuses io_uring
//! makes the io_uring variants print a loud notice and return; on Linux 6.x they run.
//! Most tests drive the driver from the test thread itself: loopback delivery is synchronous,
//! so a datagram sent before `poll` is there when `poll` looks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchboard_engine::rt::{
    self, AnyDriver, Driver, DriverKind, DriverOptions, DriverStats, PortToken, RecvDatagram,
    SendError, SendQueue,
};

const WAIT: Duration = Duration::from_secs(5);

fn open(kind: DriverKind, options: &DriverOptions) -> Option<AnyDriver> {
    match rt::open_driver(kind, options) {
        Ok(driver) => {
            assert_eq!(driver.kind(), kind);
            Some(driver)
        }
        Err(e) if kind == DriverKind::IoUring && refused(&e) => {
            eprintln!(
                "\n!!!!! SKIPPED: this kernel refuses io_uring ({e}); io_uring driver NOT tested !!!!!\n"
            );
            None
        }
        Err(e) => panic!("opening the {kind} driver failed: {e}"),
    }
}

fn refused(e: &io::Error) -> bool {
    // EPERM (seccomp), ENOSYS and missing features all map to these kinds.
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
    )
}

fn bind(ip: &str) -> UdpSocket {
    UdpSocket::bind((ip, 0)).unwrap()
}

/// A socket on a port below the usual ephemeral range (32768-60999), one range per driver.
fn bind_outside_ephemeral_range(kind: DriverKind) -> UdpSocket {
    let base = if kind == DriverKind::Epoll {
        23_000
    } else {
        24_000
    };
    (base..base + 1000)
        .find_map(|port| UdpSocket::bind(("127.0.0.1", port)).ok())
        .expect("no free port in the test range")
}

fn client(ip: &str) -> UdpSocket {
    let s = bind(ip);
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Registers `socket`, returning its token and address.
fn register(driver: &mut AnyDriver, socket: UdpSocket) -> (PortToken, SocketAddr) {
    let addr = socket.local_addr().unwrap();
    let token = driver.register(socket).unwrap();
    assert_eq!(driver.local_addr(token), Some(addr));
    (token, addr)
}

/// Polls until `driver` has received `total` datagrams in all, handing each to `on_recv`, then
/// flushes. Panics after [`WAIT`].
fn pump<F>(driver: &mut AnyDriver, total: u64, mut on_recv: F)
where
    F: FnMut(RecvDatagram<'_>, &mut SendQueue),
{
    let deadline = Instant::now() + WAIT;
    while driver.stats().received < total {
        assert!(
            Instant::now() < deadline,
            "only {:?} of {total} datagrams arrived",
            driver.stats()
        );
        driver
            .poll(Some(Duration::from_millis(20)), &mut on_recv)
            .unwrap();
    }
    driver.flush().unwrap();
}

/// Polls for `time`, collecting everything delivered.
fn drain_for(driver: &mut AnyDriver, time: Duration) -> Vec<(PortToken, SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let end = Instant::now() + time;
    while Instant::now() < end {
        driver
            .poll(Some(Duration::from_millis(10)), |d, _| {
                got.push((d.token, d.src, d.data.to_vec()))
            })
            .unwrap();
    }
    got
}

fn recv_from(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    buf.truncate(n);
    (buf, from)
}

fn payload(i: usize) -> Vec<u8> {
    let len = (i * 37) % 1200;
    (0..len).map(|b| (b ^ i) as u8).collect()
}

fn relay_keeps_bytes_intact(kind: DriverKind, ip: &str) {
    let Some(mut driver) = open(kind, &DriverOptions::default()) else {
        return;
    };
    let (a, a_addr) = register(&mut driver, bind(ip));
    let (b, b_addr) = register(&mut driver, bind(ip));
    let caller = client(ip);
    let callee = client(ip);
    let callee_addr = callee.local_addr().unwrap();
    let caller_addr = caller.local_addr().unwrap();

    let count = 1000;
    let burst = 50;
    for start in (0..count).step_by(burst) {
        for i in start..start + burst {
            caller.send_to(&payload(i), a_addr).unwrap();
        }
        let before = driver.stats().received;
        pump(&mut driver, before + burst as u64, |d, tx| {
            assert_eq!(d.token, a);
            assert_eq!(d.src, caller_addr);
            tx.push(b, callee_addr, d.data).unwrap();
        });
        for i in start..start + burst {
            let (bytes, from) = recv_from(&callee);
            assert_eq!(from, b_addr);
            assert_eq!(bytes, payload(i), "datagram {i}");
        }
    }
    // And back: callee → B → A → caller.
    callee.send_to(b"reply", b_addr).unwrap();
    let before = driver.stats().received;
    pump(&mut driver, before + 1, |d, tx| {
        assert_eq!(d.token, b);
        tx.push(a, caller_addr, d.data).unwrap();
    });
    assert_eq!(recv_from(&caller), (b"reply".to_vec(), a_addr));

    // io_uring counts a send when its completion is reaped, at the next poll.
    drain_for(&mut driver, Duration::from_millis(20));
    let stats = driver.stats();
    assert_eq!(stats.received, count as u64 + 1);
    assert_eq!(stats.sent, count as u64 + 1);
    assert_eq!(stats.sent_bytes, stats.received_bytes);
    assert_eq!(
        (stats.send_errors, stats.truncated, stats.send_queue_full),
        (0, 0, 0)
    );
    assert_eq!(stats.ports, 2);
}

fn relay_keeps_bytes_intact_v4(kind: DriverKind) {
    relay_keeps_bytes_intact(kind, "127.0.0.1");
}

fn relay_keeps_bytes_intact_v6(kind: DriverKind) {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("\n!!!!! SKIPPED: no ::1 on this host; IPv6 relay NOT tested !!!!!\n");
        return;
    }
    relay_keeps_bytes_intact(kind, "::1");
}

fn many_sockets_each_receive_and_answer(kind: DriverKind) {
    let Some(mut driver) = open(kind, &DriverOptions::default()) else {
        return;
    };
    let n = 500;
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push(register(&mut driver, bind("127.0.0.1")));
    }
    let by_index: HashMap<usize, SocketAddr> = ports.iter().map(|(t, a)| (t.index(), *a)).collect();
    let peer = client("127.0.0.1");
    for chunk in ports.chunks(100) {
        for (_, addr) in chunk {
            peer.send_to(&addr.port().to_be_bytes(), addr).unwrap();
        }
        let before = driver.stats().received;
        // Echo each datagram back from the port it arrived on.
        pump(&mut driver, before + chunk.len() as u64, |d, tx| {
            assert_eq!(d.data, &by_index[&d.token.index()].port().to_be_bytes());
            tx.push(d.token, d.src, d.data).unwrap();
        });
        for _ in chunk {
            let (bytes, from) = recv_from(&peer);
            assert_eq!(bytes, from.port().to_be_bytes());
        }
    }
    drain_for(&mut driver, Duration::from_millis(20));
    assert_eq!(driver.stats().sent, n as u64);
    assert_eq!(driver.stats().ports, n as u64);
}

fn wake_interrupts_a_blocking_poll(kind: DriverKind) {
    let (waker_tx, waker_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let Some(mut driver) = open(kind, &DriverOptions::default()) else {
            drop(waker_tx);
            return;
        };
        let _port = register(&mut driver, bind("127.0.0.1"));
        waker_tx.send(driver.waker()).unwrap();
        let delivered = driver.poll(None, |_, _| {}).unwrap();
        done_tx.send((delivered, driver.stats())).unwrap();
    });
    let Ok(waker) = waker_rx.recv() else { return };
    std::thread::sleep(Duration::from_millis(50));
    waker.wake();
    let (delivered, stats) = done_rx
        .recv_timeout(WAIT)
        .expect("a blocked poll did not return after wake()");
    assert_eq!(delivered, 0);
    assert_eq!(stats.wakeups, 1);
    worker.join().unwrap();
}

fn wake_before_poll_is_not_lost(kind: DriverKind) {
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let Some(mut driver) = open(kind, &DriverOptions::default()) else {
            drop(done_tx);
            return;
        };
        let waker = driver.waker();
        std::thread::spawn(move || waker.wake()).join().unwrap();
        driver.poll(None, |_, _| {}).unwrap();
        // Several wake-ups coalesce into one.
        driver.waker().wake();
        driver.waker().wake();
        driver.poll(None, |_, _| {}).unwrap();
        done_tx.send(driver.stats()).unwrap();
    });
    if let Ok(stats) = done_rx.recv_timeout(WAIT) {
        assert_eq!(stats.wakeups, 2);
    }
    worker.join().unwrap();
}

fn timeout_returns_without_datagrams(kind: DriverKind) {
    let Some(mut driver) = open(kind, &DriverOptions::default()) else {
        return;
    };
    let _port = register(&mut driver, bind("127.0.0.1"));
    let start = Instant::now();
    let mut delivered = 0;
    while start.elapsed() < Duration::from_millis(30) {
        delivered += driver
            .poll(Some(Duration::from_millis(5)), |_, _| {})
            .unwrap();
    }
    assert_eq!(delivered, 0);
    assert_eq!(driver.poll(Some(Duration::ZERO), |_, _| {}).unwrap(), 0);
}

fn deregister_stops_delivery_and_frees_the_port(kind: DriverKind) {
    let Some(mut driver) = open(kind, &DriverOptions::default()) else {
        return;
    };
    // A port below the ephemeral range, so that sockets other tests bind to port 0 cannot grab
    // it between deregistering and rebinding.
    let (a, a_addr) = register(&mut driver, bind_outside_ephemeral_range(kind));
    let (b, _) = register(&mut driver, bind("127.0.0.1"));
    let peer = client("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();

    peer.send_to(b"before", a_addr).unwrap();
    pump(&mut driver, 1, |d, _| assert_eq!(d.data, b"before"));

    // Datagrams already queued on the socket and sends queued from it are both dropped.
    peer.send_to(b"queued", a_addr).unwrap();
    driver.queue_send(a, peer_addr, b"never").unwrap();
    driver.deregister(a).unwrap();
    assert_eq!(
        driver.deregister(a).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(driver.local_addr(a), None);
    let _ = peer.send_to(b"after", a_addr);
    assert!(drain_for(&mut driver, Duration::from_millis(60)).is_empty());
    let stats = driver.stats();
    assert_eq!(
        (
            stats.received,
            stats.sent,
            stats.send_stale_token,
            stats.ports
        ),
        (1, 0, 1, 1)
    );

    // The socket is closed: the port can be bound again, and a new registration may reuse the
    // slot index under a new generation.
    let again = UdpSocket::bind(a_addr).expect("deregistered port still bound");
    let (a2, _) = register(&mut driver, again);
    assert_ne!(a2, a);
    peer.send_to(b"new", a_addr).unwrap();
    pump(&mut driver, 2, |d, _| {
        assert_eq!(d.token, a2);
        assert_eq!(d.data, b"new");
    });
    // The other port never noticed.
    peer.send_to(b"b", driver.local_addr(b).unwrap()).unwrap();
    pump(&mut driver, 3, |d, _| assert_eq!(d.token, b));
}

fn oversized_datagram_is_counted_and_dropped(kind: DriverKind) {
    let options = DriverOptions::default();
    let max = options.max_datagram;
    let Some(mut driver) = open(kind, &options) else {
        return;
    };
    let (a, a_addr) = register(&mut driver, bind("127.0.0.1"));
    let peer = client("127.0.0.1");
    peer.send_to(&vec![7u8; 65_000], a_addr).unwrap();
    peer.send_to(&vec![8u8; max + 1], a_addr).unwrap();
    peer.send_to(&vec![9u8; max], a_addr).unwrap();
    let mut sizes = Vec::new();
    pump(&mut driver, 1, |d, _| {
        assert_eq!(d.token, a);
        assert!(d.data.iter().all(|&b| b == 9));
        sizes.push(d.data.len());
    });
    assert_eq!(sizes, [max]);
    assert_eq!(driver.stats().truncated, 2);
    assert!(drain_for(&mut driver, Duration::from_millis(20)).is_empty());
}

fn zero_length_datagram_is_delivered(kind: DriverKind) {
    let Some(mut driver) = open(kind, &DriverOptions::default()) else {
        return;
    };
    let (a, a_addr) = register(&mut driver, bind("127.0.0.1"));
    let peer = client("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    peer.send_to(&[], a_addr).unwrap();
    pump(&mut driver, 1, |d, tx| {
        assert_eq!((d.token, d.src, d.data.len()), (a, peer_addr, 0));
        tx.push(d.token, d.src, d.data).unwrap();
    });
    assert_eq!(recv_from(&peer), (Vec::new(), a_addr));
    drain_for(&mut driver, Duration::from_millis(20));
    assert_eq!(driver.stats().sent, 1);
}

fn failed_sends_do_not_break_the_driver(kind: DriverKind) {
    let Some(mut driver) = open(kind, &DriverOptions::default()) else {
        return;
    };
    let (a, a_addr) = register(&mut driver, bind("127.0.0.1"));
    let closed = bind("127.0.0.1").local_addr().unwrap(); // dropped: nothing listens there
    let v6: SocketAddr = "[::1]:9".parse().unwrap(); // wrong family for a v4 socket
    let peer = client("127.0.0.1");
    for round in 0..3 {
        for _ in 0..10 {
            driver.queue_send(a, closed, b"unreachable").unwrap();
        }
        driver.queue_send(a, v6, b"wrong family").unwrap();
        driver.flush().unwrap();
        // ICMP port-unreachable may come back; the port must keep receiving and sending.
        peer.send_to(&[round], a_addr).unwrap();
        pump(&mut driver, u64::from(round) + 1, |d, tx| {
            assert_eq!(d.data, &[round]);
            tx.push(d.token, d.src, d.data).unwrap();
        });
        assert_eq!(recv_from(&peer), (vec![round], a_addr));
    }
    drain_for(&mut driver, Duration::from_millis(20));
    let stats = driver.stats();
    assert_eq!(
        stats.sent + stats.send_errors + stats.send_would_block,
        36,
        "{stats:?}"
    );
    assert!(
        stats.send_errors >= 3,
        "wrong-family sends must be counted: {stats:?}"
    );
}

fn send_slot_exhaustion_is_a_counted_error(kind: DriverKind) {
    let mut options = DriverOptions::default();
    options.send_slots = 4;
    let Some(mut driver) = open(kind, &options) else {
        return;
    };
    let (a, _) = register(&mut driver, bind("127.0.0.1"));
    let peer = client("127.0.0.1");
    let peer_addr = peer.local_addr().unwrap();
    for i in 0..4u8 {
        driver.queue_send(a, peer_addr, &[i]).unwrap();
    }
    assert_eq!(
        driver.queue_send(a, peer_addr, b"x"),
        Err(SendError::QueueFull { capacity: 4 })
    );
    let too_big = vec![0u8; options.max_datagram + 1];
    assert!(matches!(
        driver.queue_send(a, peer_addr, &too_big),
        Err(SendError::TooLarge { .. })
    ));
    driver.flush().unwrap();
    for i in 0..4u8 {
        assert_eq!(recv_from(&peer).0, [i]);
    }
    // Slots come back (io_uring: once completions are reaped) and sending works again.
    drain_for(&mut driver, Duration::from_millis(20));
    assert_eq!(driver.send_queue().available(), 4);
    driver.queue_send(a, peer_addr, b"again").unwrap();
    driver.flush().unwrap();
    assert_eq!(recv_from(&peer).0, b"again");
    let stats = driver.stats();
    assert_eq!((stats.send_queue_full, stats.send_too_large), (1, 1));
}

fn tiny_pools_still_deliver_everything(kind: DriverKind) {
    // 64 sockets with 4 datagrams queued each, 8 receive buffers and an 8-entry submission
    // queue: receives run dry and must be re-armed far more often than the queue holds. Run on
    // a thread so that a livelocked `poll` fails the test instead of hanging it.
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut options = DriverOptions::default();
        options.recv_buffers = 8;
        options.recv_batch = 4;
        options.ring_entries = 8;
        let Some(mut driver) = open(kind, &options) else {
            drop(done_tx);
            return;
        };
        let peer = client("127.0.0.1");
        let sockets = 64u32;
        let addrs: Vec<SocketAddr> = (0..sockets)
            .map(|_| register(&mut driver, bind("127.0.0.1")).1)
            .collect();
        for i in 0..sockets * 4 {
            peer.send_to(&i.to_be_bytes(), addrs[(i % sockets) as usize])
                .unwrap();
        }
        let mut seen = Vec::new();
        pump(&mut driver, u64::from(sockets) * 4, |d, _| {
            seen.push(u32::from_be_bytes(d.data[..4].try_into().unwrap()))
        });
        seen.sort_unstable();
        done_tx.send((seen, driver.stats())).unwrap();
    });
    let Ok((seen, stats)) = done_rx.recv_timeout(WAIT * 2) else {
        panic!("the {kind} driver did not deliver 256 datagrams in time (livelock?)");
    };
    assert_eq!(seen, (0..256).collect::<Vec<_>>());
    if kind == DriverKind::IoUring {
        assert!(stats.recv_no_buffers > 0, "{stats:?}");
    }
}

fn sends_leave_with_the_next_poll_without_flush(kind: DriverKind) {
    let Some(mut driver) = open(kind, &DriverOptions::default()) else {
        return;
    };
    let (a, a_addr) = register(&mut driver, bind("127.0.0.1"));
    let peer = client("127.0.0.1");
    for i in 0..20u8 {
        peer.send_to(&[i], a_addr).unwrap();
        // Echo from the callback; the only call after it is the next `poll`.
        let deadline = Instant::now() + WAIT;
        while driver.stats().received <= u64::from(i) {
            assert!(Instant::now() < deadline);
            driver
                .poll(Some(Duration::from_millis(20)), |d, tx| {
                    tx.push(a, d.src, d.data).unwrap();
                })
                .unwrap();
        }
        driver.poll(Some(Duration::ZERO), |_, _| {}).unwrap();
        assert_eq!(recv_from(&peer), (vec![i], a_addr));
    }
}

fn stats_start_at_zero(kind: DriverKind) {
    let Some(driver) = open(kind, &DriverOptions::default()) else {
        return;
    };
    assert_eq!(driver.stats(), DriverStats::default());
}

macro_rules! per_driver {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $(#[test] fn $name() { super::$name(super::DriverKind::Epoll) })*
        }
        mod io_uring {
            $(#[test] fn $name() { super::$name(super::DriverKind::IoUring) })*
        }
    };
}

per_driver!(
    relay_keeps_bytes_intact_v4,
    relay_keeps_bytes_intact_v6,
    many_sockets_each_receive_and_answer,
    wake_interrupts_a_blocking_poll,
    wake_before_poll_is_not_lost,
    timeout_returns_without_datagrams,
    deregister_stops_delivery_and_frees_the_port,
    oversized_datagram_is_counted_and_dropped,
    zero_length_datagram_is_delivered,
    failed_sends_do_not_break_the_driver,
    send_slot_exhaustion_is_a_counted_error,
    tiny_pools_still_deliver_everything,
    sends_leave_with_the_next_poll_without_flush,
    stats_start_at_zero,
);

#[test]
fn auto_opens_a_working_driver() {
    let mut driver = rt::open_driver(DriverKind::Auto, &DriverOptions::default()).unwrap();
    eprintln!("auto chose {}", driver.kind());
    let (_, a_addr) = register(&mut driver, bind("127.0.0.1"));
    client("127.0.0.1").send_to(b"hi", a_addr).unwrap();
    pump(&mut driver, 1, |d, _| assert_eq!(d.data, b"hi"));
}
