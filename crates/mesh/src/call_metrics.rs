//! Every call's outcome and latency, by service and endpoint: the
//! `mesh_requests_total` counters and `mesh_request_duration_seconds`
//! histograms.
//!
//! Recording is on the hot path, so it costs two hash lookups in a map
//! read without a lock and four atomic additions: no allocation, no label
//! set built per call, no write to a line every core shares but the
//! series' own counters. The map is copied on change (a new pair, a
//! scrape's removals), which is rare next to calls. Each (service,
//! endpoint) pair has one [`Series`] of plain atomics (one counter per
//! outcome [`Cell`], one per histogram bucket, the calls); labels are
//! written only when a scrape encodes them.
//!
//! The map is bounded: at most [`MAX_SERIES`] pairs. A new endpoint of a
//! full map is counted under its service's `overflow` endpoint, so no call
//! goes uncounted. A scrape removes the pairs whose endpoint discovery no
//! longer lists (endpoints churning by the thousand), but only once a
//! scrape has shown their last count: a count is never dropped before
//! someone could read it.
//!
//! A gRPC call whose status comes in trailers after its messages has no
//! outcome when its headers arrive: [`CallMetrics::record`] returns a
//! [`CountAtEnd`] that the response body wrapper holds and settles when
//! the body ends ([`CountAtEnd::observe`]), or as `CANCELLED` when it is
//! dropped first ([`CountAtEnd::cancel`]). The facade's `MeshBody` and
//! `prometheus::RequestMetricsBody` both hold one, so the two count a
//! call's end the same way.

use hashbrown::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Response;
use http_body::Frame;
use mesh_core::ext::SelectedEndpoint;
use mesh_core::grpc::{self, BodyEnd, GrpcCode};
use mesh_core::{BoxError, EndpointId, MeshError, ServiceName};
use mesh_core::{FailureClassifier, FailureKind};

/// The most (service, endpoint) pairs kept at once; beyond it, calls to
/// new endpoints are counted under their service's `overflow` endpoint.
pub(crate) const MAX_SERIES: usize = 4096;

/// The `endpoint` label of a call that failed before an endpoint was
/// chosen (no endpoints, circuit open for the service, unknown service).
pub(crate) const NO_ENDPOINT: &str = "none";

/// The `endpoint` label of calls to endpoints beyond [`MAX_SERIES`],
/// and the `service` label of calls to services first seen beyond it.
pub(crate) const OVERFLOW_ENDPOINT: &str = "overflow";

/// The histogram's upper bounds, in seconds: Prometheus's defaults, with
/// two finer ones below 5 ms for calls on a local network.
pub(crate) const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// HTTP status classes, `1xx` to `5xx`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Error kinds of a call that got no response, as the `error` label.
const ERRORS: [&str; 5] = ["connect", "timeout", "reset", "circuit_open", "other"];

/// Outcome cells per series: status classes, error kinds, gRPC codes.
const CELLS: usize = CLASSES.len() + ERRORS.len() + 17;

/// How one call ended, as the index of its counter in a [`Series`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cell(usize);

/// The labels of one outcome cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CellLabels {
    /// `1xx`...`5xx`, or `error` when no response came back.
    pub(crate) status_class: &'static str,
    /// The gRPC status name (`OK`, `UNAVAILABLE`...), empty for a call
    /// that is not gRPC.
    pub(crate) grpc_code: &'static str,
    /// Why no response came back (`connect`, `timeout`, `reset`,
    /// `circuit_open`, `other`); empty when one did.
    pub(crate) error: &'static str,
}

// === impl Cell ===

impl Cell {
    /// A response with HTTP status `status` and no gRPC status.
    pub(crate) fn status(status: http::StatusCode) -> Cell {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5);
        Cell(class - 1)
    }

    /// A call that got no response.
    pub(crate) fn error(kind: FailureKind) -> Cell {
        let index = match kind {
            FailureKind::Connect => 0,
            FailureKind::Timeout => 1,
            FailureKind::Reset => 2,
            FailureKind::CircuitOpen => 3,
            _ => 4,
        };
        Cell(CLASSES.len() + index)
    }

    /// A gRPC call (HTTP 200) that ended with `code`.
    pub(crate) fn grpc(code: GrpcCode) -> Cell {
        Cell(CLASSES.len() + ERRORS.len() + usize::from(code.get()))
    }

    /// Its labels.
    pub(crate) fn labels(self) -> CellLabels {
        let i = self.0;
        let errors = CLASSES.len();
        let grpc = errors + ERRORS.len();
        match i {
            _ if i < errors => CellLabels {
                status_class: CLASSES[i],
                grpc_code: "",
                error: "",
            },
            _ if i < grpc => CellLabels {
                status_class: "error",
                grpc_code: "",
                error: ERRORS[i - errors],
            },
            _ => CellLabels {
                status_class: "2xx",
                grpc_code: GrpcCode::new((i - grpc) as u32)
                    .unwrap_or(GrpcCode::UNKNOWN)
                    .name(),
                error: "",
            },
        }
    }
}

/// One (service, endpoint) pair's counters: calls by outcome, and the
/// latency histogram.
#[derive(Debug, Default)]
pub(crate) struct Series {
    cells: [AtomicU64; CELLS],
    /// Per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    /// Calls counted at the last scrape, to know whether one has shown
    /// the latest count.
    scraped: AtomicU64,
    /// Calls counted, and [`SEALED`] once a scrape removed the series:
    /// the one word where a removal and a call meet, so that exactly one
    /// of them comes first.
    calls: AtomicU64,
}

/// The mark of a series removed from the map: a call that finds it when
/// adding itself to `calls` was not counted, and counts itself again in
/// the map as it is now.
const SEALED: u64 = 1 << 63;

/// What a scrape reads of one series.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SeriesSnapshot {
    /// The service.
    pub(crate) service: ServiceName,
    /// The endpoint, `none` or `overflow`.
    pub(crate) endpoint: EndpointId,
    /// Calls per outcome cell that has any.
    pub(crate) outcomes: Vec<(CellLabels, u64)>,
    /// Calls per bucket (not cumulative, as prometheus-client's encoders
    /// take them): by upper bound in [`BUCKETS`], then `+Inf`.
    pub(crate) buckets: Vec<(f64, u64)>,
    /// Calls in all (the `+Inf` bucket).
    pub(crate) count: u64,
    /// Their latencies added up, in seconds.
    pub(crate) sum_seconds: f64,
}

// === impl Series ===

impl Series {
    /// Counts one call, unless a scrape has removed the series: whether
    /// it did.
    fn record(&self, cell: Cell, elapsed: Duration) -> bool {
        if self.calls.fetch_add(1, Ordering::Relaxed) & SEALED != 0 {
            return false;
        }
        self.cells[cell.0].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Removes the series if no call has counted into it since a scrape
    /// showed `shown` calls: whether it did. A call that adds itself to
    /// `calls` afterwards finds it sealed.
    fn seal_unless_counted_since(&self, shown: u64) -> bool {
        self.calls
            .compare_exchange(shown, shown | SEALED, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn snapshot(&self, service: &ServiceName, endpoint: &EndpointId) -> SeriesSnapshot {
        let outcomes = self
            .cells
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| (Cell(i).labels(), n))
            })
            .collect();
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        SeriesSnapshot {
            service: service.clone(),
            endpoint: endpoint.clone(),
            outcomes,
            buckets,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Every call's outcome and latency, by service and endpoint, bounded.
#[derive(Debug)]
pub(crate) struct CallMetrics {
    by_service: ArcSwap<Map>,
    /// Held to change the map (copy, change, swap in), one change at a
    /// time.
    writing: Mutex<()>,
    classifier: FailureClassifier,
    none: EndpointId,
    overflow: EndpointId,
    overflow_service: ServiceName,
}

/// The series by service, then endpoint, and how many there are. A
/// change copies the service map and the one endpoint map it touches.
#[derive(Clone, Debug, Default)]
struct Map {
    services: HashMap<ServiceName, Arc<Endpoints>>,
    len: usize,
}

/// One service's series, by endpoint.
type Endpoints = HashMap<EndpointId, Arc<Series>>;

/// A gRPC call counted when its body ends, with the status in its
/// trailers.
#[derive(Debug)]
struct PendingCall {
    service: ServiceName,
    endpoint: Option<EndpointId>,
    started: tokio::time::Instant,
}

// === impl CallMetrics ===

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            by_service: ArcSwap::default(),
            writing: Mutex::default(),
            classifier: FailureClassifier::default(),
            #[allow(clippy::unwrap_used)] // constant, valid ids
            none: EndpointId::new(NO_ENDPOINT).unwrap(),
            #[allow(clippy::unwrap_used)]
            overflow: EndpointId::new(OVERFLOW_ENDPOINT).unwrap(),
            #[allow(clippy::unwrap_used)]
            overflow_service: ServiceName::new(OVERFLOW_ENDPOINT).unwrap(),
        }
    }
}

impl CallMetrics {
    /// Counts the call to `service` that ended with `outcome` (started at
    /// `started`; served by `served_by` when the response does not name
    /// its endpoint; a gRPC call or not as `grpc_call` says, when its
    /// context noted it); a gRPC answer whose status is still to come in
    /// its trailers is returned pending instead, for its body to settle.
    pub(crate) fn record<B>(
        &self,
        service: &ServiceName,
        outcome: &Result<Response<B>, BoxError>,
        started: tokio::time::Instant,
        served_by: Option<&EndpointId>,
        grpc_call: Option<bool>,
    ) -> CountAtEnd {
        let elapsed = started.elapsed();
        match outcome {
            Ok(response) => {
                let endpoint = response
                    .extensions()
                    .get::<SelectedEndpoint>()
                    .map(|e| e.0.id())
                    .or(served_by);
                let answer = grpc::Answer::of_call(grpc_call, response);
                if answer == grpc::Answer::Streamed {
                    return CountAtEnd(Some(PendingCall {
                        service: service.clone(),
                        endpoint: endpoint.cloned(),
                        started,
                    }));
                }
                let cell = match answer.deciding_code(response.status()) {
                    Some(code) => Cell::grpc(code),
                    None => Cell::status(response.status()),
                };
                self.count(service, endpoint, cell, elapsed);
            }
            Err(error) => {
                let endpoint = MeshError::endpoint_of(&**error);
                let cell = Cell::error(self.classifier.classify_error(&**error));
                self.count(service, endpoint, cell, elapsed);
            }
        }
        CountAtEnd(None)
    }

    /// The name of a service already counted whose name is `host`: the
    /// map's own key, so that naming a call by its URI's host allocates
    /// only on the service's first call (or one written in upper case).
    pub(crate) fn service_named(&self, host: &str) -> Option<ServiceName> {
        let map = self.by_service.load();
        map.services
            .get_key_value(host)
            .map(|(name, _)| name.clone())
    }

    /// Adds one call to `service`'s series for `endpoint`, made on its
    /// first call (or its service's `overflow` one, the map full).
    pub(crate) fn count(
        &self,
        service: &ServiceName,
        endpoint: Option<&EndpointId>,
        cell: Cell,
        elapsed: Duration,
    ) {
        let endpoint = endpoint.unwrap_or(&self.none);
        loop {
            let found = {
                let map = self.by_service.load();
                let series = map.services.get(service).and_then(|s| s.get(endpoint));
                series.map(|series| series.record(cell, elapsed))
            };
            let counted = match found {
                Some(counted) => counted,
                None => self.insert(service, endpoint).record(cell, elapsed),
            };
            if counted {
                return;
            }
            // Removed meanwhile: once the scrape that removed it lets go
            // of the map, the call is counted in the map as it is then.
            drop(self.lock());
        }
    }

    /// The lock on changes to the map.
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `service`'s series for `endpoint`, made on its first call; when the
    /// map is full, its `overflow` series, or the `overflow` service's for
    /// a service not seen yet.
    fn insert(&self, service: &ServiceName, endpoint: &EndpointId) -> Arc<Series> {
        let _writing = self.lock();
        let current = self.by_service.load();
        let full = current.len >= MAX_SERIES;
        // Services can be named by request data (a stack assembled by
        // hand names them by the URI's host): past the bound a new one
        // adds nothing. Overflow series then add at most one per service
        // already kept, and one for the `overflow` service.
        let service = match full && !current.services.contains_key(service) {
            true => &self.overflow_service,
            false => service,
        };
        let kept = |endpoint| current.services.get(service).and_then(|s| s.get(endpoint));
        // Made meanwhile by another call's first count: its own series.
        if let Some(series) = kept(endpoint) {
            return Arc::clone(series);
        }
        let endpoint = if full { &self.overflow } else { endpoint };
        if let Some(series) = kept(endpoint) {
            return Arc::clone(series);
        }
        let mut map = Map::clone(&current);
        let endpoints = map.services.entry(service.clone()).or_default();
        let series = Arc::<Series>::default();
        Arc::make_mut(endpoints).insert(endpoint.clone(), Arc::clone(&series));
        map.len += 1;
        self.by_service.store(Arc::new(map));
        series
    }

    /// Every series, for a scrape; afterwards the series of endpoints
    /// `still_listed` refuses are removed once this scrape has shown their
    /// last count. `still_listed` gets `None` for a service's `none` and
    /// `overflow` series (whether the service itself is still known).
    pub(crate) fn scrape(
        &self,
        still_listed: impl Fn(&ServiceName, Option<&EndpointId>) -> bool,
    ) -> Vec<SeriesSnapshot> {
        let mut snapshots = Vec::new();
        let mut stale = Vec::new();
        {
            let map = self.by_service.load();
            for (service, endpoints) in &map.services {
                for (endpoint, series) in endpoints.iter() {
                    let snapshot = series.snapshot(service, endpoint);
                    let shown = series.scraped.swap(snapshot.count, Ordering::Relaxed);
                    let real = endpoint != &self.none && endpoint != &self.overflow;
                    let listed = still_listed(service, real.then_some(endpoint));
                    if !listed && shown == snapshot.count {
                        // The last scrape showed its last count already.
                        stale.push((service.clone(), endpoint.clone()));
                    } else {
                        snapshots.push(snapshot);
                    }
                }
            }
        }
        if !stale.is_empty() {
            self.remove(&stale);
        }
        snapshots.sort_by(|a, b| (&a.service, &a.endpoint).cmp(&(&b.service, &b.endpoint)));
        snapshots
    }

    /// Removes the series of `stale` pairs that no call has counted into
    /// since the scrape that found them stale.
    /// A call that counts into one of them meanwhile either comes before
    /// its seal (the series is kept) or after (it counts itself again).
    fn remove(&self, stale: &[(ServiceName, EndpointId)]) {
        let _writing = self.lock();
        let mut map = Map::clone(&self.by_service.load());
        for (service, endpoint) in stale {
            let Some(endpoints) = map.services.get_mut(service) else {
                continue;
            };
            let Some(series) = endpoints.get(endpoint) else {
                continue;
            };
            if series.seal_unless_counted_since(series.scraped.load(Ordering::Relaxed)) {
                Arc::make_mut(endpoints).remove(endpoint);
                map.len -= 1;
            }
            if endpoints.is_empty() {
                map.services.remove(service);
            }
        }
        self.by_service.store(Arc::new(map));
    }

    /// How many (service, endpoint) series are kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_service.load().len
    }
}

/// What a response body owes the metrics: nothing (its call is counted
/// already), or the count of a gRPC call whose status comes in its
/// trailers, paid when the body ends or as `CANCELLED` when it is dropped
/// first. The body wrapper that holds it (the facade's, the request
/// metrics layer's) shows it each polled frame and cancels it on drop.
#[derive(Debug, Default)]
pub(crate) struct CountAtEnd(Option<PendingCall>);

// === impl CountAtEnd ===

impl CountAtEnd {
    /// Whether the call still waits for its body to end.
    pub(crate) fn is_pending(&self) -> bool {
        self.0.is_some()
    }

    /// Counts the call into `metrics` once `polled` (the body's last
    /// `poll_frame`) ends its body: trailers, the end, an error, or a data
    /// frame after which the body says it has ended (`ended`: a reader
    /// that knows the length never asks for the end).
    pub(crate) fn observe<D, E>(
        &mut self,
        metrics: &CallMetrics,
        polled: &Poll<Option<Result<Frame<D>, E>>>,
        ended: bool,
    ) {
        if self.0.is_none() {
            return;
        }
        let end = BodyEnd::of(polled).or_else(|| {
            let data = matches!(polled, Poll::Ready(Some(Ok(f))) if f.is_data());
            (data && ended).then_some(BodyEnd::NoStatus)
        });
        if let Some(end) = end {
            if let Some(pending) = self.0.take() {
                pending.settle(metrics, end);
            }
        }
    }

    /// Counts a call whose body has not ended as `CANCELLED`: for the
    /// wrapper's `Drop`, the body given up before its end.
    pub(crate) fn cancel(&mut self, metrics: &CallMetrics) {
        if let Some(pending) = self.0.take() {
            pending.cancel(metrics);
        }
    }
}

// === impl PendingCall ===

impl PendingCall {
    /// Counts the call with the status its body ended with.
    fn settle(self, metrics: &CallMetrics, end: BodyEnd) {
        let cell = match end {
            BodyEnd::Broken => Cell::error(FailureKind::Reset),
            end => Cell::grpc(end.code()),
        };
        self.count(metrics, cell);
    }

    /// Counts the call as `CANCELLED`: its body was dropped before its
    /// end, as a gRPC client reports a call it gave up.
    fn cancel(self, metrics: &CallMetrics) {
        let cancelled = GrpcCode::new(1).unwrap_or(GrpcCode::UNKNOWN);
        self.count(metrics, Cell::grpc(cancelled));
    }

    fn count(self, metrics: &CallMetrics, cell: Cell) {
        let elapsed = self.started.elapsed();
        metrics.count(&self.service, self.endpoint.as_ref(), cell, elapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> ServiceName {
        ServiceName::new(name).expect("name")
    }

    fn endpoint(n: usize) -> EndpointId {
        EndpointId::new(&format!("10.0.{}.{}:80", n / 256, n % 256)).expect("id")
    }

    fn ok() -> Cell {
        Cell::status(http::StatusCode::OK)
    }

    /// Calls counting into a series that scrapes keep removing (its
    /// endpoint no longer listed) are each counted once: every removed
    /// series' last count was shown, and a call that raced a removal
    /// counted itself again in the new series.
    #[test]
    fn counts_racing_the_removal_of_their_series_are_neither_lost_nor_doubled() {
        const CALLS: u64 = 200_000;
        let metrics = Arc::new(CallMetrics::default());
        let (users, gone) = (service("users"), endpoint(1));
        let caller = {
            let (metrics, users, gone) = (Arc::clone(&metrics), users.clone(), gone.clone());
            std::thread::spawn(move || {
                for _ in 0..CALLS {
                    metrics.count(&users, Some(&gone), ok(), Duration::from_micros(5));
                }
            })
        };
        // Every series the pair ever had: one can only be removed by a
        // scrape after the one that showed it, so looking after each
        // scrape sees them all.
        let current = || {
            let map = metrics.by_service.load();
            map.services.get(&users).and_then(|s| s.get(&gone)).cloned()
        };
        let mut seen: Vec<Arc<Series>> = Vec::new();
        let look = |seen: &mut Vec<Arc<Series>>| {
            metrics.scrape(|_, _| false);
            if let Some(series) = current() {
                if !seen.iter().any(|s| Arc::ptr_eq(s, &series)) {
                    seen.push(series);
                }
            }
        };
        while !caller.is_finished() {
            look(&mut seen);
        }
        caller.join().expect("caller");
        look(&mut seen);
        // A removed series counts what its last scrape showed (a call
        // that raced the removal counted itself again elsewhere); the
        // live one, everything.
        let live = current();
        let counted: u64 = seen
            .iter()
            .map(|s| match &live {
                Some(live) if Arc::ptr_eq(s, live) => s.calls.load(Ordering::Relaxed),
                _ => s.scraped.load(Ordering::Relaxed),
            })
            .sum();
        assert!(seen.len() > 1, "the series was never removed");
        assert_eq!(counted, CALLS);
    }

    #[test]
    fn cells_name_their_class_code_or_error() {
        let labels = Cell::status(http::StatusCode::SERVICE_UNAVAILABLE).labels();
        assert_eq!((labels.status_class, labels.grpc_code), ("5xx", ""));
        let labels = Cell::grpc(GrpcCode::UNAVAILABLE).labels();
        assert_eq!(
            (labels.status_class, labels.grpc_code),
            ("2xx", "UNAVAILABLE")
        );
        let labels = Cell::grpc(GrpcCode::new(16).expect("code")).labels();
        assert_eq!(labels.grpc_code, "UNAUTHENTICATED");
        let labels = Cell::error(FailureKind::Timeout).labels();
        assert_eq!((labels.status_class, labels.error), ("error", "timeout"));
        assert_eq!(Cell::error(FailureKind::Other).labels().error, "other");
    }

    #[test]
    fn latencies_fall_in_the_first_bucket_at_or_above_them() {
        let metrics = CallMetrics::default();
        let users = service("users");
        let a = endpoint(1);
        for ms in [1, 20, 20, 300, 20_000] {
            metrics.count(&users, Some(&a), ok(), Duration::from_millis(ms));
        }
        let [s] = &metrics.scrape(|_, _| true)[..] else {
            panic!("one series")
        };
        let at =
            |bound: f64| -> u64 { s.buckets.iter().filter(|b| b.0 <= bound).map(|b| b.1).sum() };
        assert_eq!(at(0.001), 1, "1 ms is at or below 1 ms");
        assert_eq!(at(0.025), 3);
        assert_eq!(at(0.5), 4);
        assert_eq!(at(10.0), 4);
        assert_eq!(at(f64::INFINITY), 5);
        assert_eq!(s.count, 5);
        assert!((s.sum_seconds - 20.341).abs() < 1e-9, "{}", s.sum_seconds);
        assert_eq!(s.outcomes, vec![(ok().labels(), 5)]);
    }

    #[test]
    fn endpoints_churning_by_the_thousand_stay_bounded_and_every_call_is_counted() {
        let metrics = CallMetrics::default();
        let users = service("users");
        let calls = MAX_SERIES + 1000;
        for n in 0..calls {
            metrics.count(&users, Some(&endpoint(n)), ok(), Duration::ZERO);
        }
        assert_eq!(
            metrics.len(),
            MAX_SERIES + 1,
            "the bound, and one overflow series"
        );
        let counted: u64 = metrics.scrape(|_, _| true).iter().map(|s| s.count).sum();
        assert_eq!(counted, calls as u64, "no call lost");
        let overflow = metrics
            .scrape(|_, _| true)
            .into_iter()
            .find(|s| s.endpoint.to_string() == OVERFLOW_ENDPOINT)
            .expect("overflow series");
        assert_eq!(overflow.count, 1000);
    }

    #[test]
    fn services_named_by_the_thousand_stay_bounded_and_every_call_is_counted() {
        let metrics = CallMetrics::default();
        let calls = MAX_SERIES + 10_000;
        for n in 0..calls {
            let host = service(&format!("host-{n}"));
            metrics.count(&host, None, ok(), Duration::ZERO);
        }
        assert_eq!(
            metrics.len(),
            MAX_SERIES + 1,
            "the bound, and one overflow series"
        );
        let scraped = metrics.scrape(|_, _| true);
        let counted: u64 = scraped.iter().map(|s| s.count).sum();
        assert_eq!(counted, calls as u64, "no call lost");
        let overflow = scraped
            .iter()
            .find(|s| s.service.as_str() == OVERFLOW_ENDPOINT)
            .expect("overflow service");
        assert_eq!(overflow.count, 10_000);
    }

    #[test]
    fn a_removed_endpoint_leaves_once_a_scrape_has_shown_its_last_count() {
        let metrics = CallMetrics::default();
        let users = service("users");
        let (kept, gone) = (endpoint(1), endpoint(2));
        metrics.count(&users, Some(&kept), ok(), Duration::ZERO);
        metrics.count(&users, Some(&gone), ok(), Duration::ZERO);
        let listed = |_: &ServiceName, e: Option<&EndpointId>| e != Some(&gone);
        // The first scrape shows its count: it stays for this one.
        assert_eq!(metrics.scrape(listed).len(), 2);
        // A call lands after that scrape: shown by the next one, not lost.
        metrics.count(&users, Some(&gone), ok(), Duration::ZERO);
        let second = metrics.scrape(listed);
        let shown = second.iter().find(|s| s.endpoint == gone).expect("shown");
        assert_eq!(shown.count, 2);
        // Nothing new: gone.
        let third = metrics.scrape(listed);
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].endpoint, kept);
        assert_eq!(metrics.len(), 1);
    }

    #[test]
    fn a_pending_grpc_call_counts_its_trailers_status_or_cancelled() {
        let metrics = CallMetrics::default();
        let users = service("users");
        let pending = || PendingCall {
            service: users.clone(),
            endpoint: Some(endpoint(1)),
            started: tokio::time::Instant::now(),
        };
        pending().settle(&metrics, BodyEnd::Status(GrpcCode::NOT_FOUND));
        pending().settle(&metrics, BodyEnd::NoStatus);
        pending().cancel(&metrics);
        let [s] = &metrics.scrape(|_, _| true)[..] else {
            panic!("one series")
        };
        let codes: Vec<&str> = s.outcomes.iter().map(|(l, _)| l.grpc_code).collect();
        assert_eq!(codes, ["CANCELLED", "NOT_FOUND", "INTERNAL"]);
    }

    #[test]
    fn a_body_settles_its_call_at_trailers_or_at_a_last_data_frame_and_not_before() {
        let metrics = CallMetrics::default();
        let users = service("users");
        let grpc = || {
            let response = Response::builder()
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .body(())
                .expect("response");
            let at_end = metrics.record(
                &users,
                &Ok(response),
                tokio::time::Instant::now(),
                None,
                None,
            );
            assert!(at_end.is_pending(), "the status is still to come");
            at_end
        };
        type Polled = Poll<Option<Result<Frame<bytes::Bytes>, ()>>>;
        let data: Polled = Poll::Ready(Some(Ok(Frame::data(bytes::Bytes::new()))));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
        let trailers: Polled = Poll::Ready(Some(Ok(Frame::trailers(trailers))));

        let mut by_trailers = grpc();
        by_trailers.observe(&metrics, &data, false);
        let pending: Polled = Poll::Pending;
        by_trailers.observe(&metrics, &pending, false);
        assert!(by_trailers.is_pending(), "a message and a wait end nothing");
        by_trailers.observe(&metrics, &trailers, true);
        assert!(!by_trailers.is_pending());
        let mut by_length = grpc();
        by_length.observe(&metrics, &data, true);
        by_length.cancel(&metrics);
        let mut given_up = grpc();
        given_up.cancel(&metrics);
        given_up.cancel(&metrics);

        let [s] = &metrics.scrape(|_, _| true)[..] else {
            panic!("one series")
        };
        let codes: Vec<(&str, u64)> = s.outcomes.iter().map(|(l, n)| (l.grpc_code, *n)).collect();
        assert_eq!(codes, [("CANCELLED", 1), ("NOT_FOUND", 1), ("INTERNAL", 1)]);
        assert_eq!(s.endpoint.as_str(), NO_ENDPOINT);
    }
}
