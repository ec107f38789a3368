//! The complete set of cluster objects the controller reads, as plain
//! k8s-openapi values. Every source produces one of these; nothing
//! downstream knows which source it came from.
//!
//! Objects are shared (`Arc`), not copied: a snapshot is taken on every
//! change, and the kube reflector stores and the file source's last-good
//! state already hold every object once.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// Everything translate needs, whole and consistent at one moment.
///
/// `Debug` is deliberately not derived: the snapshot carries TLS Secrets,
/// and their key material must never reach a log line.
#[derive(Clone, Default)]
pub struct ClusterSnapshot {
    pub ingresses: Vec<Arc<Ingress>>,
    pub ingress_classes: Vec<Arc<IngressClass>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Only Secrets of type `kubernetes.io/tls`.
    pub tls_secrets: Vec<Arc<Secret>>,
}

impl ClusterSnapshot {
    /// Keeps only namespaced objects whose namespace is in `namespaces`;
    /// an empty list keeps everything. IngressClasses are cluster-scoped and
    /// always kept.
    pub fn retain_namespaces(&mut self, namespaces: &[String]) {
        if namespaces.is_empty() {
            return;
        }
        let keep = |ns: &Option<String>| {
            ns.as_deref()
                .is_some_and(|ns| namespaces.iter().any(|n| n == ns))
        };
        self.ingresses.retain(|o| keep(&o.metadata.namespace));
        self.services.retain(|o| keep(&o.metadata.namespace));
        self.endpoint_slices.retain(|o| keep(&o.metadata.namespace));
        self.tls_secrets.retain(|o| keep(&o.metadata.namespace));
    }

    /// A one-line count of what the snapshot holds, safe to log.
    pub fn summary(&self) -> String {
        format!(
            "{} ingresses, {} ingress classes, {} services, {} endpoint slices, {} tls secrets",
            self.ingresses.len(),
            self.ingress_classes.len(),
            self.services.len(),
            self.endpoint_slices.len(),
            self.tls_secrets.len()
        )
    }
}
