//! Quoting what a tenant made — its log lines, its health answer — in what the fleet
//! prints, stores in the apply history and shows on the dashboard. Every quoting site
//! goes through here, so that each quote is masked for every secret of that tenant
//! (its key and every `${env:}`/`${file:}` value), stripped of control characters
//! (an escape sequence would act on the operator's terminal) and bounded.

use crate::bounded;
use crate::plan::Workload;

/// The longest line quoted from a tenant's or an agent's output.
pub const MAX_LINE: usize = 500;

/// The most characters of one quote of several lines.
pub const MAX_QUOTE: usize = 2_000;

/// A tenant's secrets, to mask in its text.
#[derive(Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    /// The secrets of the tenant `d` describes; an empty masker without one.
    pub fn new(d: Option<&Workload>) -> Self {
        let mut secrets: Vec<String> = d
            .into_iter()
            .flat_map(|d| d.secret_env.iter().filter_map(|name| d.env.get(name)))
            .filter(|v| v.len() >= 4)
            .cloned()
            .collect();
        // Longest first: a secret that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    /// Every secret replaced; nothing else changed (a stream the operator follows).
    pub fn mask(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), "•••"))
    }

    /// One line fit to print and store: masked first (a secret cut by the bound or
    /// split by a control character would escape the mask), then cleaned and
    /// bounded.
    pub fn line(&self, text: &str, max: usize) -> String {
        bounded(&self.mask(text).replace(['\n', '\r'], " "), max)
    }

    /// The last `count` non-blank lines of `text`, each quoted by [`Masker::line`],
    /// as many of the last ones as fit in [`MAX_QUOTE`] characters.
    pub fn last_lines(&self, text: &str, count: usize) -> Vec<String> {
        let mut room = MAX_QUOTE;
        let mut quoted: Vec<String> = text
            .lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(count)
            .map(|l| self.line(l, MAX_LINE))
            .take_while(|q| {
                let n = q.chars().count() + 3;
                let fits = n <= room;
                room = room.saturating_sub(n);
                fits
            })
            .collect();
        quoted.reverse();
        quoted
    }
}

/// The last two warning or error lines of an agent's JSON log, quoted, as a suffix
/// for a failure's detail (whichever backend the agent runs on).
pub fn agent_warnings(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect();
    let quoted = Masker::default().last_lines(&lines.join("\n"), 2);
    match quoted.len() {
        0 => String::new(),
        _ => format!("; it says: {}", quoted.join(" | ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_warnings_are_quoted_bounded_and_without_control_characters() {
        // What the agent logs can carry what its host's tenants wrote (a label, a
        // store's error): the detail that reaches the table and the database is cut.
        let escapes = "\u{1b}[2J\u{1b}]0;owned\u{7}";
        let hostile = format!(
            "{{\"level\":\"WARN\",\"message\":\"{escapes}{}\"}}",
            "x".repeat(100_000)
        );
        let log = format!("{{\"level\":\"INFO\"}}\n{hostile}\n");
        let said = agent_warnings(&log);
        assert!(said.starts_with("; it says: "), "{said}");
        assert!(
            said.chars().count() < 2_100,
            "{} characters",
            said.chars().count()
        );
        assert!(
            !said.chars().any(|c| c.is_control()),
            "control characters kept"
        );
        assert_eq!(agent_warnings("{\"level\":\"INFO\"}\n"), "");
    }

    #[test]
    fn a_hostile_line_is_masked_cleaned_and_bounded() {
        let m = Masker {
            secrets: vec!["hunter2-secret".into()],
        };
        let line = format!(
            "\x1b[31m{} pw=hunter2-secret\x1b]0;t\x07",
            "A".repeat(100_000)
        );
        let q = m.line(&line, MAX_LINE);
        assert!(q.chars().count() <= MAX_LINE + 1);
        assert!(!q.contains('\x1b') && !q.contains('\x07'));
        let tail = m.last_lines(&format!("ok\n\n{line}\nend pw=hunter2-secret\r\n"), 2);
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1], "end pw=•••");
        let many = m.last_lines(&format!("{line}\n").repeat(8), 8);
        assert_eq!(
            many.len(),
            3,
            "the last lines that fit in {MAX_QUOTE} characters"
        );
        assert!(!tail.concat().contains("hunter2"));
    }
}
