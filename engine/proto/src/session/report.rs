//! The `query`/`delete` call statistics and the `statistics` reply, in rtpengine 10.5's shape.

use std::net::SocketAddr;

use super::{Call, Command, Leg, Media, PortAllocator, Sessions, StatsSource, StreamStats};
use crate::bencode::Value;
use crate::ng::AddressFamily;
use crate::session::{RemoteEndpoint, UnixMicros};

fn endpoint(addr: Option<SocketAddr>) -> Value {
    match addr {
        Some(a) => Value::dict()
            .with("family", AddressFamily::of(&a.ip()).query_name())
            .with("address", a.ip().to_string())
            .with("port", a.port()),
        None => Value::dict(),
    }
}

fn counters(s: &StreamStats) -> Value {
    Value::dict()
        .with("packets", s.packets)
        .with("bytes", s.bytes)
        .with("errors", s.errors)
}

#[derive(Default)]
struct Totals {
    rtp: StreamStats,
    rtcp: StreamStats,
}

fn add(into: &mut StreamStats, s: &StreamStats) {
    into.packets += s.packets;
    into.bytes += s.bytes;
    into.errors += s.errors;
}

fn stream(
    call: &Call,
    leg: &Leg,
    media: &Media,
    rtcp: bool,
    stats: &dyn StatsSource,
    totals: &mut Totals,
) -> Option<Value> {
    let pair = media.local?;
    let port = if rtcp { pair.rtcp_port } else { pair.rtp_port };
    let s = stats
        .stream(&call.id, SocketAddr::new(pair.address, port))
        .unwrap_or_default();
    add(
        if rtcp {
            &mut totals.rtcp
        } else {
            &mut totals.rtp
        },
        &s,
    );
    let advertised = media
        .sdp_endpoint
        .map(|e: RemoteEndpoint| if rtcp { e.rtcp } else { e.rtp });
    let mut flags = vec![Value::from(if rtcp { "RTCP" } else { "RTP" })];
    if advertised.is_some() {
        flags.push("filled".into());
    }
    if s.learned.is_some() {
        flags.push("confirmed".into());
    }
    if leg.strict_source {
        flags.push("strict source address".into());
    }
    if leg.media_handover {
        flags.push("media handover".into());
    }
    Some(
        Value::dict()
            .with("local port", port)
            .with("local address", pair.address.to_string())
            .with("family", pair.family().query_name())
            .with("endpoint", endpoint(s.learned.or(advertised)))
            .with("advertised endpoint", endpoint(advertised))
            .with(
                "last packet",
                s.last_packet.unwrap_or(media.updated_wall).secs(),
            )
            .with("flags", flags)
            .with("stats", counters(&s)),
    )
}

fn leg_value(call: &Call, leg: &Leg, stats: &dyn StatsSource, totals: &mut Totals) -> Value {
    let peer: Vec<Value> = leg
        .peer
        .and_then(|p| call.legs.get(p))
        .map(|p| {
            vec![
                Value::dict()
                    .with("tag", p.tag.as_str())
                    .with("type", "offer/answer"),
            ]
        })
        .unwrap_or_default();
    let pub_sub = |tag: &str| Value::dict().with("tag", tag).with("type", "pub/sub");
    let mut subscriptions = peer.clone();
    subscriptions.extend(leg.sources.iter().map(|t| pub_sub(t)));
    let mut subscribers = peer;
    subscribers.extend(
        call.legs
            .iter()
            .filter(|l| l.sources.contains(&leg.tag))
            .map(|l| pub_sub(&l.tag)),
    );
    let medias: Vec<Value> = leg
        .medias
        .iter()
        .map(|m| {
            let streams: Vec<Value> = [false, true]
                .into_iter()
                .filter_map(|rtcp| stream(call, leg, m, rtcp, stats, totals))
                .collect();
            let mut flags: Vec<Value> = Vec::new();
            if leg.initialized {
                flags.push("initialized".into());
            }
            if leg.is_subscriber() {
                // rtpengine's view: the relay sends to a subscriber.
                flags.push("send".into());
            } else {
                if m.direction.sends() {
                    flags.push("send".into());
                }
                if m.direction.receives() {
                    flags.push("recv".into());
                }
            }
            if m.rtcp_mux {
                flags.push("rtcp-mux".into());
            }
            if leg.asymmetric {
                flags.push("asymmetric".into());
            }
            if m.transcode.is_some() {
                flags.push("transcoding".into());
            }
            Value::dict()
                .with("index", u64::try_from(m.index).unwrap_or(u64::MAX))
                .with("type", m.kind.as_str())
                .with("protocol", m.protocol.as_str())
                .with("streams", streams)
                .with("flags", flags)
        })
        .collect();
    let mut v = Value::dict().with("tag", leg.tag.as_str());
    if let Some(l) = &leg.label {
        v.push("label", l.as_str());
    }
    if let Some(b) = &leg.via_branch {
        v.push("via-branch", b.as_str());
    }
    v.with("created", leg.created_wall.secs())
        .with("subscriptions", subscriptions)
        .with("subscribers", subscribers)
        .with("medias", medias)
}

/// The call statistics of `query` and `delete`: with `from_tag`, only that leg and its peer
/// (nothing if the tag is unknown).
pub(super) fn call_stats(call: &Call, from_tag: Option<&str>, stats: &dyn StatsSource) -> Value {
    let order: Vec<usize> = match from_tag {
        None => (0..call.legs.len()).collect(),
        Some(t) => match call.legs.iter().position(|l| l.tag == t) {
            Some(i) => std::iter::once(i)
                .chain(call.legs[i].peer)
                .chain(
                    call.legs[i]
                        .sources
                        .iter()
                        .filter_map(|t| call.legs.iter().position(|l| l.tag == *t)),
                )
                .collect(),
            None => Vec::new(),
        },
    };
    let mut totals = Totals::default();
    let mut tags = Value::dict();
    let mut untagged = 0;
    for i in order {
        let leg = &call.legs[i];
        let key = if leg.tag.is_empty() {
            untagged += 1;
            format!("<untagged {untagged}>")
        } else {
            leg.tag.clone()
        };
        tags.push(&key, leg_value(call, leg, stats, &mut totals));
    }
    Value::dict()
        .with("created", call.created_wall.secs())
        .with("created_us", call.created_wall.subsec_micros())
        .with("last signal", call.last_signal_wall.secs())
        .with("SSRC", Value::dict())
        .with("tags", tags)
        .with(
            "totals",
            Value::dict()
                .with("RTP", counters(&totals.rtp))
                .with("RTCP", counters(&totals.rtcp)),
        )
}

fn fixed(v: f64) -> Value {
    Value::from(format!("{v:.6}"))
}

const CONTROL_COUNTERS: &[(&str, Command)] = &[
    ("totalpingcount", Command::Ping),
    ("totaloffercount", Command::Offer),
    ("totalanswercount", Command::Answer),
    ("totaldeletecount", Command::Delete),
    ("totalquerycount", Command::Query),
    ("totallistcount", Command::List),
    ("totalstartreccount", Command::StartRecording),
    ("totalstopreccount", Command::StopRecording),
    ("totalstartfwdcount", Command::StartForwarding),
    ("totalstopfwdcount", Command::StopForwarding),
    ("totalblkdtmfcount", Command::BlockDtmf),
    ("totalunblkdtmfcount", Command::UnblockDtmf),
    ("totalblkmediacount", Command::BlockMedia),
    ("totalunblkmediacount", Command::UnblockMedia),
    ("totalplaymediacount", Command::PlayMedia),
    ("totalstopmediacount", Command::StopMedia),
    ("totalplaydtmfcount", Command::PlayDtmf),
    ("totalstatscount", Command::Statistics),
    ("totalslnmediacount", Command::SilenceMedia),
    ("totalunslnmediacount", Command::UnsilenceMedia),
    ("totalpubcount", Command::Publish),
    ("totalsubreqcount", Command::SubscribeRequest),
    ("totalsubanscount", Command::SubscribeAnswer),
    ("totalunsubcount", Command::Unsubscribe),
];

/// The `statistics` reply body.
pub(super) fn statistics(
    s: &Sessions,
    wall: UnixMicros,
    ports: &dyn PortAllocator,
    stats: &dyn StatsSource,
) -> Value {
    let g = stats.global();
    let c = &s.counters;
    let ended = |k: &str| c.ended.get(k).copied().unwrap_or(0);
    let relays: u64 = s
        .calls
        .values()
        .map(|call| {
            call.legs
                .iter()
                .flat_map(|l| &l.medias)
                .filter(|m| m.local.is_some())
                .count() as u64
                / 2
        })
        .sum();
    let transcoded: u64 = s
        .calls
        .values()
        .map(|call| {
            call.legs
                .iter()
                .flat_map(|l| &l.medias)
                .filter(|m| m.transcode.is_some())
                .count() as u64
                / 2
        })
        .sum();
    let sessions = s.calls.len() as u64;
    let current = Value::dict()
        .with("sessionsown", sessions)
        .with("sessionsforeign", 0u64)
        .with("sessionstotal", sessions)
        .with("transcodedmedia", transcoded)
        .with("packetrate_user", g.packet_rate)
        .with("byterate_user", g.byte_rate)
        .with("errorrate_user", g.error_rate)
        .with("packetrate_kernel", 0u64)
        .with("byterate_kernel", 0u64)
        .with("errorrate_kernel", 0u64)
        .with("packetrate", g.packet_rate)
        .with("byterate", g.byte_rate)
        .with("errorrate", g.error_rate)
        .with("media_userspace", relays)
        .with("media_kernel", 0u64)
        .with("media_mixed", 0u64);
    let n = c.calls_ended.max(1) as f64;
    let avg = c.call_duration_sum / n;
    let var = (c.call_duration_sq_sum / n - avg * avg).max(0.0);
    let uptime = wall.secs().saturating_sub(s.started.unwrap_or(wall).secs());
    let total = Value::dict()
        .with("uptime", uptime.to_string())
        .with("managedsessions", c.managed)
        .with("rejectedsessions", c.rejected)
        .with("timeoutsessions", ended("timeout"))
        .with("silenttimeoutsessions", 0u64)
        .with("finaltimeoutsessions", ended("finaltimeout"))
        .with("offertimeoutsessions", ended("offertimeout"))
        .with("regularterminatedsessions", ended("regular"))
        .with("forcedterminatedsessions", ended("forced"))
        .with("relayedpackets_user", g.packets)
        .with("relayedpacketerrors_user", g.errors)
        .with("relayedbytes_user", g.bytes)
        .with("relayedpackets_kernel", 0u64)
        .with("relayedpacketerrors_kernel", 0u64)
        .with("relayedbytes_kernel", 0u64)
        .with("relayedpackets", g.packets)
        .with("relayedpacketerrors", g.errors)
        .with("relayedbytes", g.bytes)
        .with("zerowaystreams", g.zero_way_streams)
        .with("onewaystreams", g.one_way_streams)
        .with("avgcallduration", fixed(avg))
        .with("totalcallsduration", fixed(c.call_duration_sum))
        .with("totalcallsduration2", fixed(c.call_duration_sq_sum))
        .with("totalcallsduration_stddev", fixed(var.sqrt()));
    let mut control = Value::dict().with("proxies", Value::List(Vec::new()));
    for (key, cmd) in CONTROL_COUNTERS {
        control.push(key, c.commands.get(cmd).copied().unwrap_or(0));
    }
    control.push("errorcount", c.errors);
    let interfaces: Vec<Value> = ports
        .usage()
        .into_iter()
        .map(|u| {
            let totals = u32::from(u.max.saturating_sub(u.min)) + 1;
            Value::dict()
                .with("name", u.name)
                .with("address", u.address.to_string())
                .with(
                    "ports",
                    Value::dict()
                        .with("min", u.min)
                        .with("max", u.max)
                        .with("used", u.used)
                        .with(
                            "used_pct",
                            format!("{:.2}", f64::from(u.used) * 100.0 / f64::from(totals)),
                        )
                        .with("free", u.free)
                        .with("totals", totals)
                        .with("last", u.last),
                )
        })
        .collect();
    Value::dict().with(
        "statistics",
        Value::dict()
            .with("currentstatistics", current)
            .with("totalstatistics", total)
            .with(
                "mos",
                Value::dict()
                    .with("mos_total", fixed(0.0))
                    .with("mos2_total", fixed(0.0))
                    .with("mos_samples_total", 0u64)
                    .with("mos_average", fixed(0.0))
                    .with("mos_stddev", fixed(0.0)),
            )
            .with("controlstatistics", control)
            .with("interfaces", interfaces)
            .with("transcoders", Value::List(Vec::new())),
    )
}
