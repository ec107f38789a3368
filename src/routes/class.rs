//! Which Ingresses are ours, by IngressClass.
//!
//! An Ingress is ours when its `spec.ingressClassName` is our class name;
//! failing that, when its legacy `kubernetes.io/ingress.class` annotation
//! is; failing both, when our IngressClass (our name and our controller) is
//! marked `ingressclass.kubernetes.io/is-default-class: "true"`.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// The controller name our IngressClass must carry.
pub const CONTROLLER_NAME: &str = "switchyard.dev/ingress-controller";
/// The class name served when `--ingress-class` is not given.
pub const DEFAULT_CLASS_NAME: &str = "switchyard";
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Decides class membership for one snapshot.
pub struct ClassFilter {
    class_name: String,
    ours_is_default: bool,
    /// Other IngressClasses of our controller: another switchyard's.
    siblings: Vec<String>,
    /// One of them is the cluster's default class: Ingresses of no class
    /// are another switchyard's (unless ours is the default).
    sibling_is_default: bool,
}

/// Whose an Ingress is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    Ours,
    /// Of another class of our controller: another switchyard serves it.
    Sibling,
    Other,
}

impl ClassFilter {
    pub fn new(class_name: &str, classes: &[Arc<IngressClass>]) -> Self {
        let sibling_classes: Vec<_> = classes
            .iter()
            .filter(|class| {
                class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME)
            })
            .filter(|class| class.metadata.name.as_deref() != Some(class_name))
            .collect();
        let sibling_is_default = sibling_classes.iter().any(|class| is_default(class));
        let siblings = sibling_classes
            .iter()
            .filter_map(|class| class.metadata.name.clone())
            .collect();
        let ours_is_default = classes.iter().any(|class| {
            class.metadata.name.as_deref() == Some(class_name)
                && class.spec.as_ref().and_then(|s| s.controller.as_deref())
                    == Some(CONTROLLER_NAME)
                && is_default(class)
        });
        Self {
            class_name: class_name.to_string(),
            ours_is_default,
            siblings,
            sibling_is_default,
        }
    }

    /// Whether `ingress` is ours, another switchyard's, or neither.
    pub fn ownership(&self, ingress: &Ingress) -> Ownership {
        match class_named(ingress) {
            Some(name) if name == self.class_name => Ownership::Ours,
            Some(name) if self.siblings.iter().any(|s| s == name) => Ownership::Sibling,
            Some(_) => Ownership::Other,
            None if self.ours_is_default => Ownership::Ours,
            None if self.sibling_is_default => Ownership::Sibling,
            None => Ownership::Other,
        }
    }

    pub fn is_ours(&self, ingress: &Ingress) -> bool {
        self.ownership(ingress) == Ownership::Ours
    }
}

/// The class an Ingress names: `spec.ingressClassName`, failing that the
/// legacy annotation.
fn class_named(ingress: &Ingress) -> Option<&str> {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            let annotations = ingress.metadata.annotations.as_ref()?;
            annotations.get(LEGACY_CLASS_ANNOTATION).map(String::as_str)
        })
}

/// Whether `class` is marked the cluster's default (exactly `"true"`, as
/// the API server's admission check takes it).
fn is_default(class: &IngressClass) -> bool {
    class
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .is_some_and(|v| v == "true")
}
