//! Translation and lookup, end to end on manifests, without sockets.

use std::net::SocketAddr;
use std::path::Path;

use proptest::prelude::*;

use super::path::PathType;
use super::spec::RouteTableSpec;
use super::translate::{ServiceBackendRef, TranslateOptions, translate};
use super::{RouteTable, WarningReason};
use crate::snapshot::ClusterSnapshot;
use crate::source::manifest;

fn snapshot(yaml: &str) -> ClusterSnapshot {
    manifest::parse_snapshot(yaml, Path::new("test.yaml")).expect("test manifests parse")
}

/// A Service `name` with port 80 (named `http`) backed by one ready
/// endpoint 10.0.0.`octet`:8080.
fn service(name: &str, octet: u8) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [10.0.0.{octet}]\n"
    )
}

/// An Ingress of our class with the given rules (YAML flow items).
fn ingress(name: &str, extra_metadata: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n{extra_metadata}spec:\n  ingressClassName: switchyard\n{spec}"
    )
}

fn rule(host: &str, path: &str, path_type: &str, service: &str) -> String {
    let host = if host.is_empty() {
        String::new()
    } else {
        format!("host: \"{host}\", ")
    };
    format!(
        "  - {{{host}http: {{paths: [{{path: \"{path}\", pathType: {path_type}, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}]}}}}\n"
    )
}

fn rules(items: &[String]) -> String {
    format!("  rules:\n{}", items.concat())
}

fn table(yaml: &str) -> (RouteTable, Vec<super::Warning>) {
    let t = translate(&snapshot(yaml), &TranslateOptions::default());
    (RouteTable::compile(t.spec), t.warnings)
}

/// The service a request is routed to, or "404".
fn route_of(table: &RouteTable, host: &str, path: &str) -> String {
    table
        .lookup(host, path)
        .map(|r| r.labels.service.clone())
        .unwrap_or_else(|| "404".into())
}

#[test]
fn exact_host_beats_wildcard_which_covers_one_label() {
    let yaml = [
        service("exact", 1),
        service("wild", 2),
        ingress(
            "a",
            "",
            &rules(&[
                rule("foo.example.com", "/", "Prefix", "exact"),
                rule("*.example.com", "/", "Prefix", "wild"),
            ]),
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(route_of(&t, "foo.example.com", "/"), "exact");
    assert_eq!(route_of(&t, "FOO.Example.COM:8080", "/x"), "exact");
    assert_eq!(route_of(&t, "bar.example.com", "/"), "wild");
    assert_eq!(route_of(&t, "a.bar.example.com", "/"), "404");
    assert_eq!(route_of(&t, "example.com", "/"), "404");
}

#[test]
fn prefix_matches_element_wise_and_longest_wins() {
    let yaml = [
        service("root", 1),
        service("foo", 2),
        service("foobar", 3),
        service("exact", 4),
        ingress(
            "a",
            "",
            &rules(&[
                rule("h", "/", "Prefix", "root"),
                rule("h", "/foo/", "Prefix", "foo"),
                rule("h", "/foo/bar", "ImplementationSpecific", "foobar"),
                rule("h", "/foo", "Exact", "exact"),
            ]),
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        route_of(&t, "h", "/foo"),
        "exact",
        "Exact beats Prefix on a tie"
    );
    assert_eq!(route_of(&t, "h", "/foo/"), "foo");
    assert_eq!(route_of(&t, "h", "/foo/baz"), "foo");
    assert_eq!(route_of(&t, "h", "/foo/bar/baz"), "foobar");
    assert_eq!(route_of(&t, "h", "/foobar"), "root");
    assert_eq!(
        route_of(&t, "h", "/FOO"),
        "root",
        "paths are case-sensitive"
    );
}

#[test]
fn the_oldest_ingress_wins_a_conflict_and_the_loser_is_warned() {
    let older = "  creationTimestamp: \"2024-01-01T00:00:00Z\"\n";
    let newer = "  creationTimestamp: \"2025-01-01T00:00:00Z\"\n";
    let yaml = [
        service("old", 1),
        service("new", 2),
        ingress(
            "a-newer",
            newer,
            &rules(&[rule("h", "/api", "Prefix", "new")]),
        ),
        ingress(
            "z-older",
            older,
            &rules(&[rule("h", "/api/", "Prefix", "old")]),
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert_eq!(route_of(&t, "h", "/api/x"), "old");
    assert_eq!(warnings.len(), 1);
    let w = &warnings[0];
    assert_eq!(w.reason, WarningReason::ConflictingPath);
    assert_eq!(w.object.name, "a-newer");
    assert!(w.message.contains("default/z-older"), "{}", w.message);
    assert!(
        w.message.contains("spec.rules[0].http.paths[0]"),
        "{}",
        w.message
    );
}

#[test]
fn an_ingress_nginx_canary_is_not_served_even_when_older_than_its_main_ingress() {
    let older = "  creationTimestamp: \"2024-01-01T00:00:00Z\"\n";
    let newer = "  creationTimestamp: \"2025-01-01T00:00:00Z\"\n";
    let canary = format!(
        "{older}  annotations:\n    nginx.ingress.kubernetes.io/canary: \"true\"\n    nginx.ingress.kubernetes.io/canary-weight: \"10\"\n"
    );
    let yaml = [
        service("stable", 1),
        service("preview", 2),
        ingress("main", newer, &rules(&[rule("h", "/", "Prefix", "stable")])),
        ingress(
            "main-canary",
            &canary,
            &rules(&[
                rule("h", "/", "Prefix", "preview"),
                rule("h", "/beta", "Prefix", "preview"),
            ]),
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert_eq!(route_of(&t, "h", "/"), "stable");
    assert_eq!(
        route_of(&t, "h", "/beta"),
        "stable",
        "served by the main Ingress's /"
    );
    let reasons: Vec<_> = warnings
        .iter()
        .map(|w| (w.reason, w.object.name.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (WarningReason::IgnoredAnnotation, "main-canary"),
            (WarningReason::CanaryNotServed, "main-canary"),
        ]
    );
}

#[test]
fn an_ingress_with_tls_is_served_over_plain_http_and_warned() {
    let tls = "  tls: [{hosts: [h], secretName: h-tls}]\n";
    let yaml = [
        service("web", 1),
        ingress(
            "web",
            "",
            &format!("{tls}{}", rules(&[rule("h", "/", "Prefix", "web")])),
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert_eq!(route_of(&t, "h", "/"), "web");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].reason, WarningReason::TlsNotServed);
    assert!(
        warnings[0].message.starts_with("spec.tls:"),
        "{}",
        warnings[0].message
    );
}

#[test]
fn without_timestamps_namespace_then_name_decides() {
    let yaml = [
        service("first", 1),
        service("second", 2),
        ingress("b", "", &rules(&[rule("h", "/", "Prefix", "second")])),
        ingress("a", "", &rules(&[rule("h", "/", "Prefix", "first")])),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert_eq!(route_of(&t, "h", "/"), "first");
    assert_eq!(warnings[0].object.name, "b");
}

#[test]
fn without_timestamps_namespace_slash_name_decides_as_a_string() {
    // "a-b/x" sorts before "a/y" ('-' before '/'); namespace first, then
    // name, would put "a/y" first.
    let in_namespace = |ns: &str, octet: u8| {
        service("web", octet)
            .replace(
                "metadata: {name: web}",
                &format!("metadata: {{name: web, namespace: {ns}}}"),
            )
            .replace(
                "  name: web-1\n",
                &format!("  name: web-1\n  namespace: {ns}\n"),
            )
    };
    let yaml = [
        in_namespace("a", 1),
        in_namespace("a-b", 2),
        ingress(
            "y",
            "  namespace: a\n",
            &rules(&[rule("h", "/", "Prefix", "web")]),
        ),
        ingress(
            "x",
            "  namespace: a-b\n",
            &rules(&[rule("h", "/", "Prefix", "web")]),
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    let served = t.lookup("h", "/").unwrap();
    assert_eq!(served.labels.namespace, "a-b");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].object.namespace.as_deref(), Some("a"));
}

#[test]
fn unmatched_requests_go_to_default_backend_then_fallback_then_404() {
    let default_backend =
        "  defaultBackend: {service: {name: dflt, port: {name: http}}}\n".to_string();
    let yaml = [
        service("dflt", 1),
        service("other-dflt", 2),
        service("fb", 3),
        service("web", 4),
        ingress(
            "a",
            "",
            &[
                default_backend.clone(),
                rules(&[rule("h", "/web", "Prefix", "web")]),
            ]
            .concat(),
        ),
        ingress(
            "b",
            "",
            "  defaultBackend: {service: {name: other-dflt, port: {number: 80}}}\n",
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert_eq!(route_of(&t, "h", "/web"), "web");
    assert_eq!(route_of(&t, "h", "/other"), "dflt");
    assert_eq!(route_of(&t, "unknown", "/"), "dflt");
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].reason, WarningReason::ConflictingDefaultBackend);
    assert_eq!(warnings[0].object.name, "b");

    let options = TranslateOptions {
        fallback: Some("default/fb:80".parse().unwrap()),
        ..Default::default()
    };
    let without_default = [
        service("fb", 3),
        service("web", 4),
        ingress("a", "", &rules(&[rule("h", "/web", "Prefix", "web")])),
    ]
    .concat();
    let t = RouteTable::compile(translate(&snapshot(&without_default), &options).spec);
    assert_eq!(route_of(&t, "h", "/nothing"), "fb");
    let t = RouteTable::compile(
        translate(&snapshot(&without_default), &TranslateOptions::default()).spec,
    );
    assert_eq!(route_of(&t, "h", "/nothing"), "404");
}

#[test]
fn warnings_about_a_default_backend_name_its_own_fields() {
    let missing = ingress(
        "a",
        "",
        "  defaultBackend: {service: {name: missing, port: {number: 80}}}\n",
    );
    let (_, warnings) = table(&missing);
    assert!(
        warnings[0]
            .message
            .starts_with("spec.defaultBackend.service: Service default/missing not found"),
        "{}",
        warnings[0].message
    );
    let resource = ingress(
        "b",
        "",
        "  defaultBackend: {resource: {apiGroup: k8s.example.com, kind: StorageBucket, name: b}}\n",
    );
    let (_, warnings) = table(&resource);
    assert_eq!(
        warnings[0].message,
        "spec.defaultBackend.resource: resource backends are not supported; this default backend is ignored"
    );
}

#[test]
fn a_host_with_rules_does_not_fall_through_to_hostless_rules() {
    let yaml = [
        service("api", 1),
        service("any", 2),
        ingress(
            "a",
            "",
            &rules(&[
                rule("api.example.com", "/v1", "Prefix", "api"),
                rule("", "/", "Prefix", "any"),
            ]),
        ),
    ]
    .concat();
    let (t, _) = table(&yaml);
    assert_eq!(route_of(&t, "api.example.com", "/v1/x"), "api");
    assert_eq!(route_of(&t, "api.example.com", "/other"), "404");
    assert_eq!(route_of(&t, "www.example.com", "/other"), "any");
}

#[test]
fn a_host_whose_paths_are_all_ignored_does_not_fall_through_either() {
    let yaml = [
        service("theirs", 1),
        ingress(
            "mine",
            "",
            &rules(&[rule("foo.example.com", "/", "prefix", "nope")]),
        ),
        ingress(
            "catch-all",
            "",
            &rules(&[rule("", "/", "Prefix", "theirs")]),
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert_eq!(warnings[0].reason, WarningReason::InvalidPath);
    assert_eq!(route_of(&t, "foo.example.com", "/"), "404");
    assert_eq!(route_of(&t, "bar.example.com", "/"), "theirs");
}

/// Where a request for `raw` (as it comes on the wire) is routed: matched
/// as the proxy matches it.
fn request_to(table: &RouteTable, host: &str, raw: &str) -> String {
    let path = super::request_path::for_matching(raw).expect("a request path");
    route_of(table, host, &path)
}

#[test]
fn a_rule_path_is_matched_as_the_resource_it_names_as_requests_are() {
    let yaml = [
        service("cafe", 1),
        service("loose", 2),
        ingress(
            "a",
            "",
            &rules(&[
                rule("h", "/caf%C3%A9", "Prefix", "cafe"),
                rule("h", "/x//y/./z", "ImplementationSpecific", "loose"),
            ]),
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(request_to(&t, "h", "/caf%C3%A9/menu"), "cafe");
    assert_eq!(request_to(&t, "h", "/café"), "cafe");
    assert_eq!(request_to(&t, "h", "/x/y/z"), "loose");
    assert_eq!(request_to(&t, "h", "/x//y/z/more"), "loose");
}

#[test]
fn exact_and_prefix_paths_the_api_server_refuses_are_warned_and_ignored() {
    for bad in [
        "/a//b", "/a/./b", "/a/../b", "/a%2Fb", "/a/.", "/a/..", "/%zz",
    ] {
        let yaml = [
            service("web", 1),
            ingress("a", "", &rules(&[rule("h", bad, "Prefix", "web")])),
        ]
        .concat();
        let (t, warnings) = table(&yaml);
        assert_eq!(warnings.len(), 1, "{bad}: {warnings:?}");
        assert_eq!(warnings[0].reason, WarningReason::InvalidPath, "{bad}");
        assert!(
            warnings[0].message.contains("this path is ignored"),
            "{bad}"
        );
        assert_eq!(route_of(&t, "h", "/a"), "404", "{bad}");
    }
}

#[test]
fn ingress_class_selection() {
    let class = |default: bool| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: switchyard\n  annotations: {{ingressclass.kubernetes.io/is-default-class: \"{default}\"}}\nspec: {{controller: switchyard.dev/ingress-controller}}\n"
        )
    };
    let bare = |name: &str, metadata: &str, svc: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n{metadata}spec:\n{}",
            rules(&[rule(name, "/", "Prefix", svc)])
        )
    };
    let objects = [
        service("s", 1),
        bare("legacy", "  annotations: {kubernetes.io/ingress.class: switchyard}\n", "s"),
        bare("legacy-other", "  annotations: {kubernetes.io/ingress.class: nginx}\n", "s"),
        bare("classless", "", "s"),
        ingress("named", "", &rules(&[rule("named", "/", "Prefix", "s")])),
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: other}\nspec:\n  ingressClassName: nginx\n".to_string()
            + &rules(&[rule("other", "/", "Prefix", "s")]),
    ]
    .concat();
    let served = |yaml: &str| {
        let (t, _) = table(yaml);
        ["legacy", "legacy-other", "classless", "named", "other"]
            .into_iter()
            .filter(|h| t.lookup(h, "/").is_some())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        served(&(objects.clone() + &class(false))),
        vec!["legacy", "named"]
    );
    assert_eq!(
        served(&(objects + &class(true))),
        vec!["legacy", "classless", "named"]
    );
}

#[test]
fn ingresses_of_another_class_of_our_controller_are_another_switchyards() {
    use super::class::{ClassFilter, Ownership};
    let class = |name: &str, controller: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: {name}}}\nspec: {{controller: {controller}}}\n"
        )
    };
    let of_class = |name: &str, class: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}}}\nspec: {{ingressClassName: {class}}}\n"
        )
    };
    let yaml = [
        class("switchyard", "switchyard.dev/ingress-controller"),
        class("internal", "switchyard.dev/ingress-controller"),
        class("nginx", "k8s.io/ingress-nginx"),
        of_class("mine", "switchyard"),
        of_class("sibling", "internal"),
        of_class("foreign", "nginx"),
    ]
    .concat();
    let snapshot = snapshot(&yaml);
    let filter = ClassFilter::new("switchyard", &snapshot.ingress_classes);
    let owners: Vec<_> = snapshot
        .ingresses
        .iter()
        .map(|i| filter.ownership(i))
        .collect();
    assert_eq!(
        owners,
        [Ownership::Ours, Ownership::Sibling, Ownership::Other]
    );

    // With the other switchyard's class the default, a class-less Ingress
    // is that one's too.
    let default_sibling = "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: internal\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: switchyard.dev/ingress-controller}\n";
    let classless = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: classless}\nspec: {}\n";
    let objects = self::snapshot(&[default_sibling, classless].concat());
    let filter = ClassFilter::new("switchyard", &objects.ingress_classes);
    assert_eq!(filter.ownership(&objects.ingresses[0]), Ownership::Sibling);
}

#[test]
fn backends_resolve_through_endpoint_slices_to_ready_endpoints_only() {
    let yaml = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: http, port: 80}, {name: admin, port: 9000}]\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-a\n  labels: {kubernetes.io/service-name: web}\n\
addressType: IPv4\nports: [{name: http, port: 8080}, {name: admin, port: 9090}]\nendpoints:\n\
- addresses: [10.0.0.2]\n- addresses: [10.0.0.1]\n  conditions: {ready: true}\n- addresses: [10.0.0.3]\n  conditions: {ready: false}\n\
- addresses: [10.0.0.4]\n  conditions: {ready: false, serving: true, terminating: true}\n"
        .to_string()
        + &ingress(
            "a",
            "",
            "  rules:\n  - http:\n      paths:\n      - {path: /admin, pathType: Prefix, backend: {service: {name: web, port: {name: admin}}}}\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n",
        );
    let (t, warnings) = table(&yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    let endpoints = |path: &str| t.lookup("h", path).unwrap().backend.endpoints().to_vec();
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(
        endpoints("/"),
        vec![addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]
    );
    assert_eq!(
        endpoints("/admin"),
        vec![addr("10.0.0.1:9090"), addr("10.0.0.2:9090")]
    );
    let route = t.lookup("h", "/").unwrap();
    let picks: Vec<_> = (0..4).map(|_| route.backend.pick().unwrap()).collect();
    assert_eq!(picks[0], picks[2], "round robin");
    assert_ne!(picks[0], picks[1], "round robin");
}

#[test]
fn endpoints_come_from_every_slice_once_each_with_that_slices_port() {
    // A named targetPort can map to another number on some pods (their
    // own slice); an address can be in two slices while they are
    // rewritten; FQDN slices are not addresses to connect to; and an
    // endpoint still ready while terminating (publishNotReadyAddresses)
    // takes no new work.
    let slice = |name: &str, kind: &str, port: u16, endpoints: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: web}}\n\
             addressType: {kind}\nports: [{{name: http, port: {port}}}]\nendpoints:\n{endpoints}"
        )
    };
    let yaml = [
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: http, port: 80}]\n".to_string(),
        slice(
            "web-a",
            "IPv4",
            8080,
            "- addresses: [10.0.0.1]\n- addresses: [10.0.0.5]\n  conditions: {ready: true, terminating: true}\n",
        ),
        slice("web-b", "IPv4", 8081, "- addresses: [10.0.0.6]\n"),
        slice("web-c", "IPv4", 8080, "- addresses: [10.0.0.1]\n"),
        slice("web-d", "FQDN", 8080, "- addresses: [backend.example.com]\n"),
        ingress("a", "", &rules(&[rule("h", "/", "Prefix", "web")])),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    let endpoints = t.lookup("h", "/").unwrap().backend.endpoints().to_vec();
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(endpoints, [addr("10.0.0.1:8080"), addr("10.0.0.6:8081")]);
}

#[test]
fn a_dual_stack_service_is_reached_at_its_first_familys_addresses() {
    let slice = |name: &str, kind: &str, address: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: web}}\n\
             addressType: {kind}\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [\"{address}\"]\n"
        )
    };
    let service = |families: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  ipFamilies: [{families}]\n  ports: [{{name: http, port: 80}}]\n"
        )
    };
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    for (families, expected) in [
        ("IPv4, IPv6", addr("10.0.0.1:8080")),
        ("IPv6, IPv4", addr("[2001:db8::1]:8080")),
    ] {
        let yaml = [
            service(families),
            slice("web-v4", "IPv4", "10.0.0.1"),
            slice("web-v6", "IPv6", "2001:db8::1"),
            ingress("a", "", &rules(&[rule("h", "/", "Prefix", "web")])),
        ]
        .concat();
        let (t, warnings) = table(&yaml);
        assert!(warnings.is_empty(), "{warnings:?}");
        let endpoints = t.lookup("h", "/").unwrap().backend.endpoints().to_vec();
        assert_eq!(endpoints, [expected], "{families}");
    }
}

#[test]
fn a_service_port_is_a_tcp_one_even_where_udp_shares_its_number() {
    // HTTP/3 beside HTTPS: one number, two protocols, UDP listed first.
    let yaml = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: quic, port: 443, protocol: UDP}, {name: https, port: 443, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-a\n  labels: {kubernetes.io/service-name: web}\n\
addressType: IPv4\nports: [{name: quic, port: 8443, protocol: UDP}, {name: https, port: 8443}, {name: dns, port: 5353, protocol: UDP}]\nendpoints:\n- addresses: [10.0.0.1]\n"
        .to_string()
        + &ingress(
            "a",
            "",
            "  rules:\n  - http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 443}}}}\n      - {path: /dns, pathType: Prefix, backend: {service: {name: web, port: {number: 53}}}}\n",
        );
    let (t, warnings) = table(&yaml);
    let endpoints = t.lookup("h", "/").unwrap().backend.endpoints().to_vec();
    assert_eq!(
        endpoints,
        vec!["10.0.0.1:8443".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].reason, WarningReason::ServicePortNotFound);
    assert!(
        warnings[0].message.contains("53/dns (UDP)"),
        "{}",
        warnings[0].message
    );
}

#[test]
fn broken_backends_give_a_503_route_and_a_warning_each() {
    let yaml = [
        service("ok", 1),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty}\nspec: {ports: [{port: 80}]}\n".to_string(),
        ingress(
            "a",
            "",
            &rules(&[
                rule("h", "/missing", "Prefix", "nope"),
                rule("h", "/empty", "Prefix", "empty"),
                rule("h", "/ok", "Prefix", "ok"),
                rule("h", "relative", "Prefix", "ok"),
                rule("bad_host", "/", "Prefix", "ok"),
            ]),
        ),
    ]
    .concat();
    let (t, warnings) = table(&yaml);
    // In the order of the fields they name: rules 0, 1, 3 and 4.
    let reasons: Vec<_> = warnings.iter().map(|w| w.reason).collect();
    assert_eq!(
        reasons,
        vec![
            WarningReason::BackendNotFound,
            WarningReason::NoReadyEndpoints,
            WarningReason::InvalidPath,
            WarningReason::InvalidHost,
        ]
    );
    let fields: Vec<_> = warnings.iter().map(|w| &w.message[..13]).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0]",
            "spec.rules[1]",
            "spec.rules[3]",
            "spec.rules[4]"
        ]
    );
    assert!(t.lookup("h", "/missing").unwrap().backend.pick().is_none());
    assert!(t.lookup("h", "/empty").unwrap().backend.pick().is_none());
    assert!(t.lookup("h", "/ok").unwrap().backend.pick().is_some());
    assert!(warnings[2].message.contains("\"relative\""));
    assert!(
        warnings[0]
            .message
            .contains("Service default/nope not found")
    );
}

#[test]
fn upgrade_protocols_are_per_ingress() {
    let yaml = [
        service("s", 1),
        ingress("ws", "", &rules(&[rule("ws", "/", "Prefix", "s")])),
        ingress(
            "h2c",
            "  annotations: {switchyard.dev/upgrade-protocols: \"websocket,h2c\"}\n",
            &rules(&[rule("h2c", "/", "Prefix", "s")]),
        ),
    ]
    .concat();
    let (t, _) = table(&yaml);
    assert!(t.lookup("ws", "/").unwrap().allows_upgrade("WebSocket"));
    assert!(!t.lookup("ws", "/").unwrap().allows_upgrade("h2c"));
    assert!(t.lookup("h2c", "/").unwrap().allows_upgrade("h2c"));
}

#[test]
fn translation_is_deterministic_whatever_the_object_order() {
    let parts = [
        service("a", 1),
        service("b", 2),
        ingress(
            "x",
            "",
            &rules(&[
                rule("h", "/a", "Prefix", "a"),
                rule("*.h", "/", "Exact", "b"),
            ]),
        ),
        ingress("y", "", &rules(&[rule("g", "/", "Prefix", "b")])),
    ];
    let forward = translate(&snapshot(&parts.concat()), &TranslateOptions::default());
    let mut reversed = parts.to_vec();
    reversed.reverse();
    let backward = translate(&snapshot(&reversed.concat()), &TranslateOptions::default());
    assert_eq!(forward.spec, backward.spec);
    let json = serde_json::to_string(&forward.spec).unwrap();
    assert!(json.starts_with("{\"hosts\":[{\"host\":\"g\""), "{json}");
}

#[test]
fn fallback_references_parse() {
    let r: ServiceBackendRef = "ns/svc:http".parse().unwrap();
    assert_eq!((r.namespace.as_str(), r.name.as_str()), ("ns", "svc"));
    assert!("svc:80".parse::<ServiceBackendRef>().is_err());
    assert!("ns/svc".parse::<ServiceBackendRef>().is_err());
    for impossible in [
        "ns/svc:-1",
        "ns/svc:0",
        "ns/svc:70000",
        "ns/a/b:80",
        "NS/svc:80",
        "ns/svc:http_alt",
        "ns/svc:",
    ] {
        assert!(
            impossible.parse::<ServiceBackendRef>().is_err(),
            "{impossible} was taken"
        );
    }
    assert!("ns/svc:8080".parse::<ServiceBackendRef>().is_ok());
}

// ---- property tests: the compiled matcher against the specification ----

/// The specification, written the obvious way: split on `/`, compare
/// element by element, keep the longest, prefer Exact on a tie.
fn reference_match<'a>(
    rules: &'a [(String, PathType)],
    request: &str,
) -> Option<&'a (String, PathType)> {
    let elements = |p: &str| -> Vec<String> {
        p.trim_end_matches('/')
            .split('/')
            .map(str::to_string)
            .collect()
    };
    let request_elements = elements(request);
    rules
        .iter()
        .filter(|(path, ty)| match ty {
            PathType::Exact => path == request,
            _ => {
                let rule = elements(path);
                rule.len() <= request_elements.len() && rule[..] == request_elements[..rule.len()]
            }
        })
        .max_by_key(|(path, ty)| (path.trim_end_matches('/').len(), ty.is_exact()))
}

fn path_strategy() -> impl Strategy<Value = String> {
    // The long element takes paths across the 64 bytes up to which the
    // table knows its keys' lengths exactly.
    let long = "l".repeat(40);
    prop::collection::vec(
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("ab".to_string()),
            Just(String::new()),
            Just(long)
        ],
        0..4,
    )
    .prop_flat_map(|parts| (Just(parts), any::<bool>()))
    .prop_map(|(parts, trailing)| {
        let mut p = format!("/{}", parts.join("/"));
        if trailing && !p.ends_with('/') {
            p.push('/');
        }
        p
    })
}

fn rules_strategy() -> impl Strategy<Value = Vec<(String, PathType)>> {
    prop::collection::vec(
        (
            path_strategy(),
            prop_oneof![
                Just(PathType::Exact),
                Just(PathType::Prefix),
                Just(PathType::ImplementationSpecific)
            ],
        ),
        1..8,
    )
}

fn spec_for(rules: &[(String, PathType)]) -> (RouteTableSpec, Vec<(String, PathType)>) {
    // Build through translate so that conflicts resolve as in production;
    // the surviving rules are the ones the reference may pick from.
    let mut yaml = String::new();
    for (i, (path, ty)) in rules.iter().enumerate() {
        yaml += &service(&format!("s{i}"), 1);
        yaml += &ingress(
            &format!("i{i:02}"),
            "",
            &self::rules(&[rule("h", path, &format!("{ty:?}"), &format!("s{i}"))]),
        );
    }
    let t = translate(&snapshot(&yaml), &TranslateOptions::default());
    let surviving = t.spec.hosts[0]
        .paths
        .iter()
        .map(|p| (p.path.clone(), p.path_type))
        .collect();
    (t.spec, surviving)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn path_lookup_agrees_with_the_specification(rules in rules_strategy(), request in path_strategy()) {
        let (spec, surviving) = spec_for(&rules);
        let table = RouteTable::compile(spec.clone());
        let got = table.lookup("h", &request).map(|r| r.labels.service.clone());
        let expected = reference_match(&surviving, &request).map(|(path, ty)| {
            spec.hosts[0].paths.iter().find(|p| &p.path == path && p.path_type == *ty).unwrap().route.backend.service.clone()
        });
        prop_assert_eq!(got, expected, "rules {:?} request {:?}", surviving, request);
    }

    #[test]
    fn host_lookup_agrees_with_the_specification(
        labels in prop::collection::vec(prop_oneof!["a", "b", "example"], 1..4),
        upper in any::<bool>(),
        port in any::<bool>(),
    ) {
        let yaml = [
            service("exact", 1),
            service("wild", 2),
            ingress("a", "", &rules(&[rule("a.example", "/", "Prefix", "exact"), rule("*.example", "/", "Prefix", "wild")])),
        ].concat();
        let (t, _) = table(&yaml);
        let host = labels.join(".");
        let mut request = if upper { host.to_uppercase() } else { host.clone() };
        if port { request.push_str(":8443"); }
        let expected = if host == "a.example" {
            "exact"
        } else if labels.len() == 2 && labels[1] == "example" {
            "wild"
        } else {
            "404"
        };
        prop_assert_eq!(route_of(&t, &request, "/"), expected);
    }
}

// ---- metric series across table swaps ----

#[test]
fn route_series_outlive_swaps_and_go_once_no_route_has_their_labels() {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::metrics::Metrics;
    use crate::route_metrics::{CloseReason, UpgradeResult};
    use crate::routes::RouteStore;

    let metrics = Arc::new(Metrics::new());
    let store = RouteStore::new(metrics.clone());
    let spec = |yaml: &str| translate(&snapshot(yaml), &TranslateOptions::default()).spec;
    let exported = || String::from_utf8(metrics.encode()).unwrap();
    let count = |table: &RouteTable, path: &str| {
        let route = table.lookup("h", path).unwrap();
        let ok = http::StatusCode::OK;
        route
            .metrics
            .count_request(&metrics, &route.labels, ok, Duration::ZERO);
    };
    let requests_of_a = "switchyard_requests_total{code_class=\"2xx\",ingress=\"a\"";

    store.swap_if_changed(spec(
        &[
            service("s", 1),
            ingress("a", "", &rules(&[rule("h", "/", "Prefix", "s")])),
        ]
        .concat(),
    ));
    count(&store.load(), "/");
    let first = store.load().lookup("h", "/").unwrap().clone();
    // Another path of the same Ingress and Service: the same series, not
    // a fresh one from zero.
    store.swap_if_changed(spec(
        &[
            service("s", 1),
            ingress("a", "", &rules(&[rule("h", "/v2", "Prefix", "s")])),
        ]
        .concat(),
    ));
    count(&store.load(), "/v2");
    let in_flight = store.load().lookup("h", "/v2").unwrap().clone();
    assert!(Arc::ptr_eq(&first.metrics, &in_flight.metrics), "shared");
    assert!(
        exported().contains(&format!(
            "{requests_of_a},namespace=\"default\",service=\"s\"}} 2"
        )),
        "{}",
        exported()
    );
    // Every family with route labels, for the removal below to cover.
    let labels = &in_flight.labels;
    in_flight
        .metrics
        .count_upgrade(&metrics, labels, UpgradeResult::Switched);
    let tunnels = in_flight.metrics.tunnels(&metrics, labels);
    tunnels.active.inc();
    tunnels.bytes.client_to_backend.inc();
    tunnels.bytes.backend_to_client.inc();
    tunnels.count_close(&metrics, labels, CloseReason::IdleTimeout, Duration::ZERO);
    let values = crate::metrics::route_values(labels);
    for family in [
        &metrics.upstream_connect_errors,
        &metrics.upstream_timeouts,
        &metrics.upstream_ejections,
    ] {
        family.with_label_values(&values).inc();
    }
    metrics
        .upstream_ejected_endpoints
        .with_label_values(&values)
        .inc();
    for family in [
        "switchyard_upgrades_total",
        "switchyard_tunnels_active",
        "switchyard_tunnel_bytes_total",
        "switchyard_tunnel_closes_total",
        "switchyard_tunnel_errors_total",
        "switchyard_tunnel_duration_seconds",
        "switchyard_upstream_connect_errors_total",
        "switchyard_upstream_timeouts_total",
        "switchyard_upstream_ejections_total",
        "switchyard_upstream_ejected_endpoints",
    ] {
        assert!(
            exported()
                .lines()
                .any(|l| l.starts_with(family) && l.contains("ingress=\"a\"")),
            "{family} made for the test"
        );
    }

    // Ingress `a` is gone, but a request of the table before is in flight.
    store.swap_if_changed(spec(
        &[
            service("s", 1),
            ingress("b", "", &rules(&[rule("h", "/", "Prefix", "s")])),
        ]
        .concat(),
    ));
    count(&store.load(), "/");
    assert!(exported().contains(requests_of_a), "kept while in use");
    drop(in_flight);
    drop(first);
    let after = exported();
    assert!(!after.contains("ingress=\"a\""), "{after}");
    assert!(after.contains("ingress=\"b\""), "{after}");
}
