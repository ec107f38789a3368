//! The file source: every `*.yaml`/`*.yml` under the manifest directories
//! becomes a [`ClusterSnapshot`]. A file that fails to parse keeps the
//! objects of its last good version, so one bad edit never takes routes
//! away; a file that has had no good version yet (read at start, or new)
//! gives the objects that could be read, so one bad document does not take
//! the others with it. The error names the file, the document and the line.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::manifest::{self, LoadError, Location, Object, Skipped};
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
}

impl FileSource {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self {
            dirs,
            last_good: HashMap::new(),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Reads every manifest file again. Files that fail keep their last
    /// good objects; every failure is in `errors`.
    pub fn load(&mut self) -> LoadReport {
        let mut errors = Vec::new();
        let mut files = BTreeMap::new();
        for dir in &self.dirs {
            if let Err(e) = collect_manifest_files(dir, &mut files) {
                errors.push(LoadError {
                    location: location_of(dir),
                    message: format!("cannot read manifest directory: {e}"),
                });
            }
        }
        let dirs_failed = !errors.is_empty();

        let mut skipped = Vec::new();
        let mut current = HashMap::new();
        let mut partial = HashMap::new();
        for path in files.keys() {
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
        if dirs_failed {
            // A directory that vanished or became unreadable loses nothing:
            // its files keep their last good objects.
            for (path, objects) in &self.last_good {
                current
                    .entry(path.clone())
                    .or_insert_with(|| objects.clone());
            }
        }
        self.last_good = current;

        // What could be read of broken files without a good version is
        // served, but never becomes one: the next read of such a file
        // serves whatever it gives then.
        let snapshot = if partial.is_empty() {
            assemble(&self.last_good, &mut errors)
        } else {
            let mut serving = self.last_good.clone();
            serving.extend(partial);
            assemble(&serving, &mut errors)
        };
        LoadReport {
            snapshot,
            errors,
            skipped,
            files: files.len(),
        }
    }
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

/// Builds one snapshot from all files, in path order. The same object
/// defined twice is an error on the later definition; the first is kept.
fn assemble(
    files: &HashMap<PathBuf, Vec<(Location, Object)>>,
    errors: &mut Vec<LoadError>,
) -> ClusterSnapshot {
    let mut ordered: Vec<_> = files.values().flatten().collect();
    ordered.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen: HashMap<String, &Location> = HashMap::new();
    let mut snapshot = ClusterSnapshot::default();
    for (location, object) in ordered {
        let key = object.describe();
        if let Some(first) = seen.get(&key) {
            errors.push(LoadError {
                location: location.clone(),
                message: format!("{key} is already defined at {first}; this copy is ignored"),
            });
            continue;
        }
        seen.insert(key, location);
        object.clone().add_to(&mut snapshot);
    }
    snapshot
}

/// Finds `*.yaml`/`*.yml` files below `dir`. Hidden entries are skipped:
/// a mounted ConfigMap keeps its real files under `..data`, and reading
/// both would define every object twice.
fn collect_manifest_files(dir: &Path, files: &mut BTreeMap<PathBuf, ()>) -> std::io::Result<()> {
    let metadata = std::fs::metadata(dir)?;
    if metadata.is_file() {
        files.insert(dir.to_path_buf(), ());
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue; // a dangling link
        };
        if metadata.is_dir() {
            collect_manifest_files(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.insert(path, ());
        }
    }
    Ok(())
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
    fn hidden_entries_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join("..data/a.yaml"), SERVICE_A).unwrap();
        let report = FileSource::new(vec![dir.path().to_path_buf()]).load();
        assert_eq!(report.files, 0);
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
