//! The crate's layering, checked from the source: which top-level module uses which (any
//! `crate::NAME` path outside comments), no cycles between them, and `process::exit` only in
//! `main.rs`. `cargo test --test layering -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read src") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The source without comments (line comments, doc comments; block comments are not used).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal ("http://") is kept: only cut when no quote precedes.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module of a file under src/ (`src/store/read.rs` → `store`); None for the crate
/// roots.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// module → the modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let files = rust_files(&src());
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    for f in &files {
        let Some(m) = module_of(f) else { continue };
        let code = code_of(&std::fs::read_to_string(f).expect("read source"));
        let deps = g.entry(m.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name != m && modules.contains(&name) {
                deps.insert(name);
            }
        }
    }
    g
}

/// The cycles of `g` (one representative path per strongly connected component).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for start in g.keys() {
        // Depth-first search for a path from `start` back to itself through nodes not finished.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in g.get(&node).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(start.clone());
                    found.push(cycle);
                } else if !done.contains(next) && seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
        done.insert(start.clone());
    }
    found
}

#[test]
fn modules_form_no_cycles() {
    let g = graph();
    for (m, deps) in &g {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{m} -> {}", deps.join(" "));
    }
    assert!(
        g.contains_key("store") && g.contains_key("api"),
        "graph read: {g:?}"
    );
    let c = cycles(&g);
    assert!(c.is_empty(), "module cycles: {c:?}");
}

#[test]
fn the_checker_sees_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("d".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c", "a"]]);
}

#[test]
fn the_api_reaches_replication_only_through_its_router() {
    let g = graph();
    for layer in [
        "api",
        "store",
        "durability",
        "objstore",
        "datafile",
        "watch",
    ] {
        assert!(
            !g[layer].contains("ha"),
            "{layer} uses ha directly: {:?}",
            g[layer]
        );
    }
    for low in ["store", "objstore", "datafile", "watch"] {
        assert!(
            !g[low].contains("api") && !g[low].contains("durability"),
            "{low} uses a higher layer: {:?}",
            g[low]
        );
    }
}

#[test]
fn only_main_exits_the_process() {
    let mut offenders = Vec::new();
    for f in rust_files(&src()) {
        if f.ends_with("main.rs") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&f).expect("read source"));
        if code.contains("process::exit") {
            offenders.push(f.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "process::exit outside main.rs: {offenders:?}"
    );
}
