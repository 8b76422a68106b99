//! A Python policy from `plugins-py/template`: `python3 -m unittest` runs
//! the logic's unit tests and a test that builds the component with
//! componentize-py (pinned in `requirements.txt`) and runs its cases
//! through `sidecar policy test`.

use std::path::Path;

use super::{File, WIT, literal};

/// The template's files, by their path in it. `template_logic` in them is
/// the logic's module (`NAME_logic`, a valid module name: `-` becomes
/// `_`); any other `template` is the policy's name.
pub(super) const TEMPLATE: [(&str, &str); 8] = [
    (
        "app.py",
        include_str!("../../../../plugins-py/template/app.py"),
    ),
    (
        "template_logic.py",
        include_str!("../../../../plugins-py/template/template_logic.py"),
    ),
    (
        "test_template_logic.py",
        include_str!("../../../../plugins-py/template/test_template_logic.py"),
    ),
    (
        "test_component.py",
        include_str!("../../../../plugins-py/template/test_component.py"),
    ),
    (
        "requirements.txt",
        include_str!("../../../../plugins-py/template/requirements.txt"),
    ),
    (
        "cases.toml",
        include_str!("../../../../plugins-py/template/cases.toml"),
    ),
    (
        "README.md",
        include_str!("../../../../plugins-py/template/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../../plugins-py/template/.gitignore"),
    ),
];

/// Where the template names the sidecar that created the project.
const GENERATED_BY: &str = "GENERATED_BY = None";

pub(super) fn files(name: &str, sidecar: Option<&Path>) -> (Vec<File>, String) {
    let module = format!("{}_logic", name.replace('-', "_"));
    let generated_by = format!("GENERATED_BY = {}", literal(sidecar, "None"));
    let rename = |text: &str| {
        text.replace("template_logic", &module)
            .replace("template", name)
    };
    let mut files: Vec<File> = TEMPLATE
        .iter()
        .map(|(rel, text)| {
            let text = rename(text).replace(GENERATED_BY, &generated_by);
            (rename(rel), text)
        })
        .collect();
    files.push(("wit/policy.wit".into(), WIT.to_owned()));
    let next = format!(
        "  python3 -m venv .venv && . .venv/bin/activate\n  \
         pip install -r requirements.txt   # componentize-py, pinned\n  \
         python3 -m unittest               # the logic's tests; builds dist/{name}.wasm and runs cases.toml\n  \
         sidecar policy check dist/{name}.wasm"
    );
    (files, next)
}
