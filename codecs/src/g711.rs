//! ITU-T G.711 µ-law and A-law companding, bit-exact with the ITU-T G.191 reference.
//!
//! G.711 maps each 16-bit linear sample to an 8-bit code: a sign bit, a 3-bit segment
//! (exponent) and a 4-bit step (mantissa) within that segment. RTP carries the codes as
//! `PCMU` (µ-law, payload type 0) and `PCMA` (A-law, payload type 8), RFC 3551 §4.5.14.
//!
//! # Reference
//!
//! The results equal the G.191 Software Tool Library module `g711.c`
//! (`ulaw_compress`/`ulaw_expand`, `alaw_compress`/`alaw_expand`), which implements the
//! decision and reconstruction levels of ITU-T G.711 Table 1 (A-law) and Table 2 (µ-law)
//! on 16-bit left-justified input:
//!
//! - **µ-law** (G.711 Table 2): the magnitude of the 16-bit input is clipped to 32635,
//!   biased by `0x84` (132) and the segment is the position of its leading one; all eight
//!   bits of the code are inverted.
//! - **A-law** (G.711 Table 1): the 12 most significant bits are used (magnitude `>> 4`),
//!   segment 0 and 1 share the same step; the even bits of the code are inverted
//!   (`^ 0x55`).
//!
//! As in G.191, the magnitude of a negative input `x` is its one's complement `!x`
//! (= `-x - 1`), which makes each quantiser exactly symmetric around -½: `x` and `!x` give
//! codes that differ only in the sign bit. (Encoders that use `-x` instead, such as the
//! widespread Sun `g711.c`, differ from G.191 on negative inputs that sit on a decision
//! level.)
//!
//! Decoding yields the mid-point of the decision interval (G.711 "decoder output value").
//! µ-law has two codes for zero: `0xFF` (+0) and `0x7F` (-0) both decode to `0`, which
//! encodes back to `0xFF`.
//!
//! # Performance
//!
//! Everything here is pure and allocation-free. Decoding is a lookup in a 256-entry table
//! built at compile time. Encoding is branch-free integer arithmetic: the segment and
//! mantissa are read from the exponent and top mantissa bits of the exactly converted
//! `f32` value, so the slice encoders compile to SIMD code. The slice functions process
//! `min(input.len(), out.len())` elements and leave the rest of `out` untouched.

/// µ-law bias added to the magnitude before the segment search (G.191: `33 << 2`).
const ULAW_BIAS: i32 = 0x84;

/// Largest µ-law magnitude before clipping: `ULAW_CLIP + ULAW_BIAS == 0x7FFF`.
const ULAW_CLIP: i32 = 32635;

/// Bit pattern that turns `f32::to_bits(v) >> 19` into `(segment << 4) | mantissa`
/// for a µ-law biased magnitude `v` in `128..=0x7FFF`: `v = 1.m × 2^(segment + 7)`,
/// so the biased exponent is `127 + 7 + segment` and the next four bits are the mantissa.
const ULAW_EXP_OFFSET: u32 = (127 + 7) << 4;

/// As [`ULAW_EXP_OFFSET`] for an A-law magnitude (12-bit) in `16..=2047`:
/// `v = 1.m × 2^(segment + 3)`.
const ALAW_EXP_OFFSET: u32 = (127 + 3) << 4;

/// µ-law code to linear sample, G.711 Table 2 decoder output values (G.191 `ulaw_expand`).
static ULAW_DECODE: [i16; 256] = ulaw_decode_table();

/// A-law code to linear sample, G.711 Table 1 decoder output values (G.191 `alaw_expand`).
static ALAW_DECODE: [i16; 256] = alaw_decode_table();

/// Builds [`ULAW_DECODE`]: for the inverted code `u`, the magnitude is
/// `((mantissa << 3) + 0x84) << segment) - 0x84` and bit 7 of `u` set means negative.
const fn ulaw_decode_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0usize;
    while code < 256 {
        let u = !(code as u8);
        let segment = (u >> 4) & 0x07;
        let mantissa = (u & 0x0F) as i32;
        let magnitude = (((mantissa << 3) + ULAW_BIAS) << segment) - ULAW_BIAS;
        // The largest magnitude is ((15 << 3) + 132) << 7) - 132 = 32124, within i16.
        table[code] = if u & 0x80 != 0 {
            -magnitude as i16
        } else {
            magnitude as i16
        };
        code += 1;
    }
    table
}

/// Builds [`ALAW_DECODE`]: after undoing the even-bit inversion, segment 0 has step 16
/// from 8, segment `s >= 1` has step `16 << (s - 1)` from `(256 + 8) << (s - 1)`;
/// bit 7 of the code set means positive.
const fn alaw_decode_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0usize;
    while code < 256 {
        let ix = (code as u8 ^ 0x55) & 0x7F;
        let segment = ix >> 4;
        let mut magnitude = (ix & 0x0F) as i32;
        if segment > 0 {
            magnitude += 16;
        }
        magnitude = (magnitude << 4) + 8;
        if segment > 1 {
            magnitude <<= segment - 1;
        }
        // The largest magnitude is ((15 + 16) << 4) + 8) << 6 = 32256, within i16.
        table[code] = if code > 127 {
            magnitude as i16
        } else {
            -magnitude as i16
        };
        code += 1;
    }
    table
}

/// Encodes one linear sample to a µ-law code (ITU-T G.711 Table 2, G.191 `ulaw_compress`).
///
/// Inputs whose magnitude exceeds 32635 clip to the largest code (`0x80` / `0x00`).
#[inline]
#[must_use]
pub fn ulaw_encode(x: i16) -> u8 {
    let x = i32::from(x);
    // 0 for x >= 0, -1 for x < 0; `x ^ sign` is then |x| or its one's complement !x.
    let sign = x >> 15;
    let biased = (x ^ sign).min(ULAW_CLIP) + ULAW_BIAS;
    // `biased` is in 132..=0x7FFF, exactly representable as f32, so the float's exponent
    // is the leading-one position and its next four mantissa bits are the G.711 mantissa.
    let seg_mant = ((biased as f32).to_bits() >> 19) - ULAW_EXP_OFFSET;
    // Positive: invert all bits (0xFF); negative: invert all but the sign bit (0x7F).
    let mask = 0x7F | (!sign as u32 & 0x80);
    (seg_mant ^ mask) as u8
}

/// Decodes one µ-law code to a linear sample (ITU-T G.711 Table 2, G.191 `ulaw_expand`).
///
/// The result is within ±32124; `0xFF` and `0x7F` both decode to `0`.
#[inline]
#[must_use]
pub fn ulaw_decode(c: u8) -> i16 {
    ULAW_DECODE[usize::from(c)]
}

/// Encodes one linear sample to an A-law code (ITU-T G.711 Table 1, G.191 `alaw_compress`).
///
/// Only the 12 most significant bits of `x` matter; no clipping is needed.
#[inline]
#[must_use]
pub fn alaw_encode(x: i16) -> u8 {
    let x = i32::from(x);
    let sign = x >> 15;
    // 12-bit magnitude in 0..=2047 (one's complement for negative inputs).
    let magnitude = (x ^ sign) >> 4;
    // For 16..=2047 the f32 exponent gives segment 1..=7 and the next four bits the
    // mantissa; below 32 the segment/mantissa pair equals the magnitude itself (segments 0
    // and 1 have the same step), which also covers 0..=15 where the float form does not.
    let from_float = ((magnitude as f32).to_bits() >> 19).wrapping_sub(ALAW_EXP_OFFSET);
    let seg_mant = if magnitude < 32 {
        magnitude as u32
    } else {
        from_float
    };
    let sign_bit = !sign as u32 & 0x80;
    ((seg_mant | sign_bit) ^ 0x55) as u8
}

/// Decodes one A-law code to a linear sample (ITU-T G.711 Table 1, G.191 `alaw_expand`).
///
/// The result is within ±32256 and never zero (the smallest magnitude is 8).
#[inline]
#[must_use]
pub fn alaw_decode(c: u8) -> i16 {
    ALAW_DECODE[usize::from(c)]
}

/// Encodes `pcm` to µ-law codes in `out`, one code per sample, as [`ulaw_encode`].
///
/// Processes `min(pcm.len(), out.len())` samples; any further elements of `out` are left
/// untouched.
#[inline]
pub fn ulaw_encode_slice(pcm: &[i16], out: &mut [u8]) {
    for (o, &x) in out.iter_mut().zip(pcm) {
        *o = ulaw_encode(x);
    }
}

/// Decodes µ-law `codes` to linear samples in `out`, as [`ulaw_decode`].
///
/// Processes `min(codes.len(), out.len())` codes; any further elements of `out` are left
/// untouched.
#[inline]
pub fn ulaw_decode_slice(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = ULAW_DECODE[usize::from(c)];
    }
}

/// Encodes `pcm` to A-law codes in `out`, one code per sample, as [`alaw_encode`].
///
/// Processes `min(pcm.len(), out.len())` samples; any further elements of `out` are left
/// untouched.
#[inline]
pub fn alaw_encode_slice(pcm: &[i16], out: &mut [u8]) {
    for (o, &x) in out.iter_mut().zip(pcm) {
        *o = alaw_encode(x);
    }
}

/// Decodes A-law `codes` to linear samples in `out`, as [`alaw_decode`].
///
/// Processes `min(codes.len(), out.len())` codes; any further elements of `out` are left
/// untouched.
#[inline]
pub fn alaw_decode_slice(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = ALAW_DECODE[usize::from(c)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Independent reference: the G.191 `g711.c` algorithm written as a segment-table
    /// search (the shape of the classic Sun `g711.c`), with G.191's one's-complement
    /// magnitude for negative inputs.
    mod reference {
        /// Upper end of each µ-law segment for the biased 14-bit magnitude.
        const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
        /// Upper end of each A-law segment for the 12-bit magnitude.
        const SEG_AEND: [i32; 8] = [0x0F, 0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF];

        fn search(value: i32, table: &[i32; 8]) -> usize {
            table.iter().position(|&end| value <= end).unwrap_or(8)
        }

        pub fn ulaw_encode(x: i16) -> u8 {
            let x = i32::from(x);
            let (magnitude, mask) = if x < 0 { (!x, 0x7F) } else { (x, 0xFF) };
            // 14-bit right-justified magnitude plus the bias 33 (= 0x84 >> 2).
            let absno = ((magnitude >> 2) + 33).min(0x1FFF);
            let seg = search(absno, &SEG_UEND);
            assert!(seg < 8, "absno is clipped to 0x1FFF");
            let code = ((seg as i32) << 4) | ((absno >> (seg + 1)) & 0x0F);
            (code ^ mask) as u8
        }

        pub fn alaw_encode(x: i16) -> u8 {
            let x = i32::from(x);
            let (magnitude, mask) = if x < 0 { (!x, 0x55) } else { (x, 0xD5) };
            let ix = magnitude >> 4;
            let seg = search(ix, &SEG_AEND);
            assert!(seg < 8, "ix is at most 0x7FF");
            let mantissa = if seg < 2 {
                ix & 0x0F
            } else {
                (ix >> (seg - 1)) & 0x0F
            };
            let code = ((seg as i32) << 4) | mantissa;
            (code ^ mask) as u8
        }

        /// G.191 `ulaw_expand`, transliterated.
        pub fn ulaw_decode(c: u8) -> i16 {
            let sign = if c < 0x80 { -1 } else { 1 };
            let inverted = i32::from(!c);
            let exponent = (inverted >> 4) & 0x07;
            let segment = exponent + 1;
            let mantissa = inverted & 0x0F;
            let step = 4 << segment;
            (sign * ((0x80 << exponent) + step * mantissa + step / 2 - 4 * 33)) as i16
        }

        /// G.191 `alaw_expand`, transliterated.
        pub fn alaw_decode(c: u8) -> i16 {
            let ix = i32::from(c ^ 0x55) & 0x7F;
            let exponent = ix >> 4;
            let mut mantissa = ix & 0x0F;
            if exponent > 0 {
                mantissa += 16;
            }
            mantissa = (mantissa << 4) + 8;
            if exponent > 1 {
                mantissa <<= exponent - 1;
            }
            (if c > 127 { mantissa } else { -mantissa }) as i16
        }

        /// G.191 `ulaw_compress` loop form (leading-one search by shifting).
        pub fn ulaw_encode_loop(x: i16) -> u8 {
            let x = i32::from(x);
            let absno = if x < 0 { (!x >> 2) + 33 } else { (x >> 2) + 33 }.min(0x1FFF);
            let mut i = absno >> 6;
            let mut segno = 1;
            while i != 0 {
                segno += 1;
                i >>= 1;
            }
            let high = 8 - segno;
            let low = 0x0F - ((absno >> segno) & 0x0F);
            let mut code = (high << 4) | low;
            if x >= 0 {
                code |= 0x80;
            }
            code as u8
        }

        /// G.191 `alaw_compress` loop form.
        pub fn alaw_encode_loop(x: i16) -> u8 {
            let x = i32::from(x);
            let mut ix = if x < 0 { !x >> 4 } else { x >> 4 };
            if ix > 15 {
                let mut iexp = 1;
                while ix > 16 + 15 {
                    ix >>= 1;
                    iexp += 1;
                }
                ix -= 16;
                ix += iexp << 4;
            }
            if x >= 0 {
                ix |= 0x80;
            }
            (ix ^ 0x55) as u8
        }
    }

    fn all_inputs() -> impl Iterator<Item = i16> {
        i16::MIN..=i16::MAX
    }

    /// Half the quantisation step of the segment of a µ-law code, in 16-bit units.
    fn ulaw_half_step(code: u8) -> i32 {
        let segment = i32::from((!code >> 4) & 0x07);
        4 << segment
    }

    /// Half the quantisation step of the segment of an A-law code, in 16-bit units.
    fn alaw_half_step(code: u8) -> i32 {
        let segment = i32::from(((code ^ 0x55) >> 4) & 0x07);
        8 << (segment - 1).max(0)
    }

    #[test]
    fn ulaw_encode_matches_reference_for_all_inputs() {
        for x in all_inputs() {
            let expected = reference::ulaw_encode(x);
            assert_eq!(ulaw_encode(x), expected, "x = {x}");
            assert_eq!(reference::ulaw_encode_loop(x), expected, "x = {x}");
        }
    }

    #[test]
    fn alaw_encode_matches_reference_for_all_inputs() {
        for x in all_inputs() {
            let expected = reference::alaw_encode(x);
            assert_eq!(alaw_encode(x), expected, "x = {x}");
            assert_eq!(reference::alaw_encode_loop(x), expected, "x = {x}");
        }
    }

    #[test]
    fn decode_matches_reference_for_all_codes() {
        for c in 0..=u8::MAX {
            assert_eq!(ulaw_decode(c), reference::ulaw_decode(c), "µ-law {c:#04x}");
            assert_eq!(alaw_decode(c), reference::alaw_decode(c), "A-law {c:#04x}");
        }
    }

    #[test]
    fn slice_encoders_match_scalar_for_all_inputs() {
        let pcm: Vec<i16> = all_inputs().collect();
        let mut codes = vec![0u8; pcm.len()];
        ulaw_encode_slice(&pcm, &mut codes);
        for (&x, &c) in pcm.iter().zip(&codes) {
            assert_eq!(c, ulaw_encode(x), "x = {x}");
        }
        alaw_encode_slice(&pcm, &mut codes);
        for (&x, &c) in pcm.iter().zip(&codes) {
            assert_eq!(c, alaw_encode(x), "x = {x}");
        }
    }

    #[test]
    fn known_values() {
        // Zero and the extremes (G.711 Tables 1 and 2).
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        // One's-complement symmetry: x and !x differ only in the sign bit.
        assert_eq!(ulaw_encode(-4), 0x7F);
        assert_eq!(ulaw_encode(3), 0xFF);
        assert_eq!(ulaw_encode(4), 0xFE);
    }

    #[test]
    fn codes_are_symmetric_under_ones_complement() {
        for x in 0..=i16::MAX {
            assert_eq!(ulaw_encode(!x), ulaw_encode(x) & 0x7F, "x = {x}");
            assert_eq!(alaw_encode(!x), alaw_encode(x) & 0x7F, "x = {x}");
        }
    }

    #[test]
    fn encode_of_decode_is_identity() {
        for c in 0..=u8::MAX {
            let ulaw_expected = if c == 0x7F { 0xFF } else { c };
            assert_eq!(ulaw_encode(ulaw_decode(c)), ulaw_expected, "µ-law {c:#04x}");
            assert_eq!(alaw_encode(alaw_decode(c)), c, "A-law {c:#04x}");
        }
        // The only µ-law code pair that collapses is the two zeros.
        let collapsed: Vec<u8> = (0..=u8::MAX)
            .filter(|&c| ulaw_encode(ulaw_decode(c)) != c)
            .collect();
        assert_eq!(collapsed, [0x7F]);
    }

    #[test]
    fn decode_levels_are_distinct() {
        // µ-law has one duplicate (±0); A-law has none.
        for (law, distinct) in [(ulaw_decode as fn(u8) -> i16, 255), (alaw_decode, 256)] {
            let mut values: Vec<i16> = (0..=u8::MAX).map(law).collect();
            values.sort_unstable();
            values.dedup();
            assert_eq!(values.len(), distinct);
        }
    }

    #[test]
    fn slices_process_the_shorter_length() {
        let pcm = [1000i16, -1000, 0, 5];
        let mut codes = [0xAAu8; 2];
        ulaw_encode_slice(&pcm, &mut codes);
        assert_eq!(codes, [ulaw_encode(1000), ulaw_encode(-1000)]);

        let mut long = [0x11u8; 6];
        alaw_encode_slice(&pcm, &mut long);
        assert_eq!(&long[4..], &[0x11, 0x11]);

        let mut pcm_out = [7i16; 3];
        ulaw_decode_slice(&[0xFF], &mut pcm_out);
        assert_eq!(pcm_out, [0, 7, 7]);
        alaw_decode_slice(&[0xD5, 0x55, 0xD5, 0x55], &mut pcm_out);
        assert_eq!(pcm_out, [8, -8, 8]);
        alaw_decode_slice(&[], &mut pcm_out);
        ulaw_encode_slice(&[], &mut codes);
    }

    proptest! {
        #[test]
        fn ulaw_error_is_within_half_a_step(x in any::<i16>()) {
            let code = ulaw_encode(x);
            let y = i32::from(ulaw_decode(code));
            let x = i32::from(x);
            // Negative inputs near zero may decode to µ-law "-0", which is 0.
            let expected_sign = if x < 0 { -1 } else { 1 };
            prop_assert!(y == 0 || y.signum() == expected_sign, "x {} y {}", x, y);
            if x.abs() <= ULAW_CLIP {
                prop_assert!((x - y).abs() <= ulaw_half_step(code), "x {} y {}", x, y);
            } else {
                // Clipped to the largest level.
                prop_assert_eq!(y.abs(), 32124);
            }
        }

        #[test]
        fn alaw_error_is_within_half_a_step(x in any::<i16>()) {
            let code = alaw_encode(x);
            let y = i32::from(alaw_decode(code));
            let x = i32::from(x);
            prop_assert_eq!(y.signum(), if x < 0 { -1 } else { 1 });
            prop_assert!((x - y).abs() <= alaw_half_step(code), "x {} y {}", x, y);
        }

        #[test]
        fn slice_equals_scalar(pcm in prop::collection::vec(any::<i16>(), 0..400),
                               codes in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut enc = vec![0u8; pcm.len()];
            ulaw_encode_slice(&pcm, &mut enc);
            prop_assert!(enc.iter().zip(&pcm).all(|(&c, &x)| c == ulaw_encode(x)));
            alaw_encode_slice(&pcm, &mut enc);
            prop_assert!(enc.iter().zip(&pcm).all(|(&c, &x)| c == alaw_encode(x)));

            let mut dec = vec![0i16; codes.len()];
            ulaw_decode_slice(&codes, &mut dec);
            prop_assert!(dec.iter().zip(&codes).all(|(&x, &c)| x == ulaw_decode(c)));
            alaw_decode_slice(&codes, &mut dec);
            prop_assert!(dec.iter().zip(&codes).all(|(&x, &c)| x == alaw_decode(c)));
        }
    }
}
