//! Mixing primitives: frame energy, gain, saturation and the loudest-talker selection used
//! by [`super::MediaCall`]. All work on caller-owned buffers and never allocate.

/// Sum of squares of a frame (its energy), saturating.
#[must_use]
pub fn energy(frame: &[i16]) -> u64 {
    frame.iter().fold(0u64, |acc, &s| {
        acc.saturating_add((i64::from(s) * i64::from(s)) as u64)
    })
}

/// Linear factor of a gain in dB.
#[must_use]
pub fn gain_factor(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

/// Scales `frame` by `factor`, saturating.
pub fn apply_gain(frame: &mut [i16], factor: f32) {
    for s in frame {
        let v = (f32::from(*s) * factor).round();
        *s = v.clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16;
    }
}

/// Adds `src` to `acc`.
pub fn add(acc: &mut [i32], src: &[i16]) {
    for (a, s) in acc.iter_mut().zip(src) {
        *a += i32::from(*s);
    }
}

/// Subtracts `src` from `acc`.
pub fn sub(acc: &mut [i32], src: &[i16]) {
    for (a, s) in acc.iter_mut().zip(src) {
        *a -= i32::from(*s);
    }
}

/// Saturates `acc` into `out`.
pub fn saturate(acc: &[i32], out: &mut [i16]) {
    for (o, a) in out.iter_mut().zip(acc) {
        *o = (*a).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    }
}

/// Energy bonus of a talker mixed in the previous frame, so that two talkers of about the
/// same level do not swap places every frame (×2 ≈ +3 dB).
pub const HYSTERESIS_FACTOR: u64 = 2;

/// Marks in `selected` the `k` candidates with the highest energy; a candidate selected in
/// the previous frame (`selected[i]` on entry) counts with [`HYSTERESIS_FACTOR`]. Only
/// indices with `candidate[i]` can be chosen; of equal scores the lower index wins. One
/// pass, O(n·k) at worst, O(n) when the order settles.
pub fn select_loudest(energies: &[u64], candidate: &[bool], selected: &mut [bool], k: usize) {
    let n = energies.len().min(candidate.len()).min(selected.len());
    // The best `count` so far, by descending score (ties: ascending index).
    let mut best = [(0u64, 0usize); 64];
    let k = k.min(best.len()).min(n);
    let mut count = 0;
    if k > 0 {
        for i in 0..n {
            if !candidate[i] {
                continue;
            }
            let s = if selected[i] {
                energies[i].saturating_mul(HYSTERESIS_FACTOR)
            } else {
                energies[i]
            };
            if count == k && s <= best[k - 1].0 {
                continue;
            }
            // Insert after every entry scoring at least as much.
            let mut p = count.min(k - 1);
            while p > 0 && best[p - 1].0 < s {
                best[p] = best[p - 1];
                p -= 1;
            }
            best[p] = (s, i);
            if count < k {
                count += 1;
            }
        }
    }
    for s in selected[..n].iter_mut() {
        *s = false;
    }
    for &(_, i) in &best[..count] {
        selected[i] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loudest_with_hysteresis() {
        let e = [10, 100, 50, 60, 0];
        let c = [true, true, true, true, false];
        let mut sel = [false; 5];
        select_loudest(&e, &c, &mut sel, 2);
        assert_eq!(sel, [false, true, false, true, false]);
        // 2 becomes slightly louder than 3, but 3 keeps its place.
        let e = [10, 100, 65, 60, 0];
        select_loudest(&e, &c, &mut sel, 2);
        assert_eq!(sel, [false, true, false, true, false]);
        // Much louder: it takes over.
        let e = [10, 100, 200, 60, 0];
        select_loudest(&e, &c, &mut sel, 2);
        assert_eq!(sel, [false, true, true, false, false]);
    }

    /// The selection by repeated arg-max (first index wins ties).
    fn select_naive(e: &[u64], c: &[bool], sel: &mut [bool], k: usize) {
        let score: Vec<u64> = (0..e.len())
            .map(|i| {
                if sel[i] {
                    e[i] * HYSTERESIS_FACTOR
                } else {
                    e[i]
                }
            })
            .collect();
        let mut chosen = Vec::new();
        for _ in 0..k {
            let mut best: Option<(u64, usize)> = None;
            for i in 0..e.len() {
                if c[i] && !chosen.contains(&i) && best.is_none_or(|(b, _)| score[i] > b) {
                    best = Some((score[i], i));
                }
            }
            match best {
                Some((_, i)) => chosen.push(i),
                None => break,
            }
        }
        sel.fill(false);
        for i in chosen {
            sel[i] = true;
        }
    }

    #[test]
    fn loudest_matches_repeated_arg_max() {
        let mut seed = 0x9E37_79B9_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let n = (next() % 12) as usize;
            let k = (next() % 5) as usize;
            // Few distinct levels, so that ties happen.
            let e: Vec<u64> = (0..n).map(|_| next() % 4 * 10).collect();
            let c: Vec<bool> = (0..n).map(|_| next() % 4 != 0).collect();
            let prev: Vec<bool> = (0..n).map(|_| next() % 3 == 0).collect();
            let (mut a, mut b) = (prev.clone(), prev);
            select_loudest(&e, &c, &mut a, k);
            select_naive(&e, &c, &mut b, k);
            assert_eq!(a, b, "round {round}: e {e:?} c {c:?} k {k}");
        }
    }

    #[test]
    fn saturation_and_gain() {
        let mut f = [20000i16, -20000, 5];
        apply_gain(&mut f, 2.0);
        assert_eq!(f, [i16::MAX, i16::MIN, 10]);
        let mut out = [0i16; 2];
        saturate(&[70000, -70000], &mut out);
        assert_eq!(out, [i16::MAX, i16::MIN]);
    }
}
