//! Scenario results as JUnit XML (`cardvm test --junit OUT.xml`), so Jenkins, GitLab and
//! other CI systems show them like any test suite: one `<testsuite>` per scenario file,
//! one `<testcase>` per scenario, a `<failure>` with the mismatches and the run's report
//! for each scenario that did not pass. Each testcase has a `time` attribute (seconds
//! the scenario took, loading its scripts and card included), each testsuite and the
//! document the sum of theirs. A small writer: every attribute and text is
//! escaped, and characters XML 1.0 cannot hold are written as `\u{..}`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::scenario::{ScenarioResult, Summary};

/// `text` escaped for an XML attribute value or element content.
fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            '\t' | '\n' | '\r' => s.push(c),
            // Not allowed in XML 1.0, even as a character reference.
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                let _ = write!(s, "\\u{{{:x}}}", c as u32);
            }
            c => s.push(c),
        }
    }
    s
}

/// A duration as JUnit's `time` attribute: seconds with millisecond precision.
fn seconds(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// The first line of a failure: what the CI list view shows.
fn headline(r: &ScenarioResult) -> String {
    if let Some(e) = &r.error {
        return e.lines().next().unwrap_or_default().to_string();
    }
    match r.mismatches.as_slice() {
        [m] => format!("{}: expected {}, got {}", m.what, m.expected, m.actual),
        [m, rest @ ..] => format!(
            "{}: expected {}, got {} (and {} more)",
            m.what,
            m.expected,
            m.actual,
            rest.len()
        ),
        [] => String::from("failed"),
    }
}

/// The failure's body: every mismatch, then the run's report (source line, last APDU).
fn details(r: &ScenarioResult) -> String {
    let mut s = String::new();
    if let Some(e) = &r.error {
        let _ = writeln!(s, "error: {e}");
    }
    for m in &r.mismatches {
        let _ = writeln!(
            s,
            "{}:\n-   expected: {}\n+   actual:   {}",
            m.what, m.expected, m.actual
        );
    }
    for line in &r.report {
        let _ = writeln!(s, "{line}");
    }
    s
}

impl Summary {
    /// The results as a JUnit XML document (see the module docs).
    pub fn junit_xml(&self) -> String {
        // Files in the order they were run; scenarios in declaration order.
        let mut files: Vec<(PathBuf, Vec<&ScenarioResult>)> = Vec::new();
        for r in &self.results {
            match files.iter_mut().find(|(f, _)| *f == r.file) {
                Some((_, rs)) => rs.push(r),
                None => files.push((r.file.clone(), vec![r])),
            }
        }
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"cardvm scenarios\" tests=\"{}\" failures=\"{}\" time=\"{}\">",
            self.results.len() + self.file_errors.len(),
            self.failed(),
            seconds(self.results.iter().map(|r| r.duration).sum())
        );
        for (file, results) in &files {
            let name = escape(&file.display().to_string());
            let failed = results.iter().filter(|r| !r.passed()).count();
            let _ = writeln!(
                x,
                "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{failed}\" time=\"{}\">",
                results.len(),
                seconds(results.iter().map(|r| r.duration).sum())
            );
            for r in results {
                let _ = write!(
                    x,
                    "    <testcase classname=\"{name}\" name=\"{}\" time=\"{}\"",
                    escape(&r.name),
                    seconds(r.duration)
                );
                if r.passed() {
                    x.push_str("/>\n");
                    continue;
                }
                let kind = if r.error.is_some() {
                    "error"
                } else {
                    "mismatch"
                };
                let _ = writeln!(
                    x,
                    ">\n      <failure type=\"{kind}\" message=\"{}\">{}</failure>\n    </testcase>",
                    escape(&headline(r)),
                    escape(&details(r))
                );
            }
            x.push_str("  </testsuite>\n");
        }
        if !self.file_errors.is_empty() {
            let _ = writeln!(
                x,
                "  <testsuite name=\"scenario files\" tests=\"{n}\" failures=\"{n}\" time=\"0.000\">",
                n = self.file_errors.len()
            );
            for e in &self.file_errors {
                let e = escape(e);
                let _ = writeln!(
                    x,
                    "    <testcase classname=\"scenario files\" name=\"{e}\" time=\"0.000\">\n      <failure type=\"error\" message=\"{e}\"/>\n    </testcase>"
                );
            }
            x.push_str("  </testsuite>\n");
        }
        x.push_str("</testsuites>\n");
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::Mismatch;

    fn result(name: &str, mismatches: Vec<Mismatch>, error: Option<&str>) -> ScenarioResult {
        ScenarioResult {
            file: PathBuf::from("city/scenarios/load.toml"),
            name: name.into(),
            mismatches,
            error: error.map(String::from),
            report: vec!["-- failed at load.casm:7: fail 0x05".into()],
            duration: Duration::from_millis(1250),
        }
    }

    #[test]
    fn passing_and_failing_scenarios_and_hostile_names() {
        let summary = Summary {
            results: vec![
                result("load <100> & \"more\"", vec![], None),
                result(
                    "tearing\u{1b}[31m",
                    vec![Mismatch {
                        what: "outcome".into(),
                        expected: "unknown".into(),
                        actual: "committed".into(),
                    }],
                    None,
                ),
                result("bad path", vec![], Some("../x.casm: not found\nmore")),
            ],
            file_errors: vec!["y.toml: expected `=` <here>".into()],
        };
        let x = summary.junit_xml();
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"cardvm scenarios\" tests=\"4\" failures=\"3\" time=\"3.750\">"), "{x}");
        assert!(
            x.contains("<testsuite name=\"city/scenarios/load.toml\" tests=\"3\" failures=\"2\" time=\"3.750\">"),
            "{x}"
        );
        assert!(x.contains("<testcase classname=\"city/scenarios/load.toml\" name=\"load &lt;100&gt; &amp; &quot;more&quot;\" time=\"1.250\"/>"), "{x}");
        assert!(x.contains("name=\"tearing\\u{1b}[31m\" time=\"1.250\">\n      <failure type=\"mismatch\" message=\"outcome: expected unknown, got committed\">outcome:\n-   expected: unknown\n+   actual:   committed\n-- failed at load.casm:7: fail 0x05\n</failure>"), "{x}");
        assert!(
            x.contains("<failure type=\"error\" message=\"../x.casm: not found\">"),
            "{x}"
        );
        assert!(
            x.contains("name=\"y.toml: expected `=` &lt;here&gt;\" time=\"0.000\""),
            "{x}"
        );
        assert_eq!(x.matches("<testcase ").count(), 4, "{x}");
        assert_eq!(x.matches(" time=\"").count(), 4 + 2 + 1, "{x}");
        assert_eq!(x.matches("<failure ").count(), 3, "{x}");
        assert_eq!(x.matches("</testcase>").count(), 3, "{x}");
        assert!(x.ends_with("  </testsuite>\n</testsuites>\n"), "{x}");
        // No raw control character survives.
        assert!(
            !x.chars().any(|c| (c as u32) < 0x20 && !matches!(c, '\n')),
            "{x}"
        );
    }
}
