//! Omaha v3 as Flatcar's update_engine and Nebraska speak it.
//!
//! Both directions, both sides:
//! - server: [`Request::parse`] then [`Response::to_xml`];
//! - client: [`Request::to_xml`] then [`Response::parse`] and
//!   [`UpdateCheckResponse::validate`] for update_engine's acceptance rules.
//!
//! Attribute names are case-sensitive (`DisablePayloadBackoff`, `PollInterval`).
//! Parsing is bounded by [`Limits`] and refuses any DTD, so there is no entity
//! expansion of any kind; only the predefined entities and character
//! references are decoded.

mod event;
mod offer;
mod ops;
mod request;
mod response;
mod xml;

#[doc(hidden)]
pub use request::fast_request_agrees;
#[doc(hidden)]
pub use xml::fast_path_agrees;

pub use event::{error_code, event_result, event_type, ErrorCode, ErrorFlags, EventKind};
pub use offer::{
    decode_digest, encode_b64, encode_hex, CheckOutcome, InvalidResponse, OfferedFile, UpdateOffer,
    DEFAULT_MAX_FAILURE_COUNT_PER_URL,
};
pub use ops::{PayloadOps, PAYLOAD_OPS_ATTR, STOCK_FLATCAR_OPS};
pub use request::{normalize_appid, Event, Os, Ping, Request, RequestApp, Text, UpdateCheck};
pub use response::{
    Action, DayStart, Manifest, Package, Response, ResponseApp, Status, UpdateCheckResponse,
};

/// The only protocol version accepted.
pub const PROTOCOL_VERSION: &str = "3.0";

/// Flatcar's application id (without braces).
pub const FLATCAR_APP_ID: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

/// Bounds applied while parsing; a document beyond any of them is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole document, in bytes.
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_elements: usize,
    pub max_attributes: usize,
    pub max_apps: usize,
    pub max_events_per_app: usize,
}

impl Default for Limits {
    /// Generous for any real Omaha document (a Flatcar request is under 1 KiB).
    fn default() -> Self {
        Limits {
            max_bytes: 64 * 1024,
            max_depth: 16,
            max_elements: 1024,
            max_attributes: 64,
            max_apps: 32,
            max_events_per_app: 32,
        }
    }
}

/// Why a document could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("document of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("document is not UTF-8")]
    NotUtf8,
    #[error("XML error at byte {position}: {message}")]
    Xml { position: u64, message: String },
    #[error("malformed XML: {0}")]
    Malformed(&'static str),
    #[error("character U+{code:04X} is not allowed in XML 1.0 ({place})")]
    ForbiddenChar { code: u32, place: String },
    #[error("DTDs are not accepted")]
    DtdRefused,
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    #[error("unexpected root element <{0}>")]
    UnexpectedRoot(String),
    #[error("unsupported protocol version {0:?} (want 3.0)")]
    UnsupportedProtocol(String),
    #[error("<{element}> lacks the {attribute} attribute")]
    MissingAttribute {
        element: &'static str,
        attribute: &'static str,
    },
    #[error("<{element} {attribute}={value:?}> is not valid")]
    InvalidAttribute {
        element: &'static str,
        attribute: &'static str,
        value: String,
    },
}
