//! The modules of the binding (`bpf/src`) and of the daemon (`fsd/src`) import one way: no
//! cycle between them (docs/ARCHITECTURE.md, "Layers"). A module is a file, except that a
//! file module `x.rs` with a folder `x/` of private parts is one unit with them (they are its
//! `impl` split over files, as `fsd/src/core/fs.rs` and `fs/`). An import is any path
//! `crate::a::b` or `super::a` in the source, resolved to the longest module it names.
//! Checked by reading the sources, so it runs with the tests and needs no tool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Deepest module nesting the walk follows.
const MAX_DEPTH: usize = 6;

/// The module path of every `.rs` file under `src`, e.g. `kernel/abi.rs` -> `kernel::abi`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], depth: usize, out: &mut BTreeMap<String, PathBuf>) {
        assert!(depth < MAX_DEPTH, "{} nests too deep", dir.display());
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, depth + 1, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                if !matches!(name.as_str(), "mod" | "lib" | "main") {
                    p.push(name);
                }
                out.insert(p.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], 0, &mut out);
    out
}

/// The unit a module belongs to: itself, or the nearest ancestor that is a file module with
/// a folder of parts (`a/b.rs` beside `a.rs`).
fn unit(module: &str, mods: &BTreeMap<String, PathBuf>) -> String {
    let parts: Vec<&str> = module.split("::").collect();
    for n in 1..parts.len() {
        let parent = parts[..n].join("::");
        if mods
            .get(&parent)
            .is_some_and(|p| p.file_name().is_some_and(|f| f != "mod.rs"))
        {
            return parent;
        }
    }
    module.to_owned()
}

/// The longest module that `path` (a `::`-separated path from the crate root) names.
fn resolve(path: &[&str], mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| mods.contains_key(m))
}

/// Unit -> the units it imports.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &mods {
        let from = unit(module, &mods);
        let text = std::fs::read_to_string(path).expect("read source");
        let here: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
        let edges = g.entry(from.clone()).or_default();
        for line in text.lines().map(str::trim) {
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line
                .match_indices("crate::")
                .chain(line.match_indices("super::"))
            {
                let rest = &line[i..];
                let is_super = rest.starts_with("super::");
                let tail = rest.trim_start_matches("crate::");
                let mut segs: Vec<&str> = tail
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .collect();
                let full: Vec<&str> = if is_super {
                    let ups = segs.iter().take_while(|s| **s == "super").count();
                    segs.drain(..ups);
                    // A file's `super` is its parent module.
                    let base = here.len().saturating_sub(ups);
                    here[..base].iter().copied().chain(segs).collect()
                } else {
                    segs
                };
                if let Some(to) = resolve(&full, &mods) {
                    let to = unit(&to, &mods);
                    if to != from && !to.is_empty() {
                        edges.insert(to);
                    }
                }
            }
        }
    }
    g
}

/// A cycle of the graph, if it has one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

fn check(crate_dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir);
    let g = graph(&src);
    assert!(g.len() > 5, "{crate_dir}: only {} modules found", g.len());
    if let Some(c) = cycle(&g) {
        panic!(
            "{crate_dir}: the modules import in a cycle: {}",
            c.join(" -> ")
        );
    }
}

#[test]
fn the_binding_imports_one_way() {
    check("bpf/src");
}

#[test]
fn the_daemon_imports_one_way() {
    check("fsd/src");
}

#[test]
fn the_check_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(dir.path().join("b.rs"), "use crate::a::A;\npub struct B;\n").unwrap();
    let c = cycle(&graph(dir.path())).expect("a cycle");
    assert_eq!(c, ["a", "b", "a"]);
    std::fs::write(dir.path().join("b.rs"), "pub struct B;\n").unwrap();
    assert_eq!(cycle(&graph(dir.path())), None);
}
