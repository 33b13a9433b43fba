//! The tool commands of the `netsy` binary besides running a node: `netsy certs` and
//! `netsy datafile inspect`. The node itself is `server`.

mod certs;

use std::io::Write;

use anyhow::Context as _;

use crate::datafile::FileSummary;
use crate::datafile::inspect::{self, InspectOptions};

pub use certs::{CertsArgs, run_certs};

/// `netsy datafile inspect`: a local path, a `file://` URL, or an object URL (`s3://bucket/key`,
/// `gs://…`, `az://…`), streamed.
pub fn inspect_datafile(
    path_or_url: &str,
    opts: &InspectOptions,
    out: &mut impl Write,
) -> anyhow::Result<FileSummary> {
    if !path_or_url.contains("://") || path_or_url.starts_with("file://") {
        return Ok(inspect::inspect_with(path_or_url, opts, out)?);
    }
    inspect::print_name(path_or_url, out)?;
    let (store, location) = crate::objstore::config::open_url(path_or_url)
        .with_context(|| format!("cannot open {path_or_url}"))?;
    Ok(inspect::inspect_object(store, location, opts, out)?)
}
