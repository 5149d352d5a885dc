//! The metric model: one [`Snapshot`] per request, filled by the server's
//! [`StatusSource`](crate::StatusSource), encoded as OpenMetrics text for
//! `/metrics` and as JSON for `/status`.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// What a metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; exposed with a `_total` suffix.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution: buckets, sum and count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A histogram's state: per-bucket counts (not cumulative), with upper
/// bounds in ascending order; observations above the last bound count in
/// `count` only (they show in the `+Inf` bucket).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(upper bound, observations in this bucket)`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of every observation.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// One value of a metric, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// A counter or gauge value.
    Value(f64),
    /// A histogram.
    Histogram(Histogram),
}

/// One metric family: a name, its help, and a value per label set.
#[derive(Debug, Clone)]
pub struct Metric {
    /// The name without the counter's `_total` suffix, e.g.
    /// `servercore_sessions_accepted`.
    pub name: String,
    /// One line for humans.
    pub help: String,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// `(labels, value)`; unlabelled metrics have one entry with no labels.
    pub samples: Vec<(Vec<(String, String)>, Sample)>,
}

impl Metric {
    /// The name as exposed (counters end in `_total`).
    pub fn exposed_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            _ => self.name.clone(),
        }
    }
}

/// Every number of one request, and the extra `/status` fields.
#[derive(Debug, Default)]
pub struct Snapshot {
    metrics: Vec<Metric>,
    extra: Vec<(String, serde_json::Value)>,
    panels: Vec<crate::Panel>,
}

impl Snapshot {
    /// Adds an unlabelled counter (`name` without `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.push(
            name,
            help,
            Kind::Counter,
            vec![(Vec::new(), Sample::Value(value as f64))],
        );
    }

    /// Adds a counter with one label, one value per label value.
    pub fn counter_by<L: ToString>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (L, u64)>,
    ) {
        let samples = values
            .into_iter()
            .map(|(value, count)| {
                (
                    vec![(label.to_owned(), value.to_string())],
                    Sample::Value(count as f64),
                )
            })
            .collect();
        self.push(name, help, Kind::Counter, samples);
    }

    /// Adds an unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.push(
            name,
            help,
            Kind::Gauge,
            vec![(Vec::new(), Sample::Value(value))],
        );
    }

    /// Adds a gauge with one label, one value per label value.
    pub fn gauge_by<L: ToString>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (L, f64)>,
    ) {
        let samples = values
            .into_iter()
            .map(|(value, gauge)| {
                (
                    vec![(label.to_owned(), value.to_string())],
                    Sample::Value(gauge),
                )
            })
            .collect();
        self.push(name, help, Kind::Gauge, samples);
    }

    /// Adds an unlabelled histogram.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: Histogram) {
        self.push(
            name,
            help,
            Kind::Histogram,
            vec![(Vec::new(), Sample::Histogram(histogram))],
        );
    }

    /// Adds a top-level field to the `/status` document.
    pub fn status_field(&mut self, key: &str, value: serde_json::Value) {
        self.extra.push((key.to_owned(), value));
    }

    /// Adds a panel to the status page (after those added before).
    pub fn panel(&mut self, panel: crate::Panel) {
        self.panels.push(panel);
    }

    /// The metrics added so far.
    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    fn push(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        samples: Vec<(Vec<(String, String)>, Sample)>,
    ) {
        self.metrics.push(Metric {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples,
        });
    }

    pub(crate) fn take_extra(&mut self) -> Vec<(String, serde_json::Value)> {
        std::mem::take(&mut self.extra)
    }

    pub(crate) fn take_panels(&mut self) -> Vec<crate::Panel> {
        std::mem::take(&mut self.panels)
    }

    /// The metrics as JSON: `[{name, help, type, samples: [{labels, value}
    /// | {labels, buckets, sum, count}]}]`, names as exposed.
    pub fn metrics_json(&self) -> serde_json::Value {
        let metrics = self
            .metrics
            .iter()
            .map(|metric| {
                let samples: Vec<serde_json::Value> = metric
                    .samples
                    .iter()
                    .map(|(labels, sample)| {
                        let labels: serde_json::Map<String, serde_json::Value> = labels
                            .iter()
                            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                            .collect();
                        match sample {
                            Sample::Value(value) => {
                                serde_json::json!({ "labels": labels, "value": value })
                            }
                            Sample::Histogram(h) => serde_json::json!({
                                "labels": labels,
                                "buckets": h.buckets,
                                "sum": h.sum,
                                "count": h.count,
                            }),
                        }
                    })
                    .collect();
                serde_json::json!({
                    "name": metric.exposed_name(),
                    "help": metric.help,
                    "type": metric.kind.name(),
                    "samples": samples,
                })
            })
            .collect();
        serde_json::Value::Array(metrics)
    }

    /// Writes every metric through `prometheus-client`'s encoder.
    pub(crate) fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for metric in &self.metrics {
            let metric_type = match metric.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut family =
                encoder.encode_descriptor(&metric.name, &metric.help, None, metric_type)?;
            for (labels, sample) in &metric.samples {
                if labels.is_empty() {
                    encode_sample(&mut family, metric.kind, sample)?;
                } else {
                    encode_sample(&mut family.encode_family(labels)?, metric.kind, sample)?;
                }
            }
        }
        Ok(())
    }
}

/// Writes one sample; a kind/sample mismatch is an encoding error.
fn encode_sample(
    target: &mut MetricEncoder,
    kind: Kind,
    sample: &Sample,
) -> Result<(), fmt::Error> {
    match (kind, sample) {
        (Kind::Counter, Sample::Value(value)) => {
            target.encode_counter::<NoLabelSet, _, u64>(&(*value as u64), None)
        }
        (Kind::Gauge, Sample::Value(value)) => target.encode_gauge(value),
        (Kind::Histogram, Sample::Histogram(h)) => {
            let mut buckets = h.buckets.clone();
            let in_buckets: u64 = buckets.iter().map(|(_, n)| n).sum();
            // The encoder writes a bound of f64::MAX as +Inf.
            buckets.push((f64::MAX, h.count.saturating_sub(in_buckets)));
            target.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
        }
        _ => Err(fmt::Error),
    }
}
