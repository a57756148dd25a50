//! Routing: a method and a path to a [`Route`], or a 404/405.
//!
//! ```text
//! GET, HEAD   /                               the web page (upload, gallery, transforms)
//! POST        /  and  /images/                upload (multipart, raw image body, or JSON url)
//! GET, HEAD   /images/?limit=&cursor=         a page of stored images, in id order
//! GET, HEAD   /images/<id>/                   the original bytes
//! DELETE      /images/<id>/                   the image, its sidecar and its transforms
//! GET, HEAD   /images/<id>.<ext>              the original converted (a cached transform)
//! GET, HEAD   /images/<id>/meta/              the JSON sidecar, with an ETag
//! PATCH       /images/<id>/meta/              change name, desc, tags (If-Match honoured)
//! GET, HEAD   /images/<id>/<pipeline>/        a transform or pipeline (see engine::pipeline)
//! POST        /on_demand/<pipeline>/          a transform of the body; nothing stored
//! GET, HEAD   /transforms/                    every transform, its parameters, formats, presets
//! GET, HEAD   /healthz                        200 while the process runs
//! GET, HEAD   /readyz                         200 when the store answers, else 503
//! GET, HEAD   /metrics                        Prometheus (OpenMetrics) text
//! GET, HEAD   /openapi.json                   the OpenAPI 3.1 description of all this
//! ```
//!
//! Trailing slashes are optional. Path parameters are validated here (the id must be a
//! SHA-1) so handlers receive typed values.

use hyper::Method;

use super::access::Need;
use crate::engine::Format;
use crate::error::{Error, ErrorKind, Result};
use crate::store::ImageId;

/// A request's destination, with its path parameters parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Page,
    Upload,
    List,
    Original(ImageId),
    Delete(ImageId),
    Converted(ImageId, Format),
    Meta(ImageId),
    UpdateMeta(ImageId),
    /// An image and the pipeline part of the path (`thumbnail`, `crop(aspect=1:1)/grayscale`).
    Transform(ImageId, String),
    OnDemand(String),
    Transforms,
    Health,
    Ready,
    Metrics,
    OpenApi,
}

/// The methods each kind of resource allows, as the `Allow` header lists them.
const READ: &str = "GET, HEAD";
const WRITE: &str = "POST";
const COLLECTION: &str = "GET, HEAD, POST";
const IMAGE: &str = "GET, HEAD, DELETE";
const META: &str = "GET, HEAD, PATCH";

impl Route {
    /// Resolves `method` and `path`. A known path with the wrong method is a 405 whose
    /// message is the `Allow` header value.
    pub fn resolve(method: &Method, path: &str) -> Result<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let reads = method == Method::GET || method == Method::HEAD;
        let (route, allow) = match segments.as_slice() {
            [""] if reads => (Route::Page, COLLECTION),
            [""] => (Route::Upload, COLLECTION),
            ["images"] if reads => (Route::List, COLLECTION),
            ["images"] => (Route::Upload, COLLECTION),
            ["images", image] if image.contains('.') => (Self::image(image)?, READ),
            ["images", id] if method == Method::DELETE => {
                (Route::Delete(ImageId::parse(id)?), IMAGE)
            }
            ["images", image] => (Self::image(image)?, IMAGE),
            ["images", id, "meta"] if method == Method::PATCH => {
                (Route::UpdateMeta(ImageId::parse(id)?), META)
            }
            ["images", id, "meta"] => (Route::Meta(ImageId::parse(id)?), META),
            ["images", id, pipeline @ ..] => (
                Route::Transform(ImageId::parse(id)?, pipeline.join("/")),
                READ,
            ),
            ["on_demand", pipeline @ ..] if !pipeline.is_empty() => {
                (Route::OnDemand(pipeline.join("/")), WRITE)
            }
            ["transforms"] => (Route::Transforms, READ),
            ["healthz"] => (Route::Health, READ),
            ["readyz"] => (Route::Ready, READ),
            ["metrics"] => (Route::Metrics, READ),
            ["openapi.json"] => (Route::OpenApi, READ),
            _ => {
                return Err(Error::not_found(
                    "route_not_found",
                    format!("no route for {path}"),
                ))
            }
        };
        if allow.split(", ").any(|allowed| allowed == method.as_str()) {
            Ok(route)
        } else {
            Err(Error::new(
                ErrorKind::MethodNotAllowed,
                "method_not_allowed",
                allow,
            ))
        }
    }

    /// A short name for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Page => "page",
            Route::Upload => "upload",
            Route::List => "list",
            Route::Original(_) => "original",
            Route::Delete(_) => "delete",
            Route::Converted(..) => "converted",
            Route::Meta(_) => "meta",
            Route::UpdateMeta(_) => "update_meta",
            Route::Transform(..) => "transform",
            Route::OnDemand(_) => "on_demand",
            Route::Transforms => "transforms",
            Route::Health => "healthz",
            Route::Ready => "readyz",
            Route::Metrics => "metrics",
            Route::OpenApi => "openapi",
        }
    }

    /// What the caller must prove (see [`Need`]).
    pub fn need(&self) -> Need {
        match self {
            Route::Upload | Route::Delete(_) | Route::UpdateMeta(_) | Route::OnDemand(_) => {
                Need::Write
            }
            Route::List
            | Route::Original(_)
            | Route::Converted(..)
            | Route::Meta(_)
            | Route::Transform(..) => Need::Read,
            Route::Page
            | Route::Transforms
            | Route::Health
            | Route::Ready
            | Route::Metrics
            | Route::OpenApi => Need::Nothing,
        }
    }

    /// `<id>` or `<id>.<ext>`.
    fn image(segment: &str) -> Result<Self> {
        match segment.split_once('.') {
            None => Ok(Route::Original(ImageId::parse(segment)?)),
            Some((id, extension)) => {
                let format = Format::from_name(extension).ok_or_else(|| {
                    Error::not_found(
                        "route_not_found",
                        format!("images can be converted to .jpg, .png, .webp, .gif, .avif, .bmp or .tiff, not .{extension}"),
                    )
                })?;
                Ok(Route::Converted(ImageId::parse(id)?, format))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn resolves_every_route() {
        let id = ImageId::parse(ID).unwrap();
        let get = |path: &str| Route::resolve(&Method::GET, path);
        assert_eq!(Route::resolve(&Method::POST, "/").unwrap(), Route::Upload);
        assert_eq!(
            Route::resolve(&Method::POST, "/images/").unwrap(),
            Route::Upload
        );
        assert_eq!(
            get(&format!("/images/{ID}/")).unwrap(),
            Route::Original(id.clone())
        );
        assert_eq!(
            get(&format!("/images/{ID}")).unwrap(),
            Route::Original(id.clone())
        );
        assert_eq!(
            get(&format!("/images/{ID}.jpg")).unwrap(),
            Route::Converted(id.clone(), Format::Jpeg)
        );
        assert_eq!(
            get(&format!("/images/{ID}/meta/")).unwrap(),
            Route::Meta(id.clone())
        );
        assert_eq!(
            get(&format!("/images/{ID}/thumbnail/")).unwrap(),
            Route::Transform(id, "thumbnail".into())
        );
        assert_eq!(
            Route::resolve(&Method::POST, "/on_demand/ascii/").unwrap(),
            Route::OnDemand("ascii".into())
        );
        assert_eq!(
            get(&format!("/images/{ID}/crop(aspect=1:1)/grayscale/")).unwrap(),
            Route::Transform(
                ImageId::parse(ID).unwrap(),
                "crop(aspect=1:1)/grayscale".into()
            )
        );
        assert_eq!(get("/transforms/").unwrap(), Route::Transforms);
        assert_eq!(get("/").unwrap(), Route::Page);
        assert_eq!(get("/metrics").unwrap(), Route::Metrics);
        assert_eq!(get("/openapi.json").unwrap(), Route::OpenApi);
        assert_eq!(
            Route::resolve(&Method::PATCH, &format!("/images/{ID}/meta/")).unwrap(),
            Route::UpdateMeta(ImageId::parse(ID).unwrap())
        );
        assert_eq!(get("/images/").unwrap(), Route::List);
        assert_eq!(
            Route::resolve(&Method::DELETE, &format!("/images/{ID}/")).unwrap(),
            Route::Delete(ImageId::parse(ID).unwrap())
        );
    }

    #[test]
    fn wrong_methods_and_paths_are_refused() {
        let err = Route::resolve(&Method::PUT, &format!("/images/{ID}/")).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (ErrorKind::MethodNotAllowed, "GET, HEAD, DELETE")
        );
        let err = Route::resolve(&Method::DELETE, "/images/").unwrap_err();
        assert_eq!(err.message, "GET, HEAD, POST");
        let err = Route::resolve(&Method::DELETE, &format!("/images/{ID}/meta/")).unwrap_err();
        assert_eq!(err.message, "GET, HEAD, PATCH");
        let err = Route::resolve(&Method::PUT, "/").unwrap_err();
        assert_eq!(err.message, "GET, HEAD, POST");
        assert_eq!(
            Route::resolve(&Method::GET, "/nope/a/b/c")
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            Route::resolve(&Method::GET, "/images/xyz/")
                .unwrap_err()
                .kind,
            ErrorKind::BadRequest
        );
    }
}
