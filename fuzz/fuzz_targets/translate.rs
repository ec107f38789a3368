//! An arbitrary cluster snapshot (Ingresses, IngressClasses, Services,
//! EndpointSlices built from fuzzer data with `arbitrary`, every string
//! free-form) → `translate` → `RouteTable::compile` → lookups. Must never
//! panic, and the table must be consistent with its spec:
//!
//! - no two paths of one host are the same rule (compile would silently
//!   keep only one of them);
//! - every route the spec lists is reachable: a request for exactly its
//!   path, on a host that selects it, gets it (unless an Exact rule for
//!   that same path wins the tie);
//! - the result does not depend on the order of the objects.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arbitrary::Arbitrary;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use switchyard::routes::host::HostPattern;
use switchyard::routes::path::{PathType, rule_key};
use switchyard::routes::spec::{PortRef, RouteSpec};
use switchyard::routes::translate::ServiceBackendRef;
use switchyard::routes::{RouteTable, TranslateOptions, translate};
use switchyard::snapshot::ClusterSnapshot;

/// A string that is usually one of the values that mean something to
/// translate, sometimes anything.
#[derive(Arbitrary, Debug, Clone)]
enum Text {
    Known(u8),
    Any(String),
}

const KNOWN: &[&str] = &[
    "",
    "default",
    "web",
    "switchyard",
    "nginx",
    "http",
    "/",
    "/a",
    "/a/",
    "/a/b",
    "a",
    "Prefix",
    "Exact",
    "ImplementationSpecific",
    "example.com",
    "*.example.com",
    "Foo.Example.COM",
    "10.0.0.1",
    "::1",
    "IPv4",
    "IPv6",
    "FQDN",
    "TCP",
    "UDP",
    "ExternalName",
    "true",
    "websocket, h2c",
    "switchyard.dev/ingress-controller",
    "switchyard.dev/upgrade-protocols",
    "kubernetes.io/ingress.class",
    "ingressclass.kubernetes.io/is-default-class",
    "kubernetes.io/service-name",
];

impl Text {
    fn get(&self) -> String {
        match self {
            Text::Known(i) => KNOWN[usize::from(*i) % KNOWN.len()].to_string(),
            Text::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Meta {
    namespace: Option<Text>,
    name: Option<Text>,
    created: Option<i32>,
    labels: Vec<(Text, Text)>,
    annotations: Option<Vec<(Text, Text)>>,
}

impl Meta {
    fn build(&self) -> ObjectMeta {
        let map = |pairs: &[(Text, Text)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.get(), v.get())).collect()
        };
        ObjectMeta {
            namespace: self.namespace.as_ref().map(Text::get),
            name: self.name.as_ref().map(Text::get),
            creation_timestamp: self
                .created
                .and_then(|s| Timestamp::from_second(i64::from(s)).ok())
                .map(Time),
            labels: (!self.labels.is_empty()).then(|| map(&self.labels)),
            annotations: self.annotations.as_deref().map(map),
            ..Default::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Backend {
    service: Option<(Text, Option<Text>, Option<i32>)>,
    resource: bool,
}

impl Backend {
    fn build(&self) -> IngressBackend {
        IngressBackend {
            service: self
                .service
                .as_ref()
                .map(|(name, port_name, number)| IngressServiceBackend {
                    name: name.get(),
                    port: (port_name.is_some() || number.is_some()).then(|| ServiceBackendPort {
                        name: port_name.as_ref().map(Text::get),
                        number: *number,
                    }),
                }),
            resource: self.resource.then(Default::default),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzIngress {
    meta: Meta,
    class: Option<Text>,
    default_backend: Option<Backend>,
    rules: Option<Vec<FuzzRule>>,
    no_spec: bool,
}

#[derive(Arbitrary, Debug)]
struct FuzzRule {
    host: Option<Text>,
    paths: Option<Vec<FuzzPath>>,
}

#[derive(Arbitrary, Debug)]
struct FuzzPath {
    path: Option<Text>,
    path_type: Text,
    backend: Backend,
}

impl FuzzIngress {
    fn build(&self) -> Ingress {
        let spec = IngressSpec {
            ingress_class_name: self.class.as_ref().map(Text::get),
            default_backend: self.default_backend.as_ref().map(Backend::build),
            rules: self.rules.as_ref().map(|rules| {
                rules
                    .iter()
                    .map(|rule| IngressRule {
                        host: rule.host.as_ref().map(Text::get),
                        http: rule.paths.as_ref().map(|paths| HTTPIngressRuleValue {
                            paths: paths
                                .iter()
                                .map(|p| HTTPIngressPath {
                                    path: p.path.as_ref().map(Text::get),
                                    path_type: p.path_type.get(),
                                    backend: p.backend.build(),
                                })
                                .collect(),
                        }),
                    })
                    .collect()
            }),
            ..Default::default()
        };
        Ingress {
            metadata: self.meta.build(),
            spec: (!self.no_spec).then_some(spec),
            ..Default::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzClass {
    meta: Meta,
    controller: Option<Text>,
}

#[derive(Arbitrary, Debug)]
struct FuzzService {
    meta: Meta,
    type_: Option<Text>,
    ports: Option<Vec<FuzzPort<i32>>>,
}

/// A Service port (`port` required) or an EndpointSlice port (optional).
#[derive(Arbitrary, Debug)]
struct FuzzPort<P> {
    name: Option<Text>,
    port: P,
    protocol: Option<Text>,
}

#[derive(Arbitrary, Debug)]
struct FuzzSlice {
    meta: Meta,
    address_type: Text,
    ports: Option<Vec<FuzzPort<Option<i32>>>>,
    endpoints: Vec<FuzzEndpoint>,
}

#[derive(Arbitrary, Debug)]
struct FuzzEndpoint {
    addresses: Vec<Address>,
    conditions: Option<FuzzConditions>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct FuzzConditions {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Arbitrary, Debug)]
enum Address {
    V4([u8; 4]),
    V6([u16; 8]),
    Text(Text),
}

impl Address {
    fn get(&self) -> String {
        match self {
            Address::V4(o) => std::net::Ipv4Addr::from(*o).to_string(),
            Address::V6(s) => std::net::Ipv6Addr::from(*s).to_string(),
            Address::Text(t) => t.get(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    ingresses: Vec<FuzzIngress>,
    classes: Vec<FuzzClass>,
    services: Vec<FuzzService>,
    slices: Vec<FuzzSlice>,
    class_name: Text,
    fallback: Option<(Text, Text, Option<i32>)>,
    requests: Vec<(Text, Text)>,
}

fn build(input: &Input) -> ClusterSnapshot {
    ClusterSnapshot {
        ingresses: input
            .ingresses
            .iter()
            .map(FuzzIngress::build)
            .map(Arc::new)
            .collect(),
        ingress_classes: input
            .classes
            .iter()
            .map(|c| IngressClass {
                metadata: c.meta.build(),
                spec: c.controller.as_ref().map(|ctl| IngressClassSpec {
                    controller: Some(ctl.get()),
                    parameters: None,
                }),
            })
            .map(Arc::new)
            .collect(),
        services: input
            .services
            .iter()
            .map(|s| Service {
                metadata: s.meta.build(),
                spec: Some(ServiceSpec {
                    type_: s.type_.as_ref().map(Text::get),
                    ports: s.ports.as_ref().map(|ports| {
                        ports
                            .iter()
                            .map(|p| ServicePort {
                                name: p.name.as_ref().map(Text::get),
                                port: p.port,
                                protocol: p.protocol.as_ref().map(Text::get),
                                ..Default::default()
                            })
                            .collect()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .map(Arc::new)
            .collect(),
        endpoint_slices: input
            .slices
            .iter()
            .map(|s| EndpointSlice {
                metadata: s.meta.build(),
                address_type: s.address_type.get(),
                ports: s.ports.as_ref().map(|ports| {
                    ports
                        .iter()
                        .map(|p| EndpointPort {
                            name: p.name.as_ref().map(Text::get),
                            port: p.port,
                            protocol: p.protocol.as_ref().map(Text::get),
                            ..Default::default()
                        })
                        .collect()
                }),
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|e| Endpoint {
                        addresses: e.addresses.iter().map(Address::get).collect(),
                        conditions: e.conditions.map(|c| EndpointConditions {
                            ready: c.ready,
                            serving: c.serving,
                            terminating: c.terminating,
                        }),
                        ..Default::default()
                    })
                    .collect(),
            })
            .map(Arc::new)
            .collect(),
        tls_secrets: Vec::new(),
    }
}

/// Keeps the first object of each namespace/name, as a cluster would
/// (names are unique there); only then is the order irrelevant.
fn dedup<T>(items: &mut Vec<T>, key: impl Fn(&T) -> (Option<String>, Option<String>)) {
    let mut seen = BTreeSet::new();
    items.retain(|item| seen.insert(key(item)));
}

fn same_route(a: &switchyard::routes::Route, b: &RouteSpec) -> bool {
    a.labels.service == b.backend.service
        && a.labels.namespace == b.backend.namespace
        && a.backend.endpoints() == b.backend.endpoints.as_slice()
        && a.upgrades
            .iter()
            .map(|u| &**u)
            .eq(b.upgrades.iter().map(String::as_str))
}

fuzz_target!(|input: Input| {
    let mut snapshot = build(&input);
    let options = TranslateOptions {
        ingress_class: input.class_name.get(),
        fallback: input
            .fallback
            .as_ref()
            .map(|(ns, name, number)| ServiceBackendRef {
                namespace: ns.get(),
                name: name.get(),
                port: match number {
                    Some(n) => PortRef::Number(*n),
                    None => PortRef::Name("http".into()),
                },
            }),
    };

    let translation = translate(&snapshot, &options);
    for w in &translation.warnings {
        let _ = w.to_string();
    }
    let spec = translation.spec;
    let _ = spec.to_text();
    let _ = serde_json::to_string(&spec).unwrap();

    // One entry per host pattern, and per host one path per rule.
    let mut hosts = BTreeSet::new();
    for host in &spec.hosts {
        assert!(hosts.insert(&host.host), "host {} listed twice", host.host);
        let mut rules = BTreeSet::new();
        for path in &host.paths {
            assert!(path.path.starts_with('/'), "{:?}", path.path);
            let key = (
                rule_key(&path.path, path.path_type),
                path.path_type.is_exact(),
            );
            assert!(
                rules.insert(key),
                "host {} path {:?} listed twice",
                host.host,
                key
            );
        }
    }

    let table = RouteTable::compile(spec.clone());
    assert_eq!(table.spec(), &spec);
    for (host, path) in &input.requests {
        let _ = table.lookup(&host.get(), &path.get());
    }

    // Every listed route is reachable.
    let exact_hosts: BTreeSet<&str> = spec
        .hosts
        .iter()
        .filter_map(|h| match &h.host {
            HostPattern::Exact(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    for host in &spec.hosts {
        let request_host = match &host.host {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Wildcard(suffix) => {
                let name = format!("zz-fuzz.{suffix}");
                if exact_hosts.contains(name.as_str()) {
                    continue;
                }
                name
            }
            // An empty Host matches no exact or wildcard rule.
            HostPattern::Any => String::new(),
        };
        let exact_paths: BTreeSet<&str> = host
            .paths
            .iter()
            .filter(|p| p.path_type == PathType::Exact)
            .map(|p| p.path.as_str())
            .collect();
        for path in &host.paths {
            if path.path_type != PathType::Exact && exact_paths.contains(path.path.as_str()) {
                continue;
            }
            let route = table
                .lookup(&request_host, &path.path)
                .unwrap_or_else(|| panic!("{request_host} {} not routed", path.path));
            assert!(
                same_route(route, &path.route),
                "{request_host} {} routed to {:?}, not {:?}",
                path.path,
                route,
                path.route
            );
        }
    }

    // The order of the objects does not matter (once names are unique).
    let meta_key = |m: &ObjectMeta| (m.namespace.clone(), m.name.clone());
    dedup(&mut snapshot.ingresses, |o| meta_key(&o.metadata));
    dedup(&mut snapshot.ingress_classes, |o| meta_key(&o.metadata));
    dedup(&mut snapshot.services, |o| meta_key(&o.metadata));
    dedup(&mut snapshot.endpoint_slices, |o| meta_key(&o.metadata));
    let forward = translate(&snapshot, &options).spec;
    snapshot.ingresses.reverse();
    snapshot.ingress_classes.reverse();
    snapshot.services.reverse();
    snapshot.endpoint_slices.reverse();
    let backward = translate(&snapshot, &options).spec;
    assert_eq!(forward, backward, "translation depends on the object order");
});
