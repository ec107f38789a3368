//! The file source: every `*.yaml`/`*.yml` under the manifest directories
//! becomes a [`ClusterSnapshot`]. A file that fails to parse keeps the
//! objects of its last good version, so one bad edit never takes routes
//! away; a file that has had no good version yet (read at start, or new)
//! gives the objects that could be read, so one bad document does not take
//! the others with it. The error names the file, the document and the line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::manifest::{self, LoadError, Location, Object, Skipped};
use super::watch::SETTLE_LIMIT;
use crate::snapshot::ClusterSnapshot;

/// The outcome of one read of the manifest directories.
pub struct LoadReport {
    pub snapshot: ClusterSnapshot,
    pub errors: Vec<LoadError>,
    pub skipped: Vec<Skipped>,
    pub files: usize,
}

/// Reads manifest directories and remembers each file's last good objects.
pub struct FileSource {
    dirs: Vec<PathBuf>,
    last_good: HashMap<PathBuf, Vec<(Location, Object)>>,
    /// The file each object defined more than once was served from, so
    /// that a copy of it in a new file does not take it over. (An object
    /// defined once was served from the one file `last_good` has it in.)
    served_from: HashMap<String, PathBuf>,
}

impl FileSource {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self {
            dirs,
            last_good: HashMap::new(),
            served_from: HashMap::new(),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Reads every manifest file again. Files that fail keep their last
    /// good objects; every failure is in `errors`.
    pub fn load(&mut self) -> LoadReport {
        self.load_holding(&[])
    }

    /// As [`load`](Self::load), but the files in `still_writing` (absolute
    /// paths, as the watcher names them) are not read: a writer has them
    /// open, and they may be half-written. Each keeps its last good
    /// objects, or gives none yet, and is reported.
    pub fn load_holding(&mut self, still_writing: &[PathBuf]) -> LoadReport {
        self.load_listing_with(&list_directory, still_writing)
    }

    fn load_listing_with(&mut self, list: &ListDirectory, still_writing: &[PathBuf]) -> LoadReport {
        let mut errors = Vec::new();
        let mut scan = Scan::default();
        for dir in &self.dirs {
            scan.collect(dir, list);
        }
        let Scan {
            files, unreadable, ..
        } = scan;
        for (path, message) in &unreadable {
            errors.push(LoadError {
                location: location_of(path),
                message: message.clone(),
            });
        }
        let held = identities(still_writing);

        let mut skipped = Vec::new();
        let mut current = HashMap::new();
        let mut partial = HashMap::new();
        for path in files.keys() {
            if is_held(path, &held) {
                errors.push(LoadError {
                    location: location_of(path),
                    message: format!(
                        "still open for writing {} after it changed; read again once its \
                         writer closes it",
                        humantime::format_duration(SETTLE_LIMIT)
                    ),
                });
                carry_over(&self.last_good, path, &mut current);
                continue;
            }
            let parsed = match std::fs::read_to_string(path) {
                Ok(text) => manifest::parse(&text, path),
                Err(e) => {
                    errors.push(LoadError {
                        location: location_of(path),
                        message: format!("cannot read file: {e}"),
                    });
                    carry_over(&self.last_good, path, &mut current);
                    continue;
                }
            };
            skipped.extend(parsed.skipped);
            if parsed.errors.is_empty() {
                current.insert(path.clone(), parsed.objects);
            } else {
                errors.extend(parsed.errors);
                if !carry_over(&self.last_good, path, &mut current) {
                    partial.insert(path.clone(), parsed.objects);
                }
            }
        }
        // A directory that vanished or became unreadable loses nothing: the
        // files last read below it keep their last good objects, while
        // everything else in the scan is read as usual.
        for (path, objects) in &self.last_good {
            if unreadable.iter().any(|(dir, _)| path.starts_with(dir)) {
                current
                    .entry(path.clone())
                    .or_insert_with(|| objects.clone());
            }
        }
        let before = std::mem::replace(&mut self.last_good, current);

        // What could be read of broken files without a good version is
        // served, but never becomes one: the next read of such a file
        // serves whatever it gives then.
        let served_before = ServedBefore {
            files: &before,
            duplicated: &self.served_from,
        };
        let (snapshot, duplicated) = if partial.is_empty() {
            assemble(&self.last_good, served_before, &mut errors)
        } else {
            let mut serving = self.last_good.clone();
            serving.extend(partial);
            assemble(&serving, served_before, &mut errors)
        };
        self.served_from = duplicated;
        LoadReport {
            snapshot,
            errors,
            skipped,
            files: files.len(),
        }
    }
}

/// The files (device and inode) that `paths` name now. A file is compared
/// by what it is, not by name: the watcher may name it through another
/// path than the scan (a directory reached through a link), or with `.`
/// parts the scan's name lacks.
fn identities(paths: &[PathBuf]) -> HashSet<(u64, u64)> {
    paths
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|file| (file.dev(), file.ino()))
        .collect()
}

/// Whether `path` is one of the files still being written, `held`.
fn is_held(path: &Path, held: &HashSet<(u64, u64)>) -> bool {
    !held.is_empty()
        && std::fs::metadata(path).is_ok_and(|file| held.contains(&(file.dev(), file.ino())))
}

fn location_of(path: &Path) -> Location {
    Location {
        file: path.to_path_buf(),
        document: None,
        line: None,
    }
}

/// Keeps `path`'s last good objects, if it had a good version.
fn carry_over(
    last_good: &HashMap<PathBuf, Vec<(Location, Object)>>,
    path: &Path,
    current: &mut HashMap<PathBuf, Vec<(Location, Object)>>,
) -> bool {
    let Some(objects) = last_good.get(path) else {
        return false;
    };
    current.insert(path.to_path_buf(), objects.clone());
    true
}

/// Which file each object was served from by the last load.
struct ServedBefore<'a> {
    /// The files that load kept, by path.
    files: &'a HashMap<PathBuf, Vec<(Location, Object)>>,
    /// Where it served the objects it found more than once.
    duplicated: &'a HashMap<String, PathBuf>,
}

impl ServedBefore<'_> {
    /// For each of `keys`: the file the last load served it from, if it
    /// had it. Looked up only when an object is defined more than once,
    /// which is rare: a map of every object's file, kept between loads,
    /// would cost megabytes with tens of thousands of objects.
    fn files_of<'k>(&self, keys: &[&'k str]) -> HashMap<&'k str, PathBuf> {
        let mut found: HashMap<&str, PathBuf> = HashMap::new();
        for key in keys {
            if let Some(file) = self.duplicated.get(*key) {
                found.insert(key, file.clone());
            }
        }
        if found.len() < keys.len() {
            let wanted: HashSet<&str> = keys.iter().copied().collect();
            for (file, objects) in self.files {
                for (_, object) in objects {
                    if let Some(key) = wanted.get(object.describe().as_str()) {
                        found.entry(key).or_insert_with(|| file.clone());
                    }
                }
            }
        }
        found
    }
}

/// Builds one snapshot from all files, in path order. An object defined
/// more than once is an error on each copy but one: the one in the file it
/// was served from before, so that a copy added later never takes it over,
/// else the first in path order. Gives the snapshot and where each object
/// defined more than once is served from.
fn assemble(
    files: &HashMap<PathBuf, Vec<(Location, Object)>>,
    before: ServedBefore<'_>,
    errors: &mut Vec<LoadError>,
) -> (ClusterSnapshot, HashMap<String, PathBuf>) {
    let mut ordered: Vec<_> = files
        .values()
        .flatten()
        .map(|(location, object)| (location, object, object.describe()))
        .collect();
    ordered.sort_by(|a, b| a.0.cmp(b.0));
    // Each object's first copy, and whether there are more.
    let mut chosen: HashMap<&str, (&Location, bool)> = HashMap::with_capacity(ordered.len());
    for (location, _, key) in &ordered {
        chosen
            .entry(key.as_str())
            .and_modify(|(_, more)| *more = true)
            .or_insert((location, false));
    }
    let duplicated_keys: Vec<&str> = chosen
        .iter()
        .filter(|(_, (_, more))| *more)
        .map(|(key, _)| *key)
        .collect();
    let mut duplicated = HashMap::new();
    if !duplicated_keys.is_empty() {
        // Of several copies, the first in the file served before.
        let earlier = before.files_of(&duplicated_keys);
        for (location, _, key) in &ordered {
            let Some(file) = earlier.get(key.as_str()) else {
                continue;
            };
            let (kept, _) = chosen.get_mut(key.as_str()).expect("every key chosen");
            if kept.file != *file && location.file == *file {
                *kept = location;
            }
        }
        for key in &duplicated_keys {
            duplicated.insert(key.to_string(), chosen[key].0.file.clone());
        }
    }
    let mut snapshot = ClusterSnapshot::default();
    for (location, object, key) in &ordered {
        let (kept, _) = chosen[key.as_str()];
        // By identity: the items of one `kind: List` share a location.
        if !std::ptr::eq(*location, kept) {
            errors.push(LoadError {
                location: (*location).clone(),
                message: format!("{key} is already defined at {kept}; this copy is ignored"),
            });
            continue;
        }
        (*object).clone().add_to(&mut snapshot);
    }
    (snapshot, duplicated)
}

/// The names and paths a directory lists. A seam for the tests: as root,
/// which CI is, no permission makes a directory unreadable.
type ListDirectory = dyn Fn(&Path) -> std::io::Result<Vec<(OsString, PathBuf)>>;

/// Lists `dir` in name order, so that of two links to one directory the
/// same one is walked on every scan.
fn list_directory(dir: &Path) -> std::io::Result<Vec<(OsString, PathBuf)>> {
    let mut entries = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| (e.file_name(), e.path())))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_unstable();
    Ok(entries)
}

/// One walk of the manifest directories.
#[derive(Default)]
struct Scan {
    files: BTreeMap<PathBuf, ()>,
    /// Paths that could not be listed or looked at, with why: what was
    /// read below them before keeps its objects.
    unreadable: Vec<(PathBuf, String)>,
    /// Directories already walked, by device and inode, so that a link
    /// back up the tree (`ln -s .. up`) is walked once, not until the
    /// kernel refuses the path.
    walked: HashSet<(u64, u64)>,
}

impl Scan {
    /// Finds `*.yaml`/`*.yml` files below `dir`. Hidden entries are
    /// skipped: a mounted ConfigMap keeps its real files under `..data`,
    /// and reading both would define every object twice. A directory that
    /// cannot be listed is noted and the walk goes on with the rest.
    fn collect(&mut self, dir: &Path, list: &ListDirectory) {
        let metadata = match std::fs::metadata(dir) {
            Ok(metadata) => metadata,
            Err(e) => return self.cannot_read(dir, "directory", e),
        };
        if metadata.is_file() {
            self.files.insert(dir.to_path_buf(), ());
            return;
        }
        if !self.walked.insert((metadata.dev(), metadata.ino())) {
            return;
        }
        let entries = match list(dir) {
            Ok(entries) => entries,
            Err(e) => return self.cannot_read(dir, "directory", e),
        };
        for (name, path) in entries {
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let metadata = match std::fs::metadata(&path) {
                Ok(metadata) => metadata,
                // A dangling link (or one through a file): nothing there.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue;
                }
                // Something there that cannot be looked at (a link into a
                // directory without search permission, a link loop).
                Err(e) => {
                    self.cannot_read(&path, "path", e);
                    continue;
                }
            };
            if metadata.is_dir() {
                self.collect(&path, list);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                self.files.insert(path, ());
            }
        }
    }

    fn cannot_read(&mut self, path: &Path, what: &str, error: std::io::Error) {
        let message = format!("cannot read manifest {what}: {error}");
        self.unreadable.push((path.to_path_buf(), message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE_A: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n";
    const SERVICE_B: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\n";

    fn names(snapshot: &ClusterSnapshot) -> Vec<String> {
        snapshot
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn a_broken_edit_keeps_the_files_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), SERVICE_A).unwrap();
        std::fs::write(dir.path().join("b.yml"), SERVICE_B).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        let report = source.load();
        assert!(report.errors.is_empty());
        assert_eq!(report.files, 2);
        assert_eq!(names(&report.snapshot), vec!["a", "b"]);

        std::fs::write(dir.path().join("a.yaml"), "kind: [broken").unwrap();
        std::fs::remove_file(dir.path().join("b.yml")).unwrap();
        let report = source.load();
        assert_eq!(report.errors.len(), 1);
        assert!(report.errors[0].to_string().contains("a.yaml"));
        assert_eq!(names(&report.snapshot), vec!["a"], "a kept, b removed");
    }

    #[test]
    fn a_file_broken_before_it_was_ever_good_gives_what_could_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let bad =
            "apiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec: {ports: [{port: eighty}]}\n";
        let path = dir.path().join("all.yaml");
        std::fs::write(&path, format!("{SERVICE_A}---\n{bad}---\n{SERVICE_B}")).unwrap();
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        let report = source.load();
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(
            names(&report.snapshot),
            vec!["a", "b"],
            "the bad one only is left out"
        );

        // Still broken, with one good document less: what it gives now.
        std::fs::write(&path, format!("{SERVICE_A}---\n{bad}")).unwrap();
        assert_eq!(names(&source.load().snapshot), vec!["a"]);

        // Once good, that version is kept through the next bad edit.
        std::fs::write(&path, format!("{SERVICE_A}---\n{SERVICE_B}")).unwrap();
        assert_eq!(names(&source.load().snapshot), vec!["a", "b"]);
        std::fs::write(&path, bad).unwrap();
        assert_eq!(names(&source.load().snapshot), vec!["a", "b"]);
    }

    #[test]
    fn duplicate_objects_are_reported_and_the_first_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), SERVICE_A).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/2.yaml"), SERVICE_A).unwrap();
        let report = FileSource::new(vec![dir.path().to_path_buf()]).load();
        assert_eq!(names(&report.snapshot), vec!["a"]);
        assert_eq!(report.errors.len(), 1);
        let message = report.errors[0].to_string();
        assert!(message.contains("sub/2.yaml") && message.contains("already defined"));
    }

    #[test]
    fn a_copy_in_a_new_file_does_not_take_an_object_over() {
        let dir = tempfile::tempdir().unwrap();
        let port = |n: u16| format!("{SERVICE_A}spec: {{ports: [{{port: {n}}}]}}\n");
        let served_port = |report: &LoadReport| {
            report.snapshot.services[0]
                .spec
                .as_ref()
                .unwrap()
                .ports
                .as_ref()
                .unwrap()[0]
                .port
        };
        std::fs::write(dir.path().join("b.yaml"), port(80)).unwrap();
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        assert_eq!(served_port(&source.load()), 80);

        // a.yaml comes first in path order, but b.yaml's Service stays.
        std::fs::write(dir.path().join("a.yaml"), port(81)).unwrap();
        for _ in 0..2 {
            let report = source.load();
            assert_eq!(served_port(&report), 80);
            assert_eq!(report.errors.len(), 1);
            assert_eq!(report.errors[0].location.file, dir.path().join("a.yaml"));
        }

        // Once b.yaml lets it go, the copy is the object.
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        let report = source.load();
        assert!(report.errors.is_empty());
        assert_eq!(served_port(&report), 81);
    }

    #[test]
    fn a_duplicate_within_one_list_is_reported_too() {
        let dir = tempfile::tempdir().unwrap();
        let list = "apiVersion: v1\nkind: List\nitems:\n\
                    - {apiVersion: v1, kind: Service, metadata: {name: a}}\n\
                    - {apiVersion: v1, kind: Service, metadata: {name: a}}\n";
        std::fs::write(dir.path().join("list.yaml"), list).unwrap();
        let report = FileSource::new(vec![dir.path().to_path_buf()]).load();
        assert_eq!(names(&report.snapshot), vec!["a"]);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert!(report.errors[0].message.contains("already defined"));
    }

    #[test]
    fn hidden_entries_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join("..data/a.yaml"), SERVICE_A).unwrap();
        let report = FileSource::new(vec![dir.path().to_path_buf()]).load();
        assert_eq!(report.files, 0);
    }

    #[test]
    fn an_unreadable_subdirectory_keeps_its_files_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("a.yaml"), SERVICE_A).unwrap();
        std::fs::write(sub.join("b.yaml"), SERVICE_B).unwrap();
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        assert_eq!(names(&source.load().snapshot), vec!["a", "b"]);

        // `sub` can no longer be listed; meanwhile a.yaml goes and c.yaml
        // comes, beside it and after it in the walk.
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        std::fs::write(
            dir.path().join("z.yaml"),
            SERVICE_A.replace("name: a", "name: c"),
        )
        .unwrap();
        let refused = sub.clone();
        let refuse_sub = move |path: &Path| {
            if path == refused {
                Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            } else {
                list_directory(path)
            }
        };
        let report = source.load_listing_with(&refuse_sub, &[]);
        assert_eq!(names(&report.snapshot), vec!["b", "c"]);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].location.file, sub);
        assert!(
            report.errors[0]
                .message
                .starts_with("cannot read manifest directory: permission denied"),
            "{}",
            report.errors[0]
        );

        // Readable again: its files are read again, and a removed one goes.
        std::fs::remove_file(sub.join("b.yaml")).unwrap();
        let report = source.load();
        assert!(report.errors.is_empty());
        assert_eq!(names(&report.snapshot), vec!["c"]);
    }

    #[test]
    fn a_file_still_being_written_keeps_its_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, SERVICE_A).unwrap();
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        assert_eq!(names(&source.load().snapshot), vec!["a"]);

        // Truncated by a writer that has not finished; a new file in a
        // directory the scan reaches through a link, also unfinished,
        // gives nothing yet. The watcher names them otherwise: with a `.`
        // part, and through the directory itself.
        std::fs::write(&a, "").unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("alias")).unwrap();
        let b = dir.path().join("real/b.yaml");
        std::fs::write(&b, "apiVersion: v1\nkind: Serv").unwrap();
        let held = [dir.path().join("./a.yaml"), b.clone()];
        let report = source.load_holding(&held);
        assert_eq!(names(&report.snapshot), vec!["a"]);
        assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
        assert!(
            report.errors[0]
                .message
                .starts_with("still open for writing")
        );
        assert_eq!(
            report.errors[1].location.file,
            dir.path().join("alias/b.yaml")
        );

        // Closed: read as it now is.
        std::fs::write(&b, SERVICE_B).unwrap();
        let report = source.load();
        assert!(report.errors.is_empty());
        assert_eq!(names(&report.snapshot), vec!["b"], "a.yaml is empty now");
    }

    #[test]
    fn a_link_that_cannot_be_followed_is_reported_and_a_dangling_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), SERVICE_A).unwrap();
        std::os::unix::fs::symlink("nowhere.yaml", dir.path().join("gone.yaml")).unwrap();
        std::os::unix::fs::symlink("a.yaml/x", dir.path().join("through.yaml")).unwrap();
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        let report = FileSource::new(vec![dir.path().to_path_buf()]).load();
        assert_eq!(names(&report.snapshot), vec!["a"]);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].location.file, dir.path().join("loop"));
        assert!(
            report.errors[0]
                .message
                .starts_with("cannot read manifest path: "),
            "{}",
            report.errors[0]
        );
    }

    #[test]
    fn a_link_back_up_the_tree_is_walked_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), SERVICE_A).unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("sub/up")).unwrap();
        let report = FileSource::new(vec![dir.path().to_path_buf()]).load();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.files, 1);
        assert_eq!(names(&report.snapshot), vec!["a"]);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let report = FileSource::new(vec![PathBuf::from("/nonexistent/switchyard")]).load();
        assert_eq!(report.errors.len(), 1);
        assert!(
            report.errors[0]
                .message
                .contains("cannot read manifest directory")
        );
    }
}
