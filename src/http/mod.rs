//! The HTTP face of the service, on hyper.
//!
//! [`serve`] accepts connections (HTTP/1.1 and HTTP/2) until its shutdown signal,
//! then lets in-flight requests finish. [`App::handle`] turns one request into one
//! response: route, parse, call the [`Service`], render. Every failure becomes a JSON
//! error; a panic in a handler becomes a 500 instead of a dropped connection.

mod response;
mod routes;
mod upload;

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, HOST, LOCATION, VARY};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::engine::TransformSpec;
use crate::error::{Error, Result};
use crate::service::Service;
use crate::store::{ImageId, Sidecar};

pub use response::Body;
use routes::Route;

/// How long `/readyz` waits for the store before calling it unavailable.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The request handler: the service plus what HTTP needs of the settings.
pub struct App {
    service: Service,
    public_url: String,
}

impl App {
    pub fn new(settings: &Settings, service: Service) -> Self {
        Self {
            service,
            public_url: settings.public_url.trim_end_matches('/').to_string(),
        }
    }

    /// Answers one request. Never fails: errors are rendered as JSON.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let outcome = AssertUnwindSafe(self.route(request)).catch_unwind().await;
        let response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => response::error(&err),
            Err(_) => {
                tracing::error!(%method, %path, "handler panicked");
                response::error(&Error::internal("the server failed on this request"))
            }
        };
        tracing::info!(
            %method,
            %path,
            status = response.status().as_u16(),
            cache = response.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("-"),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        response
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<Body>> {
        let (parts, body) = request.into_parts();
        let head_only = parts.method == Method::HEAD;
        let range = response::requested_range(&parts.headers);
        match Route::resolve(&parts.method, parts.uri.path())? {
            Route::Upload => {
                let upload = upload::read_upload(&self.service, &parts, body).await?;
                let id = upload.id.clone();
                let (sidecar, created) = self.service.upload(upload).await?;
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                let url = format!("{}/images/{id}/", self.base_url(&parts));
                let mut response = response::json(status, &UploadReply::new(&id, &url, &sidecar));
                response.headers_mut().insert(
                    LOCATION,
                    HeaderValue::from_str(&url).map_err(|_| bad_host())?,
                );
                Ok(response)
            }
            Route::List => {
                let (cursor, limit) = page_query(&query_pairs(&parts))?;
                let (page, more) = self.service.list(cursor.as_ref(), limit).await?;
                let base = self.base_url(&parts);
                let images: Vec<_> = page
                    .iter()
                    .map(|(id, sidecar)| ListedImage::new(id, &base, sidecar))
                    .collect();
                let next_cursor = more.then(|| page.last().map(|(id, _)| id.as_str()));
                Ok(response::json(
                    StatusCode::OK,
                    &serde_json::json!({"images": images, "next_cursor": next_cursor.flatten()}),
                ))
            }
            Route::Delete(id) => {
                self.service.delete(&id).await?;
                Ok(response::no_content())
            }
            Route::Original(id) => {
                let fetched = self.service.original(&id, range).await?;
                Ok(response::object(&parts.headers, head_only, fetched))
            }
            Route::Meta(id) => Ok(response::json(
                StatusCode::OK,
                &self.service.sidecar(&id).await?,
            )),
            Route::Converted(id, format) => {
                let spec = Arc::new(TransformSpec::convert_to(format)?);
                let fetched = self.service.transform(&id, &spec, range).await?;
                Ok(response::object(&parts.headers, head_only, fetched))
            }
            Route::Transform(id, pipeline) => {
                let spec = Arc::new(self.spec(&pipeline, &parts)?);
                let fetched = self.service.transform(&id, &spec, range).await?;
                Ok(vary(
                    response::object(&parts.headers, head_only, fetched),
                    &spec,
                ))
            }
            Route::OnDemand(pipeline) => {
                // Validate the transform before reading a possibly large body.
                let spec = self.spec(&pipeline, &parts)?;
                let bytes = upload::read_upload(&self.service, &parts, body)
                    .await?
                    .bytes;
                let varies = spec.varies_with_accept();
                let rendered = self.service.on_demand(bytes, spec).await?;
                let response = response::rendered(&rendered.content_type, rendered.bytes);
                Ok(if varies {
                    with_vary(response)
                } else {
                    response
                })
            }
            Route::Transforms => Ok(response::json(StatusCode::OK, &self.service.catalogue())),
            Route::Health => Ok(response::json(
                StatusCode::OK,
                &serde_json::json!({"status": "alive"}),
            )),
            Route::Ready => Ok(match self.service.ready(READY_TIMEOUT).await {
                Ok(()) => response::json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
                Err(err) => response::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({
                        "status": "unavailable",
                        "error": {"code": err.code, "message": err.message},
                    }),
                ),
            }),
        }
    }

    /// Scheme and host for absolute URLs: the configured public URL, else
    /// `X-Forwarded-Proto`/`X-Forwarded-Host`, else `Host` (or the HTTP/2 authority).
    fn base_url(&self, parts: &Parts) -> String {
        if !self.public_url.is_empty() {
            return self.public_url.clone();
        }
        let first = |headers: &HeaderMap, name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let scheme =
            first(&parts.headers, "x-forwarded-proto").unwrap_or_else(|| "http".to_string());
        let host = first(&parts.headers, "x-forwarded-host")
            .or_else(|| first(&parts.headers, HOST.as_str()))
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "localhost".to_string());
        format!("{scheme}://{host}")
    }
}

impl App {
    fn spec(&self, pipeline: &str, parts: &Parts) -> Result<TransformSpec> {
        let accept = parts.headers.get(ACCEPT).and_then(|v| v.to_str().ok());
        self.service
            .transform_spec(pipeline, &query_pairs(parts), accept)
    }
}

/// Marks a response whose format was chosen from the `Accept` header.
fn vary(response: Response<Body>, spec: &TransformSpec) -> Response<Body> {
    if spec.varies_with_accept() {
        with_vary(response)
    } else {
        response
    }
}

fn with_vary(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("accept"));
    response
}

fn bad_host() -> Error {
    Error::bad_request(
        "invalid_host",
        "the Host or X-Forwarded-* headers do not form a valid URL",
    )
}

fn query_pairs(parts: &Parts) -> Vec<(String, String)> {
    let query = parts.uri.query().unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The default and the largest page of `GET /images/`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

/// `cursor` (the last id of the previous page) and `limit` from a listing's query.
fn page_query(query: &[(String, String)]) -> Result<(Option<ImageId>, usize)> {
    let mut cursor = None;
    let mut limit = DEFAULT_PAGE;
    for (key, value) in query {
        match key.as_str() {
            "cursor" => cursor = Some(ImageId::parse(value)?),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=MAX_PAGE).contains(limit))
                    .ok_or_else(|| {
                        Error::bad_request(
                            "invalid_parameter",
                            format!(
                                "limit must be a whole number from 1 to {MAX_PAGE}, not '{value}'"
                            ),
                        )
                    })?
            }
            _ => {
                return Err(Error::bad_request(
                    "unknown_parameter",
                    format!("GET /images/ takes limit and cursor, not '{key}'"),
                ))
            }
        }
    }
    Ok((cursor, limit))
}

/// One image in a listing.
#[derive(Serialize)]
struct ListedImage<'a> {
    id: &'a str,
    url: String,
    content_type: Option<&'a str>,
    bytes: Option<u64>,
    width: Option<u32>,
    height: Option<u32>,
    file_name: &'a str,
    name: Option<&'a str>,
    created: Option<chrono::DateTime<chrono::Utc>>,
}

impl<'a> ListedImage<'a> {
    fn new(id: &'a ImageId, base: &str, sidecar: &'a Sidecar) -> Self {
        Self {
            id: id.as_str(),
            url: format!("{base}/images/{id}/"),
            content_type: sidecar.content_type.as_deref(),
            bytes: sidecar.bytes,
            width: sidecar.width,
            height: sidecar.height,
            file_name: &sidecar.file_name,
            name: sidecar.name.as_deref(),
            created: sidecar.created,
        }
    }
}

/// The JSON body of a successful upload.
#[derive(Serialize)]
struct UploadReply<'a> {
    id: &'a str,
    msg: &'static str,
    url: &'a str,
    file_name: &'a str,
    format: Option<&'a str>,
    width: Option<u32>,
    height: Option<u32>,
    bytes: Option<u64>,
    content_type: Option<&'a str>,
    name: Option<&'a str>,
    desc: Option<&'a str>,
}

impl<'a> UploadReply<'a> {
    fn new(id: &'a ImageId, url: &'a str, sidecar: &'a Sidecar) -> Self {
        Self {
            id: id.as_str(),
            msg: "ok",
            url,
            file_name: &sidecar.file_name,
            format: sidecar.format.as_deref(),
            width: sidecar.width,
            height: sidecar.height,
            bytes: sidecar.bytes,
            content_type: sidecar.content_type.as_deref(),
            name: sidecar.name.as_deref(),
            desc: sidecar.desc.as_deref(),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and
/// waits up to `shutdown_grace_secs` for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(
            settings.limits.header_read_timeout_secs,
        ));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(err) => {
                        // Out of file descriptors, usually: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let app = Arc::clone(&app);
                let service = service_fn(move |request| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(app.handle(request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(Duration::from_secs(settings.shutdown_grace_secs)) => tracing::warn!("gave up waiting for connections to finish"),
    }
    Ok(())
}
