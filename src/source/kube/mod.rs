//! The kube source: the cluster's Ingresses, IngressClasses, Services,
//! EndpointSlices and TLS Secrets, watched with kube-runtime reflectors
//! and assembled into the same [`ClusterSnapshot`] the file source makes.
//!
//! Only the leader (a `coordination.k8s.io/v1` Lease) writes Ingress status
//! and Events; every replica serves traffic.

pub mod events;
pub mod health;
pub mod leader;
pub mod lease_writes;
#[cfg(test)]
mod mock_api;
pub mod publish;
pub mod reflect;
pub mod status;
pub mod writes;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::snapshot::ClusterSnapshot;
use health::SourceHealth;

/// The field selector that keeps every other Secret out of our watch.
pub const TLS_SECRETS: &str = "type=kubernetes.io/tls";

/// One namespaced kind to watch: in every watched namespace, or in all.
struct Watch<'a> {
    client: &'a Client,
    namespaces: &'a [String],
    kind: &'static str,
    config: kube::runtime::watcher::Config,
    health: &'a Arc<SourceHealth>,
    changed: &'a Arc<Notify>,
}

impl Watch<'_> {
    fn spawn<K>(self) -> Vec<Store<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let apis: Vec<Api<K>> = if self.namespaces.is_empty() {
            vec![Api::all(self.client.clone())]
        } else {
            self.namespaces
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect()
        };
        apis.into_iter()
            .map(|api| {
                reflect::spawn(
                    api,
                    self.config.clone(),
                    self.kind,
                    self.health.clone(),
                    self.changed.clone(),
                )
            })
            .collect()
    }
}

/// The reflector stores of every kind switchyard reads. Namespaced kinds
/// have one store per watched namespace (or one for all namespaces).
pub struct Stores {
    ingresses: Vec<Store<Ingress>>,
    classes: Store<IngressClass>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    secrets: Vec<Store<Secret>>,
}

impl Stores {
    /// Starts every reflector; `changed` is notified on every change.
    pub fn start(
        client: &Client,
        namespaces: &[String],
        health: &Arc<SourceHealth>,
        changed: &Arc<Notify>,
    ) -> Self {
        // A namespace named twice is watched once: two reflectors would put
        // each of its objects into the snapshot twice.
        let mut namespaces = namespaces.to_vec();
        namespaces.sort();
        namespaces.dedup();
        let namespaces = namespaces.as_slice();
        let per_scope = |kind, config: &kube::runtime::watcher::Config| Watch {
            client,
            namespaces,
            kind,
            config: config.clone(),
            health,
            changed,
        };
        Self {
            ingresses: per_scope("Ingress", &reflect::config()).spawn(),
            services: per_scope("Service", &reflect::config()).spawn(),
            slices: per_scope("EndpointSlice", &reflect::config()).spawn(),
            secrets: per_scope("Secret", &reflect::config().fields(TLS_SECRETS)).spawn(),
            classes: reflect::spawn(
                Api::all(client.clone()),
                reflect::config(),
                "IngressClass",
                health.clone(),
                changed.clone(),
            ),
        }
    }

    /// Resolves once every store has completed its initial list.
    pub async fn wait_until_ready(&self) {
        // A store's writer lives as long as its reflector task, which runs
        // for the life of the process; an error here cannot happen.
        let _ = self.classes.wait_until_ready().await;
        for s in &self.ingresses {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.services {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.slices {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.secrets {
            let _ = s.wait_until_ready().await;
        }
    }

    /// Everything the stores hold now, shared with them (no object is
    /// copied).
    pub fn snapshot(&self) -> ClusterSnapshot {
        fn all<K>(stores: &[Store<K>]) -> Vec<Arc<K>>
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            stores.iter().flat_map(|s| s.state()).collect()
        }
        ClusterSnapshot {
            ingresses: all(&self.ingresses),
            ingress_classes: all(std::slice::from_ref(&self.classes)),
            services: all(&self.services),
            endpoint_slices: all(&self.slices),
            tls_secrets: all(&self.secrets),
        }
    }
}
