//! The layered configuration: the reference file parses, and bad values name their key.

use std::path::Path;

use strata_broker::BrokerError;
use strata_broker::config::{BrokerConfig, ConfigSources, parse_file};

fn load(env: &[(&str, &str)], overrides: &[&str]) -> Result<BrokerConfig, BrokerError> {
    BrokerConfig::load(&ConfigSources {
        file: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
    })
}

fn bad_key(r: Result<BrokerConfig, BrokerError>) -> String {
    match r {
        Err(BrokerError::Config { key, .. }) => key,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn the_reference_config_parses_to_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/strata.toml");
    let file = parse_file(&path).expect("deploy/strata.toml parses");
    let defaults = load(&[], &[]).expect("defaults are valid");
    assert_eq!(format!("{file:?}"), format!("{defaults:?}"));
}

#[test]
fn env_then_flags_override_in_order() {
    let c = load(
        &[
            ("STRATA_KAFKA__LISTEN", "0.0.0.0:19092"),
            ("STRATA_TOPICS__DEFAULT_PARTITIONS", "3"),
            ("HOME", "/root"),
        ],
        &[
            "topics.default_partitions=6",
            "kafka.advertised=broker-0:9092",
        ],
    )
    .expect("valid");
    assert_eq!(c.kafka.listen, "0.0.0.0:19092");
    assert_eq!(c.topics.default_partitions, 6);
    assert_eq!(c.advertised(), ("broker-0".to_string(), 9092));
}

#[test]
fn other_tools_strata_variables_are_not_settings() {
    // stratactl's and the test suite's variables share the prefix.
    let c = load(
        &[
            ("STRATA_BOOTSTRAP", "127.0.0.1:9092"),
            ("STRATA_REQUIRE_DOCKER", "1"),
            ("STRATA_DATA_DIR", "/srv/strata"),
            ("STRATA_OBJECT_STORE__RECOVER_TOPICS", "false"),
        ],
        &[],
    )
    .expect("valid");
    assert_eq!(c.data_dir, Path::new("/srv/strata"));
    assert!(!c.object_store.recover_topics);
    // A misspelt key inside a section is still an error.
    assert_eq!(
        bad_key(load(&[("STRATA_KAFKA__LISTN", "x")], &[])),
        "kafka.listn"
    );
}

#[test]
fn bad_settings_name_their_key() {
    assert_eq!(
        bad_key(load(&[], &["kafka.lisen=1.2.3.4:1"])),
        "kafka.lisen"
    );
    assert_eq!(
        bad_key(load(&[], &["kafka.listen=nowhere"])),
        "kafka.listen"
    );
    assert_eq!(
        bad_key(load(&[("STRATA_TOPICS__DEFAULT_PARTITIONS", "many")], &[])),
        "topics.default_partitions"
    );
    assert_eq!(
        bad_key(load(&[], &["topics.default_partitions=0"])),
        "topics.default_partitions"
    );
    assert_eq!(
        bad_key(load(&[], &["kafka.max_request_bytes=1"])),
        "kafka.max_request_bytes"
    );
    assert_eq!(
        bad_key(load(&[], &["controller.mode=\"combined\""])),
        "controller.voters"
    );
    // A voter must be one of the voters it is given.
    for mode in ["combined", "dedicated"] {
        let set = [
            format!("controller.mode=\"{mode}\""),
            "node_id=4".to_owned(),
            "controller.voters=[\"1@a:9093\",\"2@b:9093\",\"3@c:9093\"]".to_owned(),
        ];
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        assert_eq!(bad_key(load(&[], &set)), "controller.voters", "{mode}");
    }
    load(
        &[],
        &[
            "controller.mode=\"remote\"",
            "node_id=4",
            "controller.voters=[\"1@a:9093\"]",
        ],
    )
    .expect("a remote broker is not a voter");
    assert_eq!(bad_key(load(&[], &["rack=\" \""])), "rack");
    assert_eq!(
        load(&[("STRATA_RACK", "eu-west-1a")], &[])
            .expect("valid")
            .rack
            .as_deref(),
        Some("eu-west-1a")
    );
    assert_eq!(bad_key(load(&[], &["novalue"])), "novalue");
}
