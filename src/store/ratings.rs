//! Ratings from `medgen review`: blind pairwise outcomes between two models (tables `ratings`) and
//! warping-error levels per video (`warping_ratings`). Rating the same thing again replaces the row.

use super::{Store, StoreError, now_sql};
use rusqlite::params;
use rusqlite::types::Type;
use serde::{Deserialize, Serialize};

/// The outcome of one pairwise comparison, in model terms (never left/right). The paper's three
/// outcomes: model A wins, both lose, model B wins (there is no "both good").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Model A's video is better.
    AWins,
    /// Neither video is acceptable.
    BothLose,
    /// Model B's video is better.
    BWins,
}

impl Outcome {
    /// All outcomes, in the order results list them.
    pub const ALL: [Outcome; 3] = [Outcome::AWins, Outcome::BothLose, Outcome::BWins];

    /// The name stored in the catalog and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::AWins => "a_wins",
            Outcome::BothLose => "both_lose",
            Outcome::BWins => "b_wins",
        }
    }

    /// Parse [`Outcome::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// A warping-error rating of one video (the paper's four levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarpLevel {
    /// No warping.
    No,
    /// Minor warping.
    Minor,
    /// Moderate warping (counts as a warping error).
    Moderate,
    /// Severe warping (counts as a warping error).
    Severe,
}

impl WarpLevel {
    /// All levels, mildest first.
    pub const ALL: [WarpLevel; 4] = [WarpLevel::No, WarpLevel::Minor, WarpLevel::Moderate, WarpLevel::Severe];

    /// The name stored in the catalog and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            WarpLevel::No => "no",
            WarpLevel::Minor => "minor",
            WarpLevel::Moderate => "moderate",
            WarpLevel::Severe => "severe",
        }
    }

    /// Parse [`WarpLevel::as_str`]'s names.
    pub fn parse(s: &str) -> Option<WarpLevel> {
        WarpLevel::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// Whether this level counts as a warping error (Moderate or Severe).
    pub fn is_error(self) -> bool {
        matches!(self, WarpLevel::Moderate | WarpLevel::Severe)
    }
}

/// One row of `ratings`: a rater's outcome for one criterion of one prompt's pair of videos.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatingRow {
    /// Model A of the pair.
    pub model_a: String,
    /// Model B of the pair.
    pub model_b: String,
    /// The prompt both videos were made for.
    pub prompt_id: String,
    /// The rater's name.
    pub rater: String,
    /// The criterion (`text_alignment`, `medical_accuracy`, `visual_quality`).
    pub criterion: String,
    /// The outcome in model terms.
    pub outcome: Outcome,
    /// Which model the rater saw on the left (the blinding, kept for audits).
    pub left_model: String,
    /// When it was (last) rated; set by the store, ignored on write.
    pub created_at: String,
}

/// One row of `warping_ratings`: a rater's warping-error level for one model's video of one prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarpingRow {
    /// The model that made the video.
    pub model: String,
    /// The prompt.
    pub prompt_id: String,
    /// The rater's name.
    pub rater: String,
    /// The level.
    pub level: WarpLevel,
    /// When it was (last) rated; set by the store, ignored on write.
    pub created_at: String,
}

impl Store {
    /// Record ratings and warping levels in one transaction; a row for the same (pair, prompt,
    /// rater, criterion) or (model, prompt, rater) replaces the earlier one.
    pub fn upsert_ratings(&self, ratings: &[RatingRow], warping: &[WarpingRow]) -> Result<(), StoreError> {
        self.write("record ratings", |c| {
            let mut stmt = c.prepare_cached(concat!(
                "INSERT INTO ratings (model_a, model_b, prompt_id, rater, criterion, outcome, left_model, ",
                "created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ",
                now_sql!(),
                ") ON CONFLICT (model_a, model_b, prompt_id, rater, criterion) DO UPDATE SET ",
                "outcome = excluded.outcome, left_model = excluded.left_model, created_at = excluded.created_at"
            ))?;
            for r in ratings {
                stmt.execute(params![
                    r.model_a,
                    r.model_b,
                    r.prompt_id,
                    r.rater,
                    r.criterion,
                    r.outcome.as_str(),
                    r.left_model
                ])?;
            }
            let mut stmt = c.prepare_cached(concat!(
                "INSERT INTO warping_ratings (model, prompt_id, rater, level, created_at) VALUES (?1, ?2, ?3, ?4, ",
                now_sql!(),
                ") ON CONFLICT (model, prompt_id, rater) DO UPDATE SET level = excluded.level, ",
                "created_at = excluded.created_at"
            ))?;
            for w in warping {
                stmt.execute(params![w.model, w.prompt_id, w.rater, w.level.as_str()])?;
            }
            Ok(())
        })
    }

    /// The ratings of the pair (`model_a`, `model_b`), ordered by prompt, rater and criterion.
    pub fn ratings(&self, model_a: &str, model_b: &str) -> Result<Vec<RatingRow>, StoreError> {
        self.read("list ratings", |c| {
            let mut stmt = c.prepare_cached(
                "SELECT model_a, model_b, prompt_id, rater, criterion, outcome, left_model, created_at FROM ratings \
                 WHERE model_a = ?1 AND model_b = ?2 ORDER BY prompt_id, rater, criterion",
            )?;
            let rows = stmt.query_map([model_a, model_b], |r| {
                let outcome: String = r.get(5)?;
                let outcome = Outcome::parse(&outcome).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        5,
                        Type::Text,
                        format!("unknown outcome `{outcome}`").into(),
                    )
                })?;
                Ok(RatingRow {
                    model_a: r.get(0)?,
                    model_b: r.get(1)?,
                    prompt_id: r.get(2)?,
                    rater: r.get(3)?,
                    criterion: r.get(4)?,
                    outcome,
                    left_model: r.get(6)?,
                    created_at: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    /// The warping-error ratings of `model`'s videos, ordered by prompt and rater.
    pub fn warping_ratings(&self, model: &str) -> Result<Vec<WarpingRow>, StoreError> {
        self.read("list warping ratings", |c| {
            let mut stmt = c.prepare_cached(
                "SELECT model, prompt_id, rater, level, created_at FROM warping_ratings WHERE model = ?1 \
                 ORDER BY prompt_id, rater",
            )?;
            let rows = stmt.query_map([model], |r| {
                let level: String = r.get(3)?;
                let level = WarpLevel::parse(&level).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(3, Type::Text, format!("unknown level `{level}`").into())
                })?;
                Ok(WarpingRow {
                    model: r.get(0)?,
                    prompt_id: r.get(1)?,
                    rater: r.get(2)?,
                    level,
                    created_at: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rating(rater: &str, outcome: Outcome) -> RatingRow {
        RatingRow {
            model_a: "a".into(),
            model_b: "b".into(),
            prompt_id: "p1".into(),
            rater: rater.into(),
            criterion: "visual_quality".into(),
            outcome,
            left_model: "b".into(),
            created_at: String::new(),
        }
    }

    #[test]
    fn rerating_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let warp = |level| WarpingRow {
            model: "a".into(),
            prompt_id: "p1".into(),
            rater: "ana".into(),
            level,
            created_at: String::new(),
        };
        store.upsert_ratings(&[rating("ana", Outcome::AWins)], &[warp(WarpLevel::Severe)]).unwrap();
        store
            .upsert_ratings(&[rating("ana", Outcome::BWins), rating("ben", Outcome::BothLose)], &[warp(WarpLevel::No)])
            .unwrap();
        let rows = store.ratings("a", "b").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].rater.as_str(), rows[0].outcome), ("ana", Outcome::BWins));
        assert_eq!((rows[1].rater.as_str(), rows[1].outcome), ("ben", Outcome::BothLose));
        assert!(rows[0].created_at.ends_with('Z'));
        assert!(store.ratings("b", "a").unwrap().is_empty());
        let w = store.warping_ratings("a").unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].level, WarpLevel::No);
    }
}
