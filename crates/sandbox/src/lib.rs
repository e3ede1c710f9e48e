//! VM sandboxes (the `/vms` and `/templates` surface of `../shared/reference/scalebox-vm-api.md`):
//! templates (ext4 root filesystems), VMs cloned from them copy-on-write and booted with the
//! template's own init, SSH through a host TCP port and mosh through nftables UDP DNAT, snapshots
//! back into templates, the HTTPS gateway (Caddy) and recovery after a daemon restart.

pub mod gateway;
pub mod template_build;
