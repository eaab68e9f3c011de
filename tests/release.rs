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
