//! Shared by the guest-booting tests of this crate: the platform kernel, our initramfs with
//! `scalebox-init`, and the accelerator choice, prepared once under the target's tmp dir.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use scalebox_vmm::qemu::{self, Accel};
use scalebox_vmm::{initramfs, kernel};

pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// What a test guest boots with.
pub struct Guest {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub accel: Accel,
}

/// The guest kernel (fetched once), the initramfs with a freshly built static init, and the
/// accelerator this machine can use.
pub async fn guest() -> Guest {
    let data = tmp().join("vmm-data");
    let k = tokio::task::spawn_blocking(move || kernel::ensure_kernel(&data))
        .await
        .unwrap()
        .expect("guest kernel");
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let init = tokio::task::spawn_blocking(move || initramfs::build_static_init(&ws))
        .await
        .unwrap()
        .expect("build init");
    let initrd = initramfs::build(&k, &init, &tmp().join("vmm-data/initramfs")).expect("initramfs");
    let accel = qemu::detect_accel(&k.vmlinuz, &tmp().join("vmm-data/accel.json")).await;
    Guest {
        kernel: k.vmlinuz,
        initramfs: initrd,
        accel,
    }
}
