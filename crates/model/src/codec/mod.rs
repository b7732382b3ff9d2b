//! The two encodings of a DTO.
//!
//! - [`json`]: the external contract, `application/json`.
//! - [`binary`]: a compact, checksummed form, `application/x-pollux-dto`. Collectors may send
//!   it, and it is the format of the DTO files in the shared directory, since the loader reads
//!   each stored DTO back once and this form decodes several times faster than JSON.

pub mod binary;
pub mod json;

/// The content type of the binary codec.
pub const BINARY_CONTENT_TYPE: &str = "application/x-pollux-dto";
/// The content type of the JSON codec.
pub const JSON_CONTENT_TYPE: &str = "application/json";
