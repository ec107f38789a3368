//! Ingress status: the leader copies the addresses of `--publish-service`
//! (or the fixed `--publish-status-address` list) into
//! `status.loadBalancer.ingress` of every Ingress we serve, writes only when
//! the value differs (no write storm on resync), and clears it on Ingresses
//! that stopped being ours.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client};

use super::writes::{RoundEnd, WriteFailure, outcome};
use crate::metrics::Metrics;
use crate::routes::class::Ownership;
use crate::snapshot::ClusterSnapshot;

/// An address as Ingress status holds it: an IP or a host name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Address {
    Ip(String),
    Hostname(String),
}

impl Address {
    pub fn parse(text: &str) -> Self {
        match text.parse::<IpAddr>() {
            Ok(ip) => Self::Ip(ip.to_string()),
            Err(_) => Self::Hostname(text.to_string()),
        }
    }

    fn to_status(&self) -> IngressLoadBalancerIngress {
        match self {
            Self::Ip(ip) => IngressLoadBalancerIngress {
                ip: Some(ip.clone()),
                ..Default::default()
            },
            Self::Hostname(h) => IngressLoadBalancerIngress {
                hostname: Some(h.clone()),
                ..Default::default()
            },
        }
    }
}

/// Where the published addresses come from.
pub enum PublishAddresses {
    Fixed(BTreeSet<Address>),
    /// The reflector store of the one `--publish-service` Service.
    Service(Store<Service>),
}

impl PublishAddresses {
    /// The addresses to publish now; `None` while the Service is unknown.
    pub fn current(&self) -> Option<BTreeSet<Address>> {
        match self {
            Self::Fixed(addresses) => Some(addresses.clone()),
            Self::Service(store) => {
                let service = store.state().into_iter().next()?;
                let ingress = service
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref());
                let mut addresses = BTreeSet::new();
                for entry in ingress.into_iter().flatten() {
                    if let Some(ip) = &entry.ip {
                        addresses.insert(Address::Ip(ip.clone()));
                    } else if let Some(h) = &entry.hostname {
                        addresses.insert(Address::Hostname(h.clone()));
                    }
                }
                Some(addresses)
            }
        }
    }
}

/// One status write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub namespace: String,
    pub name: String,
    /// Empty means clear.
    pub addresses: BTreeSet<Address>,
}

/// The status writes that bring the Ingresses in line (pure). Ours get
/// `addresses`; others that carry exactly our addresses (left from when
/// they were ours) are cleared, but for those another switchyard serves:
/// two that publish the same address would clear each other's for ever.
pub fn changes(
    ingresses: &[Arc<Ingress>],
    ownership: impl Fn(&Ingress) -> Ownership,
    addresses: &BTreeSet<Address>,
) -> Vec<StatusChange> {
    let mut changes = Vec::new();
    for ingress in ingresses {
        let current = current_addresses(ingress);
        let desired = match ownership(ingress) {
            Ownership::Ours => addresses.clone(),
            Ownership::Other if !current.is_empty() && current == *addresses => BTreeSet::new(),
            Ownership::Other | Ownership::Sibling => continue,
        };
        if current != desired {
            changes.push(StatusChange {
                namespace: ingress.metadata.namespace.clone().unwrap_or_default(),
                name: ingress.metadata.name.clone().unwrap_or_default(),
                addresses: desired,
            });
        }
    }
    changes
}

fn current_addresses(ingress: &Ingress) -> BTreeSet<Address> {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|e| match (&e.ip, &e.hostname) {
            (Some(ip), _) => Some(Address::Ip(ip.clone())),
            (None, Some(h)) => Some(Address::Hostname(h.clone())),
            (None, None) => None,
        })
        .collect()
}

/// Applies status changes through the API.
pub struct StatusWriter {
    client: Client,
    publish: PublishAddresses,
    metrics: Arc<Metrics>,
}

impl StatusWriter {
    pub fn new(client: Client, publish: PublishAddresses, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            publish,
            metrics,
        }
    }

    /// Writes what differs. Failures are logged, and tried again by the
    /// caller. The round stops at the first write the API server is not
    /// taking (every later one would wait or fail as long), and as soon as
    /// `leading` says this replica no longer leads.
    pub async fn sync(
        &self,
        snapshot: &ClusterSnapshot,
        ownership: impl Fn(&Ingress) -> Ownership,
        leading: impl Fn() -> bool,
    ) -> RoundEnd {
        let Some(addresses) = self.publish.current() else {
            return RoundEnd::Written;
        };
        let mut end = RoundEnd::Written;
        for change in changes(&snapshot.ingresses, ownership, &addresses) {
            if !leading() {
                return RoundEnd::Stopped;
            }
            let ingress = format!("{}/{}", change.namespace, change.name);
            match self.write(&change).await {
                Ok(()) => {
                    let outcome = if change.addresses.is_empty() {
                        "cleared"
                    } else {
                        "updated"
                    };
                    self.count(outcome);
                    tracing::debug!(%ingress, outcome, "ingress status written");
                }
                Err(WriteFailure::Refused(error)) => {
                    end = RoundEnd::Incomplete;
                    self.count("failed");
                    tracing::warn!(%ingress, %error, "cannot write ingress status; will retry");
                }
                Err(WriteFailure::Unavailable(error)) => {
                    self.count("failed");
                    tracing::warn!(%ingress, %error, "the API server is not taking writes; will retry the round");
                    return RoundEnd::Stopped;
                }
            }
        }
        end
    }

    async fn write(&self, change: &StatusChange) -> Result<(), WriteFailure> {
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), &change.namespace);
        let entries: Vec<_> = change.addresses.iter().map(Address::to_status).collect();
        let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": entries } } });
        outcome(
            api.patch_status(&change.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .status_updates
            .with_label_values(&[outcome])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IngressLoadBalancerStatus, IngressStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use crate::source::kube::mock_api::{Answer, MockApi};

    fn ingress(name: &str, status: &[&str]) -> Arc<Ingress> {
        Arc::new(Ingress {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            status: Some(IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(
                        status
                            .iter()
                            .map(|a| Address::parse(a).to_status())
                            .collect(),
                    ),
                }),
            }),
            ..Default::default()
        })
    }

    fn addresses(list: &[&str]) -> BTreeSet<Address> {
        list.iter().map(|a| Address::parse(a)).collect()
    }

    #[test]
    fn only_differing_statuses_are_written() {
        let ours = addresses(&["10.0.0.1", "lb.example.com"]);
        let ingresses = [
            ingress("current", &["lb.example.com", "10.0.0.1"]),
            ingress("stale", &["10.9.9.9"]),
            ingress("empty", &[]),
        ];
        let changes = changes(&ingresses, |_| Ownership::Ours, &ours);
        let names: Vec<_> = changes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["stale", "empty"]);
        assert!(changes.iter().all(|c| c.addresses == ours));
    }

    #[test]
    fn ingresses_no_longer_ours_are_cleared_only_if_they_carry_our_addresses() {
        let ours = addresses(&["10.0.0.1"]);
        let ingresses = [
            ingress("was-ours", &["10.0.0.1"]),
            ingress("someone-elses", &["192.0.2.7"]),
        ];
        let changes = changes(&ingresses, |_| Ownership::Other, &ours);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].name, "was-ours");
        assert!(changes[0].addresses.is_empty());
    }

    #[test]
    fn another_switchyards_ingresses_are_never_cleared() {
        let ours = addresses(&["10.0.0.1"]);
        let ingresses = [ingress("theirs-same-address", &["10.0.0.1"])];
        assert!(changes(&ingresses, |_| Ownership::Sibling, &ours).is_empty());
    }

    /// Runs one status round over `names` (none with our address yet)
    /// against a mock API server that answers the PATCH of each with
    /// `answer(name)`; the Ingresses written to, in order, and the result.
    async fn round(
        names: &[&str],
        leading: impl Fn() -> bool + Send + 'static,
        mut answer: impl FnMut(&str) -> Answer,
    ) -> (Vec<String>, RoundEnd) {
        let (client, api) = MockApi::new();
        let writer = StatusWriter::new(
            client,
            PublishAddresses::Fixed(addresses(&["10.0.0.1"])),
            Arc::new(Metrics::new()),
        );
        let snapshot = ClusterSnapshot {
            ingresses: names.iter().map(|n| ingress(n, &[])).collect(),
            ..Default::default()
        };
        // The writer, and with it the client, is dropped when the round
        // ends: that ends the mock's serving.
        let sync =
            tokio::spawn(async move { writer.sync(&snapshot, |_| Ownership::Ours, leading).await });
        let requests = api
            .serve(|path| {
                let name = path
                    .strip_prefix("/apis/networking.k8s.io/v1/namespaces/ns/ingresses/")
                    .and_then(|p| p.strip_suffix("/status"))
                    .unwrap_or_else(|| panic!("not an Ingress status write: {path}"));
                answer(name)
            })
            .await;
        let written = requests
            .iter()
            .map(|r| {
                let name =
                    r.strip_prefix("PATCH /apis/networking.k8s.io/v1/namespaces/ns/ingresses/");
                name.and_then(|n| n.strip_suffix("/status"))
                    .unwrap()
                    .to_string()
            })
            .collect();
        (written, sync.await.unwrap())
    }

    /// The API server's answer to a status write that was made.
    fn written(name: &str) -> Answer {
        Answer::Ok(serde_json::to_value(&*ingress(name, &["10.0.0.1"])).unwrap())
    }

    #[tokio::test]
    async fn a_round_writes_every_ingress_that_differs() {
        let (writes, end) = round(&["a", "b", "c"], || true, written).await;
        assert_eq!(writes, ["a", "b", "c"]);
        assert_eq!(end, RoundEnd::Written);
    }

    #[tokio::test]
    async fn a_refused_write_fails_the_round_but_the_others_are_written() {
        let answer = |name: &str| match name {
            "b" => Answer::Refused,
            _ => written(name),
        };
        let (writes, end) = round(&["a", "b", "c"], || true, answer).await;
        assert_eq!(writes, ["a", "b", "c"]);
        assert_eq!(
            end,
            RoundEnd::Incomplete,
            "the refused write is tried again"
        );
    }

    #[tokio::test]
    async fn a_round_stops_at_the_first_write_the_api_server_is_not_taking() {
        let answer = |name: &str| match name {
            "b" => Answer::Silence,
            _ => written(name),
        };
        let (writes, end) = round(&["a", "b", "c", "d"], || true, answer).await;
        assert_eq!(writes, ["a", "b"], "c and d would wait as long");
        assert_eq!(end, RoundEnd::Stopped);
    }

    #[tokio::test]
    async fn a_replica_that_stops_leading_mid_round_writes_no_more() {
        let leading = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still_leading = {
            let leading = leading.clone();
            move || leading.load(std::sync::atomic::Ordering::SeqCst)
        };
        let answer = |name: &str| {
            if name == "b" {
                // Another replica takes the Lease over while b is written.
                leading.store(false, std::sync::atomic::Ordering::SeqCst);
            }
            written(name)
        };
        let (writes, end) = round(&["a", "b", "c", "d"], still_leading, answer).await;
        assert_eq!(writes, ["a", "b"]);
        assert_eq!(end, RoundEnd::Stopped);
    }
}
