//! Who may do what: API keys and signed transform URLs.
//!
//! With API keys configured, every request that changes the store (uploads, deletes,
//! metadata changes) or spends CPU on client bytes (on-demand transforms) needs
//! `Authorization: Bearer <key>`; with `private = true`, reads of images need one too.
//! Keys are compared as SHA-256 digests in constant time, against every configured key
//! without stopping at the first match, so neither timing nor length tells an attacker
//! how close a guess was.
//!
//! With a signing key configured, transform URLs also need a valid `sig=` (see
//! [`crate::signing`]), unless the request carries a valid API key or names a public
//! preset.

use std::collections::HashSet;

use hyper::header::{HeaderMap, AUTHORIZATION};
use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use crate::config;
use crate::error::{Error, ErrorKind, Result};
use crate::signing::Signer;

/// The access rules of one server.
pub struct Access {
    key_digests: Vec<[u8; 32]>,
    private: bool,
    signer: Option<Signer>,
    public_presets: HashSet<String>,
}

/// What a request has proved about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    /// Sent a configured API key.
    Keyed,
}

/// How much a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Open to everyone: health, metrics, the page, the spec, the transform catalogue.
    Nothing,
    /// Reads of stored images: a key only when the server is private.
    Read,
    /// Changes and on-demand work: a key whenever keys are configured.
    Write,
}

impl Access {
    /// Fails when `private` is set without any key (nobody could read anything).
    pub fn new(settings: &config::Access) -> Result<Self> {
        let keys: Vec<&str> = settings
            .api_keys
            .iter()
            .map(|key| key.trim())
            .filter(|key| !key.is_empty())
            .collect();
        if settings.private && keys.is_empty() {
            return Err(Error::bad_request(
                "config_invalid",
                "access.private needs at least one key in access.api_keys (or PROGIMAGE_API_KEYS)",
            ));
        }
        Ok(Self {
            key_digests: keys.into_iter().map(key_digest).collect(),
            private: settings.private,
            signer: (!settings.signing_key.is_empty()).then(|| Signer::new(&settings.signing_key)),
            public_presets: settings.public_presets.iter().cloned().collect(),
        })
    }

    /// Whether reads need a key: responses must then not be cached publicly.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Checks the request's key against what `need` asks: 401 without a key where one
    /// is needed, 403 with a wrong one on any image route. Open routes ignore keys.
    pub fn authorize(&self, headers: &HeaderMap, need: Need) -> Result<Caller> {
        if self.key_digests.is_empty() || need == Need::Nothing {
            return Ok(Caller::Anonymous);
        }
        let required = need == Need::Write || self.private;
        let Some(value) = headers.get(AUTHORIZATION) else {
            return if required {
                Err(Error::new(
                    ErrorKind::Unauthorized,
                    "unauthorized",
                    "this request needs an API key: send Authorization: Bearer <key>",
                ))
            } else {
                Ok(Caller::Anonymous)
            };
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unauthorized,
                    "unauthorized",
                    "the Authorization header must be 'Bearer <key>'",
                )
            })?;
        let presented = key_digest(presented);
        let matched = self
            .key_digests
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.ct_eq(&presented)
            });
        if bool::from(matched) {
            Ok(Caller::Keyed)
        } else {
            Err(Error::new(
                ErrorKind::Forbidden,
                "forbidden",
                "the API key is not valid",
            ))
        }
    }

    /// Checks the signature of a transform URL, when signing is on. `pipeline` is the
    /// transform part of the path, for the public-preset exemption.
    pub fn verify_signature(
        &self,
        caller: Caller,
        path: &str,
        pipeline: &str,
        query: &[(String, String)],
    ) -> Result<()> {
        match &self.signer {
            Some(signer)
                if caller == Caller::Anonymous && !self.public_presets.contains(pipeline) =>
            {
                signer.verify(path, query)
            }
            _ => Ok(()),
        }
    }
}

fn key_digest(key: &str) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn bearer(key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        headers
    }

    fn access(keys: &[&str], private: bool) -> Access {
        Access::new(&config::Access {
            api_keys: keys.iter().map(|k| k.to_string()).collect(),
            private,
            ..config::Access::default()
        })
        .unwrap()
    }

    #[test]
    fn keys_guard_writes_and_private_reads() {
        let open = access(&[], false);
        assert_eq!(
            open.authorize(&HeaderMap::new(), Need::Write).unwrap(),
            Caller::Anonymous
        );
        let keyed = access(&["old", "new"], false);
        let none = HeaderMap::new();
        assert_eq!(
            keyed.authorize(&none, Need::Write).unwrap_err().kind,
            ErrorKind::Unauthorized
        );
        assert_eq!(
            keyed.authorize(&none, Need::Read).unwrap(),
            Caller::Anonymous
        );
        assert_eq!(
            keyed.authorize(&bearer("old"), Need::Write).unwrap(),
            Caller::Keyed
        );
        assert_eq!(
            keyed.authorize(&bearer("new"), Need::Write).unwrap(),
            Caller::Keyed
        );
        assert_eq!(
            keyed
                .authorize(&bearer("ne"), Need::Write)
                .unwrap_err()
                .kind,
            ErrorKind::Forbidden
        );
        let private = access(&["k"], true);
        assert_eq!(
            private.authorize(&none, Need::Read).unwrap_err().kind,
            ErrorKind::Unauthorized
        );
        assert_eq!(
            private.authorize(&none, Need::Nothing).unwrap(),
            Caller::Anonymous
        );
    }

    #[test]
    fn private_without_keys_is_a_configuration_error() {
        let err = Access::new(&config::Access {
            private: true,
            ..config::Access::default()
        })
        .err()
        .unwrap();
        assert_eq!(err.code, "config_invalid");
    }
}
