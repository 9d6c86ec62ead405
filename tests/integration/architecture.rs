//! The module map in docs/architecture.md is checked against the code's own
//! imports: every `crate::<module>` a file of `src/` names outside its test
//! code (and, in `main.rs`, every `<module>::` path) is an edge, and the
//! block after `<!-- module edges -->` must list exactly those edges. A
//! module that gains or loses an edge fails here, with the block to paste.
//! Edges also point one way: no cycle, and nothing outside `main.rs` uses an
//! item of `main.rs` (`crate::SOMETHING` that is not a module). And the
//! Files table there is each file's opening sentence, word for word.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const MARKER: &str = "<!-- module edges";

type Edges = BTreeMap<String, BTreeSet<String>>;

/// The modules `lib.rs` declares (`pub mod x;`, with or without `#[cfg(test)]`).
fn modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

/// A file's text without its `#[cfg(test)] mod tests { ... }` (the tests
/// may reach anything; the map is of the shipped code).
fn shipped_part(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifiers right after `prefix` in `text`, and inside a
/// `prefix{a, b::c}` group.
fn names_after(text: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before_ok = rest[..at].chars().next_back().is_none_or(|c| !is_ident(c));
        rest = &rest[at + prefix.len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() {
                    names.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

/// Every edge of the shipped code, and the `crate::` names that are not
/// modules (items of `main.rs`), by file.
fn code_edges(src: &Path) -> (Edges, Vec<(String, String)>) {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let modules = modules(&lib);
    let mut edges = Edges::new();
    let mut upward = Vec::new();
    for module in modules.iter().map(String::as_str).chain(["main"]) {
        if module == "fuzz" {
            continue; // test builds only
        }
        let text = std::fs::read_to_string(src.join(format!("{module}.rs")))
            .unwrap_or_else(|e| panic!("src/{module}.rs: {e}"));
        let code = shipped_part(&text);
        let mut used = BTreeSet::new();
        for name in names_after(code, "crate::") {
            if modules.contains(&name) {
                used.insert(name);
            } else {
                upward.push((module.to_string(), name));
            }
        }
        if module == "main" {
            used.extend(
                names_after(code, "sp_wrapper::")
                    .into_iter()
                    .filter(|name| modules.contains(name)),
            );
        }
        used.remove(module);
        used.remove("fuzz");
        edges.insert(module.to_string(), used);
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
        "modules use items defined in main.rs (an edge pointing up): {upward:?}"
    );
    assert_eq!(cycle(&edges), None, "module imports form a cycle");
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs");
    let documented = documented_edges(&doc);
    assert!(
        documented == edges,
        "docs/architecture.md's module edges differ from the code's imports; the block should read:\n{}\n",
        render(&edges)
    );
}

#[test]
fn edges_are_read_from_paths_groups_and_not_from_tests_or_longer_names() {
    let code = "use crate::{alpha, beta::Thing};\nlet x = crate::gamma::f();\n\
                let y = notcrate::delta;\n#[cfg(test)]\nmod tests { use crate::epsilon; }";
    let shipped = shipped_part(code);
    assert_eq!(
        names_after(shipped, "crate::"),
        ["alpha", "beta", "gamma"],
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
    for entry in std::fs::read_dir(root.join("src")).expect("src") {
        let path = entry.expect("src entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source");
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            let sentence = opening_sentence(&text);
            assert!(
                sentence.ends_with('.') && sentence.len() > 20,
                "{name}: its opening comment does not start with a sentence: {sentence:?}"
            );
            sentences.insert(name, sentence);
        }
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
