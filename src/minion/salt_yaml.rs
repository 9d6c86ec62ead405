//! A minion configuration file read the way Salt's `SaltYamlSafeLoader`
//! reads it, its work bounded.
//!
//! Whitespace is taken as libyaml (PyYAML's `CSafeLoader`, Salt's scanner)
//! takes it, made into what `saphyr-parser` reads the same way
//! (`libyaml_whitespace`: tabs as separators, line breaks), YAML parsed by
//! `saphyr-parser` (events only),
//! then composed and constructed here with the
//! rules of Salt's `SaltYamlSafeLoader` on PyYAML's `SafeLoader`: YAML 1.1
//! implicit typing of plain scalars (`yes`/`off` are booleans, `0755` is
//! 755, `0x1F` is 31, `1:30` is 90, `1.5` a float), Salt's leading-zero rule
//! for ints, timestamps kept as text, merge keys (`<<`) merged as Salt's own
//! `flatten_mapping` does (explicit keys win), duplicate keys and unknown
//! tags an error (Salt then skips the file). The work is bounded
//! (`MAX_NODES` a document, `WORK_BUDGET` a lookup, shared by its files):
//! each mapping is flattened once and each node checked once, as Salt's
//! loader does, and the same pair merged twice is counted, not copied.
//! Pure: text in, value out; used by `salt_config` on whatever thread
//! resolves the id.
//!
//! Why a parser crate and not our own: the constructs real fleets write
//! (unindented lists, block scalars, anchors, flow mappings, multi-line
//! quoted strings) need a real YAML scanner; `saphyr-parser` is `no_std`,
//! has no runtime dependencies beyond `arraydeque`, and costs about 60 KiB
//! of the 1 MiB bound (docs/architecture.md, "Dependencies").

use std::cell::{Cell, OnceCell};
use std::rc::Rc;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// What Python holds after `yaml.load`, for the types a config can give.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    /// An int as Python's `str()` renders it (any size: digits, not i64).
    Int(String),
    /// A float as Python's `repr()` prints it, for the ones `float_repr`
    /// renders; others are `Opaque`.
    Float(String),
    Bool(bool),
    Null,
    Seq(Vec<Value>),
    Map(Vec<(Value, Value)>),
    /// A value whose Python `str()` we do not reproduce (bytes, sets, ...):
    /// the name of its type.
    Opaque(&'static str),
}

impl Value {
    /// Python's `str()` of this value, when we render it as Python 3 does.
    pub fn python_str(&self) -> Option<String> {
        match self {
            Value::Str(s) | Value::Int(s) | Value::Float(s) => Some(s.clone()),
            Value::Bool(true) => Some("True".into()),
            Value::Bool(false) => Some("False".into()),
            Value::Null => Some("None".into()),
            Value::Seq(_) | Value::Map(_) | Value::Opaque(_) => None,
        }
    }

    /// Python truthiness (`x or {}`, `if opts.get(...)`).
    pub fn truthy(&self) -> bool {
        match self {
            Value::Str(s) => !s.is_empty(),
            Value::Int(s) => s != "0",
            Value::Float(f) => f.trim_start_matches('-') != "0.0",
            Value::Bool(b) => *b,
            Value::Null => false,
            Value::Seq(items) => !items.is_empty(),
            Value::Map(pairs) => !pairs.is_empty(),
            Value::Opaque(_) => true,
        }
    }

    /// `mapping.get(key)` for a string key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A short name of the Python type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "str",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Null => "None",
            Value::Seq(_) => "list",
            Value::Map(_) => "dict",
            Value::Opaque(what) => what,
        }
    }
}

/// Nesting deeper than this is refused (PyYAML has no bound but recursion).
const MAX_DEPTH: usize = 64;
/// Nodes one document may compose: bounds the memory one file can take
/// (some 200 bytes a node: under 10 MiB in all for the shipped binary).
const MAX_NODES: usize = 40_000;
/// The work one lookup may do, all its files together: a unit per node
/// composed, per value constructed or checked, `MERGED_PAIR_COST` per pair
/// a merge produces (each is kept, as Salt keeps its flattened mappings).
/// Tens of milliseconds, and 6 MiB of merged pairs at most; a real
/// configuration takes a few thousand units.
pub const WORK_BUDGET: usize = 1_000_000;
/// A merged pair's share of `WORK_BUDGET`: 24 bytes kept.
const MERGED_PAIR_COST: usize = 4;

const YAML_TAG: &str = "tag:yaml.org,2002:";

/// A composed node: what PyYAML's composer builds, before construction.
#[derive(Debug)]
struct Node {
    kind: Kind,
    /// A mapping's pairs once flattened: Salt's `flatten_mapping` rewrites
    /// the node in place, so each mapping is flattened once however many
    /// aliases merge it.
    flat: OnceCell<Rc<Vec<Entry>>>,
    /// Checked without error already: PyYAML constructs each node once,
    /// however many aliases name it.
    checked: Cell<bool>,
    /// As a key being merged: the mapping being flattened (its address)
    /// and where in its merged pairs this key's first pair is.
    mark: Cell<(usize, usize)>,
}

#[derive(Debug)]
enum Kind {
    Scalar {
        value: Box<str>,
        plain: bool,
        tag: Option<Box<str>>,
    },
    Seq {
        tag: Option<Box<str>>,
        items: Vec<Rc<Node>>,
    },
    Map {
        tag: Option<Box<str>>,
        pairs: Vec<(Rc<Node>, Rc<Node>)>,
    },
}

/// A pair of a flattened mapping, and how many times the merges brought
/// that very pair (more than once: the same key twice, which Salt rejects).
/// Counting copies instead of repeating them keeps merges of merges linear
/// where Salt's list doubles at each level.
#[derive(Clone, Debug)]
struct Entry {
    key: Rc<Node>,
    value: Rc<Node>,
    copies: usize,
}

/// What is built of a mapping: everything, nothing (only checked, as Salt
/// would construct it), or only these top-level keys.
#[derive(Clone, Copy)]
enum Build<'k> {
    All,
    Nothing,
    Keys(&'k [&'k str]),
}

/// `salt.utils.yaml.safe_load(text)`: the single document's value (`Null`
/// for an empty stream), or why Salt's loader would raise.
#[cfg(test)]
pub fn load(text: &str) -> Result<Value, String> {
    let mut budget = WORK_BUDGET;
    load_keys(text, None, &mut budget)
}

/// `load`, with only the top-level keys in `keys` (all when `None`) in the
/// value: the rest is checked as Salt's loader would construct it, then
/// dropped. `budget` is the work left to this lookup (`WORK_BUDGET` at its
/// start); past it, an error.
pub fn load_keys(text: &str, keys: Option<&[&str]>, budget: &mut usize) -> Result<Value, String> {
    let root = compose(&libyaml_whitespace(text)?, budget)?;
    let build = keys.map_or(Build::All, Build::Keys);
    match root {
        None => Ok(Value::Null),
        Some(node) => construct(&node, 0, budget, build),
    }
}

fn spend(budget: &mut usize, units: usize) -> Result<(), String> {
    match budget.checked_sub(units) {
        Some(left) => {
            *budget = left;
            Ok(())
        }
        // Spent: the files after this one are not read either.
        None => {
            *budget = 0;
            Err("more YAML work than one lookup may do (merges of merges?)".into())
        }
    }
}

// ---------------------------------------------------------------------------
// Whitespace as libyaml (Salt's loader, through PyYAML's CSafeLoader) reads
// it, made into what saphyr reads the same way.

/// Why libyaml refuses line `number`.
#[inline(never)]
fn refused(why: &str, number: usize) -> String {
    format!("{why} (line {number})")
}

/// The text as saphyr reads it the way libyaml reads the original, changed
/// in place: the tabs libyaml takes as separators where saphyr (YAML 1.2)
/// refuses them made spaces (after a value indicator: `key:<TAB>value`;
/// leading a line of a flow collection or a quoted scalar; on a blank line
/// a plain scalar takes), which keeps every column as libyaml counts it (a
/// tab is one); NEL, U+2028 and U+2029, line breaks to libyaml only, made
/// `\r\n` (with a space before it for the 3-byte ones). An error where
/// libyaml refuses a tab (in a line's indentation in block context, after
/// a `-` or `?` indicator or a `:` that starts a line, indenting a block
/// scalar) and on a control character. Quoted and block scalars keep their
/// tabs; `\r\n` and `\r` are breaks to both.
fn libyaml_whitespace(text: &str) -> Result<String, String> {
    let mut out = text.as_bytes().to_vec();
    // Open `[`/`{`; the quote of a quoted scalar still open; the
    // indentation of the line that opened a block scalar.
    let mut flow = 0usize;
    let mut quote: Option<u8> = None;
    let mut block: Option<usize> = None;
    // The indentation of the line a plain scalar ended, in block context:
    // libyaml's plain scalar takes the blank lines after it, tabs included
    // past its indentation.
    let mut plain_before: Option<usize> = None;
    let mut number = 0;
    let mut start = 0;
    while start <= out.len() {
        let mut end = start;
        let next_start = loop {
            match out[end..] {
                [] => break end + 1,
                [b'\r', b'\n', ..] => break end + 2,
                [b'\n' | b'\r', ..] => break end + 1,
                [0xc2, 0x85, ..] => {
                    out[end..end + 2].copy_from_slice(b"\r\n");
                    break end + 2;
                }
                [0xe2, 0x80, 0xa8 | 0xa9, ..] => {
                    out[end..end + 3].copy_from_slice(b" \r\n");
                    break end + 3;
                }
                _ => end += 1,
            }
        };
        let line_start = start;
        start = next_start;
        number += 1;
        let refuse = |why: &str| Err(refused(why, number));
        let line = &out[line_start..end];
        // C0 and C1 controls but tab.
        let mut previous = 0;
        for &b in line {
            if (b < 0x20 && b != b'\t') || b == 0x7f || (previous == 0xc2 && b < 0xa0) {
                return refuse("a control character");
            }
            previous = b;
        }
        let spaces = line.iter().take_while(|b| **b == b' ').count();
        let indent = line
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        let blank_line = indent == line.len();
        if let Some(parent) = block {
            if blank_line || spaces > parent {
                if spaces <= parent && line.get(spaces) == Some(&b'\t') {
                    return refuse("a tab where an indentation space is expected");
                }
                continue;
            }
            block = None;
        }
        if quote.is_some() || flow > 0 || (blank_line && plain_before.is_some_and(|p| spaces > p)) {
            // Folded away (quoted), skipped (flow) or taken by the plain
            // scalar before (blank) by libyaml.
            out[line_start..line_start + indent].fill(b' ');
        } else if spaces < indent {
            return refuse("a tab in the indentation");
        }
        let mut at = line_start + indent;
        // Where a token may start: the line's start, after a blank or an
        // indicator.
        let mut token_start = quote.is_none();
        // After a blank (or at the line's start): where `#` starts a comment.
        let mut after_blank = true;
        // Inside a plain scalar, where quotes, brackets and `|` are text.
        let mut plain = false;
        while at < end {
            let c = out[at];
            let next = if at + 1 < end {
                Some(out[at + 1])
            } else {
                None
            };
            let blank = matches!(c, b' ' | b'\t');
            let blank_after = matches!(next, None | Some(b' ' | b'\t'));
            at += 1;
            if let Some(open) = quote {
                if c == b'\\' && open == b'"' {
                    at += 1;
                } else if c == open {
                    if open == b'\'' && next == Some(b'\'') {
                        at += 1;
                    } else {
                        quote = None;
                    }
                }
                continue;
            }
            if c == b'#' && after_blank {
                plain = false;
                break;
            }
            if token_start && flow == 0 {
                match (c, next) {
                    (b'-' | b'?', Some(b'\t')) => return refuse("a tab after a block indicator"),
                    (b':', Some(b'\t')) if at == line_start + indent + 1 => {
                        return refuse("a tab after a complex key's ':'");
                    }
                    (b'|' | b'>', _) => {
                        block = Some(spaces);
                        break;
                    }
                    _ => {}
                }
            }
            if token_start && (c == b'"' || c == b'\'') {
                quote = Some(c);
                continue;
            }
            if c == b':' && (blank_after || (flow > 0 && matches!(next, Some(b',' | b']' | b'}'))))
            {
                while at < end && matches!(out[at], b' ' | b'\t') {
                    out[at] = b' ';
                    at += 1;
                }
                token_start = true;
                after_blank = true;
                plain = false;
                continue;
            }
            let indicator = (matches!(c, b'-' | b'?') && blank_after)
                || matches!(c, b'&' | b'*' | b'!')
                || (matches!(c, b'[' | b'{') && (token_start || flow > 0))
                || (flow > 0 && matches!(c, b',' | b']' | b'}'));
            if token_start && !blank && !indicator {
                plain = true;
            }
            match c {
                b'[' | b'{' if indicator => flow += 1,
                b']' | b'}' if indicator => flow -= 1,
                _ => {}
            }
            if flow > 0 && matches!(c, b',' | b']' | b'}') {
                plain = false;
            }
            token_start = (blank && !plain)
                || (flow > 0 && matches!(c, b',' | b'[' | b'{'))
                || (token_start && matches!(c, b'-' | b'?') && blank_after);
            after_blank = blank;
        }
        if !blank_line {
            plain_before = (plain && flow == 0 && quote.is_none()).then_some(spaces);
        }
    }
    // Only ASCII was changed, for ASCII.
    String::from_utf8(out).map_err(|_| "not UTF-8 text".to_string())
}

// ---------------------------------------------------------------------------
// Composition: events to nodes, anchors resolved.

struct Composer<'a, 'b> {
    events: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: Vec<(usize, Rc<Node>)>,
    /// Nodes made so far, aliases included.
    made: usize,
    budget: &'b mut usize,
}

fn compose(text: &str, budget: &mut usize) -> Result<Option<Rc<Node>>, String> {
    let mut composer = Composer {
        events: Parser::new_from_str(text),
        anchors: Vec::new(),
        made: 0,
        budget,
    };
    let mut root = None;
    let mut documents = 0;
    loop {
        match composer.next()? {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err("expected a single document in the stream".into());
                }
                let first = composer.next()?;
                root = Some(composer.node(first, 0)?);
                composer.anchors.clear();
            }
            _ => return Err("unexpected event at the top level".into()),
        }
    }
    Ok(root)
}

fn tag_text(tag: Option<std::borrow::Cow<'_, saphyr_parser::Tag>>) -> Option<Box<str>> {
    tag.map(|t| format!("{}{}", t.handle, t.suffix).into_boxed_str())
}

impl<'a> Composer<'a, '_> {
    fn next(&mut self) -> Result<Event<'a>, String> {
        match self.events.next() {
            Some(Ok((event, _))) => Ok(event),
            Some(Err(e)) => Err(format!("{} (line {})", e.info(), e.marker().line())),
            None => Ok(Event::StreamEnd),
        }
    }

    fn node(&mut self, event: Event<'a>, depth: usize) -> Result<Rc<Node>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        self.made += 1;
        if self.made > MAX_NODES {
            // A bound of the agent's, not Salt's: the lookup stops here.
            *self.budget = 0;
            return Err(format!("more than {MAX_NODES} YAML nodes"));
        }
        spend(self.budget, 1)?;
        let (kind, anchor) = match event {
            Event::Alias(id) => {
                return self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(anchor, _)| *anchor == id)
                    .map(|(_, node)| node.clone())
                    .ok_or_else(|| "found undefined alias".to_string());
            }
            Event::Scalar(value, style, anchor, tag) => (
                Kind::Scalar {
                    value: value.into_owned().into_boxed_str(),
                    plain: style == ScalarStyle::Plain,
                    tag: tag_text(tag),
                },
                anchor,
            ),
            Event::SequenceStart(anchor, tag) => {
                let mut items = Vec::new();
                loop {
                    match self.next()? {
                        Event::SequenceEnd => break,
                        event => items.push(self.node(event, depth + 1)?),
                    }
                }
                let tag = tag_text(tag);
                (Kind::Seq { tag, items }, anchor)
            }
            Event::MappingStart(anchor, tag) => {
                let mut pairs = Vec::new();
                loop {
                    let key = match self.next()? {
                        Event::MappingEnd => break,
                        event => self.node(event, depth + 1)?,
                    };
                    let event = self.next()?;
                    let value = self.node(event, depth + 1)?;
                    pairs.push((key, value));
                }
                let tag = tag_text(tag);
                (Kind::Map { tag, pairs }, anchor)
            }
            _ => return Err("unexpected event inside a node".into()),
        };
        let node = Rc::new(Node {
            kind,
            flat: OnceCell::new(),
            checked: Cell::new(false),
            mark: Cell::new((0, 0)),
        });
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        Ok(node)
    }
}

// ---------------------------------------------------------------------------
// Construction: SafeConstructor with Salt's overrides.

/// The value of `node` (`Build::All`, or the top-level keys asked for), or
/// only a check that Salt's loader would construct it (`Build::Nothing`:
/// `Null` back, each node checked once).
fn construct(node: &Node, depth: usize, budget: &mut usize, build: Build) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let check_only = matches!(build, Build::Nothing);
    if check_only && node.checked.get() {
        return Ok(Value::Null);
    }
    spend(budget, 1)?;
    // Below the top, what is built is all or nothing.
    let inner = if check_only {
        Build::Nothing
    } else {
        Build::All
    };
    let value = match &node.kind {
        Kind::Scalar { value, plain, tag } => construct_scalar(value, *plain, tag.as_deref())?,
        Kind::Seq { tag, items } => match tag.as_deref().map(core_tag) {
            None | Some("!" | "seq") => {
                let mut values = Vec::new();
                for item in items {
                    let value = construct(item, depth + 1, budget, inner)?;
                    if !check_only {
                        values.push(value);
                    }
                }
                Value::Seq(values)
            }
            Some("omap" | "pairs") => Value::Opaque("omap"),
            Some(other) => return Err(format!("could not determine a constructor for {other:?}")),
        },
        Kind::Map { tag, .. } => match tag.as_deref().map(core_tag) {
            None | Some("!" | "map") => construct_mapping(node, depth, budget, build)?,
            Some("set") => {
                construct_mapping(node, depth, budget, Build::Nothing)?;
                Value::Opaque("set")
            }
            Some(other) => return Err(format!("could not determine a constructor for {other:?}")),
        },
    };
    if check_only {
        node.checked.set(true);
        return Ok(Value::Null);
    }
    Ok(value)
}

/// `tag:yaml.org,2002:str` -> `str`; any other tag unchanged.
fn core_tag(tag: &str) -> &str {
    tag.strip_prefix(YAML_TAG).unwrap_or(tag)
}

fn construct_scalar(value: &str, plain: bool, tag: Option<&str>) -> Result<Value, String> {
    let tag = match tag {
        Some(tag) if tag != "!" => core_tag(tag),
        // `!` and quoted scalars: a string; plain ones by their look.
        Some(_) => "str",
        None if !plain => "str",
        None => implicit_tag(value),
    };
    match tag {
        "str" | "timestamp" | "python/unicode" => Ok(Value::Str(value.to_string())),
        "null" => Ok(Value::Null),
        "bool" => match value.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" => Ok(Value::Bool(true)),
            "no" | "false" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("{value:?} is not a bool")),
        },
        // Past u64 (hex, octal, binary, sexagesimal only: decimal digits
        // are kept as text at any size), Python's int is not rendered.
        "int" => Ok(int_value(value).map_or(Value::Opaque("int"), Value::Int)),
        "float" => Ok(float_repr(value).map_or(Value::Opaque("float"), Value::Float)),
        "binary" => Ok(Value::Opaque("bytes")),
        other => Err(format!("could not determine a constructor for {other:?}")),
    }
}

/// Salt's `flatten_mapping` then `construct_mapping` of the mapping `node`.
fn construct_mapping(
    node: &Node,
    depth: usize,
    budget: &mut usize,
    build: Build,
) -> Result<Value, String> {
    let entries = flatten(node, 0, budget)?;
    let mut mapping: Vec<(Value, Value)> = Vec::new();
    let mut identities: Vec<String> = Vec::with_capacity(entries.len());
    for entry in entries.iter() {
        // Salt's flatten_mapping makes a `=` key (YAML's value key) a string.
        let key = match &entry.key.kind {
            Kind::Scalar {
                value,
                plain: true,
                tag: None,
            } if &**value == "=" => Value::Str("=".into()),
            _ => construct(&entry.key, depth + 1, budget, Build::All)?,
        };
        let Some(identity) = key_identity(&key) else {
            return Err(format!("found unacceptable key ({})", key.type_name()));
        };
        if entry.copies > 1 {
            return Err(format!("found conflicting ID {identity:?}"));
        }
        let wanted = match build {
            Build::All => true,
            Build::Nothing => false,
            Build::Keys(keys) => matches!(&key, Value::Str(s) if keys.contains(&s.as_str())),
        };
        if wanted {
            let value = construct(&entry.value, depth + 1, budget, Build::All)?;
            mapping.push((key, value));
        } else {
            construct(&entry.value, depth + 1, budget, Build::Nothing)?;
        }
        // NaN equals nothing, not even itself.
        if !identity.is_empty() {
            identities.push(identity);
        }
    }
    identities.sort();
    if let Some(pair) = identities.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("found conflicting ID {:?}", pair[0]));
    }
    Ok(Value::Map(mapping))
}

fn is_merge_key(key: &Node) -> bool {
    match &key.kind {
        Kind::Scalar { value, plain, tag } => match tag.as_deref() {
            Some(tag) => core_tag(tag) == "merge",
            None => *plain && &**value == "<<",
        },
        _ => false,
    }
}

/// A scalar key's text (what Salt's flatten compares), `None` for others.
fn key_text(key: &Node) -> Option<&str> {
    match &key.kind {
        Kind::Scalar { value, .. } => Some(value),
        _ => None,
    }
}

/// Salt's `flatten_mapping`, once per node: `<<` values (a mapping, or a
/// list of them, the later ones first) go before the explicit pairs, minus
/// the keys whose text an explicit key already has. The same pair brought
/// twice is one entry with two copies (order does not matter: a mapping
/// Salt accepts has each key once).
fn flatten(node: &Node, depth: usize, budget: &mut usize) -> Result<Rc<Vec<Entry>>, String> {
    if let Some(done) = node.flat.get() {
        return Ok(done.clone());
    }
    let Kind::Map { pairs, .. } = &node.kind else {
        return Err("expected a mapping for merging".into());
    };
    if depth > MAX_DEPTH {
        return Err(format!("merges nested deeper than {MAX_DEPTH}"));
    }
    let mut explicit: Vec<Entry> = Vec::new();
    let mut merged: Vec<&Node> = Vec::new();
    for (key, value) in pairs {
        if is_merge_key(key) {
            merged.push(value);
        } else {
            explicit.push(Entry {
                key: key.clone(),
                value: value.clone(),
                copies: 1,
            });
        }
    }
    if merged.is_empty() {
        let flat = Rc::new(explicit);
        let _ = node.flat.set(flat.clone());
        return Ok(flat);
    }
    // The texts of the explicit keys, sorted: merged pairs with one of
    // them are dropped.
    let mut texts: Vec<String> = explicit
        .iter()
        .filter_map(|e| key_text(&e.key).map(str::to_string))
        .collect();
    texts.sort();
    let stamp = node as *const Node as usize;
    let mut merge: Vec<Entry> = Vec::new();
    for value in merged {
        let sources: Vec<Rc<Vec<Entry>>> = match &value.kind {
            Kind::Map { .. } => vec![flatten(value, depth + 1, budget)?],
            Kind::Seq { items, .. } => {
                let mut sources = Vec::with_capacity(items.len());
                for item in items.iter().rev() {
                    sources.push(flatten(item, depth + 1, budget)?);
                }
                sources
            }
            Kind::Scalar { .. } => {
                return Err("expected a mapping or list of mappings for merging".into());
            }
        };
        for source in sources {
            spend(budget, source.len().saturating_mul(MERGED_PAIR_COST))?;
            for entry in source.iter() {
                let overridden = key_text(&entry.key)
                    .is_some_and(|text| texts.binary_search_by(|t| t.as_str().cmp(text)).is_ok());
                if !overridden {
                    add_copies(&mut merge, entry, stamp);
                }
            }
        }
    }
    merge.extend(explicit);
    let flat = merge;
    let flat = Rc::new(flat);
    let _ = node.flat.set(flat.clone());
    Ok(flat)
}

/// Add `entry` to the pairs `merge` of the mapping `stamp` names, or, when
/// that very pair is there already (found through its key's mark), add its
/// copies to that one.
fn add_copies(merge: &mut Vec<Entry>, entry: &Entry, stamp: usize) {
    let (marked, at) = entry.key.mark.get();
    if marked == stamp {
        if let Some(same) = merge
            .get_mut(at)
            .filter(|same| Rc::ptr_eq(&same.value, &entry.value))
        {
            same.copies = same.copies.saturating_add(entry.copies);
            return;
        }
    }
    entry.key.mark.set((stamp, merge.len()));
    merge.push(entry.clone());
}

/// What Python's dict compares keys by (`1 == 1.0 == True`); `None` for an
/// unhashable key; empty for a key equal to nothing (NaN).
fn key_identity(key: &Value) -> Option<String> {
    Some(match key {
        Value::Str(s) => format!("s:{s}"),
        Value::Int(i) => format!("n:{i}"),
        Value::Bool(b) => format!("n:{}", u8::from(*b)),
        Value::Float(f) if f == "nan" => String::new(),
        Value::Float(f) => match f.strip_suffix(".0") {
            Some(whole) if !whole.contains('e') => format!("n:{}", whole.trim_start_matches('-')),
            _ => format!("f:{f}"),
        },
        Value::Null => "none".into(),
        Value::Opaque(what) => format!("o:{what}"),
        Value::Seq(_) | Value::Map(_) => return None,
    })
}

// ---------------------------------------------------------------------------
// PyYAML's YAML 1.1 implicit resolvers (resolver.py), as plain matchers.

fn implicit_tag(value: &str) -> &'static str {
    if is_bool(value) {
        "bool"
    } else if is_float(value) {
        "float"
    } else if is_int(value) {
        "int"
    } else if value == "<<" {
        "merge"
    } else if matches!(value, "" | "~" | "null" | "Null" | "NULL") {
        "null"
    } else if value == "=" {
        "value"
    } else {
        // Timestamps resolve too, but Salt constructs them as their text.
        "str"
    }
}

fn is_bool(v: &str) -> bool {
    matches!(
        v,
        "yes"
            | "Yes"
            | "YES"
            | "no"
            | "No"
            | "NO"
            | "true"
            | "True"
            | "TRUE"
            | "false"
            | "False"
            | "FALSE"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
    )
}

fn strip_sign(v: &str) -> &str {
    v.strip_prefix(['-', '+']).unwrap_or(v)
}

/// `[0-9][0-9_]*` at the start: its length (0 when none).
fn digits_run(v: &[u8]) -> usize {
    if v.first().is_some_and(u8::is_ascii_digit) {
        1 + v[1..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'_')
            .count()
    } else {
        0
    }
}

/// `(?::[0-5]?[0-9])+` at the start: its length (0 when none).
fn sexagesimal_run(v: &[u8]) -> usize {
    let mut at = 0;
    while v.get(at) == Some(&b':') {
        let digits = v[at + 1..]
            .iter()
            .take(2)
            .take_while(|b| b.is_ascii_digit())
            .count();
        let ok = match digits {
            1 => true,
            2 => v[at + 1] <= b'5',
            _ => false,
        };
        if !ok {
            break;
        }
        // `[0-5]?[0-9]` takes at most two digits; a third ends the group.
        at += 1 + digits;
    }
    at
}

/// `[eE][-+][0-9]+` exactly.
fn is_exponent(v: &[u8]) -> bool {
    v.len() >= 3
        && matches!(v[0], b'e' | b'E')
        && matches!(v[1], b'-' | b'+')
        && v[2..].iter().all(u8::is_ascii_digit)
}

fn is_float(value: &str) -> bool {
    let v = value.as_bytes();
    if matches!(value, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let unsigned = strip_sign(value).as_bytes();
    if matches!(unsigned, b".inf" | b".Inf" | b".INF") {
        return true;
    }
    // `\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?` (no sign)
    if v.first() == Some(&b'.') {
        let run = digits_run(&v[1..]);
        return run > 0 && (1 + run == v.len() || is_exponent(&v[1 + run..]));
    }
    let run = digits_run(unsigned);
    if run == 0 {
        return false;
    }
    let rest = &unsigned[run..];
    // `[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?`
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'_')
            .count();
        if digits == fraction.len() || is_exponent(&fraction[digits..]) {
            return true;
        }
    }
    // `[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*`
    let sexa = sexagesimal_run(rest);
    sexa > 0
        && rest[sexa..].first() == Some(&b'.')
        && rest[sexa + 1..]
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b'_')
}

fn is_int(value: &str) -> bool {
    let v = strip_sign(value).as_bytes();
    let all =
        |s: &[u8], ok: fn(&u8) -> bool| !s.is_empty() && s.iter().all(|b| ok(b) || *b == b'_');
    if let Some(bits) = v.strip_prefix(b"0b") {
        return all(bits, |b| matches!(b, b'0' | b'1'));
    }
    if let Some(hex) = v.strip_prefix(b"0x") {
        return all(hex, u8::is_ascii_hexdigit);
    }
    if v == b"0" {
        return true;
    }
    if let Some(octal) = v.strip_prefix(b"0") {
        return all(octal, |b| (b'0'..=b'7').contains(b));
    }
    if !v.first().is_some_and(|b| (b'1'..=b'9').contains(b)) {
        return false;
    }
    let run = digits_run(v);
    run == v.len() || {
        let sexa = sexagesimal_run(&v[run..]);
        sexa > 0 && run + sexa == v.len()
    }
}

/// Salt's `construct_scalar` (leading zeros stripped: `0755` is 755) then
/// PyYAML's `construct_yaml_int`, as Python's `str()` prints the result.
fn int_value(text: &str) -> Result<String, String> {
    let mut text = text.to_string();
    if text != "0" && text.starts_with('0') && !text.starts_with("0b") && !text.starts_with("0x") {
        text = text.trim_start_matches('0').to_string();
        if text.is_empty() {
            text = "0".into();
        }
    }
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    let negative = cleaned.starts_with('-');
    let digits = strip_sign(&cleaned);
    let bad = || format!("{text:?} is not an int");
    let magnitude: String = if digits.is_empty() {
        return Err(bad());
    } else if digits == "0" {
        "0".into()
    } else if let Some(bits) = digits.strip_prefix("0b") {
        u64::from_str_radix(bits, 2).map_err(|_| bad())?.to_string()
    } else if let Some(hex) = digits.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).map_err(|_| bad())?.to_string()
    } else if digits.starts_with('0') {
        u64::from_str_radix(digits, 8)
            .map_err(|_| bad())?
            .to_string()
    } else if digits.contains(':') {
        let mut total: u64 = 0;
        for part in digits.split(':') {
            let part: u64 = part.parse().map_err(|_| bad())?;
            total = total
                .checked_mul(60)
                .and_then(|t| t.checked_add(part))
                .ok_or_else(bad)?;
        }
        total.to_string()
    } else if digits.bytes().all(|b| b.is_ascii_digit()) {
        // Any size, as Python's int: the digits are the value.
        let trimmed = digits.trim_start_matches('0');
        if trimmed.is_empty() { "0" } else { trimmed }.to_string()
    } else {
        return Err(bad());
    };
    Ok(if negative && magnitude != "0" {
        format!("-{magnitude}")
    } else {
        magnitude
    })
}

/// Python's `repr()` of the float PyYAML's `construct_yaml_float` makes of
/// `text`, worked on the digits (no float arithmetic, which would cost the
/// binary tens of KiB): `None` (so `Opaque`) past 15 significant digits,
/// for exponents outside Python's positional range and for sexagesimals.
/// A decimal of at most 15 significant digits is the shortest text of its
/// double, so Python prints those digits.
fn float_repr(text: &str) -> Option<String> {
    let lower: String = text
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    let negative = lower.starts_with('-');
    let unsigned = strip_sign(&lower);
    let sign = if negative { "-" } else { "" };
    match unsigned {
        ".inf" => return Some(format!("{sign}inf")),
        ".nan" => return Some("nan".into()),
        _ if unsigned.contains(':') => return None,
        _ => {}
    }
    let (mantissa, exponent) = match unsigned.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = format!("{whole}{fraction}");
    // The value is 0.<digits> * 10^point.
    let leading = digits.len() - digits.trim_start_matches('0').len();
    let significant = digits.trim_matches('0');
    if significant.is_empty() {
        return Some(format!("{sign}0.0"));
    }
    if significant.len() > 15 {
        return None;
    }
    let point = whole.len() as i32 - leading as i32 + exponent;
    if !(-3..=16).contains(&point) {
        return None;
    }
    let body = if point <= 0 {
        format!("0.{}{significant}", "0".repeat((-point) as usize))
    } else if point as usize >= significant.len() {
        format!(
            "{significant}{}.0",
            "0".repeat(point as usize - significant.len())
        )
    } else {
        let (head, tail) = significant.split_at(point as usize);
        format!("{head}.{tail}")
    };
    Some(format!("{sign}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> Result<Option<String>, String> {
        load(text).map(|v| v.get("id").and_then(Value::python_str))
    }

    #[test]
    fn plain_scalars_typed_as_yaml_1_1() {
        for (text, expected) in [
            ("id: web-1", "web-1"),
            ("id: 123", "123"),
            ("id: +1_000", "1000"),
            ("id: 0755", "755"),
            ("id: 0789", "0789"),
            ("id: -0755", "-493"),
            ("id: 0x1F", "31"),
            ("id: 0b101", "5"),
            ("id: 190:20:30", "685230"),
            ("id: 1.5", "1.5"),
            ("id: 1.0e+3", "1000.0"),
            ("id: 0.0", "0.0"),
            ("id: 1.0e3", "1.0e3"),
            ("id: 1e3", "1e3"),
            ("id: .inf", "inf"),
            ("id: -.Inf", "-inf"),
            ("id: 1_0.5", "10.5"),
            ("id: yes", "True"),
            ("id: Off", "False"),
            ("id: y", "y"),
            ("id:", "None"),
            ("id: ~", "None"),
            ("id: 2001-12-14", "2001-12-14"),
            ("id: 12345678901234567890123", "12345678901234567890123"),
        ] {
            assert_eq!(id(text), Ok(Some(expected.to_string())), "{text}");
        }
    }

    #[test]
    fn floats_print_as_python_does() {
        for (text, repr) in [
            ("1.5", Some("1.5")),
            ("1.", Some("1.0")),
            (".5", Some("0.5")),
            ("-0.0", Some("-0.0")),
            ("10.50", Some("10.5")),
            ("1_000.25", Some("1000.25")),
            ("1.0e+3", Some("1000.0")),
            ("1.5e-3", Some("0.0015")),
            ("0.0001", Some("0.0001")),
            ("0.00001", None),
            ("1.0e+15", Some("1000000000000000.0")),
            ("1.0e+16", None),
            ("3.14159265358979", Some("3.14159265358979")),
            ("3.141592653589793", None),
            ("1:30.5", None),
        ] {
            assert_eq!(float_repr(text).as_deref(), repr, "{text}");
        }
    }

    #[test]
    fn structures_salt_accepts() {
        assert_eq!(id("master:\n- a\n- b\nid: x\n"), Ok(Some("x".into())));
        assert_eq!(id("{id: flow, master: m}"), Ok(Some("flow".into())));
        assert_eq!(
            id("id: >-\n  folded\n  text\n"),
            Ok(Some("folded text".into()))
        );
        assert_eq!(id("id: |\n  lit\n"), Ok(Some("lit\n".into())));
        assert_eq!(id("id: !!str 123"), Ok(Some("123".into())));
        assert_eq!(id("id: \"multi\n  line\"\n"), Ok(Some("multi line".into())));
        assert_eq!(
            id("base: &b {id: merged}\n<<: *b\n"),
            Ok(Some("merged".into()))
        );
        assert_eq!(
            id("base: &b {id: merged}\n<<: *b\nid: explicit\n"),
            Ok(Some("explicit".into()))
        );
        assert_eq!(id("x: &a anchored\nid: *a\n"), Ok(Some("anchored".into())));
        assert_eq!(id(""), Ok(None));
    }

    #[test]
    fn what_salt_rejects_is_an_error() {
        for text in [
            "id: a\nid: b\n",
            "1: a\ntrue: b\n",
            "id: !custom x\n",
            "id: a\n---\nid: b\n",
            "id: =\n",
            "? [a]\n: b\n",
            "id: *nowhere\n",
            "id: \"unterminated\n",
        ] {
            assert!(load(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for text in [
            format!("id: {}", "[".repeat(100_000)),
            format!("id: {}x{}", "[".repeat(100_000), "]".repeat(100_000)),
            format!("id: {}", "{a: ".repeat(50_000)),
            format!("id:\n{}x\n", "- ".repeat(10_000)),
        ] {
            assert!(load(&text).is_err(), "{:?}", &text[..40]);
        }
        // Just within the bound, on half the link thread's 256 KiB stack
        // (the machine id is read there): nested mappings, sequences and merges.
        let deepest = format!(
            "b: &b {{x: 1}}\nid: {}{{<<: *b, y: [z]}}{}\n",
            "{a: [".repeat(30),
            "]}".repeat(30)
        );
        let parsed = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || load(&deepest).map(|v| v.get("id").is_some()))
            .expect("thread")
            .join()
            .expect("no stack overflow");
        assert_eq!(parsed, Ok(true));
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let prev = level - 1;
            text.push_str(&format!(
                "a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        assert!(load(&text).is_err());
        // Checked once per node, as PyYAML constructs each node once: only
        // the keys asked for are built (Salt 3008.3 reads this file).
        text.push_str("id: after-the-bomb\n");
        let mut budget = WORK_BUDGET;
        let top = load_keys(&text, Some(&["id"]), &mut budget).expect("accepted");
        assert_eq!(
            top,
            Value::Map(vec![(
                Value::Str("id".into()),
                Value::Str("after-the-bomb".into())
            )])
        );
        assert!(
            WORK_BUDGET - budget < 1000,
            "{} units",
            WORK_BUDGET - budget
        );
    }

    /// Whitespace as libyaml reads it (tests/salt_id compares the files
    /// with Salt's own reading).
    #[test]
    fn tabs_and_line_breaks_as_libyaml_reads_them() {
        for (text, expected) in [
            ("id:\ttabbed\n", "tabbed"),
            ("id:\t\tx\t# c\r\n", "x"),
            ("master: m\rid: cr\r", "cr"),
            ("{id:\tflow,\tm: x}", "flow"),
            ("id: 'a\tb'\n", "a\tb"),
            ("id: \"multi\n\tline\"\n", "multi line"),
            ("id: |\n  a:\tb\n", "a:\tb\n"),
            ("\u{feff}id:\tbom\r\n", "bom"),
        ] {
            assert_eq!(id(text), Ok(Some(expected.to_string())), "{text:?}");
        }
        for text in [
            "\tid: x\n",
            "id: x\n\t\n",
            "m:\n-\ta\nid: x\n",
            "? id\n:\tx\n",
            "id: |\n\tx\n",
            "id: x\u{c}\n",
        ] {
            assert!(load(text).is_err(), "{text:?} should be rejected");
        }
    }

    /// Salt flattens each mapping once (in place); the same pair merged
    /// twice is a duplicate key it rejects, however deep the merges nest:
    /// counted, not copied, so 60 doubling levels cost a few units a level.
    #[test]
    fn merges_of_merges_are_linear() {
        let mut doubling = String::from("defs:\n  l0: &l0 {a: 1}\n");
        let mut chained = String::from("l0: &l0 {a: 1}\n");
        for level in 1..=60 {
            let below = level - 1;
            doubling.push_str(&format!(
                "  l{level}: &l{level} {{<<: [*l{below}, *l{below}]}}\n"
            ));
            chained.push_str(&format!(
                "l{level}: &l{level} {{<<: *l{below}, n{level}: {{<<: *l{below}}}}}\n"
            ));
        }
        let mut budget = WORK_BUDGET;
        let rejected = load_keys(
            &format!("{doubling}<<: *l60\nid: x\n"),
            Some(&["id"]),
            &mut budget,
        );
        assert!(rejected.is_err_and(|why| why.contains("conflicting")));
        assert!(
            WORK_BUDGET - budget < 2000,
            "{} units",
            WORK_BUDGET - budget
        );
        // A key an explicit one overrides is dropped with all its copies
        // (the mapping that has it twice is only merged, never built).
        assert_eq!(
            id("b: &b {a: 1}\nx: {<<: {<<: [*b, *b]}, a: 2}\nid: kept\n"),
            Ok(Some("kept".into()))
        );
        // No duplicate: accepted, the inner merges linear too.
        let mut budget = WORK_BUDGET;
        let accepted = load_keys(
            &format!("{chained}id: chained\n"),
            Some(&["id"]),
            &mut budget,
        );
        assert_eq!(
            accepted.map(|v| v.get("id").cloned()),
            Ok(Some(Value::Str("chained".into())))
        );
        assert!(
            WORK_BUDGET - budget < 20_000,
            "{} units",
            WORK_BUDGET - budget
        );
        // Two mappings merged with the same key: Salt's duplicate too.
        assert!(load("<<: [{a: 1}, {a: 2}]\n").is_err());
        assert_eq!(id("<<: [{id: a}, {b: 2}]\n"), Ok(Some("a".into())));
    }
}
