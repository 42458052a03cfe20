//! L16: uncompressed 16-bit linear PCM in network byte order (RFC 3551 §4.5.11).
//!
//! Each sample is a signed two's-complement 16-bit integer, most significant byte first.
//! The functions write into caller-owned buffers and never allocate; they convert as many
//! whole samples as both buffers allow and report how much they wrote.

/// Bytes per L16 sample.
pub const BYTES_PER_SAMPLE: usize = 2;

/// Writes `pcm` to `out` as big-endian 16-bit samples (RFC 3551 §4.5.11).
///
/// Converts `min(pcm.len(), out.len() / 2)` samples and returns the number of bytes
/// written (always even). Bytes of `out` beyond that are left untouched.
#[inline]
pub fn encode(pcm: &[i16], out: &mut [u8]) -> usize {
    let mut samples = 0;
    for (bytes, &sample) in out.chunks_exact_mut(BYTES_PER_SAMPLE).zip(pcm) {
        bytes.copy_from_slice(&sample.to_be_bytes());
        samples += 1;
    }
    samples * BYTES_PER_SAMPLE
}

/// Reads big-endian 16-bit samples from `data` into `out` (RFC 3551 §4.5.11).
///
/// Converts `min(data.len() / 2, out.len())` samples and returns that count. An odd
/// trailing byte of `data` is ignored. Elements of `out` beyond the count are left
/// untouched.
#[inline]
pub fn decode(data: &[u8], out: &mut [i16]) -> usize {
    let mut samples = 0;
    for (sample, bytes) in out.iter_mut().zip(data.chunks_exact(BYTES_PER_SAMPLE)) {
        *sample = i16::from_be_bytes([bytes[0], bytes[1]]);
        samples += 1;
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn byte_order_is_big_endian() {
        let mut out = [0u8; 8];
        assert_eq!(encode(&[0x0102, -2, i16::MIN, i16::MAX], &mut out), 8);
        assert_eq!(out, [0x01, 0x02, 0xFF, 0xFE, 0x80, 0x00, 0x7F, 0xFF]);

        let mut pcm = [0i16; 4];
        assert_eq!(decode(&out, &mut pcm), 4);
        assert_eq!(pcm, [0x0102, -2, i16::MIN, i16::MAX]);
    }

    #[test]
    fn encode_is_limited_by_output_capacity() {
        let pcm = [1i16, 2, 3];
        let mut out = [0xAAu8; 5];
        assert_eq!(encode(&pcm, &mut out), 4);
        assert_eq!(out, [0, 1, 0, 2, 0xAA]);
        assert_eq!(encode(&pcm, &mut []), 0);
        assert_eq!(encode(&[], &mut out), 0);
    }

    #[test]
    fn decode_ignores_odd_byte_and_respects_capacity() {
        let data = [0x00, 0x01, 0x00, 0x02, 0x7F];
        let mut out = [9i16; 3];
        assert_eq!(decode(&data, &mut out), 2);
        assert_eq!(out, [1, 2, 9]);

        let mut short = [0i16; 1];
        assert_eq!(decode(&data, &mut short), 1);
        assert_eq!(short, [1]);
        assert_eq!(decode(&[0x12], &mut out), 0);
        assert_eq!(decode(&[], &mut out), 0);
    }

    proptest! {
        #[test]
        fn round_trip(pcm in prop::collection::vec(any::<i16>(), 0..500)) {
            let mut bytes = vec![0u8; pcm.len() * 2];
            prop_assert_eq!(encode(&pcm, &mut bytes), pcm.len() * 2);
            let mut back = vec![0i16; pcm.len()];
            prop_assert_eq!(decode(&bytes, &mut back), pcm.len());
            prop_assert_eq!(back, pcm);
        }

        #[test]
        fn arbitrary_lengths(data in prop::collection::vec(any::<u8>(), 0..501),
                             out_len in 0usize..300,
                             pcm in prop::collection::vec(any::<i16>(), 0..300),
                             byte_cap in 0usize..601) {
            let mut out = vec![0i16; out_len];
            let n = decode(&data, &mut out);
            prop_assert_eq!(n, (data.len() / 2).min(out_len));
            for (i, &s) in out[..n].iter().enumerate() {
                prop_assert_eq!(s, i16::from_be_bytes([data[2 * i], data[2 * i + 1]]));
            }

            let mut bytes = vec![0u8; byte_cap];
            let written = encode(&pcm, &mut bytes);
            prop_assert_eq!(written, 2 * pcm.len().min(byte_cap / 2));
            // Re-encoding what was decoded reproduces the input bytes.
            let mut again = vec![0u8; 2 * n];
            prop_assert_eq!(encode(&out[..n], &mut again), 2 * n);
            prop_assert_eq!(&again[..], &data[..2 * n]);
        }
    }
}
