//! One gRPC health `Check` of an endpoint (`grpc.health.v1`), and what
//! `Check` and `Watch` share: the request, the reading of a status, the
//! wording of a failure.

use mesh_core::ext::{SelectedEndpoint, TargetService};
use mesh_core::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::Prober;
use crate::grpc::GrpcProbeClient;

// === impl Prober ===

impl Prober {
    /// One `Check` of `service` on `endpoint`: `SERVING` passes, any other
    /// answer or error fails. The caller bounds it by the timeout, which is
    /// also sent as the call's `grpc-timeout`.
    pub(super) async fn grpc_check(&self, endpoint: Endpoint, service: &str) -> Result<(), String> {
        let addr = endpoint.address();
        let mut client = self.health_client(&endpoint)?;
        let mut request = self.health_request(endpoint, service);
        request.set_timeout(self.config.timeout);
        let response = client
            .check(request)
            .await
            .map_err(|status| format!("gRPC health Check of {addr}: {}", describe(&status)))?;
        serving(response.get_ref().status)
            .map_err(|answer| format!("gRPC health Check of {addr}: {answer}"))
    }

    /// The generated health client, aimed at `endpoint`.
    pub(super) fn health_client(
        &self,
        endpoint: &Endpoint,
    ) -> Result<HealthClient<GrpcProbeClient>, String> {
        let addr = endpoint.address();
        let origin = format!("{}://{addr}", self.grpc_scheme)
            .parse::<http::Uri>()
            .map_err(|e| format!("gRPC health probe URI for {addr}: {e}"))?;
        Ok(HealthClient::with_origin(self.grpc_client.clone(), origin))
    }

    /// A request about `service`, carrying the extensions a mesh's client
    /// picks the peer identity by.
    pub(super) fn health_request(
        &self,
        endpoint: Endpoint,
        service: &str,
    ) -> tonic::Request<HealthCheckRequest> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        request
            .extensions_mut()
            .insert(TargetService(self.service.clone()));
        request.extensions_mut().insert(SelectedEndpoint(endpoint));
        request
    }
}

/// Whether a response's status field says `SERVING`; the failure names the
/// answer. Any integer may arrive off the wire: an unknown one fails, it
/// never panics.
pub(super) fn serving(status: i32) -> Result<(), String> {
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(other.as_str_name().to_owned()),
        Err(_) => Err(format!(
            "serving status {status}, which the protocol does not define"
        )),
    }
}

/// A failed call in a line: the code, the message, then each cause the
/// message does not already say (tonic's own `Display` prints causes with
/// `Debug`).
pub(super) fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}", status.code());
    if !status.message().is_empty() {
        text.push_str(": ");
        text.push_str(status.message());
    }
    let mut next = std::error::Error::source(status);
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_serving_passes_and_unknown_numbers_fail_without_panicking() {
        assert_eq!(serving(ServingStatus::Serving.into()), Ok(()));
        for (status, answer) in [
            (ServingStatus::Unknown, "UNKNOWN"),
            (ServingStatus::NotServing, "NOT_SERVING"),
            (ServingStatus::ServiceUnknown, "SERVICE_UNKNOWN"),
        ] {
            assert_eq!(serving(status.into()), Err(answer.to_owned()));
        }
        for odd in [4, -1, i32::MAX, i32::MIN] {
            let error = serving(odd).expect_err("not a status");
            assert!(error.contains(&odd.to_string()), "{error}");
        }
    }

    #[test]
    fn a_failure_says_its_code_message_and_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(io));
        assert_eq!(describe(&status), "Unknown: refused");
        let status = tonic::Status::unimplemented("");
        assert_eq!(describe(&status), "Unimplemented");
    }
}
