//! Long volume operations run in the background and survive an agent restart: backups of a
//! snapshot to the configured target (`[backup]` in the agent config, see docs/backups.md) and
//! restores of a backup into a new volume. Each job is a JSON file under `<data>/volume-jobs`
//! (written atomically); a job still `running` when the agent starts is run again with the same
//! backup id, which resumes a backup (chunks already stored are skipped) and redoes a restore
//! from the start (its half-written file is removed first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use scalebox_backup::{BackupOptions, Config as BackupConfig, Progress, Repository};
use serde::{Deserialize, Serialize};

use crate::volumes::{VolumeStore, check_name};

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// Upload snapshot `snapshot` of `volume` as backup `backup_id`.
    Backup { volume: String, snapshot: String },
    /// Restore backup `backup_id` into the new volume `volume`.
    Restore { volume: String },
}

/// A job and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub backup_id: String,
    #[serde(flatten)]
    pub kind: JobKind,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    #[serde(default)]
    pub error: Option<String>,
    /// Size and image checksum of the backup, once known.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub image_sha256: Option<String>,
}

/// Why a job could not start.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(
        "no backup target is configured on this host: add a [backup] section to the agent config (docs/backups.md)"
    )]
    NoTarget,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

/// The job table of this agent.
pub struct Jobs {
    dir: PathBuf,
    store: VolumeStore,
    config: Option<BackupConfig>,
    jobs: Mutex<HashMap<String, Job>>,
}

impl Jobs {
    /// Loads the persisted jobs; call [`Jobs::resume`] to restart the interrupted ones.
    pub fn open(data_dir: &Path, store: VolumeStore, config: Option<BackupConfig>) -> Arc<Jobs> {
        let dir = data_dir.join("volume-jobs");
        let mut jobs = HashMap::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Job>(&b).ok())
            {
                Some(j) => {
                    jobs.insert(j.id.clone(), j);
                }
                None if e.file_name().to_string_lossy().ends_with(".json") => {
                    tracing::warn!(path = %e.path().display(), "unreadable volume job file; ignored");
                }
                None => {}
            }
        }
        Arc::new(Jobs {
            dir,
            store,
            config,
            jobs: Mutex::new(jobs),
        })
    }

    /// Runs again every job that was running when the agent stopped.
    pub fn resume(self: &Arc<Self>) {
        let running: Vec<Job> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .filter(|j| j.state == "running")
            .cloned()
            .collect();
        for j in running {
            tracing::info!(job = %j.id, "resuming an interrupted volume job");
            self.spawn(j);
        }
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.jobs.lock().expect("jobs lock").get(id).cloned()
    }

    fn repo(&self) -> Result<Repository, JobError> {
        let cfg = self.config.as_ref().ok_or(JobError::NoTarget)?;
        Repository::open(cfg).map_err(|e| JobError::Internal(e.to_string()))
    }

    /// The backups in the target (newest last).
    pub fn list_backups(&self) -> Result<Vec<scalebox_backup::Manifest>, JobError> {
        let repo = self.repo()?;
        let mut v = repo.list().map_err(|e| JobError::Internal(e.to_string()))?;
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(v)
    }

    fn save(&self, j: &Job) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".{}.json.tmp", j.id));
            let data = serde_json::to_vec_pretty(j).map_err(std::io::Error::other)?;
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, self.dir.join(format!("{}.json", j.id)))
        };
        if let Err(e) = write() {
            tracing::error!(job = %j.id, "persisting the volume job failed: {e}");
        }
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(j.id.clone(), j.clone());
    }

    /// Starts a job (idempotent: the same id returns the existing job).
    pub fn start(
        self: &Arc<Self>,
        id: &str,
        backup_id: &str,
        kind: JobKind,
    ) -> Result<Job, JobError> {
        check_name("job id", id).map_err(|e| JobError::Invalid(e.message))?;
        scalebox_backup::manifest::validate_id(backup_id)
            .map_err(|e| JobError::Invalid(e.to_string()))?;
        if let Some(j) = self.get(id) {
            if j.backup_id == backup_id && j.kind == kind {
                return Ok(j);
            }
            return Err(JobError::Conflict(format!(
                "job {id:?} exists with other parameters"
            )));
        }
        self.repo()?;
        match &kind {
            JobKind::Backup { volume, snapshot } => {
                let p = self
                    .store
                    .snapshot_path(volume, snapshot)
                    .map_err(|e| JobError::Invalid(e.message))?;
                if !p.is_file() {
                    return Err(JobError::Invalid(format!(
                        "snapshot {snapshot:?} of volume {volume:?} is not on this host"
                    )));
                }
            }
            JobKind::Restore { volume } => {
                let p = self
                    .store
                    .disk_path(volume)
                    .map_err(|e| JobError::Invalid(e.message))?;
                if p.exists() {
                    return Err(JobError::Conflict(format!(
                        "volume {volume:?} already has a disk on this host; restores make new volumes"
                    )));
                }
            }
        }
        let j = Job {
            id: id.to_owned(),
            backup_id: backup_id.to_owned(),
            kind,
            state: "running".into(),
            bytes_done: 0,
            bytes_total: 0,
            error: None,
            size_bytes: None,
            image_sha256: None,
        };
        self.save(&j);
        self.spawn(j.clone());
        Ok(j)
    }

    fn spawn(self: &Arc<Self>, job: Job) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut j = job;
            let outcome = me.run(&mut j);
            match outcome {
                Ok(()) => {
                    j.state = "succeeded".into();
                    tracing::info!(job = %j.id, backup = %j.backup_id, "volume job succeeded");
                }
                Err(e) => {
                    j.state = "failed".into();
                    tracing::warn!(job = %j.id, backup = %j.backup_id, "volume job failed: {e}");
                    j.error = Some(e);
                }
            }
            me.save(&j);
        });
    }

    fn run(&self, j: &mut Job) -> Result<(), String> {
        let repo = self.repo().map_err(|e| e.to_string())?;
        let mut last = std::time::Instant::now();
        let id = j.id.clone();
        let mut progress = |p: Progress| {
            if last.elapsed().as_millis() >= 500 {
                last = std::time::Instant::now();
                if let Some(x) = self.jobs.lock().expect("jobs lock").get_mut(&id) {
                    x.bytes_done = p.bytes_done;
                    x.bytes_total = p.bytes_total;
                }
            }
        };
        match j.kind.clone() {
            JobKind::Backup { volume, snapshot } => {
                let src = self
                    .store
                    .snapshot_path(&volume, &snapshot)
                    .map_err(|e| e.message)?;
                let opts = BackupOptions::new(&j.backup_id, &volume, &snapshot);
                let r = repo
                    .backup(&src, &opts, &mut progress)
                    .map_err(|e| e.to_string())?;
                j.bytes_total = r.manifest.size;
                j.bytes_done = r.manifest.size;
                j.size_bytes = Some(r.manifest.size);
                j.image_sha256 = Some(r.manifest.image_sha256.clone());
            }
            JobKind::Restore { volume } => {
                let dst = self.store.disk_path(&volume).map_err(|e| e.message)?;
                if let Some(d) = dst.parent() {
                    std::fs::create_dir_all(d)
                        .map_err(|e| format!("create {}: {e}", d.display()))?;
                }
                let r = repo
                    .restore(&j.backup_id, &dst, &mut progress)
                    .map_err(|e| e.to_string())?;
                j.bytes_total = r.manifest.size;
                j.bytes_done = r.manifest.size;
                j.size_bytes = Some(r.manifest.size);
                j.image_sha256 = Some(r.manifest.image_sha256.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> BackupConfig {
        toml::from_str(&format!(
            "target = {{ type = \"local\", dir = \"{}\" }}",
            dir.display()
        ))
        .unwrap()
    }

    async fn wait(jobs: &Jobs, id: &str) -> Job {
        for _ in 0..600 {
            let j = jobs.get(id).unwrap();
            if j.state != "running" {
                return j;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("job {id} did not finish");
    }

    /// An agent that died mid-backup resumes the job when it starts again, and the backup
    /// restores byte-exact.
    #[tokio::test]
    async fn an_interrupted_backup_resumes_after_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("agent");
        let target = d.path().join("target");
        let store = VolumeStore::new(&data);
        let disk = store.ensure_disk("vol", 32 << 20).unwrap();
        {
            use std::io::{Seek, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
            for i in 0..6u64 {
                f.seek(std::io::SeekFrom::Start(i * (5 << 20))).unwrap();
                f.write_all(&vec![i as u8 + 1; 1 << 20]).unwrap();
            }
        }
        store.take_snapshot("vol", "s1").unwrap();
        // The crash: two chunks were uploaded, no manifest; the job file still says running.
        let repo = Repository::open(&config(&target)).unwrap();
        let mut opts = BackupOptions::new("b1", "vol", "s1");
        opts.max_chunks = Some(2);
        assert!(
            repo.backup(
                &store.snapshot_path("vol", "s1").unwrap(),
                &opts,
                &mut |_| {}
            )
            .is_err()
        );
        assert!(
            repo.list().unwrap().is_empty(),
            "no manifest yet: the backup does not exist"
        );
        let job = Job {
            id: "b1".into(),
            backup_id: "b1".into(),
            kind: JobKind::Backup {
                volume: "vol".into(),
                snapshot: "s1".into(),
            },
            state: "running".into(),
            bytes_done: 8 << 20,
            bytes_total: 32 << 20,
            error: None,
            size_bytes: None,
            image_sha256: None,
        };
        std::fs::create_dir_all(data.join("volume-jobs")).unwrap();
        std::fs::write(
            data.join("volume-jobs/b1.json"),
            serde_json::to_vec(&job).unwrap(),
        )
        .unwrap();

        let jobs = Jobs::open(&data, store.clone(), Some(config(&target)));
        jobs.resume();
        let j = wait(&jobs, "b1").await;
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(repo.list().unwrap().len(), 1);
        // Restore into a new volume: byte-exact with the snapshot.
        jobs.start(
            "r1",
            "b1",
            JobKind::Restore {
                volume: "vol2".into(),
            },
        )
        .unwrap();
        assert_eq!(wait(&jobs, "r1").await.state, "succeeded");
        assert_eq!(
            std::fs::read(store.disk_path("vol2").unwrap()).unwrap(),
            std::fs::read(store.snapshot_path("vol", "s1").unwrap()).unwrap()
        );
        // A restore never overwrites; a backup of a missing snapshot is refused up front.
        assert!(matches!(
            jobs.start(
                "r2",
                "b1",
                JobKind::Restore {
                    volume: "vol2".into()
                }
            ),
            Err(JobError::Conflict(_))
        ));
        assert!(matches!(
            jobs.start(
                "b2",
                "b2",
                JobKind::Backup {
                    volume: "vol".into(),
                    snapshot: "nope".into()
                }
            ),
            Err(JobError::Invalid(_))
        ));
        // Without a target, backups are refused with the fix in the message.
        let none = Jobs::open(&d.path().join("other"), store, None);
        let e = none
            .start("b3", "b3", JobKind::Restore { volume: "x".into() })
            .unwrap_err();
        assert!(e.to_string().contains("[backup]"), "{e}");
    }
}
