//! Reading a [`MeshConfig`] from a TOML or YAML file or text, with the
//! key at fault named in every error.

use std::path::Path;

use mesh_core::ConfigError;

use super::{DiscoveryConfig, MeshConfig};

// === impl MeshConfig ===

impl MeshConfig {
    /// Reads a TOML file (or YAML, for a `.yaml` or `.yml` file), applies
    /// the environment overrides (`SERVICE_NAME`, `CONSUL_URL`,
    /// `MESH_PROFILE`) and validates. Relative paths of the files it names
    /// (discovery file, gRPC service configs) are taken from the file's
    /// directory.
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
        // A refusal of the file's keys names the file; an environment
        // override's names its variable.
        let in_file = |e: ConfigError| e.in_file(path);
        let mut config = parsed.map_err(in_file)?;
        config.resolve_relative_files(path);
        config.apply_env(var)?;
        config.validate().map_err(in_file)?;
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

    /// Makes the relative paths of files it names (the discovery file,
    /// each service's gRPC service config) relative to the directory of
    /// the configuration file at `path`, not to the working directory.
    fn resolve_relative_files(&mut self, path: &Path) {
        let Some(dir) = path.parent() else {
            return;
        };
        let resolve = |file: &mut std::path::PathBuf| {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        };
        if let DiscoveryConfig::File { path: file, .. } = &mut self.discovery {
            resolve(file);
        }
        for service in self.services.values_mut() {
            if let Some(file) = &mut service.grpc_service_config {
                resolve(file);
            }
        }
    }

    fn parse_yaml(text: &str) -> Result<MeshConfig, ConfigError> {
        Self::deserialize(serde_norway::Deserializer::from_str(text), |e| {
            e.to_string()
        })
    }

    fn parse(text: &str) -> Result<MeshConfig, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| {
            ConfigError::new(
                "the configuration",
                format!("not valid TOML: {}", toml_error(text, &e)),
            )
        })?;
        Self::deserialize(de, |e| toml_error(text, e))
    }

    /// Deserializes, naming the path of the key at fault, its error told
    /// by `tell`.
    fn deserialize<'de, D: serde::Deserializer<'de>>(
        de: D,
        tell: impl Fn(&D::Error) -> String,
    ) -> Result<MeshConfig, ConfigError> {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            refused_at(&path, &without_wide_integers(&tell(e.inner())))
        })
    }
}

/// `message` without the integers serde quotes when it cannot hold them
/// (``integer `…` as u128``, from a table it buffers, such as
/// `[discovery]`): a secret written as a long number would show.
fn without_wide_integers(message: &str) -> String {
    const QUOTED: &str = "integer `";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(QUOTED) {
        let open = start + QUOTED.len();
        let Some(length) = rest[open..].find('`') else {
            break;
        };
        let close = open + length;
        let after = &rest[close + 1..];
        let wide = after.starts_with(" as u128") || after.starts_with(" as i128");
        out.push_str(&rest[..start]);
        out.push_str(if wide {
            "integer"
        } else {
            &rest[start..=close]
        });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A TOML error told by its position and message, never by the line it
/// is on, which `toml` quotes: that line may hold a secret (a token
/// beside a misspelt key, an inline table with a password).
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let before = error.span().and_then(|span| text.get(..span.start));
    match before {
        Some(before) => {
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |at| at + 1);
            let column = before[line_start..].chars().count() + 1;
            format!("line {line}, column {column}: {}", error.message())
        }
        None => error.message().to_owned(),
    }
}

/// The error for the value at `path` that serde refused with `message`.
///
/// A section that validates while it is read (`[breaker]`, `[balance]`)
/// refuses with a whole [`ConfigError`], which serde carries as text
/// among the parser's own (line, column): its key (`balance.panic_threshold`)
/// is taken to replace the section's name at the end of `path`, so the
/// error names the field, under the path the file gives it, once.
fn refused_at(path: &str, message: &str) -> ConfigError {
    const LABEL: &str = "invalid configuration: ";
    let key = match path {
        "." => "the configuration",
        _ => path,
    };
    let inner = message.find(LABEL).and_then(|at| {
        let line = message[at + LABEL.len()..].lines().next()?;
        let (inner_key, reason) = line.split_once(": ")?;
        let (parent, section) = match key.rsplit_once('.') {
            Some((parent, section)) => (Some(parent), section),
            None => (None, key),
        };
        let field = inner_key.strip_prefix(section)?;
        let full = parent.map_or(format!("{section}{field}"), |p| {
            format!("{p}.{section}{field}")
        });
        Some(ConfigError::new(full, reason))
    });
    inner.unwrap_or_else(|| ConfigError::new(key, message))
}
