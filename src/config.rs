//! The optional `--config FILE`: a YAML mapping whose keys are the long
//! names of `run`'s flags. It is turned into flags placed before the
//! command line's own, so one parser validates both, and the command line
//! wins: a setting the command line gives too, or one it conflicts with
//! (`publish-service` in the file, `--publish-status-address` on the
//! command line), is left out of what the file gives, even for flags that
//! may be repeated (`manifests`), which would otherwise add up.

use std::ffi::OsString;
use std::path::Path;

use serde_yaml::Value;

use crate::yaml;

/// The config file's settings: each flag's long name with one value.
fn file_settings(path: &Path) -> Result<Vec<(String, OsString)>, String> {
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
            args.push((key.to_string(), OsString::from(text)));
        }
    }
    Ok(args)
}

/// The long names of the flags among `args`.
fn given_flags(args: &[OsString]) -> Vec<String> {
    args.iter()
        .filter_map(|arg| arg.to_str()?.strip_prefix("--"))
        .map(|flag| {
            flag.split_once('=')
                .map_or(flag, |(name, _)| name)
                .to_string()
        })
        .collect()
}

/// Whether the command line's `given` flags override the file's `key`: the
/// same flag, or one that may not be used with it.
fn overridden(key: &str, given: &[String], subcommand: &clap::Command) -> bool {
    let arg = |long: &str| {
        subcommand
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))
    };
    // Whether `a` declares a conflict with `b` (clap declares it on one of
    // the two, so both ways are asked).
    let conflicts = |a: &str, b: &str| {
        arg(a).is_some_and(|a| {
            subcommand
                .get_arg_conflicts_with(a)
                .iter()
                .any(|c| c.get_long() == Some(b))
        })
    };
    given
        .iter()
        .any(|flag| flag == key || conflicts(key, flag) || conflicts(flag, key))
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
    let at = 2.min(args.len());
    let given = given_flags(&args[at..]);
    let command = <crate::cli::Cli as clap::CommandFactory>::command();
    let subcommand = args
        .get(1)
        .and_then(|name| command.find_subcommand(name.to_str()?));
    let from_file: Vec<OsString> = file_settings(&path)?
        .into_iter()
        .filter(|(key, _)| subcommand.is_none_or(|sub| !overridden(key, &given, sub)))
        .flat_map(|(key, value)| [OsString::from(format!("--{key}")), value])
        .collect();
    let mut merged = args;
    merged.splice(at..at, from_file);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, RunArgs};
    use clap::Parser;

    /// `run` with a config file of `yaml` and the command line's `flags`.
    fn run_with(yaml: &str, flags: &[&str]) -> Box<RunArgs> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("switchyard.yaml");
        std::fs::write(&file, yaml).unwrap();
        let mut args: Vec<OsString> = ["switchyard", "run", "--config"]
            .into_iter()
            .map(OsString::from)
            .collect();
        args.push(file.into_os_string());
        args.extend(flags.iter().map(OsString::from));
        let cli = Cli::try_parse_from(merged_args(args).unwrap()).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        run
    }

    #[test]
    fn file_settings_apply_and_the_command_line_wins() {
        let run = run_with(
            "http-addr: 0.0.0.0:80\ndrain-timeout: 5s\nmanifests: [a, b]\naccess-log: false\n",
            &["--drain-timeout", "7s"],
        );
        assert_eq!(run.http_addr.to_string(), "0.0.0.0:80");
        assert_eq!(run.drain_timeout, std::time::Duration::from_secs(7));
        assert_eq!(run.source.manifests.len(), 2);
        assert!(!run.access_log);
    }

    #[test]
    fn a_repeatable_or_conflicting_flag_on_the_command_line_replaces_the_files() {
        let run = run_with(
            "manifests: [/etc/switchyard]\npublish-service: ingress/lb\ndrain-timeout: 5s\n",
            &[
                "--manifests=./test",
                "--publish-status-address",
                "192.0.2.1",
            ],
        );
        assert_eq!(run.source.manifests, [std::path::PathBuf::from("./test")]);
        assert_eq!(run.cluster.publish_service, None);
        assert_eq!(run.cluster.publish_status_address, ["192.0.2.1"]);
        assert_eq!(run.drain_timeout, std::time::Duration::from_secs(5));
        // The other way round: the conflict is declared on the command
        // line's flag, not the file's.
        let run = run_with(
            "publish-status-address: [192.0.2.1]\n",
            &["--publish-service", "ingress/lb"],
        );
        assert!(run.cluster.publish_status_address.is_empty());
        assert_eq!(run.cluster.publish_service.as_deref(), Some("ingress/lb"));
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
        let error = file_settings(&file).unwrap_err();
        assert!(error.contains("http-addr"), "{error}");
    }
}
