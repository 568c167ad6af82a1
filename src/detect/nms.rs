//! 3-D non-maximum suppression of candidates (cubes, see [`super::head`]).

use super::head::{cube_iou, Candidate};

/// Keeps candidates in decreasing probability, dropping each one whose cube overlaps an
/// already kept one by more than `max_iou`; at most `max_keep` are kept. Ties in
/// probability are broken by position, so the result does not depend on input order.
/// `spacing_mm` converts the candidates' voxel centres to millimetres.
///
/// Cost: a sort, then for each candidate a look at the kept ones in its neighbourhood
/// (a hash grid of cells as large as the largest candidate), so thousands of candidates
/// take milliseconds.
pub fn nms(
    mut candidates: Vec<Candidate>,
    spacing_mm: [f64; 3],
    max_iou: f64,
    max_keep: usize,
) -> Vec<Candidate> {
    candidates
        .retain(|c| c.probability.is_finite() && c.diameter_mm.is_finite() && c.diameter_mm > 0.0);
    candidates.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then_with(|| {
                a.centre_vox
                    .partial_cmp(&b.centre_vox)
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .then_with(|| a.diameter_mm.total_cmp(&b.diameter_mm))
    });
    let max_side = candidates.iter().map(|c| c.diameter_mm).fold(1.0, f64::max);
    let cell = max_side;
    let key = |mm: [f64; 3]| mm.map(|v| (v / cell).floor() as i64);
    let mut grid: std::collections::HashMap<[i64; 3], Vec<usize>> = Default::default();
    let mut kept: Vec<Candidate> = Vec::new();
    let mut kept_mm: Vec<[f64; 3]> = Vec::new();
    for c in candidates {
        if kept.len() >= max_keep {
            break;
        }
        let mm = [0, 1, 2].map(|a| c.centre_vox[a] * spacing_mm[a]);
        let k = key(mm);
        let mut suppressed = false;
        'search: for dz in -1..=1 {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    if let Some(list) = grid.get(&[k[0] + dz, k[1] + dy, k[2] + dx]) {
                        for &i in list {
                            if cube_iou(mm, c.diameter_mm, kept_mm[i], kept[i].diameter_mm)
                                > max_iou
                            {
                                suppressed = true;
                                break 'search;
                            }
                        }
                    }
                }
            }
        }
        if !suppressed {
            grid.entry(k).or_default().push(kept.len());
            kept.push(c);
            kept_mm.push(mm);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(mut c: Vec<Candidate>, sp: [f64; 3], max_iou: f64, max_keep: usize) -> Vec<Candidate> {
        c.sort_by(|a, b| {
            b.probability
                .total_cmp(&a.probability)
                .then_with(|| a.centre_vox.partial_cmp(&b.centre_vox).unwrap())
                .then_with(|| a.diameter_mm.total_cmp(&b.diameter_mm))
        });
        let mut kept: Vec<Candidate> = Vec::new();
        for x in c {
            let mm = |c: &Candidate| [0, 1, 2].map(|a| c.centre_vox[a] * sp[a]);
            if kept.len() < max_keep
                && kept
                    .iter()
                    .all(|k| cube_iou(mm(&x), x.diameter_mm, mm(k), k.diameter_mm) <= max_iou)
            {
                kept.push(x);
            }
        }
        kept
    }

    #[test]
    fn nms_matches_the_quadratic_definition_and_is_fast() {
        let mut rng = crate::rng::SplitMix64::new(11);
        let cands: Vec<Candidate> = (0..5000)
            .map(|_| Candidate {
                centre_vox: [
                    rng.uniform() * 80.0,
                    rng.uniform() * 100.0,
                    rng.uniform() * 100.0,
                ],
                diameter_mm: 3.0 + rng.uniform() * 25.0,
                probability: (rng.below(1000) as f32) / 1000.0,
            })
            .collect();
        let sp = [1.0, 0.9, 1.1];
        let ours = nms(cands.clone(), sp, 0.1, 10_000);
        assert_eq!(ours, naive(cands.clone(), sp, 0.1, 10_000));
        assert!(ours.len() > 10 && ours.len() < 5000);
        let mut reversed = cands.clone();
        reversed.reverse();
        assert_eq!(nms(reversed, sp, 0.1, 10_000), ours, "order independent");
        assert_eq!(nms(cands, sp, 0.1, 7).len(), 7);
    }
}
