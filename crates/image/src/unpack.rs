//! Applying layers to a directory tree: gzip or plain tar, whiteouts (`.wh.<name>`) and opaque
//! directories (`.wh..wh..opq`), modes and numeric owners kept, symlinks and hardlinks created by
//! us (never followed). Anything that would write outside the root is refused: absolute or `..`
//! paths, writing through a symlink, hardlinks or relative symlinks that climb out of the root.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::{ImageError, Layer};

/// A layer path made safe: relative, no `..`, no empty result.
fn clean(layer: &str, raw: &Path) -> Result<PathBuf, ImageError> {
    let unsafe_ = |why: &str| ImageError::Unsafe {
        layer: layer.into(),
        path: raw.display().to_string(),
        why: why.into(),
    };
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_("contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_("is an absolute path"));
            }
        }
    }
    Ok(out)
}

/// Refuses when any existing ancestor of `rel` inside `root` is a symlink.
fn no_symlink_parents(layer: &str, root: &Path, rel: &Path) -> Result<(), ImageError> {
    let mut cur = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        cur.push(c);
        if let Ok(m) = std::fs::symlink_metadata(&cur)
            && m.file_type().is_symlink()
        {
            return Err(ImageError::Unsafe {
                layer: layer.into(),
                path: rel.display().to_string(),
                why: format!(
                    "would be written through the symlink {}",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                ),
            });
        }
    }
    Ok(())
}

/// Whether a relative symlink target, seen from `link_dir`, climbs above the root.
fn escapes(link_dir: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false; // resolved inside the guest's root at run time
    }
    let mut depth = link_dir.components().count() as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// A layer's tar stream: gunzipped when the bytes start with the gzip magic, else as is (zstd is
/// refused). A gzip error is remembered, to be reported as one rather than as a bad tar.
struct TarStream<R: Read> {
    inner: Inner<R>,
    gzip_error: Option<String>,
}

enum Inner<R: Read> {
    Plain(R),
    Gzip(flate2::read::GzDecoder<R>),
}

impl<R: Read> Read for TarStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(r) => r.read(buf),
            Inner::Gzip(g) => g.read(buf).inspect_err(|e| {
                self.gzip_error.get_or_insert_with(|| e.to_string());
            }),
        }
    }
}

type Sniffed<R> = std::io::Chain<std::io::Cursor<Vec<u8>>, R>;

fn tar_stream<R: Read>(
    layer: &str,
    media_type: &str,
    mut raw: R,
) -> Result<TarStream<Sniffed<R>>, ImageError> {
    let mut head = Vec::with_capacity(4);
    (&mut raw)
        .take(4)
        .read_to_end(&mut head)
        .map_err(ImageError::io(format!("layer {layer}: read")))?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    if !gzip && (head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || media_type.contains("zstd")) {
        return Err(ImageError::Invalid(format!(
            "layer {layer} is zstd-compressed, which is not supported yet; push the image with gzip layers"
        )));
    }
    let r = std::io::Cursor::new(head).chain(raw);
    Ok(TarStream {
        inner: if gzip {
            Inner::Gzip(flate2::read::GzDecoder::new(r))
        } else {
            Inner::Plain(r)
        },
        gzip_error: None,
    })
}

/// One pass of `f` over the layer's tar stream, the layer's digest checked over all of its
/// bytes afterwards. A digest mismatch wins over any other error: bytes that are not the layer
/// explain whatever they caused.
fn pass(
    layer: &Layer,
    f: impl FnOnce(&mut dyn Read) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let mut raw = layer.open()?;
    let result = tar_stream(&layer.digest, &layer.media_type, &mut raw).and_then(|mut tar| {
        // Read past the tar's end too, so that a gzip stream cut short or failing its CRC
        // is refused even when the tar in it ended before.
        let r = f(&mut tar).and_then(|()| {
            std::io::copy(&mut tar, &mut std::io::sink())
                .map(drop)
                .map_err(ImageError::io(format!("layer {}: read", layer.digest)))
        });
        match (r, tar.gzip_error) {
            (Err(_), Some(g)) => Err(ImageError::Invalid(format!(
                "layer {}: bad gzip data: {g}",
                layer.digest
            ))),
            (r, _) => r,
        }
    });
    raw.finish()?;
    result
}

/// Applies one layer on top of `root`, streaming it twice (whiteouts first, then entries);
/// the layer is never held in memory.
pub fn apply_layer(root: &Path, layer: &Layer) -> Result<(), ImageError> {
    pass(layer, |r| whiteouts(root, &layer.digest, r))?;
    pass(layer, |r| entries(root, &layer.digest, r))
}

fn bad_tar(layer: &str) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::Invalid(format!("layer {layer} is not a valid tar: {e}"))
}

/// Pass 1: whiteouts and opaque directories delete from the layers below.
fn whiteouts(root: &Path, layer: &str, r: &mut dyn Read) -> Result<(), ImageError> {
    let bad = bad_tar(layer);
    let mut a = tar::Archive::new(r);
    for e in a.entries().map_err(&bad)? {
        let e = e.map_err(&bad)?;
        let rel = clean(layer, &e.path().map_err(&bad)?)?;
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            no_symlink_parents(layer, root, &rel)?;
            if let Ok(rd) = std::fs::read_dir(root.join(parent)) {
                for c in rd.flatten() {
                    remove(&c.path());
                }
            }
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            no_symlink_parents(layer, root, &rel)?;
            remove(&root.join(parent).join(hidden));
        }
    }
    Ok(())
}

/// Pass 2: the layer's own entries.
fn entries(root: &Path, layer: &str, r: &mut dyn Read) -> Result<(), ImageError> {
    let bad = bad_tar(layer);
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(false);
    for e in a.entries().map_err(&bad)? {
        let mut e = e.map_err(&bad)?;
        let rel = clean(layer, &e.path().map_err(&bad)?)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(".wh.") {
            continue;
        }
        no_symlink_parents(layer, root, &rel)?;
        let dst = root.join(&rel);
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p)
                .map_err(ImageError::io(format!("create {}", p.display())))?;
        }
        let kind = e.header().entry_type();
        if kind.is_hard_link() {
            let target = e.link_name().map_err(&bad)?.ok_or_else(|| {
                ImageError::Invalid(format!(
                    "layer {layer}: hardlink {} without target",
                    rel.display()
                ))
            })?;
            let t = clean(layer, &target).map_err(|_| ImageError::Unsafe {
                layer: layer.into(),
                path: rel.display().to_string(),
                why: format!(
                    "is a hardlink to {} outside the image root",
                    target.display()
                ),
            })?;
            no_symlink_parents(layer, root, &t)?;
            remove(&dst);
            std::fs::hard_link(root.join(&t), &dst).map_err(ImageError::io(format!(
                "hardlink {} -> {}",
                rel.display(),
                t.display()
            )))?;
        } else if kind.is_symlink() {
            let target = e.link_name().map_err(&bad)?.ok_or_else(|| {
                ImageError::Invalid(format!(
                    "layer {layer}: symlink {} without target",
                    rel.display()
                ))
            })?;
            if escapes(rel.parent().unwrap_or(Path::new("")), &target) {
                return Err(ImageError::Unsafe {
                    layer: layer.into(),
                    path: rel.display().to_string(),
                    why: format!(
                        "is a symlink to {} which climbs out of the image root",
                        target.display()
                    ),
                });
            }
            remove(&dst);
            std::os::unix::fs::symlink(&target, &dst)
                .map_err(ImageError::io(format!("symlink {}", rel.display())))?;
            let (uid, gid) = (e.header().uid().unwrap_or(0), e.header().gid().unwrap_or(0));
            let _ = std::os::unix::fs::lchown(&dst, Some(uid as u32), Some(gid as u32));
        } else if matches!(
            kind,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            // Device nodes and fifos (the tar crate does not make them): mknod, then owner.
            let h = e.header();
            let file_type = match kind {
                tar::EntryType::Char => libc::S_IFCHR,
                tar::EntryType::Block => libc::S_IFBLK,
                _ => libc::S_IFIFO,
            };
            let (major, minor) = (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            );
            let mode = h.mode().unwrap_or(0o644) & 0o7777;
            remove(&dst);
            let c = std::ffi::CString::new(dst.as_os_str().as_encoded_bytes()).map_err(|_| {
                ImageError::Invalid(format!("layer {layer}: path {} has a NUL", rel.display()))
            })?;
            // SAFETY: valid C string; mknod has no other pointer arguments.
            let r = unsafe {
                libc::mknod(
                    c.as_ptr(),
                    file_type | mode as libc::mode_t,
                    libc::makedev(major, minor),
                )
            };
            if r != 0 {
                return Err(ImageError::io(format!(
                    "layer {layer}: create device node {} (needs root)",
                    rel.display()
                ))(std::io::Error::last_os_error()));
            }
            let (uid, gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
            let _ = std::os::unix::fs::lchown(&dst, Some(uid as u32), Some(gid as u32));
            // The mode as given, not reduced by our umask.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode));
        } else {
            // A directory entry keeps an existing directory; anything else replaces what is there.
            if !kind.is_dir() || std::fs::symlink_metadata(&dst).is_ok_and(|m| !m.is_dir()) {
                remove(&dst);
            }
            e.unpack(&dst).map_err(ImageError::io(format!(
                "layer {layer}: unpack {}",
                rel.display()
            )))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_detection() {
        assert!(escapes(Path::new("a"), Path::new("../../etc/passwd")));
        assert!(!escapes(Path::new("a/b"), Path::new("../c")));
        assert!(!escapes(Path::new("usr/bin"), Path::new("/bin/busybox")));
        assert!(clean("l", Path::new("../x")).is_err());
        assert!(clean("l", Path::new("/etc/x")).is_err());
        assert_eq!(
            clean("l", Path::new("./etc/x")).unwrap(),
            PathBuf::from("etc/x")
        );
    }
}

#[cfg(test)]
mod device_tests {
    use super::*;

    /// A layer with device nodes and a fifo (images ship `/dev/null`-like nodes): unpacked as
    /// the same kind of node, with its numbers, when running as root.
    #[test]
    fn device_nodes_and_fifos_are_unpacked() {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating device nodes needs root");
            return;
        }
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, major, minor) in [
            ("dev/null", tar::EntryType::Char, 1, 3),
            ("dev/loopx", tar::EntryType::Block, 7, 200),
            ("run/fifo", tar::EntryType::Fifo, 0, 0),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_path(path).unwrap();
            h.set_mode(0o666);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(0);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        let data = b.into_inner().unwrap();
        let root = tempfile::tempdir().unwrap();
        let layer = Layer {
            digest: crate::oci::sha256(&data),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            source: crate::blob::BlobSource::Memory(data),
        };
        apply_layer(root.path(), &layer).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let null = std::fs::symlink_metadata(root.path().join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.mode() & 0o7777, 0o666, "mode kept despite the umask");
        assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
        let blk = std::fs::symlink_metadata(root.path().join("dev/loopx")).unwrap();
        assert!(blk.file_type().is_block_device());
        assert_eq!((libc::major(blk.rdev()), libc::minor(blk.rdev())), (7, 200));
        assert!(
            std::fs::symlink_metadata(root.path().join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }
}
