//! Scalebox manifest schema v1 (`scalebox.toml`): strict parsing (unknown fields rejected, every
//! error with line and column), semantic validation, normalisation (defaults filled in) and the
//! content hash that identifies a release's manifest. Pure: no I/O.
//!
//! ```
//! let m = scalebox_manifest::parse(r#"
//! schema_version = 1
//! [processes.web]
//! ports = [8080]
//! "#).unwrap();
//! assert_eq!(m.process("web").unwrap().scale, 1);
//! assert!(m.content_hash().starts_with("sha256:"));
//! ```
//!
//! The schema is documented for users in `docs/manifest.md`.

mod canonical;
mod error;
mod model;
mod paths;
mod raw;
mod validate;

pub use error::{DEFAULT_FILE_NAME, ManifestError, ManifestErrors};
pub use model::*;
pub use validate::MAX_SCALE;

/// Parses and validates a `scalebox.toml`, returning the normalised manifest or every problem found
/// (a TOML syntax or type error stops parsing at that error; semantic problems are all reported).
pub fn parse(text: &str) -> Result<Manifest, ManifestErrors> {
    let loc = error::Locator::new(text);
    let raw: raw::RawManifest = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            return Err(ManifestErrors::new(vec![
                loc.error(span, e.message().trim_end()),
            ]));
        }
    };
    validate::validate(raw, &loc).map_err(ManifestErrors::new)
}

#[cfg(test)]
mod tests;
