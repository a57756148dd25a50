//! Signed transform URLs, for deployments behind a CDN.
//!
//! Every distinct transform URL costs a decode, a resize and an encode the first time
//! it is asked for, so an open server lets anyone make it compute (and cache) any
//! number of parameter combinations. With a signing key configured, a transform URL
//! must carry `sig=`: the HMAC-SHA256 of its canonical form under that key, in
//! URL-safe base64 without padding. The application that renders the HTML (which
//! knows the key) signs the URLs it puts into pages; `progimage sign` does it by hand.
//!
//! The canonical form is the percent-decoded path without its trailing slash, then,
//! if there are query parameters other than `sig`, `?` and those parameters sorted
//! by name then value and form-encoded. So `/images/<id>/thumbnail/?w=10&h=20` and
//! `/images/<id>/thumbnail?h=20&w=10` carry the same signature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

use crate::error::{Error, ErrorKind, Result};

/// The query parameter that carries the signature.
pub const SIGNATURE_PARAM: &str = "sig";

/// Signs and verifies transform URLs with one key.
pub struct Signer {
    key: hmac::Key,
}

impl Signer {
    pub fn new(secret: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    /// The signature of a path and its query (a `sig` among them is ignored).
    pub fn sign(&self, path: &str, query: &[(String, String)]) -> String {
        let tag = hmac::sign(&self.key, canonical(path, query).as_bytes());
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Succeeds when the query carries a valid `sig` for the path and the rest of the
    /// query. The comparison is constant-time.
    pub fn verify(&self, path: &str, query: &[(String, String)]) -> Result<()> {
        let signature = query
            .iter()
            .find(|(key, _)| key == SIGNATURE_PARAM)
            .map(|(_, value)| value)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Forbidden,
                    "signature_required",
                    "transform URLs on this server must be signed: add sig= (see `progimage sign`)",
                )
            })?;
        let invalid = || {
            Error::new(
                ErrorKind::Forbidden,
                "signature_invalid",
                "sig= does not match this URL's path and query",
            )
        };
        let tag = URL_SAFE_NO_PAD
            .decode(signature.trim_end_matches('='))
            .map_err(|_| invalid())?;
        hmac::verify(&self.key, canonical(path, query).as_bytes(), &tag).map_err(|_| invalid())
    }

    /// `path_and_query` with a `sig` parameter appended: what `progimage sign` prints.
    pub fn signed_url(&self, path_and_query: &str) -> String {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .filter(|(key, _)| key != SIGNATURE_PARAM)
            .collect();
        let signature = self.sign(path, &pairs);
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.extend_pairs(&pairs);
        query.append_pair(SIGNATURE_PARAM, &signature);
        format!("{path}?{}", query.finish())
    }
}

/// The string a signature covers (see the module docs).
fn canonical(path: &str, query: &[(String, String)]) -> String {
    let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut canonical = path.trim_end_matches('/').to_string();
    let mut pairs: Vec<&(String, String)> = query
        .iter()
        .filter(|(key, _)| key != SIGNATURE_PARAM)
        .collect();
    if !pairs.is_empty() {
        pairs.sort();
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        serializer.extend_pairs(pairs);
        canonical.push('?');
        canonical.push_str(&serializer.finish());
    }
    canonical
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn signatures_ignore_parameter_order_encoding_and_trailing_slash() {
        let signer = Signer::new("secret");
        let signed = signer.signed_url("/images/ab/crop(aspect=1:1)/?w=10&h=20");
        let (path, query) = signed.split_once('?').unwrap();
        assert!(signer.verify(path, &pairs(query)).is_ok());
        let sig = &pairs(query).last().unwrap().1.clone();
        let reordered = pairs(&format!("sig={sig}&h=20&w=10"));
        assert!(signer
            .verify("/images/ab/crop%28aspect%3D1%3A1%29", &reordered)
            .is_ok());
    }

    #[test]
    fn a_changed_parameter_path_or_key_fails() {
        let signer = Signer::new("secret");
        let signed = signer.signed_url("/images/ab/thumbnail/?w=10");
        let (path, query) = signed.split_once('?').unwrap();
        let changed = query.replace("w=10", "w=11");
        let err = signer.verify(path, &pairs(&changed)).unwrap_err();
        assert_eq!(err.code, "signature_invalid");
        assert!(signer
            .verify("/images/ab/grayscale/", &pairs(query))
            .is_err());
        assert!(Signer::new("other").verify(path, &pairs(query)).is_err());
        let err = signer.verify(path, &pairs("w=10")).unwrap_err();
        assert_eq!(err.code, "signature_required");
        assert!(signer.verify(path, &pairs("w=10&sig=!!!")).is_err());
    }

    #[test]
    fn the_signature_is_hmac_sha256_in_url_safe_base64() {
        // HMAC-SHA256("key", "/a") computed independently (python3 hmac module).
        let signer = Signer::new("key");
        assert_eq!(
            signer.sign("/a/", &[]),
            "si38d4SRnSbVvUw51kRbk692jvDnCP_9mJtuPrKn1To"
        );
    }
}
