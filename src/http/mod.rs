//! The HTTP face of the service, on hyper.
//!
//! [`serve`] accepts connections (HTTP/1.1 and HTTP/2) until its shutdown signal,
//! then lets in-flight requests finish. [`App::handle`] turns one request into one
//! response: route, check access, parse, call the [`Service`], render; then count it
//! in the metrics and log one line with its request id. Every failure becomes a JSON
//! error; a panic in a handler becomes a 500 instead of a dropped connection.

mod access;
mod meta;
mod response;
mod routes;
mod slow;
#[cfg(test)]
mod spec;
pub mod steer;
mod upload;

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, TryStreamExt};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST,
    LOCATION, RETRY_AFTER, VARY,
};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::Settings;
use crate::engine::TransformSpec;
use crate::error::{Error, Result};
use crate::fetch::Fetcher;
use crate::service::Service;
use crate::signing::SIGNATURE_PARAM;
use crate::store::{ImageId, Sidecar};

use access::Access;
pub use response::Body;
use routes::Route;

/// The web page at `GET /`: plain HTML, CSS and JavaScript, no build step.
const PAGE: &str = include_str!("ui/index.html");

/// The OpenAPI description at `GET /openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// How long `/readyz` waits for the store before calling it unavailable.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The request handler: the service plus what HTTP needs of the settings.
pub struct App {
    service: Service,
    access: Access,
    fetcher: Fetcher,
    public_url: String,
    body_pace: slow::Pace,
}

/// How long a stopping server spends deleting the leases of work it gave up on.
const RELEASE_LEASES_FOR: Duration = Duration::from_secs(5);

/// The header that carries a request's id, in and out.
const REQUEST_ID: &str = "x-request-id";

impl App {
    /// Fails on invalid access or fetch settings.
    pub fn new(settings: &Settings, service: Service) -> Result<Self> {
        Ok(Self {
            service,
            access: Access::new(&settings.access)?,
            fetcher: Fetcher::new(&settings.fetch)?,
            public_url: settings.public_url.trim_end_matches('/').to_string(),
            body_pace: slow::Pace {
                idle: Duration::from_secs(settings.limits.body_read_timeout_secs),
                min_bytes_per_sec: settings.limits.min_body_bytes_per_sec,
            },
        })
    }

    /// Answers one request. Never fails: errors are rendered as JSON.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let metrics = self.service.metrics();
        let _in_flight = metrics.in_flight();
        let request_id = request_id(request.headers());
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let span = tracing::info_span!("request", id = %request_id);
        let route = Route::resolve(&method, &path);
        let route_name = route.as_ref().map_or("unrouted", Route::name);
        let outcome = match route {
            Ok(route) => {
                AssertUnwindSafe(self.route(route, request))
                    .catch_unwind()
                    .instrument(span.clone())
                    .await
            }
            Err(err) => Ok(Err(err)),
        };
        let mut response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                metrics.rejected(err.code);
                response::error(&err)
            }
            Err(_) => {
                span.in_scope(|| tracing::error!(%method, %path, "handler panicked"));
                metrics.rejected("internal_error");
                response::error(&Error::internal("the server failed on this request"))
            }
        };
        if self.access.is_private() {
            make_private(&mut response);
        }
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID, value);
        }
        let status = response.status().as_u16();
        // In-memory bodies know their size; streamed ones declared it in Content-Length.
        let bytes = if method == Method::HEAD {
            0
        } else {
            hyper::body::Body::size_hint(response.body())
                .exact()
                .unwrap_or_else(|| header_number(response.headers(), CONTENT_LENGTH.as_str()))
        };
        let cache = response
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::service::CacheStatus::parse);
        let elapsed = started.elapsed();
        metrics.request(route_name, method_label(&method), status, elapsed);
        metrics.sent(bytes);
        if let Some(cache) = cache {
            metrics.cache(cache.as_str());
        }
        crate::logs::RequestLine {
            id: &request_id,
            method: method.as_str(),
            route: route_name,
            path: &path,
            status,
            ms: elapsed.as_secs_f64() * 1000.0,
            bytes,
            cache: cache.map_or("-", |c| c.as_str()),
        }
        .write();
        response
    }

    async fn route(&self, route: Route, request: Request<Incoming>) -> Result<Response<Body>> {
        let (parts, body) = request.into_parts();
        let metrics = Arc::clone(self.service.metrics());
        // Wrapped first, so that a refusal (401 included) lingers on the unread body.
        let chunks = slow::paced(body, self.body_pace)
            .inspect_ok(move |chunk| metrics.received(chunk.len() as u64));
        let caller = self.access.authorize(&parts.headers, route.need())?;
        let head_only = parts.method == Method::HEAD;
        let range = response::requested_range(&parts.headers);
        match route {
            Route::Page => Ok(response::page(PAGE)),
            Route::OpenApi => Ok(response::static_json(OPENAPI)),
            Route::Metrics => Ok(response::text(
                crate::metrics::CONTENT_TYPE,
                self.service.render_metrics(),
            )),
            Route::Upload => {
                let upload =
                    upload::read_upload(&self.service, &self.fetcher, &parts, chunks).await?;
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
                let query = page_query(&query_pairs(&parts))?;
                let page = self
                    .service
                    .list(query.cursor.as_ref(), query.limit, query.tag.as_deref())
                    .await?;
                let base = self.base_url(&parts);
                let images: Vec<_> = page
                    .images
                    .iter()
                    .map(|(id, sidecar)| ListedImage::new(id, &base, sidecar))
                    .collect();
                Ok(response::json(
                    StatusCode::OK,
                    &serde_json::json!({"images": images, "next_cursor": page.next_cursor.as_ref().map(ImageId::as_str)}),
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
            Route::Meta(id) => {
                let (sidecar, etag) = self.service.meta(&id).await?;
                Ok(response::meta(&parts.headers, &sidecar, &etag))
            }
            Route::UpdateMeta(id) => {
                let content_type = parts
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !meta::CONTENT_TYPES.contains(&upload::essence(content_type).as_str()) {
                    return Err(Error::unsupported(format!(
                        "send the change as application/json, not '{content_type}'"
                    )));
                }
                let body = upload::read_json(&parts, chunks).await?;
                let change = meta::parse_change(body)?;
                let if_match = meta::if_match(&parts.headers);
                let (sidecar, etag) = self
                    .service
                    .update_meta(&id, &change, if_match.as_ref())
                    .await?;
                Ok(response::meta(&HeaderMap::new(), &sidecar, &etag))
            }
            Route::Converted(id, format) => {
                self.access
                    .verify_signature(caller, parts.uri.path(), "", &query_pairs(&parts))?;
                let spec = Arc::new(TransformSpec::convert_to(format)?);
                let fetched = self.service.transform(&id, &spec, range).await?;
                Ok(response::object(&parts.headers, head_only, fetched))
            }
            Route::Transform(id, pipeline) => {
                self.access.verify_signature(
                    caller,
                    parts.uri.path(),
                    &pipeline,
                    &query_pairs(&parts),
                )?;
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
                let upload =
                    upload::read_upload(&self.service, &self.fetcher, &parts, chunks).await?;
                let varies = spec.varies_with_accept();
                let rendered = self.service.on_demand(upload, spec).await?;
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
                Err(err) => {
                    let mut response = response::json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({
                            "status": "unavailable",
                            "error": {"code": err.code, "message": err.message},
                        }),
                    );
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    response
                }
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
    /// The transform a request asks for; its signature, if any, is not a parameter.
    fn spec(&self, pipeline: &str, parts: &Parts) -> Result<TransformSpec> {
        let accept = parts.headers.get(ACCEPT).and_then(|v| v.to_str().ok());
        let mut query = query_pairs(parts);
        query.retain(|(key, _)| key != SIGNATURE_PARAM);
        self.service.transform_spec(pipeline, &query, accept)
    }
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(id) = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| (1..=128).contains(&id.len()))
        .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()))
    {
        return id.to_string();
    }
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    // A per-process random key hashing a counter: unique and unguessable enough for
    // correlating logs, without a random-number dependency.
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = KEY.get_or_init(Default::default).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", hasher.finish())
}

/// Methods as metrics labels: the standard ones, and `other` for the rest, so that
/// made-up methods cannot grow the series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// On a private server, shared caches must not keep what needed a key to read.
fn make_private(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    if let Some(private) = headers
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("public"))
        .map(|rest| format!("private{rest}"))
    {
        if let Ok(value) = HeaderValue::from_str(&private) {
            headers.insert(CACHE_CONTROL, value);
        }
    }
}

fn header_number(headers: &HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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

/// The query parameters of `GET /images/`.
const PAGE_PARAMS: [&str; 3] = ["limit", "cursor", "tag"];

/// What a listing asks for.
struct PageQuery {
    /// The last id of the previous page.
    cursor: Option<ImageId>,
    limit: usize,
    /// Only images carrying this tag.
    tag: Option<String>,
}

/// `cursor`, `limit` and `tag` from a listing's query.
fn page_query(query: &[(String, String)]) -> Result<PageQuery> {
    let mut cursor = None;
    let mut limit = DEFAULT_PAGE;
    let mut tag = None;
    for (key, value) in query {
        match key.as_str() {
            "cursor" => cursor = Some(ImageId::parse(value)?),
            "tag" => tag = Some(value.clone()),
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
                    format!("GET /images/ takes {}, not '{key}'", PAGE_PARAMS.join(", ")),
                ))
            }
        }
    }
    Ok(PageQuery { cursor, limit, tag })
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
    tags: &'a [String],
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
            tags: &sidecar.tags,
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

/// For the `upload` fuzz target: reads `body` as `POST /` does (in 7-byte chunks, so
/// multipart boundaries straddle them), with default settings and a memory store.
/// Compiled only under cargo-fuzz (`--cfg fuzzing`).
#[cfg(fuzzing)]
pub async fn fuzz_read_upload(content_type: &str, body: bytes::Bytes) -> Result<()> {
    let settings = Settings::default();
    let store = crate::store::Store::open("memory://", &settings.s3)?;
    let service = Service::new(&settings, store)?;
    let fetcher = Fetcher::new(&settings.fetch)?;
    let (parts, ()) = Request::post("/")
        .header(CONTENT_TYPE, content_type)
        .body(())
        .map_err(|err| Error::bad_request("invalid_form", err.to_string()))?
        .into_parts();
    let chunks: Vec<std::result::Result<bytes::Bytes, slow::BodyError>> = (0..body.len())
        .step_by(7)
        .map(|start| Ok(body.slice(start..body.len().min(start + 7))))
        .collect();
    upload::read_upload(&service, &fetcher, &parts, futures::stream::iter(chunks))
        .await
        .map(|_| ())
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and
/// waits up to `shutdown_grace_secs` for in-flight requests to finish. At most
/// `max_connections` are served at once; a connection whose responses stop moving for
/// `write_timeout_secs` is dropped (see `http::slow`). Connections are served on the
/// current runtime.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_on(&[], &[], listener, app, settings, shutdown).await
}

/// [`serve`], with accepted connections shared between the current runtime and
/// `others` (see [`steer`] for which gets which). `cpus` are the cores these runtimes
/// are pinned to, the current one first; empty if they are not. Given one
/// single-threaded runtime per core, a connection then lives on one thread, and
/// serving its requests wakes no other (`progimage serve` does this).
pub async fn serve_on(
    others: &[tokio::runtime::Handle],
    cpus: &[usize],
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
    let connections = Arc::new(tokio::sync::Semaphore::new(settings.limits.max_connections));
    let write_timeout = Duration::from_secs(settings.limits.write_timeout_secs);
    tokio::pin!(shutdown);
    let steering = steer::Steering::new(others.len() + 1, cpus);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&connections).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => {
                        // Responses go out as a header write then body writes; with
                        // Nagle's algorithm on, the last small write waits for the
                        // client's delayed ACK (40 ms on Linux) before leaving.
                        if let Err(err) = stream.set_nodelay(true) {
                            tracing::debug!(error = %err, "could not set TCP_NODELAY");
                        }
                        stream
                    }
                    Err(err) => {
                        // Out of file descriptors, usually: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let app = Arc::clone(&app);
                // Counted on its runtime until the connection, which owns the service
                // and with it `placed`, ends.
                let placed = steering.place(&stream);
                // Index 0 is the current runtime.
                let runtime = placed.index.checked_sub(1).map(|other| &others[other]);
                let service = service_fn(move |request: Request<Incoming>| {
                    let app = Arc::clone(&app);
                    // HTTP/2 has no per-response close; its connections stay put.
                    let reconnect = request.version() == Version::HTTP_11 && placed.served_one();
                    async move {
                        let mut response = app.handle(request).await;
                        if reconnect {
                            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                            app.service.metrics().connection_moved();
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                // The connection is built on the runtime that will poll it, so that its
                // socket and timers register with that runtime's drivers.
                let serve_connection = move |stream: tokio::net::TcpStream| async move {
                    let io = TokioIo::new(slow::WriteTimeout::new(stream, write_timeout));
                    let connection = builder.serve_connection(io, service).into_owned();
                    if let Err(err) = watcher.watch(connection).await {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    drop(slot);
                };
                match runtime {
                    None => drop(tokio::spawn(serve_connection(stream))),
                    Some(runtime) => {
                        // Out of this runtime's driver, into the other's.
                        let moved = stream.into_std().map(|stream| {
                            runtime.spawn(async move {
                                match tokio::net::TcpStream::from_std(stream) {
                                    Ok(stream) => serve_connection(stream).await,
                                    Err(err) => tracing::warn!(error = %err, "could not move a connection"),
                                }
                            })
                        });
                        if let Err(err) = moved {
                            tracing::warn!(error = %err, "could not move a connection");
                        }
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(Duration::from_secs(settings.shutdown_grace_secs)) => tracing::warn!("gave up waiting for connections to finish"),
    }
    // Bounded, so that a store that stopped answering does not hold the exit: a lease
    // left behind only expires.
    match tokio::time::timeout(RELEASE_LEASES_FOR, app.service.release_held_leases()).await {
        Ok(0) => {}
        Ok(released) => tracing::warn!(released, "deleted the leases of work given up"),
        Err(_) => tracing::warn!("gave up deleting held leases; they will expire"),
    }
    Ok(())
}
