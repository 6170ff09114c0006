//! `/metrics` as a test reads it: one scrape, parsed by a parser of the Prometheus
//! text format, and the sum of a series' samples.

use prom_text_format_parser::{Scrape, ValueType};

use super::TestApp;

/// The text of `/metrics` of the server process at `base`.
pub async fn metrics_text(base: &str) -> String {
    super::http_client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text")
}

/// One scrape of `/metrics`, parsed by a parser of the Prometheus text format.
pub async fn scrape(app: &TestApp) -> Scrape {
    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    let text = response.text().await.expect("text");
    Scrape::parse(&text).unwrap_or_else(|err| panic!("not Prometheus text: {err:?}\n{text}"))
}

/// The sum of the samples of the series `name` whose labels include `labels`.
pub fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    total_of(scrape, name, labels, ValueType::Sample)
}

/// Like [`total`], for one kind of value (a histogram's `_count`, say).
pub fn total_of(scrape: &Scrape, name: &str, labels: &[(&str, &str)], kind: ValueType) -> f64 {
    scrape
        .metrics
        .iter()
        .filter(|metric| metric.name == name)
        .flat_map(|metric| &metric.samples)
        .filter(|sample| {
            labels.iter().all(|(key, value)| {
                sample
                    .labels
                    .iter()
                    .any(|label| label.key == *key && label.value == *value)
            })
        })
        .filter(|sample| sample.value.value_type == kind)
        .map(|sample| sample.value.value.as_f64())
        .sum()
}

/// Whether the series `name` is there.
pub fn has(scrape: &Scrape, name: &str) -> bool {
    scrape.metrics.iter().any(|metric| metric.name == name)
}
