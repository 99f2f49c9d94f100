//! FleetLock's wire format (Zincati's reboot-lock protocol): the request body, the error body
//! and the one check of what a client sends. Pure: the server in `fastpatch-locksmith` and the
//! fuzz target call [`check_request`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The FleetLock group that maps to locksmith's default semaphore.
pub const DEFAULT_GROUP: &str = "default";

#[derive(Debug, Deserialize, Serialize)]
pub struct ClientParams {
    pub id: String,
    pub group: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct Request {
    pub client_params: ClientParams,
}

/// The protocol's error body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorBody {
    pub kind: String,
    pub value: String,
}

/// Whether a group name is acceptable (`^[a-zA-Z0-9.-]+$`).
pub fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// A FleetLock request that passed the checks: who asks, for which group, with how many slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub group: String,
    pub slots: i64,
}

/// Why a request was refused: airlock's error kind and a sentence (always answered with 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub kind: &'static str,
    pub value: String,
}

/// Checks a request's `fleet-lock-protocol` header value and body against the configured
/// groups. Pure: the one reader of what a client sends, shared by both endpoints and the fuzz
/// target.
pub fn check_request(
    protocol_header: Option<&[u8]>,
    body: &[u8],
    groups: &BTreeMap<String, i64>,
) -> Result<Accepted, Refused> {
    // airlock's kinds (Zincati logs and labels its metrics by them): every malformed request
    // is an invalid client identity; a group that is not configured or not a valid name is
    // an unknown group.
    let invalid = |value: String| Refused {
        kind: "invalid_client_identity",
        value,
    };
    let ok_header = protocol_header
        .and_then(|v| std::str::from_utf8(v).ok())
        .is_some_and(|v| v.trim() == "true");
    if !ok_header {
        return Err(invalid(
            "header fleet-lock-protocol: true is required".into(),
        ));
    }
    let req: Request = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "body is not {{\"client_params\":{{\"id\",\"group\"}}}}: {e}"
        ))
    })?;
    let ClientParams { id, group } = req.client_params;
    if id.trim().is_empty() {
        return Err(invalid("client_params.id must be non-empty".into()));
    }
    let slots = valid_group(&group)
        .then(|| groups.get(&group).copied())
        .flatten()
        .ok_or_else(|| Refused {
            kind: "unknown_group",
            value: format!("group {group:?} is not configured (names match ^[a-zA-Z0-9.-]+$)"),
        })?;
    Ok(Accepted { id, group, slots })
}
