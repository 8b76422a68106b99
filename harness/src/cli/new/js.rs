//! A JavaScript policy from `plugins-js/template`: an npm package whose
//! `npm test` builds the component with componentize-js if needed, runs the
//! logic's unit tests (`node --test`), then the component's cases through
//! `sidecar policy test`.

use std::path::Path;

use super::{File, WIT, literal};

/// The template's files, by their path in it. Every occurrence of
/// `template` in them is the policy's name (the package's, the
/// component's `dist/template.wasm`).
pub(super) const TEMPLATE: [(&str, &str); 9] = [
    (
        "package.json",
        include_str!("../../../../plugins-js/template/package.json"),
    ),
    (
        "src/policy.js",
        include_str!("../../../../plugins-js/template/src/policy.js"),
    ),
    (
        "src/logic.js",
        include_str!("../../../../plugins-js/template/src/logic.js"),
    ),
    (
        "test/logic.test.js",
        include_str!("../../../../plugins-js/template/test/logic.test.js"),
    ),
    (
        "scripts/fresh.js",
        include_str!("../../../../plugins-js/template/scripts/fresh.js"),
    ),
    (
        "scripts/cases.js",
        include_str!("../../../../plugins-js/template/scripts/cases.js"),
    ),
    (
        "cases.toml",
        include_str!("../../../../plugins-js/template/cases.toml"),
    ),
    (
        "README.md",
        include_str!("../../../../plugins-js/template/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../../plugins-js/template/.gitignore"),
    ),
];

/// Where the template names the sidecar that created the project.
const GENERATED_BY: &str = "const GENERATED_BY = null;";

pub(super) fn files(name: &str, sidecar: Option<&Path>) -> (Vec<File>, String) {
    let generated_by = format!("const GENERATED_BY = {};", literal(sidecar, "null"));
    let mut files: Vec<File> = TEMPLATE
        .iter()
        .map(|(rel, text)| {
            let text = text
                .replace("template", name)
                .replace(GENERATED_BY, &generated_by);
            ((*rel).to_owned(), text)
        })
        .collect();
    files.push(("wit/policy.wit".into(), WIT.to_owned()));
    let next = format!(
        "  npm install       # componentize-js, pinned\n  \
         npm test          # builds dist/{name}.wasm, runs the logic's tests, then cases.toml\n  \
         sidecar policy check dist/{name}.wasm"
    );
    (files, next)
}
