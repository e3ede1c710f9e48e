//! Manifests, releases and secrets.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::account::Ctx;
use crate::args::*;
use crate::client::at;
use crate::error::{CliError, Result};
use crate::output::Out;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::failure(format!("cannot read {}: {e}", path.display())))
}

pub fn manifest(a: ManifestArgs, out: Out) -> Result<()> {
    let ManifestCommand::Validate { file } = a.command;
    let text = read(&file)?;
    match scalebox_manifest::parse(&text) {
        Ok(m) => {
            let procs: Vec<&str> = m.process_types().map(|(n, _)| n).collect();
            out.done(
                &format!("{}: valid (process types: {}; hash {})", file.display(), procs.join(", "), m.content_hash()),
                &json!({"valid": true, "file": file.display().to_string(), "content_hash": m.content_hash(), "process_types": procs}),
            );
            Ok(())
        }
        Err(e) => {
            let e = e.with_file(file.display());
            if out.json {
                println!(
                    "{}",
                    json!({"valid": false, "file": file.display().to_string(), "errors": e.errors()})
                );
            }
            Err(CliError::failure(format!("invalid manifest:\n{e}")))
        }
    }
}

pub fn releases(ctx: &Ctx, a: ReleasesArgs, out: Out) -> Result<()> {
    let (c, base) = (ctx.client()?, format!("{}/releases", ctx.app_path()?));
    match a.command.unwrap_or(ReleasesCommand::List) {
        ReleasesCommand::List => {
            let v = c.get(&base)?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            out.list(
                &v,
                &rows,
                &[
                    ("NUMBER", "number"),
                    ("IMAGE", "image_ref"),
                    ("DIGEST", "image_digest"),
                    ("MANIFEST", "manifest_hash"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        ReleasesCommand::Get { release } => {
            let v = c.get(&at(&base, "release number", &release)?)?;
            out.object(
                &v,
                &[
                    ("number", "number"),
                    ("id", "id"),
                    ("image", "image_ref"),
                    ("digest", "image_digest"),
                    ("manifest", "manifest_hash"),
                    ("created", "created_at"),
                ],
            );
        }
        ReleasesCommand::Create {
            image,
            digest,
            manifest,
        } => {
            let v = create_release(ctx, &image, digest, &manifest, out)?;
            let digest = v["image_digest"].as_str().unwrap_or_default().to_owned();
            out.done(
                &format!(
                    "Created release v{} of {} ({digest}).",
                    v["number"],
                    ctx.app()?
                ),
                &v,
            );
        }
        ReleasesCommand::Diff { a, b } => {
            let (ra, rb) = (
                c.get(&at(&base, "release number", &a)?)?,
                c.get(&at(&base, "release number", &b)?)?,
            );
            let diff = diff_releases(&ra, &rb);
            if out.json {
                println!("{}", serde_json::to_string_pretty(&diff).expect("json"));
            } else if diff["changes"].as_array().is_none_or(|c| c.is_empty()) {
                println!(
                    "v{} and v{} are identical (image and manifest).",
                    ra["number"], rb["number"]
                );
            } else {
                for ch in diff["changes"].as_array().into_iter().flatten() {
                    println!(
                        "{}: {} → {}",
                        ch["field"].as_str().unwrap_or("?"),
                        ch["a"],
                        ch["b"]
                    );
                }
            }
        }
    }
    Ok(())
}

/// Field-level differences between two releases (image, and each manifest path that differs).
fn diff_releases(a: &Value, b: &Value) -> Value {
    let mut changes = Vec::new();
    for f in ["image_ref", "image_digest", "manifest_hash"] {
        if a[f] != b[f] {
            changes.push(json!({"field": f, "a": a[f], "b": b[f]}));
        }
    }
    let mut paths = Vec::new();
    diff_values("manifest", &a["manifest"], &b["manifest"], &mut paths);
    for (p, x, y) in paths {
        changes.push(json!({"field": p, "a": x, "b": y}));
    }
    json!({"a": a["number"], "b": b["number"], "changes": changes})
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<(String, Value, Value)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                diff_values(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push((path.to_owned(), a.clone(), b.clone())),
        _ => {}
    }
}

/// NAME=value arguments and/or a secrets-format file.
fn pairs(args: &[String], file: Option<&Path>) -> Result<BTreeMap<String, String>> {
    let mut m = match file {
        Some(f) => scalebox_types::secrets_file::parse(&read(f)?)
            .map_err(|e| CliError::failure(format!("{}: {e}", f.display())))?,
        None => BTreeMap::new(),
    };
    for p in args {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "expected NAME=value, got {:?}",
                p.chars().take(40).collect::<String>()
            ))
        })?;
        if !scalebox_types::secrets_file::valid_name(k) {
            return Err(CliError::usage(format!(
                "invalid secret name {k:?}: use letters, digits and '_', not starting with a digit"
            )));
        }
        m.insert(k.to_owned(), v.to_owned());
    }
    Ok(m)
}

pub fn secrets(ctx: &Ctx, a: SecretsArgs, out: Out) -> Result<()> {
    if let SecretsCommand::Render {
        pairs: p,
        from_file,
    } = &a.command
    {
        let content = scalebox_types::secrets_file::render(&pairs(p, from_file.as_deref())?);
        if out.json {
            crate::output::json(&json!({ "content": content }));
        } else {
            print!("{content}");
        }
        return Ok(());
    }
    // Check arguments before anything that needs the server or a context.
    let to_set = match &a.command {
        SecretsCommand::Set {
            pairs: p,
            from_file,
        } => pairs(p, from_file.as_deref())?,
        _ => BTreeMap::new(),
    };
    let (c, base) = (ctx.client()?, format!("{}/secrets", ctx.env_path()?));
    match a.command {
        SecretsCommand::List => {
            let v = c.get(&base)?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                println!("version {}", v["version"]);
                for n in v["names"].as_array().into_iter().flatten() {
                    println!("{}", n.as_str().unwrap_or("?"));
                }
            }
        }
        SecretsCommand::Set { .. } => {
            let set = to_set;
            if set.is_empty() {
                return Err(CliError::usage(
                    "nothing to set: give NAME=value pairs or --from-file",
                ));
            }
            let names: Vec<&String> = set.keys().collect();
            let msg_names = names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let v = c.mutate("PATCH", &base, Some(&json!({"set": set})))?;
            out.done(
                &format!("Secrets version {}: set {msg_names}.", v["version"]),
                &v,
            );
        }
        SecretsCommand::Unset { names } => {
            let v = c.mutate("PATCH", &base, Some(&json!({"unset": names})))?;
            out.done(
                &format!(
                    "Secrets version {}: removed {}.",
                    v["version"],
                    names.join(", ")
                ),
                &v,
            );
        }
        SecretsCommand::Versions => {
            let v = c.get(&format!("{base}/versions"))?;
            let rows = v["items"].as_array().cloned().unwrap_or_default();
            out.list(
                &v,
                &rows,
                &[
                    ("VERSION", "version"),
                    ("NAMES", "names"),
                    ("ACTOR", "actor"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        SecretsCommand::Render { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// Creates a release of the app in scope from `image` (digest worked out locally, or asked of
/// the registry for a tag, when not given) and the manifest file, validated here first so errors
/// name the file. A registry tag is pinned (`REF@sha256:…`); a local archive is uploaded first
/// (unless the org has it already) and the release names the uploaded copy.
pub fn create_release(
    ctx: &Ctx,
    image: &str,
    digest: Option<String>,
    manifest: &std::path::Path,
    out: Out,
) -> Result<Value> {
    let text = read(manifest)?;
    scalebox_manifest::parse(&text).map_err(|e| {
        CliError::failure(format!(
            "invalid manifest:\n{}",
            e.with_file(manifest.display())
        ))
    })?;
    let (pinned, digest) = crate::image_ref::pin(image, digest, out)?;
    let image_ref = crate::upload::release_image_ref(ctx, &pinned, &digest, out)?;
    ctx.client()?.mutate(
        "POST",
        &format!("{}/releases", ctx.app_path()?),
        Some(&json!({"image_ref": image_ref, "image_digest": digest, "manifest": text})),
    )
}
