//! Agent state on disk: every instance record in one JSON file (`state.json`, mode 0600 since
//! specs carry secrets), rewritten atomically (temp file + fsync + rename + directory fsync) on
//! every transition. A corrupt file is moved aside and the agent starts empty.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::state::InstanceRecord;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    instances: Vec<InstanceRecord>,
}

/// Writes `bytes` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// What loading found.
pub struct Loaded {
    pub records: Vec<InstanceRecord>,
    /// Where a corrupt file was moved, if it was.
    pub moved_aside: Option<(PathBuf, String)>,
}

/// The persisted instance table.
pub struct Store {
    path: PathBuf,
    records: Mutex<BTreeMap<String, InstanceRecord>>,
}

impl Store {
    /// Loads `path` (missing = empty). A file that does not parse is renamed to
    /// `state.json.corrupt-<unix time>` and loading continues empty.
    pub fn load(path: &Path) -> io::Result<(Store, Loaded)> {
        let mut moved_aside = None;
        let records: Vec<InstanceRecord> = match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(f) if f.version == VERSION => f.instances,
                Ok(f) => {
                    moved_aside = Some(move_aside(
                        path,
                        format!("unsupported state version {}", f.version),
                    )?);
                    Vec::new()
                }
                Err(e) => {
                    moved_aside = Some(move_aside(path, e.to_string())?);
                    Vec::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let map = records.iter().map(|r| (r.id.clone(), r.clone())).collect();
        Ok((
            Store {
                path: path.to_owned(),
                records: Mutex::new(map),
            },
            Loaded {
                records,
                moved_aside,
            },
        ))
    }

    /// Stores (or replaces) one record and writes the file. A record of an older generation
    /// than the stored one is ignored: during a replacement the outgoing runner must not
    /// overwrite its successor (if the agent dies mid-replacement, the old VM is then an orphan
    /// and is removed at start).
    pub fn put(&self, rec: &InstanceRecord) -> io::Result<()> {
        let mut m = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(&rec.id)
            .is_some_and(|old| old.spec.generation > rec.spec.generation)
        {
            return Ok(());
        }
        m.insert(rec.id.clone(), rec.clone());
        self.write(&m)
    }

    /// Removes a record and writes the file.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        let mut m = self.records.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(id);
        self.write(&m)
    }

    fn write(&self, m: &BTreeMap<String, InstanceRecord>) -> io::Result<()> {
        let f = StateFile {
            version: VERSION,
            instances: m.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&f).map_err(io::Error::other)?;
        write_atomic(&self.path, &bytes, 0o600)
    }
}

fn move_aside(path: &Path, why: String) -> io::Result<(PathBuf, String)> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{secs}"));
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside)?;
    Ok((aside, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rec(id: &str) -> InstanceRecord {
        let spec = serde_json::from_str(
            r#"{"generation":1,"image":{"kind":"archive","path":"/a"},"secrets":{"K":"v"}}"#,
        )
        .unwrap();
        InstanceRecord::new(id.into(), spec, "t".into())
    }

    #[test]
    fn roundtrip_and_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let (s, l) = Store::load(&p).unwrap();
        assert!(l.records.is_empty());
        s.put(&rec("a")).unwrap();
        s.put(&rec("b")).unwrap();
        s.remove("a").unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (_, l) = Store::load(&p).unwrap();
        assert_eq!(l.records.len(), 1);
        assert_eq!(l.records[0].id, "b");
    }

    #[test]
    fn older_generation_does_not_overwrite_newer() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let (s, _) = Store::load(&p).unwrap();
        let mut new = rec("a");
        new.spec.generation = 2;
        s.put(&new).unwrap();
        let mut old = rec("a");
        old.reason = "old runner".into();
        s.put(&old).unwrap();
        let l = Store::load(&p).unwrap().1.records;
        assert_eq!(l[0].spec.generation, 2);
    }

    #[test]
    fn corrupt_file_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        fs::write(&p, b"{\"version\":1,\"instances\":[{trunc").unwrap();
        let (s, l) = Store::load(&p).unwrap();
        let (aside, why) = l.moved_aside.unwrap();
        assert!(aside.exists() && !p.exists());
        assert!(!why.is_empty());
        assert!(l.records.is_empty());
        s.put(&rec("c")).unwrap();
        assert_eq!(Store::load(&p).unwrap().1.records.len(), 1);
    }
}
