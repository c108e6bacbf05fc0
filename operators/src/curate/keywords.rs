//! Keyword dictionaries and whole-word, case- and plural-insensitive phrase matching, for
//! `curate.metadata_filter`.
//!
//! Text and terms are both cut into word tokens: lowercase, split at every character that is not
//! a letter or digit (so hyphens and spaces are the same), apostrophes dropped (`crohn's` →
//! `crohns`). Each token is then spelled canonically: in words of five letters or more `ae` and
//! `oe` become `e` (`haemorrhage`, `oesophagus`), a final `our`/`ours` becomes `or`/`ors` (`tumour`) and
//! `isation` becomes `ization`. A dictionary term also matches with its last word in any of its
//! English and Latin/Greek plural (or singular) forms: artery/arteries, vertebra/vertebrae,
//! bronchus/bronchi, diagnosis/diagnoses, septum/septa, appendix/appendices, ganglion/ganglia.
//! Matching scans the text left to right and takes the longest term starting at each word, so
//! "heart valve replacement" counts once, not also as "heart valve".

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

/// The text of the built-in dictionary (`builtin:medical`).
pub const BUILTIN_MEDICAL: &str = include_str!("medical_terms.txt");

/// Cut text into canonical word tokens.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            cur.extend(c.to_lowercase());
        } else if c == '\'' || c == '\u{2019}' {
            // apostrophes join: crohn's → crohns
        } else if !cur.is_empty() {
            out.push(canonical(&cur));
            cur.clear();
        }
    }
    if !cur.is_empty() {
        out.push(canonical(&cur));
    }
    out
}

/// British → American spelling of one lowercase token (see the module docs).
fn canonical(token: &str) -> String {
    let mut t = token.to_string();
    if t.chars().count() >= 5 {
        t = t.replace("ae", "e").replace("oe", "e");
    }
    if t.len() > 4 {
        if let Some(stem) = t.strip_suffix("our") {
            t = format!("{stem}or");
        } else if let Some(stem) = t.strip_suffix("ours").filter(|s| s.len() > 1) {
            t = format!("{stem}ors");
        }
    }
    if let Some(stem) = t.strip_suffix("isation") {
        t = format!("{stem}ization");
    } else if let Some(stem) = t.strip_suffix("isations") {
        t = format!("{stem}izations");
    }
    t
}

/// The word itself plus its plural and singular forms (lowercase, before canonical spelling).
fn inflections(w: &str) -> Vec<String> {
    let mut v = vec![w.to_string()];
    let ends = |s: &str| w.ends_with(s);
    let stem = |n: usize| &w[..w.len() - n];
    let vowel = |c: Option<char>| matches!(c, Some('a' | 'e' | 'i' | 'o' | 'u'));
    if !w.chars().all(|c| c.is_alphabetic()) || w.len() < 3 {
        // numbers and short abbreviations: only a plain `s` plural (ecg → ecgs)
        if w.chars().any(|c| c.is_alphabetic()) {
            v.push(format!("{w}s"));
        }
        return v;
    }
    // Plurals.
    if ends("s") || ends("x") || ends("z") || ends("ch") || ends("sh") {
        v.push(format!("{w}es"));
    } else if ends("y") && !vowel(w[..w.len() - 1].chars().last()) {
        v.push(format!("{}ies", stem(1)));
    } else {
        v.push(format!("{w}s"));
    }
    if ends("is") {
        v.push(format!("{}es", stem(2))); // diagnosis → diagnoses
    }
    if ends("us") {
        v.push(format!("{}i", stem(2))); // bronchus → bronchi
    }
    if ends("um") {
        v.push(format!("{}a", stem(2))); // septum → septa
    }
    if ends("on") {
        v.push(format!("{}a", stem(2))); // ganglion → ganglia
    }
    if ends("a") {
        v.push(format!("{w}e")); // vertebra → vertebrae
    }
    if ends("ex") || ends("ix") {
        v.push(format!("{}ices", stem(2))); // appendix → appendices
    }
    if ends("fe") {
        v.push(format!("{}ves", stem(2)));
    } else if ends("f") {
        v.push(format!("{}ves", stem(1)));
    }
    for (one, many) in [("tooth", "teeth"), ("foot", "feet"), ("child", "children"), ("louse", "lice"), ("man", "men")]
    {
        if let Some(s) = w.strip_suffix(one) {
            v.push(format!("{s}{many}"));
        }
        if let Some(s) = w.strip_suffix(many) {
            v.push(format!("{s}{one}"));
        }
    }
    // Singulars, for terms written in the plural.
    if ends("ies") {
        v.push(format!("{}y", stem(3)));
    } else if ends("es") && (w.ends_with("ses") || w.ends_with("xes") || w.ends_with("ches") || w.ends_with("shes")) {
        v.push(stem(2).to_string());
    } else if ends("s") && !ends("ss") && !ends("us") && !ends("is") {
        v.push(stem(1).to_string());
    }
    v.sort();
    v.dedup();
    v
}

/// A set of terms to find in text.
#[derive(Clone, Debug, Default)]
pub struct Dictionary {
    /// Canonical token sequence (joined by spaces) of every form → (term index, whether it is the
    /// term's own form rather than an inflection). A term's own form wins over another term's
    /// inflection of it ("pediatric" is its own term even after "pediatrics").
    forms: HashMap<String, (usize, bool)>,
    /// Terms as first written.
    terms: Vec<String>,
    /// Most tokens in any form.
    max_tokens: usize,
}

static BUILTIN: LazyLock<Dictionary> = LazyLock::new(|| {
    let mut d = Dictionary::default();
    for (_, term) in parse_list(BUILTIN_MEDICAL) {
        d.add(&term);
    }
    d
});

/// Non-empty lines of a term list with their 1-based line numbers, `#` comments and surrounding
/// whitespace removed.
pub fn parse_list(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.split('#').next().unwrap_or("").trim();
            (!l.is_empty()).then(|| (i + 1, l.to_string()))
        })
        .collect()
}

impl Dictionary {
    /// The built-in medical dictionary (`builtin:medical`).
    pub fn builtin_medical() -> Dictionary {
        BUILTIN.clone()
    }

    /// Add a term; returns false when it has no words or is already in the dictionary.
    pub fn add(&mut self, term: &str) -> bool {
        let tokens: Vec<String> = {
            // Raw lowercase tokens first: inflect the last one, then spell canonically.
            let mut raw = Vec::new();
            let mut cur = String::new();
            for c in term.chars() {
                if c.is_alphanumeric() {
                    cur.extend(c.to_lowercase());
                } else if c == '\'' || c == '\u{2019}' {
                } else if !cur.is_empty() {
                    raw.push(std::mem::take(&mut cur));
                }
            }
            if !cur.is_empty() {
                raw.push(cur);
            }
            raw
        };
        let Some((last, head)) = tokens.split_last() else { return false };
        let head: Vec<String> = head.iter().map(|t| canonical(t)).collect();
        let base = {
            let mut k = head.clone();
            k.push(canonical(last));
            k.join(" ")
        };
        if self.forms.get(&base).is_some_and(|(_, own)| *own) {
            return false;
        }
        let id = self.terms.len();
        self.terms.push(term.trim().to_string());
        self.forms.insert(base, (id, true));
        for form in inflections(last) {
            let mut k = head.clone();
            k.push(canonical(&form));
            self.forms.entry(k.join(" ")).or_insert((id, false));
        }
        self.max_tokens = self.max_tokens.max(tokens.len());
        true
    }

    /// Number of distinct terms.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Whether the dictionary has no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The distinct terms found in `text` (as written in the dictionary), sorted.
    pub fn find(&self, text: &str) -> Vec<String> {
        let tokens = tokenize(text);
        let mut found = BTreeSet::new();
        let mut i = 0;
        while i < tokens.len() {
            let mut matched = 0;
            for n in (1..=self.max_tokens.min(tokens.len() - i)).rev() {
                if let Some((id, _)) = self.forms.get(&tokens[i..i + n].join(" ")) {
                    found.insert(*id);
                    matched = n;
                    break;
                }
            }
            i += matched.max(1);
        }
        let mut out: Vec<String> = found.into_iter().map(|id| self.terms[id].clone()).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_several_hundred_terms_across_fields() {
        let d = Dictionary::builtin_medical();
        assert!(d.len() > 800, "{}", d.len());
        for t in ["laparoscopy", "echocardiography", "femur", "cardiology", "mri", "appendectomy", "glaucoma"] {
            assert_eq!(d.find(t), vec![t.to_string()], "{t}");
        }
    }

    #[test]
    fn matches_whole_words_case_and_plural_insensitively() {
        let d = Dictionary::builtin_medical();
        assert_eq!(d.find("LAPAROSCOPIC Cholecystectomy, step by step"), vec!["cholecystectomy", "laparoscopic"]);
        assert_eq!(d.find("Coronary arteries and two vertebrae"), vec!["coronary artery", "vertebra"]);
        assert_eq!(d.find("differential diagnoses of the bronchi"), vec!["bronchus", "differential diagnosis"]);
        assert_eq!(d.find("appendices"), Vec::<String>::new(), "appendix is not a dictionary term");
        // British spellings, hyphens, apostrophes
        assert_eq!(
            d.find("Paediatric haemorrhage and oesophageal tumours"),
            vec!["esophageal", "hemorrhage", "pediatric", "tumor"]
        );
        assert_eq!(d.find("Chest X-ray vs chest x ray"), vec!["chest x-ray"]);
        assert_eq!(d.find("Crohn's disease and Crohns disease"), vec!["crohn's disease"]);
        // Word boundaries: no match inside words
        assert!(d.find("smriti and ultrasoundscape and transurgery").is_empty());
        // Longest match first: counted once
        assert_eq!(d.find("knee replacement"), vec!["knee replacement"]);
        assert_eq!(d.find("type 2 diabetes"), vec!["type 2 diabetes"]);
        // Not medical
        assert!(d.find("My cat's heart melted: a stroke of luck in the colon of the sentence").is_empty());
        assert!(d.find("").is_empty());
    }

    #[test]
    fn user_terms_add_and_inflect() {
        let mut d = Dictionary::default();
        assert!(d.add("Ganglion"));
        assert!(d.add("foot ulcer"));
        assert!(d.add("septum"));
        assert!(d.add("wisdom tooth"));
        assert!(!d.add("ganglion"), "duplicates are ignored");
        assert!(!d.add("  - "), "no words");
        assert_eq!(d.len(), 4);
        assert_eq!(
            d.find("ganglia; foot ulcers; septa; wisdom teeth"),
            vec!["Ganglion", "foot ulcer", "septum", "wisdom tooth"]
        );
        let list = parse_list("# comment\n\nterm one  # trailing\n  two\n");
        assert_eq!(list, vec![(3, "term one".to_string()), (4, "two".to_string())]);
    }

    #[test]
    fn inflections_cover_latin_and_english_plurals() {
        let has = |w: &str, f: &str| inflections(w).iter().any(|x| x == f);
        assert!(has("artery", "arteries"));
        assert!(has("diagnosis", "diagnoses"));
        assert!(has("bronchus", "bronchi"));
        assert!(has("atrium", "atria"));
        assert!(has("vertebra", "vertebrae"));
        assert!(has("cortex", "cortices"));
        assert!(has("lungs", "lung"));
        assert!(has("ecg", "ecgs"));
        assert!(has("x", "x"));
        assert_eq!(canonical("haematoma"), "hematoma");
        assert_eq!(canonical("tumour"), "tumor");
        assert_eq!(canonical("four"), "four");
        assert_eq!(canonical("catheterisation"), "catheterization");
    }
}
