//! Property tests of the YAML loaders with hostile input: arbitrary text, and documents built from the
//! real keys with arbitrary values. The loaders must never panic, must refuse what they cannot accept
//! with a located message, and whatever they accept must keep the settings' invariants.
//! `COVE_FUZZ_CASES=100000 cargo test -p cove-spec --test fuzz` runs longer.

use cove_spec::{parse_deployment, parse_endpoint};
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "name",
    "endpoint_name",
    "type",
    "description",
    "model",
    "compute",
    "mini_batch_size",
    "instance_count",
    "max_concurrency_per_instance",
    "output_action",
    "output_file_name",
    "error_threshold",
    "logging_level",
    "retry_settings",
    "environment_variables",
    "settings",
    "resources",
    "code_configuration",
    "environment",
    "egress",
    "limits",
    "tags",
    "defaults",
    "auth_mode",
    "descriptoin",
];

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{1,12}",
        "[a-z][a-z0-9-]{0,40}",
        Just("append_row".to_string()),
        Just("summary_only".to_string()),
        Just("PT30S".to_string()),
        Just("azureml:cpu-cluster".to_string()),
        Just("~".to_string()),
        Just("[1, 2]".to_string()),
        Just("{a: 1}".to_string()),
        "\\PC{0,30}",
    ]
}

/// A YAML document of up to three levels built from real keys.
fn document() -> impl Strategy<Value = String> {
    let line = (0usize..3, prop::sample::select(KEYS), scalar(), any::<bool>());
    prop::collection::vec(line, 0..25).prop_map(|lines| {
        let mut text = String::new();
        for (depth, key, value, nested) in lines {
            text.push_str(&"  ".repeat(depth));
            if nested {
                text.push_str(&format!("{key}:\n"));
            } else {
                text.push_str(&format!("{key}: {value}\n"));
            }
        }
        text
    })
}

fn config() -> ProptestConfig {
    let cases = std::env::var("COVE_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = parse_endpoint("e.yml", &text);
        let _ = parse_deployment("d.yml", &text);
    }

    #[test]
    fn documents_of_real_keys_are_accepted_with_invariants_or_refused_with_a_located_error(text in document()) {
        match parse_deployment("d.yml", &text) {
            Ok(spec) => {
                let s = &spec.settings;
                prop_assert!(s.mini_batch_size >= 1 && s.instance_count >= 1 && s.max_concurrency_per_instance >= 1);
                prop_assert!(s.retry_settings.max_retries >= 1 && s.retry_settings.timeout_secs >= 1);
                prop_assert!(s.error_threshold >= -1);
                prop_assert_eq!(s.output_file_name.is_some(), s.output_action == cove_spec::OutputAction::AppendRow);
            }
            Err(e) => prop_assert!(e.to_string().starts_with("d.yml"), "{}", e),
        }
        if let Err(e) = parse_endpoint("e.yml", &text) {
            prop_assert!(e.to_string().starts_with("e.yml"), "{}", e);
        }
    }

    #[test]
    fn deep_or_huge_documents_are_refused(depth in 65usize..400, width in 0usize..3) {
        let deep: String = (0..depth).map(|i| format!("{}k{i}:{}\n", "  ".repeat(i), " x".repeat(width))).collect();
        prop_assert!(parse_deployment("d.yml", &deep).is_err());
        let flow = format!("name: {}{}", "[".repeat(depth), "]".repeat(depth));
        prop_assert!(parse_endpoint("e.yml", &flow).is_err());
    }
}
