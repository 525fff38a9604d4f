#!/usr/bin/env bash
# Mutation testing of the security-critical functions (docs/TESTING.md).
#
# Mutates only the functions that decide who gets in (key comparison, time
# checks, revocation, trust, EKU, scopes, header semantics, alert mapping,
# token verification, key material) and runs only the fast in-process tests
# against each mutant, so one run fits in an hour on two cores. Needs
# cargo-mutants (`cargo install --locked cargo-mutants`).
#
#   tests/mutants.sh               # the whole selection
#   tests/mutants.sh --list        # only list the mutants it would try
#   tests/mutants.sh --shard 1/2   # any other cargo-mutants option
#
# Results go to mutants.out/ (outcomes.json, caught.txt, missed.txt,
# timeout.txt, unviable.txt). A missed mutant in this selection is a test
# to write, or an equivalent mutant to explain in docs/TESTING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# Functions, by the names cargo-mutants prints (`--list`).
functions=(
  # check: the decision
  'Reason::alert' 'Denial<[^>]*>::alert' 'Decision<[^>]*>::alert'
  peer_identity check_certificate cert_reason check_trust check_api_key
  granted_scopes verify presented_token issue
  # identity: the forwarded certificate
  reject_non_client normalize_serial identity_sans 'PeerCertificate::from_der'
  'PeerCertificate::from_forwarded' 'PeerCertificate::is_issued_by'
  'TrustAnchor::verifies_crl' percent_decode_strict
  # token: issuing and verifying
  'TokenKey::is_live' 'TokenKey::may_sign' checked_header validation
  'Confirmation::for_certificate_sha256' 'Claims::scopes'
  # registry: lookups and the rules that feed them
  'Registry::is_revoked' 'Registry::key_owner' 'Registry::service_for_principal'
  hash_api_key 'Service::scope' 'Service::allows_scope' parse_serial
  'Builder<[^>]*>::revocations' read_crl normalize_principal
  'Builder<[^>]*>::header_name' 'Builder<[^>]*>::header_roles'
  # keys: secrets and algorithm pinning
  check_secret 'Key::decoding_key' 'Algorithm::jwt'
)
regex="(replace|in) ($(IFS='|'; echo "${functions[*]}"))( |$)"

# A test profile without debug info: linking each mutant is most of its cost.
export CARGO_PROFILE_TEST_DEBUG=0 CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0

exec cargo mutants \
  --file src/check.rs --file src/identity.rs --file src/token.rs \
  --file 'src/registry/*.rs' --file src/keys.rs \
  --re "$regex" \
  --timeout-multiplier 3 \
  "$@" \
  -- --lib --test decision --test critical --test verify --test hostile \
  --test registry --test keys
