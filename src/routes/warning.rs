//! Warnings translate attaches to the object they concern. Each has a
//! stable reason (used for metrics labels and, in kube mode, Event reasons)
//! and a message naming the field and value.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum WarningReason {
    BackendNotFound,
    ServicePortNotFound,
    NoReadyEndpoints,
    UnsupportedBackend,
    ConflictingPath,
    ConflictingDefaultBackend,
    InvalidHost,
    InvalidPath,
    InvalidAnnotation,
    IgnoredAnnotation,
    CanaryNotServed,
    TlsNotServed,
}

impl WarningReason {
    pub const ALL: [WarningReason; 12] = [
        Self::BackendNotFound,
        Self::ServicePortNotFound,
        Self::NoReadyEndpoints,
        Self::UnsupportedBackend,
        Self::ConflictingPath,
        Self::ConflictingDefaultBackend,
        Self::InvalidHost,
        Self::InvalidPath,
        Self::InvalidAnnotation,
        Self::IgnoredAnnotation,
        Self::CanaryNotServed,
        Self::TlsNotServed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BackendNotFound => "BackendNotFound",
            Self::ServicePortNotFound => "ServicePortNotFound",
            Self::NoReadyEndpoints => "NoReadyEndpoints",
            Self::UnsupportedBackend => "UnsupportedBackend",
            Self::ConflictingPath => "ConflictingPath",
            Self::ConflictingDefaultBackend => "ConflictingDefaultBackend",
            Self::InvalidHost => "InvalidHost",
            Self::InvalidPath => "InvalidPath",
            Self::InvalidAnnotation => "InvalidAnnotation",
            Self::IgnoredAnnotation => "IgnoredAnnotation",
            Self::CanaryNotServed => "CanaryNotServed",
            Self::TlsNotServed => "TlsNotServed",
        }
    }
}

/// The object a warning is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub object: ObjectRef,
    pub reason: WarningReason,
    /// Names the field and the value, e.g. `spec.rules[0].host "a_b": ...`.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.object,
            self.reason.as_str(),
            self.message
        )
    }
}
