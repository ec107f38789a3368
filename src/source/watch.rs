//! Watching the manifest directories, and deciding when a burst of file
//! changes has settled enough to read the files again.
//!
//! A fixed wait after the first change is both too slow and too short: it
//! delays every edit by the whole wait, and it still reads a file that a
//! slow writer (`kubectl get ... -o yaml > file.yaml`, a copy over a
//! network file system) has truncated and not yet finished. So a burst
//! settles once nothing has changed for [`SETTLE_QUIET`] *and* no manifest
//! file that was written to is still open for writing (its close is the
//! writer saying it is done), or at the latest [`SETTLE_LIMIT`] after the
//! burst began, so that a writer that never closes cannot hold changes
//! back for ever.
//!
//! The settling is written here on tokio's timers rather than taken from
//! `notify-debouncer-*`, which wait a fixed time per path on a thread of
//! their own and know nothing of writes still in progress.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long the manifest files must go unchanged for a burst to settle.
/// A program writing several files (a copy, a checkout) writes them within
/// a millisecond or two of each other.
pub const SETTLE_QUIET: Duration = Duration::from_millis(25);

/// The longest a burst is waited for, from its first change: a file held
/// open for writing longer than this is read as it is.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// What the watcher has seen: sent at every change, carrying how many
/// manifest files are open for writing.
pub type Changes = watch::Receiver<usize>;

/// Watches `paths` (directories, recursively, or single files). Dropping
/// the returned watcher stops it, and [`next_change`] then returns `false`.
pub fn watch(paths: &[PathBuf]) -> Result<(RecommendedWatcher, Changes), notify::Error> {
    let (tx, rx) = watch::channel(0);
    let mut writes = OpenWrites::default();
    let mut watcher =
        notify::recommended_watcher(move |result: notify::Result<Event>| match result {
            Ok(event) => {
                if writes.note(&event) {
                    let open = writes.count();
                    tx.send_modify(|writing| *writing = open);
                }
            }
            Err(e) => tracing::warn!(error = %e, "manifest watcher error"),
        })?;
    for path in paths {
        watcher.watch(path, RecursiveMode::Recursive)?;
    }
    Ok((watcher, rx))
}

/// Waits for the next burst of changes and for it to settle (see the
/// module documentation); `false` once the watcher is gone.
pub async fn next_change(changes: &mut Changes) -> bool {
    if changes.changed().await.is_err() {
        return false;
    }
    let limit = Instant::now() + SETTLE_LIMIT;
    loop {
        let writing = *changes.borrow_and_update() > 0;
        let now = Instant::now();
        if now >= limit {
            return true;
        }
        let until = if writing {
            limit
        } else {
            (now + SETTLE_QUIET).min(limit)
        };
        match tokio::time::timeout_at(until, changes.changed()).await {
            // More of the burst: wait again from here.
            Ok(Ok(())) => {}
            // Settled; or the watcher is gone, and what it saw is read once.
            Err(_) | Ok(Err(_)) => return true,
        }
    }
}

/// The manifest files written to and not yet closed, from the watcher's
/// events.
#[derive(Default)]
struct OpenWrites {
    paths: HashSet<PathBuf>,
}

impl OpenWrites {
    /// Notes `event`; whether it changed anything on disk. Opening, reading
    /// and closing a file without writing are not changes: reading the
    /// manifests makes those, and reacting to them would make every reload
    /// trigger the next.
    fn note(&mut self, event: &Event) -> bool {
        if event.need_rescan() {
            // Events were lost, closes among them perhaps.
            self.paths.clear();
            return true;
        }
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                self.forget(&event.paths);
                true
            }
            EventKind::Access(_) => false,
            // Writes and truncations (`>` truncates on open).
            EventKind::Modify(ModifyKind::Data(_)) => {
                let manifests = event.paths.iter().filter(|p| is_manifest_name(p));
                self.paths.extend(manifests.cloned());
                true
            }
            // A file removed or renamed away, or one in a directory that
            // was, will not be closed under its name.
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => {
                self.forget(&event.paths);
                true
            }
            _ => true,
        }
    }

    /// Forgets `paths` and whatever is below them.
    fn forget(&mut self, paths: &[PathBuf]) {
        self.paths
            .retain(|open| !paths.iter().any(|gone| open.starts_with(gone)));
    }

    fn count(&self) -> usize {
        self.paths.len()
    }
}

/// Whether a file is one the manifests are read from, by its name. Editors'
/// swap and backup files (`.a.yaml.swp`, `a.yaml~`) are not, and some stay
/// open for writing as long as the editor runs.
fn is_manifest_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use notify::event::{AccessKind, CreateKind, DataChange, RemoveKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    const WRITE: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
    const CLOSE_WRITE: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));

    #[test]
    fn a_manifest_is_open_for_writing_from_its_first_write_to_its_close() {
        let mut writes = OpenWrites::default();
        assert!(writes.note(&event(EventKind::Create(CreateKind::File), "/m/a.yaml")));
        assert_eq!(writes.count(), 0, "created, nothing written yet");
        assert!(writes.note(&event(WRITE, "/m/a.yaml")));
        assert!(writes.note(&event(WRITE, "/m/b.yml")));
        assert_eq!(writes.count(), 2);
        assert!(writes.note(&event(CLOSE_WRITE, "/m/a.yaml")));
        assert_eq!(writes.count(), 1);
        assert!(writes.note(&event(EventKind::Remove(RemoveKind::File), "/m/b.yml")));
        assert_eq!(writes.count(), 0, "removed while open: no close will come");
    }

    #[test]
    fn a_file_or_directory_renamed_away_or_lost_events_leave_no_write_open() {
        let mut writes = OpenWrites::default();
        writes.note(&event(WRITE, "/m/a.yaml"));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert!(writes.note(&event(renamed, "/m/a.yaml")));
        assert_eq!(writes.count(), 0);

        writes.note(&event(WRITE, "/m/sub/b.yaml"));
        writes.note(&event(WRITE, "/m/subway.yaml"));
        assert!(writes.note(&event(renamed, "/m/sub")));
        assert_eq!(writes.count(), 1, "only what was below the directory");

        writes.note(&event(WRITE, "/m/b.yaml"));
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(writes.note(&overflow), "lost events are a change");
        assert_eq!(writes.count(), 0);
    }

    #[test]
    fn reading_is_no_change_and_other_files_are_never_waited_for() {
        let mut writes = OpenWrites::default();
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let close_read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!writes.note(&event(open, "/m/a.yaml")));
        assert!(!writes.note(&event(close_read, "/m/a.yaml")));
        assert!(
            writes.note(&event(WRITE, "/m/.a.yaml.swp")),
            "still a change"
        );
        assert!(writes.note(&event(WRITE, "/m/a.yaml~")));
        assert_eq!(writes.count(), 0);
    }

    /// Time from a first change to `next_change` returning, on tokio's
    /// paused clock, with more changes meanwhile: each step waits its
    /// milliseconds, then reports that many files open for writing.
    async fn settles_after(steps: Vec<(u64, usize)>) -> Duration {
        let (tx, mut rx) = watch::channel(0);
        let start = Instant::now();
        let sender = tokio::spawn(async move {
            tx.send_modify(|_| {});
            for (gap, writing) in steps {
                tokio::time::sleep(Duration::from_millis(gap)).await;
                tx.send_modify(|w| *w = writing);
            }
            // Kept, so that the watcher is not gone.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        assert!(next_change(&mut rx).await);
        sender.abort();
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_settles_after_the_quiet_time() {
        assert_eq!(settles_after(vec![]).await, SETTLE_QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_settles_the_quiet_time_after_its_last_change() {
        let elapsed = settles_after(vec![(10, 0), (20, 0), (5, 0)]).await;
        assert_eq!(elapsed, Duration::from_millis(35) + SETTLE_QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_open_for_writing_is_waited_for_until_it_is_closed() {
        // Pauses in the middle of the write, longer than the quiet time.
        let elapsed = settles_after(vec![(0, 1), (300, 1), (300, 1), (5, 0)]).await;
        assert_eq!(elapsed, Duration::from_millis(605) + SETTLE_QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_never_closed_or_a_never_ending_burst_is_cut_at_the_limit() {
        assert_eq!(settles_after(vec![(1, 1)]).await, SETTLE_LIMIT);
        assert_eq!(settles_after(vec![(10, 0); 500]).await, SETTLE_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_watcher_ends_the_wait() {
        let (tx, mut rx) = watch::channel(0);
        drop(tx);
        assert!(!next_change(&mut rx).await);
    }

    /// With the real watcher: a manifest written in two parts, with a pause
    /// between them longer than the quiet time, is not read half-written.
    #[tokio::test]
    async fn a_manifest_written_slowly_is_read_only_once_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (_watcher, mut changes) = watch(&[dir.path().to_path_buf()]).unwrap();
        let path = dir.path().join("a.yaml");
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = std::thread::spawn({
            let (path, closed) = (path.clone(), closed.clone());
            move || {
                let mut file = std::fs::File::create(&path).unwrap();
                file.write_all(b"apiVersion: v1\nkind: Serv").unwrap();
                std::thread::sleep(SETTLE_QUIET * 12);
                file.write_all(b"ice\nmetadata: {name: a}\n").unwrap();
                closed.store(true, std::sync::atomic::Ordering::SeqCst);
                drop(file);
            }
        });
        assert!(next_change(&mut changes).await);
        assert!(
            closed.load(std::sync::atomic::Ordering::SeqCst),
            "settled before the file was closed"
        );
        writer.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("{name: a}\n"), "{text}");
    }
}
