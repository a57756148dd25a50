//! Reading an image out of a request body: `multipart/form-data` with the file in a
//! field named `image` (optional text fields `name` and `desc`), a raw body whose
//! `Content-Type` is `image/*` or `application/octet-stream`, or JSON naming a URL to
//! fetch it from (`{"url": "https://...", "name": ..., "desc": ...}`).
//!
//! Bytes are pushed into an [`IncomingImage`] chunk by chunk as they arrive, so they
//! are hashed while streaming and held only once, and reading stops at the first byte
//! over the limit. A declared `Content-Length` over the limit is refused before any
//! of the body is read.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hyper::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::slow::BodyError;
use crate::error::{Error, Result};
use crate::fetch::Fetcher;
use crate::service::{IncomingImage, Service, Upload};

/// A request body as it streams in (see [`super::slow`] for its timeout).
pub trait Chunks: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin + 'static {}

impl<S: Stream<Item = Result<Bytes, BodyError>> + Send + Unpin + 'static> Chunks for S {}

/// Largest JSON body accepted (metadata changes, upload by URL).
const MAX_JSON_BODY: usize = 64 * 1024;

/// The JSON form of an upload: where to fetch the image, and its optional fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlUpload {
    url: String,
    name: Option<String>,
    desc: Option<String>,
}

/// The form field that carries the file.
pub const IMAGE_FIELD: &str = "image";

/// Longest accepted `name` or `desc` text field, in bytes.
const MAX_TEXT_FIELD: u64 = 4096;

/// What a form may carry besides its file: both text fields, and the boundaries and
/// part headers around the three parts.
const MULTIPART_FRAMING: u64 = 2 * MAX_TEXT_FIELD + 4096;

/// Reads an upload from a request, enforcing the service's size limit. A JSON body
/// names a URL, which `fetcher` fetches.
pub async fn read_upload(
    service: &Service,
    fetcher: &Fetcher,
    parts: &Parts,
    chunks: impl Chunks,
) -> Result<Upload> {
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = essence(content_type);
    // A form's length includes its framing and text fields, so it may pass the limit
    // by that much while its file stays within it (which the form reader enforces).
    let framing = match essence.as_str() {
        "multipart/form-data" => MULTIPART_FRAMING,
        _ => 0,
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|length| {
            let file_at_most = length.min(service.max_upload_bytes());
            length.saturating_sub(framing).max(file_at_most)
        });
    let incoming = service.incoming(declared).await?;
    if essence == "application/json" {
        let request: UrlUpload = read_json(parts, chunks).await?;
        for text in [&request.name, &request.desc].into_iter().flatten() {
            check_text_length(text)?;
        }
        let fetched = fetcher.fetch(&request.url, incoming).await?;
        let (id, bytes, memory) = fetched.image.finish();
        Ok(Upload {
            id,
            bytes,
            file_name: fetched.file_name,
            name: request.name,
            desc: request.desc,
            memory,
        })
    } else if essence == "multipart/form-data" {
        let boundary = multer::parse_boundary(content_type).map_err(|err| {
            Error::bad_request("invalid_form", format!("bad multipart Content-Type: {err}"))
        })?;
        read_multipart(incoming, chunks, boundary).await
    } else if essence.starts_with("image/") || essence == "application/octet-stream" {
        let file_name = parts
            .headers
            .get(CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(file_name_from_disposition);
        let (id, bytes, memory) = read_raw(incoming, chunks).await?.finish();
        Ok(Upload {
            id,
            bytes,
            file_name,
            name: None,
            desc: None,
            memory,
        })
    } else {
        Err(Error::unsupported(format!(
            "send multipart/form-data with the file in a field named '{IMAGE_FIELD}', \
             the raw image with an image/* Content-Type, or JSON {{\"url\": ...}} \
             (got '{content_type}')"
        )))
    }
}

/// The media type of a `Content-Type` value, lowercase, without parameters.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Reads a JSON body of at most 64 KiB into `T`: 413 beyond, 400 when it does not
/// parse or has the wrong fields.
pub async fn read_json<T: DeserializeOwned>(parts: &Parts, mut chunks: impl Chunks) -> Result<T> {
    let too_large = || {
        Error::too_large(
            "max_json_bytes",
            format!("a JSON body may hold at most {MAX_JSON_BODY} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_JSON_BODY) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_JSON_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|err| {
        Error::bad_request("invalid_json", format!("the JSON body is not valid: {err}"))
    })
}

/// `name` and `desc` are short texts.
pub fn check_text_length(text: &str) -> Result<()> {
    if text.len() as u64 > MAX_TEXT_FIELD {
        return Err(Error::bad_request(
            "invalid_field",
            format!("name and desc may hold at most {MAX_TEXT_FIELD} bytes"),
        ));
    }
    Ok(())
}

async fn read_raw(mut incoming: IncomingImage, mut chunks: impl Chunks) -> Result<IncomingImage> {
    while let Some(chunk) = chunks.next().await {
        incoming.push(&chunk?)?;
    }
    if incoming.is_empty() {
        return Err(Error::bad_request(
            "empty_body",
            "the request body is empty",
        ));
    }
    Ok(incoming)
}

async fn read_multipart(
    incoming: IncomingImage,
    chunks: impl Chunks,
    boundary: String,
) -> Result<Upload> {
    // The form may be a little larger than the file it carries: boundaries, headers
    // and the short text fields.
    let whole_form = incoming.limit() + 64 * 1024;
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(whole_form));
    let mut form = multer::Multipart::with_constraints(chunks, boundary, constraints);
    let mut image = None;
    let mut incoming = Some(incoming);
    let mut name = None;
    let mut desc = None;
    let mut seen = Vec::new();
    while let Some(mut field) = form.next_field().await.map_err(form_error)? {
        let field_name = field.name().unwrap_or("").to_string();
        match field_name.as_str() {
            IMAGE_FIELD => {
                let mut buffer = incoming.take().ok_or_else(|| {
                    Error::bad_request(
                        "invalid_form",
                        format!("the form has more than one '{IMAGE_FIELD}' field"),
                    )
                })?;
                let file_name = field.file_name().map(str::to_string);
                while let Some(chunk) = field.chunk().await.map_err(form_error)? {
                    buffer.push(&chunk)?;
                }
                if buffer.is_empty() {
                    return Err(Error::bad_request(
                        "empty_body",
                        format!("the '{IMAGE_FIELD}' field is empty"),
                    ));
                }
                image = Some((buffer, file_name));
            }
            "name" => name = Some(read_text_field(field, "name").await?),
            "desc" => desc = Some(read_text_field(field, "desc").await?),
            _ => {
                // Unknown fields are read and dropped; the whole-form limit bounds them.
                while field.chunk().await.map_err(form_error)?.is_some() {}
                seen.push(field_name);
            }
        }
    }
    let Some((buffer, file_name)) = image else {
        let found = if seen.is_empty() {
            "no other fields".to_string()
        } else {
            format!("fields: {}", seen.join(", "))
        };
        return Err(Error::bad_request(
            "missing_image_field",
            format!("the form has no field named '{IMAGE_FIELD}' holding the file ({found})"),
        ));
    };
    let (id, bytes, memory) = buffer.finish();
    Ok(Upload {
        id,
        bytes,
        file_name,
        name,
        desc,
        memory,
    })
}

async fn read_text_field(mut field: multer::Field<'_>, name: &str) -> Result<String> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(form_error)? {
        text.extend_from_slice(&chunk);
        if text.len() as u64 > MAX_TEXT_FIELD {
            return Err(Error::bad_request(
                "invalid_form",
                format!("the '{name}' field is longer than {MAX_TEXT_FIELD} bytes"),
            ));
        }
    }
    String::from_utf8(text)
        .map_err(|_| Error::bad_request("invalid_form", format!("the '{name}' field is not UTF-8")))
}

fn form_error(err: multer::Error) -> Error {
    match err {
        multer::Error::StreamReadFailed(cause) => match cause.downcast::<BodyError>() {
            Ok(body) => Error::from(*body),
            Err(other) => Error::bad_request("body_interrupted", other.to_string()),
        },
        multer::Error::StreamSizeExceeded { limit } => Error::too_large(
            "max_upload_bytes",
            format!("the form is over {limit} bytes: max_upload_bytes plus room for the form's own fields"),
        ),
        other => Error::bad_request("invalid_form", format!("malformed multipart form: {other}")),
    }
}

/// `filename="cat.jpg"` from a `Content-Disposition` header.
fn file_name_from_disposition(value: &str) -> Option<String> {
    value.split(';').find_map(|part| {
        let (key, name) = part.trim().split_once('=')?;
        (key.eq_ignore_ascii_case("filename")).then(|| name.trim_matches('"').to_string())
    })
}
