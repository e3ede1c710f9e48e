//! Thin handlers: extract, call the operation, respond. The `#[utoipa::path]` attributes are the
//! source of the checked-in OpenAPI document.

use axum::Json;
use axum::extract::{Path, Query, State};
use scalebox_types::api::{self, List};
use scalebox_types::error::ErrorBody;
use serde::Deserialize;

use super::extract::{Cmd, Empty};
use crate::auth::Principal;
use crate::command::Reply;
use crate::ops::{
    agent, apps, audit, deploys, envs, hosts, images, ipv4, orgs, overlay, projects, releases,
    routes, secrets, tokens, volume_data, volumes,
};
use crate::{ApiError, Control};

type R<T> = Result<Json<T>, ApiError>;
type C = Result<Reply, ApiError>;

#[utoipa::path(get, path = "/v1/health", tag = "meta", responses((status = 200, description = "the control plane is up")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "this API's OpenAPI document")))]
pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}

#[utoipa::path(get, path = "/v1/whoami", tag = "meta", responses((status = 200, body = api::WhoAmI), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn whoami(p: Principal) -> Json<api::WhoAmI> {
    Json(api::WhoAmI {
        org: p.org_name,
        role: p.role,
        actor: p.actor,
        operator: p.operator,
    })
}

// ---- orgs -------------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/orgs", tag = "orgs", responses((status = 200, body = List<api::Org>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn orgs_list(State(c): State<Control>, p: Principal) -> R<List<api::Org>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: orgs::list(&**db, &p).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs", tag = "orgs", request_body = api::CreateOrg, responses((status = 201, body = api::OrgCreated), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn orgs_create(State(c): State<Control>, p: Principal, cmd: Cmd<api::CreateOrg>) -> C {
    orgs::create(&c, &p, &cmd.idem, cmd.body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "orgs", params(("org" = String, Path)), responses((status = 200, body = api::Org), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn orgs_get(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
) -> R<api::Org> {
    let db = c.db.client().await?;
    Ok(Json(orgs::get(&**db, &p, &org).await?))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}", tag = "orgs", params(("org" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn orgs_delete(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
    cmd: Cmd<Empty>,
) -> C {
    orgs::delete(&c, &p, &cmd.idem, &org).await
}

// ---- tokens -----------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/orgs/{org}/tokens", tag = "tokens", params(("org" = String, Path)), responses((status = 200, body = List<api::Token>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn tokens_list(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
) -> R<List<api::Token>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: tokens::list(&**db, &p, &org).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/tokens", tag = "tokens", params(("org" = String, Path)), request_body = api::CreateToken, responses((status = 201, body = api::TokenCreated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn tokens_create(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
    cmd: Cmd<api::CreateToken>,
) -> C {
    tokens::create(&c, &p, &cmd.idem, &org, cmd.body).await
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/tokens/{id}", tag = "tokens", params(("org" = String, Path), ("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn tokens_revoke(
    State(c): State<Control>,
    p: Principal,
    Path((org, id)): Path<(String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    tokens::revoke(&c, &p, &cmd.idem, &org, &id).await
}

// ---- projects ---------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/orgs/{org}/projects", tag = "projects", params(("org" = String, Path)), responses((status = 200, body = List<api::Project>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn projects_list(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
) -> R<List<api::Project>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: projects::list(&**db, &p, &org).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects", tag = "projects", params(("org" = String, Path)), request_body = api::CreateProject, responses((status = 201, body = api::Project), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn projects_create(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
    cmd: Cmd<api::CreateProject>,
) -> C {
    projects::create(&c, &p, &cmd.idem, &org, cmd.body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}", tag = "projects", params(("org" = String, Path), ("project" = String, Path)), responses((status = 200, body = api::Project), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn projects_get(
    State(c): State<Control>,
    p: Principal,
    Path((org, name)): Path<(String, String)>,
) -> R<api::Project> {
    let db = c.db.client().await?;
    Ok(Json(projects::get(&**db, &p, &org, &name).await?))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}", tag = "projects", params(("org" = String, Path), ("project" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn projects_delete(
    State(c): State<Control>,
    p: Principal,
    Path((org, name)): Path<(String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    projects::delete(&c, &p, &cmd.idem, &org, &name).await
}

// ---- apps -------------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/orgs/{org}/apps", tag = "apps", params(("org" = String, Path)), responses((status = 200, body = List<api::App>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn apps_list(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
) -> R<List<api::App>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: apps::list(&**db, &p, &org).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/apps", tag = "apps", params(("org" = String, Path)), request_body = api::CreateApp, responses((status = 201, body = api::App), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn apps_create(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
    cmd: Cmd<api::CreateApp>,
) -> C {
    apps::create(&c, &p, &cmd.idem, &org, cmd.body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}", tag = "apps", params(("org" = String, Path), ("app" = String, Path)), responses((status = 200, body = api::App), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn apps_get(
    State(c): State<Control>,
    p: Principal,
    Path((org, app)): Path<(String, String)>,
) -> R<api::App> {
    let db = c.db.client().await?;
    Ok(Json(apps::get(&**db, &p, &org, &app).await?))
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/apps/{app}", tag = "apps", params(("org" = String, Path), ("app" = String, Path)), request_body = api::UpdateApp, responses((status = 200, body = api::App), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "stale version")), security(("bearer" = [])))]
pub async fn apps_update(
    State(c): State<Control>,
    p: Principal,
    Path((org, app)): Path<(String, String)>,
    cmd: Cmd<api::UpdateApp>,
) -> C {
    apps::update(&c, &p, &cmd.idem, &org, &app, cmd.body, cmd.if_match).await
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/apps/{app}", tag = "apps", params(("org" = String, Path), ("app" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn apps_delete(
    State(c): State<Control>,
    p: Principal,
    Path((org, app)): Path<(String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    apps::delete(&c, &p, &cmd.idem, &org, &app).await
}

// ---- envs -------------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/envs", tag = "envs", params(("org" = String, Path), ("app" = String, Path)), responses((status = 200, body = List<api::Env>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_list(
    State(c): State<Control>,
    p: Principal,
    Path((org, app)): Path<(String, String)>,
) -> R<List<api::Env>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: envs::list(&**db, &p, &org, &app).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/envs", tag = "envs", params(("org" = String, Path), ("app" = String, Path)), request_body = api::CreateEnv, responses((status = 201, body = api::Env), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_create(
    State(c): State<Control>,
    p: Principal,
    Path((org, app)): Path<(String, String)>,
    cmd: Cmd<api::CreateEnv>,
) -> C {
    envs::create(&c, &p, &cmd.idem, &org, &app, cmd.body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/envs/{env}", tag = "envs", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 200, body = api::Env), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_get(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
) -> R<api::Env> {
    let db = c.db.client().await?;
    Ok(Json(envs::get(&**db, &p, &org, &app, &env).await?))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/apps/{app}/envs/{env}", tag = "envs", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_delete(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    envs::delete(&c, &p, &cmd.idem, &org, &app, &env).await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/ipv4", tag = "envs", description = "Enable the dedicated-IPv4 add-on: the env gets one public IPv4 from the operator's pool (idempotent: an env holding one gets it back). The edge binds the env's IPv4 routes (`ipv4_required`) on it.", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 201, body = api::EnvIpv4, description = "allocated now"), (status = 200, body = api::EnvIpv4, description = "already held"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "no IPv4 pool configured, or the pool is exhausted")), security(("bearer" = [])))]
pub async fn envs_ipv4_enable(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    ipv4::enable(&c, &p, &cmd.idem, env_at(&org, &app, &env)).await
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/ipv4", tag = "envs", description = "Release the env's dedicated IPv4 back to the pool (also 204 when it holds none). Its IPv4 routes fall back to the edge's shared IPv4 address.", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_ipv4_disable(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    ipv4::disable(&c, &p, &cmd.idem, env_at(&org, &app, &env)).await
}

// ---- secrets ----------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/secrets", tag = "secrets", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 200, body = api::Secrets), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn secrets_get(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
) -> R<api::Secrets> {
    let db = c.db.client().await?;
    Ok(Json(secrets::get(&**db, &p, &org, &app, &env).await?))
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/secrets", tag = "secrets", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), request_body = api::UpdateSecrets, responses((status = 201, body = api::Secrets, description = "new version"), (status = 200, body = api::Secrets, description = "nothing changed"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn secrets_update(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    cmd: Cmd<api::UpdateSecrets>,
) -> C {
    let at = crate::ops::EnvPath {
        org: &org,
        app: &app,
        env: &env,
    };
    secrets::update(&c, &p, &cmd.idem, at, cmd.body, cmd.if_match).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/secrets/versions", tag = "secrets", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 200, body = List<api::SecretsVersion>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn secrets_versions(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
) -> R<List<api::SecretsVersion>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: secrets::versions(&**db, &p, &org, &app, &env).await?,
    }))
}

#[utoipa::path(get, path = "/v1/agent/secrets/{env_id}/{version}", tag = "agent", params(("env_id" = String, Path), ("version" = i64, Path)), responses((status = 200, body = api::SecretsMaterial), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn agent_secrets(
    State(c): State<Control>,
    p: Principal,
    Path((env, version)): Path<(String, String)>,
) -> R<api::SecretsMaterial> {
    let version = version
        .parse::<i64>()
        .map_err(|_| ApiError::not_found(format!("secrets version {version:?}")))?;
    let db = c.db.client().await?;
    Ok(Json(
        secrets::material_for_agent(&c, &**db, &p, &env, version).await?,
    ))
}

// ---- releases ---------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/releases", tag = "releases", params(("org" = String, Path), ("app" = String, Path)), responses((status = 200, body = List<api::Release>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn releases_list(
    State(c): State<Control>,
    p: Principal,
    Path((org, app)): Path<(String, String)>,
) -> R<List<api::Release>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: releases::list(&**db, &p, &org, &app).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/releases", tag = "releases", params(("org" = String, Path), ("app" = String, Path)), request_body = api::CreateRelease, responses((status = 201, body = api::Release), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn releases_create(
    State(c): State<Control>,
    p: Principal,
    Path((org, app)): Path<(String, String)>,
    cmd: Cmd<api::CreateRelease>,
) -> C {
    releases::create(&c, &p, &cmd.idem, &org, &app, cmd.body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/releases/{release}", tag = "releases", params(("org" = String, Path), ("app" = String, Path), ("release" = String, Path, description = "number (`3`, `v3`) or id")), responses((status = 200, body = api::Release), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn releases_get(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, rel)): Path<(String, String, String)>,
) -> R<api::Release> {
    let db = c.db.client().await?;
    Ok(Json(releases::get(&**db, &p, &org, &app, &rel).await?))
}

// ---- routes -----------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/orgs/{org}/routes", tag = "routes", params(("org" = String, Path)), responses((status = 200, body = List<api::Route>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn routes_list(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
) -> R<List<api::Route>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: routes::list(&**db, &p, &org).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/routes", tag = "routes", params(("org" = String, Path)), request_body = api::CreateRoute, responses((status = 201, body = api::Route), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "hostname or port taken")), security(("bearer" = [])))]
pub async fn routes_create(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
    cmd: Cmd<api::CreateRoute>,
) -> C {
    routes::create(&c, &p, &cmd.idem, &org, cmd.body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/routes/{id}", tag = "routes", params(("org" = String, Path), ("id" = String, Path)), responses((status = 200, body = api::Route), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn routes_get(
    State(c): State<Control>,
    p: Principal,
    Path((org, id)): Path<(String, String)>,
) -> R<api::Route> {
    let db = c.db.client().await?;
    Ok(Json(routes::get(&**db, &p, &org, &id).await?))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/routes/{id}", tag = "routes", params(("org" = String, Path), ("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn routes_delete(
    State(c): State<Control>,
    p: Principal,
    Path((org, id)): Path<(String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    routes::delete(&c, &p, &cmd.idem, &org, &id).await
}

// ---- volumes ----------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/orgs/{org}/volumes", tag = "volumes", params(("org" = String, Path)), responses((status = 200, body = List<api::Volume>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volumes_list(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
) -> R<List<api::Volume>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: volumes::list(&**db, &p, &org).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/volumes", tag = "volumes", params(("org" = String, Path)), request_body = api::CreateVolume, responses((status = 201, body = api::Volume), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volumes_create(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
    cmd: Cmd<api::CreateVolume>,
) -> C {
    volumes::create(&c, &p, &cmd.idem, &org, cmd.body).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/volumes/{volume}", tag = "volumes", params(("org" = String, Path), ("volume" = String, Path)), responses((status = 200, body = api::Volume), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volumes_get(
    State(c): State<Control>,
    p: Principal,
    Path((org, name)): Path<(String, String)>,
) -> R<api::Volume> {
    let db = c.db.client().await?;
    Ok(Json(volumes::get(&**db, &p, &org, &name).await?))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/volumes/{volume}", tag = "volumes", params(("org" = String, Path), ("volume" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volumes_delete(
    State(c): State<Control>,
    p: Principal,
    Path((org, name)): Path<(String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    volumes::delete(&c, &p, &cmd.idem, &org, &name).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/volumes/{volume}/snapshots", tag = "volumes", params(("org" = String, Path), ("volume" = String, Path)), responses((status = 200, body = List<api::VolumeSnapshot>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volume_snapshots_list(
    State(c): State<Control>,
    p: Principal,
    Path((org, name)): Path<(String, String)>,
) -> R<List<api::VolumeSnapshot>> {
    Ok(Json(List {
        items: volume_data::snapshot_list(&c, &p, &org, &name).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/volumes/{volume}/snapshots", tag = "volumes", params(("org" = String, Path), ("volume" = String, Path)), responses((status = 201, body = api::VolumeSnapshot), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volume_snapshots_create(
    State(c): State<Control>,
    p: Principal,
    Path((org, name)): Path<(String, String)>,
) -> Result<(axum::http::StatusCode, Json<api::VolumeSnapshot>), ApiError> {
    let s = volume_data::snapshot_create(&c, &p, &org, &name).await?;
    Ok((axum::http::StatusCode::CREATED, Json(s)))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/volumes/{volume}/snapshots/{id}", tag = "volumes", params(("org" = String, Path), ("volume" = String, Path), ("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volume_snapshots_delete(
    State(c): State<Control>,
    p: Principal,
    Path((org, name, id)): Path<(String, String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    volume_data::snapshot_delete(&c, &p, &org, &name, &id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/volumes/{volume}/backups", tag = "volumes", params(("org" = String, Path), ("volume" = String, Path)), responses((status = 200, body = List<api::VolumeBackup>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volume_backups_list(
    State(c): State<Control>,
    p: Principal,
    Path((org, name)): Path<(String, String)>,
) -> R<List<api::VolumeBackup>> {
    Ok(Json(List {
        items: volume_data::backup_list(&c, &p, &org, &name).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/volumes/{volume}/backups", tag = "volumes", params(("org" = String, Path), ("volume" = String, Path)), request_body = api::CreateVolumeBackup, responses((status = 202, body = api::VolumeBackup), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volume_backups_create(
    State(c): State<Control>,
    p: Principal,
    Path((org, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(axum::http::StatusCode, Json<api::VolumeBackup>), ApiError> {
    let r = volume_data::backup_create(&c, &p, &org, &name, &body).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(r)))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/volumes/{volume}/restore", tag = "volumes", params(("org" = String, Path), ("volume" = String, Path)), request_body = api::RestoreVolume, responses((status = 200, description = "the volume's disk was made on another host from the backup"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn volume_restore(
    State(c): State<Control>,
    p: Principal,
    Path((org, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> R<serde_json::Value> {
    Ok(Json(
        volume_data::restore(&c, &p, &org, &name, &body).await?,
    ))
}

// ---- images -----------------------------------------------------------------------------------

#[utoipa::path(head, path = "/v1/orgs/{org}/images/{digest}", tag = "images", params(("org" = String, Path), ("digest" = String, Path)), responses((status = 200, description = "the org has uploaded this image"), (status = 404, description = "not uploaded (yet): with `Upload-Offset` and `Upload-Length` when part of it was received, the offset to resume from (`PUT` with `Content-Range: bytes OFFSET-…/LENGTH`)", headers(("Upload-Offset" = u64, description = "bytes received so far of a partial upload"), ("Upload-Length" = u64, description = "the size of the archive of that partial upload"), ("Upload-Limit" = u64, description = "the largest archive this server accepts (image_upload_limit)")))), security(("bearer" = [])))]
pub async fn images_head(
    State(c): State<Control>,
    p: Principal,
    Path((org, digest)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (offset, total) = match images::head(&c, &p, &org, &digest).await? {
        images::Head::Stored => return Ok(axum::http::StatusCode::OK.into_response()),
        images::Head::Partial { offset, total } => (Some(offset), Some(total)),
        images::Head::Missing => (None, None),
    };
    let mut r = ApiError::not_found(format!("image {digest}")).into_response();
    let h = r.headers_mut();
    for (name, v) in [
        ("upload-offset", offset),
        ("upload-length", total),
        ("upload-limit", Some(c.config.image_upload_limit)),
    ] {
        if let Some(v) = v {
            h.insert(name, v.into());
        }
    }
    Ok(r)
}

#[utoipa::path(put, path = "/v1/orgs/{org}/images/{digest}", tag = "images", params(("org" = String, Path), ("digest" = String, Path), ("Content-Range" = Option<String>, Header, description = "`bytes START-END/TOTAL` (END inclusive): this piece of an archive of TOTAL bytes. START must be 0 (start over) or the server's offset (`HEAD`); without the header the body is the whole archive")), request_body(content = Vec<u8>, content_type = "application/x-tar", description = "an OCI (or docker save) image archive whose manifest digest is `digest`, or a piece of it"), responses((status = 201, description = "complete, verified and stored: {image_ref, digest, size_bytes}"), (status = 200, description = "already stored"), (status = 202, description = "piece kept, the upload goes on: {digest, offset, size_bytes}", headers(("Upload-Offset" = u64, description = "bytes received so far")))  , (status = 400, body = ErrorBody, description = "bad Content-Range, an interrupted body (what arrived is kept; `Upload-Offset`), or a complete archive that is not the image `digest` (nothing is kept)"), (status = 409, body = ErrorBody, description = "START is not the server's offset, or another upload of this image is writing", headers(("Upload-Offset" = u64, description = "where to send from"))), (status = 413, body = ErrorBody)), security(("bearer" = [])))]
pub async fn images_put(
    State(c): State<Control>,
    p: Principal,
    Path((org, digest)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let length = header("content-length").and_then(|v| v.parse().ok());
    match images::put(&c, &p, &org, &digest, header("content-range"), length, body).await {
        Ok(images::Put::Stored { created, size }) => {
            let status = if created {
                axum::http::StatusCode::CREATED
            } else {
                axum::http::StatusCode::OK
            };
            (
                status,
                Json(serde_json::json!({"image_ref": format!("upload:{digest}"), "digest": digest, "size_bytes": size})),
            )
                .into_response()
        }
        Ok(images::Put::Partial { offset, total }) => (
            axum::http::StatusCode::ACCEPTED,
            [("upload-offset", offset.to_string())],
            Json(serde_json::json!({"digest": digest, "offset": offset, "size_bytes": total})),
        )
            .into_response(),
        Err(e) => {
            let mut r = e.error.into_response();
            if let Some(o) = e.offset {
                r.headers_mut().insert("upload-offset", o.into());
            }
            r
        }
    }
}

#[utoipa::path(get, path = "/v1/agent/images/{digest}", tag = "agent", params(("digest" = String, Path)), responses((status = 200, description = "the image archive (agent tokens; only images its instances use)"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn agent_image(
    State(c): State<Control>,
    p: Principal,
    Path(digest): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let path = images::for_agent(&c, &p, &digest).await?;
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::internal())?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = axum::body::Body::from_stream(tokio_util_stream(f));
    axum::response::Response::builder()
        .header("Content-Type", "application/x-tar")
        .header("Content-Length", len)
        .body(body)
        .map_err(|_| ApiError::internal())
}

/// A file as a stream of 1 MiB chunks.
fn tokio_util_stream(
    f: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(f), |state| async move {
        let mut f = state?;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

// ---- hosts ------------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = List<api::Host>), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn hosts_list(State(c): State<Control>, p: Principal) -> R<List<api::Host>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: hosts::list(&**db, &p).await?,
    }))
}

#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", request_body = api::CreateHost, responses((status = 201, body = api::HostCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn hosts_create(State(c): State<Control>, p: Principal, cmd: Cmd<api::CreateHost>) -> C {
    hosts::create(&c, &p, &cmd.idem, cmd.body).await
}

#[utoipa::path(get, path = "/v1/hosts/{host}", tag = "hosts", params(("host" = String, Path)), responses((status = 200, body = api::Host), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn hosts_get(
    State(c): State<Control>,
    p: Principal,
    Path(name): Path<String>,
) -> R<api::Host> {
    let db = c.db.client().await?;
    Ok(Json(hosts::get(&**db, &p, &name).await?))
}

#[utoipa::path(delete, path = "/v1/hosts/{host}", tag = "hosts", params(("host" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn hosts_delete(
    State(c): State<Control>,
    p: Principal,
    Path(name): Path<String>,
    cmd: Cmd<Empty>,
) -> C {
    hosts::delete(&c, &p, &cmd.idem, &name).await
}

// ---- audit ------------------------------------------------------------------------------------

/// Query of the audit endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a sequence number greater than this.
    pub after: Option<i64>,
    /// Page size, 1-500 (default 100).
    pub limit: Option<i64>,
    /// Only this stream (e.g. `app:<id>`).
    pub stream: Option<String>,
    /// Only this event type (e.g. `AppCreated`).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/events", tag = "events", params(("org" = String, Path), EventsQuery), responses((status = 200, body = api::EventPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn events_list(
    State(c): State<Control>,
    p: Principal,
    Path(org): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> R<api::EventPage> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let db = c.db.client().await?;
    Ok(Json(
        audit::list(&**db, &p, &org, q.after, q.limit, q.stream, q.event_type).await?,
    ))
}

// ---- deploys ----------------------------------------------------------------------------------

fn env_at<'a>(org: &'a str, app: &'a str, env: &'a str) -> crate::ops::EnvPath<'a> {
    crate::ops::EnvPath { org, app, env }
}

#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/deploy", tag = "deploys", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), request_body = api::Deploy, responses((status = 202, description = "deployment started: `{deployment, release, state}`"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_deploy(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    cmd: Cmd<api::Deploy>,
) -> C {
    deploys::deploy(&c, &p, &cmd.idem, env_at(&org, &app, &env), cmd.body).await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/scale", tag = "deploys", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), request_body = api::Scale, responses((status = 202, description = "new scales accepted"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_scale(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    cmd: Cmd<api::Scale>,
) -> C {
    deploys::scale(&c, &p, &cmd.idem, env_at(&org, &app, &env), cmd.body).await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/stop", tag = "deploys", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 202, description = "every instance stops"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_stop(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    deploys::set_stopped(&c, &p, &cmd.idem, env_at(&org, &app, &env), true).await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/start", tag = "deploys", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 202, description = "instances start again"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_start(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    cmd: Cmd<Empty>,
) -> C {
    deploys::set_stopped(&c, &p, &cmd.idem, env_at(&org, &app, &env), false).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/status", tag = "deploys", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 200, body = api::EnvStatus), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_status(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
) -> R<api::EnvStatus> {
    let db = c.db.client().await?;
    Ok(Json(
        deploys::status(&**db, &p, env_at(&org, &app, &env)).await?,
    ))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/deployments", tag = "deploys", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), responses((status = 200, body = List<api::Deployment>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_deployments(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
) -> R<List<api::Deployment>> {
    let db = c.db.client().await?;
    Ok(Json(List {
        items: deploys::deployments(&**db, &p, env_at(&org, &app, &env)).await?,
    }))
}

#[utoipa::path(post, path = "/v1/hosts/{host}/drain", tag = "hosts", params(("host" = String, Path)), responses((status = 200, body = api::Host), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn hosts_drain(
    State(c): State<Control>,
    p: Principal,
    Path(name): Path<String>,
    cmd: Cmd<Empty>,
) -> C {
    hosts::set_draining(&c, &p, &cmd.idem, &name, true).await
}

#[utoipa::path(post, path = "/v1/hosts/{host}/undrain", tag = "hosts", params(("host" = String, Path)), responses((status = 200, body = api::Host), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn hosts_undrain(
    State(c): State<Control>,
    p: Principal,
    Path(name): Path<String>,
    cmd: Cmd<Empty>,
) -> C {
    hosts::set_draining(&c, &p, &cmd.idem, &name, false).await
}

// ---- host agents and edges --------------------------------------------------------------------

/// Long-poll query of the agent and edge feeds.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Answer once the feed's generation is above this (default 0: at once).
    pub after: Option<i64>,
    /// Seconds to wait for a newer generation (0-60, default 30); the current state is
    /// returned when the wait ends.
    pub wait: Option<u64>,
}

fn feed_query(
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(i64, u64), ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    Ok((q.after.unwrap_or(0), q.wait.unwrap_or(30)))
}

#[utoipa::path(post, path = "/v1/agent/join", tag = "agent", request_body = api::JoinHost, responses((status = 201, body = api::HostCreated), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn agent_join(State(c): State<Control>, p: Principal, cmd: Cmd<api::JoinHost>) -> C {
    hosts::join(&c, &p, &cmd.idem, cmd.body).await
}

#[utoipa::path(get, path = "/v1/agent/desired", tag = "agent", params(FeedQuery), responses((status = 200, body = api::AgentDesired), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn agent_desired(
    State(c): State<Control>,
    p: Principal,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> R<api::AgentDesired> {
    let (after, wait) = feed_query(q)?;
    Ok(Json(agent::desired(&c, &p, after, wait).await?))
}

#[utoipa::path(get, path = "/v1/agent/overlay", tag = "agent", responses((status = 200, body = api::AgentOverlay, description = "this host's prefixes and its WireGuard peers (docs/overlay.md)"), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn agent_overlay(State(c): State<Control>, p: Principal) -> R<api::AgentOverlay> {
    let db = c.db.client().await?;
    Ok(Json(overlay::for_agent(&**db, &p).await?))
}

#[utoipa::path(post, path = "/v1/agent/report", tag = "agent", request_body = api::AgentReport, responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn agent_report(
    State(c): State<Control>,
    p: Principal,
    cmd: Cmd<api::AgentReport>,
) -> Result<axum::http::StatusCode, ApiError> {
    agent::report(&c, &p, cmd.body).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/edge/table", tag = "agent", params(FeedQuery), responses((status = 200, description = "the edge routing table (docs/edge.md)"), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn edge_table(
    State(c): State<Control>,
    p: Principal,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> R<serde_json::Value> {
    let (after, wait) = feed_query(q)?;
    Ok(Json(agent::edge(&c, &p, after, wait).await?))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/logs", tag = "deploys", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path), crate::ops::logs::LogsQuery), responses((status = 200, description = "NDJSON: one `{instance, process, offset, ts, stream, line}` per line (`{instance, error}` when a host cannot be read)"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_logs(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    q: Result<Query<crate::ops::logs::LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let db = c.db.client().await?;
    crate::ops::logs::stream(&**db, &p, env_at(&org, &app, &env), q).await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/exec", tag = "deploys", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path)), request_body = api::ExecRequest, responses((status = 200, body = api::ExecResult), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_exec(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    cmd: Cmd<api::ExecRequest>,
) -> R<api::ExecResult> {
    let db = c.db.client().await?;
    Ok(Json(
        crate::ops::exec::run(&**db, &p, env_at(&org, &app, &env), cmd.body).await?,
    ))
}

/// Query of the interactive exec endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AttachQuery {
    /// Process type whose first ready instance to attach to (default `web`).
    pub process: Option<String>,
    /// The instance instead.
    pub instance: Option<String>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/apps/{app}/envs/{env}/attach", tag = "deploys", params(("org" = String, Path), ("app" = String, Path), ("env" = String, Path), AttachQuery), responses((status = 101, description = "`Upgrade: scalebox-exec`: an interactive (tty) exec session; frames in docs/orchestration.md"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)), security(("bearer" = [])))]
pub async fn envs_attach(
    State(c): State<Control>,
    p: Principal,
    Path((org, app, env)): Path<(String, String, String)>,
    q: Result<Query<AttachQuery>, axum::extract::rejection::QueryRejection>,
    mut req: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    use scalebox_types::exec_frames::PROTOCOL;
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let (instance, url, token) = {
        let db = c.db.client().await?;
        crate::ops::exec::target(&**db, &p, env_at(&org, &app, &env), q.process, q.instance).await?
    };
    let wants = req
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !wants {
        return Err(ApiError::bad_request(format!(
            "an interactive exec needs `Connection: Upgrade` and `Upgrade: {PROTOCOL}` (use `sb exec -t`)"
        )));
    }
    let mut agent = crate::ops::exec::connect_agent(&url, &token, &instance).await?;
    tracing::info!(actor = %p.actor, instance = %instance, "interactive exec");
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on_upgrade.await {
            let mut client = hyper_util::rt::TokioIo::new(up);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
        }
    });
    Ok(axum::response::Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, PROTOCOL)
        .header("X-Scalebox-Instance", instance)
        .body(axum::body::Body::empty())
        .expect("static response"))
}
