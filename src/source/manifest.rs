//! Decoding manifest files into the cluster objects switchyard reads:
//! `networking.k8s.io/v1` Ingress and IngressClass, `v1` Service,
//! `discovery.k8s.io/v1` EndpointSlice and `v1` Secret of type
//! `kubernetes.io/tls`. Other kinds are skipped and reported as such.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_yaml::Value;

use crate::snapshot::ClusterSnapshot;
use crate::yaml;

/// The namespace an object without one is placed in, as kubectl does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One decoded object of a kind switchyard reads.
// The variants differ by a few hundred bytes and are moved into the
// snapshot whole; boxing them would only add an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Object {
    Ingress(Arc<Ingress>),
    IngressClass(Arc<IngressClass>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    TlsSecret(Arc<Secret>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Ingress(_) => "Ingress",
            Object::IngressClass(_) => "IngressClass",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::TlsSecret(_) => "Secret",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Ingress(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::TlsSecret(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            // Only called while parsing, when the object is not shared
            // yet: make_mut does not copy then.
            Object::Ingress(o) => &mut Arc::make_mut(o).metadata,
            Object::IngressClass(o) => &mut Arc::make_mut(o).metadata,
            Object::Service(o) => &mut Arc::make_mut(o).metadata,
            Object::EndpointSlice(o) => &mut Arc::make_mut(o).metadata,
            Object::TlsSecret(o) => &mut Arc::make_mut(o).metadata,
        }
    }

    /// Moves the object into the snapshot's list for its kind.
    pub fn add_to(self, snapshot: &mut ClusterSnapshot) {
        match self {
            Object::Ingress(o) => snapshot.ingresses.push(o),
            Object::IngressClass(o) => snapshot.ingress_classes.push(o),
            Object::Service(o) => snapshot.services.push(o),
            Object::EndpointSlice(o) => snapshot.endpoint_slices.push(o),
            Object::TlsSecret(o) => snapshot.tls_secrets.push(o),
        }
    }

    /// `Kind namespace/name` (or `Kind name` when cluster-scoped).
    pub fn describe(&self) -> String {
        let meta = self.metadata();
        let name = meta.name.as_deref().unwrap_or("");
        match &meta.namespace {
            Some(ns) => format!("{} {ns}/{name}", self.kind()),
            None => format!("{} {name}", self.kind()),
        }
    }
}

/// Where in the manifest files a problem is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based document position in the file, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// 1-based line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        match (self.document, self.line) {
            (Some(d), Some(l)) => write!(f, ": document {d} (line {l})"),
            (Some(d), None) => write!(f, ": document {d}"),
            (None, Some(l)) => write!(f, ": line {l}"),
            (None, None) => Ok(()),
        }
    }
}

/// A manifest that could not be used. The file's objects from its last
/// good version stay in force.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoadError {
    #[serde(flatten)]
    pub location: Location,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A document of a kind switchyard does not read (a Deployment, say).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    #[serde(flatten)]
    pub location: Location,
    pub what: String,
}

/// What one file holds.
#[derive(Default)]
pub struct ParsedFile {
    pub objects: Vec<(Location, Object)>,
    pub errors: Vec<LoadError>,
    pub skipped: Vec<Skipped>,
}

/// Decodes a text of manifests into a snapshot, or the errors that stop it.
pub fn parse_snapshot(text: &str, file: &Path) -> Result<ClusterSnapshot, Vec<LoadError>> {
    let parsed = parse(text, file);
    if !parsed.errors.is_empty() {
        return Err(parsed.errors);
    }
    let mut snapshot = ClusterSnapshot::default();
    for (_, object) in parsed.objects {
        object.add_to(&mut snapshot);
    }
    Ok(snapshot)
}

/// Decodes every document of one file. `file` is only used in messages.
pub fn parse(text: &str, file: &Path) -> ParsedFile {
    let mut parsed = ParsedFile::default();
    let syntax_error = yaml::for_each_document(text, |doc| {
        let location = Location {
            file: file.to_path_buf(),
            document: Some(doc.index),
            line: Some(doc.line),
        };
        decode_document(doc.value, location, &mut parsed);
    });
    if let Some(e) = syntax_error {
        parsed.errors.push(LoadError {
            location: Location {
                file: file.to_path_buf(),
                document: Some(e.index),
                line: e.line,
            },
            message: format!("not valid YAML: {}", e.message),
        });
    }
    parsed
}

fn decode_document(value: Value, location: Location, parsed: &mut ParsedFile) {
    let api_version = yaml::str_field(&value, "apiVersion")
        .unwrap_or("")
        .to_string();
    let kind = yaml::str_field(&value, "kind").unwrap_or("").to_string();
    let error = |message: String| LoadError {
        location: location.clone(),
        message,
    };
    if kind.is_empty() || api_version.is_empty() {
        parsed.errors.push(error(
            "not a Kubernetes object: apiVersion and kind are required".into(),
        ));
        return;
    }
    if kind == "List" {
        decode_list(value, &location, parsed);
        return;
    }
    let decoded = match (api_version.as_str(), kind.as_str()) {
        ("networking.k8s.io/v1", "Ingress") => {
            yaml::decode(value).map(|o| Object::Ingress(Arc::new(o)))
        }
        ("networking.k8s.io/v1", "IngressClass") => {
            yaml::decode(value).map(|o| Object::IngressClass(Arc::new(o)))
        }
        ("v1", "Service") => yaml::decode(value).map(|o| Object::Service(Arc::new(o))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            yaml::decode(value).map(|o| Object::EndpointSlice(Arc::new(o)))
        }
        ("v1", "Secret") => match yaml::decode_without_values::<Secret>(value) {
            Ok(secret) if secret.type_.as_deref() == Some("kubernetes.io/tls") => {
                Ok(Object::TlsSecret(Arc::new(secret)))
            }
            Ok(_) => {
                parsed.skipped.push(Skipped {
                    location,
                    what: "Secret that is not of type kubernetes.io/tls".into(),
                });
                return;
            }
            Err(e) => Err(e),
        },
        (_, "Ingress" | "IngressClass") => Err(format!(
            "{kind} {api_version} is not supported; use apiVersion networking.k8s.io/v1"
        )),
        (_, "EndpointSlice") => Err(format!(
            "EndpointSlice {api_version} is not supported; use apiVersion discovery.k8s.io/v1"
        )),
        _ => {
            parsed.skipped.push(Skipped {
                location,
                what: format!("{kind} ({api_version}) is not read by switchyard"),
            });
            return;
        }
    };
    match decoded.and_then(validate_metadata) {
        Ok(object) => parsed.objects.push((location, object)),
        Err(message) => parsed.errors.push(error(format!("{kind}: {message}"))),
    }
}

/// `kind: List` (as `kubectl get -o yaml` writes) holds objects in `items`.
fn decode_list(value: Value, location: &Location, parsed: &mut ParsedFile) {
    let Some(Value::Sequence(items)) = value.get("items").cloned() else {
        parsed.errors.push(LoadError {
            location: location.clone(),
            message: "List: items must be a sequence".into(),
        });
        return;
    };
    for (i, item) in items.into_iter().enumerate() {
        let before = parsed.errors.len();
        decode_document(item, location.clone(), parsed);
        for e in &mut parsed.errors[before..] {
            e.message = format!("items[{i}]: {}", e.message);
        }
    }
}

/// Every object needs a name; namespaced kinds default to `default`.
fn validate_metadata(mut object: Object) -> Result<Object, String> {
    let cluster_scoped = matches!(object, Object::IngressClass(_));
    let meta = object.metadata_mut();
    if meta.name.as_deref().is_none_or(str::is_empty) {
        return Err("metadata.name is required".into());
    }
    if cluster_scoped {
        meta.namespace = None;
    } else if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some(DEFAULT_NAMESPACE.into());
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> ParsedFile {
        parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn reads_known_kinds_and_defaults_the_namespace() {
        let parsed = parse_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: switchyard, namespace: x}\n\
             spec: {controller: switchyard.dev/ingress-controller}\n",
        );
        assert!(parsed.errors.is_empty());
        assert_eq!(parsed.objects.len(), 2);
        assert_eq!(parsed.objects[0].1.describe(), "Service default/web");
        assert_eq!(parsed.objects[1].1.describe(), "IngressClass switchyard");
    }

    #[test]
    fn type_errors_name_document_line_and_field() {
        let parsed = parse_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports:\n  - port: eighty\n",
        );
        assert_eq!(parsed.objects.len(), 1);
        let error = &parsed.errors[0];
        assert_eq!(error.location.document, Some(2));
        assert_eq!(error.location.line, Some(5));
        assert!(
            error.message.contains("spec.ports[0].port"),
            "{}",
            error.message
        );
        assert_eq!(
            error.to_string().split(": ").next(),
            Some("test.yaml"),
            "message starts with the file"
        );
    }

    #[test]
    fn other_kinds_and_opaque_secrets_are_skipped_not_errors() {
        let parsed = parse_text(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: Opaque\ndata: {password: c2VjcmV0}\n",
        );
        assert!(parsed.errors.is_empty());
        assert!(parsed.objects.is_empty());
        assert_eq!(parsed.skipped.len(), 2);
        assert!(!format!("{:?}", parsed.skipped).contains("c2VjcmV0"));
    }

    #[test]
    fn a_malformed_secret_is_reported_without_its_values() {
        let parsed = parse_text(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: kubernetes.io/tls\n\
             data: {tls.key: [LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t]}\n",
        );
        assert_eq!(parsed.errors.len(), 1);
        let message = parsed.errors[0].to_string();
        assert!(message.contains("data.tls.key"), "{message}");
        assert!(
            !message.contains("LS0tLS1CRUdJTi"),
            "key material leaked: {message}"
        );
    }

    #[test]
    fn missing_name_and_old_api_versions_are_errors() {
        let parsed = parse_text(
            "apiVersion: v1\nkind: Service\nmetadata: {}\n---\n\
             apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: old}\n",
        );
        assert_eq!(parsed.errors.len(), 2);
        assert!(
            parsed.errors[0]
                .message
                .contains("metadata.name is required")
        );
        assert!(parsed.errors[1].message.contains("networking.k8s.io/v1"));
    }

    #[test]
    fn lists_are_unpacked() {
        let parsed = parse_text(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n\
             - apiVersion: v1\n  kind: Service\n  metadata: {}\n",
        );
        assert_eq!(parsed.objects.len(), 1);
        assert!(parsed.errors[0].message.starts_with("items[1]: "));
    }
}
