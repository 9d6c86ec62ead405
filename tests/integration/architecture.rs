//! The module map in docs/architecture.md is checked against the code's own
//! imports: every module path a file under `src/` (folders included) names
//! outside its test code and comments (`crate::`, `super::`, `sp_wrapper::`
//! in `main.rs`, or a bare path from a top-level module) is an edge to the
//! longest module it names, and the block after `<!-- module edges -->`
//! must list exactly those edges. A module that gains or loses an edge
//! fails here, with the block to paste. Edges also point one way: no cycle
//! between modules nor between folders, and no module uses an item of
//! `lib.rs` that is not a module. And the Files table there is each file's
//! opening sentence, word for word.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const MARKER: &str = "<!-- module edges";

type Edges = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, as (path relative to `src/`, module path):
/// `report/session.rs` is `report::session`, `report/mod.rs` is `report`,
/// `lib.rs` is the crate root (`""`) and `main.rs` the binary (`main`).
fn source_files(src: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("src entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            source_files(src, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(src)
                .expect("under src")
                .to_string_lossy()
                .to_string();
            let module = match relative.trim_end_matches(".rs") {
                "lib" => String::new(),
                other => other.trim_end_matches("/mod").replace('/', "::"),
            };
            files.push((relative, module));
        }
    }
}

/// A file's text without its test-only items: each `#[cfg(test)]` and the
/// item after it, to its `;` or its matching `}` (the tests may reach
/// anything; the map is of the shipped code).
fn shipped_part(text: &str) -> String {
    const TEST_ONLY: &str = "#[cfg(test)]";
    let mut shipped = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(TEST_ONLY) {
        shipped.push_str(&rest[..at]);
        let item = &rest[at + TEST_ONLY.len()..];
        let mut depth = 0;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    shipped.push_str(rest);
    shipped
}

/// The code without its comments (a module named in a doc comment is not
/// an import).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths that follow one path prefix: `a::b::C`, and every path of a
/// `{x, y::z, w::{v}}` group, each with `prefix` in front.
fn paths_in(rest: &str, prefix: &str, out: &mut Vec<String>) {
    let ident: String = rest.chars().take_while(|&c| is_ident(c)).collect();
    if ident.is_empty() {
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item_start) = (0, 0);
            for (at, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        paths_in(group[item_start..at].trim(), prefix, out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths_in(group[item_start..at].trim(), prefix, out);
                        item_start = at + 1;
                    }
                    _ => {}
                }
            }
        }
        return;
    }
    let path = format!("{prefix}{ident}");
    match rest[ident.len()..].strip_prefix("::") {
        Some(more) => paths_in(more, &format!("{path}::"), out),
        None => out.push(path),
    }
}

/// Every path of ours `code` names: after `crate::` (or `super::`, from
/// `module`), after `root::` (`sp_wrapper::` in the binary), and bare paths
/// that start with a top-level module (`minion::id::resolve` after `use
/// crate::minion`).
fn paths_named(code: &str, module: &str, root: &str, top: &BTreeSet<String>) -> Vec<String> {
    let parent = module.rsplit_once("::").map_or("", |(parent, _)| parent);
    let mut paths = Vec::new();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let start = rest.chars().next().expect("in bounds");
        let boundary = code[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !is_ident(c) && c != ':');
        if boundary && is_ident(start) {
            let word: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            let after = &rest[word.len()..];
            if let Some(path) = after.strip_prefix("::") {
                if word == root {
                    paths_in(path, "", &mut paths);
                } else if word == "super" {
                    let prefix = if parent.is_empty() {
                        String::new()
                    } else {
                        format!("{parent}::")
                    };
                    paths_in(path, &prefix, &mut paths);
                } else if top.contains(&word) {
                    paths_in(path, &format!("{word}::"), &mut paths);
                }
            }
            at += word.len();
        } else {
            at += start.len_utf8();
        }
    }
    paths
}

/// Every edge of the shipped code, from module to module (the longest
/// module a path names), and the crate-root names that are not modules
/// (items of `lib.rs`), by file. An edge to a folder (`minion`) is dropped
/// where the same file names a module inside it (`minion::id`).
fn code_edges(src: &Path) -> (Edges, Vec<(String, String)>) {
    let mut files = Vec::new();
    source_files(src, src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(_, module)| module.clone()).collect();
    let top: BTreeSet<String> = modules
        .iter()
        .filter(|m| !m.is_empty() && !m.contains("::") && *m != "main")
        .cloned()
        .collect();
    let mut edges = Edges::new();
    let mut upward = Vec::new();
    for (file, module) in &files {
        if module.is_empty() || module == "property_tests" {
            continue; // the crate root declares; property_tests is test builds only
        }
        let text = std::fs::read_to_string(src.join(file)).expect("source");
        let code = without_comments(&shipped_part(&text));
        let root = if module == "main" {
            "sp_wrapper"
        } else {
            "crate"
        };
        let mut used = BTreeSet::new();
        for path in paths_named(&code, module, root, &top) {
            let mut longest = None;
            let mut prefix = String::new();
            for part in path.split("::") {
                prefix = if prefix.is_empty() {
                    part.to_string()
                } else {
                    format!("{prefix}::{part}")
                };
                if modules.contains(&prefix) {
                    longest = Some(prefix.clone());
                }
            }
            match longest {
                Some(target) => {
                    used.insert(target);
                }
                None => upward.push((module.clone(), path)),
            }
        }
        let folders: Vec<String> = used
            .iter()
            .filter(|m| used.iter().any(|n| n.starts_with(&format!("{m}::"))))
            .cloned()
            .collect();
        for folder in folders {
            used.remove(&folder);
        }
        used.remove(module);
        used.remove("property_tests");
        edges.insert(module.clone(), used);
    }
    (edges, upward)
}

/// The block in docs/architecture.md: `module → a, b, c` lines (`module →`
/// alone for a module that imports nothing of ours).
fn documented_edges(doc: &str) -> Edges {
    let start = doc
        .find(MARKER)
        .expect("docs/architecture.md has the module edges block");
    let block = &doc[start..];
    let fence = block.find("```").expect("the block's opening fence");
    let body = &block[fence + 3..];
    let body = &body[body.find('\n').map_or(0, |n| n + 1)..];
    let end = body.find("```").expect("the block's closing fence");
    body[..end]
        .lines()
        .filter_map(|line| line.split_once('→'))
        .map(|(from, to)| {
            let to = to
                .split(',')
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
                .collect();
            (from.trim().to_string(), to)
        })
        .collect()
}

fn render(edges: &Edges) -> String {
    edges
        .iter()
        .map(|(from, to)| {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            format!("{from} → {}", to.join(", ")).trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cycle among `edges`, if any, as the modules on it.
fn cycle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &Edges,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_map_in_the_docs_is_the_codes_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (edges, upward) = code_edges(&root.join("src"));
    assert!(
        upward.is_empty(),
        "modules use items of lib.rs that are not modules (an edge pointing up): {upward:?}"
    );
    assert_eq!(cycle(&edges), None, "module imports form a cycle");
    // The folders are layers too: `run` may use `report`, never the reverse.
    let mut folders = Edges::new();
    for (from, to) in &edges {
        let Some((from_folder, _)) = from.split_once("::") else {
            continue;
        };
        for (to_folder, _) in to.iter().filter_map(|t| t.split_once("::")) {
            if to_folder != from_folder {
                folders
                    .entry(from_folder.to_string())
                    .or_default()
                    .insert(to_folder.to_string());
            }
        }
    }
    assert_eq!(
        cycle(&folders),
        None,
        "the folders' imports form a cycle: {folders:?}"
    );
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs");
    let documented = documented_edges(&doc);
    assert!(
        documented == edges,
        "docs/architecture.md's module edges differ from the code's imports; the block should read:\n{}\n",
        render(&edges)
    );
}

#[test]
fn edges_are_read_from_paths_groups_and_not_from_tests_comments_or_longer_names() {
    let code = "use crate::{alpha, beta::{Thing, gamma::f}};\nlet x = crate::delta::f();\n\
                use super::eta::G;\nlet z = theta::iota::h(); // crate::omega\n\
                let y = notcrate::kappa;\n#[cfg(test)]\nmod tests { use crate::epsilon; }\n\
                #[cfg(test)]\nuse crate::lambda;\nlet w = crate::mu::x;";
    let top: BTreeSet<String> = ["theta".to_string()].into();
    let shipped = without_comments(&shipped_part(code));
    assert_eq!(
        paths_named(&shipped, "folder::file", "crate", &top),
        [
            "alpha",
            "beta::Thing",
            "beta::gamma::f",
            "delta::f",
            "folder::eta::G",
            "theta::iota::h",
            "mu::x"
        ],
        "{shipped}"
    );
    let mut edges = Edges::new();
    edges.insert("a".into(), ["b".to_string()].into());
    edges.insert("b".into(), ["a".to_string()].into());
    assert!(cycle(&edges).is_some());
    edges.insert("b".into(), BTreeSet::new());
    assert_eq!(cycle(&edges), None);
}

/// `main.rs` is the flags and the dispatch to the three processes
/// (launcher, guardian, daemon); what each process does lives in its own
/// file (docs/architecture.md, "Files").
#[test]
fn main_is_only_flags_and_dispatch() {
    let main = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs"))
        .expect("src/main.rs");
    let lines = main.lines().count();
    assert!(lines <= 150, "src/main.rs has {lines} lines (at most 150)");
}

/// A file's opening sentence: its `//!` lines up to the first blank one,
/// joined, cut at the first full stop followed by a space or the end that is
/// neither inside a code span nor inside parentheses.
fn opening_sentence(text: &str) -> String {
    let joined = text
        .lines()
        .map_while(|line| line.strip_prefix("//!"))
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let (mut in_code, mut depth) = (false, 0i32);
    for (at, c) in joined.char_indices() {
        match c {
            '`' => in_code = !in_code,
            '(' if !in_code => depth += 1,
            ')' if !in_code => depth -= 1,
            '.' if !in_code
                && depth == 0
                && (joined[at + 1..].is_empty() || joined[at + 1..].starts_with(' ')) =>
            {
                return joined[..=at].to_string();
            }
            _ => {}
        }
    }
    joined
}

/// The Files table of docs/architecture.md: `file.rs` -> its cell.
fn files_table(doc: &str) -> BTreeMap<String, String> {
    doc.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("| `")?;
            let (file, rest) = rest.split_once("` | ")?;
            let cell = rest.strip_suffix(" |")?;
            file.ends_with(".rs")
                .then(|| (file.to_string(), cell.to_string()))
        })
        .collect()
}

#[test]
fn the_files_table_is_each_files_opening_sentence() {
    // One fact, one place: what a file owns is said by its opening comment;
    // the table in the docs repeats that sentence and is checked here.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs");
    let table = files_table(&doc);
    let mut sentences = BTreeMap::new();
    let mut files = Vec::new();
    source_files(&root.join("src"), &root.join("src"), &mut files);
    for (name, _) in files {
        let text = std::fs::read_to_string(root.join("src").join(&name)).expect("source");
        let sentence = opening_sentence(&text);
        assert!(
            sentence.ends_with('.') && sentence.len() > 20,
            "{name}: its opening comment does not start with a sentence: {sentence:?}"
        );
        sentences.insert(name, sentence);
    }
    let wrong: Vec<String> = sentences
        .iter()
        .filter(|(name, sentence)| table.get(*name) != Some(*sentence))
        .map(|(name, sentence)| format!("| `{name}` | {sentence} |"))
        .collect();
    assert!(
        wrong.is_empty(),
        "docs/architecture.md's Files table differs from these files' opening sentences; its rows should read:\n{}\n",
        wrong.join("\n")
    );
    let extra: Vec<&String> = table
        .keys()
        .filter(|k| !sentences.contains_key(*k))
        .collect();
    assert!(
        extra.is_empty(),
        "the Files table names files src/ lacks: {extra:?}"
    );
}

#[test]
fn an_opening_sentence_ends_at_a_full_stop_outside_code_and_parentheses() {
    assert_eq!(
        opening_sentence("//! The `a.b` thing (see x. y). Then more.\n//! Next line.\n"),
        "The `a.b` thing (see x. y)."
    );
    assert_eq!(
        opening_sentence("//! Spans\n//! two lines. And more.\n\nfn x() {}"),
        "Spans two lines."
    );
    assert_eq!(
        opening_sentence("//! No stop\n//!\n//! Later. x"),
        "No stop"
    );
}
