//! **Dev/test root filesystem provider** for the process backend: treats an `archive` image
//! source as an opaque file, caches it by SHA-256 digest under `<data_dir>/images/` (atomic
//! temp + rename, concurrent requests build once) and gives each instance a copy under
//! `<data_dir>/rootfs/<key>.img`. It does not build ext4 and the run config is empty (the spec's
//! `command` is required). Production uses `scalebox-image`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::backend::{BackendError, BoxFut, OciRunConfig, PreparedImage, RootfsProvider};
use crate::spec::ImageSource;

/// The dev rootfs provider.
pub struct FileRootfs {
    images: PathBuf,
    instances: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl FileRootfs {
    pub fn new(data_dir: &Path) -> Result<FileRootfs, BackendError> {
        let images = data_dir.join("images");
        let instances = data_dir.join("rootfs");
        for d in [&images, &instances] {
            fs::create_dir_all(d)
                .map_err(|e| BackendError::new("setup", format!("create {d:?}: {e}")))?;
        }
        Ok(FileRootfs {
            images,
            instances,
            lock: tokio::sync::Mutex::new(()),
        })
    }
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> BackendError + '_ {
    move |e| BackendError::new("rootfs", format!("{what}: {e}"))
}

fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl RootfsProvider for FileRootfs {
    fn prepare(&self, source: &ImageSource) -> BoxFut<'_, Result<PreparedImage, BackendError>> {
        let source = source.clone();
        Box::pin(async move {
            let ImageSource::Archive { path } = source else {
                return Err(BackendError::new(
                    "rootfs",
                    "the dev rootfs provider only supports {\"kind\":\"archive\"} image sources",
                ));
            };
            let _g = self.lock.lock().await;
            let images = self.images.clone();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let src = PathBuf::from(&path);
                // An OCI or docker archive is known by its image digest (as with the real
                // provider); any other file by the sha256 of its bytes.
                let digest =
                    match scalebox_image::oci::resolve(&scalebox_image::ImageSource::Archive {
                        path: src.clone(),
                    }) {
                        Ok(r) => r.digest.trim_start_matches("sha256:").to_owned(),
                        Err(_) => {
                            sha256_file(&src).map_err(io_err(&format!("read image {path}")))?
                        }
                    };
                let ext4 = images.join(format!("{digest}.img"));
                let cache_hit = ext4.exists();
                if !cache_hit {
                    let tmp = images.join(format!(".{digest}.tmp"));
                    fs::copy(&src, &tmp).map_err(io_err("copy image"))?;
                    fs::File::open(&tmp)
                        .and_then(|f| f.sync_all())
                        .map_err(io_err("sync image"))?;
                    fs::rename(&tmp, &ext4).map_err(io_err("publish image"))?;
                }
                Ok(PreparedImage {
                    digest: format!("sha256:{digest}"),
                    ext4,
                    config: OciRunConfig::default(),
                    cache_hit,
                    build_time: (!cache_hit).then(|| started.elapsed()),
                })
            })
            .await
            .map_err(|e| BackendError::new("rootfs", e.to_string()))?
        })
    }

    fn clone_for(
        &self,
        image: &PreparedImage,
        key: &str,
    ) -> BoxFut<'_, Result<PathBuf, BackendError>> {
        let src = image.ext4.clone();
        let dst = self.instances.join(format!("{key}.img"));
        Box::pin(async move {
            tokio::fs::copy(&src, &dst)
                .await
                .map_err(io_err("clone rootfs"))?;
            Ok(dst)
        })
    }

    fn remove_instance(&self, path: &Path) -> BoxFut<'_, Result<(), BackendError>> {
        let path = path.to_owned();
        Box::pin(async move {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(BackendError::new("rootfs", format!("remove {path:?}: {e}"))),
            }
        })
    }

    fn list_instances(&self) -> BoxFut<'_, Result<Vec<PathBuf>, BackendError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let rd = fs::read_dir(&self.instances).map_err(io_err("list rootfs"))?;
            for e in rd.flatten() {
                out.push(e.path());
            }
            Ok(out)
        })
    }
}
