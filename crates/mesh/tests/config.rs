//! Every sample configuration in `config/` loads and validates; mistakes
//! are refused with the key's path.

use std::path::PathBuf;
use std::time::Duration;

use mesh::{DiscoveryConfig, MeshConfig, Profile};

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

#[test]
fn every_sample_file_loads_and_validates() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .expect("config/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml" || e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    for file in files {
        let config = MeshConfig::load_with_env(&file, |_| None)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Every route's settings build.
        for service in std::iter::once("").chain(config.services.keys().map(String::as_str)) {
            config.retry_for(service).expect("retry");
            config.breaker_for(service).expect("breaker");
        }
    }
}

#[test]
fn the_samples_say_what_the_design_document_says() {
    let dir = config_dir();
    let gateway =
        MeshConfig::load_with_env(dir.join("api-gateway.toml"), |_| None).expect("gateway");
    assert_eq!(gateway.service.name, "api-gateway");
    assert_eq!(gateway.timeout_for("auth-service"), Duration::from_secs(1));
    assert_eq!(gateway.timeout_for("user-service"), Duration::from_secs(5));
    assert_eq!(
        gateway
            .breaker_for("auth-service")
            .expect("breaker")
            .consecutive_failures(),
        Some(3)
    );
    let payment =
        MeshConfig::load_with_env(dir.join("payment-service.toml"), |_| None).expect("payment");
    assert_eq!(payment.timeout_for("anything"), Duration::from_secs(15));
    assert!(!payment
        .retry_for("x")
        .expect("retry")
        .retry_non_idempotent());
    let notification = MeshConfig::load_with_env(dir.join("notification-service.toml"), |_| None)
        .expect("notification");
    // A relative discovery file is taken from the configuration's directory.
    match &notification.discovery {
        DiscoveryConfig::File { path, .. } => assert!(path.starts_with(&dir), "{path:?}"),
        other => panic!("{other:?}"),
    }
    // So is a gRPC service config.
    let grpc = MeshConfig::load_with_env(dir.join("grpc-gateway.toml"), |_| None).expect("grpc");
    let file = grpc.services["greeter"].grpc_service_config.as_ref();
    assert!(file.is_some_and(|f| f.starts_with(&dir)), "{file:?}");
    let dev =
        MeshConfig::load_with_env(dir.join("development.toml"), |_| None).expect("development");
    assert_eq!(dev.profile, Profile::Development);
    assert_eq!(dev.timeout_for("user-service"), Duration::from_secs(30));
}

#[test]
fn a_misspelled_key_fails_with_its_path() {
    let base = "[service]\nname = \"a\"\n[discovery]\nkind = \"static\"\nservices = {}\n";
    let cases = [
        (
            format!("{base}[breaker]\nconsecutive_failure = 3\n"),
            "breaker",
        ),
        (
            format!("{base}[services.users.retry]\nmax_retries = 1\nbackof = \"linear\"\n"),
            "services.users.retry",
        ),
        (
            "[service]\nnme = \"a\"\n[discovery]\nkind = \"static\"\nservices = {}\n".to_owned(),
            "service",
        ),
        (
            "[service]\nname = \"a\"\n[discovery]\nkind = \"etcd\"\n".to_owned(),
            "discovery",
        ),
    ];
    for (text, path) in cases {
        let err = MeshConfig::from_toml_str(&text)
            .expect_err(&text)
            .to_string();
        assert!(err.contains(path), "{path}: {err}");
    }
}

#[test]
fn values_are_validated_with_their_names() {
    let base = "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\n";
    let cases = [
        (
            "services = { users = [\"not-an-address\"] }\n",
            "discovery.services.users[0]",
        ),
        (
            "services = {}\n[retry]\nmax_retries = 1\nbackoff = \"quadratic\"\n",
            "retry.backoff",
        ),
        (
            "services = {}\n[services.users]\ntimeout = \"0s\"\n",
            "services.users.timeout",
        ),
        (
            "services = {}\n[balance]\npanic_threshold = 120.0\n",
            "balance.panic_threshold",
        ),
        (
            "services = {}\n[services.users.balance]\npanic_threshold = 120.0\n",
            "services.users.balance.panic_threshold",
        ),
        (
            "services = {}\n[services.users.breaker]\nfailure_rate_threshold = 0.0\n",
            "services.users.breaker.failure_rate_threshold",
        ),
        (
            "services = {}\n[retry]\nretryable_grpc_codes = [17]\n",
            "retry.retryable_grpc_codes",
        ),
        (
            "services = {}\n[services.users]\nreplay_buffer = 100000000\n",
            "services.users.replay_buffer",
        ),
        // A wait needs a limit to wait for; a queue needs a wait.
        (
            "services = {}\n[limits]\nmax_wait = \"1s\"\n",
            "limits.max_wait",
        ),
        (
            "services = {}\n[limits]\nconcurrency = 2\nqueue = 5\n",
            "limits.queue",
        ),
    ];
    for (rest, what) in cases {
        let err = MeshConfig::from_toml_str(&format!("{base}{rest}")).expect_err(rest);
        assert_eq!(err.key(), what, "{err}");
        // Said once, the field named.
        let text = err.to_string();
        assert_eq!(text.matches("invalid configuration").count(), 1, "{text}");
    }
    let err = MeshConfig::from_toml_str(
        "[service]\nname = \"Bad Name\"\n[discovery]\nkind = \"static\"\nservices = {}\n",
    )
    .expect_err("bad name")
    .to_string();
    assert!(err.contains("service.name"), "{err}");
}

#[test]
fn the_environment_overrides_what_the_deployment_sets() {
    let mut config = MeshConfig::from_toml_str(
        "profile = \"development\"\n[service]\nname = \"local\"\n[discovery]\nkind = \"consul\"\nurl = \"http://127.0.0.1:8500\"\n",
    )
    .expect("config");
    config
        .apply_env(|key| match key {
            "SERVICE_NAME" => Some("api-gateway".to_owned()),
            "CONSUL_URL" => Some("http://consul.mesh:8500".to_owned()),
            "MESH_PROFILE" => Some("production".to_owned()),
            _ => None,
        })
        .expect("valid overrides");
    assert_eq!(config.service.name, "api-gateway");
    assert_eq!(config.profile, Profile::Production);
    match &config.discovery {
        DiscoveryConfig::Consul { url, .. } => assert_eq!(url, "http://consul.mesh:8500"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn yaml_reads_the_same_as_toml_and_names_bad_keys() {
    let dir = config_dir();
    let toml = MeshConfig::load_with_env(dir.join("development.toml"), |_| None).expect("toml");
    let yaml = MeshConfig::load_with_env(dir.join("development.yaml"), |_| None).expect("yaml");
    assert_eq!(toml, yaml);
    let err = MeshConfig::from_yaml_str(
        "service:\n  name: a\ndiscovery:\n  kind: static\n  services: {}\nretry:\n  max_retries: 1\n  backof: linear\n",
    )
    .expect_err("misspelled")
    .to_string();
    assert!(err.contains("retry"), "{err}");
}

#[test]
fn a_bad_override_or_an_upper_case_service_key_is_refused() {
    let mut config = MeshConfig::from_toml_str(
        "[service]\nname = \"a\"\n[discovery]\nkind = \"static\"\nservices = {}\n",
    )
    .expect("config");
    let err = config
        .apply_env(|k| (k == "MESH_PROFILE").then(|| "prod".to_owned()))
        .expect_err("unknown profile")
        .to_string();
    assert!(err.contains("MESH_PROFILE"), "{err}");
    let err = MeshConfig::from_toml_str(
        "[service]\nname = \"a\"\n[discovery]\nkind = \"static\"\nservices = {}\n[services.User-Service]\ntimeout = \"1s\"\n",
    )
    .expect_err("upper case")
    .to_string();
    assert!(err.contains("write user-service"), "{err}");
}

#[test]
fn a_consul_address_the_file_cannot_reach_is_refused_naming_discovery_url() {
    let err = MeshConfig::from_toml_str(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"consul\"\nurl = \"https://consul.internal:8501\"\n",
    )
    .expect_err("https without a connector");
    assert_eq!(err.key(), "discovery.url");
    assert!(err.reason().contains("http"), "{err}");
}

/// A refused TOML file is told by position and message: `toml` would
/// quote the line at fault, and that line may hold a secret.
#[test]
fn a_refused_toml_line_is_never_quoted() {
    for (text, key) in [
        // A misspelt key on the token's line, in an inline table.
        (
            "[service]\nname = \"a\"\n[discovery]\nkind = \"consul\"\nurl = \"http://127.0.0.1:8500\"\nservices = {}\ntokn = \"s3cr3t-value\"\n",
            "discovery",
        ),
        (
            "[service]\nname = \"a\"\ndiscovery = { kind = \"consul\", url = \"http://127.0.0.1:8500\", token = \"s3cr3t-value\", bogus = 1 }\n",
            "discovery",
        ),
        // Not TOML at all: an unterminated string.
        (
            "[service]\nname = \"a\"\n[discovery]\nkind = \"consul\"\ntoken = \"s3cr3t-value\n",
            "the configuration",
        ),
    ] {
        let err = MeshConfig::from_toml_str(text).expect_err("refused");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains(key), "{shown}");
        assert!(shown.contains("line "), "the position is told: {shown}");
    }
}

/// A token written without its quotes is refused without being quoted:
/// serde's own message for a value of the wrong type would show it.
#[test]
fn a_secret_of_the_wrong_type_is_refused_without_quoting_it() {
    for token in ["12345678", "-12345678", "1234.5678", "true"] {
        let text = format!(
            "[service]\nname = \"a\"\n[discovery]\nkind = \"consul\"\nurl = \"http://127.0.0.1:8500\"\ntoken = {token}\n"
        );
        let err = MeshConfig::from_toml_str(&text).expect_err(token);
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(token.trim_start_matches('-')), "{shown}");
        assert!(shown.contains("a secret is a string"), "{shown}");
    }
    // In YAML, a number too long for 64 bits is refused by serde itself
    // as it reads the table; its message is not let quote it either.
    let long = "123456789012345678901234567890";
    let yaml = format!(
        "service:\n  name: a\ndiscovery:\n  kind: consul\n  url: http://127.0.0.1:8500\n  token: {long}\n"
    );
    let err = MeshConfig::from_yaml_str(&yaml).expect_err("a number");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(long), "{shown}");
    // Quoted, it is a token like any other.
    let text = "[service]\nname = \"a\"\n[discovery]\nkind = \"consul\"\nurl = \"http://127.0.0.1:8500\"\ntoken = \"12345678\"\n";
    MeshConfig::from_toml_str(text).expect("a quoted token");
}

#[test]
fn the_profiles_retries_are_jittered_as_a_written_retry_section_is() {
    let jitter = |text: &str| {
        let config = MeshConfig::from_toml_str(text).expect("config");
        config
            .retry_for("users")
            .expect("retry")
            .backoff()
            .jitter_kind()
    };
    let service = "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = { users = [\"127.0.0.1:1\"] }\n";
    for profile in ["production", "staging"] {
        let profile_only = format!("profile = \"{profile}\"\n{service}");
        let written = format!("{profile_only}[retry]\nmax_retries = 2\n");
        assert_eq!(
            jitter(&profile_only),
            mesh::retry::Jitter::Full,
            "{profile}"
        );
        assert_eq!(jitter(&profile_only), jitter(&written), "{profile}");
    }
}
