//! An image archive (tar) indexed in one pass over its headers: each regular file's name,
//! normalised (no leading `./`), maps to where its bytes lie in the archive file. Contents are
//! skipped by seeking, never read; directories, symlinks and other entries are ignored; a name
//! that appears twice means its last entry (as tar(1) extracts it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::ImageError;
use crate::blob::BlobSource;

/// Regular files of an archive: name → (offset of the content, length).
pub struct ArchiveIndex {
    path: PathBuf,
    entries: HashMap<String, (u64, u64)>,
}

/// The name an entry is looked up by: `./blobs/sha256/ab` and `blobs/sha256/ab` are the same.
pub fn entry_name(raw: &Path) -> String {
    raw.to_string_lossy().trim_start_matches("./").to_owned()
}

impl ArchiveIndex {
    /// Reads the headers of the tar at `path`.
    pub fn open(path: &Path) -> Result<ArchiveIndex, ImageError> {
        let f = std::fs::File::open(path)
            .map_err(ImageError::io(format!("open {}", path.display())))?;
        let bad = || format!("read archive {}", path.display());
        let mut a = tar::Archive::new(std::io::BufReader::with_capacity(1 << 16, f));
        let mut entries = HashMap::new();
        for e in a.entries_with_seek().map_err(ImageError::io(bad()))? {
            let e = e.map_err(ImageError::io(bad()))?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = entry_name(&e.path().map_err(ImageError::io("archive entry name"))?);
            entries.insert(name, (e.raw_file_position(), e.size()));
        }
        Ok(ArchiveIndex {
            path: path.to_owned(),
            entries,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Where the file `name` is in the archive.
    pub fn get(&self, name: &str) -> Option<BlobSource> {
        self.entries
            .get(name)
            .map(|&(offset, len)| BlobSource::File {
                path: self.path.clone(),
                offset,
                len,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(size);
        h
    }

    #[test]
    fn indexes_regular_files_by_normalised_name() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        let long = format!("./blobs/sha256/{}", "e".repeat(120));
        let files: [(&str, &[u8]); 4] = [
            ("./index.json", b"{}"),
            ("blobs/sha256/aa", b"first"),
            (&long, b"a long name (GNU longname entry before it)"),
            ("blobs/sha256/aa", b"second, wins"),
        ];
        for (name, data) in files {
            b.append_data(
                &mut header(tar::EntryType::Regular, data.len() as u64),
                name,
                data,
            )
            .unwrap();
        }
        b.append_data(
            &mut header(tar::EntryType::Directory, 0),
            "./blobs/",
            &b""[..],
        )
        .unwrap();
        let mut l = header(tar::EntryType::Symlink, 0);
        l.set_link_name("index.json").unwrap();
        b.append_data(&mut l, "link.json", &b""[..]).unwrap();
        b.finish().unwrap();
        drop(b);

        let a = ArchiveIndex::open(&p).unwrap();
        let read = |n: &str| a.get(n).map(|s| s.read_small(n).unwrap());
        assert_eq!(read("index.json").unwrap(), b"{}");
        assert_eq!(read("blobs/sha256/aa").unwrap(), b"second, wins");
        assert_eq!(
            read(long.trim_start_matches("./")).unwrap(),
            b"a long name (GNU longname entry before it)"
        );
        assert!(a.contains("index.json") && !a.contains("./index.json"));
        assert!(
            a.get("blobs").is_none() && a.get("blobs/").is_none(),
            "dirs ignored"
        );
        assert!(a.get("link.json").is_none(), "symlinks ignored");
        assert_eq!(entry_name(Path::new("././x")), "x");

        std::fs::write(
            &p,
            b"not a tar at all, but long enough to be read as a header?",
        )
        .unwrap();
        assert!(ArchiveIndex::open(&p).is_err());
    }
}
