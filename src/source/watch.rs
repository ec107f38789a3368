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
//! burst began, so that a writer that never closes cannot hold the other
//! files' changes back for ever. The files still open for writing then are
//! named to the reader, which keeps their last good version rather than
//! read them half-written.
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

use super::burst::Burst;

/// How long the manifest files must go unchanged for a burst to settle.
/// A program writing several files (a copy, a checkout) writes them within
/// a millisecond or two of each other.
const SETTLE_QUIET: Duration = Duration::from_millis(25);

/// The longest a burst is waited for, from its first change: the files
/// still open for writing then are left for their close.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// What the watcher has seen: sent at every change, carrying the manifest
/// files open for writing.
type Changes = watch::Receiver<Vec<PathBuf>>;

/// Watches the manifest paths (directories recursively, or single files).
///
/// inotify watches inodes, not names, and much of what writes manifests
/// replaces a name with a new inode: editors and `sed -i` save through a
/// rename, a mounted ConfigMap swaps its `..data` link, git-sync swaps the
/// link to its worktree. A watch on the old inode sees nothing after that,
/// nor the swap itself when the old file or directory is left as it was.
/// So each path's parent directory is watched too, which sees the name
/// replaced (or the link beside it that the name goes through, as a
/// ConfigMap's `..data`), and after each settled burst a path whose file or directory
/// is no longer the one watched is watched again.
pub struct ManifestWatcher {
    watcher: RecommendedWatcher,
    changes: Changes,
    roots: Vec<Root>,
    /// [`SETTLE_QUIET`], but in tests of the real watcher.
    quiet: Duration,
}

/// A path given to watch, and the file or directory watched under it.
struct Root {
    path: PathBuf,
    watched: Option<Identity>,
}

/// Which file or directory a path names (device and inode, links
/// followed).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity(u64, u64);

impl Identity {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self(metadata.dev(), metadata.ino()))
    }
}

impl ManifestWatcher {
    /// Starts watching `paths`; fails when one of them cannot be watched.
    pub fn new(paths: &[PathBuf]) -> Result<Self, notify::Error> {
        let (tx, changes) = watch::channel(Vec::new());
        let mut writes = OpenWrites::default();
        // notify names what changed from the absolute form of the path it
        // watches (the working directory joined to a relative one): so are
        // the paths the events are compared with.
        let absolute: Vec<PathBuf> = paths
            .iter()
            .map(|p| match std::env::current_dir() {
                Ok(cwd) if p.is_relative() => cwd.join(p),
                _ => p.clone(),
            })
            .collect();
        let relevant: Vec<PathBuf> = absolute
            .iter()
            .cloned()
            .chain(absolute.iter().filter_map(|p| link_beside(p)))
            .collect();
        let mut watcher =
            notify::recommended_watcher(move |result: notify::Result<Event>| match result {
                // What else happens in a path's directory (say `/tmp`) is
                // not the manifests' business.
                Ok(event) if !concerns(&event, &relevant) => {}
                Ok(event) => {
                    if writes.note(&event) {
                        tx.send_replace(writes.open());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "manifest watcher error"),
            })?;
        let mut roots = Vec::new();
        for path in paths {
            let watched = Identity::of(path);
            watcher.watch(path, RecursiveMode::Recursive)?;
            roots.push(Root {
                path: path.clone(),
                watched,
            });
        }
        for parent in parents_to_watch(paths) {
            if let Err(e) = watcher.watch(&parent, RecursiveMode::NonRecursive) {
                // The path's own watch still sees changes made in place.
                tracing::warn!(
                    path = %parent.display(), error = %e,
                    "cannot watch the directory of a manifest path; its replacement will go unnoticed"
                );
            }
        }
        Ok(Self {
            watcher,
            changes,
            roots,
            quiet: SETTLE_QUIET,
        })
    }

    /// With a longer quiet time: the tests of the real watcher run beside
    /// others on a shared machine, where the thread delivering one burst's
    /// events can be held up longer than [`SETTLE_QUIET`].
    #[cfg(test)]
    fn with_quiet(mut self, quiet: Duration) -> Self {
        self.quiet = quiet;
        self
    }

    /// Waits for the next burst of changes to settle (see [`settle`]) and
    /// watches again any path that now names another file or directory.
    /// Gives the manifest files still open for writing, absolute, which
    /// are read once closed (their close is another change); `None` once
    /// the watcher is gone.
    pub async fn next_change(&mut self) -> Option<Vec<PathBuf>> {
        if !settle(&mut self.changes, self.quiet).await {
            return None;
        }
        let still_writing = self.changes.borrow().clone();
        for root in &mut self.roots {
            let now = Identity::of(&root.path);
            if now == root.watched {
                continue;
            }
            // The old inode's watch is gone with it, or soon will be.
            let _ = self.watcher.unwatch(&root.path);
            root.watched = match self.watcher.watch(&root.path, RecursiveMode::Recursive) {
                Ok(()) => now,
                // Not there for now: its directory's watch will say when
                // it is back.
                Err(_) => None,
            };
        }
        Some(still_writing)
    }
}

/// Whether `event` is about one of `paths` or what is below them (an
/// event that names no path, as lost events, may be).
fn concerns(event: &Event, paths: &[PathBuf]) -> bool {
    event.paths.is_empty()
        || event
            .paths
            .iter()
            .any(|changed| paths.iter().any(|path| is_within(changed, path)))
}

/// `path` is `root` or below it, `.` components aside (`./m` given from
/// `/cwd` is watched as `/cwd/./m`).
fn is_within(path: &Path, root: &Path) -> bool {
    fn named(path: &Path) -> impl Iterator<Item = std::path::Component<'_>> {
        path.components()
            .filter(|c| *c != std::path::Component::CurDir)
    }
    let mut path = named(path);
    named(root).all(|part| path.next() == Some(part))
}

/// The link a path goes through in its own directory, when it is a link
/// there: a mounted ConfigMap's `a.yaml` links to `..data/a.yaml`, and an
/// update swaps `..data`. Events about that link concern the path too.
fn link_beside(path: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(path).ok()?;
    match target.components().next()? {
        std::path::Component::Normal(first) if target.is_relative() => {
            Some(parent_dir(path)?.join(first))
        }
        _ => None,
    }
}

/// The directories the paths are in, to watch for a path being replaced;
/// not one already watched with everything below it, since watching it
/// again alone would stop the watch going down.
fn parents_to_watch(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut parents: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| parent_dir(p))
        .filter(|d| !paths.iter().any(|p| is_within(d, p)))
        .collect();
    parents.sort();
    parents.dedup();
    parents
}

/// The directory a path is in, to watch for the path being replaced.
fn parent_dir(path: &Path) -> Option<PathBuf> {
    match path.parent()? {
        parent if parent.as_os_str().is_empty() => Some(PathBuf::from(".")),
        parent => Some(parent.to_path_buf()),
    }
}

/// Waits for the next burst of changes and for it to settle (see the
/// module documentation); `false` once the watcher is gone.
async fn settle(changes: &mut Changes, quiet: Duration) -> bool {
    if changes.changed().await.is_err() {
        return false;
    }
    let burst = Burst::begin(quiet, SETTLE_LIMIT);
    loop {
        let writing = !changes.borrow_and_update().is_empty();
        let Some(until) = burst.next_change_by(writing) else {
            return true;
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

    /// The files open for writing, in order.
    fn open(&self) -> Vec<PathBuf> {
        let mut open: Vec<PathBuf> = self.paths.iter().cloned().collect();
        open.sort_unstable();
        open
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use notify::event::{AccessKind, CreateKind, DataChange, RemoveKind, RenameMode};
    use tokio::time::Instant;

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
        assert_eq!(writes.open().len(), 0, "created, nothing written yet");
        assert!(writes.note(&event(WRITE, "/m/a.yaml")));
        assert!(writes.note(&event(WRITE, "/m/b.yml")));
        assert_eq!(writes.open().len(), 2);
        assert!(writes.note(&event(CLOSE_WRITE, "/m/a.yaml")));
        assert_eq!(writes.open().len(), 1);
        assert!(writes.note(&event(EventKind::Remove(RemoveKind::File), "/m/b.yml")));
        assert_eq!(
            writes.open().len(),
            0,
            "removed while open: no close will come"
        );
    }

    #[test]
    fn a_file_or_directory_renamed_away_or_lost_events_leave_no_write_open() {
        let mut writes = OpenWrites::default();
        writes.note(&event(WRITE, "/m/a.yaml"));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert!(writes.note(&event(renamed, "/m/a.yaml")));
        assert_eq!(writes.open().len(), 0);

        writes.note(&event(WRITE, "/m/sub/b.yaml"));
        writes.note(&event(WRITE, "/m/subway.yaml"));
        assert!(writes.note(&event(renamed, "/m/sub")));
        assert_eq!(writes.open().len(), 1, "only what was below the directory");

        writes.note(&event(WRITE, "/m/b.yaml"));
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(writes.note(&overflow), "lost events are a change");
        assert_eq!(writes.open().len(), 0);
    }

    #[test]
    fn only_events_about_the_watched_paths_or_below_them_count() {
        // `./a.yaml` given from /cwd: notify and the watcher both join it
        // to the working directory.
        let roots = [PathBuf::from("/etc/m"), PathBuf::from("/cwd/./a.yaml")];
        let about = |path: &str| concerns(&event(WRITE, path), &roots);
        assert!(about("/etc/m"));
        assert!(about("/etc/m/sub/b.yaml"));
        assert!(about("/cwd/./a.yaml"));
        assert!(about("/cwd/a.yaml"), "`.` components aside");
        assert!(!about("/etc/motd"), "beside a watched directory");
        assert!(!about("/etc/mm/b.yaml"));
        assert!(!about("/cwd/b.yaml"), "beside a watched file");
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(
            concerns(&overflow, &roots),
            "lost events may be about anything"
        );
    }

    #[test]
    fn a_directory_already_watched_with_what_is_below_is_not_watched_alone() {
        let paths = [
            PathBuf::from("m"),
            PathBuf::from("./m/sub/a.yaml"),
            PathBuf::from("other/b.yaml"),
            PathBuf::from("c.yaml"),
        ];
        assert_eq!(
            parents_to_watch(&paths),
            [PathBuf::from("."), PathBuf::from("other")]
        );
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
        assert_eq!(writes.open().len(), 0);
    }

    /// Time from a first change to `settle` returning, on tokio's
    /// paused clock, with more changes meanwhile: each step waits its
    /// milliseconds, then reports that many files open for writing.
    async fn settles_after(steps: Vec<(u64, usize)>) -> Duration {
        let (tx, mut rx) = watch::channel(Vec::new());
        let start = Instant::now();
        let sender = tokio::spawn(async move {
            tx.send_modify(|_| {});
            for (gap, writing) in steps {
                tokio::time::sleep(Duration::from_millis(gap)).await;
                let open = (0..writing).map(|i| PathBuf::from(format!("/m/{i}.yaml")));
                tx.send_replace(open.collect());
            }
            // Kept, so that the watcher is not gone.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        assert!(settle(&mut rx, SETTLE_QUIET).await);
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
        let (tx, mut rx) = watch::channel(Vec::new());
        drop(tx);
        assert!(!settle(&mut rx, SETTLE_QUIET).await);
    }

    /// With the real watcher: a manifest written in two parts, with a pause
    /// between them longer than the quiet time, is not read half-written.
    #[tokio::test]
    async fn a_manifest_written_slowly_is_read_only_once_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        // There before the watch, so that the first event is the
        // truncating open for writing, not a creation (which says nothing
        // of a writer, and would settle if the writer were held up).
        std::fs::write(&path, "# to be replaced\n").unwrap();
        let mut watcher = real_watcher(&[dir.path().to_path_buf()]);
        let closed = Arc::new(AtomicBool::new(false));
        let writer = std::thread::spawn({
            let (path, closed) = (path.clone(), closed.clone());
            move || {
                let mut file = std::fs::File::create(&path).unwrap();
                file.write_all(b"apiVersion: v1\nkind: Serv").unwrap();
                // Longer than the quiet time, well within the limit.
                std::thread::sleep(REAL_QUIET * 2);
                file.write_all(b"ice\nmetadata: {name: a}\n").unwrap();
                closed.store(true, Ordering::SeqCst);
                drop(file);
            }
        });
        assert_eq!(watcher.next_change().await, Some(vec![]));
        assert!(
            closed.load(Ordering::SeqCst),
            "settled before the file was closed"
        );
        writer.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("{name: a}\n"), "{text}");
    }

    /// With the real watcher: a manifest still open for writing at the
    /// limit is named, so that it is not read half-written, and its close
    /// is a change of its own.
    #[tokio::test]
    async fn a_manifest_still_open_at_the_limit_is_named_and_its_close_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, "# to be replaced\n").unwrap();
        let mut watcher = real_watcher(&[dir.path().to_path_buf()]);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"apiVersion: v1\n").unwrap();
        let absolute = std::path::absolute(&path).unwrap();
        let seen = tokio::time::timeout(SETTLE_LIMIT * 5, watcher.next_change()).await;
        assert_eq!(seen.unwrap(), Some(vec![absolute]));
        drop(file);
        let seen = tokio::time::timeout(SETTLE_LIMIT * 5, watcher.next_change()).await;
        assert_eq!(seen.unwrap(), Some(vec![]), "the close");
    }

    /// The quiet time of the tests with the real watcher.
    const REAL_QUIET: Duration = Duration::from_millis(250);

    fn real_watcher(paths: &[PathBuf]) -> ManifestWatcher {
        ManifestWatcher::new(paths).unwrap().with_quiet(REAL_QUIET)
    }

    /// Asserts that `change` is noticed, and that nothing more follows it
    /// (so that the next step's change is that step's own).
    async fn noticed(watcher: &mut ManifestWatcher, step: &str, change: impl FnOnce()) {
        change();
        let seen = tokio::time::timeout(Duration::from_secs(5), watcher.next_change()).await;
        assert!(
            matches!(&seen, Ok(Some(writing)) if writing.is_empty()),
            "{step}: not noticed, or a file left open"
        );
        let more = tokio::time::timeout(REAL_QUIET * 2, watcher.next_change()).await;
        assert!(more.is_err(), "{step}: a change with nothing changed");
    }

    fn replace(dir: &Path, name: &str, text: &str) {
        let temp = dir.join(format!(".{name}.new"));
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, dir.join(name)).unwrap();
    }

    #[tokio::test]
    async fn a_file_saved_through_a_rename_is_still_watched_after() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "a: 0\n").unwrap();
        let mut watcher = real_watcher(std::slice::from_ref(&file));
        for i in 1..=3 {
            let text = format!("a: {i}\n");
            noticed(&mut watcher, &format!("save {i}"), || {
                replace(dir.path(), "a.yaml", &text);
            })
            .await;
        }
        noticed(&mut watcher, "write in place", || {
            std::fs::write(&file, "a: 4\n").unwrap();
        })
        .await;
    }

    /// A mounted ConfigMap: `a.yaml` links to `..data/a.yaml`, and an
    /// update writes a new directory and swaps the `..data` link to it;
    /// kubelet then removes the old one (`remove_old`).
    async fn configmap_updates_are_seen_each_time(remove_old: bool) {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let version = |n: u32| {
            let name = format!("..v{n}");
            std::fs::create_dir(dir.path().join(&name)).unwrap();
            std::fs::write(dir.path().join(&name).join("a.yaml"), format!("a: {n}\n")).unwrap();
            name
        };
        symlink(version(0), dir.path().join("..data")).unwrap();
        symlink("..data/a.yaml", dir.path().join("a.yaml")).unwrap();
        let mut watcher = real_watcher(&[dir.path().join("a.yaml")]);
        for n in 1..=3 {
            noticed(&mut watcher, &format!("update {n}"), || {
                let new = version(n);
                symlink(new, dir.path().join("..data_tmp")).unwrap();
                std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
                if remove_old {
                    std::fs::remove_dir_all(dir.path().join(format!("..v{}", n - 1))).unwrap();
                }
            })
            .await;
        }
    }

    #[tokio::test]
    async fn a_configmap_update_is_seen_each_time() {
        configmap_updates_are_seen_each_time(true).await;
    }

    /// Nothing happens to the file first watched: only the swapped link
    /// in the directory says that the path names another file now.
    #[tokio::test]
    async fn a_link_swap_that_leaves_the_old_file_is_seen_too() {
        configmap_updates_are_seen_each_time(false).await;
    }

    /// git-sync: the manifest directory is a link to a worktree, swapped to
    /// a new worktree at each sync.
    #[tokio::test]
    async fn a_directory_behind_a_swapped_link_is_watched_again() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let worktree = |n: u32| {
            let path = dir.path().join(format!("wt{n}"));
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("a.yaml"), format!("a: {n}\n")).unwrap();
            path
        };
        symlink(worktree(0), dir.path().join("current")).unwrap();
        let mut watcher = real_watcher(&[dir.path().join("current")]);
        noticed(&mut watcher, "sync", || {
            symlink(worktree(1), dir.path().join("current.new")).unwrap();
            // The old worktree stays for now: nothing happens to what the
            // first watch is on.
            std::fs::rename(dir.path().join("current.new"), dir.path().join("current")).unwrap();
        })
        .await;
        std::fs::write(dir.path().join("notes.txt"), "beside the link").unwrap();
        let beside = tokio::time::timeout(Duration::from_millis(200), watcher.next_change()).await;
        assert!(
            beside.is_err(),
            "a file beside the watched path is no change"
        );
        noticed(&mut watcher, "a file added in the new worktree", || {
            std::fs::write(dir.path().join("wt1/b.yaml"), "b: 1\n").unwrap();
        })
        .await;
    }
}
