//! File names of recordings: a pattern with placeholders, expanded into one safe path
//! component, and the check that keeps every path the engine opens inside the recordings
//! directory.
//!
//! Placeholders: `{id}`, `{call}`, `{date}` (`YYYY-MM-DD`, UTC), `{time}` (`HHMMSS`, UTC),
//! `{agent}`, `{queue}`, `{leg}` (the leg's tag in per-leg mode, `all` otherwise), `{mode}`.
//! Literal text is limited to `A-Z a-z 0-9 . _ -`; expanded values have any other character
//! replaced by `_`. A file lives at `YYYY-MM-DD/NAME.EXT` under the recordings directory.

use std::path::{Component, Path, PathBuf};

/// Longest pattern accepted.
pub const MAX_PATTERN: usize = 200;
/// Longest expanded name (without extension).
pub const MAX_NAME: usize = 150;
/// Longest piece taken from one placeholder value.
const MAX_VALUE: usize = 64;

const PLACEHOLDERS: &[&str] = &[
    "id", "call", "date", "time", "agent", "queue", "leg", "mode",
];

fn is_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks a pattern: known placeholders, safe literal text, not empty, not starting with `.`.
pub fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_PATTERN {
        return Err(format!("a name pattern is 1 to {MAX_PATTERN} characters"));
    }
    if p.starts_with('.') {
        return Err("a name pattern must not start with `.`".into());
    }
    let mut rest = p;
    while let Some(open) = rest.find('{') {
        if let Some(c) = rest[..open].chars().find(|c| !is_safe(*c)) {
            return Err(format!("`{c}` is not allowed in a name pattern"));
        }
        let close = rest[open..]
            .find('}')
            .ok_or("unclosed `{` in the name pattern")?;
        let key = &rest[open + 1..open + close];
        if !PLACEHOLDERS.contains(&key) {
            return Err(format!(
                "unknown placeholder `{{{key}}}`; known: {}",
                PLACEHOLDERS.join(", ")
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if let Some(c) = rest.chars().find(|c| !is_safe(*c)) {
        return Err(format!("`{c}` is not allowed in a name pattern"));
    }
    Ok(())
}

/// Values of the placeholders.
#[derive(Debug, Clone, Default)]
pub struct NameValues<'a> {
    /// Recording id.
    pub id: &'a str,
    /// Call-id.
    pub call: &'a str,
    /// `YYYY-MM-DD`.
    pub date: &'a str,
    /// `HHMMSS`.
    pub time: &'a str,
    /// Agent (may be empty).
    pub agent: &'a str,
    /// Queue (may be empty).
    pub queue: &'a str,
    /// Leg tag or `all`.
    pub leg: &'a str,
    /// Mode name.
    pub mode: &'a str,
}

fn sanitize(v: &str, out: &mut String) {
    for c in v.chars().take(MAX_VALUE) {
        out.push(if is_safe(c) { c } else { '_' });
    }
}

/// Expands a pattern checked by [`check_pattern`]; the result is one safe path component.
#[must_use]
pub fn expand(pattern: &str, v: &NameValues<'_>) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        sanitize(&rest[..open], &mut out);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let value = match &rest[open + 1..open + close] {
            "id" => v.id,
            "call" => v.call,
            "date" => v.date,
            "time" => v.time,
            "agent" => v.agent,
            "queue" => v.queue,
            "leg" => v.leg,
            "mode" => v.mode,
            _ => "",
        };
        sanitize(value, &mut out);
        rest = &rest[open + close + 1..];
    }
    sanitize(rest, &mut out);
    let mut name: String = out.chars().take(MAX_NAME).collect();
    while name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    if name.is_empty() {
        name = v.id.chars().filter(|c| is_safe(*c)).collect();
    }
    name
}

/// Joins a relative path from the index onto the recordings directory, refusing anything
/// that could leave it: absolute paths, `..`, `.`, empty or unsafe components.
#[must_use]
pub fn resolve(dir: &Path, relative: &str) -> Option<PathBuf> {
    if relative.is_empty() || relative.len() > 512 {
        return None;
    }
    let rel = Path::new(relative);
    let mut depth = 0;
    for c in rel.components() {
        match c {
            Component::Normal(s) => {
                let s = s.to_str()?;
                if s.starts_with('.') || !s.chars().all(is_safe) {
                    return None;
                }
                depth += 1;
            }
            _ => return None,
        }
    }
    (depth > 0 && depth <= 4).then(|| dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked() {
        for ok in [
            "{call}-{id}",
            "rec_{date}_{time}",
            "x",
            "{agent}.{queue}.{leg}",
        ] {
            assert!(check_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".hidden", "../x", "a/b", "{nope}", "{call", "a b", "a\\b",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expansion_is_one_safe_component() {
        let v = NameValues {
            id: "0123abcd",
            call: "../../etc/passwd@host;rm -rf",
            date: "2024-05-01",
            agent: "Zoë",
            ..NameValues::default()
        };
        let n = expand("{call}-{agent}-{id}", &v);
        assert_eq!(
            n,
            ".._.._etc_passwd_host_rm_-rf-Zo_-0123abcd".replacen('.', "_", 1)
        );
        assert!(!n.contains('/') && !n.starts_with('.'));
        assert_eq!(
            expand(
                "{agent}",
                &NameValues {
                    id: "ff",
                    ..NameValues::default()
                }
            ),
            "ff"
        );
        let long = "x".repeat(500);
        let v = NameValues {
            call: &long,
            id: "1",
            ..NameValues::default()
        };
        assert!(expand("{call}{call}{call}{call}", &v).len() <= MAX_NAME);
    }

    #[test]
    fn resolve_stays_inside() {
        let d = Path::new("/rec");
        assert_eq!(
            resolve(d, "2024-05-01/a.wav"),
            Some(PathBuf::from("/rec/2024-05-01/a.wav"))
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./a",
            "a/.hidden",
            "a//b/c/d/e",
            "a\\b",
            "a b",
        ] {
            assert_eq!(resolve(d, bad), None, "{bad}");
        }
    }
}
