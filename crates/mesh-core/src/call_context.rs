//! One call's notes, shared by the layers it passes through.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::Request;

use crate::clock::Nanos;
use crate::endpoint::Endpoint;
use crate::ext::Deadline;
use crate::name::ServiceName;
use crate::set::EndpointSet;

/// What the layers of one call tell each other: the call's deadline (from
/// the caller or retry), whether it is a gRPC call (from retry), the
/// service's endpoints (from discovery), the endpoint chosen for the
/// current attempt (by the balancer) and when a layer below will have
/// ended that attempt (the breaker's call timeout).
///
/// One shared value per call instead of one extension per note: each
/// [`http::Extensions`] insert boxes its value, and a note on the
/// response would box a second map, so a context costs one allocation
/// where the notes it replaces cost up to eight. It is shared by every
/// attempt of the call (a clone of the request carries the same context),
/// so the layer that sent an attempt reads the endpoint the balancer
/// chose for it after the request has moved down the stack, whether the
/// attempt answered, failed or was cancelled.
///
/// The retry layer attaches one to each call, and gives each hedged copy
/// its own; the facade and `RequestMetricsLayer` attach one to read the
/// endpoint back. A request without one (layers used alone, below no retry
/// layer) carries the notes as extensions instead ([`crate::EndpointSet`],
/// [`crate::ext::SelectedEndpoint`]). A context belongs to one call: two
/// calls sent at once with the same context would read each other's
/// deadline and endpoint. A caller that wants to know where its request
/// went attaches one before sending:
///
/// ```
/// use mesh_core::ext::CallContext;
/// let mut req = http::Request::new(());
/// let context = CallContext::attach(&mut req).clone();
/// // ... send `req` through the stack, then:
/// let served_by = context.chosen();
/// assert!(served_by.is_none());
/// ```
#[derive(Clone, Debug, Default)]
pub struct CallContext(Arc<Notes>);

#[derive(Debug)]
struct Notes {
    /// Nanoseconds on [`crate::clock`]; `u64::MAX` for none.
    deadline: AtomicU64,
    /// Nanoseconds on [`crate::clock`]; `u64::MAX` for none.
    attempt_bound: AtomicU64,
    /// Whether the call is a gRPC call: [`UNSEEN`], [`PLAIN`] or [`GRPC`].
    grpc: AtomicU8,
    /// The endpoints and the choice among them, under one lock: a choice
    /// made in the noted set is kept as its position there.
    picks: Mutex<Picks>,
}

/// The service's endpoints and the endpoint chosen for the current
/// attempt.
#[derive(Debug, Default)]
struct Picks {
    endpoints: Option<EndpointSet>,
    chosen: Choice,
}

/// The endpoint chosen for the current attempt.
#[derive(Debug, Default)]
enum Choice {
    /// None yet.
    #[default]
    None,
    /// The endpoint at this position of the noted set: no copy of the
    /// endpoint or its service, whose counts every core shares.
    Noted(usize),
    /// Copies of the endpoint and its service: one of a set not noted
    /// here (one inserted by hand, or another context's choice), or a
    /// choice made in a set since replaced.
    Given(ServiceName, Endpoint),
}

impl Picks {
    /// The chosen endpoint and its service, borrowed.
    fn chosen(&self) -> Option<(&ServiceName, &Endpoint)> {
        match &self.chosen {
            Choice::None => None,
            Choice::Noted(at) => {
                let set = self.endpoints.as_ref()?;
                Some((set.service(), set.endpoints().get(*at)?))
            }
            Choice::Given(service, endpoint) => Some((service, endpoint)),
        }
    }
}

impl Default for Notes {
    fn default() -> Self {
        Notes {
            deadline: AtomicU64::new(NO_DEADLINE),
            attempt_bound: AtomicU64::new(NO_DEADLINE),
            grpc: AtomicU8::new(UNSEEN),
            picks: Mutex::default(),
        }
    }
}

const NO_DEADLINE: u64 = u64::MAX;

/// No layer looked at the request yet.
const UNSEEN: u8 = 0;
/// Not a gRPC call.
const PLAIN: u8 = 1;
/// A gRPC call.
const GRPC: u8 = 2;

/// A poisoned note is still a note: a panic elsewhere must not blind the
/// layers that read it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CallContext {
    /// A context with nothing noted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The context of `req`, if one is attached.
    pub fn of<B>(req: &Request<B>) -> Option<&CallContext> {
        req.extensions().get::<CallContext>()
    }

    /// The context of `req`, attached first if it had none.
    pub fn attach<B>(req: &mut Request<B>) -> &CallContext {
        req.extensions_mut().get_or_insert_default::<CallContext>()
    }

    /// A context for a copy of the call sent alongside it (a hedged
    /// copy): the same deadline and kind of call, its own endpoints and
    /// choice.
    pub fn fork(&self) -> CallContext {
        let copy = CallContext::new();
        let deadline = self.0.deadline.load(Ordering::Relaxed);
        copy.0.deadline.store(deadline, Ordering::Relaxed);
        let grpc = self.0.grpc.load(Ordering::Relaxed);
        copy.0.grpc.store(grpc, Ordering::Relaxed);
        copy
    }

    /// Notes when the call as a whole must be answered.
    pub fn set_deadline(&self, deadline: Deadline) {
        let nanos = deadline.0 .0.min(NO_DEADLINE - 1);
        self.0.deadline.store(nanos, Ordering::Relaxed);
    }

    /// When the call as a whole must be answered, if that was noted.
    pub fn deadline(&self) -> Option<Deadline> {
        match self.0.deadline.load(Ordering::Relaxed) {
            NO_DEADLINE => None,
            nanos => Some(Deadline(Nanos(nanos))),
        }
    }

    /// Notes whether the call is a gRPC call (its request's content type
    /// is `application/grpc`), as the retry layer sees the request, so
    /// that the layers below judge a plain call's answers by their HTTP
    /// status without looking for a gRPC one. A layer below that changed
    /// the request's content type would leave the note behind it.
    pub fn note_grpc_call(&self, grpc: bool) {
        let seen = if grpc { GRPC } else { PLAIN };
        self.0.grpc.store(seen, Ordering::Relaxed);
    }

    /// Whether the call is a gRPC call, if a layer noted it.
    pub fn is_grpc_call(&self) -> Option<bool> {
        match self.0.grpc.load(Ordering::Relaxed) {
            PLAIN => Some(false),
            GRPC => Some(true),
            _ => None,
        }
    }

    /// Notes the endpoints of the call's service (discovery's answer). A
    /// choice already made in the set they replace is kept.
    pub fn set_endpoints(&self, set: EndpointSet) {
        let mut picks = lock(&self.0.picks);
        if let Choice::Noted(_) = picks.chosen {
            picks.chosen = match picks.chosen() {
                Some((service, endpoint)) => Choice::Given(service.clone(), endpoint.clone()),
                None => Choice::None,
            };
        }
        picks.endpoints = Some(set);
    }

    /// Runs `f` on the noted endpoints, without copying them; `None` when
    /// none were noted. The endpoints and the choice are read under one
    /// lock, so `f` must not read them again through this context
    /// (`chosen`, `with_chosen`, `endpoints`...).
    pub fn with_endpoints<R>(&self, f: impl FnOnce(&EndpointSet) -> R) -> Option<R> {
        lock(&self.0.picks).endpoints.as_ref().map(f)
    }

    /// The noted endpoints.
    pub fn endpoints(&self) -> Option<EndpointSet> {
        self.with_endpoints(EndpointSet::clone)
    }

    /// Notes the endpoint chosen for the current attempt, and its service.
    pub fn choose(&self, service: ServiceName, endpoint: Endpoint) {
        lock(&self.0.picks).chosen = Choice::Given(service, endpoint);
    }

    /// Notes the endpoint at position `at` of the set noted here as the
    /// one chosen for the current attempt, if that set is the snapshot
    /// of generation `generation` ([`EndpointSet::generation`]): the
    /// choice is kept as the position, without copying the endpoint or
    /// its service (each copy writes a count every core shares). Returns
    /// whether it was noted; a choice in another set is noted with
    /// [`CallContext::choose`].
    ///
    /// ```
    /// use mesh_core::ext::CallContext;
    /// use mesh_core::{Endpoint, EndpointSet, ServiceName};
    /// let at = |port| Endpoint::builder(([127, 0, 0, 1], port).into()).build();
    /// let set = EndpointSet::new(ServiceName::new("orders")?, vec![at(1), at(2)]);
    /// let context = CallContext::new();
    /// context.set_endpoints(set.clone());
    /// assert!(context.choose_noted(set.generation(), 1));
    /// assert_eq!(context.chosen().map(|e| e.address().port()), Some(2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn choose_noted(&self, generation: u64, at: usize) -> bool {
        let mut picks = lock(&self.0.picks);
        let noted = picks
            .endpoints
            .as_ref()
            .is_some_and(|own| own.generation() == generation && at < own.len());
        if noted {
            picks.chosen = Choice::Noted(at);
        }
        noted
    }

    /// The endpoint chosen for the current attempt, with its service.
    pub fn chosen_with_service(&self) -> Option<(ServiceName, Endpoint)> {
        let picks = lock(&self.0.picks);
        let (service, endpoint) = picks.chosen()?;
        Some((service.clone(), endpoint.clone()))
    }

    /// Runs `f` on the endpoint chosen for the current attempt and its
    /// service, without copying them (each copy writes a count every core
    /// shares); `None` before the balancer chose. The endpoints and the
    /// choice are read under one lock, so `f` must not read them again
    /// through this context.
    pub fn with_chosen<R>(&self, f: impl FnOnce(&ServiceName, &Endpoint) -> R) -> Option<R> {
        let picks = lock(&self.0.picks);
        let (service, endpoint) = picks.chosen()?;
        Some(f(service, endpoint))
    }

    /// The endpoint chosen for the current attempt.
    pub fn chosen(&self) -> Option<Endpoint> {
        lock(&self.0.picks).chosen().map(|(_, e)| e.clone())
    }

    /// A new attempt starts: the last one's endpoint and bound are not
    /// its own.
    pub fn begin_attempt(&self) {
        lock(&self.0.picks).chosen = Choice::None;
        self.0.attempt_bound.store(NO_DEADLINE, Ordering::Relaxed);
    }

    /// Notes that a layer below ends the current attempt by `until` at the
    /// latest (a timer of its own that fails the call then), so that a
    /// layer above whose own limit is no earlier needs no timer. The note
    /// holds while the returned guard lives: the layer drops it once it no
    /// longer bounds the attempt (its call answered, or was dropped), and
    /// a layer above that still waits then sets its own timer.
    #[must_use = "the bound is withdrawn when the guard is dropped"]
    pub fn bound_attempt(&self, until: Nanos) -> AttemptBound {
        let nanos = until.0.min(NO_DEADLINE - 1);
        self.0.attempt_bound.fetch_min(nanos, Ordering::Relaxed);
        AttemptBound {
            context: self.clone(),
            nanos,
        }
    }

    /// When a layer below will have ended the current attempt, if one
    /// said.
    pub fn attempt_bound(&self) -> Option<Nanos> {
        match self.0.attempt_bound.load(Ordering::Relaxed) {
            NO_DEADLINE => None,
            nanos => Some(Nanos(nanos)),
        }
    }

    /// Takes over `other`'s choice of endpoint, and nothing else (a hedged
    /// copy that answered, into the call's own context).
    pub fn adopt_choice(&self, other: &CallContext) {
        if Arc::ptr_eq(&self.0, &other.0) {
            return;
        }
        lock(&self.0.picks).chosen = match other.chosen_with_service() {
            Some((service, endpoint)) => Choice::Given(service, endpoint),
            None => Choice::None,
        };
    }
}

/// A layer's promise that the current attempt ends by a time, noted in
/// its call's context ([`CallContext::bound_attempt`]) and withdrawn when
/// dropped.
#[derive(Debug)]
pub struct AttemptBound {
    context: CallContext,
    nanos: u64,
}

impl Drop for AttemptBound {
    fn drop(&mut self) {
        // Only this note: an earlier one noted since stays (and one
        // withdrawn early only makes the layer above set its own timer).
        let bound = &self.context.0.attempt_bound;
        let _ = bound.compare_exchange(
            self.nanos,
            NO_DEADLINE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The deadline of `req`: the earlier of its call context's and a
/// [`Deadline`] inserted by hand.
pub fn deadline_of<B>(req: &Request<B>) -> Option<Deadline> {
    let noted = CallContext::of(req).and_then(CallContext::deadline);
    let by_hand = req.extensions().get::<Deadline>().copied();
    match (noted, by_hand) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Runs `f` on the endpoints of `req`'s service: those noted in its call
/// context (discovery's answer), else an [`EndpointSet`] inserted by hand.
/// The context's endpoints are read under its lock: `f` must not read
/// its endpoints or choice again through the context.
pub fn with_endpoint_set<B, R>(req: &Request<B>, f: impl FnOnce(&EndpointSet) -> R) -> Option<R> {
    with_endpoint_set_from(req, |set, _| f(set))
}

/// As [`with_endpoint_set`], telling `f` whether the endpoints are the
/// ones the call context noted (`true`) or a set inserted by hand: a
/// choice among the noted ones can be noted by its position
/// ([`CallContext::choose_noted`]).
pub fn with_endpoint_set_from<B, R>(
    req: &Request<B>,
    f: impl FnOnce(&EndpointSet, bool) -> R,
) -> Option<R> {
    if let Some(context) = CallContext::of(req) {
        if let Some(set) = lock(&context.0.picks).endpoints.as_ref() {
            return Some(f(set, true));
        }
    }
    req.extensions()
        .get::<EndpointSet>()
        .map(|set| f(set, false))
}

/// The endpoint chosen for `req`: the balancer's choice noted in its call
/// context, else a [`crate::ext::SelectedEndpoint`] (the balancer's, on a
/// request without a context, or one set by hand: a health probe aimed at
/// one endpoint).
pub fn chosen_endpoint<B>(req: &Request<B>) -> Option<Endpoint> {
    if let Some(chosen) = CallContext::of(req).and_then(CallContext::chosen) {
        return Some(chosen);
    }
    let selected = req.extensions().get::<crate::ext::SelectedEndpoint>()?;
    Some(selected.0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint::builder(std::net::SocketAddr::from(([127, 0, 0, 1], port))).build()
    }

    fn users() -> ServiceName {
        ServiceName::new("users").expect("name")
    }

    #[test]
    fn a_request_made_with_the_context_shares_it() {
        let mut req = Request::new(());
        let context = CallContext::attach(&mut req).clone();
        let copy = Request::builder()
            .extension(CallContext::of(&req).expect("attached").clone())
            .body(())
            .expect("request");
        CallContext::of(&copy)
            .expect("carried")
            .choose(users(), endpoint(1));
        assert_eq!(context.chosen().map(|e| e.address().port()), Some(1));
        assert!(
            Arc::ptr_eq(&CallContext::attach(&mut req).0, &context.0),
            "attaching twice keeps the first"
        );
    }

    #[test]
    fn discoverys_endpoints_win_over_a_set_inserted_by_hand() {
        let mut req = Request::new(());
        let by_hand = EndpointSet::new(users(), vec![endpoint(2), endpoint(3)]);
        req.extensions_mut().insert(by_hand);
        assert_eq!(with_endpoint_set(&req, EndpointSet::len), Some(2));
        CallContext::attach(&mut req);
        assert_eq!(
            with_endpoint_set(&req, EndpointSet::len),
            Some(2),
            "a context with no endpoints noted falls back to the extension"
        );
        let discovered = EndpointSet::new(users(), vec![endpoint(1)]);
        CallContext::attach(&mut req).set_endpoints(discovered);
        assert_eq!(with_endpoint_set(&req, EndpointSet::len), Some(1));
    }

    #[test]
    fn the_balancers_choice_wins_over_an_endpoint_named_by_hand() {
        let mut req = Request::new(());
        let by_hand = crate::ext::SelectedEndpoint(endpoint(9));
        req.extensions_mut().insert(by_hand);
        assert_eq!(chosen_endpoint(&req).map(|e| e.address().port()), Some(9));
        CallContext::attach(&mut req).choose(users(), endpoint(1));
        assert_eq!(chosen_endpoint(&req).map(|e| e.address().port()), Some(1));
    }

    #[test]
    fn a_new_attempt_forgets_the_last_choice_and_bound_and_a_copy_hands_its_choice_over() {
        let call = CallContext::new();
        call.choose(users(), endpoint(1));
        let _nine = call.bound_attempt(Nanos(9));
        let _twelve = call.bound_attempt(Nanos(12));
        assert_eq!(call.attempt_bound(), Some(Nanos(9)), "the earliest bound");
        call.begin_attempt();
        assert!(call.chosen().is_none());
        assert_eq!(call.attempt_bound(), None);
        let copy = CallContext::new();
        copy.choose(users(), endpoint(2));
        call.adopt_choice(&copy);
        assert_eq!(call.chosen().map(|e| e.address().port()), Some(2));
        call.adopt_choice(&call.clone());
        assert_eq!(call.chosen().map(|e| e.address().port()), Some(2));
    }

    #[test]
    fn a_choice_in_the_noted_set_is_read_from_it_and_outlives_a_new_set() {
        let call = CallContext::new();
        let set = EndpointSet::new(users(), vec![endpoint(1), endpoint(2)]);
        assert!(!call.choose_noted(set.generation(), 1), "no set noted");
        call.set_endpoints(set.clone());
        let other = EndpointSet::new(users(), vec![endpoint(1), endpoint(2)]);
        assert!(!call.choose_noted(other.generation(), 1), "another set");
        assert!(!call.choose_noted(set.generation(), 2), "past the end");
        assert!(call.chosen().is_none());
        assert!(call.choose_noted(set.generation(), 1));
        let chosen = call.chosen().expect("chosen");
        assert!(Arc::ptr_eq(chosen.state(), set.endpoints()[1].state()));
        let named = call.with_chosen(|s, e| (s.clone(), e.address().port()));
        assert_eq!(named, Some((users(), 2)));
        // Discovery notes a newer set: the choice made in the old one stays.
        call.set_endpoints(EndpointSet::new(users(), vec![endpoint(3)]));
        assert_eq!(call.chosen().map(|e| e.address().port()), Some(2));
        assert_eq!(call.with_endpoints(EndpointSet::len), Some(1));
        call.begin_attempt();
        assert!(call.chosen().is_none());
    }

    #[test]
    fn a_fork_keeps_the_deadline_and_the_kind_of_call_and_nothing_else() {
        let call = CallContext::new();
        assert_eq!(call.deadline(), None);
        assert_eq!(call.is_grpc_call(), None, "not noted yet");
        call.set_deadline(Deadline(Nanos(42)));
        call.note_grpc_call(true);
        call.choose(users(), endpoint(1));
        let copy = call.fork();
        assert_eq!(copy.deadline(), Some(Deadline(Nanos(42))));
        assert_eq!(copy.is_grpc_call(), Some(true));
        assert!(copy.chosen().is_none());
        call.note_grpc_call(false);
        assert_eq!(call.is_grpc_call(), Some(false));
        assert_eq!(copy.is_grpc_call(), Some(true), "a note of its own");
    }

    #[test]
    fn the_earlier_of_the_noted_and_the_hand_deadline_holds() {
        let mut req = Request::new(());
        req.extensions_mut().insert(Deadline(Nanos(7)));
        assert_eq!(deadline_of(&req), Some(Deadline(Nanos(7))));
        CallContext::attach(&mut req).set_deadline(Deadline(Nanos(9)));
        assert_eq!(deadline_of(&req), Some(Deadline(Nanos(7))));
        CallContext::attach(&mut req).set_deadline(Deadline(Nanos(5)));
        assert_eq!(deadline_of(&req), Some(Deadline(Nanos(5))));
    }

    #[test]
    fn a_bound_holds_while_its_guard_lives() {
        let call = CallContext::new();
        let bound = call.bound_attempt(Nanos(9));
        assert_eq!(call.attempt_bound(), Some(Nanos(9)));
        drop(bound);
        assert_eq!(call.attempt_bound(), None, "withdrawn");
        let later = call.bound_attempt(Nanos(12));
        let earlier = call.bound_attempt(Nanos(9));
        drop(later);
        assert_eq!(call.attempt_bound(), Some(Nanos(9)), "the earlier stays");
        drop(earlier);
        assert_eq!(call.attempt_bound(), None);
    }
}
