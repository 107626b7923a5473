//! CONFIGURATION.md is tested against the real types: every TOML block in
//! it loads into `MeshConfig` (which refuses unknown keys) and validates,
//! read from the workspace's root as a user's working directory (the files
//! its blocks name are the samples in config/).

use mesh::MeshConfig;

#[test]
fn every_block_of_the_reference_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("CONFIGURATION.md")).expect("CONFIGURATION.md");
    // The only test of this binary: nothing else depends on the directory.
    std::env::set_current_dir(&root).expect("the workspace root");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(blocks.len() >= 4, "found {} blocks", blocks.len());
    for block in blocks {
        if let Err(e) = MeshConfig::from_toml_str(&block) {
            panic!("{e}\nin:\n{block}");
        }
    }
}
