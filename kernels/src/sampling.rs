//! Softmax, masking and sampling over a row of logits.
//!
//! Masked entries are `f32::NEG_INFINITY`; every routine treats them as impossible choices. A row
//! whose entries are all masked has no valid choice: [`softmax_inplace`] leaves it all zero and
//! [`sample_index`] returns `None`.

/// Index of the largest finite logit (the first one on ties), or `None` if every entry is masked.
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if x == f32::NEG_INFINITY || x.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if b >= x => {}
            _ => best = Some((i, x)),
        }
    }
    best.map(|(i, _)| i)
}

/// Divides every logit by `temperature`. A temperature of zero or below means greedy decoding and
/// is handled by the caller with [`argmax`]; here it leaves the row untouched.
pub fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature > 0.0 && temperature != 1.0 {
        let inv = 1.0 / temperature;
        for x in logits.iter_mut() {
            *x *= inv;
        }
    }
}

/// Turns logits into probabilities in place (numerically stable: the maximum is subtracted first).
/// Returns the normaliser `sum(exp(x - max))`, or 0.0 when every entry is masked.
pub fn softmax_inplace(row: &mut [f32]) -> f32 {
    let Some(m) = argmax(row).map(|i| row[i]) else {
        row.iter_mut().for_each(|x| *x = 0.0);
        return 0.0;
    };
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        let e = if *x == f32::NEG_INFINITY {
            0.0
        } else {
            (*x - m).exp()
        };
        *x = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
    sum
}

/// Turns logits into log-probabilities in place. Masked entries stay `NEG_INFINITY`.
pub fn log_softmax_inplace(row: &mut [f32]) {
    let Some(m) = argmax(row).map(|i| row[i]) else {
        return;
    };
    let sum: f32 = row
        .iter()
        .filter(|x| **x != f32::NEG_INFINITY)
        .map(|x| (x - m).exp())
        .sum();
    let log_z = m + sum.ln();
    for x in row.iter_mut() {
        if *x != f32::NEG_INFINITY {
            *x -= log_z;
        }
    }
}

/// Keeps the `k` largest logits and masks the rest (ties at the threshold are kept). `k == 0` or
/// `k >= len` keeps everything. `scratch` must be at least as long as `logits`.
pub fn top_k_mask(logits: &mut [f32], k: usize, scratch: &mut [f32]) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let scratch = &mut scratch[..logits.len()];
    scratch.copy_from_slice(logits);
    // k-th largest value: select_nth_unstable on the descending order.
    let (_, kth, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    for x in logits.iter_mut() {
        if *x < threshold {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Nucleus filtering on a row of probabilities (the output of [`softmax_inplace`]): keeps the
/// smallest set of most likely entries whose mass reaches `p`, zeroes the rest and renormalises.
/// `order` is scratch space of at least `probs.len()` indices.
pub fn top_p_mask(probs: &mut [f32], p: f32, order: &mut [u32]) {
    if p >= 1.0 || probs.is_empty() {
        return;
    }
    let order = &mut order[..probs.len()];
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u32;
    }
    order.sort_unstable_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
    let mut mass = 0.0f32;
    let mut cut = order.len();
    for (rank, &i) in order.iter().enumerate() {
        mass += probs[i as usize];
        if mass >= p {
            cut = rank + 1;
            break;
        }
    }
    for &i in &order[cut..] {
        probs[i as usize] = 0.0;
    }
    let inv = 1.0 / mass.max(f32::MIN_POSITIVE);
    for &i in &order[..cut] {
        probs[i as usize] *= inv;
    }
}

/// Draws an index from a row of probabilities given a uniform number `u` in `[0, 1)`, by inverse
/// CDF. Returns `None` when the row has no mass. Rounding that leaves `u` past the last bucket picks
/// the last entry with non-zero probability.
pub fn sample_index(probs: &[f32], u: f32) -> Option<usize> {
    let total: f32 = probs.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let target = u.clamp(0.0, 1.0) * total;
    let mut acc = 0.0f32;
    let mut last = None;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last = Some(i);
            if target < acc {
                return Some(i);
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn scalar_softmax(row: &[f32]) -> Vec<f64> {
        let m = row
            .iter()
            .cloned()
            .filter(|x| x.is_finite())
            .fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
        let e: Vec<f64> = row
            .iter()
            .map(|&x| {
                if x.is_finite() {
                    (x as f64 - m).exp()
                } else {
                    0.0
                }
            })
            .collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    #[test]
    fn softmax_matches_scalar_reference() {
        let row = [1.0f32, -2.5, 30.0, 29.0, NEG, 0.0];
        let mut got = row;
        softmax_inplace(&mut got);
        let want = scalar_softmax(&row);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert_eq!(got[4], 0.0);
    }

    #[test]
    fn softmax_of_fully_masked_row_is_zero() {
        let mut row = [NEG, NEG];
        assert_eq!(argmax(&row), None);
        assert_eq!(softmax_inplace(&mut row), 0.0);
        assert_eq!(row, [0.0, 0.0]);
        assert_eq!(sample_index(&row, 0.5), None);
    }

    #[test]
    fn log_softmax_exponentiates_to_softmax() {
        let row = [0.5f32, 2.0, NEG, -1.0];
        let mut lp = row;
        log_softmax_inplace(&mut lp);
        let want = scalar_softmax(&row);
        for (l, w) in lp.iter().zip(&want) {
            assert!(((*l as f64).exp() - w).abs() < 1e-6);
        }
        assert_eq!(lp[2], NEG);
    }

    #[test]
    fn argmax_picks_first_of_ties_and_skips_masked() {
        assert_eq!(argmax(&[NEG, 3.0, 3.0, 1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let mut row = [0.1f32, 5.0, 3.0, -1.0, 4.0];
        let mut scratch = [0.0f32; 5];
        top_k_mask(&mut row, 2, &mut scratch);
        assert_eq!(row, [NEG, 5.0, NEG, NEG, 4.0]);
    }

    #[test]
    fn top_p_keeps_smallest_nucleus_and_renormalises() {
        let mut probs = [0.1f32, 0.5, 0.3, 0.1];
        let mut order = [0u32; 4];
        top_p_mask(&mut probs, 0.75, &mut order);
        assert_eq!(probs[0], 0.0);
        assert_eq!(probs[3], 0.0);
        assert!((probs[1] - 0.625).abs() < 1e-6);
        assert!((probs[2] - 0.375).abs() < 1e-6);
    }

    #[test]
    fn sampling_follows_the_cdf() {
        let probs = [0.2f32, 0.0, 0.5, 0.3];
        assert_eq!(sample_index(&probs, 0.0), Some(0));
        assert_eq!(sample_index(&probs, 0.19), Some(0));
        assert_eq!(sample_index(&probs, 0.21), Some(2));
        assert_eq!(sample_index(&probs, 0.69), Some(2));
        assert_eq!(sample_index(&probs, 0.71), Some(3));
        assert_eq!(sample_index(&probs, 1.0), Some(3));
    }

    #[test]
    fn sampling_frequencies_match_probabilities() {
        let probs = [0.1f32, 0.6, 0.3];
        let mut counts = [0usize; 3];
        let n = 10_000;
        for i in 0..n {
            let u = (i as f32 + 0.5) / n as f32;
            counts[sample_index(&probs, u).unwrap()] += 1;
        }
        for (c, p) in counts.iter().zip(probs) {
            assert!((*c as f32 / n as f32 - p).abs() < 0.01);
        }
    }

    #[test]
    fn temperature_scales_logits() {
        let mut row = [2.0f32, -4.0];
        apply_temperature(&mut row, 0.5);
        assert_eq!(row, [4.0, -8.0]);
        apply_temperature(&mut row, 0.0);
        assert_eq!(row, [4.0, -8.0]);
    }
}
