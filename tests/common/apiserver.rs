//! A fake Kubernetes API server over real HTTP, for testing the kube source
//! (and the real binary via `KUBECONFIG`) without a cluster.
//!
//! It serves only what the controller uses: Services, Secrets, Ingresses
//! (plus their `/status`), IngressClasses, EndpointSlices, Leases and
//! `events.k8s.io` Events, stored as plain JSON. GET, LIST (namespace, label
//! and field selectors), WATCH (replayed from a change log, then live),
//! POST, PUT, PATCH (merge, strategic-as-merge, apply-as-merge) and DELETE.
//! One global resourceVersion counter; identical writes are no-ops.
//! Like an old API server it refuses streaming lists (`sendInitialEvents`,
//! 400), and a Lease apply that would take another holder's lease is a 409
//! `Conflict`, which is how kube-lease-manager sees a lost race.
//!
//! Tests steer it: write objects with [`FakeApiServer::apply`], break
//! watches ([`FakeApiServer::expire_watches`], [`FakeApiServer::drop_watches`]),
//! take it down ([`FakeApiServer::set_down`]: connections are dropped, no
//! answer) or away ([`FakeApiServer::stop`]), and inspect every request.
//! Not modelled: pagination, set-based label selectors (`in`, `notin`),
//! generation, managed fields, authentication.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Body = UnsyncBoxBody<Bytes, io::Error>;
/// (kind, namespace or "" when cluster-scoped, name)
type Key = (&'static str, String, String);

/// A resource the server knows.
struct Kind {
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
}

#[rustfmt::skip]
const KINDS: &[Kind] = &[
    kind("v1",                     "Service",       "services",       true),
    kind("v1",                     "Secret",        "secrets",        true),
    kind("networking.k8s.io/v1",   "Ingress",       "ingresses",      true),
    kind("networking.k8s.io/v1",   "IngressClass",  "ingressclasses", false),
    kind("discovery.k8s.io/v1",    "EndpointSlice", "endpointslices", true),
    kind("coordination.k8s.io/v1", "Lease",         "leases",         true),
    kind("events.k8s.io/v1",       "Event",         "events",         true),
];

const fn kind(
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Kind {
    Kind {
        api_version,
        kind,
        plural,
        namespaced,
    }
}

fn find_kind(api_version: &str, kind: &str) -> &'static Kind {
    KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve {api_version} {kind}"))
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw (still percent-encoded) query string, "" when absent.
    pub query: String,
    pub body: String,
}

impl RecordedRequest {
    /// One decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        parse_query(&self.query).remove(key)
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The fake API server. Clones share the same server.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
}

/// How the fake answers the writes of one kind (Ingress status, Leases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    Answered,
    /// Never answered: the request hangs, as on a half-open connection.
    Hang,
    /// Refused with a 500.
    Fail,
}

struct Inner {
    addr: SocketAddr,
    state: Mutex<State>,
    down: AtomicBool,
    status_writes: Mutex<Writes>,
    lease_writes: Mutex<Writes>,
    stopped: CancellationToken,
    accept: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion below this get a 410 Expired.
    expired_before: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    watches: Vec<Watch>,
    requests: Vec<RecordedRequest>,
    status_patches: Vec<(String, String, Value)>,
    /// Keys of created Events, in creation order.
    event_keys: Vec<Key>,
}

/// One write, kept so that watches can start from any resourceVersion.
struct Change {
    rv: u64,
    kind: &'static Kind,
    old: Option<Value>,
    new: Value,
    deleted: bool,
}

struct Watch {
    filter: Filter,
    bookmarks: bool,
    /// `Err` aborts the connection; dropping the sender ends the stream.
    tx: UnboundedSender<io::Result<Bytes>>,
}

impl FakeApiServer {
    /// Starts on an OS-chosen port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (e.g. a port a process under test already uses).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("fake API server binds");
        let inner = Arc::new(Inner {
            addr: listener.local_addr().unwrap(),
            state: Mutex::new(State {
                rv: 1,
                ..State::default()
            }),
            down: AtomicBool::new(false),
            status_writes: Mutex::new(Writes::Answered),
            lease_writes: Mutex::new(Writes::Answered),
            stopped: CancellationToken::new(),
            accept: Mutex::new(None),
        });
        let task = tokio::spawn(serve(inner.clone(), listener));
        *inner.accept.lock().unwrap() = Some(task);
        Self { inner }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// An in-process client (call inside a tokio runtime).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).expect("kube client builds")
    }

    /// Writes `dir/kubeconfig` pointing at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        Self::kubeconfig_at(self.addr(), dir)
    }

    /// Writes `dir/kubeconfig` (plain http, no auth, namespace `default`)
    /// for a server that may only come up later with [`Self::start_on`].
    pub fn kubeconfig_at(addr: SocketAddr, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            "- name: fake",
            &format!("  cluster: {{server: 'http://{addr}'}}"),
            "users:",
            "- name: fake",
            "  user: {}",
            "contexts:",
            "- name: fake",
            "  context: {cluster: fake, user: fake, namespace: default}",
            "current-context: fake\n",
        ]
        .join("\n");
        std::fs::write(&path, text).expect("kubeconfig written");
        path
    }

    /// Creates or replaces an object (by apiVersion, kind, namespace and
    /// name; namespace defaults to `default`). Returns it as stored.
    pub fn apply(&self, mut object: Value) -> Value {
        let kind = find_kind(
            object["apiVersion"]
                .as_str()
                .expect("object has apiVersion"),
            object["kind"].as_str().expect("object has kind"),
        );
        assert!(
            object["metadata"]["name"].is_string(),
            "object has metadata.name"
        );
        if kind.namespaced && !object["metadata"]["namespace"].is_string() {
            object["metadata"]["namespace"] = json!("default");
        }
        self.state().put(kind, object)
    }

    /// Deletes an object; false when it did not exist.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let kind = find_kind(api_version, kind);
        self.state()
            .remove(kind, namespace.unwrap_or(""), name)
            .is_some()
    }

    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let key = (
            find_kind(api_version, kind).kind,
            namespace.unwrap_or("").to_string(),
            name.to_string(),
        );
        self.state().objects.get(&key).cloned()
    }

    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.get("coordination.k8s.io/v1", "Lease", Some(namespace), name)
    }

    /// Every Event created so far (as stored now, patches applied), oldest first.
    pub fn events(&self) -> Vec<Value> {
        let state = self.state();
        state
            .event_keys
            .iter()
            .filter_map(|key| state.objects.get(key).cloned())
            .collect()
    }

    /// `(namespace, name, patch body)` of every Ingress `/status` PATCH.
    pub fn status_patches(&self) -> Vec<(String, String, Value)> {
        self.state().status_patches.clone()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Watch streams still open.
    pub fn open_watches(&self) -> usize {
        let mut state = self.state();
        state.watches.retain(|w| !w.tx.is_closed());
        state.watches.len()
    }

    /// Waits (up to 10 s) until at least `n` watch streams are open.
    pub async fn wait_watches(&self, n: usize) {
        for _ in 0..1000 {
            if self.open_watches() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} watches open after 10s, expected {n}",
            self.open_watches()
        );
    }

    /// Expires every resourceVersion up to now: open watches get a 410
    /// `Expired` ERROR event and end; watching from an old version does too.
    pub fn expire_watches(&self) {
        let mut state = self.state();
        state.rv += 1;
        state.expired_before = state.rv;
        let before = state.expired_before;
        state.log.retain(|c| c.rv >= before);
        for watch in state.watches.drain(..) {
            let _ = watch.tx.send(Ok(event_line("ERROR", &expired())));
        }
    }

    /// Aborts every open watch connection, without an event.
    pub fn drop_watches(&self) {
        for watch in self.state().watches.drain(..) {
            let _ = watch
                .tx
                .send(Err(io::Error::other("watch dropped by the test")));
        }
    }

    /// Sends a BOOKMARK at the current resourceVersion on every open watch
    /// that allows bookmarks (kube's always do).
    pub fn bookmark(&self) {
        let mut state = self.state();
        let rv = state.rv.to_string();
        state.watches.retain(|w| {
            let kind = w.filter.kind;
            let object = json!({"kind": kind.kind, "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": rv}});
            !w.bookmarks || w.tx.send(Ok(event_line("BOOKMARK", &object))).is_ok()
        });
    }

    /// How Ingress status writes are answered from now on.
    pub fn set_status_writes(&self, mode: Writes) {
        *self.inner.status_writes.lock().unwrap() = mode;
    }

    /// How Lease writes (creating, renewing, releasing) are answered from
    /// now on; reads of Leases are answered still.
    pub fn set_lease_writes(&self, mode: Writes) {
        *self.inner.lease_writes.lock().unwrap() = mode;
    }

    /// While down, every connection and request is dropped without an
    /// answer; going down also aborts open watches.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_watches();
        }
    }

    /// Closes the listener and every connection; the port is free again
    /// when this returns.
    pub async fn stop(&self) {
        self.inner.stopped.cancel();
        self.state().watches.clear();
        let task = self.inner.accept.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap()
    }
}

async fn serve(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let stream = tokio::select! {
            _ = inner.stopped.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        if inner.down.load(Ordering::SeqCst) {
            continue; // dropped: the client sees the connection close
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let stopped = inner.stopped.clone();
            let service = service_fn(move |request| handle(inner.clone(), request));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stopped.cancelled() => {}
            }
        });
    }
}

async fn handle(inner: Arc<Inner>, request: Request<Incoming>) -> io::Result<Response<Body>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let query = parts.uri.query().unwrap_or("");
    inner.state.lock().unwrap().requests.push(RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: query.to_string(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    if inner.down.load(Ordering::SeqCst) {
        // An error from the service makes hyper close the connection unanswered.
        return Err(io::Error::other("fake API server is down"));
    }
    let path = parts.uri.path();
    let writes = if parts.method == Method::PATCH && path.ends_with("/status") {
        Some(("status", *inner.status_writes.lock().unwrap()))
    } else if parts.method != Method::GET && path.contains("/leases") {
        Some(("Lease", *inner.lease_writes.lock().unwrap()))
    } else {
        None
    };
    match writes {
        None | Some((_, Writes::Answered)) => {}
        Some((_, Writes::Hang)) => std::future::pending::<()>().await,
        Some((kind, Writes::Fail)) => {
            let message = format!("{kind} writes are failing");
            return Ok(ApiError::new(500, "InternalError", message).response());
        }
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let request = ApiRequest {
        method: &parts.method,
        query: parse_query(query),
        content_type: content_type.unwrap_or(""),
        body: &body,
    };
    Ok(inner
        .route(parts.uri.path(), request)
        .unwrap_or_else(ApiError::response))
}

struct ApiRequest<'a> {
    method: &'a Method,
    query: HashMap<String, String>,
    content_type: &'a str,
    body: &'a [u8],
}

impl ApiRequest<'_> {
    fn object(&self) -> Result<Value, ApiError> {
        let parsed: Option<Value> = if self.content_type.starts_with("application/apply-patch") {
            serde_yaml::from_slice(self.body).ok()
        } else {
            serde_json::from_slice(self.body).ok()
        };
        parsed.filter(Value::is_object).ok_or_else(|| {
            ApiError::new(400, "BadRequest", "the body must be a JSON object".into())
        })
    }

    fn flag(&self, key: &str) -> bool {
        self.query.get(key).is_some_and(|v| v == "true" || v == "1")
    }
}

/// `/api/v1/...` or `/apis/GROUP/VERSION/...`, then
/// `[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]`.
struct Target {
    kind: &'static Kind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => (version.to_string(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
            _ => (None, rest),
        };
        let (plural, name, subresource) = match rest {
            [plural] => (plural, None, None),
            [plural, name] => (plural, Some(name.to_string()), None),
            [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
            _ => return None,
        };
        let kind = KINDS
            .iter()
            .find(|k| k.api_version == api_version && k.plural == *plural)?;
        let scoped_right = if kind.namespaced {
            name.is_none() || namespace.is_some()
        } else {
            namespace.is_none()
        };
        scoped_right.then_some(Self {
            kind,
            namespace,
            name,
            subresource,
        })
    }

    fn key(&self) -> Key {
        let name = self.name.clone().unwrap_or_default();
        (
            self.kind.kind,
            self.namespace.clone().unwrap_or_default(),
            name,
        )
    }

    /// Sets the name and namespace from the path (the body must agree).
    fn place(&self, object: &mut Value) -> Result<(), ApiError> {
        let meta = &mut object["metadata"];
        if !meta.is_object() {
            *meta = json!({});
        }
        for (field, value) in [("namespace", &self.namespace), ("name", &self.name)] {
            let Some(value) = value else { continue };
            match meta[field].as_str() {
                Some(given) if given != value => {
                    let message = format!(
                        "the {field} of the object ({given}) does not match the request ({value})"
                    );
                    return Err(ApiError::new(400, "BadRequest", message));
                }
                _ => meta[field] = json!(value),
            }
        }
        Ok(())
    }

    fn not_found(&self) -> ApiError {
        let message = format!(
            "{} \"{}\" not found",
            self.kind.plural,
            self.name.as_deref().unwrap_or("")
        );
        ApiError::new(404, "NotFound", message)
    }
}

impl Inner {
    fn route(&self, path: &str, request: ApiRequest) -> Result<Response<Body>, ApiError> {
        if path == "/version" {
            let version = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"});
            return Ok(json_response(200, &version));
        }
        let target = Target::parse(path).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            )
        })?;
        let kind = target.kind;
        let mut state = self.state.lock().unwrap();
        let (code, object) = match (
            request.method.as_str(),
            &target.name,
            target.subresource.as_deref(),
        ) {
            ("GET", None, None) => {
                if request.flag("sendInitialEvents") {
                    let message = "sendInitialEvents is not supported by this API server".into();
                    return Err(ApiError::new(400, "BadRequest", message));
                }
                let filter = Filter::new(&target, &request.query)?;
                if request.flag("watch") {
                    return state.watch(filter, &request);
                }
                (200, state.list(&filter))
            }
            ("GET", Some(_), None | Some("status")) => (
                200,
                state
                    .objects
                    .get(&target.key())
                    .cloned()
                    .ok_or_else(|| target.not_found())?,
            ),
            ("POST", None, None) if target.namespace.is_some() || !kind.namespaced => {
                let mut object = request.object()?;
                target.place(&mut object)?;
                let meta = &mut object["metadata"];
                if !meta["name"].is_string() {
                    let prefix = meta["generateName"].as_str().ok_or_else(|| {
                        ApiError::new(
                            422,
                            "Invalid",
                            "metadata.name or generateName is required".into(),
                        )
                    })?;
                    meta["name"] = json!(format!(
                        "{prefix}{}",
                        &uuid::Uuid::new_v4().simple().to_string()[..5]
                    ));
                }
                let key = key_of(kind, &object);
                if state.objects.contains_key(&key) {
                    let message = format!("{} \"{}\" already exists", kind.plural, key.2);
                    return Err(ApiError::new(409, "AlreadyExists", message));
                }
                (201, state.put(kind, object))
            }
            ("PUT", Some(_), None) => {
                let mut object = request.object()?;
                target.place(&mut object)?;
                let old = state.objects.get(&target.key());
                let stored_rv = old.map(|o| &o["metadata"]["resourceVersion"]);
                let given_rv = &object["metadata"]["resourceVersion"];
                if !given_rv.is_null() && stored_rv.is_some_and(|rv| rv != given_rv) {
                    return Err(conflict("the object has been modified"));
                }
                (
                    if old.is_some() { 200 } else { 201 },
                    state.put(kind, object),
                )
            }
            ("PATCH", Some(_), sub @ (None | Some("status"))) => {
                let status = sub.is_some();
                if status && kind.kind != "Ingress" {
                    return Err(target.not_found());
                }
                let apply = request.content_type.starts_with("application/apply-patch");
                let merge = [
                    "application/merge-patch+json",
                    "application/strategic-merge-patch+json",
                ]
                .iter()
                .any(|t| request.content_type.starts_with(t));
                if !apply && !merge {
                    let message = format!("the fake does not support {}", request.content_type);
                    return Err(ApiError::new(415, "UnsupportedMediaType", message));
                }
                let patch = request.object()?;
                let mut object = match state.objects.get(&target.key()) {
                    Some(old) => old.clone(),
                    None if apply && !status => json!({}),
                    None => return Err(target.not_found()),
                };
                if apply && kind.kind == "Lease" && !request.flag("force") {
                    let held = object["spec"]["holderIdentity"].as_str();
                    let wanted = patch["spec"]["holderIdentity"].as_str();
                    if let (Some(held), Some(wanted)) = (held, wanted)
                        && held != wanted
                    {
                        let message =
                            format!("Apply failed: conflict with \"{held}\": .spec.holderIdentity");
                        return Err(conflict(&message));
                    }
                }
                if status {
                    if let Some(new_status) = patch.get("status") {
                        merge_patch(&mut object, &json!({"status": new_status}));
                    }
                    let (_, namespace, name) = target.key();
                    state.status_patches.push((namespace, name, patch));
                } else {
                    merge_patch(&mut object, &patch);
                }
                target.place(&mut object)?;
                (200, state.put(kind, object))
            }
            ("DELETE", Some(name), None) => {
                let namespace = target.namespace.as_deref().unwrap_or("");
                (
                    200,
                    state
                        .remove(kind, namespace, name)
                        .ok_or_else(|| target.not_found())?,
                )
            }
            _ => {
                let message = format!("{} is not supported on {path}", request.method);
                return Err(ApiError::new(405, "MethodNotAllowed", message));
            }
        };
        Ok(json_response(code, &object))
    }
}

impl State {
    fn list(&self, filter: &Filter) -> Value {
        let items: Vec<&Value> = self
            .objects
            .iter()
            .filter(|((kind, _, _), object)| *kind == filter.kind.kind && filter.matches(object))
            .map(|(_, object)| object)
            .collect();
        json!({
            "apiVersion": filter.kind.api_version,
            "kind": format!("{}List", filter.kind.kind),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        })
    }

    fn watch(&mut self, filter: Filter, request: &ApiRequest) -> Result<Response<Body>, ApiError> {
        let invalid = |what: &str| ApiError::new(400, "BadRequest", format!("invalid {what}"));
        let since = match request.query.get("resourceVersion").map(String::as_str) {
            None | Some("" | "0") => None,
            Some(rv) => Some(rv.parse::<u64>().map_err(|_| invalid("resourceVersion"))?),
        };
        let timeout = match request.query.get("timeoutSeconds") {
            Some(s) => Duration::from_secs(s.parse().map_err(|_| invalid("timeoutSeconds"))?),
            None => Duration::MAX,
        };
        let (tx, mut rx) = unbounded_channel();
        if since.is_some_and(|rv| rv < self.expired_before) {
            let _ = tx.send(Ok(event_line("ERROR", &expired())));
        } else {
            let backlog: Vec<Bytes> = match since {
                Some(rv) => {
                    let changes = self.log.iter().filter(|c| c.rv > rv);
                    changes.filter_map(|c| c.event_for(&filter)).collect()
                }
                None => {
                    let objects = self.objects.iter().filter(|((kind, _, _), object)| {
                        *kind == filter.kind.kind && filter.matches(object)
                    });
                    objects.map(|(_, o)| event_line("ADDED", o)).collect()
                }
            };
            for line in backlog {
                let _ = tx.send(Ok(line));
            }
            let bookmarks = request.flag("allowWatchBookmarks");
            self.watches.push(Watch {
                filter,
                bookmarks,
                tx,
            });
        }
        let events = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|item| item.map(Frame::data));
        let body = StreamBody::new(events.take_until(tokio::time::sleep(timeout)));
        let mut response = Response::new(body.boxed_unsync());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        Ok(response)
    }

    /// Creates or replaces; bumps the resourceVersion unless nothing changed.
    fn put(&mut self, kind: &'static Kind, mut object: Value) -> Value {
        let key = key_of(kind, &object);
        let old = self.objects.get(&key).cloned();
        object["apiVersion"] = json!(kind.api_version);
        object["kind"] = json!(kind.kind);
        let meta = &mut object["metadata"];
        let old_meta = old.as_ref().map(|o| &o["metadata"]);
        for field in ["uid", "creationTimestamp"] {
            if meta[field].is_null() {
                meta[field] = match old_meta {
                    Some(old) => old[field].clone(),
                    None if field == "uid" => json!(uuid::Uuid::new_v4().to_string()),
                    None => json!(now()),
                };
            }
        }
        match old_meta {
            Some(old) => meta["resourceVersion"] = old["resourceVersion"].clone(),
            None => _ = meta.as_object_mut().unwrap().remove("resourceVersion"),
        }
        if old.as_ref() == Some(&object) {
            return object;
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), object.clone());
        if kind.kind == "Event" && !self.event_keys.contains(&key) {
            self.event_keys.push(key);
        }
        self.commit(kind, old, object.clone(), false);
        object
    }

    fn remove(&mut self, kind: &'static Kind, namespace: &str, name: &str) -> Option<Value> {
        let old = self
            .objects
            .remove(&(kind.kind, namespace.to_string(), name.to_string()))?;
        self.rv += 1;
        let mut object = old.clone();
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.commit(kind, Some(old), object.clone(), true);
        Some(object)
    }

    /// Logs a change and sends it to every watch it concerns.
    fn commit(&mut self, kind: &'static Kind, old: Option<Value>, new: Value, deleted: bool) {
        let change = Change {
            rv: self.rv,
            kind,
            old,
            new,
            deleted,
        };
        self.watches.retain(|w| match change.event_for(&w.filter) {
            Some(line) => w.tx.send(Ok(line)).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.log.push(change);
    }
}

impl Change {
    /// The event a watch with `filter` sees: an object that starts or stops
    /// matching is ADDED or DELETED, as with a real API server.
    fn event_for(&self, filter: &Filter) -> Option<Bytes> {
        if self.kind.kind != filter.kind.kind {
            return None;
        }
        let was = self.old.as_ref().is_some_and(|o| filter.matches(o));
        let is = !self.deleted && filter.matches(&self.new);
        let kind = match (was, is) {
            (false, true) => "ADDED",
            (true, true) => "MODIFIED",
            (true, false) => "DELETED",
            (false, false) => return None,
        };
        Some(event_line(kind, &self.new))
    }
}

/// Namespace, label selector and field selector of a LIST or WATCH.
struct Filter {
    kind: &'static Kind,
    namespace: Option<String>,
    labels: Vec<Term>,
    fields: Vec<Term>,
}

/// `key=value`, `key==value`, `key!=value`, `key` (exists) or `!key`.
struct Term {
    key: String,
    value: Option<String>,
    negate: bool,
}

impl Filter {
    fn new(target: &Target, query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let selector =
            |name: &str| parse_selector(query.get(name).map(String::as_str).unwrap_or(""));
        Ok(Self {
            kind: target.kind,
            namespace: target.namespace.clone(),
            labels: selector("labelSelector")?,
            fields: selector("fieldSelector")?,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        self.namespace
            .as_ref()
            .is_none_or(|ns| meta["namespace"].as_str() == Some(ns.as_str()))
            && self
                .labels
                .iter()
                .all(|t| t.matches(meta["labels"][&t.key].as_str()))
            && self
                .fields
                .iter()
                .all(|t| t.matches(field(object, &t.key).as_deref()))
    }
}

impl Term {
    fn matches(&self, actual: Option<&str>) -> bool {
        match &self.value {
            Some(value) => (actual == Some(value.as_str())) != self.negate,
            None => actual.is_some() != self.negate,
        }
    }
}

fn parse_selector(text: &str) -> Result<Vec<Term>, ApiError> {
    let term = |key: &str, value: Option<&str>, negate| Term {
        key: key.trim().to_string(),
        value: value.map(|v| v.trim().to_string()),
        negate,
    };
    let terms = text.split(',').map(str::trim).filter(|t| !t.is_empty());
    terms
        .map(|t| {
            if let Some((key, value)) = t.split_once("!=") {
                Ok(term(key, Some(value), true))
            } else if let Some((key, value)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Ok(term(key, Some(value), false))
            } else if t.contains([' ', '(']) {
                Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!("unsupported selector {t:?}"),
                ))
            } else if let Some(key) = t.strip_prefix('!') {
                Ok(term(key, None, true))
            } else {
                Ok(term(t, None, false))
            }
        })
        .collect()
}

/// A dotted field path (`metadata.name`, `type`) as a string.
fn field(object: &Value, path: &str) -> Option<String> {
    let value = path
        .split('.')
        .try_fold(object, |v, segment| v.get(segment))?;
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// JSON merge patch (RFC 7386): objects merge, `null` deletes, the rest replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn key_of(kind: &'static Kind, object: &Value) -> Key {
    let meta = &object["metadata"];
    let namespace = if kind.namespaced {
        meta["namespace"].as_str().unwrap_or("")
    } else {
        ""
    };
    (
        kind.kind,
        namespace.to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    line.into()
}

fn expired() -> Value {
    status_object(410, "Expired", "too old resource version")
}

fn conflict(message: &str) -> ApiError {
    ApiError::new(409, "Conflict", message.to_string())
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// An API error, answered as a `Status` object.
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
        }
    }

    fn response(self) -> Response<Body> {
        json_response(
            self.code,
            &status_object(self.code, self.reason, &self.message),
        )
    }
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap()));
    let mut response = Response::new(body.map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let [first, tail @ ..] = rest {
        let hex = tail
            .get(..2)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (first, hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                rest = &tail[2..];
                continue;
            }
            (b'+', _) => out.push(b' '),
            (other, _) => out.push(*other),
        }
        rest = tail;
    }
    String::from_utf8_lossy(&out).into_owned()
}
