//! The optional `--config FILE`: a YAML mapping whose keys are the long
//! names of `run`'s flags. It is turned into flags placed before the
//! command line's own, so one parser validates both and the command line
//! wins.

use std::ffi::OsString;
use std::path::Path;

use serde_yaml::Value;

use crate::yaml;

/// Reads the config file into `--flag value` arguments.
pub fn file_args(path: &Path) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let settings: serde_yaml::Mapping =
        yaml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let mut args = Vec::new();
    for (key, value) in settings {
        let Some(key) = key.as_str() else {
            return Err(format!(
                "config file {}: keys must be flag names",
                path.display()
            ));
        };
        if key == "config" {
            return Err(format!(
                "config file {}: config files do not nest",
                path.display()
            ));
        }
        let values = match value {
            Value::Sequence(items) => items,
            other => vec![other],
        };
        for value in values {
            let text = match value {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(format!(
                        "config file {}: {key}: expected a string, number, boolean or a list of them",
                        path.display()
                    ));
                }
            };
            args.push(OsString::from(format!("--{key}")));
            args.push(OsString::from(text));
        }
    }
    Ok(args)
}

/// Finds `--config FILE` (or `--config=FILE`) in raw arguments.
pub fn config_path(args: &[OsString]) -> Option<&Path> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_str()?;
        if text == "--config" {
            return iter.next().map(Path::new);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(Path::new(path));
        }
    }
    None
}

/// The command line with the config file's flags spliced in right after
/// the subcommand, so that the command line's own flags override them.
pub fn merged_args(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&args).map(Path::to_path_buf) else {
        return Ok(args);
    };
    let from_file = file_args(&path)?;
    let mut merged = args;
    let at = 2.min(merged.len());
    merged.splice(at..at, from_file);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn file_settings_apply_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("switchyard.yaml");
        std::fs::write(
            &file,
            "http-addr: 0.0.0.0:80\ndrain-timeout: 5s\nmanifests: [a, b]\naccess-log: false\n",
        )
        .unwrap();
        let args: Vec<OsString> = [
            "switchyard",
            "run",
            "--config",
            file.to_str().unwrap(),
            "--drain-timeout",
            "7s",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        let cli = Cli::try_parse_from(merged_args(args).unwrap()).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.http_addr.to_string(), "0.0.0.0:80");
        assert_eq!(run.drain_timeout, std::time::Duration::from_secs(7));
        assert_eq!(run.source.manifests.len(), 2);
        assert!(!run.access_log);
    }

    #[test]
    fn unreadable_or_malformed_files_are_named() {
        let error = merged_args(vec![
            "s".into(),
            "run".into(),
            "--config=/nonexistent.yaml".into(),
        ])
        .unwrap_err();
        assert!(error.contains("/nonexistent.yaml"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "http-addr: {nested: map}\n").unwrap();
        let error = file_args(&file).unwrap_err();
        assert!(error.contains("http-addr"), "{error}");
    }
}
