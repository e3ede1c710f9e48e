//! Image errors: each says which image, blob or layer entry was wrong.

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "digest mismatch for blob {expected}: content hashes to {actual}; the image is corrupt and was not cached"
    )]
    Digest { expected: String, actual: String },
    #[error("invalid image: {0}")]
    Invalid(String),
    /// Which image of an index to run cannot be told: none for linux/amd64 (the message lists
    /// the platforms there are), several without a reference, no manifests. Names no paths.
    #[error("{0}")]
    Platform(String),
    #[error("layer {layer}: entry {path:?} {why}; refusing to unpack this image")]
    Unsafe {
        layer: String,
        path: String,
        why: String,
    },
    #[error("mkfs.ext4 failed: {0}")]
    Mkfs(String),
}

impl ImageError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let what = what.into();
        move |source| ImageError::Io { what, source }
    }
}
