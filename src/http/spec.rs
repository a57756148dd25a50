//! The OpenAPI description and the router must agree: every path and method of the
//! spec resolves to a route that allows exactly those methods, every route is
//! described, the query parameters match what the handlers read, and the statuses
//! that access control, back-pressure and body timeouts add are declared where they
//! can happen.
//! (Schemathesis checks the responses themselves against the spec at run time.)

use std::collections::BTreeSet;

use hyper::Method;
use serde_json::Value;

use super::access::Need;
use super::routes::Route;
use super::{OPENAPI, PAGE_PARAMS};
use crate::config::Limits;
use crate::engine::{Engine, Presets};
use crate::error::ErrorKind;
use crate::signing::SIGNATURE_PARAM;

const ID: &str = "0123456789abcdef0123456789abcdef01234567";
const METHODS: [&str; 5] = ["get", "head", "post", "patch", "delete"];

/// Every route name. The match below has no wildcard, so a new route breaks the
/// build here until it is added to the list (and so to the spec).
fn all_route_names() -> BTreeSet<&'static str> {
    let id = || crate::store::ImageId::parse(ID).unwrap();
    let every = [
        Route::Page,
        Route::Upload,
        Route::List,
        Route::Original(id()),
        Route::Delete(id()),
        Route::Converted(id(), crate::engine::Format::Png),
        Route::Meta(id()),
        Route::UpdateMeta(id()),
        Route::Transform(id(), String::new()),
        Route::OnDemand(String::new()),
        Route::Transforms,
        Route::Health,
        Route::Ready,
        Route::Metrics,
        Route::OpenApi,
    ];
    for route in &every {
        match route {
            Route::Page
            | Route::Upload
            | Route::List
            | Route::Original(_)
            | Route::Delete(_)
            | Route::Converted(..)
            | Route::Meta(_)
            | Route::UpdateMeta(_)
            | Route::Transform(..)
            | Route::OnDemand(_)
            | Route::Transforms
            | Route::Health
            | Route::Ready
            | Route::Metrics
            | Route::OpenApi => {}
        }
    }
    every.iter().map(Route::name).collect()
}

fn spec() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

/// A concrete path for a templated one.
fn instantiate(template: &str) -> String {
    template
        .replace("{id}", ID)
        .replace("{ext}", "png")
        .replace("{pipeline}", "thumbnail")
}

/// The names of an operation's query parameters, `$ref`s resolved.
fn query_params(spec: &Value, operation: &Value) -> BTreeSet<String> {
    operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|param| match param["$ref"].as_str() {
            Some(reference) => {
                let name = reference.rsplit('/').next().unwrap();
                &spec["components"]["parameters"][name]
            }
            None => param,
        })
        .filter(|param| param["in"] == "query")
        .map(|param| param["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_path_and_method_matches_the_router() {
    let spec = spec();
    let mut described = BTreeSet::new();
    for (template, item) in spec["paths"].as_object().unwrap() {
        let path = instantiate(template);
        let methods: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect();
        let refused = Route::resolve(&Method::PUT, &path).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::MethodNotAllowed, "{template}");
        let allowed: BTreeSet<String> = refused.message.split(", ").map(String::from).collect();
        assert_eq!(allowed, methods, "{template}: router allows {allowed:?}");
        for method in &methods {
            let route = Route::resolve(&Method::from_bytes(method.as_bytes()).unwrap(), &path)
                .unwrap_or_else(|err| panic!("{method} {template}: {err}"));
            described.insert(route.name());
        }
    }
    assert_eq!(described, all_route_names(), "routes missing from the spec");
}

#[test]
fn query_parameters_match_what_the_handlers_read() {
    let spec = spec();
    let engine = Engine::new(Limits::default(), Presets::default());
    let catalogue = engine.catalogue();
    let mut transform_params: BTreeSet<String> = catalogue["output_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    for transform in catalogue["transforms"].as_array().unwrap() {
        for param in transform["params"].as_array().unwrap() {
            transform_params.insert(param["name"].as_str().unwrap().to_string());
        }
    }
    let listing: BTreeSet<String> = PAGE_PARAMS.iter().map(|p| p.to_string()).collect();
    let signed: BTreeSet<String> = [SIGNATURE_PARAM.to_string()].into();
    let with_sig = |params: &BTreeSet<String>| params | &signed;
    for (template, item) in spec["paths"].as_object().unwrap() {
        for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let operation = &item[*method];
            let route = Route::resolve(
                &Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                &instantiate(template),
            )
            .unwrap();
            let expected = match route {
                Route::List => listing.clone(),
                Route::Transform(..) => with_sig(&transform_params),
                Route::Converted(..) => signed.clone(),
                Route::OnDemand(_) => transform_params.clone(),
                _ => BTreeSet::new(),
            };
            assert_eq!(
                query_params(&spec, operation),
                expected,
                "{method} {template}"
            );
        }
    }
}

#[test]
fn access_and_back_pressure_statuses_are_declared_where_they_happen() {
    let spec = spec();
    for (template, item) in spec["paths"].as_object().unwrap() {
        for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let responses = item[*method]["responses"].as_object().unwrap();
            let declares = |status: &str| responses.contains_key(status);
            let route = Route::resolve(
                &Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                &instantiate(template),
            )
            .unwrap();
            let guarded = route.need() != Need::Nothing;
            assert_eq!(declares("401"), guarded, "{method} {template}: 401");
            assert_eq!(declares("403"), guarded, "{method} {template}: 403");
            // Transforms queue for a worker and the memory budget; uploads for the budget.
            let queued = matches!(
                route,
                Route::Transform(..) | Route::Converted(..) | Route::OnDemand(_) | Route::Upload
            );
            assert_eq!(declares("429"), queued, "{method} {template}: 429");
            let reads_a_body = matches!(
                route,
                Route::Upload | Route::OnDemand(_) | Route::UpdateMeta(_)
            );
            assert_eq!(declares("408"), reads_a_body, "{method} {template}: 408");
            let with_store = guarded;
            assert!(
                !with_store || declares("503") || matches!(route, Route::OnDemand(_)),
                "{method} {template}: 503"
            );
        }
    }
}
