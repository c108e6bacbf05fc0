//! The numbers of `medgen review`'s results: the paper's Fig. 6 counts (per criterion, how often
//! model A won, both lost, model B won), the warping-error rate per model, and Cohen's kappa between
//! every pair of raters.

use crate::store::{Outcome, RatingRow, WarpLevel, WarpingRow};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Fig. 6 counts for one criterion: every (rater, prompt) rating counts once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CriterionCounts {
    /// The criterion's id (`text_alignment`, …).
    pub criterion: String,
    /// Ratings where model A won.
    pub a_wins: u64,
    /// Ratings where both videos lost.
    pub both_lose: u64,
    /// Ratings where model B won.
    pub b_wins: u64,
}

impl CriterionCounts {
    /// All ratings of this criterion.
    pub fn total(&self) -> u64 {
        self.a_wins + self.both_lose + self.b_wins
    }
}

/// Count outcomes per criterion, in the order of `criteria` (criteria with no ratings count zero).
pub fn fig6_counts(ratings: &[RatingRow], criteria: &[&str]) -> Vec<CriterionCounts> {
    criteria
        .iter()
        .map(|&c| {
            let mut counts = CriterionCounts { criterion: c.to_string(), a_wins: 0, both_lose: 0, b_wins: 0 };
            for r in ratings.iter().filter(|r| r.criterion == c) {
                match r.outcome {
                    Outcome::AWins => counts.a_wins += 1,
                    Outcome::BothLose => counts.both_lose += 1,
                    Outcome::BWins => counts.b_wins += 1,
                }
            }
            counts
        })
        .collect()
}

/// The warping-error (WE) rate of one model.
///
/// Rule: a video is *judged* when at least `min_raters` raters rated it; it is a *warping error* when
/// at least `min_raters` of them rated it Moderate or Severe. WE = errors / judged (undefined when
/// no video is judged). The paper uses three raters and `min_raters` = 2.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WarpingRate {
    /// The model.
    pub model: String,
    /// Videos rated by at least `min_raters` raters (the denominator).
    pub judged: u64,
    /// Of those, videos rated Moderate or Severe by at least `min_raters` raters.
    pub errors: u64,
    /// errors / judged; `None` when no video is judged.
    pub rate: Option<f64>,
    /// The agreement threshold used.
    pub min_raters: u64,
    /// How many videos got each level, over all ratings (No, Minor, Moderate, Severe).
    pub levels: BTreeMap<String, u64>,
}

/// The WE rate of `model` from its warping ratings (rows of other models are ignored).
pub fn warping_rate(model: &str, rows: &[WarpingRow], min_raters: u64) -> WarpingRate {
    let mut per_video: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut levels: BTreeMap<String, u64> = WarpLevel::ALL.iter().map(|l| (l.as_str().to_string(), 0)).collect();
    for r in rows.iter().filter(|r| r.model == model) {
        let e = per_video.entry(r.prompt_id.as_str()).or_default();
        e.0 += 1;
        e.1 += u64::from(r.level.is_error());
        *levels.entry(r.level.as_str().to_string()).or_default() += 1;
    }
    let judged = per_video.values().filter(|(n, _)| *n >= min_raters).count() as u64;
    let errors = per_video.values().filter(|(n, e)| *n >= min_raters && *e >= min_raters).count() as u64;
    let rate = (judged > 0).then(|| errors as f64 / judged as f64);
    WarpingRate { model: model.to_string(), judged, errors, rate, min_raters, levels }
}

/// Cohen's kappa of two raters over the items both rated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kappa {
    /// Items both raters rated.
    pub n: u64,
    /// Observed agreement p_o (`None` when n = 0).
    pub observed: Option<f64>,
    /// Agreement expected by chance p_e from the two raters' marginals (`None` when n = 0).
    pub expected: Option<f64>,
    /// (p_o − p_e) / (1 − p_e); `None` (undefined) when n = 0 or p_e = 1 (both raters used one and
    /// the same category for every item).
    pub kappa: Option<f64>,
}

/// Unweighted Cohen's kappa over `pairs` of (rater 1's category, rater 2's category). Computed from
/// integer counts, so p_e = 1 is detected exactly.
pub fn cohen_kappa<T: Ord>(pairs: &[(T, T)]) -> Kappa {
    let n = pairs.len() as u64;
    if n == 0 {
        return Kappa { n, observed: None, expected: None, kappa: None };
    }
    let agree = pairs.iter().filter(|(x, y)| x == y).count() as u64;
    let mut first: BTreeMap<&T, u64> = BTreeMap::new();
    let mut second: BTreeMap<&T, u64> = BTreeMap::new();
    for (x, y) in pairs {
        *first.entry(x).or_default() += 1;
        *second.entry(y).or_default() += 1;
    }
    // p_e · n² and p_o · n², exactly.
    let chance: u64 = first.iter().map(|(k, c)| c * second.get(k).copied().unwrap_or(0)).sum();
    let nn = n * n;
    let observed = agree as f64 / n as f64;
    let expected = chance as f64 / nn as f64;
    let kappa = (chance != nn).then(|| (agree * n) as f64 - chance as f64).map(|num| num / (nn - chance) as f64);
    Kappa { n, observed: Some(observed), expected: Some(expected), kappa }
}

/// Agreement of two raters on one scale.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RaterAgreement {
    /// The first rater (alphabetically).
    pub rater_1: String,
    /// The second rater.
    pub rater_2: String,
    /// A criterion id, or `warping` for the warping-error levels.
    pub scale: String,
    /// The statistic.
    #[serde(flatten)]
    pub kappa: Kappa,
}

/// Cohen's kappa for every pair of raters (who rated anything), on each criterion (items: prompts;
/// categories: the three outcomes) and on the warping levels (items: (model, prompt) videos;
/// categories: the four levels).
pub fn agreements(ratings: &[RatingRow], warping: &[WarpingRow], criteria: &[&str]) -> Vec<RaterAgreement> {
    let raters: BTreeSet<&str> =
        ratings.iter().map(|r| r.rater.as_str()).chain(warping.iter().map(|w| w.rater.as_str())).collect();
    let raters: Vec<&str> = raters.into_iter().collect();
    let mut by_criterion: BTreeMap<(&str, &str, &str), Outcome> = BTreeMap::new();
    for r in ratings {
        by_criterion.insert((r.criterion.as_str(), r.rater.as_str(), r.prompt_id.as_str()), r.outcome);
    }
    let mut by_video: BTreeMap<(&str, &str, &str), WarpLevel> = BTreeMap::new();
    for w in warping {
        by_video.insert((w.rater.as_str(), w.model.as_str(), w.prompt_id.as_str()), w.level);
    }
    let mut out = Vec::new();
    for (i, &r1) in raters.iter().enumerate() {
        for &r2 in &raters[i + 1..] {
            for &c in criteria {
                let pairs: Vec<(Outcome, Outcome)> = by_criterion
                    .range((c, r1, "")..)
                    .take_while(|((cc, rr, _), _)| *cc == c && *rr == r1)
                    .filter_map(|((_, _, p), o1)| by_criterion.get(&(c, r2, p)).map(|o2| (*o1, *o2)))
                    .collect();
                out.push(RaterAgreement {
                    rater_1: r1.to_string(),
                    rater_2: r2.to_string(),
                    scale: c.to_string(),
                    kappa: cohen_kappa(&pairs),
                });
            }
            let pairs: Vec<(WarpLevel, WarpLevel)> = by_video
                .range((r1, "", "")..)
                .take_while(|((rr, _, _), _)| *rr == r1)
                .filter_map(|((_, m, p), l1)| by_video.get(&(r2, m, p)).map(|l2| (*l1, *l2)))
                .collect();
            out.push(RaterAgreement {
                rater_1: r1.to_string(),
                rater_2: r2.to_string(),
                scale: "warping".to_string(),
                kappa: cohen_kappa(&pairs),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(x: Option<f64>, want: f64) -> bool {
        x.is_some_and(|x| (x - want).abs() < 1e-12)
    }

    #[test]
    fn kappa_hand_computed() {
        // 2×2 textbook case: 10 items, agree on 7 (4 yes/yes, 3 no/no).
        // Rater 1: yes 6, no 4; rater 2: yes 5, no 5. p_o = 0.7, p_e = 0.6·0.5 + 0.4·0.5 = 0.5,
        // kappa = 0.2 / 0.5 = 0.4.
        let mut pairs = vec![("y", "y"); 4];
        pairs.extend([("y", "n"), ("y", "n"), ("n", "y")]);
        pairs.extend([("n", "n"); 3]);
        let k = cohen_kappa(&pairs);
        assert_eq!(k.n, 10);
        assert!(close(k.observed, 0.7) && close(k.expected, 0.5) && close(k.kappa, 0.4), "{k:?}");

        // Three categories: (a,a) (a,b) (c,c). p_o = 2/3; marginals r1 a 2/3 c 1/3, r2 a/b/c 1/3 each;
        // p_e = 2/9 + 1/9 = 1/3; kappa = (1/3) / (2/3) = 0.5.
        let k = cohen_kappa(&[("a", "a"), ("a", "b"), ("c", "c")]);
        assert!(close(k.kappa, 0.5), "{k:?}");

        // Perfect disagreement on two balanced categories: p_o = 0, p_e = 0.5, kappa = −1.
        let k = cohen_kappa(&[(1, 2), (2, 1)]);
        assert!(close(k.kappa, -1.0), "{k:?}");

        // Perfect agreement with two categories used: kappa = 1.
        let k = cohen_kappa(&[(1, 1), (2, 2), (2, 2)]);
        assert!(close(k.kappa, 1.0), "{k:?}");
    }

    #[test]
    fn kappa_degenerate_cases_are_undefined_not_nan() {
        // Both raters used the same single category: p_o = p_e = 1 → undefined.
        let k = cohen_kappa(&[("a", "a"), ("a", "a"), ("a", "a")]);
        assert_eq!((k.n, k.kappa), (3, None));
        assert!(close(k.observed, 1.0) && close(k.expected, 1.0));
        // No common items.
        let k = cohen_kappa::<u8>(&[]);
        assert_eq!(k, Kappa { n: 0, observed: None, expected: None, kappa: None });
        // One rater constant, the other not: p_e = 0.5·1 = 0.5 (defined); p_o = 0.5 → kappa 0.
        let k = cohen_kappa(&[("a", "a"), ("a", "b")]);
        assert!(close(k.kappa, 0.0), "{k:?}");
    }

    fn warp(model: &str, prompt: &str, rater: &str, level: WarpLevel) -> WarpingRow {
        WarpingRow {
            model: model.into(),
            prompt_id: prompt.into(),
            rater: rater.into(),
            level,
            created_at: String::new(),
        }
    }

    #[test]
    fn warping_rate_majority_rule() {
        use WarpLevel::*;
        let rows = vec![
            // p1: 2 of 3 say Moderate/Severe → error.
            warp("m", "p1", "r1", Severe),
            warp("m", "p1", "r2", Moderate),
            warp("m", "p1", "r3", No),
            // p2: 1 of 3 → judged, no error.
            warp("m", "p2", "r1", Severe),
            warp("m", "p2", "r2", Minor),
            warp("m", "p2", "r3", Minor),
            // p3: one rating only → not judged.
            warp("m", "p3", "r1", Severe),
            // Other model: ignored.
            warp("x", "p1", "r1", Severe),
            warp("x", "p1", "r2", Severe),
        ];
        let we = warping_rate("m", &rows, 2);
        assert_eq!((we.judged, we.errors), (2, 1));
        assert!(close(we.rate, 0.5));
        assert_eq!(we.levels["severe"], 3);
        assert_eq!(we.levels["no"], 1);
        assert_eq!(warping_rate("none", &rows, 2).rate, None);
    }

    fn rating(rater: &str, prompt: &str, criterion: &str, outcome: Outcome) -> RatingRow {
        RatingRow {
            model_a: "a".into(),
            model_b: "b".into(),
            prompt_id: prompt.into(),
            rater: rater.into(),
            criterion: criterion.into(),
            outcome,
            left_model: "a".into(),
            created_at: String::new(),
        }
    }

    #[test]
    fn counts_and_pairwise_agreement() {
        use Outcome::*;
        let ratings = vec![
            rating("ana", "p1", "ta", AWins),
            rating("ana", "p2", "ta", AWins),
            rating("ana", "p3", "ta", BothLose),
            rating("ben", "p1", "ta", AWins),
            rating("ben", "p2", "ta", BWins),
            rating("ben", "p3", "ta", BothLose),
            rating("cy", "p3", "ta", BothLose),
        ];
        let counts = fig6_counts(&ratings, &["ta", "va"]);
        assert_eq!(counts[0], CriterionCounts { criterion: "ta".into(), a_wins: 3, both_lose: 3, b_wins: 1 });
        assert_eq!(counts[1].total(), 0);
        let warping = vec![warp("a", "p1", "ana", WarpLevel::No), warp("a", "p1", "cy", WarpLevel::No)];
        let ag = agreements(&ratings, &warping, &["ta"]);
        let get = |r1: &str, r2: &str, s: &str| {
            ag.iter().find(|a| a.rater_1 == r1 && a.rater_2 == r2 && a.scale == s).unwrap().kappa.clone()
        };
        assert_eq!(ag.len(), 3 * 2);
        let k = get("ana", "ben", "ta");
        assert_eq!(k.n, 3);
        assert!(close(k.kappa, 0.5), "{k:?}");
        // ana/cy share p3 only, both "both lose": p_e = 1 → undefined.
        assert_eq!(get("ana", "cy", "ta").n, 1);
        assert_eq!(get("ana", "cy", "ta").kappa, None);
        assert_eq!(get("ana", "cy", "warping").n, 1);
        assert_eq!(get("ana", "ben", "warping").n, 0);
    }
}
