//! Everything between the host agent and a running guest: the platform kernel (fetched from
//! Debian, unpacked into the data directory), the initramfs (`scalebox-init` + the kernel
//! modules it needs), VMM drivers behind one trait, and the host side of the control channel.

pub mod channel;
pub mod cpio;
pub mod error;
pub mod firecracker;
pub mod initramfs;
pub mod kernel;
pub mod modinfo;
pub mod qemu;
pub mod vsock;

pub use error::VmmError;
