//! Arbitrary Ingress rules and requests: the compiled route table (built
//! the production way, `translate` then `RouteTable::compile`) must route
//! every request exactly as a direct reading of the rules in the README
//! does. The reference below is written independently of src/routes: it
//! keeps the rules as a plain list and scans all of them for each request.
//! A disagreement is a crash.
//!
//! The rules it reads (README "Routing"):
//! - Class: `spec.ingressClassName`, else the legacy annotation, else
//!   served only if our IngressClass is the default.
//! - Order: oldest `creationTimestamp` first (missing = oldest), then
//!   namespace/name. The first Ingress to claim a host+path (same match
//!   kind) or a `defaultBackend` keeps it.
//! - Hosts: case-insensitive; a port and one trailing dot of the request's
//!   Host are ignored; an exact host beats a wildcard, `*.s` covers exactly
//!   one label in front of `s`; host-less rules serve hosts that have no
//!   rules of their own; a selected host never falls through.
//! - Paths: case-sensitive; `Exact` is string equality; `Prefix` (and
//!   `ImplementationSpecific`) compare `/`-separated elements, trailing
//!   slashes ignored; the longest rule wins (length without trailing
//!   slash), Exact beats Prefix on a tie.
//! - Unmatched: the winning defaultBackend, else the fallback, else 404.

#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use switchyard::routes::spec::PortRef;
use switchyard::routes::translate::ServiceBackendRef;
use switchyard::routes::{RouteTable, TranslateOptions, translate};
use switchyard::snapshot::ClusterSnapshot;

const CLASS: &str = "switchyard";

// ---- fuzzer input ----

/// DNS-ish labels, valid and not, shared by rule hosts and request hosts
/// so that they meet.
const LABELS: &[&str] = &[
    "a", "b", "A", "example", "com", "x-y", "1", "-a", "a-", "a_b", "", "*", "é",
];

#[derive(Arbitrary, Debug, Clone)]
enum Label {
    Known(u8),
    Long(bool),
}

impl Label {
    fn text(&self) -> String {
        match self {
            Label::Known(i) => LABELS[usize::from(*i) % LABELS.len()].to_string(),
            // 63 characters is the longest valid label.
            Label::Long(too_long) => "l".repeat(if *too_long { 64 } else { 63 }),
        }
    }
}

fn join(labels: &[Label]) -> String {
    labels.iter().map(Label::text).collect::<Vec<_>>().join(".")
}

#[derive(Arbitrary, Debug)]
enum RuleHost {
    None,
    Empty,
    Name(Vec<Label>),
    Wildcard(Vec<Label>),
}

impl RuleHost {
    fn text(&self) -> Option<String> {
        match self {
            RuleHost::None => None,
            RuleHost::Empty => Some(String::new()),
            RuleHost::Name(labels) => Some(join(labels)),
            RuleHost::Wildcard(labels) => Some(format!("*.{}", join(labels))),
        }
    }
}

const ELEMENTS: &[&str] = &["a", "b", "ab", "", "A", ".", "..", "%2F", "a.b", "?x"];

#[derive(Arbitrary, Debug)]
enum PathText {
    Elements {
        leading_slash: bool,
        elements: Vec<u8>,
        trailing_slash: bool,
    },
    Raw(String),
}

impl PathText {
    fn text(&self) -> String {
        match self {
            PathText::Raw(s) => s.clone(),
            PathText::Elements {
                leading_slash,
                elements,
                trailing_slash,
            } => {
                let parts: Vec<_> = elements
                    .iter()
                    .map(|e| ELEMENTS[usize::from(*e) % ELEMENTS.len()])
                    .collect();
                let mut p = parts.join("/");
                if *leading_slash {
                    p.insert(0, '/');
                }
                if *trailing_slash {
                    p.push('/');
                }
                p
            }
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RuleType {
    Exact,
    Prefix,
    ImplementationSpecific,
    Invalid,
}

impl RuleType {
    fn text(self) -> &'static str {
        match self {
            RuleType::Exact => "Exact",
            RuleType::Prefix => "Prefix",
            RuleType::ImplementationSpecific => "ImplementationSpecific",
            RuleType::Invalid => "prefix",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Class {
    Ours,
    Other,
    LegacyOurs,
    LegacyOther,
    Unset,
}

#[derive(Arbitrary, Debug)]
struct FuzzIngress {
    other_namespace: bool,
    created: Option<u8>,
    class: Class,
    default_backend: bool,
    rules: Vec<FuzzRule>,
}

#[derive(Arbitrary, Debug)]
struct FuzzRule {
    host: RuleHost,
    paths: Vec<(Option<PathText>, RuleType)>,
}

#[derive(Arbitrary, Debug)]
enum RequestHost {
    Labels {
        labels: Vec<Label>,
        upper: bool,
        trailing_dot: bool,
        port: Option<u16>,
    },
    Ipv6(Option<u16>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    ingresses: Vec<FuzzIngress>,
    our_class_is_default: bool,
    fallback: bool,
    requests: Vec<(RequestHost, PathText)>,
}

// ---- the reference ----

/// A host as the rules declare it, after validation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    Exact(String),
    /// `*.` + this.
    Wildcard(String),
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Exact,
    Prefix,
}

struct Rule {
    host: Host,
    path: String,
    kind: Kind,
    service: String,
}

fn valid_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn reference_host(host: Option<&str>) -> Option<Host> {
    let host = match host {
        None | Some("") => return Some(Host::Any),
        Some(h) => h.to_ascii_lowercase(),
    };
    if let Some(suffix) = host.strip_prefix("*.") {
        return valid_dns_name(suffix).then(|| Host::Wildcard(suffix.to_string()));
    }
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    (valid_dns_name(&host) && !is_ip).then_some(Host::Exact(host))
}

/// Path elements with trailing slashes ignored: `/a/b/` → ["", "a", "b"].
fn elements(path: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = path.split('/').collect();
    while parts.len() > 1 && parts.last() == Some(&"") {
        parts.pop();
    }
    parts
}

fn path_matches(rule: &Rule, request: &str) -> bool {
    match rule.kind {
        Kind::Exact => rule.path == request,
        Kind::Prefix => {
            let rule = elements(&rule.path);
            let request = elements(request);
            request.len() >= rule.len() && request[..rule.len()] == rule[..]
        }
    }
}

/// The rule's length for "longest wins": without trailing slashes.
fn rule_length(rule: &Rule) -> usize {
    rule.path.trim_end_matches('/').len()
}

struct Reference {
    rules: Vec<Rule>,
    default_backend: Option<String>,
    fallback: Option<String>,
}

impl Reference {
    fn new(input: &Input) -> Self {
        let mut served: Vec<(usize, &FuzzIngress)> = input
            .ingresses
            .iter()
            .enumerate()
            .filter(|(_, ing)| match ing.class {
                Class::Ours | Class::LegacyOurs => true,
                Class::Other | Class::LegacyOther => false,
                Class::Unset => input.our_class_is_default,
            })
            .collect();
        served.sort_by_key(|(i, ing)| (ing.created, namespace(ing), name(*i)));

        let mut rules: Vec<Rule> = Vec::new();
        let mut default_backend = None;
        for (i, ing) in served {
            if ing.default_backend && default_backend.is_none() {
                default_backend = Some(format!("default-{i}"));
            }
            for (r, declared) in ing.rules.iter().enumerate() {
                let Some(host) = reference_host(declared.host.text().as_deref()) else {
                    continue;
                };
                for (p, (path, rule_type)) in declared.paths.iter().enumerate() {
                    let path = path.as_ref().map(PathText::text);
                    let (path, kind) = match (path.as_deref(), rule_type) {
                        (_, RuleType::Invalid) => continue,
                        (None | Some(""), RuleType::ImplementationSpecific) => {
                            ("/".to_string(), Kind::Prefix)
                        }
                        (Some(p), _) if !p.starts_with('/') => continue,
                        (None, _) => continue,
                        (Some(p), RuleType::Exact) => (p.to_string(), Kind::Exact),
                        (Some(p), _) => (p.to_string(), Kind::Prefix),
                    };
                    let rule = Rule {
                        host: host.clone(),
                        path,
                        kind,
                        service: format!("s-{i}-{r}-{p}"),
                    };
                    // The first claim keeps a host + path (same match kind);
                    // `/a` and `/a/` are the same Prefix rule.
                    let same = |other: &Rule| {
                        other.host == rule.host
                            && other.kind == rule.kind
                            && match rule.kind {
                                Kind::Exact => other.path == rule.path,
                                Kind::Prefix => elements(&other.path) == elements(&rule.path),
                            }
                    };
                    if !rules.iter().any(same) {
                        rules.push(rule);
                    }
                }
            }
        }
        Reference {
            rules,
            default_backend,
            fallback: input.fallback.then(|| "fallback".to_string()),
        }
    }

    /// The service a request goes to; `host` is already without port and
    /// trailing dot.
    fn route(&self, host: &str, path: &str) -> Option<String> {
        let host = host.to_ascii_lowercase();
        let has_rules = |h: &Host| self.rules.iter().any(|r| r.host == *h);
        let one_label_wildcard = host
            .split_once('.')
            .filter(|(first, rest)| !first.is_empty() && !rest.is_empty())
            .map(|(_, rest)| Host::Wildcard(rest.to_string()));
        let selected = [
            Some(Host::Exact(host.clone())),
            one_label_wildcard,
            Some(Host::Any),
        ]
        .into_iter()
        .flatten()
        .find(|h| has_rules(h));
        let best = selected.and_then(|selected| {
            self.rules
                .iter()
                .filter(|r| r.host == selected && path_matches(r, path))
                .max_by_key(|r| (rule_length(r), r.kind == Kind::Exact))
        });
        best.map(|r| r.service.clone())
            .or_else(|| self.default_backend.clone())
            .or_else(|| self.fallback.clone())
    }
}

// ---- the production path ----

fn namespace(ing: &FuzzIngress) -> &'static str {
    if ing.other_namespace {
        "other"
    } else {
        "default"
    }
}

fn name(index: usize) -> String {
    format!("ing-{index:03}")
}

fn backend(service: String) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: service,
            port: Some(ServiceBackendPort {
                number: Some(80),
                name: None,
            }),
        }),
        resource: None,
    }
}

fn snapshot(input: &Input) -> ClusterSnapshot {
    let mut snapshot = ClusterSnapshot::default();
    snapshot.ingress_classes.push(Arc::new(IngressClass {
        metadata: ObjectMeta {
            name: Some(CLASS.into()),
            annotations: Some(BTreeMap::from([(
                "ingressclass.kubernetes.io/is-default-class".to_string(),
                input.our_class_is_default.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(IngressClassSpec {
            controller: Some("switchyard.dev/ingress-controller".into()),
            parameters: None,
        }),
    }));
    for (i, ing) in input.ingresses.iter().enumerate() {
        let (class_name, legacy) = match ing.class {
            Class::Ours => (Some(CLASS), None),
            Class::Other => (Some("nginx"), None),
            Class::LegacyOurs => (None, Some(CLASS)),
            Class::LegacyOther => (None, Some("nginx")),
            Class::Unset => (None, None),
        };
        let rules = ing
            .rules
            .iter()
            .enumerate()
            .map(|(r, rule)| IngressRule {
                host: rule.host.text(),
                http: Some(HTTPIngressRuleValue {
                    paths: rule
                        .paths
                        .iter()
                        .enumerate()
                        .map(|(p, (path, rule_type))| HTTPIngressPath {
                            path: path.as_ref().map(PathText::text),
                            path_type: rule_type.text().to_string(),
                            backend: backend(format!("s-{i}-{r}-{p}")),
                        })
                        .collect(),
                }),
            })
            .collect();
        snapshot.ingresses.push(Arc::new(Ingress {
            metadata: ObjectMeta {
                namespace: Some(namespace(ing).into()),
                name: Some(name(i)),
                creation_timestamp: ing
                    .created
                    .map(|s| Time(Timestamp::from_second(i64::from(s)).unwrap())),
                annotations: legacy.map(|class| {
                    BTreeMap::from([("kubernetes.io/ingress.class".to_string(), class.to_string())])
                }),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: class_name.map(str::to_string),
                default_backend: ing.default_backend.then(|| backend(format!("default-{i}"))),
                rules: Some(rules),
                tls: None,
            }),
            ..Default::default()
        }));
    }
    snapshot
}

fuzz_target!(|input: Input| {
    let options = TranslateOptions {
        ingress_class: CLASS.into(),
        fallback: input.fallback.then(|| ServiceBackendRef {
            namespace: "default".into(),
            name: "fallback".into(),
            port: PortRef::Number(80),
        }),
    };
    let translation = translate(&snapshot(&input), &options);
    let table = RouteTable::compile(translation.spec);
    let reference = Reference::new(&input);
    assert_eq!(
        table.route_count(),
        reference.rules.len(),
        "routes kept after conflicts"
    );

    for (host, path) in &input.requests {
        let path = path.text();
        let (request_host, canonical) = match host {
            RequestHost::Labels {
                labels,
                upper,
                trailing_dot,
                port,
            } => {
                let mut name = join(labels);
                if *upper {
                    name = name.to_uppercase();
                }
                let mut request = name.clone();
                if *trailing_dot {
                    request.push('.');
                    name.push('.');
                }
                if let Some(port) = port {
                    request.push_str(&format!(":{port}"));
                }
                // One trailing dot (the fully-qualified form) is ignored.
                let canonical = name.strip_suffix('.').unwrap_or(&name).to_string();
                (request, canonical)
            }
            RequestHost::Ipv6(port) => {
                let request = match port {
                    Some(p) => format!("[::1]:{p}"),
                    None => "[::1]".to_string(),
                };
                (request, "[::1]".to_string())
            }
        };
        let got = table
            .lookup(&request_host, &path)
            .map(|r| r.labels.service.clone());
        let expected = reference.route(&canonical, &path);
        assert_eq!(
            got, expected,
            "Host {request_host:?} path {path:?}: table and reference disagree"
        );
    }
});
