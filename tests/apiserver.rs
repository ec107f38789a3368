//! The fake API server (tests/common/apiserver.rs) against the real kube
//! client: if these pass, tests of the kube source talk to something that
//! behaves like a kube-apiserver where it matters.

mod common;

use std::time::Duration;

use common::apiserver::FakeApiServer;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::runtime::watcher::Event;
use kube::{Api, Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Upper bound for anything that should happen at once.
const WAIT: Duration = Duration::from_secs(5);

fn ingress(namespace: &str, name: &str, host: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"rules": [{"host": host}]},
    })
}

fn secret(name: &str, type_: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": type_,
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
    })
}

fn host(ingress: &Ingress) -> String {
    let rules = ingress.spec.as_ref().unwrap().rules.as_ref().unwrap();
    rules[0].host.clone().unwrap()
}

type Events<K> = mpsc::UnboundedReceiver<Result<Event<K>, watcher::Error>>;

/// Runs a watcher in the background (so its watch stays open while the
/// test drives the server) and hands over what it yields.
fn spawn_watcher<K>(api: Api<K>, config: watcher::Config) -> Events<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).boxed();
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next<K>(events: &mut Events<K>) -> Result<Event<K>, watcher::Error> {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("a watcher event within 5s")
        .expect("the watcher goes on")
}

/// The next event that is not an error (watch errors are retried).
async fn next_ok<K>(events: &mut Events<K>) -> Event<K> {
    loop {
        if let Ok(event) = next(events).await {
            return event;
        }
    }
}

/// Expects `Init`, one `InitApply` per name (in order), `InitDone`.
async fn expect_init<K: ResourceExt>(events: &mut Events<K>, names: &[&str]) {
    assert!(matches!(next_ok(events).await, Event::Init));
    for name in names {
        match next_ok(events).await {
            Event::InitApply(object) => assert_eq!(object.name_any(), *name),
            other => panic!("expected InitApply({name}), got {:?}", kind_of(&other)),
        }
    }
    assert!(matches!(next_ok(events).await, Event::InitDone));
}

fn kind_of<K>(event: &Event<K>) -> &'static str {
    match event {
        Event::Apply(_) => "Apply",
        Event::Delete(_) => "Delete",
        Event::Init => "Init",
        Event::InitApply(_) => "InitApply",
        Event::InitDone => "InitDone",
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not true after 5s: {what}");
}

fn api_status(error: kube::Error) -> Box<kube::core::Status> {
    match error {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other}"),
    }
}

/// GETs of `path` without `watch` (LIST calls when path is a collection).
fn gets(server: &FakeApiServer, path: &str) -> usize {
    let requests = server.requests();
    let gets = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path == path);
    gets.filter(|r| r.param("watch").is_none()).count()
}

#[tokio::test]
async fn watcher_sees_add_modify_delete() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("default", "before", "before.example"));
    let mut events = spawn_watcher(
        Api::<Ingress>::all(server.client()),
        watcher::Config::default(),
    );
    expect_init(&mut events, &["before"]).await;

    server.apply(ingress("default", "web", "a.example"));
    match next_ok(&mut events).await {
        Event::Apply(i) => assert_eq!((i.name_any(), host(&i)), ("web".into(), "a.example".into())),
        other => panic!("expected Apply, got {}", kind_of(&other)),
    }
    server.apply(ingress("default", "web", "b.example"));
    match next_ok(&mut events).await {
        Event::Apply(i) => assert_eq!(host(&i), "b.example"),
        other => panic!("expected Apply, got {}", kind_of(&other)),
    }
    assert!(server.delete("networking.k8s.io/v1", "Ingress", Some("default"), "web"));
    match next_ok(&mut events).await {
        Event::Delete(i) => assert_eq!(i.name_any(), "web"),
        other => panic!("expected Delete, got {}", kind_of(&other)),
    }
    // One LIST, then cluster-wide watches.
    assert_eq!(gets(&server, "/apis/networking.k8s.io/v1/ingresses"), 1);
    let watch = server
        .requests()
        .into_iter()
        .find(|r| r.param("watch").is_some())
        .unwrap();
    assert_eq!(watch.path, "/apis/networking.k8s.io/v1/ingresses");
    assert!(watch.param("resourceVersion").is_some());
}

#[tokio::test]
async fn namespaced_api_sees_only_its_namespace() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("a", "one", "one.example"));
    server.apply(ingress("b", "two", "two.example"));
    let api = Api::<Ingress>::namespaced(server.client(), "a");

    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|i| i.name_any())
        .collect();
    assert_eq!(names, ["one"]);
    let selected = Api::<Ingress>::all(server.client())
        .list(&ListParams::default().labels("app=two"))
        .await;
    let names: Vec<String> = selected.unwrap().iter().map(|i| i.name_any()).collect();
    assert_eq!(names, ["two"], "labelSelector app=two");

    let mut events = spawn_watcher(api, watcher::Config::default());
    expect_init(&mut events, &["one"]).await;
    server.apply(ingress("b", "elsewhere", "x.example"));
    server.apply(ingress("a", "here", "y.example"));
    match next_ok(&mut events).await {
        Event::Apply(i) => assert_eq!(i.name_any(), "here", "the change in b is not seen"),
        other => panic!("expected Apply, got {}", kind_of(&other)),
    }
    assert!(
        server
            .get("networking.k8s.io/v1", "Ingress", Some("b"), "elsewhere")
            .is_some()
    );
    let paths: Vec<String> = server
        .requests()
        .into_iter()
        .skip(2)
        .map(|r| r.path)
        .collect();
    assert!(
        paths
            .iter()
            .all(|p| p == "/apis/networking.k8s.io/v1/namespaces/a/ingresses"),
        "{paths:?}"
    );
}

#[tokio::test]
async fn field_selector_filters_tls_secrets() {
    let server = FakeApiServer::start().await;
    server.apply(secret("tls", "kubernetes.io/tls"));
    server.apply(secret("opaque", "Opaque"));
    let api = Api::<Secret>::all(server.client());

    let tls = api
        .list(&ListParams::default().fields("type=kubernetes.io/tls"))
        .await
        .unwrap();
    assert_eq!(
        tls.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
        ["tls"]
    );
    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 2);

    let config = watcher::Config::default().fields("type=kubernetes.io/tls");
    let mut events = spawn_watcher(api, config);
    expect_init(&mut events, &["tls"]).await;
    server.apply(secret("opaque-2", "Opaque"));
    server.apply(secret("tls-2", "kubernetes.io/tls"));
    match next_ok(&mut events).await {
        Event::Apply(s) => assert_eq!(s.name_any(), "tls-2", "the Opaque secret is filtered out"),
        other => panic!("expected Apply, got {}", kind_of(&other)),
    }
    let watch = server
        .requests()
        .into_iter()
        .find(|r| r.param("watch").is_some())
        .unwrap();
    assert_eq!(
        watch.param("fieldSelector").as_deref(),
        Some("type=kubernetes.io/tls")
    );
}

#[tokio::test]
async fn expired_watch_makes_the_watcher_relist() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("default", "web", "a.example"));
    let mut events = spawn_watcher(
        Api::<Ingress>::all(server.client()),
        watcher::Config::default(),
    );
    expect_init(&mut events, &["web"]).await;
    server.wait_watches(1).await;

    server.expire_watches();
    match next(&mut events).await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!(
            "expected the 410 watch error, got {:?}",
            other.map(|e| kind_of(&e))
        ),
    }
    expect_init(&mut events, &["web"]).await;
    assert_eq!(gets(&server, "/apis/networking.k8s.io/v1/ingresses"), 2);

    // Watching resumes after the relist.
    server.apply(ingress("default", "new", "b.example"));
    match next_ok(&mut events).await {
        Event::Apply(i) => assert_eq!(i.name_any(), "new"),
        other => panic!("expected Apply, got {}", kind_of(&other)),
    }
}

#[tokio::test]
async fn watch_from_an_expired_version_gets_410() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("default", "web", "a.example"));
    let api = Api::<Ingress>::all(server.client());
    let old = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    server.expire_watches();

    let mut stream = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert_eq!(status.message, "too old resource version");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .is_none(),
        "the stream ends"
    );
}

#[tokio::test]
async fn dropped_watch_resumes_without_relist() {
    let server = FakeApiServer::start().await;
    let mut events = spawn_watcher(
        Api::<Ingress>::all(server.client()),
        watcher::Config::default(),
    );
    expect_init(&mut events, &[]).await;
    server.wait_watches(1).await;

    server.drop_watches();
    server.apply(ingress("default", "web", "a.example"));
    match next_ok(&mut events).await {
        Event::Apply(i) => assert_eq!(i.name_any(), "web"),
        other => panic!("expected Apply, got {}", kind_of(&other)),
    }
    assert_eq!(
        gets(&server, "/apis/networking.k8s.io/v1/ingresses"),
        1,
        "no relist"
    );
    let watches = server
        .requests()
        .into_iter()
        .filter(|r| r.param("watch").is_some())
        .count();
    assert!(watches >= 2, "the watch was reopened");
}

#[tokio::test]
async fn bookmarks_and_watch_timeout() {
    let server = FakeApiServer::start().await;
    let api = Api::<Ingress>::all(server.client());
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        // Long enough for the bookmark below to arrive first on a slow
        // machine, short enough to see the timeout end the stream.
        .watch(&WatchParams::default().timeout(3), &rv)
        .await
        .unwrap()
        .boxed();
    server.wait_watches(1).await;

    server.bookmark();
    match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Bookmark(bookmark))) => {
            assert_eq!(bookmark.metadata.resource_version, rv)
        }
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }
    // timeoutSeconds=3 ends the stream.
    assert!(
        tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .is_none()
    );
    eventually("the watch is closed", || server.open_watches() == 0).await;
}

#[tokio::test]
async fn ingress_status_patch_changes_only_status() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("default", "web", "a.example"));
    let api = Api::<Ingress>::namespaced(server.client(), "default");

    let patch = json!({
        "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
        "spec": {"rules": [{"host": "changed.example"}]},
    });
    let patched = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let ip = |i: &Ingress| {
        i.status
            .clone()
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .clone()
    };
    assert_eq!(ip(&patched).as_deref(), Some("10.0.0.1"));
    assert_eq!(host(&patched), "a.example", "spec is untouched");

    let stored = server
        .get("networking.k8s.io/v1", "Ingress", Some("default"), "web")
        .unwrap();
    assert_eq!(
        stored["status"]["loadBalancer"]["ingress"][0]["ip"],
        "10.0.0.1"
    );
    assert_eq!(stored["spec"]["rules"][0]["host"], "a.example");
    assert_eq!(
        server.status_patches(),
        [("default".to_string(), "web".to_string(), patch)]
    );
    let last = server.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        (
            "PATCH",
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses/web/status"
        )
    );

    let empty = Patch::Merge(json!({"status": {}}));
    let missing = api
        .patch_status("nope", &PatchParams::default(), &empty)
        .await;
    let status = api_status(missing.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn recorded_events_are_created_then_patched() {
    let server = FakeApiServer::start().await;
    let reporter = Reporter {
        controller: "switchyard".into(),
        instance: Some("test".into()),
    };
    let recorder = Recorder::new(server.client(), reporter);
    let regarding = ObjectReference {
        api_version: Some("networking.k8s.io/v1".into()),
        kind: Some("Ingress".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let note = Note {
        type_: EventType::Warning,
        reason: "UnsupportedAnnotation".into(),
        note: Some("nginx.ingress.kubernetes.io/foo is ignored".into()),
        action: "Translate".into(),
        secondary: None,
    };
    recorder.publish(&note, &regarding).await.unwrap();
    assert_eq!(server.events().len(), 1);
    recorder.publish(&note, &regarding).await.unwrap();

    let events = server.events();
    assert_eq!(events.len(), 1, "the repeat patches the same Event");
    let event: K8sEvent = serde_json::from_value(events[0].clone()).unwrap();
    assert_eq!(event.reason.as_deref(), Some("UnsupportedAnnotation"));
    assert_eq!(event.regarding.unwrap().name.as_deref(), Some("web"));
    assert_eq!(event.series.unwrap().count, 2);
    let writes: Vec<(String, String)> = server
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    let path = format!(
        "/apis/events.k8s.io/v1/namespaces/default/events/{}",
        event.metadata.name.unwrap()
    );
    assert_eq!(
        writes,
        [
            (
                "POST".to_string(),
                "/apis/events.k8s.io/v1/namespaces/default/events".to_string()
            ),
            ("PATCH".to_string(), path),
        ]
    );
}

#[tokio::test]
async fn lease_manager_elects_one_leader() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let manager = |identity: &str| {
        LeaseManagerBuilder::new(client.clone(), "switchyard")
            .with_namespace("default")
            .with_identity(identity)
            .build()
    };

    let (mut leader_a, _task_a) = manager("a").await.unwrap().watch().await;
    tokio::time::timeout(WAIT, leader_a.wait_for(|leader| *leader))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        server.lease("default", "switchyard").unwrap()["spec"]["holderIdentity"],
        "a"
    );

    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/default/leases/switchyard";
    let before = gets(&server, lease_path);
    let (leader_b, _task_b) = manager("b").await.unwrap().watch().await;
    // b reads the lease when built and again in its watch loop, then
    // waits for a's lease to expire (30 s): it cannot take over meanwhile.
    eventually("b read the lease twice", || {
        gets(&server, lease_path) >= before + 2
    })
    .await;
    assert!(!*leader_b.borrow());
    assert!(*leader_a.borrow());
    assert_eq!(
        server.lease("default", "switchyard").unwrap()["spec"]["holderIdentity"],
        "a"
    );

    // What kube-lease-manager sees when it races for a held lease.
    let api = Api::<Lease>::namespaced(client.clone(), "default");
    let take = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "spec": {"holderIdentity": "b"},
    });
    let conflict = api
        .patch("switchyard", &PatchParams::apply("b"), &Patch::Apply(&take))
        .await;
    let status = api_status(conflict.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "switchyard"}})).unwrap();
    let exists = api_status(
        api.create(&PostParams::default(), &lease)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );
}

#[tokio::test]
async fn streaming_lists_are_refused() {
    let server = FakeApiServer::start().await;
    let api = Api::<Ingress>::all(server.client());

    let refused = api
        .watch(&WatchParams::streaming_lists(), "0")
        .await
        .err()
        .expect("refused");
    assert_eq!(api_status(refused).code, 400);
    let mut events = spawn_watcher(api, watcher::Config::default().streaming_lists());
    match next(&mut events).await {
        Err(watcher::Error::WatchStartFailed(error)) => assert_eq!(api_status(error).code, 400),
        other => panic!(
            "expected WatchStartFailed, got {:?}",
            other.map(|e| kind_of(&e))
        ),
    }
    let asked = server
        .requests()
        .iter()
        .filter(|r| r.param("sendInitialEvents").as_deref() == Some("true"))
        .count();
    assert!(asked >= 2);
}

#[tokio::test]
async fn kubeconfig_down_stop_and_start_again() {
    let server = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig(dir.path())).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let api = Api::<Ingress>::default_namespaced(Client::try_from(config).unwrap());
    server.apply(ingress("default", "web", "a.example"));
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    server.set_down(true);
    let down = api.list(&ListParams::default()).await.unwrap_err();
    assert!(
        !matches!(down, kube::Error::Api(_)),
        "no answer while down: {down}"
    );
    server.set_down(false);
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    let addr = server.addr();
    server.stop().await;
    assert!(api.list(&ListParams::default()).await.is_err());
    let again = FakeApiServer::start_on(addr).await;
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "a fresh server"
    );
    assert_eq!(again.requests().len(), 1);
}
