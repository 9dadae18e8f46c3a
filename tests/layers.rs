//! The layers of `src/`, enforced: every path from one top-level module (a *layer*) into
//! another must be an edge of ARCHITECTURE.md's allowed-edges table, and `wgpu::` is named
//! only under `src/gpu/`. Cheaper than splitting the crate, and it fails naming the file, the
//! line and the forbidden edge.
//!
//! What is read: `crate::X` paths (also inside `use crate::{..}` groups), `super::` paths that
//! climb to the crate root and name another module, and `hexec_kernels::` (the kernels crate).
//! Comments, string and character literals are skipped; test code is checked like the rest (a
//! test has no reason to reach across layers that the code it tests may not).
//! Not seen: a type reached through inference only (a function in an allowed layer returning a
//! `wgpu::Buffer` to a caller that never names it) and macro-generated paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each layer and the layers it may import. Keep in step with ARCHITECTURE.md, "Layers".
/// `kernels` is the kernels crate (`hexec_kernels`, re-exported as `crate::kernels`).
const ALLOWED: &[(&str, &[&str])] = &[
    ("limits", &[]),
    ("sync", &[]),
    ("topology", &["limits"]),
    ("memory", &["limits", "sync", "topology"]),
    ("gpu", &["kernels", "limits", "sync", "topology"]),
    ("graph", &["kernels", "limits", "topology"]),
    ("sched", &["graph", "kernels", "limits", "topology"]),
    ("trace", &["graph", "kernels", "limits", "memory", "topology"]),
    (
        "sim",
        &["graph", "kernels", "limits", "memory", "sched", "topology", "trace"],
    ),
    (
        "runtime",
        &[
            "gpu", "graph", "kernels", "limits", "memory", "sched", "sync", "topology", "trace",
        ],
    ),
    // Above both drivers: what needs the runtime and the simulator together.
    (
        "drivers",
        &[
            "graph", "kernels", "limits", "memory", "runtime", "sched", "sim", "topology", "trace",
        ],
    ),
    ("linalg", &["graph", "kernels", "limits", "runtime", "topology"]),
    ("array", &["graph", "kernels", "runtime", "sched"]),
    ("demo", &["*"]),
    ("bench", &["*"]),
    ("bin", &["*"]),
];

/// Layers allowed to name `wgpu::`.
const WGPU: &[&str] = &["gpu"];

/// Known violations still to remove, by file and target: each one is debt, named here so
/// that no new one goes unseen. None today; keep the list for the next migration.
const PENDING: &[(&str, &str)] = &[];

#[derive(Debug, PartialEq)]
struct Violation {
    file: String,
    line: usize,
    from: String,
    to: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: forbidden edge {} -> {}",
            self.file, self.line, self.from, self.to
        )
    }
}

/// The source with comments and the contents of string and character literals blanked
/// (newlines kept, so line numbers hold).
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_char(b.get(i.wrapping_sub(1))) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.extend(std::iter::repeat_n(' ', j + 1 - i));
            i = j + 1;
            while i < b.len() {
                if b[i] == '"' && (0..hashes).all(|k| b.get(i + 1 + k) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', 1 + hashes));
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(b[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let close = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(j) => {
                    out.extend(std::iter::repeat_n(' ', j + 1 - i));
                    i = j + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The layer of a file under `src/` and its module path (`graph/formats/check.rs` →
/// `["graph", "formats", "check"]`); `None` for the crate root.
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    if parts.first().is_some_and(|p| p == "bin") {
        return Some(vec!["bin".into()]);
    }
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.into());
    }
    (!parts.is_empty()).then_some(parts)
}

/// Every layer a file's text reaches, with the line: `(line, layer)`.
fn edges(text: &str, module: &[String]) -> Vec<(usize, String)> {
    let s = strip(text);
    let b: Vec<char> = s.chars().collect();
    let mut found = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let word_at = |i: usize, w: &str| {
        !ident_char(b.get(i.wrapping_sub(1)))
            && w.chars().enumerate().all(|(k, c)| b.get(i + k) == Some(&c))
            && b.get(i + w.len()) != Some(&'_')
    };
    let ident = |mut j: usize| {
        while b.get(j) == Some(&' ') || b.get(j) == Some(&'\n') {
            j += 1;
        }
        let start = j;
        while ident_char(b.get(j)) {
            j += 1;
        }
        (b[start..j].iter().collect::<String>(), j)
    };
    while i < b.len() {
        if b[i] == '\n' {
            line += 1;
        }
        if word_at(i, "crate::") && b.get(i.wrapping_sub(1)) != Some(&'$') {
            let j = i + "crate::".len();
            if b.get(j) == Some(&'{') {
                // `use crate::{a::X, b, c::{..}}`: the first name of each item at depth one.
                let mut k = j + 1;
                let mut depth = 1;
                let mut expect = true;
                let mut l = line;
                while k < b.len() && depth > 0 {
                    match b[k] {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 1 => expect = true,
                        '\n' => l += 1,
                        c if expect && depth == 1 && (c.is_alphanumeric() || c == '_') => {
                            let (name, end) = ident(k);
                            found.push((l, name));
                            expect = false;
                            k = end;
                            continue;
                        }
                        _ => {}
                    }
                    k += 1;
                }
            } else {
                found.push((line, ident(j).0));
            }
        } else if word_at(i, "hexec_kernels::") || word_at(i, "wgpu::") {
            let name = if b[i] == 'w' { "wgpu" } else { "kernels" };
            found.push((line, name.into()));
        } else if word_at(i, "super::")
            && !ident_char(b.get(i.wrapping_sub(1)))
            && b.get(i.wrapping_sub(1)) != Some(&':')
        {
            // Climb: each `super` drops one module; past the root, the next name is a layer.
            let mut depth = module.len();
            let mut j = i;
            while word_at(j, "super::") {
                depth = depth.saturating_sub(1);
                j += "super::".len();
            }
            if depth == 0 {
                found.push((line, ident(j).0));
            }
        }
        i += 1;
    }
    found
}

/// Checks every `.rs` file under `src` against `allowed`.
fn check(src: &Path, allowed: &[(&str, &[&str])]) -> Vec<Violation> {
    let table: BTreeMap<&str, &[&str]> = allowed.iter().copied().collect();
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let rel: PathBuf = f.strip_prefix(src).unwrap().to_path_buf();
        let Some(module) = module_path(&rel) else { continue };
        let layer = module[0].as_str();
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, to) in edges(&text, &module) {
            let ok = if to == "wgpu" {
                WGPU.contains(&layer)
            } else if to == layer || !table.contains_key(to.as_str()) && to != "kernels" {
                // Same layer, or not a layer (`crate::SomeReexport` names the root).
                true
            } else {
                match table.get(layer) {
                    Some(may) => may.contains(&"*") || may.contains(&to.as_str()),
                    None => false,
                }
            };
            if !ok {
                out.push(Violation {
                    file: format!("src/{}", rel.display()),
                    line,
                    from: layer.into(),
                    to,
                });
            }
        }
    }
    out
}

#[test]
fn layers_follow_the_allowed_edges_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let v: Vec<Violation> = check(&src, ALLOWED)
        .into_iter()
        .filter(|v| !PENDING.contains(&(v.file.as_str(), v.to.as_str())))
        .collect();
    let text: Vec<String> = v.iter().map(ToString::to_string).collect();
    assert!(
        v.is_empty(),
        "forbidden edges between layers (see ARCHITECTURE.md, Layers):\n{}",
        text.join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_row() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" {
            continue;
        }
        assert!(
            ALLOWED.iter().any(|(l, _)| *l == name),
            "src/{name} is a layer without a row in the allowed-edges table"
        );
    }
}

/// The checker itself, on a fixture tree with a forbidden edge of each kind it reads.
#[test]
fn checker_reports_a_forbidden_edge() {
    let dir = std::env::temp_dir().join(format!("hexec-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["graph/formats", "runtime", "sched", "gpu"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let write = |p: &str, s: &str| std::fs::write(dir.join(p), s).unwrap();
    write("lib.rs", "pub mod graph;\npub mod runtime;\n");
    write(
        "graph/formats/mod.rs",
        "// use crate::runtime::Runtime; (a comment)\nconst S: &str = \"crate::runtime\";\nuse crate::topology::Machine;\n\nuse crate::runtime::Runtime;\n",
    );
    write(
        "graph/formats/check.rs",
        "use crate::{topology::X,\n  sched::{Plan, Y}};\nfn f() { super::super::super::runtime::go() }\n",
    );
    write(
        "sched/mod.rs",
        "fn f() -> usize { crate::gpu::MAX_BATCH + super::graph::N }\n",
    );
    write(
        "runtime/data.rs",
        "struct S { b: wgpu::Buffer }\nuse hexec_kernels::Kernel;\n",
    );
    write("gpu/mod.rs", "struct S { b: wgpu::Buffer }\n");
    let mut v = check(&dir, ALLOWED);
    std::fs::remove_dir_all(&dir).unwrap();
    v.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    let got: Vec<String> = v.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "src/graph/formats/check.rs:2: forbidden edge graph -> sched",
            "src/graph/formats/check.rs:3: forbidden edge graph -> runtime",
            "src/graph/formats/mod.rs:5: forbidden edge graph -> runtime",
            "src/runtime/data.rs:1: forbidden edge runtime -> wgpu",
            "src/sched/mod.rs:1: forbidden edge sched -> gpu",
        ]
    );
}
