//! Ogg/Opus recordings (RFC 7845) with the project's libopus encoder, and Ogg page scanning
//! for crash repair (RFC 3533).
//!
//! Mono recordings use channel mapping family 0. The codecs crate's encoder is mono, and a
//! stereo recording's channels (customer, agent) are best kept apart anyway, so stereo
//! recordings use channel mapping family 1 with two uncoupled mono streams (RFC 7845
//! §5.1.1.2): each Ogg packet is the left channel's Opus packet in self-delimiting framing
//! (RFC 6716 Appendix B) followed by the right channel's packet as is.
//!
//! Frames are 20 ms. The ID header page and the comment header page come first; audio pages
//! end every [`PACKETS_PER_PAGE`] packets so that a crash loses at most that much; the last
//! page carries the end-of-stream flag and a granule position that trims the padding of the
//! last frame (RFC 7845 §4.5).

use std::io::{self, Read, Write};

use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use switchboard_codecs::opus::{MAX_PACKET_BYTES, OpusConfig, OpusEncoder, OpusError};

/// Encoder delay in 48 kHz samples, written as the pre-skip (libopus: 2.5 ms + 4 ms).
pub const PRE_SKIP: u16 = 312;
/// Audio packets per Ogg page (0.5 s).
pub const PACKETS_PER_PAGE: u32 = 25;
/// Frame duration.
const FRAME_MS: u32 = 20;

/// Errors of the Ogg/Opus writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OggError {
    /// Writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The encoder refused.
    #[error("Opus: {0}")]
    Opus(#[from] OpusError),
    /// A packet could not be reframed.
    #[error("malformed Opus packet")]
    Framing,
    /// Only one or two channels are written.
    #[error("{0} channels (1 or 2 are written)")]
    Channels(usize),
}

/// Writes one Opus stream into Ogg pages.
pub struct OggOpusWriter<W: Write> {
    pages: PacketWriter<'static, W>,
    serial: u32,
    channels: usize,
    rate: u32,
    frame: usize,
    encoders: Vec<OpusEncoder>,
    /// Interleaved samples waiting for a whole frame.
    pending: Vec<i16>,
    mono: Vec<i16>,
    encoded: [Vec<u8>; 2],
    packet: Vec<u8>,
    packets: u64,
    in_page: u32,
    samples: u64,
}

impl<W: Write> std::fmt::Debug for OggOpusWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("channels", &self.channels)
            .field("rate", &self.rate)
            .field("packets", &self.packets)
            .finish_non_exhaustive()
    }
}

impl<W: Write> OggOpusWriter<W> {
    /// Writes the two header pages. `rate` is the input rate (8000, 12000, 16000, 24000 or
    /// 48000), `bitrate` per channel; `tags` become `KEY=value` comments.
    pub fn new(
        inner: W,
        channels: usize,
        rate: u32,
        bitrate: i32,
        serial: u32,
        tags: &[(String, String)],
    ) -> Result<Self, OggError> {
        if !(1..=2).contains(&channels) {
            return Err(OggError::Channels(channels));
        }
        let config = OpusConfig {
            sample_rate: rate,
            bitrate,
            complexity: 5,
            fec: false,
            dtx: false,
            packet_loss_pct: 0,
        };
        let encoders = (0..channels)
            .map(|_| OpusEncoder::new(&config))
            .collect::<Result<Vec<_>, _>>()?;
        let frame = (rate * FRAME_MS / 1000) as usize;
        let mut pages = PacketWriter::new(inner);
        pages.write_packet(
            opus_head(channels, rate),
            serial,
            PacketWriteEndInfo::EndPage,
            0,
        )?;
        pages.write_packet(opus_tags(tags), serial, PacketWriteEndInfo::EndPage, 0)?;
        Ok(OggOpusWriter {
            pages,
            serial,
            channels,
            rate,
            frame,
            encoders,
            pending: Vec::with_capacity(frame * channels),
            mono: vec![0; frame],
            encoded: [vec![0; MAX_PACKET_BYTES], vec![0; MAX_PACKET_BYTES]],
            packet: Vec::with_capacity(2 * MAX_PACKET_BYTES + 4),
            packets: 0,
            in_page: 0,
            samples: 0,
        })
    }

    /// Appends interleaved samples; whole 20 ms frames are encoded as they complete.
    pub fn write_interleaved(&mut self, samples: &[i16]) -> Result<(), OggError> {
        self.samples += (samples.len() / self.channels) as u64;
        let want = self.frame * self.channels;
        let mut rest = samples;
        while !rest.is_empty() {
            let n = (want - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.pending.len() == want {
                self.encode_pending(None)?;
            }
        }
        Ok(())
    }

    /// Samples per channel written so far.
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Encodes the rest (padded with silence), writes the last page with the end-of-stream
    /// flag and returns the writer.
    pub fn finish(mut self) -> Result<W, OggError> {
        let total48 = self.samples * 48_000 / u64::from(self.rate) + u64::from(PRE_SKIP);
        let want = self.frame * self.channels;
        // Whole frames (the last padded with silence) until every input sample is decoded
        // after the pre-skip; the final granule position trims the padding.
        loop {
            self.pending.resize(want, 0);
            if (self.packets + 1) * 960 >= total48 {
                self.encode_pending(Some(total48))?;
                break;
            }
            self.encode_pending(None)?;
        }
        Ok(self.pages.into_inner())
    }

    /// The writer (for flushing it).
    pub fn inner_mut(&mut self) -> &mut W {
        self.pages.inner_mut()
    }

    fn encode_pending(&mut self, last_granule: Option<u64>) -> Result<(), OggError> {
        self.packet.clear();
        for ch in 0..self.channels {
            for (m, s) in self
                .mono
                .iter_mut()
                .zip(self.pending.iter().skip(ch).step_by(self.channels))
            {
                *m = *s;
            }
            let n = self.encoders[ch].encode(&self.mono, &mut self.encoded[ch])?;
            let pkt = &self.encoded[ch][..n];
            if ch + 1 < self.channels {
                self_delimit(pkt, &mut self.packet)?;
            } else {
                self.packet.extend_from_slice(pkt);
            }
        }
        self.pending.clear();
        self.packets += 1;
        self.in_page += 1;
        let granule = self.packets * 960;
        let (info, granule) = match last_granule {
            Some(g) => (PacketWriteEndInfo::EndStream, g.min(granule)),
            None if self.in_page >= PACKETS_PER_PAGE => (PacketWriteEndInfo::EndPage, granule),
            None => (PacketWriteEndInfo::NormalPacket, granule),
        };
        if info != PacketWriteEndInfo::NormalPacket {
            self.in_page = 0;
        }
        self.pages
            .write_packet(self.packet.clone(), self.serial, info, granule)?;
        Ok(())
    }
}

/// The ID header (RFC 7845 §5.1).
#[must_use]
pub fn opus_head(channels: usize, rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(21);
    h.extend_from_slice(b"OpusHead");
    h.push(1);
    h.push(channels as u8);
    h.extend_from_slice(&PRE_SKIP.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    if channels == 1 {
        h.push(0);
    } else {
        // Family 1: `channels` uncoupled streams, channel i from stream i.
        h.push(1);
        h.push(channels as u8);
        h.push(0);
        h.extend((0..channels).map(|c| c as u8));
    }
    h
}

/// The comment header (RFC 7845 §5.2).
#[must_use]
pub fn opus_tags(tags: &[(String, String)]) -> Vec<u8> {
    let vendor = b"switchboard";
    let mut h = Vec::new();
    h.extend_from_slice(b"OpusTags");
    h.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    h.extend_from_slice(vendor);
    h.extend_from_slice(&(tags.len() as u32).to_le_bytes());
    for (k, v) in tags {
        let c = format!("{k}={v}");
        h.extend_from_slice(&(c.len() as u32).to_le_bytes());
        h.extend_from_slice(c.as_bytes());
    }
    h
}

/// Frame length coding of RFC 6716 §3.2.1.
fn push_len(out: &mut Vec<u8>, len: usize) -> Result<(), OggError> {
    if len < 252 {
        out.push(len as u8);
    } else if len <= 1275 {
        let first = 252 + (len & 3);
        out.push(first as u8);
        out.push(((len - first) / 4) as u8);
    } else {
        return Err(OggError::Framing);
    }
    Ok(())
}

fn read_len(p: &[u8]) -> Result<(usize, usize), OggError> {
    match p {
        [a, ..] if *a < 252 => Ok((usize::from(*a), 1)),
        [a, b, ..] => Ok((usize::from(*b) * 4 + usize::from(*a), 2)),
        _ => Err(OggError::Framing),
    }
}

/// Appends `packet` to `out` in self-delimiting framing (RFC 6716 Appendix B): the length of
/// the last frame (or of every frame, for constant-size codes) is written after the other
/// lengths.
pub fn self_delimit(packet: &[u8], out: &mut Vec<u8>) -> Result<(), OggError> {
    let (&toc, body) = packet.split_first().ok_or(OggError::Framing)?;
    out.push(toc);
    match toc & 3 {
        0 => {
            push_len(out, body.len())?;
            out.extend_from_slice(body);
        }
        1 => {
            if body.len() % 2 != 0 {
                return Err(OggError::Framing);
            }
            push_len(out, body.len() / 2)?;
            out.extend_from_slice(body);
        }
        2 => {
            let (first, n) = read_len(body)?;
            let rest = body.len().checked_sub(n + first).ok_or(OggError::Framing)?;
            out.extend_from_slice(&body[..n]);
            push_len(out, rest)?;
            out.extend_from_slice(&body[n..]);
        }
        _ => {
            let (&count, mut rest) = body.split_first().ok_or(OggError::Framing)?;
            out.push(count);
            let vbr = count & 0x80 != 0;
            let frames = usize::from(count & 0x3f);
            if frames == 0 {
                return Err(OggError::Framing);
            }
            let mut padding = 0usize;
            if count & 0x40 != 0 {
                loop {
                    let (&b, r) = rest.split_first().ok_or(OggError::Framing)?;
                    out.push(b);
                    rest = r;
                    padding += if b == 255 { 254 } else { usize::from(b) };
                    if b != 255 {
                        break;
                    }
                }
            }
            if vbr {
                let mut sum = 0;
                for _ in 0..frames - 1 {
                    let (l, n) = read_len(rest)?;
                    out.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    sum += l;
                }
                let last = rest
                    .len()
                    .checked_sub(padding + sum)
                    .ok_or(OggError::Framing)?;
                push_len(out, last)?;
            } else {
                let data = rest.len().checked_sub(padding).ok_or(OggError::Framing)?;
                if data % frames != 0 {
                    return Err(OggError::Framing);
                }
                push_len(out, data / frames)?;
            }
            out.extend_from_slice(rest);
        }
    }
    Ok(())
}

/// CRC-32 of Ogg pages: polynomial 0x04c11db7, no reflection, initial value 0 (RFC 3533 §6).
fn crc32(data: &[u8], mut crc: u32) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
            }
            *e = r;
        }
        t
    });
    for b in data {
        crc = (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// What [`scan_pages`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageScan {
    /// Bytes up to the end of the last whole, valid page.
    pub valid_len: u64,
    /// Valid pages.
    pub pages: u64,
    /// Granule position of the last valid page that completed a packet.
    pub granule: Option<u64>,
    /// The last valid page had the end-of-stream flag.
    pub ended: bool,
}

/// Reads Ogg pages from the start of `r` and stops at the first one that is cut short or
/// fails its checksum.
pub fn scan_pages<R: Read>(r: R) -> io::Result<PageScan> {
    let mut r = io::BufReader::new(r);
    let mut out = PageScan::default();
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 27];
        if !read_full(&mut r, &mut head)? || &head[..4] != b"OggS" || head[4] != 0 {
            return Ok(out);
        }
        let nseg = usize::from(head[26]);
        let mut lacing = [0u8; 255];
        if !read_full(&mut r, &mut lacing[..nseg])? {
            return Ok(out);
        }
        let len: usize = lacing[..nseg].iter().map(|l| usize::from(*l)).sum();
        body.resize(len, 0);
        if !read_full(&mut r, &mut body)? {
            return Ok(out);
        }
        let stored = u32::from_le_bytes([head[22], head[23], head[24], head[25]]);
        let mut check = head;
        check[22..26].fill(0);
        let mut crc = crc32(&check, 0);
        crc = crc32(&lacing[..nseg], crc);
        crc = crc32(&body, crc);
        if crc != stored {
            return Ok(out);
        }
        out.valid_len += (27 + nseg + len) as u64;
        out.pages += 1;
        out.ended = head[5] & 4 != 0;
        let mut g = [0u8; 8];
        g.copy_from_slice(&head[6..14]);
        let g = u64::from_le_bytes(g);
        if g != u64::MAX {
            out.granule = Some(g);
        }
    }
}

/// Fills `buf`; false at a clean or partial end of input.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Ok(false),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Playing time of a stream whose last granule position is `granule`, in 48 kHz samples.
#[must_use]
pub fn playable_samples(granule: u64) -> u64 {
    granule.saturating_sub(u64::from(PRE_SKIP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn tone(rate: u32, hz: f32, n: usize, phase0: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = (i + phase0) as f32 / rate as f32;
                (8000.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16
            })
            .collect()
    }

    fn write_stream(channels: usize, seconds: f32) -> Vec<u8> {
        let rate = 16000;
        let mut w = OggOpusWriter::new(
            Cursor::new(Vec::new()),
            channels,
            rate,
            24000,
            7,
            &[("TITLE".into(), "x".into())],
        )
        .unwrap();
        let n = (rate as f32 * seconds) as usize;
        let l = tone(rate, 600.0, n, 0);
        let r = tone(rate, 1400.0, n, 0);
        let mut inter = Vec::new();
        for i in 0..n {
            inter.push(l[i]);
            if channels == 2 {
                inter.push(r[i]);
            }
        }
        // Uneven pieces, as the recorder writes them.
        for piece in inter.chunks(333 * channels) {
            w.write_interleaved(piece).unwrap();
        }
        assert_eq!(w.samples(), n as u64);
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn headers_pages_and_granules() {
        let bytes = write_stream(2, 1.3);
        let mut r = ogg::reading::PacketReader::new(Cursor::new(&bytes));
        let head = r.read_packet_expected().unwrap();
        assert_eq!(&head.data[..8], b"OpusHead");
        assert_eq!(head.data[9], 2);
        assert_eq!(head.data[18], 1, "mapping family 1");
        assert_eq!(&head.data[19..], &[2, 0, 0, 1]);
        assert!(head.first_in_stream() && head.last_in_page());
        let tags = r.read_packet_expected().unwrap();
        assert_eq!(&tags.data[..8], b"OpusTags");
        assert!(String::from_utf8_lossy(&tags.data).contains("TITLE=x"));
        let mut packets = 0;
        let mut last = None;
        while let Some(p) = r.read_packet().unwrap() {
            packets += 1;
            last = Some((p.absgp_page(), p.last_in_stream()));
        }
        let (granule, eos) = last.unwrap();
        assert!(eos);
        // 1.3 s at 48 kHz plus the pre-skip.
        assert_eq!(granule, 62400 + u64::from(PRE_SKIP));
        assert_eq!(
            packets, 66,
            "65 frames of audio plus one covering the pre-skip"
        );
        let scan = scan_pages(Cursor::new(&bytes)).unwrap();
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert!(scan.ended);
        assert_eq!(scan.granule, Some(granule));
        assert_eq!(playable_samples(granule), 62400);
    }

    #[test]
    fn a_cut_stream_scans_to_its_last_whole_page() {
        let bytes = write_stream(1, 2.0);
        let full = scan_pages(Cursor::new(&bytes)).unwrap();
        for cut in [bytes.len() - 1, bytes.len() / 2, 100, 30] {
            let s = scan_pages(Cursor::new(&bytes[..cut])).unwrap();
            assert!(s.valid_len <= cut as u64 && s.pages < full.pages);
            let again = scan_pages(Cursor::new(&bytes[..s.valid_len as usize])).unwrap();
            assert_eq!(again, s, "the prefix is exactly the valid pages");
        }
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        assert!(scan_pages(Cursor::new(&bad)).unwrap().valid_len < mid as u64);
    }

    /// Parses a self-delimited packet back: (frame sizes, bytes used).
    fn parse_self_delimited(p: &[u8]) -> (Vec<usize>, usize) {
        let toc = p[0];
        let mut at = 1;
        let len = |p: &[u8], at: &mut usize| {
            let (l, n) = read_len(&p[*at..]).unwrap();
            *at += n;
            l
        };
        match toc & 3 {
            0 => {
                let l = len(p, &mut at);
                (vec![l], at + l)
            }
            1 => {
                let l = len(p, &mut at);
                (vec![l, l], at + 2 * l)
            }
            2 => {
                let a = len(p, &mut at);
                let b = len(p, &mut at);
                (vec![a, b], at + a + b)
            }
            _ => {
                let count = p[at];
                at += 1;
                let frames = usize::from(count & 0x3f);
                let mut padding = 0;
                if count & 0x40 != 0 {
                    loop {
                        let b = p[at];
                        at += 1;
                        padding += if b == 255 { 254 } else { usize::from(b) };
                        if b != 255 {
                            break;
                        }
                    }
                }
                let sizes: Vec<usize> = if count & 0x80 != 0 {
                    (0..frames).map(|_| len(p, &mut at)).collect()
                } else {
                    let l = len(p, &mut at);
                    vec![l; frames]
                };
                let total = at + sizes.iter().sum::<usize>() + padding;
                (sizes, total)
            }
        }
    }

    #[test]
    fn self_delimiting_framing_of_every_code() {
        let big: Vec<u8> = (0..600).map(|i| i as u8).collect();
        let cases: Vec<(Vec<u8>, Vec<usize>)> = vec![
            ([vec![0x08], big[..40].to_vec()].concat(), vec![40]),
            ([vec![0x08], big.clone()].concat(), vec![600]),
            ([vec![0x09], big[..80].to_vec()].concat(), vec![40, 40]),
            ([vec![0x0a, 30], big[..100].to_vec()].concat(), vec![30, 70]),
            // Code 3 CBR, 3 frames of 20, 5 bytes of padding.
            (
                [vec![0x0b, 0x43, 5], big[..65].to_vec()].concat(),
                vec![20, 20, 20],
            ),
            // Code 3 VBR, 3 frames: 10, 300 (two-byte length), rest 7.
            (
                [vec![0x0b, 0x83, 10, 252, 12], big[..317].to_vec()].concat(),
                vec![10, 300, 7],
            ),
        ];
        for (packet, sizes) in cases {
            let mut out = vec![];
            self_delimit(&packet, &mut out).unwrap();
            let trailer = [1u8, 2, 3];
            out.extend_from_slice(&trailer);
            let (got, used) = parse_self_delimited(&out);
            assert_eq!(got, sizes, "{:02x?}", &packet[..2]);
            assert_eq!(
                used,
                out.len() - trailer.len(),
                "the next stream starts right after"
            );
        }
        assert!(self_delimit(&[], &mut vec![]).is_err());
        assert!(self_delimit(&[0x0a, 200, 1], &mut vec![]).is_err());
        assert!(self_delimit(&[0x0b, 0x00], &mut vec![]).is_err());
    }

    #[test]
    fn crc_matches_the_ogg_crate() {
        let bytes = write_stream(1, 0.2);
        // The ogg crate wrote these pages; our checksum must agree with every one.
        assert_eq!(
            scan_pages(Cursor::new(&bytes)).unwrap().valid_len,
            bytes.len() as u64
        );
    }
}
