//! # switchboard-codecs
//!
//! Audio codecs and signal processing for Switchboard's media workers. Everything here is
//! pure computation over caller-owned buffers: no I/O, no clocks, and no allocation on the
//! per-frame paths (encoders and decoders write into slices the caller provides).
//!
//! | module | what |
//! | --- | --- |
//! | [`g711`] | ITU-T G.711 µ-law and A-law, bit-exact, scalar and slice APIs |
//! | [`g722`] | ITU-T G.722 at 64 kbit/s (16 kHz audio, RTP clock 8000 per RFC 3551) |
//! | [`opus`] | Opus through libopus: mono, 8/16/48 kHz, FEC, DTX, PLC |
//! | [`l16`] | linear 16-bit PCM in network byte order (RFC 3551 §4.5.11) |
//! | [`analytics`] | conversation analytics: talk, silence, over-talk, monologues, pitch, agitation |
//! | [`codec`] | the one [`codec::Codec`] abstraction the engine uses, and SDP `rtpmap`/`fmtp` parsing |
//! | [`resample`] | sample-rate conversion between 8, 16 and 48 kHz |
//! | [`telephone_event`] | RFC 4733 telephone-events: parse and build |
//! | [`dtmf`] | in-band DTMF detection (Goertzel, ITU-T Q.24 acceptance) |
//! | [`tone`] | tone generation: DTMF, ringback, busy, any sine |
//! | [`vad`] | frame energy (dBov) and voice activity |
//! | [`wav`] | WAV read and write (PCM16, G.711), crash-repairable streaming writer |

#![warn(missing_docs)]

pub mod analytics;
pub mod codec;
pub mod dtmf;
pub mod g711;
pub mod g722;
pub mod l16;
pub mod opus;
pub mod resample;
pub mod telephone_event;
pub mod tone;
pub mod vad;
pub mod wav;
