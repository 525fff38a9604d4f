//! SPIFFE IDs and the X509-SVID URI SAN rule.

/// The trust domain of a SPIFFE ID (`spiffe://TD/path`), or `None` when
/// `uri` is not a valid SPIFFE ID: lower-case scheme, a non-empty trust
/// domain of `[a-z0-9._-]` (so no userinfo, port or upper case), and path
/// segments of `[A-Za-z0-9._-]` that are neither empty, `.` nor `..` (no
/// trailing slash, query, fragment or percent-encoding).
pub fn trust_domain(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !is_valid_trust_domain(td) {
        return None;
    }
    if let Some(path) = path.strip_prefix('/') {
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        };
        if !path.split('/').all(segment_ok) {
            return None;
        }
    }
    Some(td)
}

/// Whether `name` is a valid SPIFFE trust domain name (for validating
/// configured `trust_domains` keys).
pub fn is_valid_trust_domain(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// Whether `uri` uses the `spiffe` scheme, in any case: a mis-cased scheme
/// must be refused as a malformed SPIFFE ID, not read as another URI.
pub fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
}

/// Why a certificate's URI SANs do not make a valid X509-SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("a certificate with a spiffe:// SAN must carry exactly one URI SAN")]
    NotSoleUri,
    #[error("malformed SPIFFE ID")]
    Malformed,
}

/// Applies the X509-SVID rules to a certificate's URI SANs: `Ok(None)` when
/// none uses the `spiffe` scheme (in any case), `Ok(Some(trust domain))` for
/// a valid SVID. A `spiffe` URI next to any other URI SAN, or one that is not
/// a valid SPIFFE ID, is an error: the caller must refuse the certificate
/// rather than read it as a non-SPIFFE one.
pub fn svid_trust_domain<'a>(
    uri_sans: impl IntoIterator<Item = &'a str>,
) -> Result<Option<&'a str>, SvidError> {
    let (mut count, mut spiffe) = (0usize, None);
    for uri in uri_sans {
        count += 1;
        if spiffe.is_none() && has_spiffe_scheme(uri) {
            spiffe = Some(uri);
        }
    }
    let Some(spiffe) = spiffe else {
        return Ok(None);
    };
    if count != 1 {
        return Err(SvidError::NotSoleUri);
    }
    trust_domain(spiffe).map(Some).ok_or(SvidError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_per_the_spec() {
        assert_eq!(
            trust_domain("spiffe://a.example/ns/x/sa/y"),
            Some("a.example")
        );
        assert_eq!(trust_domain("spiffe://td-1_b.c"), Some("td-1_b.c"));
        assert_eq!(trust_domain("spiffe://a/Seg.-_9"), Some("a"));
        for bad in [
            "spiffe://",
            "spiffe:///path",
            "spiffe://A.example/x",
            "SPIFFE://a/x",
            "spiffe://user@a/x",
            "spiffe://a:8443/x",
            "spiffe://a/",
            "spiffe://a//x",
            "spiffe://a/./x",
            "spiffe://a/../x",
            "spiffe://a/x%20y",
            "spiffe://a/x?q",
            "spiffe://a/x#f",
            "https://a/x",
            "spiffe:a/x",
        ] {
            assert_eq!(trust_domain(bad), None, "{bad}");
        }
        assert!(is_valid_trust_domain("mesh.local"));
        assert!(!is_valid_trust_domain("Mesh.local"));
        assert!(!is_valid_trust_domain(""));
    }

    #[test]
    fn svids_carry_exactly_one_uri_san() {
        assert_eq!(svid_trust_domain(["spiffe://a/x"]), Ok(Some("a")));
        assert_eq!(svid_trust_domain(["https://a/x"]), Ok(None));
        assert_eq!(svid_trust_domain(["https://a/x", "urn:x"]), Ok(None));
        assert_eq!(svid_trust_domain([]), Ok(None));
        assert_eq!(
            svid_trust_domain(["spiffe://a/x", "spiffe://b/y"]),
            Err(SvidError::NotSoleUri)
        );
        assert_eq!(
            svid_trust_domain(["https://a/x", "spiffe://a/x"]),
            Err(SvidError::NotSoleUri)
        );
        assert_eq!(
            svid_trust_domain(["SPIFFE://a/x"]),
            Err(SvidError::Malformed)
        );
        assert_eq!(
            svid_trust_domain(["spiffe://a/x/"]),
            Err(SvidError::Malformed)
        );
    }
}
