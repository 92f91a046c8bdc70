//! The layering rule, checked: every `use crate::` in every source file
//! points to a module on a lower row of the drawing in
//! `docs/architecture.md` (## Layers), and every module has a row.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Each top-level module's row in the drawing (0 is the top).
fn rows() -> HashMap<String, usize> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let section = text.split("## Layers").nth(1).expect("docs/architecture.md has a ## Layers section");
    let block = section.split("```").nth(1).expect("the section holds a fenced drawing");
    let mut rows = HashMap::new();
    for (row, line) in block.lines().skip(1).filter(|l| !l.trim().is_empty()).enumerate() {
        // The names, then two or more spaces and what the row is for.
        let names = line.split("  ").next().unwrap();
        for name in names.split(',').map(str::trim) {
            assert!(rows.insert(name.to_owned(), row).is_none(), "{name} has two rows");
        }
    }
    rows
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names as `crate::NAME`.
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

#[test]
fn no_module_imports_one_above_or_beside_it() {
    let rows = rows();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs");
        if module == "lib" || module == "layers" {
            continue;
        }
        let Some(&row) = rows.get(module) else {
            broken.push(format!("{module} has no row in docs/architecture.md's ## Layers"));
            continue;
        };
        for import in imports(&std::fs::read_to_string(file).unwrap()) {
            if import == module {
                continue;
            }
            match rows.get(&import) {
                Some(&at) if at > row => {}
                Some(_) => broken.push(format!("{} imports {import}, which is not below {module}", rel.display())),
                None => broken.push(format!("{} imports {import}, which has no row", rel.display())),
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
