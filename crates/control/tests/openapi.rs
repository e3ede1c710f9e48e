//! The checked-in OpenAPI document (`docs/openapi.json`) must equal the generated one.
//! Regenerate with `UPDATE_OPENAPI=1 cargo test -p scalebox-control --test openapi`.

#[test]
fn openapi_document_is_checked_in_and_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated =
        serde_json::to_string_pretty(&scalebox_control::api::openapi::document()).unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is out of date with the API; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p scalebox-control --test openapi` and commit it"
    );
}
