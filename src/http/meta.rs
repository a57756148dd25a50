//! `PATCH /images/<id>/meta/`: which fields may change, how they are checked, and
//! the `If-Match` precondition.
//!
//! The body is a JSON object in the spirit of JSON Merge Patch (RFC 7396): the fields
//! present replace the stored ones, `null` clears `name` or `desc` (and empties
//! `tags`). What the upload measured (`file_name`, `format`, `width`, ...) is
//! read-only, since it describes bytes that never change.

use hyper::header::{HeaderMap, IF_MATCH};
use serde_json::{Map, Value};

use super::upload::check_text_length;
use crate::error::{Error, Result};
use crate::service::{IfMatch, MetaChange};

/// Most tags an image may carry, and the longest tag in characters.
const MAX_TAGS: usize = 32;
const MAX_TAG_CHARS: usize = 64;

/// Fields the upload wrote, which a change may not touch.
const READ_ONLY: [&str; 7] = [
    "file_name",
    "content_type",
    "format",
    "width",
    "height",
    "bytes",
    "created",
];

/// The media types a change may be sent as.
pub const CONTENT_TYPES: [&str; 2] = ["application/json", "application/merge-patch+json"];

/// Validates a change: 400 naming the offending field.
pub fn parse_change(body: Map<String, Value>) -> Result<MetaChange> {
    let mut change = MetaChange::default();
    for (field, value) in body {
        match field.as_str() {
            "name" => change.name = Some(optional_text(&field, value)?),
            "desc" => change.desc = Some(optional_text(&field, value)?),
            "tags" => change.tags = Some(tags(value)?),
            _ if READ_ONLY.contains(&field.as_str()) => {
                return Err(Error::bad_request(
                    "read_only_field",
                    format!("'{field}' describes the stored bytes and cannot change; name, desc and tags can"),
                ))
            }
            _ => {
                return Err(Error::bad_request(
                    "unknown_field",
                    format!("'{field}' is not a metadata field; name, desc and tags can change"),
                ))
            }
        }
    }
    Ok(change)
}

/// The `If-Match` precondition, if any: `*` or a list of strong entity tags. Weak tags
/// never match (RFC 9110 compares strongly for `If-Match`), so they are dropped.
pub fn if_match(headers: &HeaderMap) -> Option<IfMatch> {
    let values: Vec<&str> = headers
        .get_all(IF_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return None;
    }
    if values.iter().any(|v| v.trim() == "*") {
        return Some(IfMatch::Any);
    }
    let tags = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|tag| !tag.starts_with("W/"))
        .map(|tag| tag.trim_matches('"').to_string())
        .collect();
    Some(IfMatch::OneOf(tags))
}

fn optional_text(field: &str, value: Value) -> Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => {
            check_text_length(&text)?;
            Ok(Some(text))
        }
        _ => Err(Error::bad_request(
            "invalid_field",
            format!("'{field}' must be a string or null"),
        )),
    }
}

/// A list of distinct short printable strings, in the order given.
fn tags(value: Value) -> Result<Vec<String>> {
    let invalid = |why: String| Error::bad_request("invalid_field", format!("tags: {why}"));
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(invalid("must be a list of strings".into())),
    };
    let mut tags: Vec<String> = Vec::new();
    for item in items {
        let Value::String(tag) = item else {
            return Err(invalid("must be a list of strings".into()));
        };
        let chars = tag.chars().count();
        if chars == 0 || chars > MAX_TAG_CHARS || tag.chars().any(char::is_control) {
            return Err(invalid(format!(
                "'{tag}' must be 1 to {MAX_TAG_CHARS} characters without control characters"
            )));
        }
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!("at most {MAX_TAGS} tags")));
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use serde_json::json;

    fn change(value: Value) -> Result<MetaChange> {
        let Value::Object(map) = value else {
            unreachable!()
        };
        parse_change(map)
    }

    #[test]
    fn accepts_name_desc_and_tags_and_refuses_the_rest() {
        let parsed = change(json!({"name": "Cat", "desc": null, "tags": ["a", "b", "a"]})).unwrap();
        assert_eq!(parsed.name, Some(Some("Cat".into())));
        assert_eq!(parsed.desc, Some(None));
        assert_eq!(parsed.tags, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(
            change(json!({"width": 3})).unwrap_err().code,
            "read_only_field"
        );
        assert_eq!(
            change(json!({"owner": 3})).unwrap_err().code,
            "unknown_field"
        );
        assert_eq!(
            change(json!({"name": 3})).unwrap_err().code,
            "invalid_field"
        );
        assert_eq!(
            change(json!({"tags": "a"})).unwrap_err().code,
            "invalid_field"
        );
        assert_eq!(
            change(json!({"tags": [""]})).unwrap_err().code,
            "invalid_field"
        );
        assert_eq!(
            change(json!({"tags": ["a\nb"]})).unwrap_err().code,
            "invalid_field"
        );
        let many: Vec<String> = (0..33).map(|i| i.to_string()).collect();
        assert_eq!(
            change(json!({"tags": many})).unwrap_err().code,
            "invalid_field"
        );
        assert_eq!(
            change(json!({"name": "x".repeat(5000)})).unwrap_err().code,
            "invalid_field"
        );
    }

    #[test]
    fn if_match_lists_strong_tags() {
        let mut headers = HeaderMap::new();
        assert_eq!(if_match(&headers), None);
        headers.insert(IF_MATCH, HeaderValue::from_static("\"a\", W/\"b\", \"c\""));
        assert_eq!(
            if_match(&headers),
            Some(IfMatch::OneOf(vec!["a".into(), "c".into()]))
        );
        headers.insert(IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(if_match(&headers), Some(IfMatch::Any));
    }
}
