//! RIFF/WAVE read and write for PCM16 and G.711, with a crash-repairable streaming writer.
//!
//! Formats: PCM 16-bit (format tag 1), G.711 A-law (6) and µ-law (7), mono or stereo, at
//! any sample rate from 1000 to 384 000 Hz. The layout follows the RIFF specification
//! (Microsoft/IBM "Multimedia Programming Interface and Data Specifications 1.0", 1991:
//! chunks of a 4-byte id, a little-endian u32 size and the body, padded to an even length)
//! and the WAVE format chunk rules of the Microsoft `WAVEFORMATEX` documentation: non-PCM
//! formats carry the 18-byte format chunk with `cbSize = 0` and a `fact` chunk holding the
//! number of sample frames.
//!
//! # Reading
//!
//! [`WavReader::parse`] checks a whole file held in memory and returns its [`WavInfo`] and a
//! borrowed slice of the audio bytes; nothing is copied or allocated. Unknown chunks (`LIST`,
//! `bext`, ...) are skipped, odd-sized chunks are padded, `WAVE_FORMAT_EXTENSIBLE` (0xFFFE)
//! is accepted when its sub-format is one of the three above. Every size is checked against
//! the bytes actually present, so hostile sizes produce a [`WavError`], never a panic or an
//! allocation. [`WavReader::parse_lenient`] additionally accepts a `data` size that runs past
//! the end of the file (a file whose header was never updated) and uses the bytes present.
//! [`WavStreamReader`] reads the same files from any [`Read`] without holding them in
//! memory: unknown chunks are skipped by reading through them, and the audio is read into
//! caller buffers.
//!
//! # Writing
//!
//! [`WavWriter`] streams to any `Write + Seek` (a `File`, a `BufWriter<File>`, a `Cursor`).
//! [`WavWriter::create`] writes a header with zero sizes; samples are appended with
//! [`WavWriter::write_samples_i16`] (PCM16) or [`WavWriter::write_encoded`] (G.711 bytes);
//! [`WavWriter::sync_header`] rewrites the RIFF, `fact` and `data` sizes in place to cover
//! every whole sample frame written so far, so a process killed later leaves a valid file
//! holding at least the audio up to that sync; [`WavWriter::finalize`] pads and syncs.
//! Dropping a writer without finalizing leaves the header of the last sync.
//!
//! # Repair
//!
//! [`repair`] fixes a file whose header is stale (the audio was written but the sizes not):
//! it takes the `data` chunk to run to the end of the file, trims a trailing partial sample
//! frame, and rewrites the RIFF, `fact` and `data` sizes.

use std::io::{self, Read, Seek, SeekFrom, Write};

const RIFF_HEADER_LEN: usize = 12;
const CHUNK_HEADER_LEN: usize = 8;
/// Largest RIFF payload: the size fields are u32.
const MAX_RIFF_SIZE: u64 = u32::MAX as u64;
/// Largest format chunk read; a `WAVEFORMATEXTENSIBLE` body is 40 bytes.
const MAX_FMT_LEN: u32 = 1024;
/// Bytes of the file start read by [`repair`] while looking for the `data` chunk.
const REPAIR_SCAN_LIMIT: u64 = 1 << 20;

/// Lowest accepted sample rate, in Hz.
pub const MIN_SAMPLE_RATE: u32 = 1000;
/// Highest accepted sample rate, in Hz.
pub const MAX_SAMPLE_RATE: u32 = 384_000;

/// Errors from reading, writing and repairing WAV files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// The file does not start with `RIFF`.
    #[error("not a RIFF file")]
    NotRiff,
    /// The RIFF form type is not `WAVE`.
    #[error("RIFF form type is not WAVE")]
    NotWave,
    /// The file ends inside a header or chunk.
    #[error("truncated {context}: {needed} bytes needed at {offset}, {available} present")]
    Truncated {
        /// What was being read.
        context: &'static str,
        /// Offset where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes present from `offset`.
        available: u64,
    },
    /// No `fmt ` chunk before the `data` chunk.
    #[error("no fmt chunk before the data chunk")]
    MissingFmt,
    /// No `data` chunk.
    #[error("no data chunk")]
    MissingData,
    /// The `fmt ` chunk is too short or too long.
    #[error("fmt chunk of {size} bytes")]
    BadFmtChunk {
        /// Its declared size.
        size: u32,
    },
    /// The format tag is not PCM, A-law or µ-law.
    #[error("unsupported format tag {format_tag:#06x}")]
    UnsupportedFormat {
        /// The format tag (or extensible sub-format).
        format_tag: u16,
    },
    /// The bits per sample do not match the format (16 for PCM, 8 for G.711).
    #[error("{bits} bits per sample unsupported for this format")]
    UnsupportedBitsPerSample {
        /// The declared bits per sample.
        bits: u16,
    },
    /// The channel count is zero.
    #[error("zero channels")]
    ZeroChannels,
    /// More than two channels.
    #[error("{channels} channels unsupported (mono or stereo only)")]
    UnsupportedChannels {
        /// The declared channel count.
        channels: u16,
    },
    /// The sample rate is outside [`MIN_SAMPLE_RATE`]..=[`MAX_SAMPLE_RATE`].
    #[error("sample rate {sample_rate} Hz out of range")]
    BadSampleRate {
        /// The declared rate.
        sample_rate: u32,
    },
    /// The block align is not channels × bytes per sample.
    #[error("block align {found}, expected {expected}")]
    BadBlockAlign {
        /// channels × bytes per sample.
        expected: u16,
        /// The declared value.
        found: u16,
    },
    /// The `data` chunk claims more bytes than the file holds.
    #[error("data chunk claims {declared} bytes, {available} present")]
    DataBeyondFile {
        /// The declared data size.
        declared: u32,
        /// Bytes present after the data chunk header.
        available: u64,
    },
    /// The method does not match the file's format (PCM samples into a G.711 file, or the
    /// reverse).
    #[error("operation does not match the file format {format:?}")]
    FormatMismatch {
        /// The file's format.
        format: WavFormat,
    },
    /// The audio would exceed the 4 GiB RIFF limit.
    #[error("audio exceeds the 4 GiB RIFF size limit")]
    TooLarge,
    /// An I/O error from the underlying reader or writer.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Sample encoding of a WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WavFormat {
    /// Linear PCM, 16-bit little-endian signed (format tag 1).
    Pcm16,
    /// G.711 A-law, one byte per sample (format tag 6).
    Alaw,
    /// G.711 µ-law, one byte per sample (format tag 7).
    Mulaw,
}

impl WavFormat {
    /// The `wFormatTag` value.
    pub fn format_tag(self) -> u16 {
        match self {
            Self::Pcm16 => 1,
            Self::Alaw => 6,
            Self::Mulaw => 7,
        }
    }

    /// Bits per sample: 16 or 8.
    pub fn bits_per_sample(self) -> u16 {
        match self {
            Self::Pcm16 => 16,
            Self::Alaw | Self::Mulaw => 8,
        }
    }

    fn bytes_per_sample(self) -> u16 {
        self.bits_per_sample() / 8
    }

    fn from_tag(format_tag: u16) -> Option<Self> {
        match format_tag {
            1 => Some(Self::Pcm16),
            6 => Some(Self::Alaw),
            7 => Some(Self::Mulaw),
            _ => None,
        }
    }
}

/// What a file holds, for [`WavWriter::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WavSpec {
    /// Encoding.
    pub format: WavFormat,
    /// 1 or 2.
    pub channels: u16,
    /// Samples per second per channel.
    pub sample_rate: u32,
}

impl WavSpec {
    /// Bytes per sample frame (all channels).
    pub fn block_align(&self) -> u16 {
        self.channels * self.format.bytes_per_sample()
    }

    fn validate(&self) -> Result<(), WavError> {
        match self.channels {
            0 => return Err(WavError::ZeroChannels),
            1 | 2 => {}
            channels => return Err(WavError::UnsupportedChannels { channels }),
        }
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&self.sample_rate) {
            return Err(WavError::BadSampleRate {
                sample_rate: self.sample_rate,
            });
        }
        Ok(())
    }
}

/// Description of a parsed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WavInfo {
    /// Format, channels and rate.
    pub spec: WavSpec,
    /// Whole sample frames in the data (a trailing partial frame is not counted).
    pub frames: u64,
    /// The frame count of the `fact` chunk, if the file has one before its data.
    pub fact_frames: Option<u32>,
    /// Offset of the first audio byte in the file.
    pub data_offset: u64,
    /// Whether the `data` size ran past the end of the file and was cut to the bytes present
    /// (only with [`WavReader::parse_lenient`]).
    pub data_truncated: bool,
}

impl WavInfo {
    /// Duration in seconds.
    pub fn duration_seconds(&self) -> f64 {
        self.frames as f64 / f64::from(self.spec.sample_rate)
    }
}

/// A parsed file: its description and the audio bytes, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavFile<'a> {
    /// Description.
    pub info: WavInfo,
    /// The audio bytes, whole frames only, interleaved by channel.
    pub data: &'a [u8],
}

impl<'a> WavFile<'a> {
    /// Iterator over interleaved PCM16 samples; `None` for G.711 files.
    pub fn samples_i16(&self) -> Option<impl Iterator<Item = i16> + 'a> {
        (self.info.spec.format == WavFormat::Pcm16).then(|| {
            self.data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
        })
    }
}

/// Parser of WAV files held in memory; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct WavReader;

impl WavReader {
    /// Parses a complete file; a `data` size beyond the end of `bytes` is an error.
    pub fn parse(bytes: &[u8]) -> Result<WavFile<'_>, WavError> {
        parse_impl(bytes, false)
    }

    /// Like [`parse`](Self::parse), but a `data` size beyond the end of `bytes` is cut to
    /// the bytes present and flagged in [`WavInfo::data_truncated`].
    pub fn parse_lenient(bytes: &[u8]) -> Result<WavFile<'_>, WavError> {
        parse_impl(bytes, true)
    }
}

/// One chunk header found while walking the file.
#[derive(Debug, Clone, Copy)]
struct ChunkHeader {
    id: [u8; 4],
    size: u32,
    /// Offset of the chunk body.
    body: u64,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_le_bytes([x, y]),
        _ => 0,
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[a, c, d, e]) => u32::from_le_bytes([a, c, d, e]),
        _ => 0,
    }
}

fn check_riff_header(header: &[u8]) -> Result<(), WavError> {
    if header.len() < 4 || &header[..4] != b"RIFF" {
        // A prefix of "RIFF" is a truncated file, anything else is not RIFF.
        if header.len() < 4 && b"RIFF".starts_with(header) {
            return Err(WavError::Truncated {
                context: "RIFF header",
                offset: 0,
                needed: RIFF_HEADER_LEN as u64,
                available: header.len() as u64,
            });
        }
        return Err(WavError::NotRiff);
    }
    if header.len() < RIFF_HEADER_LEN {
        return Err(WavError::Truncated {
            context: "RIFF header",
            offset: 0,
            needed: RIFF_HEADER_LEN as u64,
            available: header.len() as u64,
        });
    }
    if &header[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    Ok(())
}

/// Parses a `fmt ` chunk body into a spec.
fn parse_fmt(body: &[u8]) -> Result<WavSpec, WavError> {
    let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
    if body.len() < 16 {
        return Err(WavError::BadFmtChunk { size });
    }
    let mut tag = le_u16(body, 0);
    let channels = le_u16(body, 2);
    let sample_rate = le_u32(body, 4);
    let block_align = le_u16(body, 12);
    let bits = le_u16(body, 14);
    if tag == 0xFFFE {
        // WAVE_FORMAT_EXTENSIBLE: cbSize (2) = 22, valid bits (2), channel mask (4), then
        // the sub-format GUID whose first two bytes are the format tag.
        if body.len() < 40 {
            return Err(WavError::BadFmtChunk { size });
        }
        tag = le_u16(body, 24);
    }
    let format = WavFormat::from_tag(tag).ok_or(WavError::UnsupportedFormat { format_tag: tag })?;
    if bits != format.bits_per_sample() {
        return Err(WavError::UnsupportedBitsPerSample { bits });
    }
    let spec = WavSpec {
        format,
        channels,
        sample_rate,
    };
    spec.validate()?;
    if block_align != spec.block_align() {
        return Err(WavError::BadBlockAlign {
            expected: spec.block_align(),
            found: block_align,
        });
    }
    Ok(spec)
}

fn parse_impl(bytes: &[u8], lenient: bool) -> Result<WavFile<'_>, WavError> {
    check_riff_header(bytes.get(..RIFF_HEADER_LEN).unwrap_or(bytes))?;
    let len = bytes.len() as u64;
    let mut pos = RIFF_HEADER_LEN as u64;
    let mut spec = None;
    let mut fact_frames = None;
    loop {
        let Some(chunk) = read_chunk_header(bytes, pos)? else {
            return Err(if spec.is_some() {
                WavError::MissingData
            } else {
                WavError::MissingFmt
            });
        };
        let available = len - chunk.body;
        let size = u64::from(chunk.size);
        if &chunk.id == b"data" {
            let spec: WavSpec = spec.ok_or(WavError::MissingFmt)?;
            let mut data_truncated = false;
            let data_len = if size > available {
                if !lenient {
                    return Err(WavError::DataBeyondFile {
                        declared: chunk.size,
                        available,
                    });
                }
                data_truncated = true;
                available
            } else {
                size
            };
            let align = u64::from(spec.block_align());
            let frames = data_len / align;
            let start = usize::try_from(chunk.body).map_err(|_| WavError::TooLarge)?;
            let end =
                usize::try_from(chunk.body + frames * align).map_err(|_| WavError::TooLarge)?;
            let data = bytes.get(start..end).ok_or(WavError::Truncated {
                context: "data chunk",
                offset: chunk.body,
                needed: size,
                available,
            })?;
            return Ok(WavFile {
                info: WavInfo {
                    spec,
                    frames,
                    fact_frames,
                    data_offset: chunk.body,
                    data_truncated,
                },
                data,
            });
        }
        if size > available {
            return Err(WavError::Truncated {
                context: "chunk body",
                offset: chunk.body,
                needed: size,
                available,
            });
        }
        // `size <= available <= bytes.len()`, so these conversions and slices are in range.
        let start = usize::try_from(chunk.body).map_err(|_| WavError::TooLarge)?;
        let body = bytes
            .get(start..start + chunk.size as usize)
            .ok_or(WavError::TooLarge)?;
        match &chunk.id {
            b"fmt " => {
                if chunk.size > MAX_FMT_LEN {
                    return Err(WavError::BadFmtChunk { size: chunk.size });
                }
                spec = Some(parse_fmt(body)?);
            }
            b"fact" if body.len() >= 4 => fact_frames = Some(le_u32(body, 0)),
            _ => {}
        }
        // Skip the body and its pad byte; a missing pad at the end of the file is tolerated.
        pos = chunk.body + size + (size & 1);
    }
}

/// Reads the chunk header at `pos`; `None` at the end of the file.
fn read_chunk_header(bytes: &[u8], pos: u64) -> Result<Option<ChunkHeader>, WavError> {
    let len = bytes.len() as u64;
    if pos >= len {
        return Ok(None);
    }
    if len - pos < CHUNK_HEADER_LEN as u64 {
        return Err(WavError::Truncated {
            context: "chunk header",
            offset: pos,
            needed: CHUNK_HEADER_LEN as u64,
            available: len - pos,
        });
    }
    // `pos + 8 <= len`, so `pos` fits in usize.
    let at = pos as usize;
    let mut id = [0u8; 4];
    id.copy_from_slice(&bytes[at..at + 4]);
    Ok(Some(ChunkHeader {
        id,
        size: le_u32(bytes, at + 4),
        body: pos + CHUNK_HEADER_LEN as u64,
    }))
}

/// Reads exactly `buf.len()` bytes, or reports how many were available before the end.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, WavError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WavError::Io(e)),
        }
    }
    Ok(got)
}

/// Streaming WAV reader over any [`Read`]: parses the header chunks on
/// [`open`](Self::open), then hands out the audio in caller buffers. Unknown chunks are
/// skipped without buffering them and nothing is allocated, whatever the sizes claim.
///
/// The `data` size cannot be checked against the stream length up front; a stream that ends
/// early is reported as [`WavError::DataBeyondFile`] by the read that reaches its end.
#[derive(Debug)]
pub struct WavStreamReader<R: Read> {
    inner: R,
    info: WavInfo,
    /// Bytes of whole frames left to read.
    remaining: u64,
    declared: u32,
    consumed: u64,
}

impl<R: Read> WavStreamReader<R> {
    /// Reads the header up to the start of the audio.
    pub fn open(mut inner: R) -> Result<Self, WavError> {
        let mut header = [0u8; RIFF_HEADER_LEN];
        let got = read_full(&mut inner, &mut header)?;
        check_riff_header(&header[..got])?;
        let mut pos = RIFF_HEADER_LEN as u64;
        let mut spec = None;
        let mut fact_frames = None;
        loop {
            let mut ch = [0u8; CHUNK_HEADER_LEN];
            let got = read_full(&mut inner, &mut ch)?;
            if got == 0 {
                return Err(if spec.is_some() {
                    WavError::MissingData
                } else {
                    WavError::MissingFmt
                });
            }
            if got < CHUNK_HEADER_LEN {
                return Err(WavError::Truncated {
                    context: "chunk header",
                    offset: pos,
                    needed: CHUNK_HEADER_LEN as u64,
                    available: got as u64,
                });
            }
            let size = le_u32(&ch, 4);
            let body = pos + CHUNK_HEADER_LEN as u64;
            if &ch[..4] == b"data" {
                let spec: WavSpec = spec.ok_or(WavError::MissingFmt)?;
                let align = u64::from(spec.block_align());
                let whole = u64::from(size) - u64::from(size) % align;
                return Ok(Self {
                    inner,
                    info: WavInfo {
                        spec,
                        frames: whole / align,
                        fact_frames,
                        data_offset: body,
                        data_truncated: false,
                    },
                    remaining: whole,
                    declared: size,
                    consumed: 0,
                });
            }
            let padded = u64::from(size) + u64::from(size & 1);
            let mut kept = [0u8; 64];
            let keep = match &ch[..4] {
                b"fmt " if size > MAX_FMT_LEN => return Err(WavError::BadFmtChunk { size }),
                b"fmt " | b"fact" => (size as usize).min(kept.len()),
                _ => 0,
            };
            let got = read_full(&mut inner, &mut kept[..keep])?;
            let skipped = io::copy(&mut (&mut inner).take(padded - got as u64), &mut io::sink())?;
            let available = got as u64 + skipped;
            // A missing pad byte at the very end is tolerated; anything shorter is truncated.
            if available < u64::from(size) {
                return Err(WavError::Truncated {
                    context: "chunk body",
                    offset: body,
                    needed: u64::from(size),
                    available,
                });
            }
            match &ch[..4] {
                b"fmt " => spec = Some(parse_fmt(&kept[..keep])?),
                b"fact" if keep >= 4 => fact_frames = Some(le_u32(&kept, 0)),
                _ => {}
            }
            pos = body + padded;
        }
    }

    /// Description of the stream; `frames` is what the header declares.
    pub fn info(&self) -> &WavInfo {
        &self.info
    }

    /// Reads audio bytes into `buf`, whole frames only (`buf` should hold at least one);
    /// returns 0 at the end of the data.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, WavError> {
        let align = usize::from(self.info.spec.block_align());
        let want = buf.len() - buf.len() % align;
        let want = want.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let got = read_full(&mut self.inner, &mut buf[..want])?;
        self.consumed += got as u64;
        if got < want {
            return Err(WavError::DataBeyondFile {
                declared: self.declared,
                available: self.consumed,
            });
        }
        self.remaining -= got as u64;
        Ok(got)
    }

    /// Reads interleaved PCM16 samples into `out` (a PCM16 file only), whole frames only;
    /// returns the number of samples, 0 at the end of the data.
    pub fn read_samples_i16(&mut self, out: &mut [i16]) -> Result<usize, WavError> {
        if self.info.spec.format != WavFormat::Pcm16 {
            return Err(WavError::FormatMismatch {
                format: self.info.spec.format,
            });
        }
        let mut bytes = [0u8; 1024];
        let mut done = 0;
        while done < out.len() {
            let room = ((out.len() - done) * 2).min(bytes.len());
            let n = self.read_data(&mut bytes[..room])?;
            if n == 0 {
                break;
            }
            for (dst, b) in out[done..].iter_mut().zip(bytes[..n].chunks_exact(2)) {
                *dst = i16::from_le_bytes([b[0], b[1]]);
            }
            done += n / 2;
        }
        Ok(done)
    }

    /// The inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Absolute byte offsets of the fields the writer patches.
#[derive(Debug, Clone, Copy)]
struct HeaderLayout {
    riff_size_at: u64,
    fact_frames_at: Option<u64>,
    data_size_at: u64,
    data_start: u64,
}

/// Builds the header for `spec` into `out` and returns its length and the offsets of its
/// size fields relative to `base`.
fn build_header(spec: &WavSpec, base: u64, out: &mut [u8; 64]) -> (usize, HeaderLayout) {
    let pcm = spec.format == WavFormat::Pcm16;
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        out[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
        n as u64
    };
    put(b"RIFF");
    put(&0u32.to_le_bytes());
    put(b"WAVE");
    put(b"fmt ");
    put(&(if pcm { 16u32 } else { 18 }).to_le_bytes());
    put(&spec.format.format_tag().to_le_bytes());
    put(&spec.channels.to_le_bytes());
    put(&spec.sample_rate.to_le_bytes());
    let byte_rate = spec.sample_rate * u32::from(spec.block_align());
    put(&byte_rate.to_le_bytes());
    put(&spec.block_align().to_le_bytes());
    put(&spec.format.bits_per_sample().to_le_bytes());
    let mut fact_frames_at = None;
    if !pcm {
        put(&0u16.to_le_bytes()); // cbSize
        put(b"fact");
        let at = put(&4u32.to_le_bytes());
        fact_frames_at = Some(base + at);
        put(&0u32.to_le_bytes());
    }
    let data_size_at = base + put(b"data");
    let data_start = base + put(&0u32.to_le_bytes());
    let layout = HeaderLayout {
        riff_size_at: base + 4,
        fact_frames_at,
        data_size_at,
        data_start,
    };
    ((data_start - base) as usize, layout)
}

/// Streaming WAV writer; see the [module docs](self) for the crash-safety contract.
#[derive(Debug)]
pub struct WavWriter<W: Write + Seek> {
    inner: W,
    spec: WavSpec,
    layout: HeaderLayout,
    /// Audio bytes written so far.
    data_len: u64,
}

impl<W: Write + Seek> WavWriter<W> {
    /// Writes a header for `spec` at the current position of `inner` (normally its start).
    pub fn create(mut inner: W, spec: WavSpec) -> Result<Self, WavError> {
        spec.validate()?;
        let base = inner.stream_position()?;
        let mut header = [0u8; 64];
        let (len, layout) = build_header(&spec, base, &mut header);
        inner.write_all(&header[..len])?;
        let mut w = Self {
            inner,
            spec,
            layout,
            data_len: 0,
        };
        w.sync_header()?;
        Ok(w)
    }

    /// The spec the file was created with.
    pub fn spec(&self) -> &WavSpec {
        &self.spec
    }

    /// Whole sample frames written so far.
    pub fn frames(&self) -> u64 {
        self.data_len / u64::from(self.spec.block_align())
    }

    /// Appends interleaved PCM16 samples (a PCM16 file only). Frames may span calls.
    pub fn write_samples_i16(&mut self, samples: &[i16]) -> Result<(), WavError> {
        if self.spec.format != WavFormat::Pcm16 {
            return Err(WavError::FormatMismatch {
                format: self.spec.format,
            });
        }
        self.reserve(samples.len() as u64 * 2)?;
        let mut buf = [0u8; 1024];
        for chunk in samples.chunks(buf.len() / 2) {
            for (dst, s) in buf.chunks_exact_mut(2).zip(chunk) {
                dst.copy_from_slice(&s.to_le_bytes());
            }
            self.inner.write_all(&buf[..chunk.len() * 2])?;
            self.data_len += chunk.len() as u64 * 2;
        }
        Ok(())
    }

    /// Appends G.711 bytes (an A-law or µ-law file only), interleaved by channel.
    pub fn write_encoded(&mut self, bytes: &[u8]) -> Result<(), WavError> {
        if self.spec.format == WavFormat::Pcm16 {
            return Err(WavError::FormatMismatch {
                format: self.spec.format,
            });
        }
        self.reserve(bytes.len() as u64)?;
        self.inner.write_all(bytes)?;
        self.data_len += bytes.len() as u64;
        Ok(())
    }

    fn reserve(&self, more: u64) -> Result<(), WavError> {
        // The RIFF size counts everything after its own field, plus a pad byte.
        let riff = self.layout.data_start - self.layout.riff_size_at - 4 + self.data_len + more + 1;
        if riff > MAX_RIFF_SIZE {
            return Err(WavError::TooLarge);
        }
        Ok(())
    }

    /// Rewrites the RIFF, `fact` and `data` sizes to cover the whole frames written so far,
    /// then returns to the end of the data and flushes.
    pub fn sync_header(&mut self) -> Result<(), WavError> {
        let align = u64::from(self.spec.block_align());
        let whole = self.data_len - self.data_len % align;
        self.patch_sizes(whole)?;
        self.inner
            .seek(SeekFrom::Start(self.layout.data_start + self.data_len))?;
        self.inner.flush()?;
        Ok(())
    }

    /// Writes `data_size` into the `data` header, the matching frame count into `fact` and
    /// the RIFF size (counting a pad byte when `data_size` is odd).
    fn patch_sizes(&mut self, data_size: u64) -> Result<(), WavError> {
        let frames = data_size / u64::from(self.spec.block_align());
        let riff =
            self.layout.data_start - self.layout.riff_size_at - 4 + data_size + (data_size & 1);
        let riff = u32::try_from(riff).map_err(|_| WavError::TooLarge)?;
        let data_size = u32::try_from(data_size).map_err(|_| WavError::TooLarge)?;
        self.inner.seek(SeekFrom::Start(self.layout.riff_size_at))?;
        self.inner.write_all(&riff.to_le_bytes())?;
        if let Some(at) = self.layout.fact_frames_at {
            let frames = u32::try_from(frames).map_err(|_| WavError::TooLarge)?;
            self.inner.seek(SeekFrom::Start(at))?;
            self.inner.write_all(&frames.to_le_bytes())?;
        }
        self.inner.seek(SeekFrom::Start(self.layout.data_size_at))?;
        self.inner.write_all(&data_size.to_le_bytes())?;
        Ok(())
    }

    /// Drops a trailing partial frame, pads the data to an even length, writes the final
    /// sizes and returns the inner writer (positioned at the end of the file).
    pub fn finalize(mut self) -> Result<W, WavError> {
        let align = u64::from(self.spec.block_align());
        let whole = self.data_len - self.data_len % align;
        self.inner
            .seek(SeekFrom::Start(self.layout.data_start + whole))?;
        self.data_len = whole;
        if whole & 1 == 1 {
            self.inner.write_all(&[0])?;
        }
        self.patch_sizes(whole)?;
        self.inner.seek(SeekFrom::Start(
            self.layout.data_start + whole + (whole & 1),
        ))?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// The inner writer, e.g. to call `File::sync_data` after [`sync_header`](Self::sync_header).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// What [`repair`] found and changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RepairReport {
    /// The file's format, channels and rate.
    pub spec: WavSpec,
    /// The `data` size in the header before repair.
    pub data_size_before: u32,
    /// The `data` size after repair.
    pub data_size_after: u32,
    /// The RIFF size before repair.
    pub riff_size_before: u32,
    /// The RIFF size after repair.
    pub riff_size_after: u32,
    /// Bytes of a trailing partial frame removed from the end of the file.
    pub trimmed_bytes: u64,
    /// Whole sample frames in the repaired file.
    pub frames: u64,
    /// Whether anything was written.
    pub changed: bool,
}

/// Fixes the RIFF, `fact` and `data` sizes of a WAV file whose header is stale; see the
/// [module docs](self).
///
/// A file whose chunks already add up exactly to its length is left untouched
/// (`changed == false`). Otherwise the `data` chunk is taken to extend to the end of the
/// file: a trailing partial sample frame is cut off (the file is shortened), a pad byte is
/// appended if the data length is odd, and the sizes are rewritten.
pub fn repair(file: &mut std::fs::File) -> Result<RepairReport, WavError> {
    let file_len = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    // Read the start of the file (bounded) to find fmt and data.
    let scan = file_len.min(REPAIR_SCAN_LIMIT);
    let mut head = [0u8; 4096];
    let mut header_bytes = Vec::new();
    let mut reader = (&mut *file).take(scan);
    loop {
        let n = reader.read(&mut head)?;
        if n == 0 {
            break;
        }
        header_bytes.extend_from_slice(&head[..n]);
        // Stop once a data chunk header has been seen after fmt.
        if let Ok(Some(_)) = find_data(&header_bytes) {
            break;
        }
    }
    check_riff_header(header_bytes.get(..RIFF_HEADER_LEN).unwrap_or(&header_bytes))?;
    let found = find_data(&header_bytes)?.ok_or(WavError::MissingData)?;
    let spec = found.spec;
    let riff_size_before = le_u32(&header_bytes, 4);
    let data_size_before = found.data.size;
    let data_start = found.data.body;
    let available = file_len.saturating_sub(data_start);
    let align = u64::from(spec.block_align());

    // Consistent already: the declared data (and any chunks after it) end exactly at EOF.
    let declared = u64::from(data_size_before);
    if declared <= available {
        let end = data_start + declared + (declared & 1);
        let consistent = (end == file_len || end - (declared & 1) == file_len)
            || chunks_reach_eof(file, end, file_len)?;
        if consistent && declared % align == 0 {
            let riff_expected = u32::try_from(file_len - 8).map_err(|_| WavError::TooLarge)?;
            let riff_ok = riff_size_before == riff_expected;
            let fact_ok = found
                .fact_at
                .is_none_or(|_| found.fact_frames == Some(declared / align));
            if riff_ok && fact_ok {
                return Ok(RepairReport {
                    spec,
                    data_size_before,
                    data_size_after: data_size_before,
                    riff_size_before,
                    riff_size_after: riff_size_before,
                    trimmed_bytes: 0,
                    frames: declared / align,
                    changed: false,
                });
            }
            write_sizes(file, &found, declared, file_len)?;
            return Ok(RepairReport {
                spec,
                data_size_before,
                data_size_after: data_size_before,
                riff_size_before,
                riff_size_after: riff_expected,
                trimmed_bytes: 0,
                frames: declared / align,
                changed: true,
            });
        }
    }

    // Stale header: the audio runs to the end of the file.
    let whole = available - available % align;
    let trimmed = available - whole;
    let data_size_after = u32::try_from(whole).map_err(|_| WavError::TooLarge)?;
    let new_len = data_start + whole + (whole & 1);
    if new_len - 8 > MAX_RIFF_SIZE {
        return Err(WavError::TooLarge);
    }
    file.set_len(data_start + whole)?;
    if whole & 1 == 1 {
        file.seek(SeekFrom::Start(data_start + whole))?;
        file.write_all(&[0])?;
    }
    write_sizes(file, &found, whole, new_len)?;
    file.flush()?;
    Ok(RepairReport {
        spec,
        data_size_before,
        data_size_after,
        riff_size_before,
        riff_size_after: u32::try_from(new_len - 8).map_err(|_| WavError::TooLarge)?,
        trimmed_bytes: trimmed,
        frames: whole / u64::from(spec.block_align()),
        changed: true,
    })
}

/// The fmt and data chunks found at the start of a file.
#[derive(Debug, Clone, Copy)]
struct FoundChunks {
    spec: WavSpec,
    data: ChunkHeader,
    /// Offset of the `fact` frame count, if any.
    fact_at: Option<u64>,
    fact_frames: Option<u64>,
}

/// Walks `bytes` (a file prefix) to the `data` chunk header; `Ok(None)` if the prefix ends
/// first.
fn find_data(bytes: &[u8]) -> Result<Option<FoundChunks>, WavError> {
    if bytes.len() < RIFF_HEADER_LEN {
        return Ok(None);
    }
    let len = bytes.len() as u64;
    let mut pos = RIFF_HEADER_LEN as u64;
    let mut spec = None;
    let mut fact_at = None;
    let mut fact_frames = None;
    loop {
        if pos >= len || len - pos < CHUNK_HEADER_LEN as u64 {
            return Ok(None);
        }
        let Some(chunk) = read_chunk_header(bytes, pos)? else {
            return Ok(None);
        };
        if &chunk.id == b"data" {
            let spec = spec.ok_or(WavError::MissingFmt)?;
            return Ok(Some(FoundChunks {
                spec,
                data: chunk,
                fact_at,
                fact_frames,
            }));
        }
        let size = u64::from(chunk.size);
        if size > len - chunk.body {
            return Ok(None);
        }
        let start = chunk.body as usize;
        let body = &bytes[start..start + chunk.size as usize];
        match &chunk.id {
            b"fmt " => spec = Some(parse_fmt(body)?),
            b"fact" if body.len() >= 4 => {
                fact_at = Some(chunk.body);
                fact_frames = Some(u64::from(le_u32(body, 0)));
            }
            _ => {}
        }
        pos = chunk.body + size + (size & 1);
    }
}

/// Whether the chunks from `pos` add up exactly to `file_len` (at most 64 chunks).
fn chunks_reach_eof(
    file: &mut std::fs::File,
    mut pos: u64,
    file_len: u64,
) -> Result<bool, WavError> {
    for _ in 0..64 {
        if pos == file_len {
            return Ok(true);
        }
        if pos > file_len || file_len - pos < CHUNK_HEADER_LEN as u64 {
            return Ok(false);
        }
        let mut header = [0u8; CHUNK_HEADER_LEN];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut header)?;
        if !header[..4]
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ')
        {
            return Ok(false);
        }
        let size = u64::from(le_u32(&header, 4));
        pos = pos + CHUNK_HEADER_LEN as u64 + size;
        if pos == file_len {
            return Ok(true);
        }
        pos += size & 1;
    }
    Ok(false)
}

fn write_sizes(
    file: &mut std::fs::File,
    found: &FoundChunks,
    data_size: u64,
    file_len: u64,
) -> Result<(), WavError> {
    let riff = u32::try_from(file_len - 8).map_err(|_| WavError::TooLarge)?;
    let data = u32::try_from(data_size).map_err(|_| WavError::TooLarge)?;
    file.seek(SeekFrom::Start(4))?;
    file.write_all(&riff.to_le_bytes())?;
    if let Some(at) = found.fact_at {
        let frames = data_size / u64::from(found.spec.block_align());
        let frames = u32::try_from(frames).map_err(|_| WavError::TooLarge)?;
        file.seek(SeekFrom::Start(at))?;
        file.write_all(&frames.to_le_bytes())?;
    }
    file.seek(SeekFrom::Start(found.data.body - 4))?;
    file.write_all(&data.to_le_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const FORMATS: [WavFormat; 3] = [WavFormat::Pcm16, WavFormat::Alaw, WavFormat::Mulaw];

    fn spec(format: WavFormat, channels: u16, sample_rate: u32) -> WavSpec {
        WavSpec {
            format,
            channels,
            sample_rate,
        }
    }

    /// Writes `frames` frames of a ramp and returns the file bytes.
    fn write_file(spec: WavSpec, frames: usize) -> Vec<u8> {
        let mut w = WavWriter::create(Cursor::new(Vec::new()), spec).unwrap();
        let n = frames * usize::from(spec.channels);
        if spec.format == WavFormat::Pcm16 {
            let samples: Vec<i16> = (0..n).map(|i| (i as i32 * 37 - 20000) as i16).collect();
            w.write_samples_i16(&samples).unwrap();
        } else {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            w.write_encoded(&bytes).unwrap();
        }
        w.finalize().unwrap().into_inner()
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn wav_round_trip_all_formats() {
        for format in FORMATS {
            for channels in [1, 2] {
                for rate in [8000, 16000, 48000] {
                    let s = spec(format, channels, rate);
                    let frames = 333;
                    let bytes = write_file(s, frames);
                    let f = WavReader::parse(&bytes).unwrap();
                    assert_eq!(f.info.spec, s);
                    assert_eq!(f.info.frames, frames as u64);
                    assert_eq!(f.data.len(), frames * usize::from(s.block_align()));
                    assert!(!f.info.data_truncated);
                    assert_eq!(bytes.len() % 2, 0);
                    assert_eq!(le_u32(&bytes, 4) as usize, bytes.len() - 8);
                    if format == WavFormat::Pcm16 {
                        assert_eq!(f.info.fact_frames, None);
                        let got: Vec<i16> = f.samples_i16().unwrap().collect();
                        let want: Vec<i16> = (0..frames * usize::from(channels))
                            .map(|i| (i as i32 * 37 - 20000) as i16)
                            .collect();
                        assert_eq!(got, want);
                    } else {
                        assert_eq!(f.info.fact_frames, Some(frames as u32));
                        assert!(f.samples_i16().is_none());
                        assert!(f.data.iter().enumerate().all(|(i, &b)| b == (i * 7) as u8));
                    }
                    assert!(
                        (f.info.duration_seconds() - frames as f64 / f64::from(rate)).abs() < 1e-9
                    );
                }
            }
        }
    }

    #[test]
    fn wav_header_layout_is_canonical() {
        let bytes = write_file(spec(WavFormat::Pcm16, 1, 8000), 2);
        let mut want = Vec::new();
        want.extend_from_slice(b"RIFF");
        want.extend_from_slice(&40u32.to_le_bytes());
        want.extend_from_slice(b"WAVEfmt ");
        want.extend_from_slice(&16u32.to_le_bytes());
        want.extend_from_slice(&[1, 0, 1, 0]);
        want.extend_from_slice(&8000u32.to_le_bytes());
        want.extend_from_slice(&16000u32.to_le_bytes());
        want.extend_from_slice(&[2, 0, 16, 0]);
        want.extend_from_slice(b"data");
        want.extend_from_slice(&4u32.to_le_bytes());
        assert_eq!(&bytes[..44], &want[..]);

        // G.711: 18-byte fmt with cbSize = 0, then fact, then data; odd data is padded.
        let bytes = write_file(spec(WavFormat::Alaw, 1, 8000), 3);
        assert_eq!(bytes.len(), 58 + 3 + 1);
        assert_eq!(le_u32(&bytes, 16), 18);
        assert_eq!(le_u16(&bytes, 20), 6);
        assert_eq!(le_u32(&bytes, 28), 8000); // byte rate
        assert_eq!(le_u16(&bytes, 32), 1); // block align
        assert_eq!(le_u16(&bytes, 34), 8);
        assert_eq!(le_u16(&bytes, 36), 0); // cbSize
        assert_eq!(&bytes[38..42], b"fact");
        assert_eq!(le_u32(&bytes, 42), 4);
        assert_eq!(le_u32(&bytes, 46), 3);
        assert_eq!(&bytes[50..54], b"data");
        assert_eq!(le_u32(&bytes, 54), 3);
        assert_eq!(le_u32(&bytes, 4), 58 + 4 - 8);
        assert_eq!(bytes[61], 0);
    }

    /// A hand-built file: RIFF header, then the given chunks.
    fn riff(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        for (id, data) in chunks {
            body.extend_from_slice(*id);
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            if data.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn fmt(tag: u16, channels: u16, rate: u32, align: u16, bits: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&rate.wrapping_mul(u32::from(align)).to_le_bytes());
        v.extend_from_slice(&align.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v
    }

    #[test]
    fn wav_tolerates_extra_chunks_padding_and_extensible() {
        let f = fmt(1, 2, 16000, 4, 16);
        let data = [1u8, 0, 2, 0, 3, 0, 4, 0];
        let bytes = riff(&[
            (b"LIST", b"INFOISFT\x05\x00\x00\x00test\x00"),
            (b"junk", b"odd"),
            (b"fmt ", &f),
            (b"bext", &[0u8; 7]),
            (b"data", &data),
            (b"LIST", b"trailing"),
        ]);
        let w = WavReader::parse(&bytes).unwrap();
        assert_eq!(w.info.spec, spec(WavFormat::Pcm16, 2, 16000));
        assert_eq!(w.info.frames, 2);
        assert_eq!(w.data, &data);

        // WAVE_FORMAT_EXTENSIBLE with a µ-law sub-format.
        let mut ext = fmt(0xFFFE, 1, 8000, 1, 8);
        ext.extend_from_slice(&22u16.to_le_bytes());
        ext.extend_from_slice(&8u16.to_le_bytes());
        ext.extend_from_slice(&4u32.to_le_bytes());
        ext.extend_from_slice(&7u16.to_le_bytes());
        ext.extend_from_slice(b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xAA\x00\x38\x9B\x71");
        let bytes = riff(&[(b"fmt ", &ext), (b"data", &[1, 2, 3])]);
        let w = WavReader::parse(&bytes).unwrap();
        assert_eq!(w.info.spec.format, WavFormat::Mulaw);
        assert_eq!(w.info.frames, 3);

        // A trailing partial frame is not counted; a missing final pad byte is fine.
        let mut bytes = riff(&[(b"fmt ", &fmt(1, 1, 8000, 2, 16)), (b"data", &[1, 0, 2])]);
        bytes.pop();
        let w = WavReader::parse(&bytes).unwrap();
        assert_eq!((w.info.frames, w.data.len()), (1, 2));
    }

    #[test]
    fn wav_rejects_malformed_files() {
        let good_fmt = fmt(1, 1, 8000, 2, 16);
        let data: &[u8] = &[0, 0];
        type Case = (Vec<u8>, fn(&WavError) -> bool);
        let cases: Vec<Case> = vec![
            (b"RIFX\x00\x00\x00\x00WAVE".to_vec(), |e| {
                matches!(e, WavError::NotRiff)
            }),
            (b"OggS".to_vec(), |e| matches!(e, WavError::NotRiff)),
            (b"RI".to_vec(), |e| matches!(e, WavError::Truncated { .. })),
            (b"RIFF\x04\x00\x00\x00AVI ".to_vec(), |e| {
                matches!(e, WavError::NotWave)
            }),
            (b"RIFF\x04\x00\x00\x00WAV".to_vec(), |e| {
                matches!(e, WavError::Truncated { .. })
            }),
            (
                riff(&[(b"fmt ", &fmt(3, 1, 8000, 4, 32)), (b"data", data)]),
                |e| matches!(e, WavError::UnsupportedFormat { format_tag: 3 }),
            ),
            (
                riff(&[(b"fmt ", &fmt(1, 1, 8000, 1, 8)), (b"data", data)]),
                |e| matches!(e, WavError::UnsupportedBitsPerSample { bits: 8 }),
            ),
            (
                riff(&[(b"fmt ", &fmt(6, 1, 8000, 1, 16)), (b"data", data)]),
                |e| matches!(e, WavError::UnsupportedBitsPerSample { bits: 16 }),
            ),
            (
                riff(&[(b"fmt ", &fmt(1, 2, 8000, 2, 16)), (b"data", data)]),
                |e| {
                    matches!(
                        e,
                        WavError::BadBlockAlign {
                            expected: 4,
                            found: 2
                        }
                    )
                },
            ),
            (
                riff(&[(b"fmt ", &fmt(1, 0, 8000, 0, 16)), (b"data", data)]),
                |e| matches!(e, WavError::ZeroChannels),
            ),
            (
                riff(&[(b"fmt ", &fmt(1, 6, 8000, 12, 16)), (b"data", data)]),
                |e| matches!(e, WavError::UnsupportedChannels { channels: 6 }),
            ),
            (
                riff(&[(b"fmt ", &fmt(1, 1, 0, 2, 16)), (b"data", data)]),
                |e| matches!(e, WavError::BadSampleRate { sample_rate: 0 }),
            ),
            (
                riff(&[(b"fmt ", &fmt(1, 1, 4_000_000_000, 2, 16)), (b"data", data)]),
                |e| matches!(e, WavError::BadSampleRate { .. }),
            ),
            (riff(&[(b"fmt ", &good_fmt[..14]), (b"data", data)]), |e| {
                matches!(e, WavError::BadFmtChunk { size: 14 })
            }),
            (
                riff(&[(b"fmt ", &fmt(0xFFFE, 1, 8000, 2, 16)), (b"data", data)]),
                |e| matches!(e, WavError::BadFmtChunk { size: 16 }),
            ),
            (riff(&[(b"data", data), (b"fmt ", &good_fmt)]), |e| {
                matches!(e, WavError::MissingFmt)
            }),
            (riff(&[(b"fmt ", &good_fmt)]), |e| {
                matches!(e, WavError::MissingData)
            }),
            (riff(&[(b"LIST", b"xx")]), |e| {
                matches!(e, WavError::MissingFmt)
            }),
        ];
        for (i, (bytes, check)) in cases.iter().enumerate() {
            let err = WavReader::parse(bytes).unwrap_err();
            assert!(check(&err), "case {i}: {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn wav_hostile_sizes() {
        // data claims 4 GiB.
        let mut bytes = riff(&[(b"fmt ", &fmt(1, 1, 8000, 2, 16)), (b"data", &[1, 0, 2, 0])]);
        let at = bytes.len() - 8;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            WavReader::parse(&bytes),
            Err(WavError::DataBeyondFile {
                declared: u32::MAX,
                available: 4
            })
        ));
        let lenient = WavReader::parse_lenient(&bytes).unwrap();
        assert!(lenient.info.data_truncated);
        assert_eq!(lenient.info.frames, 2);
        // A chunk before data claims 4 GiB; the RIFF size claims 4 GiB.
        let mut bytes = riff(&[(b"LIST", &[0; 4]), (b"fmt ", &fmt(1, 1, 8000, 2, 16))]);
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            WavReader::parse(&bytes),
            Err(WavError::Truncated { .. })
        ));
        // A fmt chunk claiming a huge (but present) size is refused before it is read.
        let big = vec![0u8; 4096];
        let bytes = riff(&[(b"fmt ", &big), (b"data", &[])]);
        assert!(matches!(
            WavReader::parse(&bytes),
            Err(WavError::BadFmtChunk { size: 4096 })
        ));
    }

    #[test]
    fn wav_never_panics_on_prefixes_and_noise() {
        let valid = write_file(spec(WavFormat::Mulaw, 2, 8000), 41);
        let mut valid_with_list = riff(&[(b"LIST", b"abc"), (b"fmt ", &fmt(1, 2, 48000, 4, 16))]);
        valid_with_list.extend_from_slice(b"data\x08\x00\x00\x00\x01\x00\x02\x00\x03\x00\x04\x00");
        for file in [
            &valid,
            &valid_with_list,
            &write_file(spec(WavFormat::Pcm16, 1, 16000), 20),
        ] {
            for end in 0..=file.len() {
                let prefix = &file[..end];
                let _ = WavReader::parse(prefix);
                let _ = WavReader::parse_lenient(prefix);
            }
            assert!(WavReader::parse(file).is_ok());
        }
        // Random files, and valid files with random bytes overwritten in the header.
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let len = (rng.next() % 120) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if rng.next() % 2 == 0 && len >= 12 {
                bytes[..4].copy_from_slice(b"RIFF");
                bytes[8..12].copy_from_slice(b"WAVE");
            }
            let _ = WavReader::parse(&bytes);
            let mut mutated = valid.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % 62) as usize;
                mutated[at] = rng.next() as u8;
            }
            if let Ok(f) = WavReader::parse_lenient(&mutated) {
                assert!(
                    f.data.len() as u64 == f.info.frames * u64::from(f.info.spec.block_align())
                );
                assert!(f.info.data_offset as usize + f.data.len() <= mutated.len());
            }
        }
    }

    #[test]
    fn wav_sync_header_leaves_a_valid_prefix() {
        let s = spec(WavFormat::Pcm16, 2, 8000);
        let mut w = WavWriter::create(Cursor::new(Vec::new()), s).unwrap();
        // Just created: a valid, empty file.
        assert_eq!(
            WavReader::parse(w.get_mut().get_ref()).unwrap().info.frames,
            0
        );
        w.write_samples_i16(&[1; 1601]).unwrap(); // 800 frames and half a frame
        w.sync_header().unwrap();
        let snapshot = w.get_mut().get_ref().clone();
        let f = WavReader::parse(&snapshot).unwrap();
        assert_eq!(f.info.frames, 800);
        w.write_samples_i16(&[2; 1599]).unwrap(); // completes the frame, then 799 more
        assert_eq!(w.frames(), 1600);
        // "Crash" now: the bytes on disk still parse, with the synced length.
        let crashed = w.get_mut().get_ref().clone();
        assert_eq!(WavReader::parse(&crashed).unwrap().info.frames, 800);
        let lenient = WavReader::parse_lenient(&crashed).unwrap();
        assert_eq!(lenient.info.frames, 800);
        let bytes = w.finalize().unwrap().into_inner();
        let f = WavReader::parse(&bytes).unwrap();
        assert_eq!(f.info.frames, 1600);
        assert_eq!(bytes.len(), 44 + 1600 * 4);
    }

    #[test]
    fn wav_writer_checks_format_and_spec() {
        let mut w =
            WavWriter::create(Cursor::new(Vec::new()), spec(WavFormat::Alaw, 1, 8000)).unwrap();
        assert!(matches!(
            w.write_samples_i16(&[0]),
            Err(WavError::FormatMismatch { .. })
        ));
        let mut w =
            WavWriter::create(Cursor::new(Vec::new()), spec(WavFormat::Pcm16, 1, 8000)).unwrap();
        assert!(matches!(
            w.write_encoded(&[0]),
            Err(WavError::FormatMismatch { .. })
        ));
        for bad in [
            spec(WavFormat::Pcm16, 0, 8000),
            spec(WavFormat::Pcm16, 3, 8000),
            spec(WavFormat::Mulaw, 1, 999),
        ] {
            assert!(WavWriter::create(Cursor::new(Vec::new()), bad).is_err());
        }
        // Writing after other content: offsets are relative to the start position.
        let mut cur = Cursor::new(b"prefix".to_vec());
        cur.set_position(6);
        let mut w = WavWriter::create(cur, spec(WavFormat::Mulaw, 1, 8000)).unwrap();
        w.write_encoded(&[5; 10]).unwrap();
        let bytes = w.finalize().unwrap().into_inner();
        let f = WavReader::parse(&bytes[6..]).unwrap();
        assert_eq!((f.info.frames, f.info.fact_frames), (10, Some(10)));
    }

    /// Discards data but tracks the position, to reach the 4 GiB limit cheaply.
    #[derive(Debug, Default)]
    struct Sink {
        pos: u64,
        len: u64,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.pos += buf.len() as u64;
            self.len = self.len.max(self.pos);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Sink {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.pos = match pos {
                SeekFrom::Start(p) => p,
                SeekFrom::End(d) => self.len.saturating_add_signed(d),
                SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            };
            Ok(self.pos)
        }
    }

    #[test]
    fn wav_writer_stops_at_the_riff_limit() {
        let mut w = WavWriter::create(Sink::default(), spec(WavFormat::Mulaw, 1, 8000)).unwrap();
        let chunk = vec![0u8; 64 << 20];
        let mut written = 0u64;
        loop {
            match w.write_encoded(&chunk) {
                Ok(()) => written += chunk.len() as u64,
                Err(WavError::TooLarge) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(written + 58 < MAX_RIFF_SIZE);
        assert!(written + chunk.len() as u64 + 58 > MAX_RIFF_SIZE);
        w.write_encoded(&[0; 1000]).unwrap();
        w.sync_header().unwrap();
        let sink = w.finalize().unwrap();
        assert!(sink.len <= MAX_RIFF_SIZE + 8);
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("switchboard-wav-{}-{name}.wav", std::process::id()))
    }

    #[test]
    fn wav_repair_stale_header() {
        for (format, channels) in [
            (WavFormat::Pcm16, 2),
            (WavFormat::Mulaw, 1),
            (WavFormat::Alaw, 2),
        ] {
            let s = spec(format, channels, 16000);
            let path = temp_path(&format!("repair-{format:?}-{channels}"));
            let file = std::fs::File::create(&path).unwrap();
            let mut w = WavWriter::create(std::io::BufWriter::new(file), s).unwrap();
            let frame_bytes = usize::from(s.block_align());
            let write = |w: &mut WavWriter<_>, frames: usize| {
                if format == WavFormat::Pcm16 {
                    w.write_samples_i16(&vec![7i16; frames * usize::from(channels)])
                        .unwrap();
                } else {
                    w.write_encoded(&vec![0x55u8; frames * usize::from(channels)])
                        .unwrap();
                }
            };
            write(&mut w, 1601);
            w.sync_header().unwrap();
            write(&mut w, 2000);
            // A partial trailing frame, as from a write cut short by the crash.
            w.get_mut().write_all(&vec![1u8; frame_bytes - 1]).unwrap();
            w.get_mut().flush().unwrap();
            drop(w);

            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(WavReader::parse(&bytes).unwrap().info.frames, 1601);
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let report = repair(&mut file).unwrap();
            assert!(report.changed);
            assert_eq!(report.frames, 3601);
            assert_eq!(report.trimmed_bytes, frame_bytes as u64 - 1);
            assert_eq!(report.data_size_before as usize, 1601 * frame_bytes);
            assert_eq!(report.data_size_after as usize, 3601 * frame_bytes);
            drop(file);
            let bytes = std::fs::read(&path).unwrap();
            let f = WavReader::parse(&bytes).unwrap();
            assert_eq!(f.info.frames, 3601);
            assert_eq!(le_u32(&bytes, 4) as usize, bytes.len() - 8);
            if format != WavFormat::Pcm16 {
                assert_eq!(f.info.fact_frames, Some(3601));
            }
            // Repairing again changes nothing.
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let again = repair(&mut file).unwrap();
            assert!(!again.changed, "{again:?}");
            assert_eq!(again.frames, 3601);
            drop(file);
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn wav_repair_zero_sizes_and_valid_files() {
        // Header written with sizes 0 and never updated.
        let path = temp_path("zero");
        let mut bytes = write_file(spec(WavFormat::Pcm16, 1, 8000), 100);
        bytes[4..8].copy_from_slice(&0u32.to_le_bytes());
        bytes[40..44].copy_from_slice(&0u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let r = repair(&mut file).unwrap();
        assert_eq!(
            (r.changed, r.frames, r.data_size_before, r.riff_size_before),
            (true, 100, 0, 0)
        );
        drop(file);
        assert_eq!(
            WavReader::parse(&std::fs::read(&path).unwrap())
                .unwrap()
                .info
                .frames,
            100
        );

        // A valid file with a trailing LIST chunk is left alone.
        let mut valid = riff(&[
            (b"fmt ", &fmt(1, 1, 8000, 2, 16)),
            (b"data", &[1, 0, 2, 0]),
            (b"LIST", b"abc"),
        ]);
        std::fs::write(&path, &valid).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let r = repair(&mut file).unwrap();
        assert!(!r.changed);
        assert_eq!(r.frames, 2);
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), valid);

        // Only the RIFF size is wrong.
        valid[4..8].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&path, &valid).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let r = repair(&mut file).unwrap();
        assert!(r.changed);
        assert_eq!(r.riff_size_after as usize, valid.len() - 8);
        drop(file);

        // Not a WAV file: an error, and the file is untouched.
        std::fs::write(&path, b"hello world, not a wav").unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(matches!(repair(&mut file), Err(WavError::NotRiff)));
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world, not a wav");
        std::fs::remove_file(&path).unwrap();
    }

    fn stream_read_all(bytes: &[u8]) -> Result<(WavInfo, Vec<u8>), WavError> {
        let mut r = WavStreamReader::open(bytes)?;
        let mut out = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            let n = r.read_data(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok((*r.info(), out))
    }

    #[test]
    fn wav_stream_reader_matches_parse() {
        let mut files = Vec::new();
        for format in FORMATS {
            for channels in [1, 2] {
                files.push(write_file(spec(format, channels, 16000), 257));
            }
        }
        files.push(riff(&[
            (b"LIST", b"odd"),
            (b"fmt ", &fmt(1, 2, 48000, 4, 16)),
            (b"data", &[1, 0, 2, 0, 3, 0, 4, 0, 9]),
            (b"LIST", b"after"),
        ]));
        for bytes in &files {
            let parsed = WavReader::parse(bytes).unwrap();
            let (info, data) = stream_read_all(bytes).unwrap();
            assert_eq!(info, parsed.info);
            assert_eq!(data, parsed.data);
        }
        // PCM samples, in pieces of odd sizes.
        let bytes = write_file(spec(WavFormat::Pcm16, 1, 8000), 1000);
        let mut r = WavStreamReader::open(&bytes[..]).unwrap();
        let mut samples = Vec::new();
        let mut buf = [0i16; 777];
        loop {
            let n = r.read_samples_i16(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            samples.extend_from_slice(&buf[..n]);
        }
        let want: Vec<i16> = WavReader::parse(&bytes)
            .unwrap()
            .samples_i16()
            .unwrap()
            .collect();
        assert_eq!(samples, want);
        let alaw = write_file(spec(WavFormat::Alaw, 1, 8000), 10);
        let mut r = WavStreamReader::open(&alaw[..]).unwrap();
        assert!(matches!(
            r.read_samples_i16(&mut buf),
            Err(WavError::FormatMismatch { .. })
        ));
        assert_eq!(r.into_inner().len(), 10);
    }

    #[test]
    fn wav_stream_reader_hostile_and_truncated_input() {
        let valid = write_file(spec(WavFormat::Pcm16, 2, 8000), 30);
        for end in 0..valid.len() {
            // Every proper prefix is an error (data shorter than declared), never a panic.
            assert!(stream_read_all(&valid[..end]).is_err(), "prefix {end}");
        }
        assert!(stream_read_all(&valid).is_ok());
        // data claims 4 GiB: the header opens, the read that hits the end reports it.
        let mut bytes = riff(&[(b"fmt ", &fmt(1, 1, 8000, 2, 16)), (b"data", &[1, 0, 2, 0])]);
        let at = bytes.len() - 8;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            stream_read_all(&bytes),
            Err(WavError::DataBeyondFile {
                declared: u32::MAX,
                available: 4
            })
        ));
        // A chunk before data claims 4 GiB: skipped by reading, then reported truncated.
        let mut bytes = riff(&[(b"LIST", &[0; 4]), (b"fmt ", &fmt(1, 1, 8000, 2, 16))]);
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            stream_read_all(&bytes),
            Err(WavError::Truncated { .. })
        ));
        let bytes = riff(&[(b"fmt ", &vec![0u8; 4096]), (b"data", &[])]);
        assert!(matches!(
            stream_read_all(&bytes),
            Err(WavError::BadFmtChunk { size: 4096 })
        ));
        assert!(matches!(stream_read_all(b"RIFX"), Err(WavError::NotRiff)));
        let mut rng = Rng(77);
        for _ in 0..2000 {
            let mut mutated = valid.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % 48) as usize;
                mutated[at] = rng.next() as u8;
            }
            let _ = stream_read_all(&mutated);
        }
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn wav_parse_never_panics(bytes in vec(any::<u8>(), 0..200)) {
                let _ = WavReader::parse(&bytes);
                let _ = WavReader::parse_lenient(&bytes);
                let _ = WavStreamReader::open(&bytes[..]);
            }

            #[test]
            fn wav_pcm_round_trip(samples in vec(any::<i16>(), 0..500), stereo in any::<bool>()) {
                let channels = if stereo { 2 } else { 1 };
                let spec = spec(WavFormat::Pcm16, channels, 48000);
                let mut w = WavWriter::create(Cursor::new(Vec::new()), spec).unwrap();
                w.write_samples_i16(&samples).unwrap();
                let bytes = w.finalize().unwrap().into_inner();
                let f = WavReader::parse(&bytes).unwrap();
                let got: Vec<i16> = f.samples_i16().unwrap().collect();
                let whole = samples.len() - samples.len() % usize::from(channels);
                prop_assert_eq!(&got[..], &samples[..whole]);
            }
        }
    }
}
