//! The `grpc.health.v1.Health` service, answered from a
//! [`HealthCheckManager`]'s readiness.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use mesh_core::{Probe, ProbeStatus};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::manager::HealthCheckManager;

/// The gRPC health service of a tonic server, answering from `manager`'s
/// readiness for the whole server (the empty service name): add it with
/// `Server::builder().add_service(health_service(&manager))`, or route
/// `/grpc.health.v1.Health/*` to it in any HTTP/2 server.
///
/// The same as `ReadinessHealth::new(manager.clone()).into_server()`; see
/// [`ReadinessHealth`] for what it answers and for naming services.
///
/// ```
/// use mesh_health::{grpc, HealthCheckManager};
/// let manager = HealthCheckManager::builder().build()?;
/// let service = grpc::health_service(&manager);
/// # let _ = service;
/// # Ok::<(), mesh_core::ConfigError>(())
/// ```
pub fn health_service(manager: &HealthCheckManager) -> HealthServer<ReadinessHealth> {
    ReadinessHealth::new(manager.clone()).into_server()
}

/// `grpc.health.v1.Health` answered from a manager's readiness probe.
///
/// `Check` answers `SERVING` while readiness passes (healthy or degraded)
/// and `NOT_SERVING` otherwise: while a critical check fails, before
/// startup has passed, and from [`HealthCheckManager::shutdown`] on, so
/// gRPC clients drain the server as HTTP probes do. `Watch` sends the
/// status at once, then each change of it, as the manager reports it
/// (no polling); only changes of `SERVING` versus `NOT_SERVING` are sent,
/// not healthy versus degraded.
///
/// It answers for the empty service name (the whole server) and for the
/// names given to [`ReadinessHealth::service`], all with the same
/// readiness. Any other name is unknown, as the protocol says: `Check`
/// fails with `NOT_FOUND`, `Watch` sends `SERVICE_UNKNOWN` and stays open.
#[derive(Clone, Debug)]
pub struct ReadinessHealth {
    manager: HealthCheckManager,
    services: Arc<Vec<String>>,
}

// === impl ReadinessHealth ===

impl ReadinessHealth {
    /// Answers for the whole server from `manager`'s readiness.
    pub fn new(manager: HealthCheckManager) -> Self {
        ReadinessHealth {
            manager,
            services: Arc::new(Vec::new()),
        }
    }

    /// Answers for `name` too (`users.v1.Users`): clients configured to ask
    /// about the service rather than the server get the same readiness.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.services).push(name.into());
        self
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> HealthServer<ReadinessHealth> {
        HealthServer::new(self)
    }

    fn knows(&self, service: &str) -> bool {
        service.is_empty() || self.services.iter().any(|s| s == service)
    }
}

#[tonic::async_trait]
impl Health for ReadinessHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        if !self.knows(service) {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        let status = serving(self.manager.status(Probe::Readiness));
        Ok(Response::new(response(status)))
    }

    type WatchStream = ReadinessWatch;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<ReadinessWatch>, Status> {
        let readiness = self
            .knows(&request.get_ref().service)
            .then(|| WatchStream::new(self.manager.subscribe(Probe::Readiness)));
        Ok(Response::new(ReadinessWatch {
            readiness,
            last: None,
        }))
    }
}

/// The stream of statuses a `Watch` call on [`ReadinessHealth`] answers:
/// the current one, then each change. It ends if the manager is dropped;
/// for an unknown service it sends `SERVICE_UNKNOWN` once and stays open.
pub struct ReadinessWatch {
    /// `None` for an unknown service.
    readiness: Option<WatchStream<ProbeStatus>>,
    last: Option<ServingStatus>,
}

// === impl ReadinessWatch ===

impl Stream for ReadinessWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(readiness) = &mut this.readiness else {
            // Names are fixed at construction: an unknown service never
            // becomes known, so after saying so there is nothing to wake for.
            if this.last.is_some() {
                return Poll::Pending;
            }
            this.last = Some(ServingStatus::ServiceUnknown);
            return Poll::Ready(Some(Ok(response(ServingStatus::ServiceUnknown))));
        };
        loop {
            let Some(status) = ready!(Pin::new(&mut *readiness).poll_next(cx)) else {
                return Poll::Ready(None);
            };
            let status = serving(status);
            // Healthy to degraded is a change for the manager, not for gRPC.
            if this.last != Some(status) {
                this.last = Some(status);
                return Poll::Ready(Some(Ok(response(status))));
            }
        }
    }
}

impl std::fmt::Debug for ReadinessWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessWatch")
            .field("known", &self.readiness.is_some())
            .field("last", &self.last)
            .finish()
    }
}

fn serving(readiness: ProbeStatus) -> ServingStatus {
    match readiness.passes() {
        true => ServingStatus::Serving,
        false => ServingStatus::NotServing,
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}
