//! Python's `glob.glob` and `fnmatch`, as Salt's `include` globs use them:
//! `*`, `?` and `[...]` in any path component, hidden names only for
//! patterns that start with a dot.

use std::path::{Path, PathBuf};

/// Files one glob may bring in before the rest are ignored.
const MAX_GLOB_MATCHES: usize = 256;

// ---------------------------------------------------------------------------
// A glob as Python's `glob.glob` matches: `*`, `?` and `[...]` in any path
// component, hidden names only for patterns that start with a dot.

pub(super) fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::from("/")];
    let components: Vec<String> = pattern
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    if !pattern.is_absolute() {
        return Vec::new();
    }
    for component in &components {
        let mut next = Vec::new();
        for dir in &found {
            if !component.contains(['*', '?', '[']) {
                next.push(dir.join(component));
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| !name.starts_with('.') || component.starts_with('.'))
                .filter(|name| fnmatch(component, name))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|name| dir.join(name)));
        }
        found = next;
        if found.len() > MAX_GLOB_MATCHES {
            log::warn!(
                "minion config: {} matches more than {MAX_GLOB_MATCHES} paths; the rest are ignored",
                pattern.display()
            );
            found.truncate(MAX_GLOB_MATCHES);
        }
    }
    let mut matches: Vec<PathBuf> = found
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    matches.sort();
    matches
}

/// Python's `fnmatch.fnmatchcase` for one component.
fn fnmatch(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                '?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = match_class(&pattern, p, name[n]) {
                        if matched {
                            p = next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == '[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_n)) => {
                p = star_p + 1;
                n = star_n + 1;
                star = Some((star_p, star_n + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// `[...]` at `pattern[start]`: whether `c` is in it, and the index after it;
/// `None` when the bracket is not closed (then it is a literal `[`).
fn match_class(pattern: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&'-') && pattern.get(i + 2).is_some_and(|end| *end != ']') {
            if pattern[i] <= c && c <= pattern[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if pattern[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_python() {
        assert!(fnmatch("*.conf", "a.conf"));
        assert!(!fnmatch("*.conf", "a.conf.bak"));
        assert!(fnmatch("a?c", "abc"));
        assert!(fnmatch("[a-c]x", "bx"));
        assert!(!fnmatch("[!a-c]x", "bx"));
        assert!(fnmatch("[]]", "]"));
        assert!(fnmatch("[x", "[x"));
        assert!(fnmatch("*a*b*", "xxaxxbxx"));
        assert!(!fnmatch("*a*b", "xxaxxbxx"));
        assert!(fnmatch("**", ""));
    }
}
