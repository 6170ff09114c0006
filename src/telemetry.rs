//! What operators watch: Prometheus metrics (`GET /metrics`) and the request id that
//! ties the log lines of one request together. Metric names live here, so every
//! series is declared once; labels are route templates and codes, never raw paths,
//! ids or client text.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder; installed by the first app built (tests build many).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let bytes = [
            1024.0,
            10_240.0,
            102_400.0,
            1_048_576.0,
            10_485_760.0,
            104_857_600.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &bytes)
            });
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics stays empty");
        }
        describe();
        handle
    })
}

/// `# HELP` (and so `# TYPE`) of every family, and the series without labels at
/// zero, so that a scrape shows every documented series from the start.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "attache_http_requests_total",
        "HTTP requests, by route template, method and status"
    );
    describe_histogram!(
        "attache_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency, by route template and method"
    );
    describe_counter!(
        "attache_graphql_operations_total",
        "GraphQL operations, by operation name and outcome (OK or the first error's code)"
    );
    describe_counter!(
        "attache_upload_bytes_total",
        metrics::Unit::Bytes,
        "Bytes of stored files"
    );
    describe_histogram!(
        "attache_upload_size_bytes",
        metrics::Unit::Bytes,
        "Sizes of stored files"
    );
    describe_histogram!(
        "attache_storage_operation_duration_seconds",
        metrics::Unit::Seconds,
        "Storage call latency, by backend and operation"
    );
    describe_counter!(
        "attache_storage_errors_total",
        "Failed storage calls, by backend and operation"
    );
    describe_counter!(
        "attache_webhook_attempts_total",
        "Webhook delivery attempts, by outcome (delivered, retry, failed)"
    );
    describe_gauge!(
        "attache_storage_migration_files_done",
        "Files the background storage migration has checked"
    );
    describe_gauge!(
        "attache_storage_migration_files_left",
        "Files the background storage migration has still to check"
    );
    describe_gauge!(
        "attache_storage_migration_bytes_done",
        metrics::Unit::Bytes,
        "Bytes the background storage migration has checked"
    );
    describe_gauge!(
        "attache_storage_migration_bytes_left",
        metrics::Unit::Bytes,
        "Bytes the background storage migration has still to check"
    );
    describe_gauge!(
        "attache_db_pool_connections",
        "Connections of the database pool"
    );
    describe_gauge!(
        "attache_db_pool_idle_connections",
        "Idle connections of the database pool"
    );
    describe_gauge!("attache_outbox_backlog", "Webhook deliveries still to send");
    describe_gauge!(
        "attache_http_connections",
        "Client connections open (at most MAX_CONNECTIONS)"
    );
    describe_gauge!(
        "attache_http_requests_in_flight",
        "Requests received and not yet answered (a body may stream after its answer)"
    );
    describe_counter!(
        "attache_http_connections_closed_for_room_total",
        "Connections asked to close because every slot was taken and a client connected"
    );
    describe_gauge!(
        "attache_webhook_receivers_paused",
        "Webhook receivers found down, whose deliveries this process holds back"
    );
    describe_gauge!(
        "attache_tenants_near_quota",
        "Tenants past 80 % of their bytes or files quota"
    );
    describe_counter!(
        "attache_storage_retries_total",
        "Requests to the S3 store sent again after a passing failure (503, SlowDown, a 5xx)"
    );
    counter!("attache_upload_bytes_total").absolute(0);
    counter!("attache_storage_retries_total").absolute(0);
    counter!("attache_http_connections_closed_for_room_total").absolute(0);
    // Registered, the histogram is rendered empty until the first upload.
    let _registered = histogram!("attache_upload_size_bytes");
    for gauge in [
        "attache_storage_migration_files_done",
        "attache_storage_migration_files_left",
        "attache_storage_migration_bytes_done",
        "attache_storage_migration_bytes_left",
        "attache_db_pool_connections",
        "attache_db_pool_idle_connections",
        "attache_outbox_backlog",
        "attache_webhook_receivers_paused",
        "attache_http_connections",
        "attache_http_requests_in_flight",
        "attache_tenants_near_quota",
    ] {
        gauge!(gauge).set(0.0);
    }
    for outcome in ["delivered", "retry", "failed"] {
        counter!("attache_webhook_attempts_total", "outcome" => outcome).absolute(0);
    }
}

/// The storage error series of `backend` at zero, so that an alert on them has a
/// series before the first error.
pub fn storage_backend(backend: &'static str) {
    for operation in ["write", "read", "stat", "delete", "list"] {
        counter!("attache_storage_errors_total", "backend" => backend, "operation" => operation)
            .absolute(0);
    }
}

/// A request's method as metrics and logs name it: methods outside the standard
/// ones are `other`, since a client chooses the method (hyper takes one as long as
/// the request's head).
pub fn method_name(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

/// One HTTP request, by route template, method ([`method_name`]) and status.
pub fn http_request(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    counter!("attache_http_requests_total", &labels).increment(1);
    histogram!("attache_http_request_duration_seconds", &labels[..2]).record(elapsed);
}

/// Most distinct operation names that get series of their own; later names, and
/// the names of operations refused before they ran, count as `other`.
pub const MOST_OPERATION_NAMES: usize = 100;

/// One GraphQL operation and its outcome: `OK`, or the first error's code (from
/// the bounded set of SPEC 6, or `GRAPHQL_VALIDATION_FAILED` when it never `ran`:
/// the name of an operation that never ran gets no series of its own).
pub fn graphql_operation(name: Option<&str>, outcome: &str, ran: bool) {
    let name = match name {
        None => "anonymous".to_owned(),
        Some(name) if ran && named_series(name) => name.to_owned(),
        Some(_) => "other".to_owned(),
    };
    counter!("attache_graphql_operations_total", "operation" => name, "outcome" => outcome.to_owned())
        .increment(1);
}

/// A command's last word on stderr: `error: ...`, or under `LOG_FORMAT=json` one
/// object shaped like the log's lines, so a pipeline that reads the logs also reads
/// why the process stopped.
pub fn fatal(message: &str, json: bool) {
    match json {
        false => eprintln!("error: {message}"),
        true => {
            // The keys in the order of the log's own lines (`json!` sorts them).
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let message = serde_json::Value::from(message);
            eprintln!(
                r#"{{"timestamp":"{now}","level":"ERROR","fields":{{"message":{message}}},"target":"attache"}}"#
            );
        }
    }
}

/// An operation refused before it ran (no token, a bound, its scope, a body too
/// large): named `other`, as its name was never checked, by the refusal's code.
pub fn graphql_refusal(code: &str) {
    counter!("attache_graphql_operations_total", "operation" => "other", "outcome" => code.to_owned())
        .increment(1);
}

/// Whether `name` has, or can still get, a series of its own.
fn named_series(name: &str) -> bool {
    static NAMES: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let looks_like_a_name =
        name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !looks_like_a_name {
        return false;
    }
    let Ok(mut names) = NAMES.get_or_init(Default::default).lock() else {
        return false;
    };
    names.contains(name) || (names.len() < MOST_OPERATION_NAMES && names.insert(name.to_owned()))
}

/// One stored file's size.
pub fn upload(bytes: u64) {
    counter!("attache_upload_bytes_total").increment(bytes);
    histogram!("attache_upload_size_bytes").record(bytes as f64);
}

/// One storage operation: its latency, and whether it failed.
pub fn storage_operation(
    backend: &'static str,
    operation: &'static str,
    elapsed: Duration,
    ok: bool,
) {
    histogram!("attache_storage_operation_duration_seconds", "backend" => backend, "operation" => operation)
        .record(elapsed);
    if !ok {
        counter!("attache_storage_errors_total", "backend" => backend, "operation" => operation)
            .increment(1);
    }
}

/// One request to the store sent again after a passing failure.
pub fn storage_retry() {
    counter!("attache_storage_retries_total").increment(1);
}

/// One webhook delivery attempt and how it ended (`delivered`, `retry`, `failed`).
pub fn webhook_attempt(outcome: &'static str) {
    counter!("attache_webhook_attempts_total", "outcome" => outcome).increment(1);
}

/// A client connection opened (`true`) or closed.
pub fn connection(opened: bool) {
    step(gauge!("attache_http_connections"), opened);
}

/// A request received (`true`) or summed up.
pub fn request_in_flight(received: bool) {
    step(gauge!("attache_http_requests_in_flight"), received);
}

/// Connections asked to close to make room for new clients.
pub fn connections_closed_for_room(asked: usize) {
    counter!("attache_http_connections_closed_for_room_total").increment(asked as u64);
}

/// One up (`true`) or one down.
fn step(gauge: metrics::Gauge, up: bool) {
    if up {
        gauge.increment(1.0);
    } else {
        gauge.decrement(1.0);
    }
}

/// A webhook receiver paused (`true`) or resumed.
pub fn webhook_receiver_paused(paused: bool) {
    step(gauge!("attache_webhook_receivers_paused"), paused);
}

/// Where the storage migration stands.
pub fn migration_progress(files_done: u64, files_total: u64, bytes_done: u64, bytes_total: u64) {
    gauge!("attache_storage_migration_files_done").set(files_done as f64);
    gauge!("attache_storage_migration_files_left")
        .set(files_total.saturating_sub(files_done) as f64);
    gauge!("attache_storage_migration_bytes_done").set(bytes_done as f64);
    gauge!("attache_storage_migration_bytes_left")
        .set(bytes_total.saturating_sub(bytes_done) as f64);
}

/// The database pool's size and idle connections, read at scrape time.
pub fn db_pool(size: u32, idle: usize) {
    gauge!("attache_db_pool_connections").set(f64::from(size));
    gauge!("attache_db_pool_idle_connections").set(idle as f64);
}

/// Webhook deliveries still to send, read at scrape time.
pub fn outbox_backlog(pending: u64) {
    gauge!("attache_outbox_backlog").set(pending as f64);
}

/// Tenants past 80 % of a quota, read at scrape time.
pub fn tenants_near_quota(tenants: u64) {
    gauge!("attache_tenants_near_quota").set(tenants as f64);
}

/// The Prometheus text of every series.
pub fn render() -> String {
    prometheus().render()
}

/// An `x-request-id` a client may set: short and printable, or a new one is made.
pub fn request_id(incoming: Option<&str>) -> String {
    incoming
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned)
}
