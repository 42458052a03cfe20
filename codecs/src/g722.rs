//! ITU-T G.722 wideband audio at 64 kbit/s (mode 1): sub-band ADPCM.
//!
//! The encoder splits 16 kHz audio with a 24-tap quadrature mirror filter (G.722 §3.1) into
//! a lower and a higher sub-band at 8 kHz each. The lower band is coded with 6-bit adaptive
//! differential PCM, the higher band with 2 bits (§3.2–§3.6); one output byte carries
//! `IH(2 bits) | IL(6 bits)` for every two input samples. The decoder runs the inverse
//! (§4.1–§4.4). All arithmetic follows the recommendation's fixed-point description
//! (clause 6, blocks `QUANTL`, `INVQAL`, `LOGSCL`, `SCALEL`, `UPPOL1`, `UPPOL2`, `UPZERO`,
//! `FILTEP`, `FILTEZ`, `PREDIC` and their higher-band counterparts), so the output is
//! bit-exact to the ITU-T reference algorithm.
//!
//! **Clock rates.** Audio is sampled at 16 000 Hz, but the RTP clock rate of payload type 9
//! is 8000 Hz, kept for historical reasons (RFC 3551 §4.5.2). A 20 ms packet is 320 audio
//! samples, 160 bytes, and advances the RTP timestamp by 160.
//!
//! **Drive contract.** [`G722Encoder`] and [`G722Decoder`] are plain state machines: feed
//! them consecutive audio or payload of one stream, in order, and call `reset` when the
//! stream restarts. Neither allocates; both write into caller-provided slices.
//!
//! Only the 64 kbit/s mode is implemented; the 56 and 48 kbit/s modes, which steal low-band
//! bits for an auxiliary data channel, are not used on RTP.

/// ITU-T G.722 table of QMF coefficients h(0), h(2), ... h(22) (§5, Table 6/G.722 for the
/// even taps); the odd taps are the same values in reverse order.
const QMF_COEFFS: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

/// Lower sub-band quantizer decision levels (block `QUANTL`), scaled by 8.
const Q6: [i32; 30] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919,
];

/// Lower sub-band 6-bit output code for a negative difference, by quantizer interval.
const ILN: [u8; 31] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4,
];

/// Lower sub-band 6-bit output code for a non-negative difference, by quantizer interval.
const ILP: [u8; 31] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32,
];

/// Lower sub-band log scale factor multipliers (block `LOGSCL`).
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];

/// Maps the 4-bit truncated lower-band code to its magnitude index for [`WL`].
const RL42: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];

/// Inverse logarithm table, 2^(i/32) scaled by 2048 (blocks `SCALEL`, `SCALEH`).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];

/// 4-bit inverse quantizer of the lower band, used for prediction (block `INVQAL`).
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];

/// 6-bit inverse quantizer of the lower band, used for the 64 kbit/s decoder output
/// (block `INVQBL`, mode 1).
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];

/// 2-bit inverse quantizer of the higher band (block `INVQAH`).
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];

/// Higher sub-band log scale factor multipliers (block `LOGSCH`), by magnitude index.
const WH: [i32; 3] = [0, -214, 798];

/// Maps the 2-bit higher-band code to its magnitude index for [`WH`].
const RH2: [usize; 4] = [2, 1, 2, 1];

/// Higher sub-band quantizer decision level (block `QUANTH`), scaled by 8.
const Q2: i32 = 564;

/// Lower-band log scale factor ceiling (block `LOGSCL`).
const NBL_MAX: i32 = 18432;
/// Higher-band log scale factor ceiling (block `LOGSCH`).
const NBH_MAX: i32 = 22528;

/// Saturates to the 16-bit two's complement range, as the recommendation's arithmetic does.
#[inline(always)]
fn sat16(v: i32) -> i32 {
    v.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
}

/// Converts a log scale factor into a linear one (blocks `SCALEL` / `SCALEH`): `shift` is 8
/// for the lower band and 10 for the higher band.
#[inline(always)]
fn scale_from_log(nb: i32, shift: i32) -> i32 {
    // `nb` is clamped to 0..=NBH_MAX by the callers, so the index is in 0..32 and the shift
    // amounts below are in 0..=11 bits.
    let mantissa = ILB[((nb >> 6) & 31) as usize];
    let exp = shift - (nb >> 11);
    let linear = if exp < 0 {
        mantissa << -exp
    } else {
        mantissa >> exp
    };
    linear << 2
}

/// State of one sub-band's ADPCM: the scale factor and the pole-zero predictor (§3.5, §3.6).
#[derive(Debug, Clone)]
struct Band {
    /// Signal estimate `s` for the next sample (block `PREDIC`).
    s: i32,
    /// Zero-section (sixth-order) part of the estimate, `sz` (block `FILTEZ`).
    sz: i32,
    /// Reconstructed signal `r`, current and two previous.
    r: [i32; 3],
    /// Pole coefficients `a1`, `a2` (index 0 unused).
    a: [i32; 3],
    /// Partially reconstructed signal `p = sz + d`, current and two previous.
    p: [i32; 3],
    /// Quantized difference `d`, current and six previous.
    d: [i32; 7],
    /// Zero coefficients `b1`..`b6` (index 0 unused).
    b: [i32; 7],
    /// Log scale factor `nb`.
    nb: i32,
    /// Linear scale factor `det`.
    det: i32,
}

impl Band {
    /// The reset state (§6: all variables zero except the scale factor).
    const fn new(det: i32) -> Self {
        Self {
            s: 0,
            sz: 0,
            r: [0; 3],
            a: [0; 3],
            p: [0; 3],
            d: [0; 7],
            b: [0; 7],
            nb: 0,
            det,
        }
    }

    /// Updates the log scale factor with `multiplier` (blocks `LOGSCL` / `LOGSCH`) and
    /// derives the linear scale factor (blocks `SCALEL` / `SCALEH`).
    #[inline(always)]
    fn adapt_scale(&mut self, multiplier: i32, nb_max: i32, shift: i32) {
        self.nb = (((self.nb * 127) >> 7) + multiplier).clamp(0, nb_max);
        self.det = scale_from_log(self.nb, shift);
    }

    /// Block 4: reconstruction, predictor coefficient adaptation and the new signal
    /// estimate, from the quantized difference `dq` (§3.6, blocks `RECONS`, `PARREC`,
    /// `UPPOL2`, `UPPOL1`, `UPZERO`, `DELAYA`, `FILTEP`, `FILTEZ`, `PREDIC`).
    #[inline(always)]
    fn predict(&mut self, dq: i32) {
        // RECONS and PARREC.
        self.d[0] = dq;
        self.r[0] = sat16(self.s + dq);
        self.p[0] = sat16(self.sz + dq);

        // UPPOL2: second pole coefficient.
        let sg0 = self.p[0] >> 15;
        let sg1 = self.p[1] >> 15;
        let sg2 = self.p[2] >> 15;
        let a1x4 = sat16(self.a[1] << 2);
        let mut wd = if sg0 == sg1 { -a1x4 } else { a1x4 };
        if wd > 32767 {
            wd = 32767;
        }
        let ap2 = ((wd >> 7) + if sg0 == sg2 { 128 } else { -128 } + ((self.a[2] * 32512) >> 15))
            .clamp(-12288, 12288);

        // UPPOL1: first pole coefficient, limited by the stability constraint on a2.
        let step = if sg0 == sg1 { 192 } else { -192 };
        let limit = sat16(15360 - ap2);
        let ap1 = sat16(step + ((self.a[1] * 32640) >> 15)).clamp(-limit, limit);

        // UPZERO: sign-sign update of the six zero coefficients.
        let gain = if dq == 0 { 0 } else { 128 };
        let sgd = dq >> 15;
        for (b, &d) in self.b[1..].iter_mut().zip(&self.d[1..]) {
            let step = if (d >> 15) == sgd { gain } else { -gain };
            *b = sat16(step + ((*b * 32640) >> 15));
        }

        // DELAYA: shift the delay lines and adopt the new pole coefficients (the zero
        // coefficients were updated in place above).
        self.d.copy_within(0..6, 1);
        self.r.copy_within(0..2, 1);
        self.p.copy_within(0..2, 1);
        self.a[1] = ap1;
        self.a[2] = ap2;

        // FILTEP: pole section.
        let sp = sat16(
            ((self.a[1] * sat16(self.r[1] + self.r[1])) >> 15)
                + ((self.a[2] * sat16(self.r[2] + self.r[2])) >> 15),
        );

        // FILTEZ: zero section.
        let sz: i32 = self.b[1..]
            .iter()
            .zip(&self.d[1..])
            .map(|(&b, &d)| (b * sat16(d + d)) >> 15)
            .sum();
        self.sz = sat16(sz);

        // PREDIC.
        self.s = sat16(sp + self.sz);
    }

    /// Lower band after the 6-bit code `il` was chosen or received: inverse quantizes its
    /// 4-bit truncation for prediction (block `INVQAL`) and adapts (`LOGSCL`, `SCALEL`,
    /// block 4).
    #[inline(always)]
    fn update_low(&mut self, il: u8) {
        let il4 = usize::from(il >> 2);
        let dlow = (self.det * QM4[il4]) >> 15;
        self.adapt_scale(WL[RL42[il4]], NBL_MAX, 8);
        self.predict(dlow);
    }

    /// Higher band after the 2-bit code `ih` was chosen or received: `dhigh` is its inverse
    /// quantized value (block `INVQAH`); adapts (`LOGSCH`, `SCALEH`, block 4).
    #[inline(always)]
    fn update_high(&mut self, ih: u8, dhigh: i32) {
        self.adapt_scale(WH[RH2[usize::from(ih)]], NBH_MAX, 10);
        self.predict(dhigh);
    }
}

/// Lower band initial linear scale factor (§6 reset).
const DET_LOW_INIT: i32 = 32;
/// Higher band initial linear scale factor (§6 reset).
const DET_HIGH_INIT: i32 = 8;

/// The 24-sample QMF delay line shared by the analysis and synthesis filters (§3.1, §4.4):
/// pushes two samples and returns the two polyphase sums.
#[derive(Debug, Clone)]
struct Qmf {
    x: [i32; 24],
}

impl Qmf {
    const fn new() -> Self {
        Self { x: [0; 24] }
    }

    /// Shifts in `first` then `second` and returns `(sum over even taps with h, sum over
    /// odd taps with the reversed h)`.
    #[inline(always)]
    fn push(&mut self, first: i32, second: i32) -> (i32, i32) {
        self.x.copy_within(2.., 0);
        self.x[22] = first;
        self.x[23] = second;
        let mut even = 0;
        let mut odd = 0;
        for (i, pair) in self.x.chunks_exact(2).enumerate() {
            even += pair[0] * QMF_COEFFS[i];
            odd += pair[1] * QMF_COEFFS[11 - i];
        }
        (even, odd)
    }
}

/// G.722 64 kbit/s encoder: 16 kHz 16-bit PCM in, one byte per two samples out.
///
/// ```
/// use switchboard_codecs::g722::G722Encoder;
/// let mut enc = G722Encoder::new();
/// let pcm = [0i16; 320]; // 20 ms at 16 kHz
/// let mut payload = [0u8; 160];
/// assert_eq!(enc.encode(&pcm, &mut payload), 160);
/// ```
#[derive(Debug, Clone)]
pub struct G722Encoder {
    qmf: Qmf,
    low: Band,
    high: Band,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// A new encoder in the reset state.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            qmf: Qmf::new(),
            low: Band::new(DET_LOW_INIT),
            high: Band::new(DET_HIGH_INIT),
        }
    }

    /// Returns the encoder to its reset state, as at the start of a new stream.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Encodes `pcm` (16 kHz mono) into `out`, two samples per byte.
    ///
    /// Processes `min(pcm.len() / 2, out.len())` bytes' worth; a trailing odd sample is
    /// ignored. Returns the number of bytes written.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        let mut written = 0;
        for (pair, byte) in pcm.chunks_exact(2).zip(out.iter_mut()) {
            *byte = self.encode_pair(pair[0], pair[1]);
            written += 1;
        }
        written
    }

    /// Encodes one pair of 16 kHz samples into one G.722 code byte.
    #[inline(always)]
    fn encode_pair(&mut self, first: i16, second: i16) -> u8 {
        // Transmit QMF (§3.1): the even-tap sum sees the first sample's phase.
        let (even, odd) = self.qmf.push(i32::from(first), i32::from(second));
        let xlow = (odd + even) >> 14;
        let xhigh = (odd - even) >> 14;

        // Lower band: SUBTRA and QUANTL (§3.2, §3.3).
        let el = sat16(xlow - self.low.s);
        let wd = if el >= 0 { el } else { -(el + 1) };
        let mut interval = 1;
        while interval < Q6.len() && wd >= (Q6[interval] * self.low.det) >> 12 {
            interval += 1;
        }
        let il = if el < 0 { ILN[interval] } else { ILP[interval] };

        // Higher band: SUBTRA and QUANTH.
        let eh = sat16(xhigh - self.high.s);
        let wd = if eh >= 0 { eh } else { -(eh + 1) };
        let magnitude = if wd >= (Q2 * self.high.det) >> 12 {
            2
        } else {
            1
        };
        let ih: u8 = match (eh < 0, magnitude) {
            (true, 1) => 1,
            (true, _) => 0,
            (false, 1) => 3,
            (false, _) => 2,
        };

        // Local decoders of both bands (§3.4–§3.6).
        self.low.update_low(il);
        let dhigh = (self.high.det * QM2[usize::from(ih)]) >> 15;
        self.high.update_high(ih, dhigh);

        (ih << 6) | il
    }
}

/// G.722 64 kbit/s decoder: one byte in, two 16 kHz 16-bit samples out.
///
/// Every byte value is a valid code, so the decoder accepts any input.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    qmf: Qmf,
    low: Band,
    high: Band,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A new decoder in the reset state.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            qmf: Qmf::new(),
            low: Band::new(DET_LOW_INIT),
            high: Band::new(DET_HIGH_INIT),
        }
    }

    /// Returns the decoder to its reset state, as at the start of a new stream.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Decodes `data` into `out` (16 kHz mono), two samples per byte.
    ///
    /// Processes `min(data.len(), out.len() / 2)` bytes. Returns the number of samples
    /// written.
    pub fn decode(&mut self, data: &[u8], out: &mut [i16]) -> usize {
        let mut written = 0;
        for (&code, pair) in data.iter().zip(out.chunks_exact_mut(2)) {
            let (first, second) = self.decode_byte(code);
            pair[0] = first;
            pair[1] = second;
            written += 2;
        }
        written
    }

    /// Decodes one G.722 code byte into two 16 kHz samples.
    #[inline(always)]
    fn decode_byte(&mut self, code: u8) -> (i16, i16) {
        let il = code & 0x3f;
        let ih = code >> 6;

        // Lower band: INVQBL with all six bits, RECONS, LIMIT (§4.1).
        let dlow6 = (self.low.det * QM6[usize::from(il)]) >> 15;
        let rlow = (self.low.s + dlow6).clamp(-16384, 16383);
        self.low.update_low(il);

        // Higher band: INVQAH, RECONS, LIMIT.
        let dhigh = (self.high.det * QM2[usize::from(ih)]) >> 15;
        let rhigh = (self.high.s + dhigh).clamp(-16384, 16383);
        self.high.update_high(ih, dhigh);

        // Receive QMF (§4.4).
        let (even, odd) = self.qmf.push(rlow + rhigh, rlow - rhigh);
        (to_i16(odd >> 11), to_i16(even >> 11))
    }
}

/// Saturating conversion of a filter output to a 16-bit sample.
#[inline(always)]
fn to_i16(v: i32) -> i16 {
    // Clamped to the i16 range first, so the cast is lossless.
    sat16(v) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, amp: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / 16000.0).sin()) as i16)
            .collect()
    }

    fn round_trip(pcm: &[i16]) -> Vec<i16> {
        let mut enc = G722Encoder::new();
        let mut dec = G722Decoder::new();
        let mut bytes = vec![0u8; pcm.len() / 2];
        assert_eq!(enc.encode(pcm, &mut bytes), pcm.len() / 2);
        let mut out = vec![0i16; pcm.len()];
        assert_eq!(dec.decode(&bytes, &mut out), pcm.len());
        out
    }

    /// SNR in dB of `out` against `reference` delayed by `delay` samples.
    fn snr_db(reference: &[i16], out: &[i16], delay: usize) -> f64 {
        let mut sig = 0.0;
        let mut noise = 0.0;
        for i in 0..reference.len() - delay {
            let r = f64::from(reference[i]);
            let e = f64::from(out[i + delay]) - r;
            sig += r * r;
            noise += e * e;
        }
        10.0 * (sig / noise.max(1e-9)).log10()
    }

    fn best_snr(reference: &[i16], out: &[i16]) -> (usize, f64) {
        (0..64)
            .map(|d| (d, snr_db(reference, out, d)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
    }

    #[test]
    fn silence_stays_silent() {
        let out = round_trip(&[0i16; 1600]);
        assert!(out.iter().all(|&s| s.abs() <= 4), "{:?}", &out[..32]);
    }

    #[test]
    fn sine_round_trip_snr() {
        for freq in [300.0, 1000.0, 3000.0, 6000.0] {
            let pcm = sine(freq, 8000.0, 3200);
            let out = round_trip(&pcm);
            // Skip the adaptation transient.
            let (delay, snr) = best_snr(&pcm[800..], &out[800..]);
            assert!(snr > 20.0, "{freq} Hz: SNR {snr:.1} dB at delay {delay}");
        }
    }

    #[test]
    fn codec_delay_is_22_samples() {
        // Broadband (pseudo-random) input, so the alignment is unambiguous: the two 24-tap
        // QMFs together delay the signal by 22 samples.
        let mut state = 0x2545_f491_u32;
        let pcm: Vec<i16> = (0..3200)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                ((state >> 16) as i16) / 8
            })
            .collect();
        let out = round_trip(&pcm);
        let (delay, snr) = best_snr(&pcm[800..], &out[800..]);
        assert_eq!(delay, 22, "SNR {snr:.1} dB");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut dec = G722Decoder::new();
        let mut state = 0x1234_5678_u32;
        let mut bytes = [0u8; 4096];
        for b in bytes.iter_mut() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *b = state as u8;
        }
        let mut out = [0i16; 8192];
        assert_eq!(dec.decode(&bytes, &mut out), 8192);
        // Every byte value, including the reserved low-band codes 0..=3.
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(dec.decode(&all, &mut out), 512);
    }

    #[test]
    fn extreme_input_does_not_overflow() {
        let pcm: Vec<i16> = (0..4000)
            .map(|i| if (i / 3) % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        let out = round_trip(&pcm);
        assert_eq!(out.len(), pcm.len());
    }

    #[test]
    fn lengths_follow_the_shorter_buffer() {
        let mut enc = G722Encoder::new();
        let mut out = [0u8; 10];
        assert_eq!(enc.encode(&[0; 7], &mut out), 3);
        assert_eq!(enc.encode(&[0; 40], &mut out), 10);
        let mut dec = G722Decoder::new();
        let mut pcm = [0i16; 7];
        assert_eq!(dec.decode(&[0; 10], &mut pcm), 6);
        assert_eq!(dec.decode(&[0; 2], &mut pcm), 4);
    }

    #[test]
    fn reset_restores_initial_state() {
        let pcm = sine(440.0, 10000.0, 640);
        let mut enc = G722Encoder::new();
        let mut first = [0u8; 320];
        enc.encode(&pcm, &mut first);
        enc.reset();
        let mut second = [0u8; 320];
        enc.encode(&pcm, &mut second);
        assert_eq!(first, second);

        let mut dec = G722Decoder::new();
        let mut a = [0i16; 640];
        dec.decode(&first, &mut a);
        dec.reset();
        let mut b = [0i16; 640];
        dec.decode(&first, &mut b);
        assert_eq!(a, b);
    }
}
