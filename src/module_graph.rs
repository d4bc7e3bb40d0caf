//! The crate's top-level modules depend on each other one way: a test reads
//! every source file, collects the `crate::<module>` paths each top-level
//! module uses outside its tests, and fails on any cycle, naming it.
//!
//! The submodules of `backend::redis` too: a second test collects the
//! `super::<m>`, `self::<m>` and `crate::backend::redis::<m>` paths of each
//! file of `src/backend/redis/` and fails on any cycle among them. The
//! parent (`mod.rs`, as `redis`) is in the graph: it uses every submodule
//! it declares, and a submodule that reaches into it (`super::Inner`, any
//! `super::<item>` that is not a sibling module) makes a cycle with it. So
//! the transport, the key layout and the batcher stay apart, and none of
//! them depends on the backend's private state.
//!
//! Data flows from requests to decisions (see the README's Architecture):
//! a cycle means two modules that can no longer be understood, tested or
//! changed apart. Test code (`#[cfg(test)] mod tests` at the end of a file)
//! and comments do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `source` without its tests and comments.
fn code(source: &str) -> String {
    let source = match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => &source[..at],
        None => source,
    };
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers at the start of each path in `crate::` uses, including
/// grouped ones (`crate::{a, b::c}`).
fn used_modules(code: &str) -> BTreeSet<String> {
    used_after(code, "crate::")
}

/// The identifiers right after each `prefix` (a path such as `super::`)
/// that starts a path in `code`, including grouped ones
/// (`super::{a, b::c}` gives `a` and `b`).
fn used_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let ident = |s: &str| -> String { s.chars().take_while(|&c| is_ident(c)).collect() };
    for (at, _) in code.match_indices(prefix) {
        // A whole path segment only (`super::`, not `my_super::`).
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: at brace depth 0, after `{` or `,`.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        out.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// The cycles (strongly connected components of two or more modules) of
/// `edges`.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    // Reachability, then mutual reachability: small graphs, plain sets.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for (m, r) in &reached {
        if !r.contains(*m) {
            continue;
        }
        let component: BTreeSet<String> = r
            .iter()
            .filter(|other| reached[other].contains(*m))
            .cloned()
            .collect();
        if !out.contains(&component) {
            out.push(component);
        }
    }
    out
}

/// Each top-level module (`src/<m>.rs` or `src/<m>/`) and the other
/// top-level modules it uses.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut fs = Vec::new();
            files(&path, &mut fs);
            modules.entry(name).or_default().extend(fs);
        } else if name != "lib" && path.extension().is_some_and(|e| e == "rs") {
            modules.entry(name).or_default().push(path);
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, fs)| {
            let used = fs
                .iter()
                .flat_map(|f| used_modules(&code(&std::fs::read_to_string(f).unwrap())))
                .filter(|m| m != name && names.contains(m))
                .collect();
            (name.clone(), used)
        })
        .collect()
}

/// The module in `dir` (its `mod.rs`, named `parent`) and its submodules
/// (each `<m>.rs` and `<m>/` there), each with the modules of the graph it
/// uses: a submodule uses the siblings it names as `super::<m>`,
/// `self::<m>` or `<path>::<m>` (`path` being the module's path from the
/// crate root, `crate::backend::redis`), and the parent when it names
/// anything else there (`super::Inner`); the parent uses every submodule it
/// declares (`mod <m>;`).
///
/// A submodule's inline modules count as the submodule itself (their
/// `super::` is read as the submodule's, a close enough reading for the
/// few there are).
fn submodule_graph(dir: &Path, parent: &str, path: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        if file.is_dir() {
            let mut fs = Vec::new();
            files(&file, &mut fs);
            modules.entry(name).or_default().extend(fs);
        } else if file.extension().is_some_and(|e| e == "rs") {
            let name = if name == "mod" {
                parent.to_owned()
            } else {
                name
            };
            modules.entry(name).or_default().push(file);
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let upward = ["super::".to_owned(), format!("{path}::")];
    modules
        .iter()
        .map(|(name, fs)| {
            let mut used = BTreeSet::new();
            for f in fs {
                let code = code(&std::fs::read_to_string(f).unwrap());
                if name == parent {
                    used.extend(declared_modules(&code));
                    continue;
                }
                used.extend(used_after(&code, "self::"));
                for m in upward.iter().flat_map(|p| used_after(&code, p)) {
                    if names.contains(&m) {
                        used.insert(m);
                    } else if !m.is_empty() && m != "super" {
                        // An item of the parent: `super::Inner`.
                        used.insert(parent.to_owned());
                    }
                }
            }
            used.retain(|m| m != name && names.contains(m));
            (name.clone(), used)
        })
        .collect()
}

/// The modules `code` declares: `mod <m>;`, whatever its visibility and
/// attributes.
fn declared_modules(code: &str) -> BTreeSet<String> {
    code.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_suffix(';')?;
            let at = rest.find("mod ")?;
            let before = &rest[..at];
            let plain = before.is_empty() || before.ends_with(' ');
            plain.then(|| rest[at + "mod ".len()..].trim().to_owned())
        })
        .collect()
}

/// Fails, naming each cycle of `graph` and the edges inside it.
#[track_caller]
fn assert_no_cycle(graph: &BTreeMap<String, BTreeSet<String>>) {
    let found = cycles(graph);
    let shown: Vec<String> = found
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| {
                    let inside: Vec<&String> = graph[m].intersection(c).collect();
                    format!("{m} -> {inside:?}")
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .collect();
    assert!(found.is_empty(), "module cycles: {shown:#?}");
}

#[test]
fn top_level_modules_have_no_cycle() {
    let graph = module_graph();
    assert!(graph.len() >= 20, "read the modules: {graph:?}");
    assert_no_cycle(&graph);
}

#[test]
fn redis_backend_modules_have_no_cycle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/redis");
    let graph = submodule_graph(&dir, "redis", "crate::backend::redis");
    assert!(graph.len() >= 8, "read the modules: {graph:?}");
    for (parent, child) in [("redis", "batch"), ("redis", "fleet"), ("batch", "script")] {
        assert!(
            graph[parent].contains(child),
            "{parent} -> {child}: {graph:?}"
        );
    }
    assert_no_cycle(&graph);
}

#[test]
fn the_reader_finds_grouped_uses_and_cycles() {
    let code = code(
        "use crate::{a::X, b::{c, d}, e};\n// crate::f\nuse crate::g::h;\n\
         #[cfg(test)]\nmod tests { use crate::z; }",
    );
    let used: Vec<String> = used_modules(&code).into_iter().collect();
    assert_eq!(used, ["a", "b", "e", "g"]);
    let code = "use super::{a, b::C};\nuse self::c::D;\nlet x = my_super::e;\n\
                crate::backend::redis::f::g();\nsuper::super::h();";
    let used: Vec<String> = ["super::", "self::", "crate::backend::redis::"]
        .iter()
        .flat_map(|p| used_after(code, p))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(used, ["a", "b", "c", "f", "h", "super"]);
    let declared =
        declared_modules("mod a;\npub(crate) mod b;\n#[cfg(x)]\nmod c;\nmod d {\nlet x = 1;");
    let declared: Vec<String> = declared.into_iter().collect();
    assert_eq!(declared, ["a", "b", "c"]);
    let edges = |pairs: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            g.entry((*a).to_owned())
                .or_default()
                .insert((*b).to_owned());
            g.entry((*b).to_owned()).or_default();
        }
        g
    };
    assert!(cycles(&edges(&[("a", "b"), ("b", "c")])).is_empty());
    let found = cycles(&edges(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3);
}
