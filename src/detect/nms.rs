//! 3-D non-maximum suppression of candidates (cubes, see [`super::head`]).

use super::head::{cube_iou, Candidate};
use crate::volume::{norm, sub};

/// How [`nms`] merges candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NmsConfig {
    /// A candidate whose cube overlaps a kept one's by more than this is dropped.
    pub max_iou: f64,
    /// A candidate whose centre lies within a kept one's radius is dropped too (a small
    /// candidate on part of a large nodule overlaps the nodule's cube little, yet is the
    /// same finding: LUNA16 counts it as a double detection).
    pub suppress_inside: bool,
    /// A kept candidate's centre becomes the probability-weighted mean of its own and those
    /// of the candidates its cube suppressed (by IoU), which averages out the scatter of
    /// neighbouring cells' and overlapping tiles' estimates of the same nodule.
    pub fuse_centres: bool,
    /// At most this many are kept.
    pub max_keep: usize,
}

/// Whether NMS can use a candidate: finite probability and centre, a positive diameter.
fn usable(c: &Candidate) -> bool {
    c.probability.is_finite()
        && c.diameter_mm.is_finite()
        && c.diameter_mm > 0.0
        && c.centre_vox.iter().all(|v| v.is_finite())
}

/// The order NMS takes candidates in: most probable first, ties broken by centre, then
/// diameter (a total order, so the result does not depend on the input's order).
fn most_probable_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.probability
        .total_cmp(&a.probability)
        .then_with(|| {
            (0..3)
                .map(|i| a.centre_vox[i].total_cmp(&b.centre_vox[i]))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .then_with(|| a.diameter_mm.total_cmp(&b.diameter_mm))
}

/// Keeps the `n` candidates [`nms`] would look at first (the most probable, in its order;
/// unusable ones dropped), in no particular order. NMS without centre fusion keeps the
/// same from them as from all when it has kept its `max_keep` by the `n`-th. Linear time,
/// so it can bound a list as it grows.
pub fn keep_most_probable(candidates: &mut Vec<Candidate>, n: usize) {
    candidates.retain(usable);
    if candidates.len() > n {
        if n > 0 {
            candidates.select_nth_unstable_by(n - 1, most_probable_first);
        }
        candidates.truncate(n);
    }
}

/// Keeps candidates in decreasing probability, dropping those a kept one suppresses (see
/// [`NmsConfig`]); at most `max_keep` are kept. Ties in probability are broken by position,
/// so the result does not depend on input order. `spacing_mm` converts the candidates'
/// voxel centres to millimetres.
///
/// Cost: a sort, then for each candidate a look at the kept ones in its neighbourhood
/// (a hash grid of cells as large as the largest candidate), so thousands of candidates
/// take milliseconds.
pub fn nms(
    mut candidates: Vec<Candidate>,
    spacing_mm: [f64; 3],
    config: &NmsConfig,
) -> Vec<Candidate> {
    candidates.retain(usable);
    candidates.sort_by(most_probable_first);
    let max_side = candidates.iter().map(|c| c.diameter_mm).fold(1.0, f64::max);
    let cell = max_side;
    let key = |mm: [f64; 3]| mm.map(|v| (v / cell).floor() as i64);
    let mut grid: std::collections::HashMap<[i64; 3], Vec<usize>> = Default::default();
    let mut kept: Vec<Candidate> = Vec::new();
    let mut kept_mm: Vec<[f64; 3]> = Vec::new();
    // Per kept candidate: sum of weights and of weighted centres (mm), for fusion.
    let mut fused: Vec<(f64, [f64; 3])> = Vec::new();
    for c in candidates {
        let full = kept.len() >= config.max_keep;
        if full && !config.fuse_centres {
            break;
        }
        let mm = [0, 1, 2].map(|a| c.centre_vox[a] * spacing_mm[a]);
        let k = key(mm);
        // Whether a kept one suppresses it, and the first (most probable) kept one whose
        // cube does: the one it is fused into.
        let mut suppressed = false;
        let mut first_by_iou: Option<usize> = None;
        'search: for dz in -1..=1 {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let Some(list) = grid.get(&[
                        k[0].saturating_add(dz),
                        k[1].saturating_add(dy),
                        k[2].saturating_add(dx),
                    ]) else {
                        continue;
                    };
                    for &i in list {
                        let iou = cube_iou(mm, c.diameter_mm, kept_mm[i], kept[i].diameter_mm);
                        if iou > config.max_iou {
                            suppressed = true;
                            first_by_iou = Some(first_by_iou.map_or(i, |j| j.min(i)));
                        } else if config.suppress_inside
                            && norm(sub(mm, kept_mm[i])) <= kept[i].diameter_mm / 2.0
                        {
                            suppressed = true;
                        }
                        if suppressed && !config.fuse_centres {
                            break 'search;
                        }
                    }
                }
            }
        }
        if let (true, Some(i)) = (config.fuse_centres, first_by_iou) {
            let w = f64::from(c.probability);
            fused[i].0 += w;
            fused[i].1 = [0, 1, 2].map(|a| fused[i].1[a] + w * mm[a]);
        }
        if !suppressed && !full {
            grid.entry(k).or_default().push(kept.len());
            let w = f64::from(c.probability);
            fused.push((w, mm.map(|v| w * v)));
            kept.push(c);
            kept_mm.push(mm);
        }
    }
    if config.fuse_centres {
        for (c, (w, sum)) in kept.iter_mut().zip(&fused) {
            if *w > 0.0 {
                c.centre_vox = [0, 1, 2].map(|a| sum[a] / w / spacing_mm[a]);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quadratic definition.
    fn naive(mut c: Vec<Candidate>, sp: [f64; 3], config: &NmsConfig) -> Vec<Candidate> {
        c.sort_by(|a, b| {
            b.probability
                .total_cmp(&a.probability)
                .then_with(|| a.centre_vox.partial_cmp(&b.centre_vox).unwrap())
                .then_with(|| a.diameter_mm.total_cmp(&b.diameter_mm))
        });
        let mm = |c: &Candidate| [0, 1, 2].map(|a| c.centre_vox[a] * sp[a]);
        let mut kept: Vec<(Candidate, f64, [f64; 3])> = Vec::new();
        for x in c {
            let by_iou = kept.iter().position(|(k, _, _)| {
                cube_iou(mm(&x), x.diameter_mm, mm(k), k.diameter_mm) > config.max_iou
            });
            let inside = kept.iter().any(|(k, _, _)| {
                let d = (0..3).map(|a| (mm(&x)[a] - mm(k)[a]).powi(2)).sum::<f64>();
                config.suppress_inside && d.sqrt() <= k.diameter_mm / 2.0
            });
            let w = x.probability as f64;
            if let Some(i) = by_iou {
                kept[i].1 += w;
                kept[i].2 = [0, 1, 2].map(|a| kept[i].2[a] + w * mm(&x)[a]);
            } else if !inside && kept.len() < config.max_keep {
                kept.push((x, w, mm(&x).map(|v| w * v)));
            }
        }
        kept.into_iter()
            .map(|(mut k, w, sum)| {
                if config.fuse_centres && w > 0.0 {
                    k.centre_vox = [0, 1, 2].map(|a| sum[a] / w / sp[a]);
                }
                k
            })
            .collect()
    }

    fn config(
        max_iou: f64,
        suppress_inside: bool,
        fuse_centres: bool,
        max_keep: usize,
    ) -> NmsConfig {
        NmsConfig {
            max_iou,
            suppress_inside,
            fuse_centres,
            max_keep,
        }
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
        for (inside, fuse) in [(false, false), (true, false), (true, true)] {
            let c = config(0.1, inside, fuse, 10_000);
            let ours = nms(cands.clone(), sp, &c);
            let theirs = naive(cands.clone(), sp, &c);
            assert_eq!(ours.len(), theirs.len());
            for (a, b) in ours.iter().zip(&theirs) {
                // Fused centres are sums in another order: equal to rounding.
                assert_eq!(
                    (a.probability, a.diameter_mm),
                    (b.probability, b.diameter_mm)
                );
                assert!((0..3).all(|k| (a.centre_vox[k] - b.centre_vox[k]).abs() < 1e-9));
            }
            assert!(ours.len() > 10 && ours.len() < 5000);
            let mut reversed = cands.clone();
            reversed.reverse();
            assert_eq!(nms(reversed, sp, &c), ours, "order independent");
            let seven = config(0.1, inside, fuse, 7);
            assert_eq!(
                nms(cands.clone(), sp, &seven),
                naive(cands.clone(), sp, &seven)
            );
        }
    }

    #[test]
    fn keeping_the_most_probable_keeps_what_nms_looks_at_first() {
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut cands: Vec<Candidate> = (0..3000)
            .map(|_| Candidate {
                centre_vox: [
                    rng.uniform() * 60.0,
                    rng.uniform() * 60.0,
                    rng.uniform() * 60.0,
                ],
                diameter_mm: 3.0 + rng.uniform() * 10.0,
                // Few distinct values: many ties, broken by position.
                probability: (rng.below(20) as f32) / 20.0,
            })
            .collect();
        cands[7].centre_vox[1] = f64::NAN;
        cands[8].probability = f32::NAN;
        let mut sorted = cands.clone();
        sorted.retain(usable);
        sorted.sort_by(most_probable_first);
        assert_eq!(sorted.len(), 2998);
        for n in [0, 1, 500, 2998, 5000] {
            let mut a = cands.clone();
            keep_most_probable(&mut a, n);
            a.sort_by(most_probable_first);
            assert_eq!(a, sorted[..n.min(2998)], "n = {n}");
            let mut b: Vec<Candidate> = cands.iter().rev().copied().collect();
            keep_most_probable(&mut b, n);
            b.sort_by(most_probable_first);
            assert_eq!(a, b, "order independent");
        }
        // NMS that fills its 20 within the 500 most probable keeps the same from them.
        let c = config(0.1, true, false, 20);
        let mut top = cands.clone();
        keep_most_probable(&mut top, 500);
        let all = nms(cands, [1.0; 3], &c);
        assert_eq!(all.len(), 20);
        assert_eq!(nms(top, [1.0; 3], &c), all);
    }

    #[test]
    fn a_small_candidate_inside_a_large_one_is_suppressed_only_when_asked() {
        let c = |z: f64, d: f64, p: f32| Candidate {
            centre_vox: [z, 50.0, 50.0],
            diameter_mm: d,
            probability: p,
        };
        // 24 mm nodule and an 8 mm candidate 6 mm from its centre: cube IoU 1/27 < 0.1.
        let big = c(50.0, 24.0, 0.99);
        let small = c(56.0, 8.0, 0.9);
        // Another 8 mm candidate 13 mm away: outside the big one's radius.
        let apart = c(63.0, 8.0, 0.8);
        let all = vec![small, big, apart];
        let c = config(0.1, false, false, 10);
        assert_eq!(nms(all.clone(), [1.0; 3], &c), vec![big, small, apart]);
        let c = config(0.1, true, false, 10);
        assert_eq!(nms(all.clone(), [1.0; 3], &c), vec![big, apart]);
        // Inside-suppressed candidates are not fused: the centre stays.
        let c = config(0.1, true, true, 10);
        assert_eq!(nms(all, [1.0; 3], &c), vec![big, apart]);
    }

    #[test]
    fn fusion_averages_the_centres_an_overlapping_cube_suppressed() {
        let c = |z: f64, p: f32| Candidate {
            centre_vox: [z, 50.0, 50.0],
            diameter_mm: 10.0,
            probability: p,
        };
        // Two 10 mm cubes 2 mm apart along z (IoU 0.8), weights 0.75 and 0.25: the kept
        // centre moves a quarter of the way, 0.5 mm, which is 0.25 voxels at 2 mm.
        let config = config(0.1, true, true, 10);
        let fused = nms(vec![c(50.0, 0.75), c(51.0, 0.25)], [2.0, 1.0, 1.0], &config);
        assert_eq!(fused.len(), 1);
        assert!((fused[0].centre_vox[0] - 50.25).abs() < 1e-12, "{fused:?}");
        assert_eq!(fused[0].probability, 0.75);
    }
}
