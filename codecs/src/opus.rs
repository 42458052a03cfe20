//! Opus (RFC 6716) through the system libopus: mono encoder and decoder with in-band FEC,
//! DTX and packet-loss concealment.
//!
//! This is the crate's one foreign-function module: it declares the few libopus entry
//! points it needs and wraps them in [`OpusEncoder`] and [`OpusDecoder`], which own their
//! libopus state, free it on drop, and can move between threads. `build.rs` links
//! `libopus` (found with `pkg-config`, Debian package `libopus-dev`).
//!
//! **Rates and frames.** Audio is mono 16-bit PCM at 8, 12, 16, 24 or 48 kHz (the rates
//! libopus runs at, RFC 6716 §2). An encoder frame is 2.5, 5, 10, 20, 40 or 60 ms of
//! samples at the configured rate (RFC 6716 §2.1.4). Whatever rate the decoder runs at, it
//! decodes any Opus packet; on RTP the clock rate is always 48 000 and the `rtpmap`
//! always says `opus/48000/2` (RFC 7587 §4.1, §7).
//!
//! **Drive contract.** Feed the encoder one frame per call and send each packet it returns
//! (a packet of 2 bytes or less, as produced in DTX, need not be sent). Feed the decoder
//! packets in order; for each lost packet call [`OpusDecoder::decode_fec`] with the next
//! packet when it has already arrived (in-band FEC, RFC 6716 §2.1.7), otherwise
//! [`OpusDecoder::decode_lost`] (concealment), with an output slice as long as the lost
//! frame. Neither type allocates after construction.

#![allow(unsafe_code)]

use core::ffi::{c_int, c_uchar};
use core::marker::{PhantomData, PhantomPinned};
use core::ptr::NonNull;

/// Opaque libopus encoder state (`OpusEncoder` in `opus.h`).
#[repr(C)]
struct RawEncoder {
    _data: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// Opaque libopus decoder state (`OpusDecoder` in `opus.h`).
#[repr(C)]
struct RawDecoder {
    _data: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

// Declarations from libopus 1.3 `opus.h`; `opus_int32` is `int32_t` and `opus_int16` is
// `int16_t` on every platform libopus supports.
unsafe extern "C" {
    fn opus_encoder_create(
        fs: i32,
        channels: c_int,
        application: c_int,
        error: *mut c_int,
    ) -> *mut RawEncoder;
    fn opus_encode(
        st: *mut RawEncoder,
        pcm: *const i16,
        frame_size: c_int,
        data: *mut c_uchar,
        max_data_bytes: i32,
    ) -> i32;
    fn opus_encoder_ctl(st: *mut RawEncoder, request: c_int, ...) -> c_int;
    fn opus_encoder_destroy(st: *mut RawEncoder);

    fn opus_decoder_create(fs: i32, channels: c_int, error: *mut c_int) -> *mut RawDecoder;
    fn opus_decode(
        st: *mut RawDecoder,
        data: *const c_uchar,
        len: i32,
        pcm: *mut i16,
        frame_size: c_int,
        decode_fec: c_int,
    ) -> c_int;
    fn opus_decoder_ctl(st: *mut RawDecoder, request: c_int, ...) -> c_int;
    fn opus_decoder_destroy(st: *mut RawDecoder);

    fn opus_packet_parse(
        data: *const c_uchar,
        len: i32,
        out_toc: *mut c_uchar,
        frames: *mut *const c_uchar,
        size: *mut i16,
        payload_offset: *mut c_int,
    ) -> c_int;
    fn opus_packet_get_samples_per_frame(data: *const c_uchar, fs: i32) -> c_int;
}

// Constants from libopus `opus_defines.h`.
const OPUS_OK: c_int = 0;
const OPUS_BAD_ARG: c_int = -1;
const OPUS_BUFFER_TOO_SMALL: c_int = -2;
const OPUS_INTERNAL_ERROR: c_int = -3;
const OPUS_INVALID_PACKET: c_int = -4;
const OPUS_UNIMPLEMENTED: c_int = -5;
const OPUS_INVALID_STATE: c_int = -6;
const OPUS_ALLOC_FAIL: c_int = -7;
const OPUS_APPLICATION_VOIP: c_int = 2048;
const OPUS_SET_BITRATE_REQUEST: c_int = 4002;
const OPUS_SET_COMPLEXITY_REQUEST: c_int = 4010;
const OPUS_SET_INBAND_FEC_REQUEST: c_int = 4012;
const OPUS_SET_PACKET_LOSS_PERC_REQUEST: c_int = 4014;
const OPUS_SET_DTX_REQUEST: c_int = 4016;
const OPUS_RESET_STATE: c_int = 4028;

/// Let libopus choose the bitrate from the rate and frame size (`OPUS_AUTO`).
pub const BITRATE_AUTO: i32 = -1000;
/// Use as many bits as the output buffer allows (`OPUS_BITRATE_MAX`).
pub const BITRATE_MAX: i32 = -1;
/// Lowest explicit bitrate libopus accepts, in bit/s.
pub const BITRATE_MIN_BPS: i32 = 500;
/// Highest explicit bitrate libopus accepts, in bit/s.
pub const BITRATE_MAX_BPS: i32 = 512_000;
/// Largest packet one Opus frame can need, in bytes (RFC 6716 §3.2.1); a buffer this size
/// always suffices for [`OpusEncoder::encode`].
pub const MAX_PACKET_BYTES: usize = 1275;
/// Longest audio one Opus packet can carry: 120 ms (RFC 6716 §3.2.5), in samples at 48 kHz.
pub const MAX_PACKET_SAMPLES_48K: usize = 5760;

/// Errors from the Opus wrapper: libopus's own codes and the wrapper's argument checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpusError {
    /// `OPUS_BAD_ARG`: one or more arguments were invalid or out of range.
    #[error("libopus: invalid argument (OPUS_BAD_ARG)")]
    BadArg,
    /// `OPUS_BUFFER_TOO_SMALL`: the output buffer cannot hold the packet or the decoded
    /// audio.
    #[error("libopus: buffer too small (OPUS_BUFFER_TOO_SMALL)")]
    BufferTooSmall,
    /// `OPUS_INTERNAL_ERROR`: an internal error was detected.
    #[error("libopus: internal error (OPUS_INTERNAL_ERROR)")]
    InternalError,
    /// `OPUS_INVALID_PACKET`: the packet is corrupted or malformed.
    #[error("libopus: corrupted or malformed packet (OPUS_INVALID_PACKET)")]
    InvalidPacket,
    /// `OPUS_UNIMPLEMENTED`: the request number is not implemented.
    #[error("libopus: request not implemented (OPUS_UNIMPLEMENTED)")]
    Unimplemented,
    /// `OPUS_INVALID_STATE`: the encoder or decoder state is invalid or already freed.
    #[error("libopus: invalid state (OPUS_INVALID_STATE)")]
    InvalidState,
    /// `OPUS_ALLOC_FAIL`: libopus could not allocate memory.
    #[error("libopus: memory allocation failed (OPUS_ALLOC_FAIL)")]
    AllocFail,
    /// A negative return code libopus does not document.
    #[error("libopus: unknown error code {0}")]
    Unknown(i32),
    /// The sample rate is not one libopus runs at (8000, 12000, 16000, 24000, 48000).
    #[error("unsupported Opus sample rate {0} Hz (use 8000, 12000, 16000, 24000 or 48000)")]
    UnsupportedSampleRate(u32),
    /// The bitrate is neither [`BITRATE_AUTO`], [`BITRATE_MAX`] nor within
    /// [`BITRATE_MIN_BPS`]`..=`[`BITRATE_MAX_BPS`].
    #[error("invalid Opus bitrate {0} bit/s")]
    InvalidBitrate(i32),
    /// The complexity is above 10.
    #[error("invalid Opus complexity {0} (0..=10)")]
    InvalidComplexity(u8),
    /// The expected packet loss is above 100 %.
    #[error("invalid Opus packet loss percentage {0} (0..=100)")]
    InvalidPacketLoss(u8),
    /// The PCM slice is not a whole Opus frame duration at the sample rate.
    #[error("{samples} samples is not an Opus frame duration at {sample_rate} Hz")]
    InvalidFrameSize {
        /// Samples given.
        samples: usize,
        /// Sample rate of the encoder or decoder.
        sample_rate: u32,
    },
    /// An empty packet was given to [`OpusDecoder::decode`]; use
    /// [`OpusDecoder::decode_lost`] for a missing packet.
    #[error("empty Opus packet")]
    EmptyPacket,
}

impl OpusError {
    /// The error for a negative libopus return code.
    #[must_use]
    pub fn from_code(code: i32) -> Self {
        match code {
            OPUS_BAD_ARG => Self::BadArg,
            OPUS_BUFFER_TOO_SMALL => Self::BufferTooSmall,
            OPUS_INTERNAL_ERROR => Self::InternalError,
            OPUS_INVALID_PACKET => Self::InvalidPacket,
            OPUS_UNIMPLEMENTED => Self::Unimplemented,
            OPUS_INVALID_STATE => Self::InvalidState,
            OPUS_ALLOC_FAIL => Self::AllocFail,
            other => Self::Unknown(other),
        }
    }
}

/// Turns a libopus length-or-error return into a `Result`.
fn check_len(ret: c_int) -> Result<usize, OpusError> {
    usize::try_from(ret).map_err(|_| OpusError::from_code(ret))
}

/// Turns a libopus status return into a `Result`.
fn check_ok(ret: c_int) -> Result<(), OpusError> {
    if ret == OPUS_OK {
        Ok(())
    } else {
        Err(OpusError::from_code(ret))
    }
}

/// Checks that `rate` is one libopus runs at and returns it as libopus's `opus_int32`.
fn checked_rate(rate: u32) -> Result<i32, OpusError> {
    match rate {
        8000 | 12000 | 16000 | 24000 | 48000 => {
            i32::try_from(rate).map_err(|_| OpusError::UnsupportedSampleRate(rate))
        }
        _ => Err(OpusError::UnsupportedSampleRate(rate)),
    }
}

/// Whether `samples` is a whole number of 2.5 ms units at `rate`.
fn is_multiple_of_2_5ms(samples: usize, rate: u32) -> bool {
    let unit = rate as usize / 400;
    samples > 0 && samples % unit == 0
}

/// Whether `samples` is one of the encoder frame durations (2.5, 5, 10, 20, 40, 60 ms).
fn is_encoder_frame(samples: usize, rate: u32) -> bool {
    let unit = rate as usize / 400;
    [1, 2, 4, 8, 16, 24].iter().any(|&n| n * unit == samples)
}

/// Clamps a slice length to libopus's `int` / `opus_int32` argument range.
fn c_len(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// Most frames one Opus packet can hold (RFC 6716 §3.2.5).
const MAX_FRAMES_PER_PACKET: usize = 48;

/// Number of samples at `sample_rate` that `packet` decodes to, after checking its framing
/// (RFC 6716 §3.1 table-of-contents byte, §3.2 frame packing and §3.4 requirements
/// R1–R7) without decoding it.
///
/// # Errors
///
/// [`OpusError::InvalidPacket`] for a malformed packet, [`OpusError::EmptyPacket`] for an
/// empty one, and [`OpusError::UnsupportedSampleRate`].
pub fn packet_samples(packet: &[u8], sample_rate: u32) -> Result<usize, OpusError> {
    let fs = checked_rate(sample_rate)?;
    if packet.is_empty() {
        return Err(OpusError::EmptyPacket);
    }
    let mut toc: c_uchar = 0;
    let mut frames = [core::ptr::null::<c_uchar>(); MAX_FRAMES_PER_PACKET];
    let mut sizes = [0i16; MAX_FRAMES_PER_PACKET];
    let mut payload_offset: c_int = 0;
    // SAFETY: `packet` is a live, non-empty slice and libopus reads at most `len` bytes of
    // it; `toc`, `payload_offset` and the 48-entry `frames` and `sizes` arrays (the most
    // frames a packet can hold) are valid for writes; libopus keeps no pointer after
    // returning, and the pointers it stores in `frames` are not used.
    let count = unsafe {
        opus_packet_parse(
            packet.as_ptr(),
            c_len(packet.len()),
            &raw mut toc,
            frames.as_mut_ptr(),
            sizes.as_mut_ptr(),
            &raw mut payload_offset,
        )
    };
    let count = check_len(count)?;
    // SAFETY: `packet` is non-empty, and libopus reads only its first (TOC) byte.
    let per_frame = unsafe { opus_packet_get_samples_per_frame(packet.as_ptr(), fs) };
    let per_frame = check_len(per_frame)?;
    Ok(count * per_frame)
}

/// Encoder settings. The application is always `OPUS_APPLICATION_VOIP` (voice, with
/// speech-oriented processing) and the channel count always one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusConfig {
    /// Input sample rate in Hz: 8000, 12000, 16000, 24000 or 48000.
    pub sample_rate: u32,
    /// Target bitrate in bit/s ([`BITRATE_MIN_BPS`]`..=`[`BITRATE_MAX_BPS`]), or
    /// [`BITRATE_AUTO`] / [`BITRATE_MAX`].
    pub bitrate: i32,
    /// Computational complexity, 0 (cheapest) to 10 (best quality).
    pub complexity: u8,
    /// Embed in-band forward error correction for the previous frame (RFC 6716 §2.1.7);
    /// it takes effect only while `packet_loss_pct` is above zero.
    pub fec: bool,
    /// Discontinuous transmission: send tiny packets during silence (RFC 6716 §2.1.9).
    pub dtx: bool,
    /// Expected packet loss in percent (0..=100); tunes how much the encoder spends on
    /// robustness and FEC.
    pub packet_loss_pct: u8,
}

impl Default for OpusConfig {
    /// 48 kHz, 32 kbit/s, complexity 5, FEC on with 5 % expected loss, DTX off: wideband
    /// voice that survives light loss at a CPU cost that suits many calls per core.
    fn default() -> Self {
        Self {
            sample_rate: 48_000,
            bitrate: 32_000,
            complexity: 5,
            fec: true,
            dtx: false,
            packet_loss_pct: 5,
        }
    }
}

impl OpusConfig {
    /// Checks every field against the ranges libopus accepts.
    ///
    /// # Errors
    ///
    /// The first field out of range, as its [`OpusError`] variant.
    pub fn validate(&self) -> Result<(), OpusError> {
        checked_rate(self.sample_rate)?;
        check_bitrate(self.bitrate)?;
        check_complexity(self.complexity)?;
        check_loss(self.packet_loss_pct)
    }
}

fn check_bitrate(bitrate: i32) -> Result<(), OpusError> {
    if bitrate == BITRATE_AUTO
        || bitrate == BITRATE_MAX
        || (BITRATE_MIN_BPS..=BITRATE_MAX_BPS).contains(&bitrate)
    {
        Ok(())
    } else {
        Err(OpusError::InvalidBitrate(bitrate))
    }
}

fn check_complexity(complexity: u8) -> Result<(), OpusError> {
    if complexity <= 10 {
        Ok(())
    } else {
        Err(OpusError::InvalidComplexity(complexity))
    }
}

fn check_loss(pct: u8) -> Result<(), OpusError> {
    if pct <= 100 {
        Ok(())
    } else {
        Err(OpusError::InvalidPacketLoss(pct))
    }
}

/// A mono Opus encoder owning its libopus state.
///
/// ```
/// use switchboard_codecs::opus::{OpusConfig, OpusEncoder, MAX_PACKET_BYTES};
/// let mut enc = OpusEncoder::new(&OpusConfig { sample_rate: 16_000, ..OpusConfig::default() })?;
/// let frame = [0i16; 320]; // 20 ms at 16 kHz
/// let mut packet = [0u8; MAX_PACKET_BYTES];
/// let len = enc.encode(&frame, &mut packet)?;
/// assert!(len > 0);
/// # Ok::<(), switchboard_codecs::opus::OpusError>(())
/// ```
pub struct OpusEncoder {
    /// Owned libopus state, created by `opus_encoder_create` and destroyed in `Drop`.
    raw: NonNull<RawEncoder>,
    config: OpusConfig,
}

// SAFETY: the libopus encoder state is plain heap memory with no thread affinity and no
// shared references into it; this type owns it exclusively, and every libopus call takes
// `&mut self`, so moving the owner to another thread is sound.
unsafe impl Send for OpusEncoder {}

impl core::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// Creates an encoder with `config` applied.
    ///
    /// # Errors
    ///
    /// A validation error for a field out of range (see [`OpusConfig::validate`]), or the
    /// libopus error if creating or configuring the state fails.
    pub fn new(config: &OpusConfig) -> Result<Self, OpusError> {
        config.validate()?;
        let fs = checked_rate(config.sample_rate)?;
        let mut error: c_int = OPUS_OK;
        // SAFETY: `error` is a valid, writable `int` for the duration of the call; the
        // rate, channel count and application are valid values checked above.
        let raw = unsafe { opus_encoder_create(fs, 1, OPUS_APPLICATION_VOIP, &raw mut error) };
        check_ok(error)?;
        let raw = NonNull::new(raw).ok_or(OpusError::AllocFail)?;
        let mut encoder = Self {
            raw,
            config: *config,
        };
        encoder.apply(OPUS_SET_BITRATE_REQUEST, config.bitrate)?;
        encoder.apply(OPUS_SET_COMPLEXITY_REQUEST, i32::from(config.complexity))?;
        encoder.apply(OPUS_SET_INBAND_FEC_REQUEST, i32::from(config.fec))?;
        encoder.apply(OPUS_SET_DTX_REQUEST, i32::from(config.dtx))?;
        encoder.apply(
            OPUS_SET_PACKET_LOSS_PERC_REQUEST,
            i32::from(config.packet_loss_pct),
        )?;
        Ok(encoder)
    }

    /// Sends one integer-valued `OPUS_SET_*` request.
    fn apply(&mut self, request: c_int, value: i32) -> Result<(), OpusError> {
        // SAFETY: `raw` is a live encoder owned by `self`; every `OPUS_SET_*` request used
        // here takes exactly one `opus_int32` variadic argument, which `value` is.
        let ret = unsafe { opus_encoder_ctl(self.raw.as_ptr(), request, value) };
        check_ok(ret)
    }

    /// The settings in force.
    #[must_use]
    pub fn config(&self) -> &OpusConfig {
        &self.config
    }

    /// The input sample rate in Hz.
    #[must_use]
    pub fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// Encodes one frame of mono PCM into `out` and returns the packet length in bytes.
    ///
    /// `pcm.len()` must be 2.5, 5, 10, 20, 40 or 60 ms at the sample rate (for 20 ms:
    /// 160 at 8 kHz, 320 at 16 kHz, 960 at 48 kHz). An `out` of [`MAX_PACKET_BYTES`]
    /// always suffices. With DTX on, a returned length of 2 or less marks a packet that
    /// need not be sent.
    ///
    /// # Errors
    ///
    /// [`OpusError::InvalidFrameSize`] for a wrong frame length,
    /// [`OpusError::BufferTooSmall`] when `out` cannot hold the packet, or another libopus
    /// error.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, OpusError> {
        if !is_encoder_frame(pcm.len(), self.config.sample_rate) {
            return Err(OpusError::InvalidFrameSize {
                samples: pcm.len(),
                sample_rate: self.config.sample_rate,
            });
        }
        if out.is_empty() {
            return Err(OpusError::BufferTooSmall);
        }
        // SAFETY: `raw` is a live encoder owned by `self`; libopus reads exactly
        // `pcm.len()` samples (one channel) from `pcm` and writes at most `out.len()`
        // bytes (clamped to `opus_int32`) into `out`; both slices outlive the call.
        let ret = unsafe {
            opus_encode(
                self.raw.as_ptr(),
                pcm.as_ptr(),
                c_len(pcm.len()),
                out.as_mut_ptr(),
                c_len(out.len()),
            )
        };
        check_len(ret)
    }

    /// Sets the target bitrate in bit/s, or [`BITRATE_AUTO`] / [`BITRATE_MAX`].
    ///
    /// # Errors
    ///
    /// [`OpusError::InvalidBitrate`] out of range, or the libopus error.
    pub fn set_bitrate(&mut self, bitrate: i32) -> Result<(), OpusError> {
        check_bitrate(bitrate)?;
        self.apply(OPUS_SET_BITRATE_REQUEST, bitrate)?;
        self.config.bitrate = bitrate;
        Ok(())
    }

    /// Sets the complexity, 0..=10.
    ///
    /// # Errors
    ///
    /// [`OpusError::InvalidComplexity`] out of range, or the libopus error.
    pub fn set_complexity(&mut self, complexity: u8) -> Result<(), OpusError> {
        check_complexity(complexity)?;
        self.apply(OPUS_SET_COMPLEXITY_REQUEST, i32::from(complexity))?;
        self.config.complexity = complexity;
        Ok(())
    }

    /// Turns in-band FEC on or off (RFC 6716 §2.1.7).
    ///
    /// # Errors
    ///
    /// The libopus error.
    pub fn set_fec(&mut self, fec: bool) -> Result<(), OpusError> {
        self.apply(OPUS_SET_INBAND_FEC_REQUEST, i32::from(fec))?;
        self.config.fec = fec;
        Ok(())
    }

    /// Turns discontinuous transmission on or off (RFC 6716 §2.1.9).
    ///
    /// # Errors
    ///
    /// The libopus error.
    pub fn set_dtx(&mut self, dtx: bool) -> Result<(), OpusError> {
        self.apply(OPUS_SET_DTX_REQUEST, i32::from(dtx))?;
        self.config.dtx = dtx;
        Ok(())
    }

    /// Sets the expected packet loss in percent, for example from RTCP receiver reports
    /// (RFC 3550 §6.4.1 fraction lost).
    ///
    /// # Errors
    ///
    /// [`OpusError::InvalidPacketLoss`] above 100, or the libopus error.
    pub fn set_packet_loss_pct(&mut self, pct: u8) -> Result<(), OpusError> {
        check_loss(pct)?;
        self.apply(OPUS_SET_PACKET_LOSS_PERC_REQUEST, i32::from(pct))?;
        self.config.packet_loss_pct = pct;
        Ok(())
    }

    /// Resets the codec state as for a new stream, keeping the settings.
    ///
    /// # Errors
    ///
    /// The libopus error.
    pub fn reset(&mut self) -> Result<(), OpusError> {
        // SAFETY: `raw` is a live encoder owned by `self`; `OPUS_RESET_STATE` takes no
        // variadic argument.
        let ret = unsafe { opus_encoder_ctl(self.raw.as_ptr(), OPUS_RESET_STATE) };
        check_ok(ret)
    }
}

impl Drop for OpusEncoder {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `opus_encoder_create`, is owned by `self` alone, and is
        // destroyed exactly once, here.
        unsafe { opus_encoder_destroy(self.raw.as_ptr()) }
    }
}

/// A mono Opus decoder owning its libopus state. Stereo packets are downmixed.
///
/// ```
/// use switchboard_codecs::opus::OpusDecoder;
/// let mut dec = OpusDecoder::new(16_000)?;
/// let mut pcm = [0i16; 320];
/// // A lost 20 ms frame, concealed.
/// assert_eq!(dec.decode_lost(&mut pcm)?, 320);
/// # Ok::<(), switchboard_codecs::opus::OpusError>(())
/// ```
pub struct OpusDecoder {
    /// Owned libopus state, created by `opus_decoder_create` and destroyed in `Drop`.
    raw: NonNull<RawDecoder>,
    sample_rate: u32,
}

// SAFETY: the libopus decoder state is plain heap memory with no thread affinity and no
// shared references into it; this type owns it exclusively, and every libopus call takes
// `&mut self`, so moving the owner to another thread is sound.
unsafe impl Send for OpusDecoder {}

impl core::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("sample_rate", &self.sample_rate)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// Creates a mono decoder producing audio at `sample_rate` Hz (8000, 12000, 16000,
    /// 24000 or 48000).
    ///
    /// # Errors
    ///
    /// [`OpusError::UnsupportedSampleRate`], or the libopus error.
    pub fn new(sample_rate: u32) -> Result<Self, OpusError> {
        let fs = checked_rate(sample_rate)?;
        let mut error: c_int = OPUS_OK;
        // SAFETY: `error` is a valid, writable `int` for the duration of the call; the
        // rate and channel count are valid values checked above.
        let raw = unsafe { opus_decoder_create(fs, 1, &raw mut error) };
        check_ok(error)?;
        let raw = NonNull::new(raw).ok_or(OpusError::AllocFail)?;
        Ok(Self { raw, sample_rate })
    }

    /// The output sample rate in Hz.
    #[must_use]
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Runs `opus_decode` with `packet` (`None` for a lost packet) into `out`.
    fn run(
        &mut self,
        packet: Option<&[u8]>,
        out: &mut [i16],
        fec: bool,
    ) -> Result<usize, OpusError> {
        let (data, len) = match packet {
            Some(p) => (p.as_ptr(), c_len(p.len())),
            None => (core::ptr::null(), 0),
        };
        // SAFETY: `raw` is a live decoder owned by `self`; `data` is either null with
        // length 0 (loss) or points at `len` readable bytes of a slice that outlives the
        // call; libopus writes at most `out.len()` (clamped to `int`) samples of one
        // channel into `out`, which outlives the call.
        let ret = unsafe {
            opus_decode(
                self.raw.as_ptr(),
                data,
                len,
                out.as_mut_ptr(),
                c_len(out.len()),
                c_int::from(fec),
            )
        };
        check_len(ret)
    }

    /// Decodes one packet into `out` and returns the number of samples written.
    ///
    /// `out` must hold the packet's duration at the decoder rate (up to 120 ms: 5760
    /// samples at 48 kHz).
    ///
    /// # Errors
    ///
    /// [`OpusError::EmptyPacket`], [`OpusError::InvalidPacket`] for a malformed packet,
    /// [`OpusError::BufferTooSmall`] when `out` is too short, or another libopus error.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        if packet.is_empty() {
            return Err(OpusError::EmptyPacket);
        }
        self.run(Some(packet), out, false)
    }

    /// Conceals one lost frame of `out.len()` samples (packet-loss concealment) and returns
    /// the number of samples written.
    ///
    /// `out.len()` must be the lost duration, a multiple of 2.5 ms at the decoder rate.
    ///
    /// # Errors
    ///
    /// [`OpusError::InvalidFrameSize`] for another length, or the libopus error.
    pub fn decode_lost(&mut self, out: &mut [i16]) -> Result<usize, OpusError> {
        self.check_gap(out.len())?;
        self.run(None, out, false)
    }

    /// Recovers the lost frame before `next_packet` from the in-band FEC data that
    /// `next_packet` carries (RFC 6716 §2.1.7), writing `out.len()` samples.
    ///
    /// `out.len()` must be the lost duration, a multiple of 2.5 ms at the decoder rate.
    /// When `next_packet` carries no FEC data (FEC off at the sender, a CELT-only packet),
    /// libopus conceals instead, as [`decode_lost`](Self::decode_lost) would. Afterwards,
    /// decode `next_packet` itself normally with [`decode`](Self::decode).
    ///
    /// # Errors
    ///
    /// [`OpusError::InvalidFrameSize`], [`OpusError::EmptyPacket`], or the libopus error.
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        self.check_gap(out.len())?;
        if next_packet.is_empty() {
            return Err(OpusError::EmptyPacket);
        }
        self.run(Some(next_packet), out, true)
    }

    /// Checks that a concealment or FEC length is a whole number of 2.5 ms units.
    fn check_gap(&self, samples: usize) -> Result<(), OpusError> {
        if is_multiple_of_2_5ms(samples, self.sample_rate) {
            Ok(())
        } else {
            Err(OpusError::InvalidFrameSize {
                samples,
                sample_rate: self.sample_rate,
            })
        }
    }

    /// Resets the decoder state as for a new stream.
    ///
    /// # Errors
    ///
    /// The libopus error.
    pub fn reset(&mut self) -> Result<(), OpusError> {
        // SAFETY: `raw` is a live decoder owned by `self`; `OPUS_RESET_STATE` takes no
        // variadic argument.
        let ret = unsafe { opus_decoder_ctl(self.raw.as_ptr(), OPUS_RESET_STATE) };
        check_ok(ret)
    }
}

impl Drop for OpusDecoder {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `opus_decoder_create`, is owned by `self` alone, and is
        // destroyed exactly once, here.
        unsafe { opus_decoder_destroy(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_variants() {
        assert_eq!(OpusError::from_code(-1), OpusError::BadArg);
        assert_eq!(OpusError::from_code(-2), OpusError::BufferTooSmall);
        assert_eq!(OpusError::from_code(-3), OpusError::InternalError);
        assert_eq!(OpusError::from_code(-4), OpusError::InvalidPacket);
        assert_eq!(OpusError::from_code(-5), OpusError::Unimplemented);
        assert_eq!(OpusError::from_code(-6), OpusError::InvalidState);
        assert_eq!(OpusError::from_code(-7), OpusError::AllocFail);
        assert_eq!(OpusError::from_code(-99), OpusError::Unknown(-99));
    }

    #[test]
    fn frame_sizes() {
        for rate in [8000, 12000, 16000, 24000, 48000] {
            let ms20 = rate as usize / 50;
            assert!(is_encoder_frame(ms20, rate));
            assert!(is_encoder_frame(ms20 * 3, rate));
            assert!(!is_encoder_frame(ms20 + 1, rate));
            assert!(!is_encoder_frame(0, rate));
            assert!(!is_encoder_frame(ms20 * 4, rate));
            assert!(is_multiple_of_2_5ms(ms20 * 4, rate));
            assert!(!is_multiple_of_2_5ms(0, rate));
        }
    }

    #[test]
    fn types_are_send() {
        fn is_send<T: Send>() {}
        is_send::<OpusEncoder>();
        is_send::<OpusDecoder>();
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(OpusConfig::default().validate(), Ok(()));
        assert!(OpusEncoder::new(&OpusConfig::default()).is_ok());
    }
}
