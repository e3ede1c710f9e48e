//! The wire types of the VM surface (`reference/scalebox-vm-api.md`) and their validation:
//! request bodies (unknown fields rejected), VM and template views, `/info`. Pure.

use serde::{Deserialize, Serialize};

/// `POST /vms` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    pub template: String,
    pub ssh_public_key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub vcpu_count: Option<u32>,
    #[serde(default)]
    pub mem_size_mib: Option<u32>,
    #[serde(default)]
    pub disk_size_gib: Option<u32>,
}

/// `POST /vms/{id}/snapshot` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotVm {
    #[serde(default)]
    pub template_name: Option<String>,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmView {
    pub id: String,
    pub name: String,
    pub template: String,
    pub ip: String,
    pub ssh_port: u16,
    pub ssh: String,
    pub url: Option<String>,
    pub status: String,
    pub created_at: String,
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    pub disk_size_gib: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateView {
    pub name: String,
    pub size_bytes: u64,
    pub created_at: String,
    /// Protected templates cannot be deleted.
    pub protected: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotView {
    pub template: String,
    pub source_vm: String,
    pub size_bytes: u64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    pub total_gb: f64,
    pub used_gb: f64,
    pub free_gb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub total_gb: f64,
    pub free_gb: f64,
}

/// `GET /info`.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub host_ip: String,
    pub api_domain: Option<String>,
    pub vm_domain: Option<String>,
    pub templates_count: usize,
    pub vms_count: usize,
    pub storage: Storage,
    pub memory: Memory,
    pub cpu_percent: f64,
}

/// Template names: `[A-Za-z0-9_-]+`, at most 64 characters.
pub fn validate_template_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "invalid template name {name:?}: use 1-64 characters from A-Z a-z 0-9 _ -"
        ));
    }
    Ok(())
}

const KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Checks an OpenSSH public key line (`type base64 [comment]`) and returns it normalised
/// (trimmed, one line). The base64 blob must decode and name the same key type.
pub fn validate_ssh_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    if key.is_empty() {
        return Err("ssh_public_key is required (an OpenSSH public key line, e.g. the content of ~/.ssh/id_ed25519.pub)".into());
    }
    if key.contains('\n') || key.contains('\r') {
        return Err("ssh_public_key must be a single line".into());
    }
    if key.len() > 16 * 1024 {
        return Err("ssh_public_key is too long".into());
    }
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "ssh_public_key has unsupported key type {:?}: expected one of {}",
            kind.chars().take(40).collect::<String>(),
            KEY_TYPES.join(", ")
        ));
    }
    let blob = parts
        .next()
        .ok_or("ssh_public_key has no key data after the key type")?;
    let raw = decode_base64(blob).ok_or("ssh_public_key's key data is not valid base64")?;
    // The blob starts with the key type as an SSH string (u32 length + bytes).
    let inner = raw
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| raw.get(4..4 + n));
    if inner != Some(kind.as_bytes()) {
        return Err(format!(
            "ssh_public_key's key data does not hold a {kind} key"
        ));
    }
    Ok(key.to_owned())
}

/// Standard base64, padded or not (keys pasted by hand lose their `=` now and then).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(s).ok()
}

/// The ready-to-paste SSH command for a VM.
pub fn ssh_command(host_ip: &str, port: u16) -> String {
    format!("ssh -p {port} user@{host_ip}")
}

/// `https://{name}.{vm_domain}` when a VM domain is configured.
pub fn vm_url(name: &str, vm_domain: Option<&str>) -> Option<String> {
    vm_domain
        .filter(|d| !d.is_empty())
        .map(|d| format!("https://{name}.{d}"))
}

/// Rounds to two decimals for `/info`.
pub fn gb(bytes: u64) -> f64 {
    ((bytes as f64 / (1u64 << 30) as f64) * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJd6jv1hV9PHHYSxkkLcRgTIL9GpXBrKRoU6yfnuaLuL me@host";

    #[test]
    fn ssh_keys() {
        assert_eq!(validate_ssh_key(&format!("  {ED}\n")).unwrap(), ED);
        for (bad, why) in [
            ("", "required"),
            ("ssh-dss AAAA", "unsupported key type"),
            ("ssh-ed25519", "no key data"),
            ("ssh-ed25519 !!!", "not valid base64"),
            // An RSA blob labelled ed25519.
            (
                "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAAAgQC",
                "does not hold",
            ),
            ("ssh-ed25519 AAAA\nssh-rsa AAAA", "single line"),
        ] {
            let e = validate_ssh_key(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn template_names_and_bodies() {
        assert!(validate_template_name("debian-base_2").is_ok());
        for bad in ["", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_template_name(bad).is_err(), "{bad:?}");
        }
        let e =
            serde_json::from_str::<CreateVm>(r#"{"template":"t","ssh_public_key":"k","cpus":2}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown field `cpus`"), "{e}");
        assert_eq!(
            vm_url("a-b-c", Some("vms.example.com")).as_deref(),
            Some("https://a-b-c.vms.example.com")
        );
        assert_eq!(vm_url("a", None), None);
        assert_eq!(
            ssh_command("203.0.113.7", 22001),
            "ssh -p 22001 user@203.0.113.7"
        );
        assert_eq!(gb(3 << 30), 3.0);
    }
}
