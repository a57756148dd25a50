//! What `GET /metrics` reports, in the Prometheus (OpenMetrics) text format.
//!
//! Counters and histograms live here, recorded by the HTTP layer (requests, bytes,
//! cache results, rejections) and the service (transform compute time, queue
//! rejections). Labels are drawn from small fixed sets (route names, transform step
//! names, error codes) so that no client can grow the series without bound.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransformLabel {
    transform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Every metric of the process, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    transform_time: Family<TransformLabel, Histogram, fn() -> Histogram>,
    cache: Family<ResultLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    bytes_received: Counter,
    bytes_sent: Counter,
    connections_moved: Counter,
    leases_taken: Counter,
    in_flight: Gauge,
    hot_cache: Gauge,
    memory_reserved: Gauge,
    memory_waiting: Gauge,
    transforms_running: Gauge,
    transforms_waiting: Gauge,
}

/// What the service holds and runs now: the gauges read when the metrics are.
pub struct Load {
    pub hot_cache_bytes: u64,
    pub memory_reserved_bytes: u64,
    pub memory_waiting: u64,
    pub transforms_running: u64,
    pub transforms_waiting: u64,
}

/// Buckets from 1 ms to about 33 s, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("progimage");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let transform_time = Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let cache = Family::<ResultLabel, Counter>::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let bytes_received = Counter::default();
        let bytes_sent = Counter::default();
        let connections_moved = Counter::default();
        let leases_taken = Counter::default();
        let in_flight = Gauge::default();
        let hot_cache = Gauge::default();
        let memory_reserved = Gauge::default();
        let memory_waiting = Gauge::default();
        let transforms_running = Gauge::default();
        let transforms_waiting = Gauge::default();
        registry.register(
            "http_requests",
            "Requests answered, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by route",
            latency.clone(),
        );
        registry.register(
            "transform_duration_seconds",
            "Decode, transform and encode time, by pipeline steps",
            transform_time.clone(),
        );
        registry.register(
            "cache_lookups",
            "Transform requests by where the result came from: hit, miss or coalesced",
            cache.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused with a 4xx or 5xx, by error code",
            rejected.clone(),
        );
        registry.register(
            "http_received_bytes",
            "Request body bytes read",
            bytes_received.clone(),
        );
        registry.register(
            "http_sent_bytes",
            "Response body bytes sent (as declared by Content-Length)",
            bytes_sent.clone(),
        );
        registry.register(
            "http_connections_moved",
            "Connections asked to reconnect (Connection: close) because their packets \
             now arrive on another core's serving thread",
            connections_moved.clone(),
        );
        registry.register(
            "transform_leases",
            "Cache misses that took a lease, so that other instances wait for their \
             result: those computing longer than transform_lease_after_ms",
            leases_taken.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Requests being handled now",
            in_flight.clone(),
        );
        registry.register(
            "hot_cache_bytes",
            "Bytes of transform results held in memory (at most hot_cache_bytes)",
            hot_cache.clone(),
        );
        registry.register(
            "memory_reserved_bytes",
            "Bytes of the memory budget reserved by uploads and transforms \
             (at most limits.memory_budget_bytes)",
            memory_reserved.clone(),
        );
        registry.register(
            "memory_waiting",
            "Uploads and transforms waiting for the memory budget \
             (at most limits.max_queued_transforms)",
            memory_waiting.clone(),
        );
        registry.register(
            "transforms_running",
            "Transform jobs on a worker (at most transform_workers)",
            transforms_running.clone(),
        );
        registry.register(
            "transforms_waiting",
            "Transform jobs waiting for a worker (at most limits.max_queued_transforms)",
            transforms_waiting.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            transform_time,
            cache,
            rejected,
            bytes_received,
            bytes_sent,
            connections_moved,
            leases_taken,
            in_flight,
            hot_cache,
            memory_reserved,
            memory_waiting,
            transforms_running,
            transforms_waiting,
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &'static str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabel { route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn transform(&self, steps: String, elapsed: Duration) {
        self.transform_time
            .get_or_create(&TransformLabel { transform: steps })
            .observe(elapsed.as_secs_f64());
    }

    /// `result` is `HIT`, `MISS` or `COALESCED`, as in `X-Cache`.
    pub fn cache(&self, result: &'static str) {
        self.cache.get_or_create(&ResultLabel { result }).inc();
    }

    /// A request refused with the error code `reason`.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn received(&self, bytes: u64) {
        self.bytes_received.inc_by(bytes);
    }

    pub fn sent(&self, bytes: u64) {
        self.bytes_sent.inc_by(bytes);
    }

    /// A connection asked to reconnect on the core its packets now arrive on.
    pub fn connection_moved(&self) {
        self.connections_moved.inc();
    }

    /// A cache miss took a transform lease.
    pub fn lease_taken(&self) {
        self.leases_taken.inc();
    }

    /// Marks a request as in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Sets the gauges to what the service holds and runs now.
    pub fn load(&self, now: &Load) {
        let gauges = [
            (&self.hot_cache, now.hot_cache_bytes),
            (&self.memory_reserved, now.memory_reserved_bytes),
            (&self.memory_waiting, now.memory_waiting),
            (&self.transforms_running, now.transforms_running),
            (&self.transforms_waiting, now.transforms_waiting),
        ];
        for (gauge, value) in gauges {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("metrics encode");
        text
    }
}

/// Decrements the in-flight gauge when dropped, however the request ends.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms_with_their_labels() {
        let metrics = Metrics::default();
        metrics.request("upload", "POST", 201, Duration::from_millis(3));
        metrics.transform("crop/resize".into(), Duration::from_millis(20));
        metrics.cache("HIT");
        metrics.rejected("max_upload_bytes");
        metrics.received(10);
        let text = metrics.render();
        for line in [
            "progimage_http_requests_total{route=\"upload\",method=\"POST\",status=\"201\"} 1",
            "progimage_http_request_duration_seconds_count{route=\"upload\"} 1",
            "progimage_transform_duration_seconds_count{transform=\"crop/resize\"} 1",
            "progimage_cache_lookups_total{result=\"HIT\"} 1",
            "progimage_rejected_requests_total{reason=\"max_upload_bytes\"} 1",
            "progimage_http_received_bytes_total 10",
            "progimage_http_requests_in_flight 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
