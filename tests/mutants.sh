#!/usr/bin/env bash
# Mutation testing of the security-critical functions (docs/TESTING.md).
#
# Mutates only the functions that decide who gets in, one area at a time,
# and runs only the fast in-process test binaries that judge that area, so
# each mutant costs one rebuild of the library and of those binaries. Needs
# cargo-mutants (`cargo install --locked cargo-mutants`).
#
#   tests/mutants.sh AREA [cargo-mutants options]
#
#   AREA       what is mutated
#   decision   key comparison, time checks, trust and pin checks, scopes,
#              header semantics, alert mapping, report mode (check.rs,
#              request.rs, enforcement.rs)
#   trust      chains, EKU, revocation, SPIFFE IDs, certificate parsing
#              and the evidence memo (trust/, identity.rs, evidence.rs)
#   tokens     token issuing and verification, key material and algorithm
#              pinning (token.rs, keys.rs)
#   registry   lookups and the load rules that feed them (registry/)
#
#   tests/mutants.sh decision --list          # the mutants, without running
#   tests/mutants.sh decision --shard 1/3     # a third of them (~1 hour)
#
# Results go to mutants.out/ (caught.txt, missed.txt, timeout.txt,
# unviable.txt, outcomes.json). A missed mutant here is a test to write, or
# an equivalent mutant to explain in docs/TESTING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

area="${1:-}"
shift || true

# Per area: the files, the functions (as `cargo mutants --list` names them;
# `<[^>]*>` stands for an impl's generics) and the test binaries.
case "$area" in
  decision)
    files=(src/check.rs src/request.rs src/enforcement.rs)
    functions=(
      'Reason::alert' 'Denial<[^>]*>::alert' 'Decision<[^>]*>::alert'
      decide issue peer_identity check_certificate check_trust_domain
      cert_reason check_trust check_api_key granted_scopes verify
      presented_token 'Headers<[^>]*>::single' effective reportable disposition
    )
    tests=(--test=decision --test=critical --test=verify --test=trust
      --test=hostile --test=report_mode --lib)
    ;;
  trust)
    files=(src/trust.rs 'src/trust/*.rs' src/identity.rs src/evidence.rs)
    functions=(
      'Bundle::verify' 'Bundle::chain' 'Bundle::check_root' 'Bundle::window'
      'Bundle::from_pem' 'Bundle::certificates_named' 'Bundle::id' parse_ca
      leaf_validity 'Verdict::holds_at' 'Verdict::is_trusted'
      '<impl ExtendedKeyUsageValidator for ClientAuth>::validate'
      'Crl::parse' 'Crl::verify_with' 'Revocations::add_crl'
      'Revocations::revoke_serial' 'Revocations::is_revoked'
      'Revocations::is_empty' normalize_serial parse_serial
      trust_domain svid_trust_domain is_valid_trust_domain has_spiffe_scheme
      'PeerCertificate::from_forwarded' 'PeerCertificate::from_pem'
      'PeerCertificate::from_der' 'PeerCertificate::uri_sans'
      reject_non_client identity_sans percent_decode_strict
      'Evidence::trusted_by' 'Evidence::verdict' 'Evidence::answers_for'
      'Evidence::gather_reusing' 'Evidence::svid_trust_domain'
      consulted_bundles 'EvidenceCache::resolve'
    )
    tests=(--lib --test=trust --test=critical --test=decision)
    ;;
  tokens)
    files=(src/token.rs src/keys.rs)
    functions=(
      'TokenKey::may_sign' 'TokenKey::is_live' 'TokenSettings::signer'
      'TokenSettings::validation' 'TokenSettings::ttl_secs' validation
      'Confirmation::for_certificate_sha256' 'Claims::scopes' issue verify
      checked_header check_secret 'Key::decoding_key' 'Key::can_sign'
      'Algorithm::jwt' 'Key::algorithm'
    )
    tests=(--lib --test=verify --test=keys --test=decision --test=critical)
    ;;
  registry)
    files=('src/registry/*.rs')
    functions=(
      hash_api_key 'Service::scope' 'Service::allows_scope'
      'Registry::service' 'Registry::service_for_principal'
      'Registry::key_owner' 'Registry::is_revoked'
      'Registry::has_trust_domains' 'Registry::trust_domain'
      'Builder::revocations' 'Builder::revocation' 'Builder::header_name'
      'Builder::header_roles' 'Builder::principal_domains' normalize_principal
      parse_sha256 'Builder::time'
    )
    tests=(--test=registry --test=critical --test=decision --test=hostile
      --test=trust)
    ;;
  *)
    echo "usage: $0 decision|trust|tokens|registry [cargo-mutants options]" >&2
    exit 2
    ;;
esac

file_args=()
for f in "${files[@]}"; do
  file_args+=(--file "$f")
done
# Given to every cargo command, so the build step too compiles only these
# test targets (arguments after `--` would reach only the test step, and
# the build would compile every test, example and benchmark per mutant).
target_args=()
for t in "${tests[@]}"; do
  target_args+=("--cargo-arg=$t")
done
regex="(replace|in) ($(IFS='|'; echo "${functions[*]}"))( |$)"

# Building each mutant is most of its cost: no debug info and no
# incremental state keep the scratch target small and the links short.
export CARGO_PROFILE_TEST_DEBUG=0 CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0

# The tests take seconds; the floor keeps a loaded machine from reporting
# a slow run as a timeout.
exec cargo mutants "${file_args[@]}" --re "$regex" "${target_args[@]}" \
  --timeout-multiplier 3 --minimum-test-timeout 60 "$@"
