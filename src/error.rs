//! The one error type of the crate.
//!
//! Every layer reports failures as an [`Error`]: a coarse [`ErrorKind`] that decides
//! the HTTP status, a stable machine-readable `code` that clients can match on, and a
//! human message. The HTTP layer renders it as
//! `{"error": {"code": "...", "message": "..."}}`; nothing else needs to know HTTP.

use std::fmt;

/// What went wrong, coarsely: one kind per HTTP status the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A malformed request: bad parameter, bad form, bad id (400).
    BadRequest,
    /// No API key where one is needed (401).
    Unauthorized,
    /// A wrong API key, or a missing or wrong URL signature (403).
    Forbidden,
    /// No such image, transform or route (404).
    NotFound,
    /// The route exists but not for this method (405).
    MethodNotAllowed,
    /// The client stopped sending its body (408).
    RequestTimeout,
    /// `If-Match` names a version that is no longer current (412).
    PreconditionFailed,
    /// The body, or the image it holds, is over a configured limit (413).
    TooLarge,
    /// The range asked for lies outside the object, whose size is given (416).
    RangeNotSatisfiable { size: u64 },
    /// Not an image, or not one of the formats the engine reads (415).
    UnsupportedMediaType,
    /// Claims to be an image but cannot be decoded: truncated, corrupt, zero-sized (422).
    Undecodable,
    /// The transform queue is full (429): worth retrying in a moment.
    TooManyRequests,
    /// A URL to fetch an image from failed, took too long or redirected too often
    /// (422). The URL is the client's, so this is not a 5xx that pages an operator.
    Unfetchable,
    /// The store did not answer or failed (503): worth retrying later.
    Unavailable,
    /// A bug on our side (500). Never caused by anything a client sends.
    Internal,
}

/// A failure with its kind, a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

/// Results whose error is the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, code, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::UnsupportedMediaType,
            "unsupported_media_type",
            message,
        )
    }

    pub fn undecodable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Undecodable, "undecodable_image", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "store_unavailable", message)
    }

    /// The store failed: `cause` goes to the log, which the request id ties to the
    /// answer, and not to the client, since it names the store's paths, hosts and
    /// buckets (a file path on disk, an S3 endpoint and key).
    pub fn store_failed(cause: impl fmt::Display) -> Self {
        tracing::warn!(error = %cause, "store error");
        Self::unavailable("the image store failed; try again shortly")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal_error", message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<object_store::Error> for Error {
    /// Anything the store reports that the store layer did not turn into a meaningful
    /// answer (not found, already exists) means the store is unhealthy: 503, retry.
    fn from(err: object_store::Error) -> Self {
        Self::store_failed(err)
    }
}

/// What a panic in image work (decoding, transforming, encoding) becomes: a decoder bug
/// tripped by hostile bytes is a 422 for that image, logged with the panic's message,
/// rather than a dead connection or worker.
pub fn image_work_panicked(payload: &(dyn std::any::Any + Send)) -> Error {
    let message = panic_text(payload).unwrap_or("");
    tracing::error!(panic = message, "image worker panicked");
    Error::undecodable("the decoder failed on this image")
}

/// The message a panic carried, if it was a string (as `panic!` with a message makes).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}
