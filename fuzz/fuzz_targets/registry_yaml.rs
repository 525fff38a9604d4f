//! The two YAML files: arbitrary text through the static-config and registry
//! parsers; text that parses as a registry is written next to the fixture's
//! secret and CA files and built into a `Registry`. Never panics, every
//! error renders, a registry that loads is internally consistent, and a
//! file both YAML readers accept means the same to both (serde_yaml refuses
//! some that the streaming reader takes: quoted or `_`-separated numbers and
//! booleans, some tabs).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use service_auth::config::{RegistryFile, StaticConfig, parse_yaml};
use service_auth::identity::principal_kind;
use service_auth::registry::Registry;
use service_auth_fuzz::world;

/// `parse_yaml` (serde-saphyr first) against serde_yaml alone.
fn readers_agree<T>(text: &str)
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let Ok(ours) = parse_yaml::<T>(Path::new("fuzz.yaml"), text) else {
        return;
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Ok(theirs) = serde_yaml::from_str::<T>(text) {
        assert_eq!(
            serde_json::to_value(&ours).unwrap(),
            serde_json::to_value(&theirs).unwrap()
        );
    }
}

fuzz_target!(|text: &str| {
    let name = Path::new("fuzz.yaml");
    readers_agree::<StaticConfig>(text);
    readers_agree::<RegistryFile>(text);
    if let Err(e) = parse_yaml::<StaticConfig>(name, text) {
        let _ = e.to_string();
    }
    if parse_yaml::<RegistryFile>(name, text).is_err() {
        return;
    }
    // Same directory as the fixture registry, so relative secret/CA/CRL
    // paths can resolve to real files.
    let path = world().registry_path.with_file_name("fuzzed.yaml");
    std::fs::write(&path, text).unwrap();
    match Registry::load(&path) {
        Err(errors) => {
            assert!(!errors.is_empty(), "rejected without a reason");
            for e in errors {
                let _ = e.to_string();
            }
        }
        Ok(registry) => {
            let now = service_auth::check::unix_now();
            let signer = registry.token.signer(now).expect("a loaded registry can sign");
            assert!(!signer.verify_only && signer.key.can_sign());
            let mut ids = std::collections::HashSet::new();
            for (i, service) in registry.services().iter().enumerate() {
                assert!(
                    ids.insert(service.id.clone()),
                    "duplicate id {}",
                    service.id
                );
                assert!(!service.principals.is_empty());
                for p in &service.principals {
                    let kind = principal_kind(p);
                    let normalized = match kind {
                        service_auth::identity::SanKind::Uri => p.clone(),
                        service_auth::identity::SanKind::Dns => p.to_ascii_lowercase(),
                    };
                    assert!(
                        registry
                            .service_for_principal(kind, &normalized)
                            .is_some_and(|s| std::ptr::eq(s, &registry.services()[i])),
                        "principal {p:?} does not lead back to {}",
                        service.id
                    );
                }
            }
        }
    }
});
