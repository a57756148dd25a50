//! Reading an image out of a request body: `multipart/form-data` with the file in a
//! field named `image` (optional text fields `name` and `desc`), or a raw body whose
//! `Content-Type` is `image/*` or `application/octet-stream`.
//!
//! Bytes are pushed into an [`IncomingImage`] chunk by chunk as they arrive, so they
//! are hashed while streaming and held only once, and reading stops at the first byte
//! over the limit. A declared `Content-Length` over the limit is refused before any
//! of the body is read.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;

use crate::error::{Error, Result};
use crate::service::{IncomingImage, Service, Upload};

/// The form field that carries the file.
pub const IMAGE_FIELD: &str = "image";

/// Longest accepted `name` or `desc` text field, in bytes.
const MAX_TEXT_FIELD: u64 = 4096;

/// Reads an upload from a request, enforcing the service's size limit.
pub async fn read_upload(service: &Service, parts: &Parts, body: Incoming) -> Result<Upload> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let incoming = service.incoming(declared)?;
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let chunks = body.into_data_stream();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "multipart/form-data" {
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
        let (id, bytes) = read_raw(incoming, chunks).await?.finish();
        Ok(Upload {
            id,
            bytes,
            file_name,
            name: None,
            desc: None,
        })
    } else {
        Err(Error::unsupported(format!(
            "send multipart/form-data with the file in a field named '{IMAGE_FIELD}', \
             or the raw image with an image/* Content-Type (got '{content_type}')"
        )))
    }
}

async fn read_raw<E: std::fmt::Display>(
    mut incoming: IncomingImage,
    mut chunks: impl Stream<Item = Result<Bytes, E>> + Unpin,
) -> Result<IncomingImage> {
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| {
            Error::bad_request(
                "body_interrupted",
                format!("reading the body failed: {err}"),
            )
        })?;
        incoming.push(&chunk)?;
    }
    if incoming.is_empty() {
        return Err(Error::bad_request(
            "empty_body",
            "the request body is empty",
        ));
    }
    Ok(incoming)
}

async fn read_multipart<E>(
    incoming: IncomingImage,
    chunks: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    boundary: String,
) -> Result<Upload>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
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
    let (id, bytes) = buffer.finish();
    Ok(Upload {
        id,
        bytes,
        file_name,
        name,
        desc,
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
