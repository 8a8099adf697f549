//! rsync's include/exclude filter rules: parsing and matching, with rsync's semantics.
//!
//! A [`Filter`] is an ordered list of `+` (include) and `-` (exclude) rules. For each path
//! (relative to the tree root, `/`-separated) the first rule that matches decides; no match
//! includes. An excluded directory is not descended into, so nothing below it is selected
//! even if a later rule would include it. Pattern rules, as in rsync(1) "PATTERN MATCHING
//! RULES":
//!
//! - a pattern ending in `/` matches directories only;
//! - a pattern starting with `/` is anchored at the tree root; otherwise it may match at any
//!   directory boundary: a pattern without `/` or `**` is matched against the final name
//!   only, one with them against the trailing components of the path;
//! - `*` matches anything but `/`, `**` anything including `/`, `?` one character but `/`,
//!   `[...]` a character class (`[!...]` or `[^...]` negated, ranges, `[:alpha:]` and
//!   friends), `\` escapes the next character;
//! - `dir/***` matches `dir` itself and everything below it.
//!
//! Rules are written as rsync's `--filter` takes them (`+ PATTERN`, `- PATTERN`,
//! `include PATTERN`, `exclude PATTERN`); `--include P` and `--exclude P` are `+ P` and
//! `- P`. Modifiers, merge files and the other rule kinds are refused with an error.

use std::fmt;

/// Include or exclude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `+`: carry the path.
    Include,
    /// `-`: leave it out (and, for a directory, everything below it).
    Exclude,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    action: Action,
    /// The pattern as written (for display and recording).
    text: String,
    /// The pattern to match, without a leading `/`, trailing `/` or trailing `/***`.
    pattern: Vec<char>,
    anchored: bool,
    dir_only: bool,
    /// `dir/***`: also match everything below.
    and_below: bool,
    /// Matched against the whole (trailing) path, not only the final name.
    full_path: bool,
}

/// An ordered list of rules; the first match decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    rules: Vec<Rule>,
}

/// A rule that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter rule '{rule}': {reason}")]
pub struct FilterError {
    /// The rule as given.
    pub rule: String,
    /// What is wrong.
    pub reason: String,
}

impl Rule {
    /// A rule from an action and a pattern.
    pub fn new(action: Action, pattern: &str) -> Result<Rule, FilterError> {
        let err = |reason: &str| FilterError {
            rule: format!("{} {pattern}", action.sign()),
            reason: reason.into(),
        };
        if pattern.is_empty() {
            return Err(err("empty pattern"));
        }
        if pattern.chars().any(|c| c.is_control()) {
            return Err(err("control character in the pattern"));
        }
        if pattern.len() > 4096 {
            return Err(err("pattern longer than 4096 bytes"));
        }
        let mut p = pattern;
        let anchored = p.starts_with('/');
        if anchored {
            p = &p[1..];
        }
        let mut and_below = false;
        if let Some(stripped) = p.strip_suffix("/***") {
            and_below = true;
            p = stripped;
        } else if p == "***" {
            // Everything (at any depth, or below the root if anchored).
            p = "**";
        }
        let dir_only = !and_below && p.ends_with('/') && p.len() > 1;
        if dir_only {
            p = p.trim_end_matches('/');
        }
        if p.is_empty() {
            return Err(err("the pattern matches nothing"));
        }
        let pattern: Vec<char> = p.chars().collect();
        check_brackets(&pattern).map_err(|r| err(&r))?;
        let full_path = p.contains('/') || p.contains("**");
        Ok(Rule {
            action,
            text: pattern_text(anchored, p, dir_only, and_below),
            pattern,
            anchored,
            dir_only,
            and_below,
            full_path,
        })
    }

    /// Parses a rule as rsync's `--filter` takes it.
    pub fn parse(rule: &str) -> Result<Rule, FilterError> {
        let err = |reason: &str| FilterError {
            rule: rule.to_string(),
            reason: reason.into(),
        };
        let (kind, pattern) = if let Some(rest) = rule.strip_prefix("include ") {
            (Action::Include, rest)
        } else if let Some(rest) = rule.strip_prefix("exclude ") {
            (Action::Exclude, rest)
        } else if let Some(rest) = rule.strip_prefix("+ ") {
            (Action::Include, rest)
        } else if let Some(rest) = rule.strip_prefix("- ") {
            (Action::Exclude, rest)
        } else if rule.starts_with('+') || rule.starts_with('-') {
            return Err(err(
                "rule modifiers are not supported (write '+ PATTERN' or '- PATTERN')",
            ));
        } else {
            return Err(err(
                "only include and exclude rules are supported ('+ PATTERN', '- PATTERN')",
            ));
        };
        Rule::new(kind, pattern).map_err(|e| FilterError {
            rule: rule.to_string(),
            reason: e.reason,
        })
    }

    /// The action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Whether the rule matches `path` (relative, `/`-separated, no leading `/`).
    pub fn matches(&self, path: &str, is_dir: bool) -> bool {
        if self.and_below {
            // `dir/***`: the directory `dir` itself, or anything under it.
            return (is_dir && self.matches_at(path, true)) || self.below(path);
        }
        if self.dir_only && !is_dir {
            return false;
        }
        self.matches_at(path, false)
    }

    /// Whether some ancestor of `path` matches the `dir/***` base.
    fn below(&self, path: &str) -> bool {
        path.match_indices('/')
            .any(|(i, _)| self.matches_at(&path[..i], true))
    }

    fn matches_at(&self, path: &str, whole_dir_rule: bool) -> bool {
        let full = self.full_path || whole_dir_rule && self.pattern.contains(&'/');
        if self.anchored {
            return wildmatch(&self.pattern, &path.chars().collect::<Vec<_>>());
        }
        if !full {
            let name = path.rsplit('/').next().unwrap_or(path);
            return wildmatch(&self.pattern, &name.chars().collect::<Vec<_>>());
        }
        // Unanchored with a slash: the trailing components, from any directory boundary.
        let chars: Vec<char> = path.chars().collect();
        if wildmatch(&self.pattern, &chars) {
            return true;
        }
        // As rsync does for a pattern starting with `**`: the path with a leading `/`, so
        // `**/x` also matches a top-level `x`.
        if self.pattern.starts_with(&['*', '*']) {
            let rooted: Vec<char> = std::iter::once('/').chain(chars.iter().copied()).collect();
            if wildmatch(&self.pattern, &rooted) {
                return true;
            }
        }
        chars
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == '/')
            .any(|(i, _)| wildmatch(&self.pattern, &chars[i + 1..]))
    }
}

impl Action {
    fn sign(self) -> char {
        match self {
            Action::Include => '+',
            Action::Exclude => '-',
        }
    }
}

fn pattern_text(anchored: bool, p: &str, dir_only: bool, and_below: bool) -> String {
    format!(
        "{}{p}{}",
        if anchored { "/" } else { "" },
        if and_below {
            "/***"
        } else if dir_only {
            "/"
        } else {
            ""
        }
    )
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action.sign(), self.text)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            writeln!(f, "{r}")?;
        }
        Ok(())
    }
}

impl Filter {
    /// No rules: everything is selected.
    pub fn new() -> Filter {
        Filter::default()
    }

    /// Appends a rule.
    pub fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// Parses one rule per line (`+ P`, `- P`, `include P`, `exclude P`); blank lines and
    /// lines starting with `#` or `;` are skipped, as in an rsync filter file.
    pub fn parse_lines(text: &str) -> Result<Filter, FilterError> {
        let mut f = Filter::new();
        for line in text.lines() {
            let l = line.trim_end_matches('\r');
            if l.trim().is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            f.push(Rule::parse(l)?);
        }
        Ok(f)
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `path` (relative to the root, `/`-separated) is selected by the rules alone
    /// (its parents are the caller's business: a walk does not descend into an excluded
    /// directory).
    pub fn includes(&self, path: &str, is_dir: bool) -> bool {
        for r in &self.rules {
            if r.matches(path, is_dir) {
                return r.action == Action::Include;
            }
        }
        true
    }
}

fn check_brackets(p: &[char]) -> Result<(), String> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => i += 2,
            '[' => match class_end(p, i) {
                Some(end) => i = end + 1,
                None => i += 1, // a lone '[' matches itself, as in rsync
            },
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index of the `]` closing the class opened at `p[start]`, if any.
fn class_end(p: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if i < p.len() && (p[i] == '!' || p[i] == '^') {
        i += 1;
    }
    if i < p.len() && p[i] == ']' {
        i += 1;
    }
    while i < p.len() {
        match p[i] {
            ']' => return Some(i),
            '[' if p.get(i + 1) == Some(&':') => {
                let close =
                    (i + 2..p.len().saturating_sub(1)).find(|&j| p[j] == ':' && p[j + 1] == ']')?;
                i = close + 2;
            }
            '\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

fn class_matches(p: &[char], start: usize, end: usize, c: char) -> bool {
    let mut i = start + 1;
    let negated = i < end && (p[i] == '!' || p[i] == '^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < end {
        let mut lo = p[i];
        if lo == '[' && p.get(i + 1) == Some(&':') {
            if let Some(close) = (i + 2..end).find(|&j| p[j] == ':' && p.get(j + 1) == Some(&']')) {
                let name: String = p[i + 2..close].iter().collect();
                matched |= match name.as_str() {
                    "alpha" => c.is_ascii_alphabetic(),
                    "digit" => c.is_ascii_digit(),
                    "alnum" => c.is_ascii_alphanumeric(),
                    "upper" => c.is_ascii_uppercase(),
                    "lower" => c.is_ascii_lowercase(),
                    "space" => c.is_ascii_whitespace(),
                    "punct" => c.is_ascii_punctuation(),
                    "xdigit" => c.is_ascii_hexdigit(),
                    "blank" => c == ' ' || c == '\t',
                    "cntrl" => c.is_ascii_control(),
                    "print" => c.is_ascii_graphic() || c == ' ',
                    "graph" => c.is_ascii_graphic(),
                    _ => false,
                };
                i = close + 2;
                first = false;
                continue;
            }
        }
        if lo == '\\' && i + 1 < end {
            i += 1;
            lo = p[i];
        }
        let _ = first;
        first = false;
        if i + 2 < end && p[i + 1] == '-' && p[i + 2] != ']' {
            let mut hi = p[i + 2];
            let mut step = 3;
            if hi == '\\' && i + 3 < end {
                hi = p[i + 3];
                step = 4;
            }
            matched |= lo <= c && c <= hi;
            i += step;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
    matched != negated
}

/// rsync's wildmatch: `*` (not across `/`), `**` (across), `?`, classes, escapes.
pub fn wildmatch(p: &[char], t: &[char]) -> bool {
    // Iterative with memo on (pi, ti) to stay linear-ish on hostile patterns.
    let mut memo = vec![None; (p.len() + 1) * (t.len() + 1)];
    wm(p, t, 0, 0, &mut memo)
}

fn wm(p: &[char], t: &[char], pi: usize, ti: usize, memo: &mut [Option<bool>]) -> bool {
    let key = pi * (t.len() + 1) + ti;
    if let Some(v) = memo[key] {
        return v;
    }
    let r = wm_inner(p, t, pi, ti, memo);
    memo[key] = Some(r);
    r
}

fn wm_inner(p: &[char], t: &[char], pi: usize, ti: usize, memo: &mut [Option<bool>]) -> bool {
    if pi == p.len() {
        return ti == t.len();
    }
    match p[pi] {
        '*' => {
            let double = p.get(pi + 1) == Some(&'*');
            let next = if double {
                let mut n = pi;
                while n < p.len() && p[n] == '*' {
                    n += 1;
                }
                n
            } else {
                pi + 1
            };
            // Try every length the star may take.
            let mut k = ti;
            loop {
                if wm(p, t, next, k, memo) {
                    return true;
                }
                if k == t.len() || (!double && t[k] == '/') {
                    return false;
                }
                k += 1;
            }
        }
        '?' => ti < t.len() && t[ti] != '/' && wm(p, t, pi + 1, ti + 1, memo),
        '[' => match class_end(p, pi) {
            Some(end) => {
                ti < t.len()
                    && t[ti] != '/'
                    && class_matches(p, pi, end, t[ti])
                    && wm(p, t, end + 1, ti + 1, memo)
            }
            None => ti < t.len() && t[ti] == '[' && wm(p, t, pi + 1, ti + 1, memo),
        },
        '\\' if pi + 1 < p.len() => {
            ti < t.len() && t[ti] == p[pi + 1] && wm(p, t, pi + 2, ti + 1, memo)
        }
        c => ti < t.len() && t[ti] == c && wm(p, t, pi + 1, ti + 1, memo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(rules: &[&str]) -> Filter {
        let mut f = Filter::new();
        for r in rules {
            f.push(Rule::parse(r).expect(r));
        }
        f
    }

    #[test]
    fn first_match_wins_and_kinds() {
        let x = f(&["+ *.deb", "- *"]);
        assert!(x.includes("pool/a.deb", false));
        assert!(!x.includes("pool", true));
        let x = f(&["- /dists/", "+ dists/"]);
        assert!(!x.includes("dists", true));
        assert!(x.includes("a/dists", true));
        assert!(x.includes("dists", false), "a dir-only rule skips files");
    }

    #[test]
    fn patterns() {
        let m = |p: &str, path: &str, dir: bool| {
            Rule::new(Action::Exclude, p).expect(p).matches(path, dir)
        };
        assert!(m("*.iso", "a/b/c.iso", false));
        assert!(!m("*.iso", "a/b.iso/c", false));
        assert!(m("b/*.iso", "a/b/c.iso", false));
        assert!(!m("/b/*.iso", "a/b/c.iso", false));
        assert!(m("/a/b/*.iso", "a/b/c.iso", false));
        assert!(!m("a/*.iso", "a/b/c.iso", false));
        assert!(m("a/**.iso", "a/b/c.iso", false));
        assert!(m("a/**/c.iso", "a/b/c.iso", false));
        assert!(m("dir/***", "x/dir", true));
        assert!(m("dir/***", "x/dir/y/z", false));
        assert!(!m("dir/***", "x/dirt", true));
        assert!(m("?.txt", "d/a.txt", false));
        assert!(!m("?.txt", "d/ab.txt", false));
        assert!(m("[ab]*", "d/beta", false));
        assert!(!m("[!ab]*", "d/beta", false));
        assert!(m("[[:digit:]]x", "7x", false));
        assert!(m("\\*", "*", false));
        assert!(!m("\\*", "a", false));
    }

    #[test]
    fn bad_rules_named() {
        for r in ["", "+", "+x", "-! foo", "merge foo", ": x", "+ ", "P foo"] {
            let e = Rule::parse(r).expect_err(r);
            assert_eq!(e.rule, r);
        }
        let e = Filter::parse_lines("+ a\nbogus\n").expect_err("bogus");
        assert_eq!(e.rule, "bogus");
    }

    #[test]
    fn display_round_trips() {
        let x = f(&["include /a/", "- *.iso", "+ dir/***"]);
        assert_eq!(x.to_string(), "+ /a/\n- *.iso\n+ dir/***\n");
        assert_eq!(Filter::parse_lines(&x.to_string()).expect("parse"), x);
    }
}
