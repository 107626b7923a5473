//! The environment overrides a deployment sets over the file
//! (`SERVICE_NAME`, `CONSUL_URL`, `MESH_PROFILE`).

use mesh_core::ConfigError;

use super::{DiscoveryConfig, MeshConfig, Profile};

// === impl MeshConfig ===

impl MeshConfig {
    /// Applies the overrides the design document's Deployment sets, read
    /// through `var`: `SERVICE_NAME`, `CONSUL_URL` (for Consul discovery),
    /// `MESH_PROFILE`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        // An empty variable is taken as unset, as shells and manifests
        // often leave one defined but blank.
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        if let Some(name) = set("SERVICE_NAME") {
            self.service.name = name;
        }
        if let (Some(consul), DiscoveryConfig::Consul { url, .. }) =
            (set("CONSUL_URL"), &mut self.discovery)
        {
            *url = consul;
        }
        if let Some(profile) = set("MESH_PROFILE") {
            self.profile = profile_named(&profile)?;
        }
        Ok(())
    }
}

/// The profile `MESH_PROFILE` names.
fn profile_named(name: &str) -> Result<Profile, ConfigError> {
    match name {
        "development" => Ok(Profile::Development),
        "staging" => Ok(Profile::Staging),
        "production" => Ok(Profile::Production),
        other => Err(ConfigError::new(
            "MESH_PROFILE",
            format!("{other:?}: use development, staging or production"),
        )),
    }
}
