//! Log setup: tracing with a text or JSON formatter and a filter.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Logs go to stderr; stdout is kept for
/// what the commands print (addresses, reports).
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let mut directives = filter.to_string();
    if !filter.contains("kube_client") {
        // kube's client logs every failed request at error level; the
        // source reports those once per kind of failure instead.
        directives.push_str(",kube_client=off");
    }
    let filter =
        EnvFilter::try_new(&directives).map_err(|e| format!("--log-level {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
