//! The layers of `docs/architecture.md`, held against the code: every `crate::`
//! path in `src/` must name a module on a lower layer than its own, so data flows
//! one way and no circle can form (issue 23).

use std::collections::BTreeMap;
use std::path::Path;

/// The ```text layers block of docs/architecture.md: one line per layer, top first.
fn layers() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/architecture.md"))
        .expect("docs/architecture.md");
    let block = doc
        .split("```text layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```text layers block in docs/architecture.md");
    let mut layers = BTreeMap::new();
    for (depth, line) in block.lines().enumerate() {
        for module in line.split_whitespace() {
            layers.insert(module.trim_end_matches('/').to_owned(), depth);
        }
    }
    layers
}

/// The top module of each source file, and the top modules its `crate::` paths name.
fn imports(src: &Path) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let top = relative
                .iter()
                .next()
                .and_then(|part| part.to_str())
                .unwrap_or_default();
            let module = top.trim_end_matches(".rs").to_owned();
            if matches!(module.as_str(), "main" | "lib") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            for (at, _) in text.match_indices("crate::") {
                let named: String = text[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !named.is_empty() && named != module {
                    found.push((relative.display().to_string(), module.clone(), named));
                }
            }
        }
    }
    found
}

#[test]
fn every_import_runs_down_the_layers_of_the_architecture_document() {
    let layers = layers();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (file, from, to) in imports(&src) {
        let (Some(above), Some(below)) = (layers.get(&from), layers.get(&to)) else {
            wrong.push(format!(
                "{file}: `{from}` or `{to}` is on no layer of docs/architecture.md"
            ));
            continue;
        };
        if above >= below {
            wrong.push(format!(
                "{file}: `{from}` imports `{to}`, which is not below it"
            ));
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports against docs/architecture.md:\n{}",
        wrong.join("\n")
    );
}
