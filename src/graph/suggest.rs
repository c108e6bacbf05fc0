//! "Did you mean ...?" suggestions.

/// The candidates closest to `word`, best first (at most three), among those similar enough to be
/// a plausible typo: at most a third of the longer word's characters edited (insertions, deletions,
/// substitutions and swaps of neighbours; at least one edit allowed), or one word a prefix of the
/// other (`in` / `input`, `min_sec` / `min_seconds`). Case is ignored.
pub fn did_you_mean<'c, I>(word: &str, candidates: I) -> Vec<&'c str>
where
    I: IntoIterator<Item = &'c str>,
{
    let w = word.to_lowercase();
    if w.is_empty() {
        return Vec::new();
    }
    let mut scored: Vec<(usize, f64, &'c str)> = Vec::new();
    for cand in candidates {
        if cand == word || cand.is_empty() {
            continue;
        }
        let c = cand.to_lowercase();
        let edits = strsim::osa_distance(&w, &c);
        let longer = w.chars().count().max(c.chars().count());
        let shorter = w.chars().count().min(c.chars().count());
        let prefix = shorter >= 2 && (c.starts_with(&w) || w.starts_with(&c));
        if edits <= (longer / 3).max(1) || prefix {
            scored.push((edits, strsim::jaro_winkler(&w, &c), cand));
        }
    }
    // Fewest edits first, then the most similar, then alphabetical.
    scored.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.total_cmp(&a.1)).then_with(|| a.2.cmp(b.2)));
    scored.dedup_by(|a, b| a.2 == b.2);
    scored.into_iter().take(3).map(|(_, _, c)| c).collect()
}

/// Operator names that `word` may have meant: names whose `name` part (after the stage) equals
/// `word` (a missing stage prefix, e.g. `files` → `source.files`), then close matches.
pub fn suggest_ops<'c>(word: &str, names: &[&'c str]) -> Vec<&'c str> {
    let lower = word.to_lowercase();
    let mut out: Vec<&'c str> =
        names.iter().copied().filter(|n| n.split_once('.').is_some_and(|(_, op)| op == lower)).collect();
    // `files.source` (parts swapped) and `source_files` / `source-files` (wrong separator).
    let normalized = lower.replace(['_', '-', '/', ':'], ".");
    for n in names {
        let swapped = n.split_once('.').map(|(s, o)| format!("{o}.{s}"));
        if (swapped.as_deref() == Some(normalized.as_str()) || *n == normalized) && !out.contains(n) {
            out.push(n);
        }
    }
    for n in did_you_mean(word, names.iter().copied()) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    // Also match the name part alone against the name parts of candidates (`source.fils`).
    if let Some((_, op)) = lower.split_once('.') {
        let parts: Vec<&str> = names.iter().filter_map(|n| n.split_once('.').map(|(_, o)| o)).collect();
        for p in did_you_mean(op, parts.iter().copied()) {
            for n in names.iter().filter(|n| n.split_once('.').is_some_and(|(_, o)| o == p)) {
                if !out.contains(n) {
                    out.push(n);
                }
            }
        }
    }
    out.truncate(3);
    out
}

/// `` `a` ``, `` `a` or `b` ``, `` `a`, `b` or `c` ``.
pub fn or_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("`{s}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// "did you mean `x`?" for the given suggestions, or `None`.
pub fn did_you_mean_fix(suggestions: &[&str]) -> Option<String> {
    if suggestions.is_empty() { None } else { Some(format!("did you mean {}?", or_list(suggestions))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_found() {
        let params = ["threshold", "min_seconds", "max_seconds", "paths"];
        assert_eq!(did_you_mean("treshold", params), vec!["threshold"]);
        assert_eq!(did_you_mean("path", params), vec!["paths"]);
        assert_eq!(did_you_mean("min_second", params)[0], "min_seconds");
        assert_eq!(did_you_mean("THRESHOLD", params), vec!["threshold"]);
        assert_eq!(did_you_mean("rwa", ["raw", "out"]), vec!["raw"]); // a swap is one edit
        assert_eq!(did_you_mean("input", ["in"]), vec!["in"]); // prefix
        assert_eq!(did_you_mean("min_sec", params), vec!["min_seconds"]);
    }

    #[test]
    fn unrelated_words_get_nothing() {
        assert!(did_you_mean("banana", ["threshold", "paths", "watch"]).is_empty());
        assert!(did_you_mean("", ["threshold"]).is_empty());
    }

    #[test]
    fn ops_with_missing_or_wrong_stage() {
        let names = ["sink.jsonl", "source.files", "source.manifest"];
        assert_eq!(suggest_ops("files", &names)[0], "source.files");
        assert_eq!(suggest_ops("manifest", &names)[0], "source.manifest");
        assert_eq!(suggest_ops("source.file", &names)[0], "source.files");
        assert_eq!(suggest_ops("source_files", &names)[0], "source.files");
        assert_eq!(suggest_ops("files.source", &names)[0], "source.files");
        assert_eq!(suggest_ops("sink.json", &names)[0], "sink.jsonl");
        assert_eq!(suggest_ops("src.fils", &names)[0], "source.files");
        // The shared stage prefix alone does not make a match.
        assert_eq!(suggest_ops("source.file", &names), vec!["source.files"]);
        assert!(suggest_ops("train.flow_matching", &names).is_empty());
    }

    #[test]
    fn lists() {
        assert_eq!(or_list(&[]), "");
        assert_eq!(or_list(&["a"]), "`a`");
        assert_eq!(or_list(&["a", "b"]), "`a` or `b`");
        assert_eq!(or_list(&["a", "b", "c"]), "`a`, `b` or `c`");
        assert_eq!(did_you_mean_fix(&["x"]).as_deref(), Some("did you mean `x`?"));
        assert_eq!(did_you_mean_fix(&[]), None);
    }
}
