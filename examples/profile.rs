//! Loading a profile file: what each route of a sample configuration
//! resolves to, after the environment's overrides.
//!
//! ```text
//! cargo run --example profile -- config/api-gateway.toml
//! MESH_PROFILE=development cargo run --example profile -- config/payment-service.toml
//! ```

use mesh::MeshConfig;

fn main() -> Result<(), mesh::core::BoxError> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "config/development.toml".to_owned());
    let config = MeshConfig::load(&path)?;
    println!(
        "{path}: service {}, profile {:?}",
        config.service.name, config.profile
    );
    let routes = std::iter::once("*").chain(config.services.keys().map(String::as_str));
    for route in routes {
        let service = if route == "*" { "" } else { route };
        let retry = config.retry_for(service)?;
        let breaker = config.breaker_for(service)?;
        println!(
            "  {route}: timeout {:?}, {} retries, breaker after {:?} failures in a row or {:?}% failing, open {:?}",
            config.timeout_for(service),
            retry.max_retries(),
            breaker.consecutive_failures(),
            breaker.failure_rate_threshold(),
            breaker.open_duration(),
        );
    }
    Ok(())
}
