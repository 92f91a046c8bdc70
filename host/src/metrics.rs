//! Prometheus metrics: what each app and each request costs, and which
//! limits are hit (`--metrics ADDR`, served by `server`).
//!
//! [`Metrics`] owns the registry and every metric family; [`AppMetrics`] is
//! one app's view of them, with the per-app series looked up once. Every
//! metric carries an `app` label (the app's name: for `run app.wasm`, the
//! file's stem) but `wsgi_wasm_connections_active`, which is per protocol.
//! Without `--metrics` nothing is recorded: the hot path then pays one
//! `Option` check.
//!
//! The text is the OpenMetrics format, written by `prometheus-client`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    app: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    app: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    app: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    app: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    app: String,
    digest: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from 100 µs to about 100 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// Bytes of linear memory, from 1 MiB to 4 GiB.
fn bytes() -> Histogram {
    Histogram::new(exponential_buckets(f64::from(1 << 20), 2.0, 13))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<CodeLabels, Counter>,
    duration: Histograms<AppLabel>,
    instantiate: Histograms<AppLabel>,
    instances: Family<AppLabel, Gauge>,
    queue: Family<AppLabel, Gauge>,
    limits: Family<LimitLabels, Counter>,
    guest_errors: Family<KindLabels, Counter>,
    memory: Histograms<AppLabel>,
    connections: Family<ProtocolLabel, Gauge>,
    info: Family<InfoLabels, Gauge>,
    reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    /// A registry with every family registered, and no series yet.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("wsgi_wasm");
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(seconds),
            instantiate: Family::new_with_constructor(seconds),
            instances: Family::default(),
            queue: Family::default(),
            limits: Family::default(),
            guest_errors: Family::default(),
            memory: Family::new_with_constructor(bytes),
            connections: Family::default(),
            info: Family::default(),
            reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests answered, by status code", m.requests.clone());
        for (name, help, family) in [
            ("request_duration_seconds", "Time from the request's dispatch to the end of its response", &m.duration),
            ("instantiate_duration_seconds", "Time to create a request's store and instance", &m.instantiate),
            ("request_memory_bytes", "Each request's peak linear memory", &m.memory),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register("instances_active", "Sandboxes alive now", m.instances.clone());
        registry.register("queue_depth", "Requests waiting for a sandbox slot", m.queue.clone());
        registry.register(
            "limit_exceeded",
            "Requests that hit a limit: timeout, memory, memory_budget, fuel, body, response, queue, header, files",
            m.limits.clone(),
        );
        registry.register("guest_errors", "Requests whose app failed: exception, trap, exit", m.guest_errors.clone());
        registry.register("connections_active", "Open client connections", m.connections.clone());
        registry.register("app_info", "1 for the version of each app being served", m.info.clone());
        registry.register("reloads", "Reloads of an app (a new or changed version), by result", m.reloads.clone());
        Arc::new(Self { registry, ..m })
    }

    /// One app's metrics, and its `app_info` series set to 1.
    pub fn app(self: &Arc<Self>, name: &str, digest: &str) -> AppMetrics {
        let m = self.app_series(name);
        m.serving(digest);
        m
    }

    /// One app's metrics, with no `app_info` yet (see [`AppMetrics::serving`]).
    pub fn app_series(self: &Arc<Self>, name: &str) -> AppMetrics {
        let label = AppLabel { app: name.into() };
        AppMetrics {
            instances: self.instances.get_or_create_owned(&label),
            queue: self.queue.get_or_create_owned(&label),
            duration: self.duration.get_or_create_owned(&label),
            instantiate: self.instantiate.get_or_create_owned(&label),
            memory: self.memory.get_or_create_owned(&label),
            app: name.into(),
            all: Arc::clone(self),
        }
    }

    /// The series of requests that reached no app: refused before routing,
    /// or for a host and path no app is mounted at. Labelled `app="-"`.
    pub fn unrouted(self: &Arc<Self>) -> AppMetrics {
        self.app_series("-")
    }

    /// Counts a reload of `app` (`-` for the config as a whole) that ended
    /// in `result`: `ok` or `error`.
    pub fn reload(&self, app: &str, result: &str) {
        self.reloads.get_or_create(&ReloadLabels { app: app.into(), result: result.into() }).inc();
    }

    /// Counts an open connection of `protocol` until the guard is dropped.
    pub fn connection(&self, protocol: &str) -> GaugeGuard {
        GaugeGuard::new(self.connections.get_or_create_owned(&ProtocolLabel { protocol: protocol.into() }))
    }

    /// The whole registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// One app's series.
#[derive(Clone)]
pub struct AppMetrics {
    all: Arc<Metrics>,
    app: String,
    instances: Gauge,
    queue: Gauge,
    duration: Histogram,
    instantiate: Histogram,
    memory: Histogram,
}

impl AppMetrics {
    /// The registry these series are in.
    pub fn registry(&self) -> &Arc<Metrics> {
        &self.all
    }

    /// Marks `digest` as the version of this app being served.
    pub fn serving(&self, digest: &str) {
        self.all.info.get_or_create(&InfoLabels { app: self.app.clone(), digest: digest.into() }).set(1);
    }

    /// Drops the `app_info` series of a version no longer served.
    pub fn retire(&self, digest: &str) {
        self.all.info.remove(&InfoLabels { app: self.app.clone(), digest: digest.into() });
    }

    /// A request the host answered itself with `code`, before any sandbox,
    /// and the limit it hit, if one.
    pub fn refused(&self, code: u16, limit: Option<&str>) {
        self.request(code, Duration::ZERO);
        limit.into_iter().for_each(|limit| self.limit(limit));
    }

    /// A request answered with `code`, `took` after its dispatch.
    pub fn request(&self, code: u16, took: Duration) {
        self.all.requests.get_or_create(&CodeLabels { app: self.app.clone(), code }).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// A request that hit `limit`.
    pub fn limit(&self, limit: &str) {
        self.all.limits.get_or_create(&LimitLabels { app: self.app.clone(), limit: limit.into() }).inc();
    }

    /// A request whose app failed in this `kind` of way.
    pub fn guest_error(&self, kind: &str) {
        self.all.guest_errors.get_or_create(&KindLabels { app: self.app.clone(), kind: kind.into() }).inc();
    }

    /// A store and instance created in `took`.
    pub fn instantiated(&self, took: Duration) {
        self.instantiate.observe(took.as_secs_f64());
    }

    /// A finished request's peak linear memory.
    pub fn peak_memory(&self, bytes: usize) {
        self.memory.observe(bytes as f64);
    }

    /// Counts a request waiting for a slot until the guard is dropped.
    pub fn queued(&self) -> GaugeGuard {
        GaugeGuard::new(self.queue.clone())
    }

    /// Counts a live sandbox until the guard is dropped.
    pub fn active(&self) -> GaugeGuard {
        GaugeGuard::new(self.instances.clone())
    }
}

/// Adds one to a gauge for as long as it lives.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_the_app_and_keep_the_names() {
        let metrics = Metrics::new();
        let app = metrics.app("shop", "abc");
        app.request(200, Duration::from_millis(3));
        app.request(200, Duration::from_millis(5));
        app.limit("timeout");
        app.guest_error("trap");
        let queued = app.queued();
        let conn = metrics.connection("http");
        let text = metrics.encode();
        for line in [
            "wsgi_wasm_requests_total{app=\"shop\",code=\"200\"} 2",
            "wsgi_wasm_limit_exceeded_total{app=\"shop\",limit=\"timeout\"} 1",
            "wsgi_wasm_guest_errors_total{app=\"shop\",kind=\"trap\"} 1",
            "wsgi_wasm_queue_depth{app=\"shop\"} 1",
            "wsgi_wasm_instances_active{app=\"shop\"} 0",
            "wsgi_wasm_connections_active{protocol=\"http\"} 1",
            "wsgi_wasm_app_info{app=\"shop\",digest=\"abc\"} 1",
            "wsgi_wasm_request_duration_seconds_count{app=\"shop\"} 2",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        drop((queued, conn));
        assert!(metrics.encode().contains("wsgi_wasm_queue_depth{app=\"shop\"} 0"));
    }
}
