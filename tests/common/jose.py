"""An upstream's view of mesh tokens, with an independent JOSE library
(PyJWT over pyca/cryptography): tokens are verified against the JWKS fetched
over HTTP from the admin listener, or an HS256 secret, never with
service-auth's own code.

  jose.py check    stdin: {"issuer", "audience", "cases": [{"token", "alg",
                   "jwks_url" | "secret"}]}; prints one result per case.
  jose.py stream JWKS_URL REFRESH_SECONDS ISSUER AUDIENCE [KID=SECRET ...]
                   stdin: one token per line, answered at once with a line
                   "ok KID" or "fail ERROR". Like a cautious upstream, it
                   refetches the JWKS only once its copy is REFRESH_SECONDS
                   old (never because a kid is unknown), so a key that signs
                   before it was published in time fails.
"""

import json
import sys
import time
import urllib.request

try:
    import jwt
    from jwt import PyJWK, PyJWKClient
except ImportError as e:  # the Rust test reports this with its own message
    sys.stderr.write(f"cannot import PyJWT with cryptography ({e}): pip install pyjwt cryptography\n")
    sys.exit(3)


def decode(token, key, alg, issuer, audience):
    return jwt.decode(
        token,
        key,
        algorithms=[alg],
        issuer=issuer,
        audience=audience,
        options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub"]},
    )


def check():
    spec = json.load(sys.stdin)
    results = []
    for case in spec["cases"]:
        try:
            if "secret" in case:
                key = case["secret"].encode()
            else:
                key = PyJWKClient(case["jwks_url"]).get_signing_key_from_jwt(case["token"]).key
            claims = decode(case["token"], key, case["alg"], spec["issuer"], spec["audience"])
            kid = jwt.get_unverified_header(case["token"])["kid"]
            results.append({"ok": True, "kid": kid, "sub": claims["sub"]})
        except Exception as e:  # every failure is reported, none raised
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    json.dump(results, sys.stdout)


def stream(jwks_url, refresh, issuer, audience, secrets):
    refresh = float(refresh)
    secrets = dict(s.split("=", 1) for s in secrets)
    fetched_at, jwks = 0.0, None
    for line in sys.stdin:
        token = line.strip()
        if jwks is None or time.monotonic() - fetched_at >= refresh:
            with urllib.request.urlopen(jwks_url, timeout=10) as response:
                # An empty set is fine (HS256 only); PyJWKSet refuses one.
                jwks = {k["kid"]: PyJWK(k) for k in json.load(response)["keys"]}
            fetched_at = time.monotonic()
        try:
            kid = jwt.get_unverified_header(token)["kid"]
            if kid in secrets:
                decode(token, secrets[kid].encode(), "HS256", issuer, audience)
            else:
                jwk = jwks[kid]
                decode(token, jwk.key, jwk.algorithm_name, issuer, audience)
            print(f"ok {kid}", flush=True)
        except Exception as e:
            print(f"fail {type(e).__name__}: {e}".replace("\n", " "), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check()
    else:
        stream(*sys.argv[2:6], sys.argv[6:])
