//! Cluster mode: the real binary against a fake Kubernetes API server over
//! real HTTP (tests/common/apiserver.rs), driven by each test.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::apiserver::{FakeApiServer, Writes};
use common::backends;
use common::client::get;
use common::manifests::{ingress, objects, route, service};
use common::process::Switchyard;
use serde_json::{Value, json};

const CLASS: &str = "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: switchyard}\nspec: {controller: switchyard.dev/ingress-controller}\n";

fn load(api: &FakeApiServer, yaml: &str) {
    for object in objects(yaml) {
        api.apply(object);
    }
}

async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::sample(
        &get(admin, "admin", "/metrics", &[]).await.body,
        name,
        labels,
    )
}

/// Polls until `check` holds (up to `limit`); panics with `what` otherwise.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {limit:?}");
}

async fn routes(proxy: &Switchyard) -> String {
    get(proxy.admin, "admin", "/routes", &[]).await.body
}

async fn ready(proxy: &Switchyard) -> u16 {
    get(proxy.admin, "admin", "/readyz", &[])
        .await
        .status
        .as_u16()
}

async fn wait_ready(proxy: &Switchyard) {
    eventually("ready", Duration::from_secs(20), || async {
        ready(proxy).await == 200
    })
    .await;
}

/// A fake API server holding our IngressClass and a route for `web.test`
/// to `echo`, and a ready switchyard (pod `pod-a`) reading it.
async fn serve_web(
    echo: &backends::Echo,
    extra: &[&str],
) -> (FakeApiServer, tempfile::TempDir, Switchyard) {
    let api = FakeApiServer::start().await;
    load(
        &api,
        &(CLASS.to_string() + &route("web", "web.test", "/", &[echo.addr])),
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Switchyard::start_cluster(&api.kubeconfig(dir.path()), "pod-a", extra);
    wait_ready(&proxy).await;
    (api, dir, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_makes_the_proxy_ready_and_routes_traffic() {
    let echo = backends::echo("from-cluster").await;
    let (api, _dir, proxy) = serve_web(&echo, &[]).await;
    let answer = get(proxy.http, "web.test", "/hello", &[]).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with("from-cluster\nGET /hello"));

    // Classic list+watch, and never a list of every Secret.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.param("sendInitialEvents").is_none())
    );
    let secrets: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/secrets"))
        .collect();
    assert!(!secrets.is_empty());
    assert!(
        secrets
            .iter()
            .all(|r| r.param("fieldSelector").as_deref() == Some("type=kubernetes.io/tls")),
        "{secrets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_change_and_delete_of_each_kind_change_the_routes() {
    let one = backends::echo("one").await;
    let two = backends::echo("two").await;
    let api = FakeApiServer::start().await;
    load(&api, CLASS);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Switchyard::start_cluster(&api.kubeconfig(dir.path()), "pod-a", &[]);
    wait_ready(&proxy).await;
    let served = |host: &'static str| {
        let http = proxy.http;
        async move { get(http, host, "/", &[]).await }
    };

    // Service + EndpointSlice + Ingress added.
    load(&api, &route("app", "app.test", "/", &[one.addr]));
    eventually("ingress added", Duration::from_secs(10), || async {
        served("app.test").await.body.starts_with("one")
    })
    .await;

    // EndpointSlice changed: the endpoint moves.
    load(&api, &service("app", &[two.addr]));
    eventually("endpoints changed", Duration::from_secs(10), || async {
        served("app.test").await.body.starts_with("two")
    })
    .await;

    // Service changed: its port 80 disappears, so the route answers 503.
    api.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "default"}, "spec": {"ports": [{"name": "http", "port": 81}]}}));
    eventually("service changed", Duration::from_secs(10), || async {
        served("app.test").await.status == 503
    })
    .await;
    load(&api, &service("app", &[two.addr]));
    eventually("service restored", Duration::from_secs(10), || async {
        served("app.test").await.status == 200
    })
    .await;

    // Ingress changed: a new host.
    load(&api, &ingress("app", "renamed.test", "/", "app", &[]));
    eventually("ingress changed", Duration::from_secs(10), || async {
        served("renamed.test").await.status == 200 && served("app.test").await.status == 404
    })
    .await;

    // IngressClass changed: a classless Ingress is served once ours is the default.
    let classless = objects(&ingress("classless", "classless.test", "/", "app", &[]))
        .into_iter()
        .map(|mut o| {
            o["spec"]
                .as_object_mut()
                .unwrap()
                .remove("ingressClassName");
            o
        })
        .next()
        .unwrap();
    api.apply(classless);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served("classless.test").await.status, 404);
    api.apply(json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "switchyard", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "switchyard.dev/ingress-controller"}}));
    eventually("default class", Duration::from_secs(10), || async {
        served("classless.test").await.status == 200
    })
    .await;

    // Deletes: the EndpointSlice (503), then the Ingress (404).
    api.delete(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        Some("default"),
        "app-0",
    );
    eventually("slice deleted", Duration::from_secs(10), || async {
        served("renamed.test").await.status == 503
    })
    .await;
    api.delete("networking.k8s.io/v1", "Ingress", Some("default"), "app");
    eventually("ingress deleted", Duration::from_secs(10), || async {
        served("renamed.test").await.status == 404
    })
    .await;
    api.delete("networking.k8s.io/v1", "IngressClass", None, "switchyard");
    eventually("class deleted", Duration::from_secs(10), || async {
        served("classless.test").await.status == 404
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_a_gap_in_serving() {
    let echo = backends::echo("steady").await;
    let (api, _dir, proxy) = serve_web(&echo, &[]).await;
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.param("watch").is_none() && r.method == "GET")
        .count();

    api.expire_watches();
    for _ in 0..20 {
        assert_eq!(
            get(proxy.http, "web.test", "/", &[]).await.status,
            200,
            "served during the relist"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eventually("relisted", Duration::from_secs(15), || async {
        api.requests()
            .iter()
            .filter(|r| r.param("watch").is_none() && r.method == "GET")
            .count()
            > lists_before
    })
    .await;
    // Changes after the relist still arrive.
    load(&api, &ingress("web", "moved.test", "/", "web", &[]));
    eventually("change after relist", Duration::from_secs(15), || async {
        get(proxy.http, "moved.test", "/", &[]).await.status == 200
    })
    .await;
    assert!(metric(proxy.admin, "switchyard_source_errors_total", &[]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_at_start_means_not_ready_then_ready_once_it_answers() {
    let echo = backends::echo("late").await;
    let dir = tempfile::tempdir().unwrap();
    let addr = backends::refused().await;
    let kubeconfig = FakeApiServer::kubeconfig_at(addr, dir.path());

    let proxy = Switchyard::start_cluster(&kubeconfig, "pod-a", &[]);
    eventually(
        "a failed watch counted",
        Duration::from_secs(20),
        || async {
            metric(
                proxy.admin,
                "switchyard_source_errors_total",
                &[("kind", "Ingress")],
            )
            .await
                >= 1.0
        },
    )
    .await;
    assert_eq!(
        ready(&proxy).await,
        503,
        "not ready while the API server is down"
    );

    let api = FakeApiServer::start_on(addr).await;
    load(
        &api,
        &(CLASS.to_string() + &route("web", "web.test", "/", &[echo.addr])),
    );
    eventually(
        "ready after the API server came up",
        Duration::from_secs(45),
        || async { ready(&proxy).await == 200 },
    )
    .await;
    assert_eq!(get(proxy.http, "web.test", "/", &[]).await.status, 200);
    // One warning per kind of failure, not one per retry.
    let log = proxy.log_text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("watch failed") && l.contains("kind=\"Ingress\""))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_while_running_keeps_traffic_flowing_and_reports_staleness() {
    let echo = backends::echo("kept").await;
    let (api, _dir, proxy) = serve_web(&echo, &[]).await;
    assert_eq!(
        metric(
            proxy.admin,
            "switchyard_source_staleness_seconds",
            &[("kind", "Ingress")]
        )
        .await,
        0.0
    );
    let synced = metric(
        proxy.admin,
        "switchyard_source_last_sync_timestamp_seconds",
        &[("kind", "Ingress")],
    )
    .await;
    assert!(synced > 0.0);

    api.stop().await;
    eventually("staleness rises", Duration::from_secs(30), || async {
        metric(
            proxy.admin,
            "switchyard_source_staleness_seconds",
            &[("kind", "Ingress")],
        )
        .await
            > 0.0
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            get(proxy.http, "web.test", "/", &[]).await.status,
            200,
            "the last good table keeps serving"
        );
    }
    assert_eq!(ready(&proxy).await, 200);
}

// About 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_goes_back_to_zero_once_the_api_server_answers_again_with_nothing_changed() {
    let echo = backends::echo("kept").await;
    let (api, _dir, proxy) = serve_web(&echo, &[]).await;
    let staleness = || async {
        metric(
            proxy.admin,
            "switchyard_source_staleness_seconds",
            &[("kind", "Ingress")],
        )
        .await
    };
    api.set_down(true);
    eventually("staleness rises", Duration::from_secs(30), || async {
        staleness().await > 0.0
    })
    .await;
    // Back, with no object changed: the watches resume where they were
    // and deliver nothing, but the source is current again.
    api.set_down(false);
    eventually("staleness back to 0", Duration::from_secs(20), || async {
        staleness().await == 0.0
    })
    .await;
    assert!(proxy.log_text().contains("watch recovered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_status_once_and_not_again_when_unchanged() {
    let echo = backends::echo("s").await;
    let api = FakeApiServer::start().await;
    load(
        &api,
        &(CLASS.to_string() + &route("web", "web.test", "/", &[echo.addr])),
    );
    // Someone else's Ingress, carrying our address from an earlier life.
    let mut foreign = objects(&ingress("foreign", "f.test", "/", "web", &[]));
    foreign[0]["spec"]["ingressClassName"] = json!("nginx");
    foreign[0]["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "lb.example.com"}]}});
    api.apply(foreign.remove(0));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Switchyard::start_cluster(
        &api.kubeconfig(dir.path()),
        "pod-a",
        &["--publish-status-address", "192.0.2.10,lb.example.com"],
    );
    wait_ready(&proxy).await;
    eventually("status written", Duration::from_secs(20), || async {
        api.status_patches().len() >= 2
    })
    .await;
    let stored = api
        .get("networking.k8s.io/v1", "Ingress", Some("default"), "web")
        .unwrap();
    let published: Value = stored["status"]["loadBalancer"]["ingress"].clone();
    assert_eq!(
        published,
        json!([{"ip": "192.0.2.10"}, {"hostname": "lb.example.com"}])
    );
    let cleared = api
        .get(
            "networking.k8s.io/v1",
            "Ingress",
            Some("default"),
            "foreign",
        )
        .unwrap();
    assert!(
        cleared["status"]["loadBalancer"]["ingress"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{cleared}"
    );

    // Resyncs and unrelated changes write nothing more.
    let writes = api.status_patches().len();
    api.bookmark();
    load(&api, &service("unrelated", &[echo.addr]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        api.status_patches().len(),
        writes,
        "{:?}",
        api.status_patches()
    );
    assert_eq!(metric(proxy.admin, "switchyard_leader", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_named_twice_is_watched_once() {
    let echo = backends::echo("s").await;
    let twice = [
        "--watch-namespace",
        "default",
        "--watch-namespace",
        "default",
    ];
    let (api, _dir, proxy) = serve_web(&echo, &twice).await;
    assert_eq!(get(proxy.http, "web.test", "/", &[]).await.status, 200);
    // Each object once in the snapshot: no path of the Ingress is taken
    // for one declared twice (which the leader would publish as Events,
    // once it leads: so only after that is no Event a finding).
    eventually("pod-a leads", Duration::from_secs(20), || async {
        metric(proxy.admin, "switchyard_leader", &[]).await == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(api.events().is_empty(), "{:?}", api.events());
    let watches = api
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/namespaces/default/ingresses") && r.param("watch").is_some())
        .count();
    assert_eq!(watches, 1, "one Ingress watch for the namespace");
}

/// Status PATCH requests the fake has seen, answered or not.
fn status_writes_tried(api: &FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_that_never_returns_does_not_hold_back_route_changes() {
    let echo = backends::echo("s").await;
    let (api, _dir, proxy) = serve_web(&echo, &["--publish-status-address", "192.0.2.10"]).await;
    eventually("status written", Duration::from_secs(20), || async {
        !api.status_patches().is_empty()
    })
    .await;
    // The next status write hangs, as on a half-open connection.
    api.set_status_writes(Writes::Hang);
    load(&api, &ingress("stuck", "stuck.test", "/", "web", &[]));
    eventually(
        "status write under way",
        Duration::from_secs(20),
        || async { status_writes_tried(&api) >= 2 },
    )
    .await;
    load(&api, &route("later", "later.test", "/", &[echo.addr]));
    // Within the write's own 3 s timeout: the route must not wait for it.
    eventually("route served", Duration::from_millis(2500), || async {
        get(proxy.http, "later.test", "/", &[]).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_status_write_is_tried_again_without_another_change() {
    let echo = backends::echo("s").await;
    let api = FakeApiServer::start().await;
    api.set_status_writes(Writes::Fail);
    load(
        &api,
        &(CLASS.to_string() + &route("web", "web.test", "/", &[echo.addr])),
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Switchyard::start_cluster(
        &api.kubeconfig(dir.path()),
        "pod-a",
        &["--publish-status-address", "192.0.2.10"],
    );
    wait_ready(&proxy).await;
    eventually(
        "a status write refused",
        Duration::from_secs(20),
        || async { status_writes_tried(&api) >= 1 },
    )
    .await;
    assert!(api.status_patches().is_empty());
    // Nothing in the cluster changes from here on.
    api.set_status_writes(Writes::Answered);
    eventually("status written", Duration::from_secs(20), || async {
        !api.status_patches().is_empty()
    })
    .await;
    assert!(
        metric(
            proxy.admin,
            "switchyard_ingress_status_updates_total",
            &[("result", "failed")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_not_the_leader_writes_nothing() {
    let api = FakeApiServer::start().await;
    load(
        &api,
        &(CLASS.to_string() + &ingress("web", "web.test", "/", "missing", &[])),
    );
    api.apply(lease_held_by("other-pod"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Switchyard::start_cluster(
        &api.kubeconfig(dir.path()),
        "pod-b",
        &["--publish-status-address", "192.0.2.10"],
    );
    wait_ready(&proxy).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        api.status_patches().is_empty(),
        "{:?}",
        api.status_patches()
    );
    assert!(api.events().is_empty(), "{:?}", api.events());
    assert_eq!(metric(proxy.admin, "switchyard_leader", &[]).await, 0.0);
    assert_eq!(
        api.lease("ingress", "switchyard-leader").unwrap()["spec"]["holderIdentity"],
        "other-pod"
    );
}

/// A fake API server with our IngressClass, and replica `pod-a` (its
/// kubeconfig in the directory) once it leads.
async fn pod_a_leading() -> (FakeApiServer, tempfile::TempDir, Switchyard) {
    let api = FakeApiServer::start().await;
    load(&api, CLASS);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Switchyard::start_cluster(&api.kubeconfig(dir.path()), "pod-a", &[]);
    wait_ready(&proxy).await;
    eventually("pod-a leads", Duration::from_secs(20), || async {
        metric(proxy.admin, "switchyard_leader", &[]).await == 1.0
    })
    .await;
    (api, dir, proxy)
}

/// Lease writes the fake has seen, answered or not.
fn lease_writes_tried(api: &FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/leases"))
        .count()
}

/// A Lease held by `holder` for as long as the test runs.
fn lease_held_by(holder: &str) -> serde_json::Value {
    let now = "2026-01-01T00:00:00.000000Z";
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "switchyard-leader", "namespace": "ingress"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 100000000, "acquireTime": now, "renewTime": now}})
}

// About 30 s: the Lease is renewed 15 s after it was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewal_goes_unanswered_steps_down_when_another_holds_the_lease() {
    let (api, _dir, proxy) = pod_a_leading().await;
    // From here on, Lease writes hang as on a half-open connection.
    api.set_lease_writes(Writes::Hang);
    let before = lease_writes_tried(&api);
    eventually("a renewal sent", Duration::from_secs(40), || async {
        lease_writes_tried(&api) > before
    })
    .await;
    // Another replica takes the Lease over, as it may once it expires.
    api.apply(lease_held_by("other-pod"));
    let reads = lease_reads(&api);
    eventually("pod-a steps down", Duration::from_secs(30), || async {
        metric(proxy.admin, "switchyard_leader", &[]).await == 0.0
    })
    .await;
    // The hung renewal gave up, so pod-a went on to read the Lease (a
    // renewal waiting for ever would have kept it from that), and
    // what it read keeps it from leading once writes go through again.
    eventually("pod-a reads the Lease", Duration::from_secs(40), || async {
        lease_reads(&api) > reads
    })
    .await;
    api.set_lease_writes(Writes::Answered);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(metric(proxy.admin, "switchyard_leader", &[]).await, 0.0);
    assert_eq!(
        api.lease("ingress", "switchyard-leader").unwrap()["spec"]["holderIdentity"],
        "other-pod"
    );
}

/// Reads of the Lease the fake has answered.
fn lease_reads(api: &FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/leases/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_gives_up_the_lease() {
    let (api, _dir, mut proxy) = pod_a_leading().await;
    proxy.terminate();
    assert_eq!(proxy.wait_exit(Duration::from_secs(30)), Some(0));
    // Another replica may take it at once, not 30 s later.
    let lease = api.lease("ingress", "switchyard-leader").unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "{}",
        lease["spec"]
    );
    assert!(proxy.log_text().contains("released the leader Lease"));
}

// About 20 s: two replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_given_up_on_shutdown_is_taken_by_another_replica_well_before_it_would_expire() {
    let (api, dir, mut pod_a) = pod_a_leading().await;
    let pod_b = Switchyard::start_cluster(&api.kubeconfig(dir.path()), "pod-b", &[]);
    wait_ready(&pod_b).await;
    // pod-b has read the Lease pod-a holds; pod-a renews it every 15 s, so
    // had pod-a let it expire, pod-b could take it no sooner than 15 s
    // after pod-a stopped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(pod_b.admin, "switchyard_leader", &[]).await, 0.0);
    pod_a.terminate();
    assert_eq!(pod_a.wait_exit(Duration::from_secs(30)), Some(0));
    eventually("pod-b leads", Duration::from_secs(12), || async {
        metric(pod_b.admin, "switchyard_leader", &[]).await == 1.0
    })
    .await;
    assert_eq!(
        api.lease("ingress", "switchyard-leader").unwrap()["spec"]["holderIdentity"],
        "pod-b"
    );
}

/// When the Lease held in the fake expires, as other replicas reckon it.
fn lease_expiry(api: &FakeApiServer) -> std::time::SystemTime {
    let lease = api.lease("ingress", "switchyard-leader").unwrap();
    let renewed: k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime =
        serde_json::from_value(lease["spec"]["renewTime"].clone()).unwrap();
    let duration = lease["spec"]["leaseDurationSeconds"].as_u64().unwrap();
    std::time::SystemTime::from(renewed.0) + Duration::from_secs(duration)
}

// About 35 s: the Lease is renewed 15 s after it was taken, and lapses 28 s
// after its last renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_leading_before_its_lease_expires() {
    let (api, _dir, proxy) = pod_a_leading().await;
    // The API server stops answering anything: the replica cannot renew,
    // nor read that the Lease is still its own.
    api.set_down(true);
    let expiry = lease_expiry(&api);
    eventually("pod-a stops leading", Duration::from_secs(35), || async {
        metric(proxy.admin, "switchyard_leader", &[]).await == 0.0
    })
    .await;
    assert!(
        std::time::SystemTime::now() < expiry,
        "stopped leading only after the Lease expired (at {expiry:?})"
    );
    // Back in touch, it renews the Lease (nobody took it) and leads again.
    api.set_down(false);
    eventually("pod-a leads again", Duration::from_secs(40), || async {
        metric(proxy.admin, "switchyard_leader", &[]).await == 1.0
    })
    .await;
    assert_eq!(
        api.lease("ingress", "switchyard-leader").unwrap()["spec"]["holderIdentity"],
        "pod-a"
    );
    assert!(lease_expiry(&api) > expiry, "renewed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_become_events_once() {
    let api = FakeApiServer::start().await;
    load(
        &api,
        &(CLASS.to_string() + &ingress("web", "web.test", "/", "missing", &[])),
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Switchyard::start_cluster(&api.kubeconfig(dir.path()), "pod-a", &[]);
    wait_ready(&proxy).await;
    eventually("event published", Duration::from_secs(20), || async {
        !api.events().is_empty()
    })
    .await;
    let event = &api.events()[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "BackendNotFound");
    assert_eq!(event["regarding"]["kind"], "Ingress");
    assert_eq!(event["regarding"]["name"], "web");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("spec.rules[0].http.paths[0].backend.service")
            && note.contains("Service default/missing not found"),
        "{note}"
    );

    // Resyncs and unrelated changes publish nothing new.
    load(&api, &service("unrelated", &[]));
    api.bookmark();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let published: Vec<_> = api
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "BackendNotFound")
        .collect();
    assert_eq!(published.len(), 1, "{published:?}");
    assert!(
        api.requests()
            .iter()
            .all(|r| !(r.method == "PATCH" && r.path.contains("/events/"))),
        "no re-publication as a series"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_999_updates_gives_few_swaps_and_never_a_half_table() {
    let echo = backends::echo("v").await;
    let api = FakeApiServer::start().await;
    let two_paths = |version: usize| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "default", "annotations": {"version": version.to_string()}},
        "spec": {"ingressClassName": "switchyard", "rules": [{"host": "web.test", "http": {"paths": [
            {"path": "/a", "pathType": "Prefix", "backend": {"service": {"name": format!("svc-{}", version % 2), "port": {"number": 80}}}},
            {"path": "/b", "pathType": "Prefix", "backend": {"service": {"name": format!("svc-{}", version % 2), "port": {"number": 80}}}}
        ]}}]}})
    };
    load(
        &api,
        &(CLASS.to_string() + &service("svc-0", &[echo.addr]) + &service("svc-1", &[echo.addr])),
    );
    api.apply(two_paths(0));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Switchyard::start_cluster(&api.kubeconfig(dir.path()), "pod-a", &[]);
    wait_ready(&proxy).await;
    let swaps_before = metric(proxy.admin, "switchyard_route_table_swaps_total", &[]).await;

    let admin = proxy.admin;
    let checker = tokio::spawn(async move {
        let mut seen = 0;
        for _ in 0..200 {
            let table: Value =
                serde_json::from_str(&get(admin, "admin", "/routes", &[]).await.body).unwrap();
            let services: Vec<_> = table["hosts"][0]["paths"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["backend"]["service"].clone())
                .collect();
            assert_eq!(services.len(), 2);
            assert_eq!(services[0], services[1], "a half-applied table: {table}");
            seen += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    });
    // 999 updates: the last one (odd) differs from the starting table.
    for version in 1..=999 {
        api.apply(two_paths(version));
    }
    assert_eq!(checker.await.unwrap(), 200);
    eventually("last update applied", Duration::from_secs(15), || async {
        routes(&proxy).await.contains("\"svc-1\"")
    })
    .await;
    let swaps = metric(proxy.admin, "switchyard_route_table_swaps_total", &[]).await - swaps_before;
    assert!(
        (1.0..200.0).contains(&swaps),
        "1000 updates gave {swaps} swaps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_and_kube_sources_give_identical_route_tables() {
    let echo = backends::echo("same").await;
    let other = backends::echo("other").await;
    let yaml = CLASS.to_string()
        + &route("web", "web.test", "/", &[echo.addr, other.addr])
        + &route("wild", "*.wild.test", "/api", &[other.addr])
        + &ingress(
            "broken",
            "broken.test",
            "/",
            "missing",
            &[("switchyard.dev/upgrade-protocols", "websocket, h2c")],
        )
        + "---\n"
        + &std::fs::read_to_string("examples/manifests/ingress.yaml").unwrap()
        + "\n---\n"
        + &std::fs::read_to_string("examples/manifests/echo.yaml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("all.yaml"), &yaml).unwrap();
    let from_files = Switchyard::start(&manifests, &[]);

    let api = FakeApiServer::start().await;
    load(&api, &yaml);
    let from_cluster = Switchyard::start_cluster(&api.kubeconfig(dir.path()), "pod-a", &[]);
    wait_ready(&from_files).await;
    wait_ready(&from_cluster).await;
    let files_table = routes(&from_files).await;
    assert!(
        files_table.contains("web.test")
            && files_table.contains("*.wild.test")
            && files_table.contains("echo.localhost")
    );
    assert_eq!(routes(&from_cluster).await, files_table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_connections_resume_without_losing_the_table() {
    let echo = backends::echo("steady").await;
    let (api, _dir, proxy) = serve_web(&echo, &[]).await;
    api.wait_watches(5).await;

    api.drop_watches();
    load(&api, &ingress("web", "moved.test", "/", "web", &[]));
    assert_eq!(
        get(proxy.http, "web.test", "/", &[]).await.status,
        200,
        "served while reconnecting"
    );
    eventually(
        "change made while disconnected arrives",
        Duration::from_secs(15),
        || async { get(proxy.http, "moved.test", "/", &[]).await.status == 200 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_service_addresses_are_copied_into_ingress_status() {
    let echo = backends::echo("p").await;
    let api = FakeApiServer::start().await;
    load(
        &api,
        &(CLASS.to_string() + &route("web", "web.test", "/", &[echo.addr])),
    );
    let load_balancer = |ip: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "switchyard", "namespace": "ingress"},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
    };
    api.apply(load_balancer("203.0.113.5"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Switchyard::start_cluster(
        &api.kubeconfig(dir.path()),
        "pod-a",
        &["--publish-service", "ingress/switchyard"],
    );
    wait_ready(&proxy).await;
    let status_of_web = || {
        api.get("networking.k8s.io/v1", "Ingress", Some("default"), "web")
            .unwrap()["status"]["loadBalancer"]["ingress"]
            .clone()
    };
    eventually("status published", Duration::from_secs(20), || async {
        status_of_web() == json!([{"ip": "203.0.113.5"}])
    })
    .await;
    // The load balancer's address changes: so does every Ingress's status.
    api.apply(load_balancer("203.0.113.6"));
    eventually(
        "status follows the Service",
        Duration::from_secs(20),
        || async { status_of_web() == json!([{"ip": "203.0.113.6"}]) },
    )
    .await;
}
