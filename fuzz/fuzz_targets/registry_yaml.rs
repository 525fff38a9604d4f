//! The two YAML files: arbitrary text through the static-config and registry
//! parsers; text that parses as a registry is written next to the fixture's
//! secret and CA files and built into a `Registry`. Never panics, every
//! error renders, and a registry that loads is internally consistent.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use service_auth::config::{RegistryFile, StaticConfig, parse_yaml};
use service_auth::identity::principal_kind;
use service_auth::registry::Registry;
use service_auth_fuzz::world;

fuzz_target!(|text: &str| {
    let name = Path::new("fuzz.yaml");
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
