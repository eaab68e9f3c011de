//! What a release says about itself agrees with `Cargo.toml`: the AsyncAPI document's
//! `info.version`, the CHANGELOG's newest section and the licence. Plain file checks, no
//! servers.

use std::path::PathBuf;

const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn the_asyncapi_document_carries_the_crate_version() {
    let document: serde_json::Value =
        serde_json::from_str(&read("asyncapi/healthprobe.asyncapi.json")).expect("AsyncAPI JSON");
    assert_eq!(
        document["info"]["version"].as_str(),
        Some(CRATE_VERSION),
        "asyncapi/healthprobe.asyncapi.json info.version must equal Cargo.toml's version"
    );
}

#[test]
fn the_changelog_opens_with_the_crate_version() {
    let changelog = read("CHANGELOG.md");
    let first_release = changelog
        .lines()
        .find(|line| line.starts_with("## ["))
        .expect("CHANGELOG.md has a `## [x.y.z] - date` section");
    assert!(
        first_release.starts_with(&format!("## [{CRATE_VERSION}] - ")),
        "CHANGELOG.md's newest section is {first_release:?}, Cargo.toml says {CRATE_VERSION}"
    );
    // Keep a Changelog: every release section says what an upgrade needs.
    let sections = changelog.split("\n## [").skip(1).collect::<Vec<_>>();
    assert!(!sections.is_empty());
    for section in sections {
        let title = section.lines().next().unwrap_or_default();
        assert!(
            section.contains("\n### Upgrade notes"),
            "CHANGELOG.md section [{title} has no `### Upgrade notes`"
        );
    }
}

#[test]
fn the_licence_file_is_the_one_cargo_toml_names() {
    assert!(read("Cargo.toml").contains("license = \"Apache-2.0\""));
    let licence = read("LICENSE");
    assert!(
        licence.contains("Apache License\n                           Version 2.0, January 2004")
    );
    assert!(licence.contains("END OF TERMS AND CONDITIONS"));
}

/// The outputs README.md shows are captured from a version (`scripts/readme-examples.sh`);
/// they must be this one's.
#[test]
fn the_readme_examples_come_from_the_crate_version() {
    let readme = read("README.md");
    let blocks: Vec<&str> = readme
        .split("<!-- captured: ")
        .skip(1)
        .map(|rest| rest.split("<!-- /captured -->").next().unwrap_or_default())
        .collect();
    assert!(blocks.len() >= 4, "README.md has captured examples");
    let mut versions = Vec::new();
    for block in &blocks {
        let name = block.split(' ').next().unwrap_or_default();
        assert!(
            block.lines().count() > 3,
            "captured example {name} is empty: run scripts/readme-examples.sh"
        );
        // `healthprobe 0.6.0: OK`, `version="0.6.0"`, the members table's VERSION column.
        for line in block.lines() {
            for word in line.split(|c: char| c.is_whitespace() || c == '"' || c == ':') {
                let parts: Vec<&str> = word.split('.').collect();
                if parts.len() == 3
                    && parts
                        .iter()
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                {
                    // Addresses have four parts and times carry no dots in this form.
                    versions.push((name.to_owned(), word.to_owned()));
                }
            }
        }
    }
    assert!(!versions.is_empty(), "the captured examples show a version");
    for (name, version) in versions {
        assert_eq!(
            version, CRATE_VERSION,
            "README.md's example {name} shows version {version}, Cargo.toml says {CRATE_VERSION}: run scripts/readme-examples.sh"
        );
    }
}

/// README.md is a user's document: short, and every link stays inside the repository.
#[test]
fn the_readme_is_short_and_self_contained() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines (at most 300)");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for target in readme
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
    {
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let path = target.split('#').next().unwrap_or_default();
        assert!(
            !path.contains(".."),
            "README.md links outside the repository: {target}"
        );
        assert!(
            root.join(path).exists(),
            "README.md links to {target}, which does not exist"
        );
    }
    for word in ["../", "DESIGN", "issue "] {
        assert!(
            !readme.contains(word),
            "README.md mentions {word:?}: outside the repository"
        );
    }
}

/// The grants README.md gives are the ones the tests run the worker under
/// (docs/deploying.md's block, read by tests/platform.rs).
#[test]
fn the_readme_gives_the_tested_grants() {
    let grants = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("GRANT "))
            .map(str::to_owned)
            .collect()
    };
    let deploying = read("docs/deploying.md");
    let tested = deploying
        .split("<!-- grants:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- grants:end -->").next())
        .expect("docs/deploying.md's grants block");
    let tested = grants(tested);
    assert!(tested.len() >= 5, "{tested:?}");
    assert_eq!(grants(&read("README.md")), tested);
}
