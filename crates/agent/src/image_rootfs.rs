//! The real [`RootfsProvider`]: OCI images (registry, layout directories, archives) turned into ext4 by
//! `scalebox-image` (digest-verified, cached by digest, built once), cloned copy-on-write per
//! instance into `<data_dir>/rootfs/<key>.ext4`.

use std::path::{Path, PathBuf};

use scalebox_image::{ImageCache, ImageSource as Src};

use crate::backend::*;
use crate::spec::ImageSource;

pub struct ImageRootfs {
    cache: std::sync::Arc<ImageCache>,
    instances: PathBuf,
}

impl ImageRootfs {
    pub fn new(data_dir: &Path) -> Result<ImageRootfs, BackendError> {
        let cache = ImageCache::open(&data_dir.join("images"))
            .map_err(|e| BackendError::new("setup", e.to_string()))?;
        let instances = data_dir.join("rootfs");
        std::fs::create_dir_all(&instances).map_err(|e| {
            BackendError::new("setup", format!("create {}: {e}", instances.display()))
        })?;
        Ok(ImageRootfs {
            cache: std::sync::Arc::new(cache),
            instances,
        })
    }
}

impl RootfsProvider for ImageRootfs {
    fn prepare(&self, source: &ImageSource) -> BoxFut<'_, Result<PreparedImage, BackendError>> {
        let source = source.clone();
        let cache = self.cache.clone();
        Box::pin(async move {
            let src = match source {
                ImageSource::OciLayout { path, tag } => Src::OciLayout {
                    dir: path.into(),
                    reference: tag,
                },
                ImageSource::Archive { path } => Src::Archive { path: path.into() },
                ImageSource::Upload { digest } => {
                    return Err(BackendError::new(
                        "image",
                        format!(
                            "image {digest} was uploaded to the control plane; this agent fetches it through its control plane link, which it does not have"
                        ),
                    ));
                }
                ImageSource::Registry { reference } => {
                    // Plain HTTP only for a registry on this machine's loopback.
                    let host = reference.split('/').next().unwrap_or("");
                    let insecure_http = host.starts_with("127.")
                        || host.starts_with("localhost")
                        || host.starts_with("[::1]");
                    Src::Registry {
                        reference,
                        insecure_http,
                    }
                }
            };
            let r = tokio::task::spawn_blocking(move || cache.rootfs(&src))
                .await
                .map_err(|e| BackendError::new("image", e.to_string()))?
                .map_err(|e| BackendError::new("image", e.to_string()))?;
            Ok(PreparedImage {
                digest: r.digest,
                ext4: r.ext4,
                config: OciRunConfig {
                    entrypoint: r.config.entrypoint,
                    cmd: r.config.cmd,
                    env: r.config.env,
                    user: r.config.user,
                    workdir: r.config.working_dir,
                },
                cache_hit: r.cache_hit,
                build_time: (!r.cache_hit).then_some(r.build_duration),
            })
        })
    }

    fn clone_for(
        &self,
        image: &PreparedImage,
        key: &str,
    ) -> BoxFut<'_, Result<PathBuf, BackendError>> {
        let (src, dst) = (
            image.ext4.clone(),
            self.instances.join(format!("{key}.ext4")),
        );
        Box::pin(async move {
            let d = dst.clone();
            tokio::task::spawn_blocking(move || scalebox_image::clone_file(&src, &d))
                .await
                .map_err(|e| BackendError::new("rootfs", e.to_string()))?
                .map_err(|e| BackendError::new("rootfs", e.to_string()))?;
            Ok(dst)
        })
    }

    fn remove_instance(&self, path: &Path) -> BoxFut<'_, Result<(), BackendError>> {
        let path = path.to_owned();
        Box::pin(async move {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BackendError::new(
                    "rootfs",
                    format!("remove {}: {e}", path.display()),
                )),
                _ => Ok(()),
            }
        })
    }

    fn list_instances(&self) -> BoxFut<'_, Result<Vec<PathBuf>, BackendError>> {
        Box::pin(async move {
            Ok(std::fs::read_dir(&self.instances)
                .map_err(|e| BackendError::new("rootfs", e.to_string()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "ext4"))
                .collect())
        })
    }
}
