//! Encryption at rest: AES-256-GCM (NIST SP 800-38D) in independently authenticated chunks,
//! so a download can start anywhere and decrypt only the chunks it needs.
//!
//! # File layout
//!
//! ```text
//! file header   128 bytes: magic "SBRECAE1", chunk size (u32 LE), head length (u32 LE),
//!               file id (16 random bytes), key id length (u8), key id (up to 64 bytes), zeros
//! head record   nonce (12) | ciphertext of the head (head length) | tag (16)
//! data record 0 nonce (12) | ciphertext of plaintext bytes [head, head + chunk) | tag (16)
//! data record 1 …
//! ```
//!
//! The plaintext is the audio file exactly as it would be written unencrypted. Its first
//! `head length` bytes (the WAV header, whose sizes are rewritten while recording; zero for
//! Ogg) form the head record, which is re-sealed in place with a fresh nonce whenever it
//! changes. The rest is cut into chunks of `chunk size` bytes at fixed offsets; only the last
//! one may be shorter, and it is re-sealed (fresh nonce) each time it grows until it is full.
//! Every record is authenticated with the whole file header and its own index as associated
//! data, so records cannot be moved within a file or between files, and the header cannot be
//! edited. Nonces are 96 random bits per sealing.
//!
//! A process killed while re-sealing the last record can leave it torn; [`repair_tail`] drops
//! a last record that does not authenticate (the data of at most one chunk plus what was not
//! flushed yet).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;

/// The first bytes of an encrypted recording.
pub const MAGIC: [u8; 8] = *b"SBRECAE1";
/// Bytes of the file header.
pub const FILE_HEADER_LEN: usize = 128;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a record adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Plaintext bytes per data chunk.
pub const CHUNK_LEN: u32 = 4096;
/// Longest key id.
pub const MAX_KEY_ID: usize = 64;
/// Associated-data index of the head record.
const HEAD_INDEX: u64 = u64::MAX;

/// A 256-bit key. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// A key from 32 bytes.
    #[must_use]
    pub fn new(bytes: [u8; 32]) -> Self {
        Key(bytes)
    }

    /// Parses 64 hexadecimal digits.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(format!(
                "a key is 64 hexadecimal digits (256 bits), not {} characters",
                s.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]);
            let lo = hex_digit(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err("a key is 64 hexadecimal digits".to_owned()),
            }
        }
        Ok(Key(out))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hexadecimal.
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Whether `id` can name a key: 1 to 64 of `A-Z a-z 0-9 . _ -`.
#[must_use]
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Keys by id: every key that may have encrypted a recording still on disk.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: BTreeMap<String, Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// Adds a key; an invalid or repeated id is an error.
    pub fn insert(&mut self, id: &str, key: Key) -> Result<(), String> {
        if !is_valid_key_id(id) {
            return Err(format!(
                "key id `{id}` must be 1 to {MAX_KEY_ID} of A-Z a-z 0-9 . _ -"
            ));
        }
        if self.keys.insert(id.to_owned(), key).is_some() {
            return Err(format!("key id `{id}` is given twice"));
        }
        Ok(())
    }

    /// The key named `id`.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.get(id)
    }

    /// Whether no key is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Parses a key file: one `ID HEX` or `ID = HEX` per line; blank lines and lines starting
    /// with `#` are ignored.
    pub fn parse_key_file(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, hex) = line
                .split_once('=')
                .or_else(|| line.split_once(char::is_whitespace))
                .ok_or_else(|| format!("line {}: expected `ID HEX`", n + 1))?;
            let key = Key::from_hex(hex).map_err(|e| format!("line {}: {e}", n + 1))?;
            self.insert(id.trim(), key)
                .map_err(|e| format!("line {}: {e}", n + 1))?;
        }
        Ok(())
    }
}

/// Errors of encrypted files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptError {
    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with [`MAGIC`] or its header is inconsistent.
    #[error("not an encrypted recording: {0}")]
    BadHeader(&'static str),
    /// The key the file names is not configured.
    #[error("the key `{0}` is not configured")]
    UnknownKey(String),
    /// A record did not authenticate: the file was altered or the key is wrong.
    #[error("chunk {chunk} does not authenticate (altered file or wrong key)")]
    Authentication {
        /// The record (`u64::MAX` for the head).
        chunk: u64,
    },
}

impl From<CryptError> for io::Error {
    fn from(e: CryptError) -> Self {
        match e {
            CryptError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Whether `file` starts with [`MAGIC`] (reads from the current position onward).
pub fn is_encrypted(file: &File) -> io::Result<bool> {
    let mut m = [0u8; 8];
    match file.read_exact_at(&mut m, 0) {
        Ok(()) => Ok(m == MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The geometry of one encrypted file, from its header.
#[derive(Clone)]
struct Layout {
    header: [u8; FILE_HEADER_LEN],
    chunk: u64,
    head_len: u64,
}

impl Layout {
    fn new(key_id: &str, head_len: u32) -> Result<Self, CryptError> {
        if !is_valid_key_id(key_id) {
            return Err(CryptError::BadHeader("invalid key id"));
        }
        let mut header = [0u8; FILE_HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&CHUNK_LEN.to_le_bytes());
        header[12..16].copy_from_slice(&head_len.to_le_bytes());
        rand::rng().fill_bytes(&mut header[16..32]);
        // The id is at most 64 bytes (checked above).
        header[32] = key_id.len() as u8;
        header[33..33 + key_id.len()].copy_from_slice(key_id.as_bytes());
        Ok(Layout {
            header,
            chunk: u64::from(CHUNK_LEN),
            head_len: u64::from(head_len),
        })
    }

    fn parse(header: [u8; FILE_HEADER_LEN]) -> Result<Self, CryptError> {
        if header[..8] != MAGIC {
            return Err(CryptError::BadHeader("no magic"));
        }
        let chunk = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let head_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        let id_len = usize::from(header[32]);
        if !(512..=1 << 20).contains(&chunk) || head_len > 1 << 16 || id_len > MAX_KEY_ID {
            return Err(CryptError::BadHeader("sizes out of range"));
        }
        let l = Layout {
            header,
            chunk: u64::from(chunk),
            head_len: u64::from(head_len),
        };
        if !is_valid_key_id(l.key_id()) {
            return Err(CryptError::BadHeader("invalid key id"));
        }
        Ok(l)
    }

    fn read(file: &File) -> Result<Self, CryptError> {
        let mut h = [0u8; FILE_HEADER_LEN];
        file.read_exact_at(&mut h, 0).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                CryptError::BadHeader("file shorter than its header")
            } else {
                CryptError::Io(e)
            }
        })?;
        Self::parse(h)
    }

    fn key_id(&self) -> &str {
        let n = usize::from(self.header[32]).min(MAX_KEY_ID);
        std::str::from_utf8(&self.header[33..33 + n]).unwrap_or("")
    }

    fn data_offset(&self) -> u64 {
        FILE_HEADER_LEN as u64 + self.head_len + OVERHEAD as u64
    }

    fn slot(&self) -> u64 {
        self.chunk + OVERHEAD as u64
    }

    fn record_offset(&self, index: u64) -> u64 {
        self.data_offset() + index * self.slot()
    }

    fn aad(&self, index: u64) -> [u8; FILE_HEADER_LEN + 8] {
        let mut a = [0u8; FILE_HEADER_LEN + 8];
        a[..FILE_HEADER_LEN].copy_from_slice(&self.header);
        a[FILE_HEADER_LEN..].copy_from_slice(&index.to_le_bytes());
        a
    }

    /// Plaintext bytes of a file `file_len` bytes long; a trailing fragment too short to be a
    /// record counts for nothing.
    fn plain_len(&self, file_len: u64) -> Result<u64, CryptError> {
        let off = self.data_offset();
        if file_len < off {
            return Err(CryptError::BadHeader("file shorter than its head record"));
        }
        let rest = file_len - off;
        let full = rest / self.slot();
        let rem = rest % self.slot();
        let last = rem.saturating_sub(OVERHEAD as u64);
        Ok(self.head_len + full * self.chunk + last)
    }

    /// The data record holding plaintext byte `pos` (which must be past the head).
    fn chunk_of(&self, pos: u64) -> (u64, usize) {
        let d = pos - self.head_len;
        (d / self.chunk, usize::try_from(d % self.chunk).unwrap_or(0))
    }

    fn cipher(&self, keys: &KeyRing) -> Result<Aes256Gcm, CryptError> {
        keys.get(self.key_id())
            .map(Key::cipher)
            .ok_or_else(|| CryptError::UnknownKey(self.key_id().to_owned()))
    }
}

/// Seals `plain` as record `index` into `out` (nonce | ciphertext | tag).
fn seal(cipher: &Aes256Gcm, layout: &Layout, index: u64, plain: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let aad = layout.aad(index);
    // AES-GCM only refuses plaintexts above 64 GiB; a record is at most one chunk.
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut out[NONCE_LEN..])
        .unwrap_or_default();
    out.extend_from_slice(&tag);
}

/// Opens record `index` (`record` as stored) into `out`.
fn unseal(
    cipher: &Aes256Gcm,
    layout: &Layout,
    index: u64,
    record: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CryptError> {
    if record.len() < OVERHEAD {
        return Err(CryptError::Authentication { chunk: index });
    }
    let (nonce, rest) = record.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    out.clear();
    out.extend_from_slice(ct);
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            &layout.aad(index),
            out,
            Tag::from_slice(tag),
        )
        .map_err(|_| CryptError::Authentication { chunk: index })
}

/// Writes an encrypted recording: [`Write`] and [`Seek`] over the plaintext. Writes may go
/// into the head at any time, and otherwise only at or inside the last (unsealed) chunk;
/// anything else is refused with `Unsupported`. [`flush`](Write::flush) seals the head and the
/// partial last chunk to the file.
pub struct EncryptedWriter {
    file: File,
    cipher: Aes256Gcm,
    layout: Layout,
    head: Vec<u8>,
    head_dirty: bool,
    tail: Vec<u8>,
    tail_index: u64,
    tail_dirty: bool,
    pos: u64,
    len: u64,
    scratch: Vec<u8>,
    written: u64,
}

impl fmt::Debug for EncryptedWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedWriter")
            .field("key_id", &self.layout.key_id())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl EncryptedWriter {
    /// Starts an encrypted file in `file` (empty, opened for writing) with `head_len` bytes
    /// of rewritable head.
    pub fn create(file: File, key_id: &str, key: &Key, head_len: u32) -> Result<Self, CryptError> {
        let layout = Layout::new(key_id, head_len)?;
        file.set_len(0)?;
        file.write_all_at(&layout.header, 0)?;
        let mut w = EncryptedWriter {
            file,
            cipher: key.cipher(),
            head: vec![0; head_len as usize],
            head_dirty: true,
            tail: Vec::with_capacity(CHUNK_LEN as usize),
            tail_index: 0,
            tail_dirty: false,
            pos: 0,
            len: 0,
            scratch: Vec::with_capacity(CHUNK_LEN as usize + OVERHEAD),
            written: FILE_HEADER_LEN as u64,
            layout,
        };
        w.flush()?;
        w.len = u64::from(head_len);
        Ok(w)
    }

    /// Opens an existing encrypted file for appending (after [`repair_tail`]): the head and the
    /// last chunk are decrypted into memory and the position is the end of the plaintext.
    pub fn open_existing(file: File, keys: &KeyRing) -> Result<Self, CryptError> {
        let layout = Layout::read(&file)?;
        let cipher = layout.cipher(keys)?;
        let file_len = file.metadata()?.len();
        let len = layout.plain_len(file_len)?;
        let mut rec = vec![0u8; layout.head_len as usize + OVERHEAD];
        file.read_exact_at(&mut rec, FILE_HEADER_LEN as u64)?;
        let mut head = Vec::new();
        unseal(&cipher, &layout, HEAD_INDEX, &rec, &mut head)?;
        let mut tail = Vec::with_capacity(layout.chunk as usize);
        let data = len - layout.head_len;
        let tail_index = data / layout.chunk;
        let tail_len = data % layout.chunk;
        if tail_len > 0 {
            let mut rec = vec![0u8; tail_len as usize + OVERHEAD];
            file.read_exact_at(&mut rec, layout.record_offset(tail_index))?;
            unseal(&cipher, &layout, tail_index, &rec, &mut tail)?;
        }
        Ok(EncryptedWriter {
            file,
            cipher,
            head,
            head_dirty: false,
            tail,
            tail_index,
            tail_dirty: false,
            pos: len,
            len,
            scratch: Vec::new(),
            written: 0,
            layout,
        })
    }

    /// Plaintext length so far.
    #[must_use]
    pub fn plain_len(&self) -> u64 {
        self.len
    }

    /// Bytes of the rewritable head.
    #[must_use]
    pub fn head_len(&self) -> u64 {
        self.layout.head_len
    }

    /// Bytes written to the file since the last call.
    pub fn take_written(&mut self) -> u64 {
        std::mem::take(&mut self.written)
    }

    /// Seals what is pending, syncs the data to disk and returns the file.
    pub fn finish(mut self) -> io::Result<File> {
        self.flush()?;
        self.file.sync_data()?;
        Ok(self.file)
    }

    fn seal_tail(&mut self) -> io::Result<()> {
        seal(
            &self.cipher,
            &self.layout,
            self.tail_index,
            &self.tail,
            &mut self.scratch,
        );
        self.file
            .write_all_at(&self.scratch, self.layout.record_offset(self.tail_index))?;
        self.written += self.scratch.len() as u64;
        Ok(())
    }
}

impl Write for EncryptedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let head_len = self.layout.head_len;
        if self.pos < head_len {
            let at = self.pos as usize;
            let n = buf.len().min((head_len - self.pos) as usize);
            self.head[at..at + n].copy_from_slice(&buf[..n]);
            self.head_dirty = true;
            self.pos += n as u64;
            self.len = self.len.max(self.pos);
            return Ok(n);
        }
        let (index, within) = self.layout.chunk_of(self.pos);
        if index != self.tail_index || within > self.tail.len() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "encrypted recordings are written in order",
            ));
        }
        let chunk = self.layout.chunk as usize;
        let n = buf.len().min(chunk - within);
        let end = within + n;
        if end > self.tail.len() {
            self.tail.resize(end, 0);
        }
        self.tail[within..end].copy_from_slice(&buf[..n]);
        self.tail_dirty = true;
        self.pos += n as u64;
        self.len = self.len.max(self.pos);
        if self.tail.len() == chunk {
            self.seal_tail()?;
            self.tail_index += 1;
            self.tail.clear();
            self.tail_dirty = false;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.head_dirty {
            seal(
                &self.cipher,
                &self.layout,
                HEAD_INDEX,
                &self.head,
                &mut self.scratch,
            );
            self.file
                .write_all_at(&self.scratch, FILE_HEADER_LEN as u64)?;
            self.written += self.scratch.len() as u64;
            self.head_dirty = false;
        }
        if self.tail_dirty && !self.tail.is_empty() {
            self.seal_tail()?;
            self.tail_dirty = false;
        }
        Ok(())
    }
}

impl Seek for EncryptedWriter {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Reads an encrypted recording: random access by chunk, or sequentially through [`Read`].
pub struct EncryptedReader {
    file: File,
    cipher: Aes256Gcm,
    layout: Layout,
    len: u64,
    head: Vec<u8>,
    record: Vec<u8>,
    plain: Vec<u8>,
    cached: Option<u64>,
    pos: u64,
}

impl fmt::Debug for EncryptedReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedReader")
            .field("key_id", &self.layout.key_id())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl EncryptedReader {
    /// Opens `file` with the key its header names; the head is authenticated here.
    pub fn open(file: File, keys: &KeyRing) -> Result<Self, CryptError> {
        let layout = Layout::read(&file)?;
        let cipher = layout.cipher(keys)?;
        let len = layout.plain_len(file.metadata()?.len())?;
        let mut rec = vec![0u8; layout.head_len as usize + OVERHEAD];
        file.read_exact_at(&mut rec, FILE_HEADER_LEN as u64)?;
        let mut head = Vec::new();
        unseal(&cipher, &layout, HEAD_INDEX, &rec, &mut head)?;
        Ok(EncryptedReader {
            file,
            cipher,
            len,
            head,
            record: Vec::with_capacity(layout.slot() as usize),
            plain: Vec::with_capacity(layout.chunk as usize),
            cached: None,
            pos: 0,
            layout,
        })
    }

    /// Plaintext length.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the plaintext is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id of the key that encrypted the file.
    #[must_use]
    pub fn key_id(&self) -> &str {
        self.layout.key_id()
    }

    /// The plaintext from `pos` to the end of the chunk holding it (empty at the end).
    pub fn read_at(&mut self, pos: u64) -> Result<&[u8], CryptError> {
        if pos >= self.len {
            return Ok(&[]);
        }
        if pos < self.layout.head_len {
            return Ok(&self.head[pos as usize..]);
        }
        let (index, within) = self.layout.chunk_of(pos);
        if self.cached != Some(index) {
            let start = self.layout.record_offset(index);
            let plain_len = (self.len - self.layout.head_len - index * self.layout.chunk)
                .min(self.layout.chunk);
            self.record.resize(plain_len as usize + OVERHEAD, 0);
            self.file.read_exact_at(&mut self.record, start)?;
            self.cached = None;
            unseal(
                &self.cipher,
                &self.layout,
                index,
                &self.record,
                &mut self.plain,
            )?;
            self.cached = Some(index);
        }
        Ok(self.plain.get(within..).unwrap_or(&[]))
    }
}

impl Read for EncryptedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.pos;
        let src = self.read_at(pos)?;
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for EncryptedReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// What [`repair_tail`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailRepair {
    /// Plaintext length after repair.
    pub plain_len: u64,
    /// File bytes cut off (a torn or unauthenticated last record, a stray fragment).
    pub dropped_bytes: u64,
}

/// Cuts off a trailing fragment and a last record that does not authenticate (torn by a
/// crash while it was being re-sealed).
pub fn repair_tail(file: &File, keys: &KeyRing) -> Result<TailRepair, CryptError> {
    let layout = Layout::read(file)?;
    let cipher = layout.cipher(keys)?;
    let before = file.metadata()?.len();
    let mut rec = vec![0u8; layout.head_len as usize + OVERHEAD];
    file.read_exact_at(&mut rec, FILE_HEADER_LEN as u64)?;
    let mut plain = Vec::new();
    unseal(&cipher, &layout, HEAD_INDEX, &rec, &mut plain)?;
    let off = layout.data_offset();
    if before < off {
        return Err(CryptError::BadHeader("file shorter than its head record"));
    }
    let slot = layout.slot();
    let mut end = before;
    // Only the last record can be torn; look at two in case a fragment follows it.
    for _ in 0..2 {
        if end <= off {
            break;
        }
        let rest = end - off;
        let rem = rest % slot;
        let (index, len) = if rem == 0 {
            (rest / slot - 1, slot)
        } else {
            (rest / slot, rem)
        };
        let start = layout.record_offset(index);
        if len <= OVERHEAD as u64 {
            end = start;
            continue;
        }
        rec.resize(len as usize, 0);
        file.read_exact_at(&mut rec, start)?;
        if unseal(&cipher, &layout, index, &rec, &mut plain).is_ok() {
            break;
        }
        end = start;
    }
    if end != before {
        file.set_len(end)?;
    }
    Ok(TailRepair {
        plain_len: layout.plain_len(end)?,
        dropped_bytes: before - end,
    })
}

/// Shortens the plaintext of an encrypted file to `new_len` bytes (no longer than it is):
/// the record that becomes last is re-sealed with its remaining bytes.
pub fn truncate(file: &File, keys: &KeyRing, new_len: u64) -> Result<(), CryptError> {
    let layout = Layout::read(file)?;
    let cipher = layout.cipher(keys)?;
    let len = layout.plain_len(file.metadata()?.len())?;
    if new_len >= len {
        return Ok(());
    }
    if new_len < layout.head_len {
        return Err(CryptError::BadHeader("cannot cut into the head"));
    }
    let data = new_len - layout.head_len;
    let full = data / layout.chunk;
    let rem = data % layout.chunk;
    if rem == 0 {
        file.set_len(layout.record_offset(full))?;
        return Ok(());
    }
    let old_len = (len - layout.head_len - full * layout.chunk).min(layout.chunk);
    let mut rec = vec![0u8; old_len as usize + OVERHEAD];
    file.read_exact_at(&mut rec, layout.record_offset(full))?;
    let mut plain = Vec::new();
    unseal(&cipher, &layout, full, &rec, &mut plain)?;
    plain.truncate(rem as usize);
    let mut out = Vec::new();
    seal(&cipher, &layout, full, &plain, &mut out);
    file.write_all_at(&out, layout.record_offset(full))?;
    file.set_len(layout.record_offset(full) + out.len() as u64)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (KeyRing, Key) {
        let key = Key::from_hex(&"a1".repeat(32)).unwrap();
        let mut ring = KeyRing::default();
        ring.insert("k1", key.clone()).unwrap();
        (ring, key)
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sb-crypt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    fn open_rw(p: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .unwrap()
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn read_all(p: &std::path::Path, ring: &KeyRing) -> Vec<u8> {
        let mut r = EncryptedReader::open(File::open(p).unwrap(), ring).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, r.len());
        out
    }

    #[test]
    fn round_trip_with_head_rewrites_and_partial_flushes() {
        let (ring, key) = keys();
        let p = tmp("rt");
        let mut w = EncryptedWriter::create(open_rw(&p), "k1", &key, 44).unwrap();
        let data = pattern(3 * CHUNK_LEN as usize + 1234);
        w.write_all(&[0u8; 44]).unwrap();
        for (i, piece) in data.chunks(1000).enumerate() {
            w.write_all(piece).unwrap();
            if i % 3 == 0 {
                // Rewrite the head (like a WAV header sync), then go back to the end.
                w.seek(SeekFrom::Start(4)).unwrap();
                w.write_all(&(i as u32).to_le_bytes()).unwrap();
                w.seek(SeekFrom::End(0)).unwrap();
                w.flush().unwrap();
            }
        }
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(b"RIFF").unwrap();
        w.finish().unwrap();
        let plain = read_all(&p, &ring);
        assert_eq!(&plain[..4], b"RIFF");
        assert_eq!(&plain[44..], &data[..]);
        // Nothing of the plaintext is visible on disk.
        let raw = std::fs::read(&p).unwrap();
        assert!(raw.windows(4).all(|w| w != b"RIFF"));
        assert!(
            raw.windows(64)
                .all(|w| !data.windows(64).take(50).any(|d| d == w))
        );
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn random_access_matches_sequential() {
        let (ring, key) = keys();
        let p = tmp("ra");
        let mut w = EncryptedWriter::create(open_rw(&p), "k1", &key, 0).unwrap();
        let data = pattern(5 * CHUNK_LEN as usize + 17);
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        let mut r = EncryptedReader::open(File::open(&p).unwrap(), &ring).unwrap();
        for pos in [0u64, 1, 4095, 4096, 4097, 12000, data.len() as u64 - 1] {
            let got = r.read_at(pos).unwrap().to_vec();
            assert!(!got.is_empty());
            assert_eq!(
                &got[..],
                &data[pos as usize..pos as usize + got.len()],
                "at {pos}"
            );
        }
        assert!(r.read_at(data.len() as u64).unwrap().is_empty());
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn tampering_and_wrong_keys_are_detected() {
        let (ring, key) = keys();
        let p = tmp("tamper");
        let mut w = EncryptedWriter::create(open_rw(&p), "k1", &key, 8).unwrap();
        w.write_all(&pattern(8 + 2 * CHUNK_LEN as usize)).unwrap();
        w.finish().unwrap();
        // Flip one ciphertext bit in data record 1.
        let f = open_rw(&p);
        let at = FILE_HEADER_LEN as u64
            + 8
            + OVERHEAD as u64
            + u64::from(CHUNK_LEN)
            + OVERHEAD as u64
            + 100;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 1], at).unwrap();
        let mut r = EncryptedReader::open(File::open(&p).unwrap(), &ring).unwrap();
        assert!(r.read_at(10).is_ok(), "record 0 is intact");
        assert!(matches!(
            r.read_at(8 + u64::from(CHUNK_LEN) + 5),
            Err(CryptError::Authentication { chunk: 1 })
        ));
        // Another key of the same id does not open it.
        let mut other = KeyRing::default();
        other.insert("k1", Key::new([9; 32])).unwrap();
        assert!(matches!(
            EncryptedReader::open(File::open(&p).unwrap(), &other),
            Err(CryptError::Authentication { .. })
        ));
        assert!(matches!(
            EncryptedReader::open(File::open(&p).unwrap(), &KeyRing::default()),
            Err(CryptError::UnknownKey(_))
        ));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn torn_tails_are_cut_and_truncation_reseals() {
        let (ring, key) = keys();
        let p = tmp("torn");
        let mut w = EncryptedWriter::create(open_rw(&p), "k1", &key, 0).unwrap();
        let data = pattern(2 * CHUNK_LEN as usize + 300);
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        // A torn re-seal of the last record: cut it in the middle.
        let f = open_rw(&p);
        let full = f.metadata().unwrap().len();
        f.set_len(full - 100).unwrap();
        let rep = repair_tail(&f, &ring).unwrap();
        assert_eq!(rep.plain_len, 2 * u64::from(CHUNK_LEN));
        assert_eq!(read_all(&p, &ring), data[..2 * CHUNK_LEN as usize]);
        // A clean file is left alone.
        let rep = repair_tail(&f, &ring).unwrap();
        assert_eq!(rep.dropped_bytes, 0);
        // Truncate into the middle of record 1.
        truncate(&f, &ring, 5000).unwrap();
        assert_eq!(read_all(&p, &ring), data[..5000]);
        // Append after reopening.
        let mut w = EncryptedWriter::open_existing(open_rw(&p), &ring).unwrap();
        assert_eq!(w.plain_len(), 5000);
        w.write_all(&data[5000..6000]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_all(&p, &ring), data[..6000]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn keys_parse_and_never_print() {
        let mut ring = KeyRing::default();
        ring.parse_key_file(&format!(
            "# comment\n\nold {}\nnew = {}\n",
            "00".repeat(32),
            "ff".repeat(32)
        ))
        .unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["new", "old"]);
        assert!(!format!("{ring:?}").contains("ff"));
        assert!(ring.parse_key_file("new 00").is_err());
        assert!(ring.insert("bad/id", Key::new([0; 32])).is_err());
        assert!(Key::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(to_hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
