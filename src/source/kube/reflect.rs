//! One reflector per kind (and per watched namespace): classic list+watch
//! through kube-runtime, with back-off and jitter on failure, trimmed
//! objects in the store, and a wake-up for the snapshot loop on change.
//!
//! After a failure, kube's watcher resumes the watch from where it was
//! without a word when the API server answers again: nothing reaches the
//! stream until an object changes, which for a quiet kind can be hours, so
//! its watch would be reported failing all that time. So while a watch is
//! failing, the kind is listed (one object's metadata) every
//! [`PROBE_EVERY`], and an answer counts as contact again.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::ListParams;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, InitialListStrategy};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::health::{SourceHealth, WatchScope};

/// How often a failing watch's kind is listed to see whether the API
/// server answers again.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// The annotation `kubectl apply` keeps a full copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The watch settings every reflector uses: a paged list, then a watch
/// (no streaming initial lists, which older API servers refuse).
pub fn config() -> watcher::Config {
    watcher::Config {
        initial_list_strategy: InitialListStrategy::ListWatch,
        ..watcher::Config::default()
    }
}

/// Starts a reflector for `api` and returns its store. `changed` is
/// notified after every change that alters the store's contents.
pub fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    health: Arc<SourceHealth>,
    changed: Arc<Notify>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let scope = WatchScope {
        kind,
        namespace: api.namespace().map(str::to_string),
    };
    let (reader, writer) = reflector::store();
    // The same objects as the watch: its selectors, one object's metadata.
    let mut probe = ListParams::default().limit(1);
    probe.label_selector = config.label_selector.clone();
    probe.field_selector = config.field_selector.clone();
    let probe_api = api.clone();
    let stream = watch(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                () = tokio::time::sleep(PROBE_EVERY), if failing => {
                    if probe_api.list_metadata(&probe).await.is_ok() {
                        failing = false;
                        health.ok(&scope);
                    }
                    continue;
                }
            };
            let Some(event) = event else { break };
            failing = event.is_err();
            match event {
                // Init only announces a (re)list about to be tried; every
                // other event is data from the API server.
                Ok(watcher::Event::Init) => {}
                Ok(event) => {
                    health.ok(&scope);
                    // Objects listed during a relist only reach the store at
                    // InitDone; until then nothing has changed.
                    if matches!(
                        event,
                        watcher::Event::Apply(_)
                            | watcher::Event::Delete(_)
                            | watcher::Event::InitDone
                    ) {
                        changed.notify_one();
                    }
                }
                Err(error) => health.error(&scope, &error),
            }
        }
    });
    reader
}

/// Drops what switchyard never reads before an object is stored: the
/// managed-fields bookkeeping and kubectl's copy of the last applied
/// object are often most of an object's size.
fn trim<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object.annotations_mut().remove(LAST_APPLIED);
}
