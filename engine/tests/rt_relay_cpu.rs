//! CPU cost of the relay path per driver: a measurement, not a test (`#[ignore]`d).
//!
//! ```text
//! cargo test --release -p switchboard-engine --test rt_relay_cpu -- --ignored --nocapture
//! ```
//!
//! A driver thread owns `SB_RT_PAIRS` socket pairs (default 1000: 2000 registered sockets) and
//! relays every datagram arriving on one side of a pair out of the other side, as a call's two
//! legs do. A load thread sends 172-byte datagrams (G.711 20 ms RTP) to every registered socket
//! at `SB_RT_PPS` per socket (default 50), spread evenly over each millisecond, and counts what
//! comes back. After a one-second warm-up the driver thread's own CPU time is read over
//! `SB_RT_SECS` seconds (default 5) from `/proc/thread-self/schedstat` (nanoseconds on CPU,
//! kernel work done on its behalf included) and `/proc/thread-self/stat` (user/system split)
//! and divided by the datagrams it forwarded. `SB_RT_DRIVER=epoll|io_uring` limits the run to
//! one driver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchboard_engine::rt::{self, Driver, DriverKind, DriverOptions, PortToken};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nanoseconds the calling thread has been on a CPU.
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// (user, system) clock ticks of the calling thread.
fn thread_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state field (3).
    (fields[11].parse().unwrap(), fields[12].parse().unwrap())
}

fn big_socket() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.into()
}

struct Report {
    forwarded: u64,
    cpu_ns: u64,
    user_ticks: u64,
    sys_ticks: u64,
    polls: u64,
    window: Duration,
}

fn run(kind: DriverKind, pairs: usize, pps: u64, secs: u64) {
    let caller = big_socket();
    let callee = big_socket();
    let caller_addr = caller.local_addr().unwrap();
    let callee_addr = callee.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = mpsc::channel();
    let (report_tx, report_rx) = mpsc::channel();
    let warmup = Duration::from_secs(1);
    let window = Duration::from_secs(secs);

    let driver_stop = stop.clone();
    let driver_thread = std::thread::spawn(move || {
        let mut driver = rt::open_driver(kind, &DriverOptions::default()).unwrap();
        // route[token index] = (out token, destination)
        let mut route: Vec<(PortToken, SocketAddr)> = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..pairs {
            let a = driver
                .register(UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            let b = driver
                .register(UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            let need = a.index().max(b.index()) + 1;
            if route.len() < need {
                route.resize(need, (a, caller_addr));
            }
            route[a.index()] = (b, callee_addr);
            route[b.index()] = (a, caller_addr);
            addrs.push((driver.local_addr(a).unwrap(), driver.local_addr(b).unwrap()));
        }
        addr_tx.send((addrs, driver.waker())).unwrap();
        let mut relay = |d: rt::RecvDatagram<'_>, tx: &mut rt::SendQueue| {
            let (out, dst) = route[d.token.index()];
            let _ = tx.push(out, dst, d.data);
        };
        let start = Instant::now();
        while start.elapsed() < warmup {
            driver
                .poll(Some(Duration::from_millis(10)), &mut relay)
                .unwrap();
        }
        let (stats0, cpu0, ticks0, t0) = (
            driver.stats(),
            thread_cpu_ns(),
            thread_ticks(),
            Instant::now(),
        );
        while t0.elapsed() < window {
            driver
                .poll(Some(Duration::from_millis(10)), &mut relay)
                .unwrap();
        }
        let (stats1, cpu1, ticks1, elapsed) = (
            driver.stats(),
            thread_cpu_ns(),
            thread_ticks(),
            t0.elapsed(),
        );
        report_tx
            .send(Report {
                forwarded: stats1.received - stats0.received,
                cpu_ns: cpu1 - cpu0,
                user_ticks: ticks1.0 - ticks0.0,
                sys_ticks: ticks1.1 - ticks0.1,
                polls: stats1.polls - stats0.polls,
                window: elapsed,
            })
            .unwrap();
        while !driver_stop.load(Ordering::Relaxed) {
            driver
                .poll(Some(Duration::from_millis(10)), &mut relay)
                .unwrap();
        }
        let s = driver.stats();
        (
            s.received,
            s.sent,
            s.send_errors + s.send_would_block + s.send_queue_full,
            s.recv_no_buffers,
        )
    });

    let (addrs, waker) = addr_rx.recv().unwrap();
    caller.set_nonblocking(true).unwrap();
    callee.set_nonblocking(true).unwrap();
    // Every registered socket gets `pps` datagrams a second: the caller feeds the A sides, the
    // callee the B sides, spread over 1 ms ticks.
    let targets: Vec<(&UdpSocket, SocketAddr)> = addrs
        .iter()
        .flat_map(|&(a, b)| [(&caller, a), (&callee, b)])
        .collect();
    let per_second = targets.len() as u64 * pps;
    let payload = [0x80u8; 172];
    let mut buf = [0u8; 2048];
    let (mut sent, mut received) = (0u64, 0u64);
    let start = Instant::now();
    let run_for = warmup + window + Duration::from_millis(200);
    let mut next = 0usize;
    while start.elapsed() < run_for {
        let due = (start.elapsed().as_micros() as u64 * per_second / 1_000_000) as usize;
        while (sent as usize) < due {
            let (socket, dst) = targets[next];
            if socket.send_to(&payload, dst).is_ok() {
                sent += 1;
            }
            next = (next + 1) % targets.len();
        }
        for s in [&caller, &callee] {
            while s.recv_from(&mut buf).is_ok() {
                received += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let report = report_rx.recv().unwrap();
    let drain_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < drain_until {
        for s in [&caller, &callee] {
            while s.recv_from(&mut buf).is_ok() {
                received += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    waker.wake();
    let (d_recv, d_sent, d_send_fail, no_bufs) = driver_thread.join().unwrap();

    let tick_ns = 1e9 / 100.0; // USER_HZ
    let per_pkt = |ns: f64| ns / report.forwarded.max(1) as f64 / 1000.0;
    println!(
        "{kind:>8}: {pairs} pairs x2 at {pps} pps = {per_second} pps offered; forwarded {} in {:.2} s ({:.0} pps), {:.1} datagrams/poll",
        report.forwarded,
        report.window.as_secs_f64(),
        report.forwarded as f64 / report.window.as_secs_f64(),
        report.forwarded as f64 / report.polls.max(1) as f64,
    );
    println!(
        "{kind:>8}: driver thread CPU {:.2} us/packet (schedstat); user {:.2} + sys {:.2} us/packet (stat ticks); {:.0}% of a core",
        per_pkt(report.cpu_ns as f64),
        per_pkt(report.user_ticks as f64 * tick_ns),
        per_pkt(report.sys_ticks as f64 * tick_ns),
        report.cpu_ns as f64 / report.window.as_nanos() as f64 * 100.0,
    );
    println!(
        "{kind:>8}: load sent {sent}, got back {received} (loss {:.3}%); driver received {d_recv}, sent {d_sent}, send failures {d_send_fail}, ENOBUFS {no_bufs}",
        (sent.saturating_sub(received)) as f64 * 100.0 / sent.max(1) as f64,
    );
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn relay_cpu_per_packet() {
    let pairs = env("SB_RT_PAIRS", 1000) as usize;
    let pps = env("SB_RT_PPS", 50);
    let secs = env("SB_RT_SECS", 5);
    let only = std::env::var("SB_RT_DRIVER").ok();
    for kind in [DriverKind::Epoll, DriverKind::IoUring] {
        if only.as_deref().is_some_and(|o| o != kind.as_str()) {
            continue;
        }
        if kind == DriverKind::IoUring && rt::open_driver(kind, &DriverOptions::default()).is_err()
        {
            eprintln!("!!!!! io_uring refused here; not measured !!!!!");
            continue;
        }
        run(kind, pairs, pps, secs);
    }
}
