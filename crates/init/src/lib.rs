//! The control channel between the host agent and `scalebox-init` (guest PID 1). The binary
//! (`main.rs`) is the guest side; `scalebox-vmm` is the host side. Both use [`proto`].

pub mod proto;
