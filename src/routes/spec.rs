//! The route table as plain data: what translate produces, what `/routes`
//! and `switchyard routes` print, and what two tables are compared by.
//! [`RouteTable`](super::RouteTable) compiles it for lookup.

use std::fmt;
use std::net::SocketAddr;

use serde::{Serialize, Serializer};

use super::host::HostPattern;
use super::path::PathType;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTableSpec {
    /// Sorted: exact hosts, then wildcards, then the rules for every host.
    pub hosts: Vec<HostSpec>,
    /// The `defaultBackend` of the oldest Ingress that has one.
    pub default_backend: Option<RouteSpec>,
    /// The cluster-wide fallback (`--default-backend-service`).
    pub fallback: Option<RouteSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostSpec {
    pub host: HostPattern,
    /// Sorted by path, then type.
    pub paths: Vec<PathSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathSpec {
    pub path: String,
    pub path_type: PathType,
    #[serde(flatten)]
    pub route: RouteSpec,
}

/// Where matching requests go, and the policy that applies to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteSpec {
    /// `namespace/name` of the Ingress that declared the route; absent for
    /// the cluster-wide fallback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
    pub backend: BackendSpec,
    /// Upgrade protocols (lower-case tokens) this route may tunnel.
    pub upgrades: Vec<String>,
}

/// A Service port and its ready endpoints. No endpoints means the route
/// answers 503 (the reason is among the warnings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendSpec {
    pub namespace: String,
    pub service: String,
    pub port: PortRef,
    pub endpoints: Vec<SocketAddr>,
}

/// A Service port, by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

impl Serialize for PortRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

impl RouteTableSpec {
    /// A human-readable table, one route per line (`switchyard routes`).
    pub fn to_text(&self) -> String {
        let mut rows = vec![[
            "HOST".to_string(),
            "PATH".into(),
            "TYPE".into(),
            "BACKEND".into(),
            "ENDPOINTS".into(),
            "INGRESS".into(),
            "UPGRADES".into(),
        ]];
        let row = |host: String, path: String, kind: &str, route: &RouteSpec| {
            let endpoints = if route.backend.endpoints.is_empty() {
                "none (503)".to_string()
            } else {
                let all: Vec<_> = route
                    .backend
                    .endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect();
                all.join(",")
            };
            [
                host,
                path,
                kind.to_string(),
                route.backend.to_string(),
                endpoints,
                route.ingress.clone().unwrap_or_else(|| "-".into()),
                route.upgrades.join(","),
            ]
        };
        for host in &self.hosts {
            for path in &host.paths {
                rows.push(row(
                    host.host.to_string(),
                    path.path.clone(),
                    path.path_type.as_str(),
                    &path.route,
                ));
            }
        }
        if let Some(route) = &self.default_backend {
            rows.push(row("(default backend)".into(), "-".into(), "-", route));
        }
        if let Some(route) = &self.fallback {
            rows.push(row("(fallback)".into(), "-".into(), "-", route));
        }
        let mut widths = [0usize; 7];
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = String::new();
        for r in &rows {
            let line: Vec<_> = r
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}
