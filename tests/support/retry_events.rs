//! What the retry layer reported: the services its events name.

use mesh::core::{MeshEvent, ServiceName};
use tokio::sync::broadcast;

/// The service each retry event received so far names (`RetryScheduled`,
/// `RetriesExhausted`, `RetryBudgetExhausted`), in order; other events
/// are passed over.
pub fn services_named(events: &mut broadcast::Receiver<MeshEvent>) -> Vec<Option<ServiceName>> {
    let mut named = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            MeshEvent::RetryScheduled { service, .. }
            | MeshEvent::RetriesExhausted { service, .. }
            | MeshEvent::RetryBudgetExhausted { service, .. } => named.push(service),
            _ => {}
        }
    }
    named
}
