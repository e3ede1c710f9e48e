//! OCI image → ext4 root filesystem. Sources: a registry (`/v2/` API), a local OCI image layout
//! directory, or an OCI / `docker save` archive. Every blob's sha256 is checked as it is read;
//! layers of local images are streamed from their files (an archive is indexed, not loaded) and
//! a registry's are downloaded to files while hashed, so memory does not grow with the image;
//! multi-platform images run their linux/amd64 image. Layers are unpacked honouring whiteouts
//! and opaque directories, refusing path traversal; the tree becomes an ext4 image with
//! `mkfs.ext4 -d`, cached by manifest digest (built once, atomically); instances get
//! copy-on-write clones.

mod archive;
pub mod blob;
pub mod build;
pub mod cache;
pub mod error;
pub mod oci;
pub mod registry;
pub mod unpack;

pub use cache::{ImageCache, Rootfs, clone_file};
pub use error::ImageError;
pub use oci::{ImageConfig, ImageSource, Layer};
