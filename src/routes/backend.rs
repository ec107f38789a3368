//! Resolving an Ingress backend (a Service and a port) to the addresses of
//! its ready endpoints, through the Service's EndpointSlices.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::spec::PortRef;
use super::warning::WarningReason;
use crate::snapshot::ClusterSnapshot;

/// The label an EndpointSlice carries to name its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why a backend has no endpoints to offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: WarningReason,
    pub message: String,
}

/// The index's maps, keyed by namespace and name, which translation hashes
/// for every Service and EndpointSlice and again for each backend looked
/// up: foldhash, not SipHash, as nothing here is keyed by a client.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Services and their EndpointSlices, indexed by namespace and name.
pub struct ServiceIndex<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> ServiceIndex<'a> {
    pub fn new(snapshot: &'a ClusterSnapshot) -> Self {
        let mut services = HashMap::default();
        for service in &snapshot.services {
            if let (Some(ns), Some(name)) = (&service.metadata.namespace, &service.metadata.name) {
                services.insert((ns.as_str(), name.as_str()), &**service);
            }
        }
        let mut slices: HashMap<_, Vec<_>> = HashMap::default();
        for slice in &snapshot.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(service)) = (&slice.metadata.namespace, service) {
                slices
                    .entry((ns.as_str(), service.as_str()))
                    .or_default()
                    .push(&**slice);
            }
        }
        Self { services, slices }
    }

    /// The ready endpoints behind `namespace/name:port`, sorted. An `Err`
    /// means the route cannot be served (503) and says why.
    pub fn resolve(
        &self,
        namespace: &str,
        name: &str,
        port: &PortRef,
    ) -> Result<Vec<SocketAddr>, Unresolved> {
        let service = self
            .services
            .get(&(namespace, name))
            .ok_or_else(|| Unresolved {
                reason: WarningReason::BackendNotFound,
                message: format!("Service {namespace}/{name} not found"),
            })?;
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(Unresolved {
                reason: WarningReason::UnsupportedBackend,
                message: format!(
                    "Service {namespace}/{name} is of type ExternalName, which is not supported"
                ),
            });
        }
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        // Only TCP ports carry HTTP: a Service may give one number to a
        // UDP port too (HTTP/3 beside HTTPS), listed first or not.
        let service_port = ports
            .iter()
            .filter(|p| is_tcp(p.protocol.as_deref()))
            .find(|p| port_matches(p, port))
            .ok_or_else(|| {
                let known: Vec<_> = ports.iter().map(describe_port).collect();
                Unresolved {
                    reason: WarningReason::ServicePortNotFound,
                    message: format!(
                        "Service {namespace}/{name} has no TCP port {port} (it has: {})",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                }
            })?;
        let port_name = service_port.name.as_deref().unwrap_or("");
        // A dual-stack Service has a slice per family for the same pods:
        // its first family only, as its ClusterIP is, or each pod would be
        // listed twice, once at an address this node may not reach.
        let family = spec
            .and_then(|s| s.ip_families.as_ref())
            .and_then(|families| families.first())
            .map(String::as_str);

        let mut endpoints = BTreeSet::new();
        for slice in self.slices.get(&(namespace, name)).into_iter().flatten() {
            let address_type = slice.address_type.as_str();
            if !matches!(address_type, "IPv4" | "IPv6")
                || family.is_some_and(|family| family != address_type)
            {
                continue;
            }
            let target_port = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == port_name && is_tcp(p.protocol.as_deref())
            });
            let Some(target_port) = target_port
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in slice.endpoints.iter().filter(|e| accepts_new_work(e)) {
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        endpoints.insert(SocketAddr::new(ip, target_port));
                    }
                }
            }
        }
        if endpoints.is_empty() {
            return Err(Unresolved {
                reason: WarningReason::NoReadyEndpoints,
                message: format!("Service {namespace}/{name} port {port} has no ready endpoints"),
            });
        }
        Ok(endpoints.into_iter().collect())
    }
}

/// A port's protocol is TCP unless it says otherwise (the API's default).
fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.unwrap_or("TCP") == "TCP"
}

fn port_matches(service_port: &ServicePort, wanted: &PortRef) -> bool {
    match wanted {
        PortRef::Number(n) => service_port.port == *n,
        PortRef::Name(n) => service_port.name.as_deref() == Some(n.as_str()),
    }
}

fn describe_port(port: &ServicePort) -> String {
    let described = match &port.name {
        Some(name) => format!("{}/{name}", port.port),
        None => port.port.to_string(),
    };
    match port.protocol.as_deref() {
        Some(protocol) if !is_tcp(Some(protocol)) => format!("{described} ({protocol})"),
        _ => described,
    }
}

/// Ready endpoints only; an endpoint that is terminating, even if still
/// serving, gets no new work. A missing `ready` counts as ready, as the
/// EndpointSlice API specifies.
fn accepts_new_work(endpoint: &Endpoint) -> bool {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    ready && !terminating
}
