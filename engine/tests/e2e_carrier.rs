//! The carrier flow: Kamailio with its `rtpengine` module pointed at Switchboard's NG socket,
//! SIPp as caller and callee, and RTP between the two parties' media ports through the relay.
//! Kamailio's configuration is a stock stateful proxy: only the relay address differs from a
//! deployment in front of rtpengine.
//!
//! If kamailio or sipp is missing the test fails and says so: it never passes silently.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Engine, free_port, have, recv_all, rtp_packet, wait_exit};
use serde_json::{Value, json};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(prog: &str, package: &str) {
    assert!(
        have(prog),
        "`{prog}` is not installed (Debian package {package}); `make test` installs it — \
         this test cannot run without it"
    );
}

/// The port the relay listens on for the party with `tag`, from an NG `query`.
fn local_port(query: &Value, tag: &str) -> Option<u16> {
    let stream = &query["tags"][tag]["medias"][0]["streams"][0];
    let p = &stream["local port"];
    p.as_u64()
        .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
        .and_then(|p| u16::try_from(p).ok())
}

fn carrier(driver: &str) {
    require("kamailio", "kamailio");
    require("sipp", "sip-tester");
    let e = Engine::start(driver, &[]);
    let dir = e.dir.join("carrier");
    std::fs::create_dir_all(&dir).unwrap();

    let sip_port = free_port();
    let uas_port = free_port();
    let uac_port = free_port();
    let cfg = include_str!("carrier/kamailio.cfg")
        .replace("__SIP_PORT__", &sip_port.to_string())
        .replace("__UAS_PORT__", &uas_port.to_string())
        .replace("__NG_ADDR__", &e.ng.to_string());
    let cfg_path = dir.join("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let kam = Kill(
        Command::new("kamailio")
            .arg("-f")
            .arg(&cfg_path)
            .arg("-Y")
            .arg(&dir)
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("kamailio.log")).unwrap())
            .spawn()
            .expect("starting kamailio"),
    );

    // The parties' media sockets: SIPp puts these ports in its SDP; the test itself sends
    // and receives the RTP.
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    let scen = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/carrier");
    let uas = Kill(
        Command::new("sipp")
            .args(["-sf", &format!("{scen}/uas.xml")])
            .args(["-i", "127.0.0.1", "-p", &uas_port.to_string()])
            .args(["-m", "1", "-timeout", "30", "-nostdin", "-trace_err"])
            .args([
                "-key",
                "rtp_port",
                &callee.local_addr().unwrap().port().to_string(),
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sipp (uas)"),
    );
    // Give Kamailio and the callee a moment to bind.
    std::thread::sleep(Duration::from_millis(700));
    let mut uac = Kill(
        Command::new("sipp")
            .args(["-sf", &format!("{scen}/uac.xml")])
            .args(["-i", "127.0.0.1", "-p", &uac_port.to_string()])
            .arg(format!("127.0.0.1:{sip_port}"))
            .args([
                "-m",
                "1",
                "-d",
                "4000",
                "-timeout",
                "30",
                "-nostdin",
                "-trace_err",
            ])
            .args([
                "-key",
                "rtp_port",
                &caller.local_addr().unwrap().port().to_string(),
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sipp (uac)"),
    );

    // Wait until Kamailio has done offer and answer: the call has both tags.
    let ng = e.ng();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (call_id, caller_port, callee_port) = loop {
        assert!(
            Instant::now() < deadline,
            "{driver}: the call never got both tags through Kamailio; see {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
        let list = ng.request(&json!({"command": "list"}));
        let Some(id) = list["calls"][0].as_str().map(str::to_owned) else {
            continue;
        };
        let q = ng.request(&json!({"command": "query", "call-id": id}));
        let tags: Vec<String> = q["tags"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let from = tags.iter().find(|t| t.contains("SIPpTag00"));
        let to = tags.iter().find(|t| t.contains("SIPpTag01"));
        if let (Some(f), Some(t)) = (from, to) {
            if let (Some(pa), Some(pb)) = (local_port(&q, f), local_port(&q, t)) {
                break (id, pa, pb);
            }
        }
    };

    let to_relay_from_caller = SocketAddr::from(([127, 0, 0, 1], caller_port));
    let to_relay_from_callee = SocketAddr::from(([127, 0, 0, 1], callee_port));
    for (from, to, dst, fill) in [
        (&caller, &callee, to_relay_from_caller, 1u8),
        (&callee, &caller, to_relay_from_callee, 2u8),
    ] {
        let sent: Vec<Vec<u8>> = (0..25u16)
            .map(|i| rtp_packet(i, 160 * u32::from(i), 0x5000 + u32::from(fill), fill))
            .collect();
        for p in &sent {
            from.send_to(p, dst).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = recv_all(to, sent.len(), Duration::from_secs(5));
        assert_eq!(got.len(), sent.len(), "{driver}: RTP through the relay");
        for ((bytes, _), want) in got.iter().zip(&sent) {
            assert_eq!(bytes, want, "{driver}: payload intact");
        }
    }

    // The caller hangs up after its hold time; SIPp exits 0 only if the whole dialog
    // (INVITE, 200, ACK, BYE, 200) completed.
    let status = wait_exit(&mut uac.0, Duration::from_secs(20)).expect("sipp uac finished");
    assert!(
        status.success(),
        "{driver}: sipp caller failed ({status}); logs in {}",
        dir.display()
    );
    // Kamailio sent `delete` on the BYE, and it succeeded (the call then lingers for the
    // delete delay, as with rtpengine).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = e.http_get("/metrics");
        if metrics.contains(
            r#"switchboard_control_requests_total{protocol="ng",op="delete",result="ok"} 1"#,
        ) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{driver}: no successful NG delete after BYE for {call_id}:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(uas);
    drop(kam);
}

#[test]
fn kamailio_sipp_call_epoll() {
    carrier("epoll");
}

#[test]
fn kamailio_sipp_call_io_uring() {
    carrier("io_uring");
}
