//! The Salt releases the docs say are tested are the ones tests/salt_pins
//! pins (issue 25): every Salt version written as a release (`2019.2.8`,
//! `3006.30`, `3008.5`) in the pages and scripts that state what is tested
//! (STATING) must be one of `SALT_E2E`, `SALT_LTS` and `SALT_OLD`, and each of the
//! three must be named in docs/testing.md. A bump in tests/salt_pins that
//! leaves a page behind fails here, naming the file, line and version.

use std::path::Path;

/// Where what is tested against Salt is stated: the README, the pages on
/// testing, Saltpeter and Salt, and configuration, the Salt suites' own
/// descriptions, build.sh and its jobs in .ci/. (Not docs/performance.md:
/// its figures were measured on the Salt it names.)
const STATING: &[&str] = &[
    "README.md",
    "docs/testing.md",
    "docs/saltpeter.md",
    "docs/configuration.md",
    "build.sh",
    ".ci",
    "tests/e2e",
    "tests/salt_call",
    "tests/salt_id",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `NAME="value"` of tests/salt_pins (one line each for the versions).
fn pinned(pins: &str, name: &str) -> String {
    let prefix = format!("{name}=\"");
    pins.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("tests/salt_pins has no {name}=\"...\" line"))
        .to_string()
}

/// The Salt releases written in `text`: `2019.2.N` and `300N.M`, whole
/// (not inside a longer number or a dotted name).
fn salt_versions(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let boundary_before =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'.');
        let rest = &text[at..];
        let prefix_len = if rest.starts_with("2019.2.") {
            7
        } else if rest.len() > 5
            && rest.starts_with("300")
            && bytes[at + 3].is_ascii_digit()
            && bytes[at + 4] == b'.'
        {
            5
        } else {
            0
        };
        if boundary_before && prefix_len > 0 {
            let digits = rest[prefix_len..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let end = prefix_len + digits;
            let after = rest.as_bytes().get(end).copied();
            let next_is_digit = rest.as_bytes().get(end + 1).is_some_and(u8::is_ascii_digit);
            let boundary_after =
                !after.is_some_and(|c| c.is_ascii_alphanumeric() || (c == b'.' && next_is_digit));
            if digits > 0 && boundary_after {
                found.push(rest[..end].to_string());
                at += end;
                continue;
            }
        }
        at += rest.chars().next().map_or(1, char::len_utf8);
    }
    found
}

fn files_under(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            files_under(&entry, out);
        }
    } else {
        out.push(path.to_path_buf());
    }
}

#[test]
fn the_versions_finder_sees_releases_and_nothing_else() {
    assert_eq!(
        salt_versions(
            "Salt 2019.2.8, 3006.30 and 3008.5; salt==3008.5. (3000, 2019.2, 13006.9, 3008.5.1, v3006.9x)"
        ),
        ["2019.2.8", "3006.30", "3008.5", "3008.5"]
    );
}

#[test]
fn the_docs_name_the_pinned_salt_releases_and_no_other() {
    let pins = std::fs::read_to_string(root().join("tests/salt_pins")).expect("tests/salt_pins");
    let allowed: Vec<String> = ["SALT_E2E", "SALT_LTS", "SALT_OLD"]
        .iter()
        .map(|name| pinned(&pins, name))
        .collect();
    let mut files = Vec::new();
    for place in STATING {
        files_under(&root().join(place), &mut files);
    }
    let mut stale = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for version in salt_versions(line) {
                if !allowed.contains(&version) {
                    let shown = file
                        .strip_prefix(root())
                        .unwrap_or(file)
                        .display()
                        .to_string();
                    stale.push(format!("{shown}:{}: Salt {version}", n + 1));
                }
            }
        }
    }
    assert!(
        stale.is_empty(),
        "Salt releases that tests/salt_pins does not pin ({}):\n{}",
        allowed.join(", "),
        stale.join("\n")
    );
    let testing = std::fs::read_to_string(root().join("docs/testing.md")).expect("docs/testing.md");
    for version in &allowed {
        assert!(
            salt_versions(&testing).contains(version),
            "docs/testing.md does not name Salt {version} (tests/salt_pins)"
        );
    }
}
