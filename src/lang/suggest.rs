//! "Did you mean …?": the closest known name to a misspelled one.
//!
//! One helper for every diagnostic that names something unknown: variables, inputs,
//! constants, routines and failure codes in a `.cvs` program, and the fields of a
//! data script. The distance is the optimal-string-alignment edit distance (insert,
//! delete, replace, swap two neighbours; ASCII case ignored), so `serail` is one edit
//! from `serial` and `amonut` one from `amount`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The edit distance between `a` and `b`: insertions, deletions, replacements and
/// swaps of two neighbouring characters, ASCII case ignored.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    // Three rows of the dynamic-programming table: i-2, i-1 and i.
    let mut two: Vec<usize> = Vec::new();
    let mut one: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = alloc::vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (one[j] + 1).min(row[j - 1] + 1).min(one[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(two[j - 2] + 1);
            }
            row[j] = d;
        }
        two = core::mem::replace(&mut one, row);
    }
    one[b.len()]
}

/// The candidate closest to `name`, if one is close enough to be a likely misspelling:
/// at most one edit for names of up to four characters, two up to eight, three beyond.
/// Ties go to the first candidate given; `name` itself is never suggested.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let n = name.chars().count();
    let limit = match n {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        if c == name || c.chars().count().abs_diff(n) > limit {
            continue;
        }
        let d = distance(name, c);
        if d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `"; did you mean `x`?"` for the closest candidate, or the empty string.
pub(crate) fn hint<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("serail", "serial"), 1);
        assert_eq!(distance("amonut", "amount"), 1);
        assert_eq!(distance("amount", "amount"), 0);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("Balance", "balance"), 0);
    }

    #[test]
    fn closest_is_close_enough_or_nothing() {
        let names = ["serial", "balance", "amount", "atc"];
        assert_eq!(closest("serail", names), Some("serial"));
        assert_eq!(closest("amonut", names), Some("amount"));
        assert_eq!(closest("atx", names), Some("atc"));
        assert_eq!(closest("terminal", names), None);
        assert_eq!(closest("x", names), None);
        assert_eq!(closest("amount", names), None);
        assert_eq!(hint("balanse", names), "; did you mean `balance`?");
        assert_eq!(hint("zzz", names), "");
    }
}
