//! The one JSON error body of the whole API (`{"error": "...", "code": "..."}`), shared by the
//! `/v1` surface and the VM surface, so clients can parse every failure the same way.

use serde::{Deserialize, Serialize};

/// Error body returned by every endpoint on failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Human-readable message: what was wrong and how to fix it. Never contains secret values.
    pub error: String,
    /// Stable machine-readable code (`not_found`, `conflict`, `invalid_body`, ...).
    pub code: String,
}
