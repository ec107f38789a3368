//! Builders for the manifests tests route with.

use std::net::SocketAddr;

/// A Service `name` (port 80, named `http`) in namespace `default`, with
/// one EndpointSlice per backend address.
pub fn service(name: &str, backends: &[SocketAddr]) -> String {
    let mut yaml = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n"
    );
    for (i, addr) in backends.iter().enumerate() {
        yaml += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- addresses: [\"{}\"]\n",
            addr.port(),
            addr.ip()
        );
    }
    yaml
}

/// An Ingress `name` of our class routing `host` + Prefix `path` to `service`.
pub fn ingress(
    name: &str,
    host: &str,
    path: &str,
    service: &str,
    annotations: &[(&str, &str)],
) -> String {
    let annotations: String = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n{annotations}")
    };
    let rules = format!(
        "  rules:\n  - host: \"{host}\"\n    http:\n      paths:\n      - path: {path}\n        pathType: Prefix\n        backend: {{service: {{name: {service}, port: {{number: 80}}}}}}\n"
    );
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n{annotations}spec:\n  ingressClassName: switchyard\n{rules}"
    )
}

/// A Service named `name` with `backends` and an Ingress routing
/// `host` + `path` to it.
pub fn route(name: &str, host: &str, path: &str, backends: &[SocketAddr]) -> String {
    service(name, backends) + &ingress(name, host, path, name, &[])
}

/// The objects of a manifest text as JSON, as an API server holds them.
pub fn objects(yaml: &str) -> Vec<serde_json::Value> {
    let (documents, error) = switchyard::yaml::documents(yaml);
    assert!(error.is_none(), "{error:?}");
    documents
        .into_iter()
        .map(|d| serde_json::to_value(d.value).unwrap())
        .collect()
}

/// A temporary manifest directory holding one file, `name`, of `yaml`.
pub fn dir_with(name: &str, yaml: impl AsRef<[u8]>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), yaml).unwrap();
    dir
}
