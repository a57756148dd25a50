//! Building responses: JSON bodies and errors, and objects with the caching,
//! conditional and range semantics of RFC 9110.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::service::{ByteRange, Fetched};
use crate::store::Sidecar;

/// Errors a response body can fail with while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body: in-memory or streamed from the store.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Stored objects never change (they are named by content), so caches may keep them
/// for a year without revalidating.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// `204 No Content`.
pub fn no_content() -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("response values serialise");
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A static JSON document (the OpenAPI description).
pub fn static_json(text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Text of the given media type, never cached (metrics).
pub fn text(content_type: &'static str, text: String) -> Response<Body> {
    let mut response = Response::new(full(text));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The web page.
pub fn page(html: &'static str) -> Response<Body> {
    let mut response = Response::new(full(html));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

/// An image's metadata with its entity tag; 304 when `If-None-Match` names it.
/// Metadata can change, so caches must revalidate it.
pub fn meta(request: &HeaderMap, sidecar: &Sidecar, etag: &str) -> Response<Body> {
    let etag = format!("\"{etag}\"");
    let mut response = if none_match(request, &etag) {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        json(StatusCode::OK, sidecar)
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, header_value(etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `{"error": {"code": ..., "message": ...}}` with the status of the error's kind.
pub fn error(err: &Error) -> Response<Body> {
    let status = match err.kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unfetchable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Undecodable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match err.kind {
        ErrorKind::MethodNotAllowed => format!("this resource allows only {}", err.message),
        _ => err.message.clone(),
    };
    let body = serde_json::json!({"error": {"code": err.code, "message": message}});
    let mut response = json(status, &body);
    let headers = response.headers_mut();
    match err.kind {
        ErrorKind::MethodNotAllowed => {
            if let Ok(allow) = HeaderValue::from_str(&err.message) {
                headers.insert(header::ALLOW, allow);
            }
        }
        ErrorKind::RangeNotSatisfiable { size } => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes */{size}")),
            );
        }
        ErrorKind::Unavailable | ErrorKind::TooManyRequests => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        ErrorKind::Unauthorized => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    response
}

/// A stored or computed object: 200, 206 for a range, or 304 when the client's
/// `If-None-Match` already names it. HEAD gets the headers without the body.
pub fn object(request: &HeaderMap, head_only: bool, fetched: Fetched) -> Response<Body> {
    let etag = format!("\"{}\"", fetched.etag);
    let mut response = Response::new(empty());
    let headers = response.headers_mut();
    headers.insert(header::ETAG, header_value(etag.clone()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    if let Some(cache) = fetched.cache {
        headers.insert("x-cache", HeaderValue::from_static(cache.as_str()));
    }
    if none_match(request, &etag) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    let object = fetched.object;
    let length = object.range.end - object.range.start;
    headers.insert(header::CONTENT_TYPE, header_value(fetched.content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if length != object.total_size {
        let content_range = format!(
            "bytes {}-{}/{}",
            object.range.start,
            object.range.end - 1,
            object.total_size
        );
        headers.insert(header::CONTENT_RANGE, header_value(content_range));
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    if !head_only {
        let frames = object.body.map(|chunk| {
            chunk
                .map(Frame::data)
                .map_err(|err| Box::new(err) as BoxError)
        });
        *response.body_mut() = StreamBody::new(frames).boxed_unsync();
    }
    response
}

/// An on-demand result: computed bytes, never cached by anyone.
pub fn rendered(content_type: &str, bytes: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header_value(content_type.to_string()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A single `bytes=` range from the `Range` header. Anything else (several ranges,
/// other units, bad syntax) is ignored and the whole object is sent, as RFC 9110 allows.
pub fn requested_range(request: &HeaderMap) -> Option<ByteRange> {
    let spec = request
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?
        .trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => {
            Some(ByteRange::Suffix(number(last)?)).filter(|r| *r != ByteRange::Suffix(0))
        }
        (false, true) => Some(ByteRange::From(number(first)?)),
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            (first <= last).then_some(ByteRange::FromTo(first, last))
        }
        (true, true) => None,
    }
}

/// Whether `If-None-Match` lists `etag` (weak comparison) or is `*`. Entity tags are
/// parsed as quoted strings, since ours may contain commas.
fn none_match(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|list| list.trim() == "*" || entity_tags(list).any(|tag| tag == etag))
}

/// The quoted entity tags of an `If-None-Match` list, weakness prefixes dropped.
fn entity_tags(mut list: &str) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        let start = list.find('"')?;
        let end = start + 1 + list[start + 1..].find('"')?;
        let tag = &list[start..=end];
        list = &list[end + 1..];
        Some(tag)
    })
}

/// Header values built from our own strings; anything unprintable is replaced.
fn header_value(text: String) -> HeaderValue {
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn parses_single_byte_ranges_only() {
        let range = |v| requested_range(&headers(header::RANGE, v));
        assert_eq!(range("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(range("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(range("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(range("bytes=0-1,4-5"), None);
        assert_eq!(range("bytes=9-1"), None);
        assert_eq!(range("items=0-1"), None);
    }

    #[test]
    fn if_none_match_compares_weakly_and_in_lists() {
        let matches = |v| none_match(&headers(header::IF_NONE_MATCH, v), "\"abc\"");
        assert!(matches("\"abc\""));
        assert!(matches("W/\"abc\""));
        assert!(matches("\"x\", \"abc\""));
        assert!(matches("*"));
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, "\"a\", W/\"t(w=1,h=2)\""),
            "\"t(w=1,h=2)\""
        ));
        assert!(!matches("\"abcd\""));
    }
}
