//! Hostile input at the edges of the decision: a caller without the
//! certificate factor, verify mode against a registry that changed, a
//! registry caught half written, the development secret in any role, and
//! header names that would make the sidecar clobber what it must not.

mod common;

use std::time::Duration;

use common::procs::poll;
use common::{Ca, ClientSpec, Fixture, InProcess, Req, Svc, tcp0, unix_now};
use envoy_types::ext_authz::v3::pb::HttpResponse;
use service_auth::check::{Decision, Reason, TokenCheck};
use service_auth::registry::{Problem, Registry, Warning};
use service_auth::response::Answer;
use service_auth::testkit::decide;

const A_URI: &str = "spiffe://mesh.test/ns/default/sa/a";
const A_KEY: &str = "key-of-service-a-0123456789";
const B_URI: &str = "spiffe://mesh.test/ns/default/sa/b";
const B_KEY: &str = "key-of-service-b-0123456789";

fn reason(d: &Decision<'_>) -> Option<Reason> {
    match d {
        Decision::Deny(denial) => Some(denial.reason),
        Decision::Allow(_) => None,
    }
}

/// An issue-mode token for `req`, signed as the server signs it.
fn token_for(registry: &Registry, req: &Req, now: i64) -> String {
    let answer = Answer::sign(decide(&req.build(), registry, now), registry, now);
    answer.issued.expect("an allowed, signed Check").token
}

#[tokio::test]
async fn a_direct_caller_cannot_drop_the_certificate_factor() {
    // The reviewer's attack: a workload reaches the sidecar itself and
    // claims api_service's principal, with api_service's (stolen) key.
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let sidecar = InProcess::for_fixture(&fixture).await;
    let mut client = sidecar.client().await;
    let resp = client
        .check(Req::principal(A_URI).key(A_KEY).build())
        .await
        .expect("a CheckResponse")
        .into_inner();
    assert_eq!(resp.status.unwrap().code, 16);
    let Some(HttpResponse::DeniedResponse(denied)) = resp.http_response else {
        panic!("expected a denial");
    };
    assert_eq!(denied.status.unwrap().code, 401);
}

#[test]
fn verify_mode_judges_the_bound_certificate_now() {
    let ca = Ca::new("verify CA");
    let cert = ca.client(&ClientSpec::uri(A_URI).serial(&[0x51, 0x7e]));
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)]);
    let before = fixture.load();
    let now = unix_now();
    let jwt = token_for(&before, &Req::cert(cert.forwarded()).key(A_KEY), now);
    let verify = Req::cert(cert.forwarded())
        .header("x-service-jwt", &jwt)
        .ext("mode", "verify");
    assert!(matches!(
        decide(&verify.build(), &before, now),
        Decision::Allow(_)
    ));

    // The certificate is revoked after the token was issued.
    let mut file =
        fixture.registry_file(&[Svc::new("a", A_URI, A_KEY), Svc::new("b", B_URI, B_KEY)]);
    file.revocation.serials = vec!["51:7e".into()];
    fixture.write(&file);
    let revoked = fixture.load();
    let d = decide(&verify.build(), &revoked, now);
    assert_eq!(reason(&d), Some(Reason::CertificateRevoked));
    assert_eq!(d.token_check(), Some(TokenCheck::Unbound));
    assert_eq!(d.alert(), Some("certificate_revoked"));

    // The service now requires another CA: the old certificate no longer
    // authenticates it.
    let other = Ca::new("another CA");
    fixture.write_file("other-ca.crt", other.cert_pem());
    let mut svc = Svc::new("a", A_URI, A_KEY);
    svc.ca_file = Some("other-ca.crt".into());
    fixture.write_registry(&[svc, Svc::new("b", B_URI, B_KEY)]);
    let distrusted = fixture.load();
    assert_eq!(
        reason(&decide(&verify.build(), &distrusted, now)),
        Some(Reason::CertificateUntrusted)
    );

    // The service is gone from the registry.
    fixture.write_registry(&[Svc::new("b", B_URI, B_KEY)]);
    let removed = fixture.load();
    assert_eq!(
        reason(&decide(&verify.build(), &removed, now)),
        Some(Reason::InvalidToken)
    );
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let ca = Ca::new("bearer CA");
    let cert = ca.client(&ClientSpec::uri(A_URI));
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let registry = fixture.load();
    let now = unix_now();
    let jwt = token_for(&registry, &Req::cert(cert.forwarded()).key(A_KEY), now);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let req = Req::cert(cert.forwarded())
            .header("authorization", &format!("{scheme} {jwt}"))
            .ext("mode", "verify");
        assert!(
            matches!(decide(&req.build(), &registry, now), Decision::Allow(_)),
            "{scheme}"
        );
    }
    // `Digest ` is as long as `Bearer `: only the scheme's name tells them apart.
    for bad in [
        format!("Basic {jwt}"),
        format!("Digest {jwt}"),
        format!("Bearer{jwt}"),
        jwt.clone(),
    ] {
        let req = Req::cert(cert.forwarded())
            .header("authorization", &bad)
            .ext("mode", "verify");
        assert_eq!(
            reason(&decide(&req.build(), &registry, now)),
            Some(Reason::InvalidToken),
            "{bad:.20}"
        );
    }
}

#[tokio::test]
async fn verify_mode_strips_the_api_key_before_the_upstream() {
    let ca = Ca::new("verify CA");
    let cert = ca.client(&ClientSpec::uri(A_URI));
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let registry = fixture.load();
    let jwt = token_for(
        &registry,
        &Req::cert(cert.forwarded()).key(A_KEY),
        unix_now(),
    );
    let sidecar = InProcess::for_fixture(&fixture).await;
    let resp = sidecar
        .client()
        .await
        .check(
            Req::cert(cert.forwarded())
                .header("x-service-jwt", &jwt)
                .key(A_KEY)
                .ext("mode", "verify")
                .build(),
        )
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
        panic!("expected an allow: {resp:?}");
    };
    assert_eq!(ok.headers_to_remove, vec!["x-api-key".to_owned()]);
    assert_eq!(ok.headers[0].header.as_ref().unwrap().key, "x-service-id");
}

/// Writes `text` into `path` in place, in two parts with a pause between,
/// the way a careless `cat > registry.yaml` or a slow editor does.
async fn write_in_two_steps(path: &std::path::Path, text: &str, split: usize, pause: Duration) {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .await
        .unwrap();
    file.write_all(&text.as_bytes()[..split]).await.unwrap();
    file.flush().await.unwrap();
    file.sync_data().await.unwrap();
    tokio::time::sleep(pause).await;
    file.write_all(&text.as_bytes()[split..]).await.unwrap();
    file.flush().await.unwrap();
}

#[tokio::test]
async fn a_half_written_registry_is_never_served() {
    let ca = Ca::new("settle CA");
    let revoked = ca.client(&ClientSpec::uri(A_URI).serial(&[0x0b, 0xad]));
    let fixture = Fixture::new(&[]);
    // Services before the revocation list, so the first half of the file
    // is a valid registry that revokes nothing.
    let text = |extra_service: bool| {
        let mut file = fixture.registry_file(&[Svc::new("a", A_URI, A_KEY)]);
        if extra_service {
            file.services.push(Svc::new("b", B_URI, B_KEY).entry());
        }
        let services = serde_yaml::to_string(&file.services).unwrap();
        file.services.clear();
        file.revocation.serials = vec!["0bad".into()];
        let mut head = serde_yaml::to_value(&file).unwrap();
        let revocation = head.as_mapping_mut().unwrap().remove("revocation").unwrap();
        head.as_mapping_mut().unwrap().remove("services");
        let revocation = serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
            "revocation".into(),
            revocation,
        )]))
        .unwrap();
        let head = serde_yaml::to_string(&head).unwrap();
        let body = format!("{head}services:\n{services}");
        (body.len(), format!("{body}{revocation}"))
    };
    let (_, first) = text(false);
    fixture.write_text(&first);
    let mut config = fixture.static_config(tcp0());
    config.reload.poll_interval = Duration::from_millis(50);
    config.reload.settle = Duration::from_millis(700);
    let sidecar = InProcess::start(&config).await;
    let mut client = sidecar.client().await;
    let check = Req::cert(revoked.forwarded()).key(A_KEY).build();
    let reason_of = |resp: envoy_types::ext_authz::v3::pb::CheckResponse| {
        let fields = resp.dynamic_metadata.unwrap().fields;
        format!("{:?}", fields["service_auth"])
    };
    assert!(
        reason_of(client.check(check.clone()).await.unwrap().into_inner())
            .contains("certificate_revoked")
    );

    // Rewrite in place: services (with a new one) first, a pause of several
    // poll intervals, then the revocation list.
    let (split, second) = text(true);
    let writer = {
        let path = fixture.registry_path();
        tokio::spawn(async move {
            write_in_two_steps(&path, &second, split, Duration::from_millis(400)).await
        })
    };
    while !writer.is_finished() {
        let resp = client.check(check.clone()).await.unwrap().into_inner();
        assert_ne!(
            resp.status.unwrap().code,
            0,
            "the revoked certificate was allowed while the registry was half written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.await.unwrap();
    // The completed file is applied once it settles: b appears, a stays revoked.
    poll("the rewritten registry", Duration::from_secs(10), || {
        let loaded = sidecar
            .sidecar
            .snapshot()
            .load()
            .is_some_and(|r| r.service("b").is_some());
        async move { loaded.then_some(()) }
    })
    .await;
    let resp = client.check(check).await.unwrap().into_inner();
    assert!(reason_of(resp).contains("certificate_revoked"));
}

#[test]
fn a_truncated_registry_without_services_is_rejected() {
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let mut file = serde_yaml::to_value(fixture.registry_file(&[])).unwrap();
    file.as_mapping_mut().unwrap().remove("services");
    fixture.write_text(&serde_yaml::to_string(&file).unwrap());
    let errors = Registry::load(&fixture.registry_path()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let message = errors[0].to_string();
    assert!(
        matches!(
            &errors[0],
            service_auth::registry::LoadError::File(service_auth::config::ConfigError::Yaml { .. })
        ),
        "{errors:?}"
    );
    assert!(message.contains("missing field `services`"), "{message}");
}

#[test]
fn the_development_secret_is_flagged_in_any_role() {
    let dev_secret = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/secrets/DEV-ONLY-jwt-signing.key"),
    )
    .unwrap();
    for (verify_only, position) in [(true, 1), (false, 1), (false, 0)] {
        let fixture = Fixture::new(&[]);
        fixture.write_file("secrets/dev.key", &dev_secret);
        let mut file = fixture.registry_file(&[Svc::new("a", A_URI, A_KEY)]);
        let dev = service_auth::config::KeyEntry {
            kid: "dev".into(),
            secret_file: Some("secrets/dev.key".into()),
            verify_only,
            ..Default::default()
        };
        if position == 0 {
            file.token.keys[0].verify_only = true;
        }
        file.token.keys.insert(position, dev);
        fixture.write(&file);
        let registry = fixture.load();
        assert!(
            registry.uses_dev_secret,
            "verify_only {verify_only}, position {position}"
        );
        assert_eq!(
            registry.warnings(),
            &[Warning::DevSecret {
                at: format!("token.keys[{position}]"),
                kid: "dev".into()
            }]
        );
    }
    let clean = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]).load();
    assert!(!clean.uses_dev_secret);
    assert!(clean.warnings().is_empty());
}

#[test]
fn header_names_that_would_clobber_are_rejected() {
    let fixture = Fixture::new(&[]);
    type Want = fn(&Problem) -> bool;
    // (which header, its name, where the error is reported, what it says)
    let cases: Vec<(&str, &str, &str, Want)> = vec![
        (
            "token",
            "x-api-key",
            "request.api_key_header",
            |p| matches!(p, Problem::HeaderCollision { name, other: "token.header" } if name == "x-api-key"),
        ),
        (
            "token",
            "host",
            "token.header",
            |p| matches!(p, Problem::ReservedHeaderName(n) if n == "host"),
        ),
        ("token", "authorization", "token.header", |p| {
            matches!(p, Problem::ReservedHeaderName(_))
        }),
        ("token", ":path", "token.header", |p| {
            matches!(p, Problem::ReservedHeaderName(_))
        }),
        ("token", "X-Service-Jwt", "token.header", |p| {
            matches!(p, Problem::InvalidHeaderName(_))
        }),
        ("token", "x service jwt", "token.header", |p| {
            matches!(p, Problem::InvalidHeaderName(_))
        }),
        ("api", "x-service-id", "request.api_key_header", |p| {
            matches!(p, Problem::ReservedHeaderName(_))
        }),
        (
            "api",
            "x-forwarded-client-cert",
            "request.api_key_header",
            |p| matches!(p, Problem::ReservedHeaderName(_)),
        ),
        ("api", "content-type", "request.api_key_header", |p| {
            matches!(p, Problem::ReservedHeaderName(_))
        }),
        ("scope", "x-api-key", "request.scope_header", |p| {
            matches!(
                p,
                Problem::HeaderCollision {
                    other: "request.api_key_header",
                    ..
                }
            )
        }),
        ("scope", "x-service-jwt", "request.scope_header", |p| {
            matches!(
                p,
                Problem::HeaderCollision {
                    other: "token.header",
                    ..
                }
            )
        }),
        ("scope", "transfer-encoding", "request.scope_header", |p| {
            matches!(p, Problem::ReservedHeaderName(_))
        }),
    ];
    for (role, name, at, want) in cases {
        let mut file = fixture.registry_file(&[Svc::new("a", A_URI, A_KEY)]);
        match role {
            "token" => file.token.header = name.into(),
            "api" => file.request.api_key_header = name.into(),
            _ => file.request.scope_header = Some(name.into()),
        }
        fixture.write(&file);
        let errors = Registry::load(&fixture.registry_path()).unwrap_err();
        assert_eq!(errors.len(), 1, "{role} = {name:?}: {errors:?}");
        assert_eq!(errors[0].at(), Some(at), "{role} = {name:?}");
        assert!(
            want(errors[0].problem().unwrap()),
            "{role} = {name:?}: {errors:?}"
        );
    }
    // The defaults are distinct, valid and unreserved.
    fixture.write_registry(&[Svc::new("a", A_URI, A_KEY)]);
    fixture.load();
}

/// Asserts the 400 denial every unreadable request gets, inside a CheckResponse.
fn assert_bad_request(resp: &envoy_types::ext_authz::v3::pb::CheckResponse) {
    assert_eq!(resp.status.as_ref().unwrap().code, 3, "INVALID_ARGUMENT");
    let Some(HttpResponse::DeniedResponse(denied)) = &resp.http_response else {
        panic!("expected a denial: {resp:?}");
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 400);
    assert_eq!(denied.body, r#"{"error":"bad_request"}"#);
    let meta = format!("{:?}", resp.dynamic_metadata);
    assert!(meta.contains("malformed_request"), "{meta}");
}

#[tokio::test]
async fn an_undecodable_request_is_a_denial_not_a_grpc_error() {
    use service_auth::testkit::grpc::{raw_check, with_invalid_utf8};
    let ca = Ca::new("wire CA");
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let sidecar = InProcess::for_fixture(&fixture).await;
    let cert = ca.client(&ClientSpec::uri(A_URI));
    // Each marker sits in one string field the decision never reads.
    let mut req = Req::cert(cert.forwarded())
        .key(A_KEY)
        .header("x-marker", "MARKER-HEADER")
        .build();
    let http = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.body = "MARKER-BODY".into();
    http.path = "/MARKER-PATH".into();
    // Control: the intact request is allowed.
    let ok = raw_check(sidecar.addr, prost::Message::encode_to_vec(&req))
        .await
        .expect("a CheckResponse");
    assert_eq!(ok.status.unwrap().code, 0);
    for marker in ["MARKER-HEADER", "MARKER-BODY", "MARKER-PATH"] {
        let resp = raw_check(sidecar.addr, with_invalid_utf8(&req, marker))
            .await
            .unwrap_or_else(|e| panic!("{marker}: a gRPC error instead of a denial: {e}"));
        assert_bad_request(&resp);
    }
    // Not protobuf at all.
    let resp = raw_check(sidecar.addr, vec![0xff; 64]).await.unwrap();
    assert_bad_request(&resp);
}

#[tokio::test]
async fn an_oversized_request_is_a_denial() {
    let ca = Ca::new("wire CA");
    let fixture = Fixture::new(&[Svc::new("a", A_URI, A_KEY)]);
    let mut config = fixture.static_config(tcp0());
    config.limits.max_message_bytes = 64 * 1024;
    let sidecar = InProcess::start(&config).await;
    let cert = ca.client(&ClientSpec::uri(A_URI));
    let huge = Req::cert(cert.forwarded())
        .key(A_KEY)
        .header("x-padding", &"p".repeat(512 * 1024))
        .build();
    let mut client = sidecar.client().await;
    let resp = client
        .check(huge)
        .await
        .expect("a CheckResponse, not OUT_OF_RANGE")
        .into_inner();
    assert_bad_request(&resp);
    // The connection still serves a normal Check afterwards.
    let resp = client
        .check(Req::cert(cert.forwarded()).key(A_KEY).build())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status.unwrap().code, 0);
}
