//! Audio files being written: WAV (PCM16, µ-law, A-law) through the codecs crate's
//! crash-repairable [`WavWriter`], or Ogg/Opus through [`OggOpusWriter`]; either straight to
//! a file or through an [`EncryptedWriter`].
//!
//! Drive contract: [`Sink::write`] interleaved PCM16 frames; [`Sink::flush`] hands buffered
//! bytes to the kernel (a killed process loses nothing flushed); [`Sink::sync`] also brings
//! the WAV header up to date; [`Sink::finish`] closes the file (final header or end-of-stream
//! page, fsync) and says how many bytes it holds.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};

use switchboard_codecs::g711;
use switchboard_codecs::wav::{WavError, WavFormat, WavSpec, WavWriter};

use super::Format;
use super::crypt::{CryptError, EncryptedWriter, Key};
use super::ogg::{OggError, OggOpusWriter};

/// Buffer between the encoder and the file.
const BUFFER: usize = 64 * 1024;

/// Errors writing a recording.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// File I/O.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// WAV writer.
    #[error("WAV: {0}")]
    Wav(#[from] WavError),
    /// Ogg/Opus writer.
    #[error("Ogg/Opus: {0}")]
    Ogg(#[from] OggError),
    /// Encryption.
    #[error("encryption: {0}")]
    Crypt(#[from] CryptError),
}

/// A file, plain or encrypted, counting the bytes it writes.
#[derive(Debug)]
pub enum Storage {
    /// Plaintext.
    Plain {
        /// The file.
        file: File,
        /// Bytes written since the last count.
        written: u64,
    },
    /// AES-256-GCM chunks.
    Encrypted(Box<EncryptedWriter>),
}

impl Storage {
    fn take_written(&mut self) -> u64 {
        match self {
            Storage::Plain { written, .. } => std::mem::take(written),
            Storage::Encrypted(w) => w.take_written(),
        }
    }

    fn finish(self) -> io::Result<u64> {
        match self {
            Storage::Plain { file, .. } => {
                file.sync_data()?;
                Ok(file.metadata()?.len())
            }
            Storage::Encrypted(w) => {
                let f = w.finish()?;
                Ok(f.metadata()?.len())
            }
        }
    }
}

impl Write for Storage {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Storage::Plain { file, written } => {
                let n = file.write(buf)?;
                *written += n as u64;
                Ok(n)
            }
            Storage::Encrypted(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Storage::Plain { file, .. } => file.flush(),
            Storage::Encrypted(w) => w.flush(),
        }
    }
}

impl Seek for Storage {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Storage::Plain { file, .. } => file.seek(pos),
            Storage::Encrypted(w) => w.seek(pos),
        }
    }
}

/// Bytes of the WAV header the codecs crate writes for `format` (the rewritable head of an
/// encrypted WAV file).
fn wav_header_len(spec: WavSpec) -> Result<u32, SinkError> {
    let w = WavWriter::create(io::Cursor::new(Vec::new()), spec)?;
    let bytes = w.finalize()?.into_inner();
    u32::try_from(bytes.len()).map_err(|_| SinkError::Io(io::Error::other("header too large")))
}

enum Writer {
    Wav(WavWriter<BufWriter<Storage>>),
    Ogg(OggOpusWriter<BufWriter<Storage>>),
}

/// One recording file being written.
pub struct Sink {
    writer: Writer,
    format: Format,
    channels: usize,
    rate: u32,
    frames: u64,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("format", &self.format)
            .field("channels", &self.channels)
            .field("rate", &self.rate)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// How to create a sink.
#[derive(Debug, Clone)]
pub struct SinkSpec<'a> {
    /// File format.
    pub format: Format,
    /// 1 or 2.
    pub channels: usize,
    /// Samples per second.
    pub rate: u32,
    /// Encrypt with this key (id, key).
    pub key: Option<(&'a str, &'a Key)>,
    /// Opus bit rate per channel.
    pub opus_bitrate: u32,
    /// Ogg stream serial number.
    pub serial: u32,
    /// Ogg comments.
    pub tags: Vec<(String, String)>,
}

impl Sink {
    /// Starts writing into `file` (new and empty).
    pub fn create(file: File, spec: &SinkSpec<'_>) -> Result<Self, SinkError> {
        let wav_format = match spec.format {
            Format::Wav => Some(WavFormat::Pcm16),
            Format::WavUlaw => Some(WavFormat::Mulaw),
            Format::WavAlaw => Some(WavFormat::Alaw),
            Format::Opus => None,
        };
        let channels = spec.channels;
        let wav_spec = wav_format.map(|format| WavSpec {
            format,
            channels: u16::try_from(channels).unwrap_or(2),
            sample_rate: spec.rate,
        });
        let storage = match spec.key {
            None => Storage::Plain { file, written: 0 },
            Some((id, key)) => {
                let head = match wav_spec {
                    Some(s) => wav_header_len(s)?,
                    None => 0,
                };
                Storage::Encrypted(Box::new(EncryptedWriter::create(file, id, key, head)?))
            }
        };
        let out = BufWriter::with_capacity(BUFFER, storage);
        let writer = match wav_spec {
            Some(s) => Writer::Wav(WavWriter::create(out, s)?),
            None => Writer::Ogg(OggOpusWriter::new(
                out,
                channels,
                spec.rate,
                i32::try_from(spec.opus_bitrate).unwrap_or(24_000),
                spec.serial,
                &spec.tags,
            )?),
        };
        Ok(Sink {
            writer,
            format: spec.format,
            channels,
            rate: spec.rate,
            frames: 0,
            scratch: Vec::with_capacity(4096),
        })
    }

    /// Sample frames written.
    #[must_use]
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Appends interleaved frames.
    pub fn write(&mut self, samples: &[i16]) -> Result<(), SinkError> {
        self.frames += (samples.len() / self.channels) as u64;
        match &mut self.writer {
            Writer::Wav(w) => match self.format {
                Format::WavUlaw | Format::WavAlaw => {
                    self.scratch.resize(samples.len(), 0);
                    if self.format == Format::WavUlaw {
                        g711::ulaw_encode_slice(samples, &mut self.scratch);
                    } else {
                        g711::alaw_encode_slice(samples, &mut self.scratch);
                    }
                    w.write_encoded(&self.scratch)?;
                }
                _ => w.write_samples_i16(samples)?,
            },
            Writer::Ogg(w) => w.write_interleaved(samples)?,
        }
        Ok(())
    }

    fn storage(&mut self) -> &mut BufWriter<Storage> {
        match &mut self.writer {
            Writer::Wav(w) => w.get_mut(),
            Writer::Ogg(w) => w.inner_mut(),
        }
    }

    /// Hands buffered bytes to the kernel; returns the bytes that reached the file.
    pub fn flush(&mut self) -> Result<u64, SinkError> {
        let s = self.storage();
        s.flush()?;
        Ok(s.get_mut().take_written())
    }

    /// Brings the WAV header up to date (sizes covering every frame so far), then flushes.
    pub fn sync(&mut self) -> Result<u64, SinkError> {
        if let Writer::Wav(w) = &mut self.writer {
            w.sync_header()?;
        }
        self.flush()
    }

    /// Closes the file; returns (bytes written since the last count, file size on disk).
    pub fn finish(self) -> Result<(u64, u64), SinkError> {
        let out = match self.writer {
            Writer::Wav(w) => w.finalize()?,
            Writer::Ogg(w) => w.finish()?,
        };
        let mut storage = out
            .into_inner()
            .map_err(|e| SinkError::Io(e.into_error()))?;
        storage.flush()?;
        let written = storage.take_written();
        let size = storage.finish()?;
        Ok((written, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::crypt::{EncryptedReader, KeyRing};
    use std::io::Read;
    use switchboard_codecs::wav::WavReader;

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("sb-sink-{}-{name}", std::process::id()))
    }

    fn spec<'a>(format: Format, key: Option<(&'a str, &'a Key)>) -> SinkSpec<'a> {
        SinkSpec {
            format,
            channels: 2,
            rate: 8000,
            key,
            opus_bitrate: 24000,
            serial: 1,
            tags: vec![],
        }
    }

    fn frames(n: usize) -> Vec<i16> {
        (0..n * 2)
            .map(|i| ((i * 37) % 2000) as i16 - 1000)
            .collect()
    }

    #[test]
    fn every_wav_format_plain_and_encrypted_reads_back() {
        let key = Key::new([3; 32]);
        let mut ring = KeyRing::default();
        ring.insert("k", key.clone()).unwrap();
        for format in [Format::Wav, Format::WavUlaw, Format::WavAlaw] {
            for encrypted in [false, true] {
                let p = tmp(&format!("{}-{encrypted}", format.as_str()));
                let f = File::create(&p).unwrap();
                let k = encrypted.then_some(("k", &key));
                let mut s = Sink::create(f, &spec(format, k)).unwrap();
                let data = frames(8000);
                for piece in data.chunks(320) {
                    s.write(piece).unwrap();
                }
                assert!(s.sync().unwrap() > 0);
                assert_eq!(s.frames(), 8000);
                let (_, size) = s.finish().unwrap();
                assert_eq!(size, std::fs::metadata(&p).unwrap().len());
                let bytes = if encrypted {
                    let mut r = EncryptedReader::open(File::open(&p).unwrap(), &ring).unwrap();
                    let mut v = Vec::new();
                    r.read_to_end(&mut v).unwrap();
                    v
                } else {
                    std::fs::read(&p).unwrap()
                };
                let wav = WavReader::parse(&bytes).unwrap();
                assert_eq!(wav.info.frames, 8000, "{format:?} {encrypted}");
                assert_eq!(wav.info.spec.channels, 2);
                if format == Format::Wav {
                    let got: Vec<i16> = wav.samples_i16().unwrap().collect();
                    assert_eq!(got, data);
                }
                let _ = std::fs::remove_file(&p);
            }
        }
    }

    #[test]
    fn opus_files_are_ogg() {
        let p = tmp("opus");
        let mut s = Sink::create(File::create(&p).unwrap(), &spec(Format::Opus, None)).unwrap();
        s.write(&frames(16000)).unwrap();
        s.finish().unwrap();
        let scan = super::super::ogg::scan_pages(File::open(&p).unwrap()).unwrap();
        assert!(scan.ended);
        assert_eq!(
            super::super::ogg::playable_samples(scan.granule.unwrap()),
            2 * 48000
        );
        let _ = std::fs::remove_file(&p);
    }
}
