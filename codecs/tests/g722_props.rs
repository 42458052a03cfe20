//! Property tests of the G.722 codec: streaming invariance and robustness.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use switchboard_codecs::g722::{G722Decoder, G722Encoder};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Encoding in pieces gives the same bitstream as encoding at once, whatever the split.
    #[test]
    fn g722_encoding_is_split_invariant(
        pcm in proptest::collection::vec(any::<i16>(), 0..2000),
        split in 0usize..1000,
    ) {
        let pairs = pcm.len() / 2;
        let split = split.min(pairs);
        let mut whole = vec![0u8; pairs];
        prop_assert_eq!(G722Encoder::new().encode(&pcm, &mut whole), pairs);

        let mut enc = G722Encoder::new();
        let mut pieces = vec![0u8; pairs];
        let first = enc.encode(&pcm[..split * 2], &mut pieces[..split]);
        let second = enc.encode(&pcm[split * 2..], &mut pieces[split..]);
        prop_assert_eq!(first + second, pairs);
        prop_assert_eq!(whole, pieces);
    }

    /// Any bytes decode to two samples each, in pieces or at once, without panicking.
    #[test]
    fn g722_decoding_any_bytes_is_split_invariant(
        data in proptest::collection::vec(any::<u8>(), 0..1000),
        split in 0usize..1000,
    ) {
        let split = split.min(data.len());
        let mut whole = vec![0i16; data.len() * 2];
        prop_assert_eq!(G722Decoder::new().decode(&data, &mut whole), data.len() * 2);

        let mut dec = G722Decoder::new();
        let mut pieces = vec![0i16; data.len() * 2];
        let first = dec.decode(&data[..split], &mut pieces[..split * 2]);
        let second = dec.decode(&data[split..], &mut pieces[split * 2..]);
        prop_assert_eq!(first + second, data.len() * 2);
        prop_assert_eq!(whole, pieces);
    }
}
