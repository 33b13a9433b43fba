//! Logging: journald when started by systemd (`JOURNAL_STREAM`), JSON when not on a terminal
//! (containers), human-readable on a terminal; `NETSY_LOG_FORMAT` overrides. Values stored in
//! the key-value store are never logged.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

pub fn init(debug: bool) {
    let default = if debug {
        "debug,h2=info,hyper=info,tower=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_env("NETSY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let format = std::env::var("NETSY_LOG_FORMAT").unwrap_or_else(|_| {
        if std::env::var_os("JOURNAL_STREAM").is_some() {
            "journald".into()
        } else if std::io::stderr().is_terminal() {
            "pretty".into()
        } else {
            "json".into()
        }
    });
    let registry = tracing_subscriber::registry().with(filter);
    match format.as_str() {
        "journald" => match tracing_journald::layer() {
            Ok(layer) => registry
                .with(layer.with_syslog_identifier("netsy".into()))
                .init(),
            Err(_) => registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .init(),
        },
        "json" => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        _ => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}
