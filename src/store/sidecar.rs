//! The JSON sidecar kept beside each blob at `<h0>/<h1>/<id>.meta`.
//!
//! It keeps the original ProgImage `"file_name"` key and adds what we know at upload.
//! Every added field is optional so that sidecars written by the original filebase
//! (which hold little more than `file_name`) are read as they are, and fields we do
//! not know are carried through untouched.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The file name the client uploaded, or `<id>.<ext>` when it sent none.
    pub file_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The format sniffed from the bytes: `jpeg`, `png`, `gif`, `webp`, `bmp`, `tiff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    /// Keys written by other tools, kept as they are.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Sidecar {
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|err| {
            Error::internal(format!("a sidecar in the store is not valid JSON: {err}"))
        })
    }

    pub fn to_json(&self) -> Bytes {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec_pretty(self)
            .expect("sidecar serialises")
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_original_progimage_sidecar_and_keeps_unknown_keys() {
        let sidecar = Sidecar::from_json(br#"{"file_name": "cat.jpg", "owner": 7}"#).unwrap();
        assert_eq!(sidecar.file_name, "cat.jpg");
        assert_eq!(sidecar.width, None);
        let again = Sidecar::from_json(&sidecar.to_json()).unwrap();
        assert_eq!(again.other["owner"], 7);
    }
}
