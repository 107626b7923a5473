//! Reading a [`MeshConfig`] from a TOML or YAML file or text, with the
//! key at fault named in every error.

use std::path::Path;

use mesh_core::ConfigError;

use super::{DiscoveryConfig, MeshConfig};

// === impl MeshConfig ===

impl MeshConfig {
    /// Reads a TOML file (or YAML, for a `.yaml` or `.yml` file), applies
    /// the environment overrides (`SERVICE_NAME`, `CONSUL_URL`,
    /// `MESH_PROFILE`) and validates. A relative discovery file path is
    /// taken from the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<MeshConfig, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// [`MeshConfig::load`] with the environment read through `var`
    /// (tests, or a process that keeps its settings elsewhere).
    pub fn load_with_env(
        path: impl AsRef<Path>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<MeshConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), "cannot read the file").caused_by(e)
        })?;
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let parsed = match yaml {
            true => Self::parse_yaml(&text),
            false => Self::parse(&text),
        };
        let mut config = parsed.map_err(|e| e.within(&format!("{}: ", path.display())))?;
        config.resolve_discovery_file(path);
        config.apply_env(var)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text and validates it (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<MeshConfig, ConfigError> {
        let config = Self::parse(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses YAML text and validates it (no environment overrides).
    pub fn from_yaml_str(text: &str) -> Result<MeshConfig, ConfigError> {
        let config = Self::parse_yaml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Makes a relative discovery file path relative to the directory of
    /// the configuration file at `path`, not to the working directory.
    fn resolve_discovery_file(&mut self, path: &Path) {
        let DiscoveryConfig::File { path: file, .. } = &mut self.discovery else {
            return;
        };
        if let (true, Some(dir)) = (file.is_relative(), path.parent()) {
            *file = dir.join(&*file);
        }
    }

    fn parse_yaml(text: &str) -> Result<MeshConfig, ConfigError> {
        Self::deserialize(serde_norway::Deserializer::from_str(text))
    }

    fn parse(text: &str) -> Result<MeshConfig, ConfigError> {
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| ConfigError::new("the configuration", "not valid TOML").caused_by(e))?;
        Self::deserialize(de)
    }

    /// Deserializes, naming the path of the key at fault.
    fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<MeshConfig, ConfigError> {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let key = match path.as_str() {
                "." => "the configuration".to_owned(),
                _ => path,
            };
            ConfigError::new(key, e.into_inner())
        })
    }
}
