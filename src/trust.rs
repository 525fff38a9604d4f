//! Whether a peer certificate is vouched for: CA bundles, chain validation,
//! issuer-scoped revocation and SPIFFE IDs.
//!
//! This module owns the PKI rules and nothing else; it knows no registry,
//! service or request. Path building and signature checks are delegated to
//! `rustls-webpki`; what this module adds is the policy webpki leaves to its
//! caller:
//!
//! - **Anchors.** A [`Bundle`] is a PEM file of CA certificates. Only the
//!   *self-signed* ones become trust anchors; the rest are intermediates
//!   offered to the path builder, so an intermediate on its own vouches for
//!   nothing. webpki never looks at an anchor's validity or basicConstraints
//!   (an anchor is just a name and a key), so [`Bundle::verify`] checks the
//!   root's validity window and `pathLenConstraint` itself on every candidate
//!   path: an expired root vouches for nothing.
//! - **Usage.** The leaf's extended key usage must contain `clientAuth` or
//!   `anyExtendedKeyUsage`, or be absent (RFC 5280). webpki's stock
//!   `KeyUsage::client_auth()` refuses `anyExtendedKeyUsage`, so a validator
//!   of our own is used. webpki applies the validator to every certificate of
//!   the path, not only the leaf: an intermediate restricted to `serverAuth`
//!   cannot issue client certificates ("EKU chaining", as browsers do).
//! - **Name constraints** are enforced by webpki for DNS names and IP
//!   addresses. URI and directory-name constraints are not implemented there
//!   and fail closed: a CA in the path with *any* URI name constraint
//!   (permitted or excluded) makes every leaf carrying a URI SAN — every
//!   SPIFFE SVID — fail with [`ChainError::NameConstraint`]. Bundles holding
//!   such a CA get a [`BundleWarning::UriNameConstraints`] at load.
//! - **Time.** A [`Verdict`] carries the window `[from, until)` in which the
//!   same answer holds for the same leaf and bundle (it depends on time only
//!   through the validity windows of the leaf and the bundle's certificates),
//!   so callers can memoize verdicts and re-verify only when `now` leaves it.
//! - **Revocation** is not given to webpki: [`Revocations`] keeps
//!   configured serials (any issuer) and CRL serials scoped to the CRL's
//!   issuer, because a serial is only unique per issuer.
//! - **SPIFFE**: [`trust_domain`] and [`svid_trust_domain`] parse IDs per
//!   the SPIFFE ID and X509-SVID specs; which bundle a trust domain maps to
//!   is the caller's business.
//!
//! webpki limits paths to 6 intermediates and bounds path-building work, so a
//! hostile bundle or leaf cannot make verification unbounded.

mod bundle;
mod revocation;
mod spiffe;
#[cfg(test)]
mod test_pki;

pub use bundle::{Bundle, BundleError, BundleWarning, CaCertificate, ChainError, Verdict};
pub use revocation::{Crl, CrlError, Revocations, parse_serial};
pub use spiffe::{
    SvidError, has_spiffe_scheme, is_valid_trust_domain, svid_trust_domain, trust_domain,
};

use x509_parser::x509::X509Name;

/// Longest printable form kept of a name from a certificate.
const MAX_PRINTABLE: usize = 256;

/// A DN for logs and errors: control characters escaped, length capped.
fn printable_name(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, c) in name.to_string().chars().enumerate() {
        if i == MAX_PRINTABLE {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}
