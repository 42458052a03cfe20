#!/usr/bin/env python3
"""Capture golden NG exchanges from a real rtpengine for the switchboard-proto tests.

Start rtpengine 10.5 userspace-only on loopback first (fresh, so that cookies are not cached):

    rtpengine --config-file=none --table=-1 --interface=127.0.0.1 \
      --listen-ng=127.0.0.1:22230 --port-min=31000 --port-max=31999 --foreground --log-stderr

then run `python3 capture_rtpengine.py [PORT]` from this directory. Each scenario is written to
`rtpengine/<name>.json` as a list of {request, reply} strings (raw NG datagrams).

Two more sets need other rtpengine settings (restart it fresh for each):
- `python3 capture_rtpengine.py 22230 ipv6` with `--interface=127.0.0.1 --interface=::1`;
- `python3 capture_rtpengine.py 22230 small` with `--port-min=31000 --port-max=31005`.

`python3 capture_rtpengine.py 22230 features` (transcoding, subscriptions, media commands) runs
against the same fresh setup as the main set.
"""
import json
import os
import socket
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 22230
HERE = os.path.dirname(os.path.abspath(__file__))


def benc(v):
    if isinstance(v, bool):
        raise TypeError("bool")
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(benc(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"d" + b"".join(benc(k) + benc(x) for k, x in v.items()) + b"e"
    raise TypeError(type(v))


SOCK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
SOCK.settimeout(2)


class Scenario:
    def __init__(self, name, description):
        self.name = name
        self.description = description
        self.exchanges = []
        self.n = 0

    def raw(self, body):
        self.n += 1
        data = ("%s_%d " % (self.name, self.n)).encode() + body
        SOCK.sendto(data, ("127.0.0.1", PORT))
        try:
            reply, _ = SOCK.recvfrom(65535)
        except socket.timeout:
            reply = None
        self.exchanges.append(
            {"request": data.decode(), "reply": None if reply is None else reply.decode()}
        )
        return reply

    def req(self, d, js=False):
        return self.raw(json.dumps(d).encode() if js else benc(d))

    def save(self):
        path = os.path.join(HERE, "rtpengine", self.name + ".json")
        with open(path, "w") as f:
            json.dump(
                {"description": self.description, "rtpengine": "10.5.3.5-1+deb12u1",
                 "exchanges": self.exchanges},
                f, indent=1)
            f.write("\n")


def sdp(*lines):
    return "".join(l + "\r\n" for l in lines)


ALICE = sdp("v=0", "o=alice 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
            "m=audio 40000 RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "a=sendrecv")
BOB = sdp("v=0", "o=bob 2 2 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
          "m=audio 50000 RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000",
          "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "a=sendrecv")
SIPP = sdp("v=0", "o=user1 53655765 2353687637 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1",
           "t=0 0", "m=audio 6004 RTP/AVP 0", "a=rtpmap:0 PCMU/8000")
SIMPLE = sdp("v=0", "o=alice 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0",
             "m=audio 40000 RTP/AVP 0 8")
SIMPLE_ANSWER = sdp("v=0", "o=bob 7 7 IN IP4 10.0.0.2", "s=-", "c=IN IP4 10.0.0.2", "t=0 0",
                    "m=audio 50000 RTP/AVP 8")


def offer(s, cid, body, **extra):
    d = {"sdp": body, "call-id": cid, "from-tag": "ft", "command": "offer"}
    d.update(extra)
    return s.req(d)


def answer(s, cid, body, **extra):
    d = {"sdp": body, "call-id": cid, "from-tag": "ft", "to-tag": "tt", "command": "answer"}
    d.update(extra)
    return s.req(d)


def main():
    s = Scenario("ping", "ping in bencode and JSON")
    s.raw(b"d7:command4:pinge")
    s.raw(b'{"command":"ping"}')
    s.save()

    s = Scenario("errors", "framing and request errors with their exact strings")
    s.raw(b"hello")
    s.raw(b"le")
    s.raw(b" d7:command4:pinge")
    s.raw(b"d7:command4:pi")
    s.raw(b"d7:command4:ping3:fooi05ee")
    s.raw(b"d7:command4:ping3:foo05:abcdee")
    s.raw(b'{"command":"ping"')
    s.raw(b'{"command":"ping"} junk')
    s.raw(b"d3:foo3:bare")
    s.raw(b"d7:commandi5ee")
    s.raw(b"d7:command3:fooe")
    s.raw(b'{"command":"foo"}')
    s.raw(b'{"command":5}')
    s.req({"command": "offer", "call-id": "e1", "from-tag": "ft"})
    s.req({"command": "offer", "call-id": "e1", "sdp": SIMPLE})
    s.req({"command": "offer", "from-tag": "ft", "sdp": SIMPLE})
    s.req({"command": "offer", "call-id": "e1", "from-tag": "ft", "sdp": "garbage"})
    s.req({"command": "offer", "call-id": "e1", "from-tag": "ft",
           "sdp": sdp("v=0", "o=a 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0",
                      "m=audio 40000 RTP/AVP 0")})
    s.req({"command": "answer", "call-id": "e-unknown", "from-tag": "ft", "to-tag": "tt",
           "sdp": SIMPLE})
    s.req({"command": "query", "call-id": "e-unknown"})
    s.req({"command": "delete", "call-id": "e-unknown", "from-tag": "ft"})
    s.req({"command": "delete", "call-id": "e-unknown", "from-tag": "ft", "flags": ["fatal"]})
    s.req({"command": "list", "limit": -1})
    s.save()

    s = Scenario("kamailio_offer", "the offer Kamailio 5.6 sends for a SIPp INVITE")
    s.raw(b"d8:supportsl10:load limite3:sdp129:" + SIPP.encode() +
          b"3:ICE6:remove11:record-call2:no7:replacel6:origin18:session-connectione"
          b"7:call-id17:1-12488@127.0.0.113:received-froml3:IP49:127.0.0.1e"
          b"8:from-tag15:12488SIPpTag0017:command5:offere")
    s.req({"command": "delete", "call-id": "1-12488@127.0.0.1", "from-tag": "12488SIPpTag001",
           "delete delay": 0})
    s.save()

    s = Scenario("basic_call", "offer, answer, query, list, delete, query (NG.md example)")
    offer(s, "basic", ALICE)
    answer(s, "basic", BOB)
    s.req({"command": "query", "call-id": "basic"})
    s.req({"command": "list"})
    s.req({"command": "delete", "call-id": "basic", "from-tag": "ft", "delete delay": 0})
    s.req({"command": "query", "call-id": "basic"})
    s.req({"command": "list"})
    s.save()

    s = Scenario("offer_query", "query of a call with an offer only (untagged peer), labels")
    offer(s, "oq", SIMPLE, label="caller", **{"via-branch": "z9hG4bK1"})
    s.req({"command": "query", "call-id": "oq"})
    s.req({"command": "query", "call-id": "oq", "from-tag": "xx"})
    s.req({"command": "delete", "call-id": "oq", "from-tag": "xx"})
    s.req({"command": "delete", "call-id": "oq", "from-tag": "ft", "to-tag": "xx"})
    s.req({"command": "delete", "call-id": "oq", "from-tag": "ft", "flags": ["fast"],
           "delete delay": 0})
    s.req({"command": "query", "call-id": "oq"})
    s.save()

    s = Scenario("delete_delay", "delete keeps the call for the delete delay; fast omits stats")
    offer(s, "dd", SIMPLE)
    answer(s, "dd", SIMPLE_ANSWER)
    s.req({"command": "delete", "call-id": "dd", "from-tag": "ft"})
    s.req({"command": "list"})
    s.req({"command": "delete", "call-id": "dd", "from-tag": "ft", "delete delay": 0,
           "flags": ["fast"]})
    s.req({"command": "list"})
    s.save()

    s = Scenario("sdp_shapes", "session-level direction, unknown lines, rejected media, hold")
    complex_sdp = sdp("v=0", "o=alice 1 1 IN IP4 10.0.0.1", "s=Talk", "i=info", "b=AS:64",
                      "t=0 0", "a=recvonly", "a=tool:foo", "m=audio 40000 RTP/AVP 101 0 8",
                      "i=media info", "c=IN IP4 10.0.0.2", "b=AS:80", "a=foo:bar",
                      "a=fmtp:101 0-15", "a=maxptime:40", "a=rtpmap:101 telephone-event/8000",
                      "a=rtcp-fb:0 nack", "a=silenceSupp:off - - - -", "a=ptime:30",
                      "a=label:1", "m=video 0 RTP/AVP 96", "c=IN IP4 10.0.0.2",
                      "a=rtpmap:96 H264/90000")
    offer(s, "shapes1", complex_sdp)
    hold = sdp("v=0", "o=alice 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 0.0.0.0", "b=CT:100",
               "t=0 0", "r=7d 1h 0 25h", "z=2882844526 -1h", "k=prompt", "a=sendonly",
               "a=cat:foo", "m=audio 40000 RTP/AVP 96 0 9", "i=inf", "b=AS:64", "k=clear:x",
               "a=recvonly", "a=rtcp-fb:* nack", "a=rtpmap:96 OPUS/48000/2",
               "a=rtpmap:9 G722/8000/1", "a=fmtp:96 a=1", "a=fmtp:96 b=2", "a=fmtp:98 c=3",
               "a=rtpmap:98 foo/8000", "a=rtcp:40005 IN IP4 10.0.0.7",
               "a=rtcp-fb:96 nack pli", "a=rtcp-fb:96 ccm fir", "a=x-custom",
               "m=video 0 RTP/AVP 31", "i=vid", "b=AS:1", "a=sendrecv",
               "m=audio 40010 RTP/AVP 8", "a=ptime:20", "a=ptime:30")
    offer(s, "shapes2", hold)
    ice = sdp("v=0", "o=alice 1 1 IN IP4 10.0.0.1", "s=Talk", "c=IN IP4 10.0.0.1", "t=0 0",
              "a=ice-ufrag:sessufrag", "a=ice-pwd:sesspwd", "a=group:BUNDLE 0",
              "a=msid-semantic: WMS", "m=audio 40000 RTP/AVP 0 8 101", "a=mid:0",
              "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=sendonly",
              "a=rtcp:40009 IN IP4 10.0.0.1", "a=ice-ufrag:abcd",
              "a=ice-pwd:abcdefghijklmnopqrstuvwx",
              "a=candidate:1 1 UDP 2130706431 10.0.0.1 40000 typ host",
              "a=candidate:1 2 UDP 2130706430 10.0.0.1 40009 typ host",
              "a=ssrc:1234 cname:foo", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15",
              "a=maxptime:150")
    offer(s, "shapes3", ice, ICE="remove")
    multi = sdp("v=0", "o=alice 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0",
                "m=audio 40000 RTP/AVP 0", "c=IN IP4 10.0.0.1", "a=sendrecv",
                "m=audio 0 RTP/AVP 8", "c=IN IP4 10.0.0.1", "m=audio 40002 RTP/AVP 8",
                "c=IN IP4 10.0.0.3")
    offer(s, "shapes4", multi)
    s.save()

    s = Scenario("flags", "rtcp attribute flags, replace, ptime, media address")
    offer(s, "fl1", SIMPLE, flags=["no rtcp attribute"])
    offer(s, "fl2", SIMPLE, flags=["full rtcp attribute"])
    offer(s, "fl3", SIMPLE, replace=["origin", "session connection"])
    offer(s, "fl4", SIMPLE, ptime=30)
    offer(s, "fl5", SIMPLE, **{"media address": "192.0.2.7", "replace": ["origin"]})
    offer(s, "fl6", SIMPLE, **{"media-address": "2001:db8::9", "replace": ["origin"],
                               "flags": ["full rtcp attribute"]})
    offer(s, "fl7", SIMPLE, flags=["trust address", "symmetric", "strict source",
                                   "port latching"], **{"received-from": ["IP4", "10.9.9.9"]})
    s.req({"command": "query", "call-id": "fl7"})
    offer(s, "fl8", SIMPLE, flags=["SIP source address"],
          **{"received-from": ["IP4", "10.9.9.9"]})
    s.req({"command": "query", "call-id": "fl8"})
    s.save()

    s = Scenario("rtcp_mux", "rtcp-mux offer/accept/demux/require and answers")
    mux = SIMPLE + "a=rtcp-mux\r\na=ptime:20\r\n"
    offer(s, "mux1", mux)
    answer(s, "mux1", SIMPLE_ANSWER + "a=rtcp-mux\r\na=ptime:20\r\n")
    offer(s, "mux2", mux)
    answer(s, "mux2", SIMPLE_ANSWER)
    offer(s, "mux3", SIMPLE)
    answer(s, "mux3", SIMPLE_ANSWER + "a=rtcp-mux\r\n")
    offer(s, "mux4", mux, **{"rtcp-mux": ["demux"]})
    offer(s, "mux5", SIMPLE, **{"rtcp-mux": ["offer"]})
    offer(s, "mux6", SIMPLE, **{"rtcp-mux": ["require"]})
    offer(s, "mux7", mux, **{"rtcp-mux": ["accept"]})
    offer(s, "mux8", SIMPLE, **{"rtcp-mux": ["offer"], "flags": ["full rtcp attribute"]})
    s.save()

    s = Scenario("codecs", "codec strip / offer / mask / except and answers")
    many = sdp("v=0", "o=alice 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0",
               "m=audio 40000 RTP/AVP 0 8 9 96 101", "a=rtpmap:96 opus/48000/2",
               "a=fmtp:96 useinbandfec=1", "a=rtpmap:101 telephone-event/8000",
               "a=fmtp:101 0-16", "a=ptime:20")
    cases = [{"strip": ["PCMA"]}, {"strip": ["all"]}, {"strip": ["all"], "except": ["PCMU"]},
             {"strip": ["opus", "telephone-event"]}, {"offer": ["PCMA"]},
             {"mask": ["PCMU"]}, {"strip": ["PCMU/8000"]}, {"strip": ["opus/48000/1"]},
             {"strip": ["all"], "offer": ["G722", "PCMA"]}, {"except": ["PCMU"]},
             {"strip": ["all"], "except": ["opus", "telephone-event"]}, {"strip": ["pcma"]},
             {"strip": ["all"], "except": ["G729"]},
             {"strip": ["PCMU", "PCMA", "G722", "opus", "telephone-event"]}]
    for i, c in enumerate(cases):
        offer(s, "codec%d" % i, many, codec=c)
    ans = sdp("v=0", "o=bob 1 1 IN IP4 10.0.0.2", "s=-", "c=IN IP4 10.0.0.2", "t=0 0",
              "m=audio 50000 RTP/AVP 8 101", "a=rtpmap:101 telephone-event/8000")
    offer(s, "codecans1", many)
    answer(s, "codecans1", ans)
    offer(s, "codecans2", many)
    answer(s, "codecans2", ans.replace("8 101", "18 101"))
    s.save()

    s = Scenario("ptime_direction", "ptime and direction in offers and answers")
    base_o = SIMPLE
    base_a = SIMPLE_ANSWER
    offer(s, "pd1", base_o)
    answer(s, "pd1", base_a + "a=ptime:30\r\n")
    offer(s, "pd2", base_o + "a=ptime:20\r\n")
    answer(s, "pd2", base_a)
    offer(s, "pd3", base_o + "a=ptime:20\r\n")
    answer(s, "pd3", base_a + "a=ptime:30\r\n")
    offer(s, "pd4", base_o + "a=sendonly\r\n")
    answer(s, "pd4", base_a + "a=recvonly\r\n")
    offer(s, "pd5", base_o + "a=inactive\r\n")
    answer(s, "pd5", base_a)
    s.save()

    s = Scenario("reinvite", "re-INVITE with the same SDP keeps ports; SDP version replace")
    X = {"replace": ["SDP version", "origin"], "flags": ["port latching"]}
    offer(s, "re1", SIMPLE, **X)
    answer(s, "re1", SIMPLE_ANSWER, **X)
    offer(s, "re1", SIMPLE, **X)
    offer(s, "re1", SIMPLE.replace("40000", "40010"), **X)
    s.req({"command": "offer", "call-id": "re1", "from-tag": "ft", "to-tag": "tt",
           "sdp": SIMPLE.replace("40000", "40010").replace(" 0 8", " 0"), **X})
    answer(s, "re1", SIMPLE_ANSWER, **X)
    s.req({"command": "offer", "call-id": "re1", "from-tag": "tt", "to-tag": "ft",
           "sdp": SIMPLE_ANSWER.replace("7 7", "7 8"), **X})
    s.req({"command": "answer", "call-id": "re1", "from-tag": "tt", "to-tag": "ft",
           "sdp": SIMPLE, **X})
    s.req({"command": "query", "call-id": "re1"})
    s.save()

    s = Scenario("json", "JSON-encoded offer, answer and query")
    s.req({"command": "offer", "call-id": "js1", "from-tag": "ft", "sdp": SIMPLE}, js=True)
    s.req({"command": "answer", "call-id": "js1", "from-tag": "ft", "to-tag": "tt",
           "sdp": SIMPLE_ANSWER}, js=True)
    s.req({"command": "list"}, js=True)
    s.req({"command": "delete", "call-id": "js1", "from-tag": "ft", "delete-delay": 0,
           "flags": ["fast"]}, js=True)
    s.save()

    s = Scenario("media_kinds", "audio plus video, T.38 over udptl")
    av = sdp("v=0", "o=a 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0",
             "m=audio 40000 RTP/AVP 0 8", "m=video 41000 RTP/AVP 31 96",
             "a=rtpmap:96 H264/90000", "a=fmtp:96 profile-level-id=42e01f")
    offer(s, "mk1", av)
    answer(s, "mk1", sdp("v=0", "o=b 1 1 IN IP4 10.0.0.2", "s=-", "c=IN IP4 10.0.0.2", "t=0 0",
                         "m=audio 50000 RTP/AVP 8", "m=video 0 RTP/AVP 31"))
    t38 = sdp("v=0", "o=a 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0",
              "m=image 40000 udptl t38", "a=T38FaxVersion:0",
              "a=T38FaxRateManagement:transferredTCF")
    offer(s, "mk2", t38)
    answer(s, "mk2", t38.replace("40000", "50000").replace("10.0.0.1", "10.0.0.2"))
    s.req({"command": "query", "call-id": "mk2"})
    s.save()

    s = Scenario("statistics", "statistics reply shape (values vary)")
    s.req({"command": "statistics"})
    s.save()


def main_ipv6():
    s = Scenario("ipv6", "IPv6 offers and answers with an IPv4 and an IPv6 interface")
    v6 = sdp("v=0", "o=alice 1 1 IN IP6 2001:db8::1", "s=-", "c=IN IP6 2001:db8::1", "t=0 0",
             "m=audio 40000 RTP/AVP 0")
    v4 = sdp("v=0", "o=bob 7 7 IN IP4 10.0.0.2", "s=-", "c=IN IP4 10.0.0.2", "t=0 0",
             "m=audio 50000 RTP/AVP 0")
    offer(s, "v6a", v6)
    answer(s, "v6a", v4)
    offer(s, "v6b", v6, **{"address family": "IP4", "replace": ["origin"]})
    answer(s, "v6b", v4, replace=["origin"])
    offer(s, "v6c", v4, **{"address family": "IP6", "flags": ["full rtcp attribute"]})
    answer(s, "v6c", v6)
    s.req({"command": "query", "call-id": "v6c"})
    s.save()


def main_small():
    s = Scenario("ports_exhausted", "port range of 3 pairs: the second call runs out of ports")
    offer(s, "px1", SIMPLE)
    offer(s, "px2", SIMPLE)
    s.req({"command": "list"})
    s.req({"command": "delete", "call-id": "px1", "from-tag": "ft", "delete delay": 0})
    offer(s, "px3", SIMPLE)
    s.save()


def main_features():
    pcmu = sdp("v=0", "o=alice 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
               "m=audio 40000 RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000",
               "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20",
               "a=sendrecv")

    def mk(o, port, *m):
        return sdp("v=0", "o=%s 2 2 IN IP4 127.0.0.1" % o, "s=-", "c=IN IP4 127.0.0.1",
                   "t=0 0", "m=audio %d RTP/AVP %s" % (port, m[0]), *m[1:])

    s = Scenario("transcoding", "codec transcode / mask / strip / always transcode / ptime")
    offer(s, "tc1", pcmu, codec={"mask": ["PCMU"], "transcode": ["PCMA"]})
    answer(s, "tc1", mk("bob", 50000, "8 101", "a=rtpmap:8 PCMA/8000",
                        "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=sendrecv"))
    offer(s, "tc2", pcmu, codec={"transcode": ["opus"]})
    answer(s, "tc2", mk("bob", 50000, "96 97", "a=rtpmap:96 opus/48000/2",
                        "a=fmtp:96 useinbandfec=1", "a=rtpmap:97 telephone-event/48000",
                        "a=fmtp:97 0-15", "a=sendrecv"))
    s.req({"command": "query", "call-id": "tc2"})
    g722 = mk("alice", 40000, "9 101 8 13", "a=rtpmap:101 telephone-event/8000")
    offer(s, "tc3", g722, codec={"transcode": ["PCMU", "opus"]})
    answer(s, "tc3", mk("bob", 50000, "0", "a=sendrecv"))
    offer(s, "tc4", mk("alice", 40000, "9"), codec={"transcode": ["PCMU"]})
    answer(s, "tc4", mk("bob", 50000, "0"))
    offer(s, "tc5", pcmu, codec={"transcode": ["G722"]})
    answer(s, "tc5", mk("bob", 50000, "9 101", "a=rtpmap:101 telephone-event/8000"))
    offer(s, "tc6", pcmu, codec={"transcode": ["PCMA"]})
    answer(s, "tc6", mk("bob", 50000, "0 101", "a=rtpmap:101 telephone-event/8000"))
    offer(s, "tc7", pcmu, flags=["always transcode"])
    answer(s, "tc7", mk("bob", 50000, "0 101", "a=rtpmap:101 telephone-event/8000"))
    offer(s, "tc8", pcmu, codec={"transcode": ["PCMA"]}, ptime=30)
    answer(s, "tc8", mk("bob", 50000, "8", "a=ptime:10"), ptime=40)
    offer(s, "tc9", mk("alice", 40000, "0"), codec={"transcode": ["telephone-event"]})
    answer(s, "tc9", mk("bob", 50000, "0 101", "a=rtpmap:101 telephone-event/8000"))
    offer(s, "tc10", pcmu, codec={"strip": ["PCMU"], "transcode": ["PCMA"]})
    answer(s, "tc10", mk("bob", 50000, "8"))
    offer(s, "tc11", pcmu, codec={"strip": ["all"], "transcode": ["opus/48000/2"]})
    offer(s, "tc12", pcmu, codec={"transcode": ["PCMA", "G722/8000/1/64000", "opus"]})
    s.save()

    bob = mk("bob", 50000, "0 101", "a=rtpmap:0 PCMU/8000",
             "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20",
             "a=sendrecv")
    sub = mk("sub", 60000, "0 101", "a=rtpmap:101 telephone-event/8000", "a=recvonly")
    s = Scenario("subscribe", "subscribe request / answer, unsubscribe, their errors")
    offer(s, "sb1", pcmu, label="caller")
    answer(s, "sb1", bob, label="callee")
    s.req({"command": "subscribe request", "call-id": "sb1", "from-tag": "ft",
           "to-tag": "sub1"})
    s.req({"command": "query", "call-id": "sb1"})
    s.req({"command": "subscribe answer", "call-id": "sb1", "to-tag": "sub1", "sdp": sub})
    s.req({"command": "query", "call-id": "sb1", "from-tag": "sub1"})
    s.req({"command": "subscribe request", "call-id": "sb1", "from-tag": "tt",
           "to-tag": "sub2"})
    s.req({"command": "subscribe request", "call-id": "sb1", "from-tag": "nope"})
    s.req({"command": "subscribe request", "call-id": "sb-unknown", "from-tag": "ft"})
    s.req({"command": "subscribe request", "call-id": "sb1"})
    s.req({"command": "subscribe answer", "call-id": "sb1", "to-tag": "sub2"})
    s.req({"command": "subscribe answer", "call-id": "sb-unknown", "to-tag": "sub2",
           "sdp": sub})
    s.req({"command": "subscribe answer", "call-id": "sb1", "to-tag": "zzz", "sdp": sub})
    s.req({"command": "unsubscribe", "call-id": "sb1", "to-tag": "sub1"})
    s.req({"command": "unsubscribe", "call-id": "sb1", "to-tag": "sub1"})
    s.req({"command": "unsubscribe", "call-id": "sb1", "to-tag": "zzz"})
    s.req({"command": "unsubscribe", "call-id": "sb1"})
    s.req({"command": "unsubscribe", "call-id": "sb-unknown", "to-tag": "sub2"})
    s.save()

    s = Scenario("media_commands", "play media, stop media, play DTMF, block DTMF errors")
    offer(s, "mc1", pcmu)
    answer(s, "mc1", bob)
    base = {"call-id": "mc1", "from-tag": "ft"}

    def cmd(command, **kw):
        d = {"command": command}
        d.update(kw)
        s.req(d)

    cmd("play media", **base)
    cmd("play media", **{"call-id": "mc1", "file": "/x.wav"})
    cmd("play media", **{"call-id": "mc-unknown", "from-tag": "ft", "file": "/x.wav"})
    cmd("play media", **{"call-id": "mc1", "from-tag": "zz", "file": "/x.wav"})
    cmd("stop media", **base)
    cmd("stop media", **{"call-id": "mc-unknown", "from-tag": "ft"})
    cmd("play DTMF", **base)
    cmd("play DTMF", code="X", **base)
    cmd("play DTMF", code="1", **{"call-id": "mc1", "from-tag": "zz"})
    cmd("play DTMF", code="1", **{"call-id": "mc-unknown", "from-tag": "ft"})
    cmd("play DTMF", code="1", **{"call-id": "mc1"})
    cmd("block DTMF", **base)
    cmd("block DTMF", **{"call-id": "mc1"})
    cmd("unblock DTMF", **base)
    cmd("block DTMF", **{"call-id": "mc-unknown"})
    cmd("block DTMF", **{"call-id": "mc1", "from-tag": "zz"})
    s.save()


if __name__ == "__main__":
    which = sys.argv[2] if len(sys.argv) > 2 else "main"
    {"main": main, "ipv6": main_ipv6, "small": main_small, "features": main_features}[which]()
