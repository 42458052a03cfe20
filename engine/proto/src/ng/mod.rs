//! NG, the control protocol of rtpengine, spoken by Kamailio's and OpenSIPS' `rtpengine`
//! modules: framing, typed requests, replies and the retransmission cache.
//!
//! A message is `COOKIE SP DICT`. The cookie is any non-empty byte string without a space and is
//! echoed in the reply; DICT is a bencode dictionary (`d…e`) or a JSON object (`{…}`), and the
//! reply uses the request's encoding. Over UDP each datagram is one message
//! ([`parse_datagram`]); over TCP messages follow each other and [`frame_tcp`] /
//! [`TcpFramer`] find where each ends (bencode only).
//!
//! Drive contract: this module is pure. The runtime feeds datagrams or stream bytes in,
//! checks [`RetransmitCache::lookup`] with the cookie before executing anything, executes the
//! [`NgRequest`] (see [`crate::session::Sessions`]), encodes the reply with [`encode_reply`],
//! stores it with [`RetransmitCache::insert`] and calls [`RetransmitCache::expire`] when
//! [`RetransmitCache::poll_timeout`] is due.

mod cache;
mod request;

pub use cache::{RetransmitCache, RetransmitCacheConfig};
pub use request::{
    AddressFamily, CodecOptions, Command, Flags, IceMode, NgError, NgOptions, NgRequest,
    ReplaceOptions, RtcpMuxOptions,
};

use thiserror::Error;

use crate::bencode::{self, BencodeError, Limits, Value};

/// The encoding of a message's dictionary; the reply uses the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Bencode, the default (`d…e`).
    Bencode,
    /// JSON (`{…}`).
    Json,
}

/// One framed and decoded NG message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgMessage {
    /// The cookie, echoed in the reply.
    pub cookie: Vec<u8>,
    /// How the dictionary was encoded.
    pub encoding: Encoding,
    /// The request dictionary.
    pub dict: Value,
}

/// Why a message could not be framed or decoded. Except for [`NgFramingError::NoCookie`], each
/// has an error reply ([`NgFramingError::reply`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NgFramingError {
    /// No space, or an empty cookie: dropped without a reply.
    #[error("no cookie")]
    NoCookie,
    /// The dictionary starts with neither `d` nor `{`.
    #[error("Invalid NG data format")]
    InvalidFormat {
        /// The message's cookie.
        cookie: Vec<u8>,
    },
    /// Invalid bencode after `d`.
    #[error("Could not decode bencode dictionary")]
    Bencode {
        /// The message's cookie.
        cookie: Vec<u8>,
        /// The decoder's finding.
        source: BencodeError,
    },
    /// Invalid JSON after `{`.
    #[error("Failed to parse JSON document")]
    Json {
        /// The message's cookie.
        cookie: Vec<u8>,
        /// The parser's finding.
        detail: String,
    },
    /// A TCP message longer than the framer's limit: the connection cannot be resynchronised.
    #[error("NG message longer than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
}

impl NgFramingError {
    /// The cookie to answer to, if one was found.
    #[must_use]
    pub fn cookie(&self) -> Option<&[u8]> {
        match self {
            NgFramingError::InvalidFormat { cookie }
            | NgFramingError::Bencode { cookie, .. }
            | NgFramingError::Json { cookie, .. } => Some(cookie),
            NgFramingError::NoCookie | NgFramingError::TooLarge { .. } => None,
        }
    }

    /// The encoding of the error reply: JSON only when the request was (invalid) JSON.
    #[must_use]
    pub fn encoding(&self) -> Encoding {
        match self {
            NgFramingError::Json { .. } => Encoding::Json,
            _ => Encoding::Bencode,
        }
    }

    /// The complete error reply datagram, or `None` when the message must be dropped.
    #[must_use]
    pub fn reply(&self) -> Option<Vec<u8>> {
        let cookie = self.cookie()?;
        Some(encode_reply(
            cookie,
            self.encoding(),
            &error_reply(&self.to_string()),
        ))
    }
}

/// Frames and decodes one UDP datagram (or one message cut out by [`frame_tcp`]).
///
/// A bencode dictionary may be followed by trailing bytes, which are ignored (as rtpengine
/// does); a JSON document may not.
pub fn parse_datagram(data: &[u8]) -> Result<NgMessage, NgFramingError> {
    let space = data
        .iter()
        .position(|&b| b == b' ')
        .ok_or(NgFramingError::NoCookie)?;
    if space == 0 {
        return Err(NgFramingError::NoCookie);
    }
    let cookie = data[..space].to_vec();
    let body = &data[space + 1..];
    match body.first() {
        Some(b'd') => match bencode::decode(body) {
            Ok((dict, _)) => Ok(NgMessage {
                cookie,
                encoding: Encoding::Bencode,
                dict,
            }),
            Err(source) => Err(NgFramingError::Bencode { cookie, source }),
        },
        Some(b'{') => match bencode::parse_json(body, Limits::NG) {
            Ok(dict) => Ok(NgMessage {
                cookie,
                encoding: Encoding::Json,
                dict,
            }),
            Err(e) => Err(NgFramingError::Json {
                cookie,
                detail: e.to_string(),
            }),
        },
        _ => Err(NgFramingError::InvalidFormat { cookie }),
    }
}

/// Finds the end of the first NG message in a TCP byte stream: `COOKIE SP` then exactly one
/// bencode value.
///
/// Returns `Ok(Some(n))` when `buf[..n]` is a complete message (hand it to [`parse_datagram`]
/// and drop `n` bytes), `Ok(None)` when more bytes are needed. Errors cannot be resynchronised:
/// answer with [`NgFramingError::reply`] if any, then close the connection. `max_len` bounds the
/// message size, so a peer cannot make the server buffer without limit.
pub fn frame_tcp(buf: &[u8], max_len: usize) -> Result<Option<usize>, NgFramingError> {
    let window = &buf[..buf.len().min(max_len)];
    let Some(space) = window.iter().position(|&b| b == b' ') else {
        return if buf.len() >= max_len {
            Err(NgFramingError::TooLarge { max: max_len })
        } else {
            Ok(None)
        };
    };
    if space == 0 {
        return Err(NgFramingError::NoCookie);
    }
    let cookie = || buf[..space].to_vec();
    let body = &window[space + 1..];
    match body.first() {
        None => Ok(None),
        Some(b'd') => match bencode::value_len(body, Limits::NG) {
            Ok(Some(n)) => Ok(Some(space + 1 + n)),
            Ok(None) if buf.len() >= max_len => Err(NgFramingError::TooLarge { max: max_len }),
            Ok(None) => Ok(None),
            Err(source) => Err(NgFramingError::Bencode {
                cookie: cookie(),
                source,
            }),
        },
        Some(_) => Err(NgFramingError::InvalidFormat { cookie: cookie() }),
    }
}

/// A sans-IO buffer for one TCP control connection: push received bytes, then take complete
/// messages until it returns `None`.
#[derive(Debug)]
pub struct TcpFramer {
    buf: Vec<u8>,
    max_len: usize,
    failed: bool,
}

impl TcpFramer {
    /// A framer accepting messages of at most `max_len` bytes.
    #[must_use]
    pub fn new(max_len: usize) -> Self {
        TcpFramer {
            buf: Vec::new(),
            max_len,
            failed: false,
        }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes buffered and not yet returned.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message's bytes; `Some(Err)` means the stream is unusable and the
    /// connection should be closed after sending the error's reply, if any.
    #[must_use]
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, NgFramingError>> {
        if self.failed {
            return None;
        }
        let skip = self
            .buf
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        if skip > 0 {
            self.buf.drain(..skip);
        }
        match frame_tcp(&self.buf, self.max_len) {
            Ok(Some(n)) => Some(Ok(self.buf.drain(..n).collect())),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                self.buf = Vec::new();
                Some(Err(e))
            }
        }
    }
}

/// Encodes a reply: the cookie, a space, then `reply` in `encoding`.
#[must_use]
pub fn encode_reply(cookie: &[u8], encoding: Encoding, reply: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(cookie.len() + 64);
    out.extend_from_slice(cookie);
    out.push(b' ');
    match encoding {
        Encoding::Bencode => reply.encode(&mut out),
        Encoding::Json => reply.encode_json(&mut out),
    }
    out
}

/// `{"result":"error","error-reason":reason}`.
#[must_use]
pub fn error_reply(reason: &str) -> Value {
    Value::dict()
        .with("result", "error")
        .with("error-reason", reason)
}

/// `{"result":"pong"}`.
#[must_use]
pub fn pong_reply() -> Value {
    Value::dict().with("result", "pong")
}

/// `{"result":"load limit"}`: the server refuses new work.
#[must_use]
pub fn load_limit_reply() -> Value {
    Value::dict().with("result", "load limit")
}

/// Finishes an ok reply: `fields` in order, then `warning` if any, then `"result":"ok"` (the
/// order rtpengine uses).
#[must_use]
pub fn ok_reply(fields: Value, warnings: &[String]) -> Value {
    let mut v = match fields {
        Value::Dict(_) => fields,
        _ => Value::dict(),
    };
    if !warnings.is_empty() {
        v.push("warning", warnings.join("; "));
    }
    v.push("result", "ok");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_exact_bytes() {
        let m = parse_datagram(b"5323_1 d7:command4:pinge").unwrap();
        assert_eq!(m.cookie, b"5323_1");
        assert_eq!(m.encoding, Encoding::Bencode);
        assert_eq!(
            encode_reply(&m.cookie, m.encoding, &pong_reply()),
            b"5323_1 d6:result4:ponge"
        );
    }

    #[test]
    fn framing_errors() {
        assert_eq!(parse_datagram(b"nospace"), Err(NgFramingError::NoCookie));
        assert_eq!(
            parse_datagram(b" d7:command4:pinge"),
            Err(NgFramingError::NoCookie)
        );
        assert_eq!(NgFramingError::NoCookie.reply(), None);
        let e = parse_datagram(b"x1 hello").unwrap_err();
        assert_eq!(
            e.reply().unwrap(),
            b"x1 d6:result5:error12:error-reason22:Invalid NG data formate"
        );
        let e = parse_datagram(b"x2 d7:command4:pi").unwrap_err();
        assert_eq!(
            e.reply().unwrap(),
            b"x2 d6:result5:error12:error-reason35:Could not decode bencode dictionarye"
        );
        let e = parse_datagram(b"x3 {\"command\":").unwrap_err();
        assert_eq!(
            e.reply().unwrap(),
            b"x3 {\"result\":\"error\",\"error-reason\":\"Failed to parse JSON document\"}"
        );
        assert!(matches!(
            parse_datagram(b"x4  d7:command4:pinge"),
            Err(NgFramingError::InvalidFormat { .. })
        ));
        assert!(matches!(
            parse_datagram(b"x5 "),
            Err(NgFramingError::InvalidFormat { .. })
        ));
    }

    #[test]
    fn trailing_bytes_after_bencode_are_ignored() {
        let m = parse_datagram(b"c d7:command4:pingejunk").unwrap();
        assert_eq!(m.dict.get("command").and_then(Value::as_str), Some("ping"));
    }

    #[test]
    fn tcp_framing_incremental() {
        let stream = b"a1 d7:command4:pingea2 d7:command4:liste";
        assert_eq!(frame_tcp(stream, 1 << 20), Ok(Some(20)));
        for cut in 0..20 {
            assert_eq!(frame_tcp(&stream[..cut], 1 << 20), Ok(None), "cut {cut}");
        }
        let mut f = TcpFramer::new(1 << 20);
        for chunk in stream.chunks(3) {
            f.push(chunk);
        }
        assert_eq!(f.next_message().unwrap().unwrap(), b"a1 d7:command4:pinge");
        assert_eq!(f.next_message().unwrap().unwrap(), b"a2 d7:command4:liste");
        assert!(f.next_message().is_none());
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn tcp_framing_errors() {
        assert!(matches!(
            frame_tcp(b"a1 {\"command\":\"ping\"}", 1024),
            Err(NgFramingError::InvalidFormat { .. })
        ));
        assert!(matches!(
            frame_tcp(b"a1 d7:commandi05ee", 1024),
            Err(NgFramingError::Bencode { .. })
        ));
        assert!(matches!(
            frame_tcp(&[b'x'; 2000], 1024),
            Err(NgFramingError::TooLarge { .. })
        ));
        let mut big = b"c d9999999:".to_vec();
        big.extend(vec![b'a'; 2000]);
        assert!(matches!(
            frame_tcp(&big, 1024),
            Err(NgFramingError::TooLarge { .. })
        ));
        let mut f = TcpFramer::new(1024);
        f.push(b"c1 x");
        assert!(matches!(f.next_message(), Some(Err(_))));
        f.push(b"c2 d7:command4:pinge");
        assert!(f.next_message().is_none());
    }

    #[test]
    fn ok_reply_order() {
        let v = ok_reply(
            Value::dict(),
            &["Call-ID not found or tags didn't match".into()],
        );
        assert_eq!(
            v.to_bencode(),
            b"d7:warning38:Call-ID not found or tags didn't match6:result2:oke".to_vec()
        );
    }
}
