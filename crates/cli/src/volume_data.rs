//! A volume's data: snapshots (on its host), backups (off-host copies of a snapshot, made in the
//! background and followed with `--wait`) and restores (the disk made anew on another host from a
//! backup, after its host was lost): `sb volumes snapshot|snapshots|snapshot-delete|backup|
//! backups|restore`.
//!
//! Taking a snapshot, starting a backup and restoring are not deduplicated server-side, so they
//! are sent once and never retried (like `sb vm create`).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::args::{VolumeBackupArgs, VolumesCommand};
use crate::client::{Client, at, segment};
use crate::error::{CliError, Result, exit};
use crate::output::{self, Out};
use crate::vm::size;

/// How long `sb volumes restore` waits for the server: its restore job has an hour, plus a margin
/// for the answer.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(3660);

/// Runs one of the snapshot/backup/restore verbs; `base` is `/v1/orgs/{org}/volumes`.
pub fn run(c: &Client, base: &str, cmd: VolumesCommand, out: Out) -> Result<()> {
    match cmd {
        VolumesCommand::Snapshot { volume } => {
            let path = format!("{}/snapshots", volume_path(base, &volume)?);
            if !out.json {
                eprintln!(
                    "Taking a snapshot of volume {volume} (the guest using it is paused for the copy)…"
                );
            }
            let v = c.mutate_once("POST", &path, None)?;
            out.done(&snapshot_taken(&volume, &v), &v);
        }
        VolumesCommand::Snapshots { volume } => {
            let v = c.get(&format!("{}/snapshots", volume_path(base, &volume)?))?;
            out.list(&v, &snapshot_rows(&v), SNAPSHOT_COLUMNS);
        }
        VolumesCommand::SnapshotDelete { volume, id } => {
            let path = format!(
                "{}/snapshots/{}",
                volume_path(base, &volume)?,
                segment("snapshot id", &id)?
            );
            c.mutate("DELETE", &path, None)?;
            out.done(
                &format!("Deleted snapshot {id} of volume {volume}."),
                &json!({"deleted": id}),
            );
        }
        VolumesCommand::Backup(a) => backup(c, base, a, out)?,
        VolumesCommand::Backups { volume } => {
            let v = c.get(&format!("{}/backups", volume_path(base, &volume)?))?;
            out.list(&v, &backup_rows(&v), BACKUP_COLUMNS);
        }
        VolumesCommand::Restore {
            volume,
            backup,
            snapshot,
            into,
            host,
        } => {
            let path = format!("{}/restore", volume_path(base, &volume)?);
            if !out.json {
                let onto = host
                    .as_deref()
                    .map_or(String::new(), |h| format!(" onto host {h}"));
                let from = snapshot
                    .as_deref()
                    .map_or_else(|| format!("backup {backup}"), |s| format!("snapshot {s}"));
                let target = into
                    .as_deref()
                    .map_or(String::new(), |n| format!(" into new volume {n}"));
                eprintln!(
                    "Restoring volume {volume} from {from}{target}{onto} (this can take a while)…"
                );
            }
            let mut body = match &snapshot {
                Some(s) => json!({ "snapshot": s }),
                None => restore_body(&backup, None),
            };
            if let Some(n) = &into {
                body["into"] = json!(n);
            }
            if let Some(h) = &host {
                body["host"] = json!(h);
            }
            let v = c.mutate_once_within("POST", &path, Some(&body), RESTORE_TIMEOUT)?;
            let shown = into.as_deref().unwrap_or(&volume);
            out.done(&restored(shown, &v), &v);
        }
        VolumesCommand::List
        | VolumesCommand::Create { .. }
        | VolumesCommand::Get { .. }
        | VolumesCommand::Delete { .. } => {
            unreachable!("handled by resources::volumes")
        }
    }
    Ok(())
}

/// `sb volumes backup VOL [--snapshot ID] [--wait] [--timeout S]`.
fn backup(c: &Client, base: &str, a: VolumeBackupArgs, out: Out) -> Result<()> {
    let vol_path = volume_path(base, &a.volume)?;
    let body = backup_body(a.snapshot.as_deref());
    if !out.json && a.snapshot.is_none() {
        eprintln!(
            "Taking a snapshot of volume {} to back up (the guest using it is paused for the copy)…",
            a.volume
        );
    }
    let b = c.mutate_once("POST", &format!("{vol_path}/backups"), Some(&body))?;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    if !a.wait {
        out.done(
            &format!(
                "Backing up volume {} (backup {id} of snapshot {}); follow it with `sb volumes backups {}`.",
                a.volume,
                output::cell(&b, "snapshot"),
                a.volume
            ),
            &b,
        );
        return Ok(());
    }
    if !out.json {
        eprintln!(
            "Backing up volume {} (backup {id} of snapshot {})…",
            a.volume,
            output::cell(&b, "snapshot")
        );
    }
    let (last, timed_out) = follow(
        c,
        &format!("{vol_path}/backups"),
        b,
        &a.volume,
        Duration::from_secs(a.timeout),
        out.json,
    )?;
    if out.json {
        output::json(&last);
    }
    let line = outcome(&a.volume, &last, timed_out, a.timeout)?;
    if !out.json {
        println!("{line}");
    }
    Ok(())
}

/// What a followed backup came to: the success line, or the error to exit with (exit 7 when it
/// failed or `timeout_secs` passed first).
pub fn outcome(volume: &str, b: &Value, timed_out: bool, timeout_secs: u64) -> Result<String> {
    let id = output::cell(b, "id");
    match b["state"].as_str().unwrap_or_default() {
        "succeeded" => Ok(format!(
            "Backup {id} of volume {volume} succeeded: {}, sha256 {}.",
            size(&b["size_bytes"]),
            output::cell(b, "image_sha256")
        )),
        "failed" => Err(CliError::new(
            exit::DEPLOY,
            format!(
                "backup {id} of volume {volume} failed: {}",
                b["error"]
                    .as_str()
                    .filter(|e| !e.is_empty())
                    .unwrap_or("no error given")
            ),
        )),
        state if timed_out => Err(CliError::new(
            exit::DEPLOY,
            format!(
                "gave up waiting after {timeout_secs}s (last seen: {state}, {}); backup {id} goes on server-side: follow it with `sb volumes backups {volume}`",
                progress(b)
            ),
        )),
        state => Err(CliError::failure(format!(
            "backup {id} of volume {volume} is {state:?}, which this sb does not know"
        ))),
    }
}

/// Polls the volume's backups every second until backup `b` is no longer running or `timeout`
/// passes; progress on stderr unless `quiet`. Returns the last view of the backup and whether it
/// timed out.
fn follow(
    c: &Client,
    list_path: &str,
    b: Value,
    volume: &str,
    timeout: Duration,
    quiet: bool,
) -> Result<(Value, bool)> {
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut line = Line {
        quiet,
        tty: std::io::stderr().is_terminal(),
        last: None,
    };
    let mut last = b;
    loop {
        if last["state"] != "running" {
            line.finish();
            return Ok((last, false));
        }
        let now = Instant::now();
        if now >= deadline {
            line.finish();
            return Ok((last, true));
        }
        line.show(format!("backup {id}: {}", progress(&last)));
        std::thread::sleep((deadline - now).min(Duration::from_secs(1)));
        let list = c.get(list_path).map_err(|mut e| {
            line.finish();
            if e.exit == exit::SERVER {
                e.message.push_str(&format!(
                    "; the backup goes on server-side: follow it with `sb volumes backups {volume}`"
                ));
            }
            e
        })?;
        last = items(&list)
            .into_iter()
            .find(|x| x["id"] == id.as_str())
            .ok_or_else(|| {
                line.finish();
                CliError::failure(format!(
                    "backup {id} is no longer listed for volume {volume} (deleted?)"
                ))
            })?;
    }
}

/// The progress line on stderr: rewritten in place on a terminal, else printed when it changes.
struct Line {
    quiet: bool,
    tty: bool,
    last: Option<String>,
}

impl Line {
    fn show(&mut self, text: String) {
        if self.quiet || self.last.as_ref() == Some(&text) {
            return;
        }
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{text}");
            let _ = e.flush();
        } else {
            let _ = writeln!(e, "{text}");
        }
        self.last = Some(text);
    }

    fn finish(&mut self) {
        if self.tty && !self.quiet && self.last.take().is_some() {
            eprintln!();
        }
    }
}

/// `bytes_done/bytes_total` of a backup in human units, with the percentage when the total is
/// known: `12.0 MiB/1.0 GiB (1%)`.
pub fn progress(b: &Value) -> String {
    let done = b["bytes_done"].as_u64().unwrap_or(0);
    match b["bytes_total"].as_u64().filter(|t| *t > 0) {
        Some(total) => format!(
            "{}/{} ({}%)",
            size(&json!(done)),
            size(&json!(total)),
            (done.min(total) as u128 * 100 / total as u128)
        ),
        None => format!("{}/?", size(&json!(done))),
    }
}

pub const SNAPSHOT_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("HOST", "host"),
    ("SIZE", "size"),
    ("CREATED", "created_at"),
];

pub const BACKUP_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("SNAPSHOT", "snapshot"),
    ("STATE", "state"),
    ("PROGRESS", "progress"),
    ("SIZE", "size"),
    ("CREATED", "created_at"),
    ("FINISHED", "finished_at"),
    ("ERROR", "error"),
];

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Snapshots with a human `size`.
pub fn snapshot_rows(v: &Value) -> Vec<Value> {
    items(v)
        .into_iter()
        .map(|mut s| {
            s["size"] = json!(size(&s["size_bytes"]));
            s
        })
        .collect()
}

/// Backups with `progress`, a human `size`, and the first line of `error`.
pub fn backup_rows(v: &Value) -> Vec<Value> {
    items(v)
        .into_iter()
        .map(|mut b| {
            b["progress"] = json!(progress(&b));
            b["size"] = json!(size(&b["size_bytes"]));
            if let Some(e) = b["error"].as_str().map(|e| e.lines().next().unwrap_or("")) {
                b["error"] = json!(e);
            }
            b
        })
        .collect()
}

/// The `POST …/backups` body: `{"snapshot": ID}`, or `{}` for a new snapshot.
pub fn backup_body(snapshot: Option<&str>) -> Value {
    match snapshot {
        Some(s) => json!({ "snapshot": s }),
        None => json!({}),
    }
}

/// The `POST …/restore` body: `{"backup": ID|"latest"}` plus `"host"` when given.
pub fn restore_body(backup: &str, host: Option<&str>) -> Value {
    let mut b = json!({ "backup": backup });
    if let Some(h) = host {
        b["host"] = json!(h);
    }
    b
}

pub fn snapshot_taken(volume: &str, v: &Value) -> String {
    format!(
        "Took snapshot {} of volume {volume} on host {} ({}).",
        output::cell(v, "id"),
        output::cell(v, "host"),
        size(&v["size_bytes"])
    )
}

pub fn restored(volume: &str, v: &Value) -> String {
    if v.get("snapshot").is_some_and(|s| !s.is_null()) {
        return format!(
            "Restored volume {volume} on host {} from snapshot {} ({}).",
            output::cell(v, "host"),
            output::cell(v, "snapshot"),
            size(&v["size_bytes"])
        );
    }
    format!(
        "Restored volume {volume} onto host {} from backup {} ({}, sha256 {}).",
        output::cell(v, "host"),
        output::cell(v, "backup"),
        size(&v["size_bytes"]),
        output::cell(v, "image_sha256")
    )
}

/// `{base}/{volume}` with the name as one path segment.
fn volume_path(base: &str, volume: &str) -> Result<String> {
    at(base, "volume name", volume)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(done: u64, total: u64) -> Value {
        json!({"id": "b1", "volume": "data", "snapshot": "s1", "state": "running",
               "bytes_done": done, "bytes_total": total, "size_bytes": null,
               "image_sha256": null, "error": null, "created_at": "2025-01-01T00:00:00Z",
               "finished_at": null})
    }

    #[test]
    fn progress_is_done_over_total() {
        assert_eq!(progress(&running(0, 0)), "0 B/?");
        assert_eq!(progress(&running(512, 1024)), "512 B/1.0 KiB (50%)");
        assert_eq!(
            progress(&running(12 * 1024 * 1024, 1024 * 1024 * 1024)),
            "12.0 MiB/1.0 GiB (1%)"
        );
        assert_eq!(progress(&running(2048, 1024)), "2.0 KiB/1.0 KiB (100%)");
    }

    #[test]
    fn rows_for_tables() {
        let mut failed = running(10, 20);
        failed["state"] = json!("failed");
        failed["error"] = json!("checksum mismatch\nat chunk 3");
        let v = json!({"items": [running(5, 10), failed]});
        let rows = backup_rows(&v);
        assert_eq!(rows[0]["progress"], "5 B/10 B (50%)");
        assert_eq!(rows[0]["size"], "-");
        assert_eq!(output::cell(&rows[0], "error"), "-");
        assert_eq!(rows[1]["error"], "checksum mismatch");
        let s = json!({"items": [{"id": "s1", "volume": "data", "host": "h1",
                                  "size_bytes": 1610612736u64, "created_at": "t"}]});
        assert_eq!(snapshot_rows(&s)[0]["size"], "1.5 GiB");
        assert!(snapshot_rows(&json!({})).is_empty());
    }

    #[test]
    fn bodies() {
        assert_eq!(backup_body(None), json!({}));
        assert_eq!(backup_body(Some("s1")), json!({"snapshot": "s1"}));
        assert_eq!(restore_body("latest", None), json!({"backup": "latest"}));
        assert_eq!(
            restore_body("b1", Some("h2")),
            json!({"backup": "b1", "host": "h2"})
        );
    }

    #[test]
    fn outcomes() {
        let mut ok = running(10, 10);
        ok["state"] = json!("succeeded");
        ok["size_bytes"] = json!(2048);
        ok["image_sha256"] = json!("abc");
        assert_eq!(
            outcome("data", &ok, false, 60).unwrap(),
            "Backup b1 of volume data succeeded: 2.0 KiB, sha256 abc."
        );
        let mut bad = running(3, 10);
        bad["state"] = json!("failed");
        bad["error"] = json!("upload refused");
        let e = outcome("data", &bad, false, 60).unwrap_err();
        assert_eq!(e.exit, exit::DEPLOY);
        assert_eq!(e.message, "backup b1 of volume data failed: upload refused");
        bad["error"] = Value::Null;
        assert!(
            outcome("data", &bad, false, 60)
                .unwrap_err()
                .message
                .ends_with("no error given")
        );
        let e = outcome("data", &running(5, 10), true, 30).unwrap_err();
        assert_eq!(e.exit, exit::DEPLOY);
        assert!(
            e.message.contains("gave up waiting after 30s")
                && e.message.contains("5 B/10 B (50%)")
                && e.message.contains("sb volumes backups data"),
            "{}",
            e.message
        );
    }

    #[test]
    fn messages() {
        let s = json!({"id": "s1", "volume": "data", "host": "h1", "size_bytes": 1024,
                       "created_at": "t"});
        assert_eq!(
            snapshot_taken("data", &s),
            "Took snapshot s1 of volume data on host h1 (1.0 KiB)."
        );
        let r = json!({"volume": "data", "backup": "b1", "host": "h2",
                       "size_bytes": 1073741824u64, "image_sha256": "ff00"});
        assert_eq!(
            restored("data", &r),
            "Restored volume data onto host h2 from backup b1 (1.0 GiB, sha256 ff00)."
        );
    }

    #[test]
    fn path_segments() {
        assert_eq!(segment("x", "data-1").unwrap(), "data-1");
        assert_eq!(segment("x", "a/b").unwrap(), "a%2Fb");
        assert_eq!(segment("x", "").unwrap_err().exit, exit::USAGE);
        assert_eq!(
            volume_path("/v1/orgs/o/volumes", "d").unwrap(),
            "/v1/orgs/o/volumes/d"
        );
    }
}
