//! `ClusterSnapshot -> (RouteTableSpec, warnings)`: all Ingress semantics
//! in one pure function, tested without sockets.
//!
//! Ingresses are visited oldest first (`creationTimestamp`, then
//! namespace/name; a missing timestamp counts as oldest). The first
//! Ingress to claim a host+path (same path key and match kind) or a
//! `defaultBackend` keeps it; every later claim is a warning on the later
//! Ingress naming the winner. Problems with one path never affect another.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use super::annotations::{self, IngressPolicy};
use super::backend::ServiceIndex;
use super::class::ClassFilter;
use super::host::{HostPattern, is_dns_label};
use super::path::{PathType, rule_key};
use super::spec::{BackendSpec, HostSpec, PathSpec, PortRef, RouteSpec, RouteTableSpec};
use super::warning::{ObjectRef, Warning, WarningReason};
use crate::snapshot::ClusterSnapshot;

/// What translate needs besides the snapshot.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// The IngressClass name we serve.
    pub ingress_class: String,
    /// The cluster-wide fallback for requests no Ingress matches.
    pub fallback: Option<ServiceBackendRef>,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            ingress_class: super::class::DEFAULT_CLASS_NAME.into(),
            fallback: None,
        }
    }
}

/// `namespace/name:port`, as `--default-backend-service` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBackendRef {
    pub namespace: String,
    pub name: String,
    pub port: PortRef,
}

impl std::str::FromStr for ServiceBackendRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let error = || format!("{text:?} is not of the form NAMESPACE/NAME:PORT");
        let (namespace, rest) = text.split_once('/').ok_or_else(error)?;
        let (name, port) = rest.rsplit_once(':').ok_or_else(error)?;
        if !is_dns_label(namespace) || !is_dns_label(name) {
            return Err(error());
        }
        let port = if port.bytes().all(|b| b.is_ascii_digit()) {
            match port.parse() {
                Ok(n @ 1..=65535) => PortRef::Number(n),
                _ => return Err(format!("{text:?}: port {port:?} is not 1-65535")),
            }
        } else if is_dns_label(port) && port.len() <= 15 {
            PortRef::Name(port.to_string())
        } else {
            return Err(format!("{text:?}: {port:?} is not a port number or name"));
        };
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
            port,
        })
    }
}

/// The result of one translation.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub spec: RouteTableSpec,
    pub warnings: Vec<Warning>,
}

/// Translates the Ingresses of our class into a route table.
pub fn translate(snapshot: &ClusterSnapshot, options: &TranslateOptions) -> Translation {
    let classes = ClassFilter::new(&options.ingress_class, &snapshot.ingress_classes);
    let mut ours: Vec<&Ingress> = snapshot
        .ingresses
        .iter()
        .map(|i| &**i)
        .filter(|i| classes.is_ours(i))
        .collect();
    // Compared by borrowed fields: a key made per Ingress copied its
    // namespace and name, two allocations each.
    ours.sort_by(|a, b| claim_order(a, b));

    let mut builder = Builder {
        services: ServiceIndex::new(snapshot),
        hosts: BTreeMap::new(),
        default_backend: None,
        warnings: Vec::new(),
    };
    for ingress in ours {
        builder.add_ingress(ingress);
    }
    let fallback = options.fallback.as_ref().map(|f| builder.fallback_route(f));

    let Builder {
        hosts,
        default_backend,
        warnings,
        ..
    } = builder;
    let hosts = hosts
        .into_iter()
        .map(|(host, paths)| HostSpec {
            host,
            paths: paths.into_values().map(|claim| claim.path).collect(),
        })
        .collect();
    Translation {
        spec: RouteTableSpec {
            hosts,
            default_backend: default_backend.map(|claim| claim.route),
            fallback,
        },
        warnings,
    }
}

/// A rule's path as requests are matched against it: as the resource it
/// names (percent-decoded, dot segments resolved, slashes merged; see
/// [`request_path`](super::request_path)). Written otherwise it could
/// never match (`/caf%C3%A9` against a request for it, matched as
/// `/café`). Exact and Prefix paths with `//`, a dot segment or an escaped
/// slash are refused, as the API server refuses them.
fn rule_path_for_matching(path: &str, path_type: PathType) -> Result<String, &'static str> {
    const NOT_IN_EXACT_OR_PREFIX: [&str; 5] = ["//", "/./", "/../", "%2f", "%2F"];
    if path_type != PathType::ImplementationSpecific
        && (NOT_IN_EXACT_OR_PREFIX.iter().any(|s| path.contains(s))
            || path.ends_with("/.")
            || path.ends_with("/.."))
    {
        return Err("may not hold //, a . or .. segment or an escaped slash (%2F)");
    }
    match super::request_path::for_matching(path) {
        Ok(path) => Ok(path.into_owned()),
        Err(_) => Err("does not name a path (a .. above the root, or a malformed % escape)"),
    }
}

/// The order Ingresses claim hosts and paths in: oldest first, then by
/// `namespace/name` compared as one string (DESIGN's tie-break between
/// Ingresses): `a-b/x` before `a/y`, where namespace first, then name,
/// would put `a/y` first. (ingress-nginx orders such ties the other way,
/// last first; README says so for those coming from it.)
fn claim_order(a: &Ingress, b: &Ingress) -> Ordering {
    let age = |i: &Ingress| i.metadata.creation_timestamp.as_ref().map(|t| t.0);
    age(a)
        .cmp(&age(b))
        .then_with(|| qualified_name(a).cmp(qualified_name(b)))
}

/// The bytes of `namespace/name`, without making the string.
fn qualified_name(ingress: &Ingress) -> impl Iterator<Item = u8> + '_ {
    let meta = &ingress.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    let name = meta.name.as_deref().unwrap_or_default();
    namespace.bytes().chain([b'/']).chain(name.bytes())
}

/// A path or default backend and the Ingress that claimed it first.
struct PathClaim {
    path: PathSpec,
    owner: String,
}

struct DefaultClaim {
    route: RouteSpec,
    owner: String,
}

/// Two paths collide when they have the same key and match the same way.
type PathKey = (String, bool);

struct Builder<'a> {
    services: ServiceIndex<'a>,
    hosts: BTreeMap<HostPattern, BTreeMap<PathKey, PathClaim>>,
    default_backend: Option<DefaultClaim>,
    warnings: Vec<Warning>,
}

impl Builder<'_> {
    fn add_ingress(&mut self, ingress: &Ingress) {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let name = ingress.metadata.name.clone().unwrap_or_default();
        let object = ObjectRef {
            kind: "Ingress".into(),
            namespace: Some(namespace.clone()),
            name: name.clone(),
        };
        let owner = format!("{namespace}/{name}");

        let (policy, problems) = annotations::parse(ingress.metadata.annotations.as_ref());
        for p in problems {
            self.warn(&object, p.reason, p.message);
        }
        if policy.canary {
            self.warn(
                &object,
                WarningReason::CanaryNotServed,
                format!(
                    "metadata.annotations[{:?}]: canary routing is not supported; this Ingress is not served, so that it takes none of the traffic of the Ingress it shadows",
                    annotations::NGINX_CANARY
                ),
            );
            return;
        }
        let Some(spec) = &ingress.spec else {
            return;
        };
        if spec.tls.as_ref().is_some_and(|tls| !tls.is_empty()) {
            self.warn(
                &object,
                WarningReason::TlsNotServed,
                "spec.tls: switchyard does not terminate TLS yet; this Ingress's rules are served over plain HTTP only".into(),
            );
        }
        // Each claim is made as it is read, so that warnings come out in
        // the order of the fields they name.
        if let Some(backend) = &spec.default_backend {
            let claim = Claim::Default(backend, Field::DefaultBackend);
            self.claim(claim, &namespace, &owner, &object, &policy);
        }
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = match HostPattern::parse(rule.host.as_deref()) {
                Ok(h) => h,
                Err(e) => {
                    self.warn(
                        &object,
                        WarningReason::InvalidHost,
                        format!("spec.rules[{ri}].host: {e}; this rule is ignored"),
                    );
                    continue;
                }
            };
            // The host is known even if none of its paths is usable: its
            // requests must not fall through to the host-less rules (which
            // may be another team's) but go to the default backend.
            self.hosts.entry(host.clone()).or_default();
            for (pi, path) in rule.http.iter().flat_map(|h| &h.paths).enumerate() {
                let field = Field::Path { rule: ri, path: pi };
                let Some(path_type) = PathType::parse(&path.path_type) else {
                    self.warn(
                        &object,
                        WarningReason::InvalidPath,
                        format!(
                            "{field}.pathType {:?} is not Exact, Prefix or ImplementationSpecific; this path is ignored",
                            path.path_type
                        ),
                    );
                    continue;
                };
                let value = match (path.path.as_deref(), path_type) {
                    (None | Some(""), PathType::ImplementationSpecific) => "/",
                    (Some(p), _) if p.starts_with('/') => p,
                    (p, _) => {
                        self.warn(
                            &object,
                            WarningReason::InvalidPath,
                            format!(
                                "{field}.path {:?} must start with \"/\"; this path is ignored",
                                p.unwrap_or("")
                            ),
                        );
                        continue;
                    }
                };
                let value = match rule_path_for_matching(value, path_type) {
                    Ok(value) => value,
                    Err(why) => {
                        self.warn(
                            &object,
                            WarningReason::InvalidPath,
                            format!("{field}.path {value:?} {why}; this path is ignored"),
                        );
                        continue;
                    }
                };
                let claim = Claim::Path {
                    host: host.clone(),
                    path: value,
                    path_type,
                    backend: &path.backend,
                    field,
                };
                self.claim(claim, &namespace, &owner, &object, &policy);
            }
        }
    }

    fn claim(
        &mut self,
        claim: Claim<'_>,
        namespace: &str,
        owner: &str,
        object: &ObjectRef,
        policy: &IngressPolicy,
    ) {
        match claim {
            Claim::Default(backend, field) => {
                if let Some(winner) = &self.default_backend {
                    let message = format!(
                        "{field}: Ingress {} also has a defaultBackend and takes precedence (older, or as old and first by namespace/name); this one is ignored",
                        winner.owner
                    );
                    self.warn(object, WarningReason::ConflictingDefaultBackend, message);
                    return;
                }
                if let Some(route) = self.route(backend, field, namespace, owner, object, policy) {
                    self.default_backend = Some(DefaultClaim {
                        route,
                        owner: owner.to_string(),
                    });
                }
            }
            Claim::Path {
                host,
                path,
                path_type,
                backend,
                field,
            } => {
                let key = (rule_key(&path, path_type).to_string(), path_type.is_exact());
                if let Some(winner) = self.hosts.get(&host).and_then(|paths| paths.get(&key)) {
                    let message = if winner.owner == owner {
                        format!(
                            "{field}: host {host} path {path} ({}) is declared twice in this Ingress; the first is used",
                            path_type.as_str()
                        )
                    } else {
                        format!(
                            "{field}: host {host} path {path} ({}) is already routed by Ingress {}, which takes precedence (older, or as old and first by namespace/name); this path is ignored",
                            path_type.as_str(),
                            winner.owner
                        )
                    };
                    self.warn(object, WarningReason::ConflictingPath, message);
                    return;
                }
                let Some(route) = self.route(backend, field, namespace, owner, object, policy)
                else {
                    return;
                };
                self.hosts.entry(host).or_default().insert(
                    key,
                    PathClaim {
                        path: PathSpec {
                            path,
                            path_type,
                            route,
                        },
                        owner: owner.to_string(),
                    },
                );
            }
        }
    }

    /// The route for one backend. A Service that cannot be resolved still
    /// gives a route (it answers 503) plus a warning; only a backend that
    /// names no Service at all gives none.
    fn route(
        &mut self,
        backend: &IngressBackend,
        field: Field,
        namespace: &str,
        owner: &str,
        object: &ObjectRef,
        policy: &IngressPolicy,
    ) -> Option<RouteSpec> {
        let (at, ignored) = (field.backend(), field.ignored());
        let Some(service) = &backend.service else {
            let message = if backend.resource.is_some() {
                format!("{at}.resource: resource backends are not supported; {ignored}")
            } else {
                format!("{at}: no service is named; {ignored}")
            };
            self.warn(object, WarningReason::UnsupportedBackend, message);
            return None;
        };
        let port = match service.port.as_ref().map(|p| (&p.number, &p.name)) {
            Some((Some(n), _)) => PortRef::Number(*n),
            Some((None, Some(name))) => PortRef::Name(name.clone()),
            _ => {
                let message =
                    format!("{at}.service.port: a port number or name is required; {ignored}");
                self.warn(object, WarningReason::ServicePortNotFound, message);
                return None;
            }
        };
        let endpoints = match self.services.resolve(namespace, &service.name, &port) {
            Ok(endpoints) => endpoints,
            Err(e) => {
                let message = format!("{at}.service: {}; requests get 503", e.message);
                self.warn(object, e.reason, message);
                Vec::new()
            }
        };
        Some(RouteSpec {
            ingress: Some(owner.to_string()),
            backend: BackendSpec {
                namespace: namespace.to_string(),
                service: service.name.clone(),
                port,
                endpoints,
            },
            upgrades: policy.upgrades.clone(),
        })
    }

    fn fallback_route(&mut self, fallback: &ServiceBackendRef) -> RouteSpec {
        let endpoints = self
            .services
            .resolve(&fallback.namespace, &fallback.name, &fallback.port)
            .unwrap_or_else(|e| {
                let object = ObjectRef {
                    kind: "Service".into(),
                    namespace: Some(fallback.namespace.clone()),
                    name: fallback.name.clone(),
                };
                let message = format!("--default-backend-service: {}; requests get 503", e.message);
                self.warn(&object, e.reason, message);
                Vec::new()
            });
        RouteSpec {
            ingress: None,
            backend: BackendSpec {
                namespace: fallback.namespace.clone(),
                service: fallback.name.clone(),
                port: fallback.port.clone(),
                endpoints,
            },
            upgrades: IngressPolicy::default().upgrades,
        }
    }

    fn warn(&mut self, object: &ObjectRef, reason: WarningReason, message: String) {
        self.warnings.push(Warning {
            object: object.clone(),
            reason,
            message,
        });
    }
}

enum Claim<'a> {
    Default(&'a IngressBackend, Field),
    Path {
        host: HostPattern,
        path: String,
        path_type: PathType,
        backend: &'a IngressBackend,
        field: Field,
    },
}

/// Where in its Ingress a claim was written, for the warnings about it:
/// written out only when there is one (formatted for every path, it was a
/// tenth of translating 10,000 Ingresses).
#[derive(Debug, Clone, Copy)]
enum Field {
    DefaultBackend,
    Path { rule: usize, path: usize },
}

impl Field {
    /// Where the backend is: the default backend is one itself, a path
    /// has one.
    fn backend(&self) -> String {
        match self {
            Self::DefaultBackend => self.to_string(),
            Self::Path { .. } => format!("{self}.backend"),
        }
    }

    /// What a warning says is dropped with an unusable backend.
    fn ignored(&self) -> &'static str {
        match self {
            Self::DefaultBackend => "this default backend is ignored",
            Self::Path { .. } => "this path is ignored",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DefaultBackend => f.write_str("spec.defaultBackend"),
            Self::Path { rule, path } => write!(f, "spec.rules[{rule}].http.paths[{path}]"),
        }
    }
}
