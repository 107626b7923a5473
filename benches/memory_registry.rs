//! The registry the in-memory benches resolve against: `user-service` at
//! three addresses nothing listens on (the leaf answers in memory).

use mesh::prelude::StaticRegistry;

/// `user-service` at three addresses.
pub fn three_instances() -> StaticRegistry {
    StaticRegistry::builder()
        .service(
            "user-service",
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        )
        .build()
        .expect("static list")
}
