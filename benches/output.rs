//! Where a bench writes its figures: `<target>/<name>.json`, in the
//! workspace's target directory (`cargo bench` runs a bench from its
//! package's folder, so a relative `target` would be the wrong one).

use std::path::PathBuf;

/// Writes `value` as pretty JSON to `<target>/<name>.json` and says where,
/// or why not.
pub fn write_json(name: &str, value: &impl serde::Serialize) {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let out = target.join(format!("{name}.json"));
    let written = serde_json::to_string_pretty(value)
        .map_err(std::io::Error::from)
        .and_then(|json| std::fs::write(&out, json));
    match written {
        Ok(()) => println!("\nwritten: {}", out.display()),
        Err(error) => eprintln!("\nnot written: {}: {error}", out.display()),
    }
}
