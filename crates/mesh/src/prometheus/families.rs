//! The families of one scrape: prometheus-client's `Family`s filled from
//! the layers' own counters when a scrape asks, then encoded in the order
//! they were made.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;

/// A series' labels, in order.
pub(super) type Labels = Vec<(&'static str, String)>;
/// A float gauge.
type FloatGauge = Gauge<f64, AtomicU64>;
/// Integer counters by labels.
pub(super) type Counters = Family<Labels, Counter>;
/// Float counters by labels (seconds).
pub(super) type FloatCounters = Family<Labels, Counter<f64, AtomicU64>>;
/// Float gauges by labels.
pub(super) type Gauges = Family<Labels, FloatGauge>;

/// `pairs` as a label set.
pub(super) fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// One histogram counted elsewhere.
#[derive(Debug)]
pub(super) struct Histogram {
    /// Its labels.
    pub(super) labels: Labels,
    /// Its observations added up.
    pub(super) sum: f64,
    /// Its observations.
    pub(super) count: u64,
    /// Observations per upper bound (not cumulative).
    pub(super) buckets: Vec<(f64, u64)>,
}

/// Histograms whose buckets were counted elsewhere.
#[derive(Debug, Default)]
pub(super) struct Histograms(pub(super) Vec<Histogram>);

impl EncodeMetric for Histograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for h in &self.0 {
            encoder
                .encode_family(&h.labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The families of one scrape, in the order they were made.
#[derive(Default)]
pub(super) struct Families {
    list: Vec<(&'static str, &'static str, Box<dyn EncodeMetric>)>,
}

// === impl Families ===

impl Families {
    /// A counter family `name` (the encoder adds `_total`).
    pub(super) fn counter(&mut self, name: &'static str, help: &'static str) -> Counters {
        self.add(name, help, Counters::default())
    }

    /// A counter family of seconds, `name` (the encoder adds `_total`).
    pub(super) fn seconds_counter(
        &mut self,
        name: &'static str,
        help: &'static str,
    ) -> FloatCounters {
        self.add(name, help, FloatCounters::default())
    }

    /// A gauge family `name`.
    pub(super) fn gauge(&mut self, name: &'static str, help: &'static str) -> Gauges {
        self.add(name, help, Gauges::default())
    }

    /// A family of histograms counted elsewhere.
    pub(super) fn histograms(
        &mut self,
        name: &'static str,
        help: &'static str,
        histograms: Histograms,
    ) {
        self.list.push((name, help, Box::new(histograms)));
    }

    fn add<M: EncodeMetric + Clone + 'static>(
        &mut self,
        name: &'static str,
        help: &'static str,
        family: M,
    ) -> M {
        self.list.push((name, help, Box::new(family.clone())));
        family
    }

    /// Encodes every family that has a series (an empty one would only be
    /// a `HELP` and a `TYPE` line).
    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, family) in &self.list {
            // Through the trait object: `Box`'s own impl says never empty.
            if (**family).is_empty() {
                continue;
            }
            let metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
            family.encode(metric)?;
        }
        Ok(())
    }
}
