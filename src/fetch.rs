//! Upload by URL: fetching an image from the web, without becoming a proxy into the
//! network the server sits in (SSRF).
//!
//! Every address a request would connect to is checked, not the name in the URL: the
//! client's DNS resolver refuses names that resolve to private, loopback, link-local
//! or otherwise non-public addresses, and the connection goes to the address that was
//! checked (no second lookup an attacker's DNS could answer differently). IP literals,
//! which skip DNS, are checked before the request and on every redirect. Redirects
//! are capped, only http and https are fetched, proxies from the environment are
//! ignored, the whole fetch has a deadline and the body is cut at the upload limit.
//! Operators open specific networks with `fetch.allow_networks`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use url::{Host, Url};

use crate::config;
use crate::error::{Error, ErrorKind, Result};
use crate::service::IncomingImage;

/// Fetches images from URLs under the SSRF rules.
pub struct Fetcher {
    client: reqwest::Client,
    guard: Arc<AddressGuard>,
}

/// What a fetch brings back besides the bytes.
pub struct Fetched {
    pub image: IncomingImage,
    /// The last path segment of the final URL, as a file name.
    pub file_name: Option<String>,
}

/// The addresses a fetch may connect to: public ones, plus the allowed networks.
#[derive(Debug)]
struct AddressGuard {
    allowed: Vec<IpNet>,
}

/// Why an address was refused; found again in reqwest's error chain.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The remote redirected more often than `fetch.max_redirects` allows.
#[derive(Debug)]
struct TooManyRedirects(usize);

impl std::fmt::Display for TooManyRedirects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} times", self.0)
    }
}

impl std::error::Error for TooManyRedirects {}

impl Fetcher {
    /// Fails when an allowed network is not valid CIDR.
    pub fn new(settings: &config::Fetch) -> Result<Self> {
        let allowed = settings
            .allow_networks
            .iter()
            .map(|net| {
                net.parse::<IpNet>()
                    .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        Error::bad_request(
                            "config_invalid",
                            format!(
                                "fetch.allow_networks: '{net}' is not an address or CIDR network"
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let guard = Arc::new(AddressGuard { allowed });
        let max_redirects = settings.max_redirects;
        let redirect_guard = Arc::clone(&guard);
        let policy = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(TooManyRedirects(max_redirects));
            }
            match redirect_guard.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::clone(&guard))
            .redirect(policy)
            .timeout(Duration::from_secs(settings.timeout_secs))
            .connect_timeout(Duration::from_secs(settings.timeout_secs.min(5)))
            .no_proxy()
            .user_agent(concat!("progimage/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| Error::internal(format!("cannot build the HTTP client: {err}")))?;
        Ok(Self { client, guard })
    }

    /// Fetches `url` into `image`, which enforces the upload size limit.
    pub async fn fetch(&self, url: &str, mut image: IncomingImage) -> Result<Fetched> {
        let parsed = Url::parse(url).map_err(|err| {
            Error::bad_request("invalid_url", format!("'{url}' is not a URL: {err}"))
        })?;
        self.guard.check_url(&parsed).map_err(not_allowed)?;
        let response = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|err| fetch_error(url, &err))?;
        if !response.status().is_success() {
            return Err(Error::new(
                ErrorKind::Unfetchable,
                "fetch_failed",
                format!("{url} answered {}", response.status()),
            ));
        }
        if let Some(length) = response.content_length() {
            if length > image.limit() {
                return Err(Error::too_large(
                    "max_upload_bytes",
                    format!(
                        "{url} holds {length} bytes, over max_upload_bytes ({} bytes)",
                        image.limit()
                    ),
                ));
            }
        }
        let file_name = response
            .url()
            .path_segments()
            .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
            .map(|name| {
                percent_encoding::percent_decode_str(name)
                    .decode_utf8_lossy()
                    .into_owned()
            });
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            image.push(&chunk.map_err(|err| fetch_error(url, &err))?)?;
        }
        if image.is_empty() {
            return Err(Error::undecodable(format!("{url} answered with no bytes")));
        }
        Ok(Fetched { image, file_name })
    }
}

impl AddressGuard {
    fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Checks the scheme, and the host when it is an IP literal (which skips DNS).
    fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!(
                "only http and https URLs are fetched, not {}",
                url.scheme()
            )));
        }
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(Host::Domain(_)) => return Ok(()),
            None => return Err(Refused(format!("{url} has no host"))),
        };
        if self.allows(ip) {
            Ok(())
        } else {
            Err(refused_address(url.as_ref(), ip))
        }
    }
}

impl Resolve for AddressGuard {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let guard = AddressGuard { allowed };
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|addr| !guard.allows(addr.ip())) {
                return Err(Box::new(refused_address(&host, bad.ip())) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn refused_address(what: &str, ip: IpAddr) -> Refused {
    Refused(format!(
        "{what} points at {ip}, a private or reserved address; fetch.allow_networks can open it"
    ))
}

fn not_allowed(refused: Refused) -> Error {
    Error::bad_request("url_not_allowed", refused.0)
}

/// Maps a client error to 400 (refused by policy) or 422 (timed out, failed, or
/// redirected too often).
fn fetch_error(url: &str, err: &reqwest::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Error::bad_request("url_not_allowed", refused.0.clone());
        }
        if let Some(redirects) = cause.downcast_ref::<TooManyRedirects>() {
            return Error::new(
                ErrorKind::Unfetchable,
                "fetch_failed",
                format!("{url} redirected {redirects}"),
            );
        }
        source = cause.source();
    }
    if err.is_timeout() {
        Error::new(
            ErrorKind::Unfetchable,
            "fetch_timeout",
            format!("{url} did not answer in time"),
        )
    } else {
        Error::new(
            ErrorKind::Unfetchable,
            "fetch_failed",
            format!("could not fetch {url}: {err}"),
        )
    }
}

/// Whether `ip` is a globally routable unicast address. (`IpAddr::is_global` is not
/// stable yet; this follows the IANA special-purpose registries.)
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = ip.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(ip.is_loopback()
                || ip.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (segments[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (segments[0] == 0x2001 && segments[1] == 0xdb8) // documentation
                || segments[..6] == [0; 6]) // ::, ::1 and IPv4-compatible ::a.b.c.d
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::10.0.0.1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn literals_schemes_and_allowlists_are_checked() {
        let guard = AddressGuard { allowed: vec![] };
        let check = |url: &str| guard.check_url(&Url::parse(url).unwrap());
        assert!(check("http://127.0.0.1:8080/x.png").is_err());
        assert!(check("http://[::1]/x.png").is_err());
        assert!(check("file:///etc/passwd").is_err());
        assert!(check("https://example.com/x.png").is_ok());
        let open = AddressGuard {
            allowed: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert!(open
            .check_url(&Url::parse("http://127.0.0.1:8080/x.png").unwrap())
            .is_ok());
    }
}
