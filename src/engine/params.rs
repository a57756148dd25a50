//! Declared parameter schemas, and validation of request parameters against them.
//!
//! Each transform declares its parameters once ([`ParamSpec`]: name, type, range,
//! default). The same declaration validates requests, fills in defaults for the
//! canonical cache key, and is what `GET /transforms/` shows clients.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};

/// The type and range of one parameter.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ParamKind {
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    Bool,
    Choice {
        values: &'static [&'static str],
    },
    /// Free text of at most `max_chars` printable characters.
    Text {
        max_chars: usize,
    },
    /// A ratio such as `16:9`.
    Ratio,
    /// A colour as six hex digits, `rrggbb`.
    Color,
}

/// One declared parameter of a transform.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ParamSpec {
    pub name: &'static str,
    #[serde(flatten)]
    pub kind: ParamKind,
    /// Used when the request leaves it out; `None` means "absent" is meaningful.
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// A validated parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Choice(&'static str),
    Text(String),
    Ratio(u32, u32),
    Color([u8; 3]),
}

/// Validated parameters, defaults filled in.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Args(BTreeMap<&'static str, Value>);

impl Args {
    /// Validates raw `name=value` pairs against `specs` for transform `transform`.
    pub fn parse(transform: &str, specs: &[ParamSpec], raw: &[(String, String)]) -> Result<Self> {
        let mut args = BTreeMap::new();
        for (name, text) in raw {
            let spec = specs.iter().find(|s| s.name == name).ok_or_else(|| {
                let known: Vec<_> = specs.iter().map(|s| s.name).collect();
                Error::bad_request(
                    "unknown_parameter",
                    format!(
                        "transform '{transform}' has no parameter '{name}'; it takes: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?;
            let value = spec.kind.parse(text).ok_or_else(|| {
                Error::bad_request(
                    "invalid_parameter",
                    format!(
                        "parameter '{name}' of '{transform}' {}, not '{text}'",
                        spec.kind.expectation()
                    ),
                )
            })?;
            if args.insert(spec.name, value).is_some() {
                return Err(Error::bad_request(
                    "invalid_parameter",
                    format!("parameter '{name}' of '{transform}' is given more than once"),
                ));
            }
        }
        for spec in specs {
            if let Some(default) = spec.default {
                if !args.contains_key(spec.name) {
                    let value = spec
                        .kind
                        .parse(default)
                        .expect("declared defaults are valid");
                    args.insert(spec.name, value);
                }
            }
        }
        Ok(Self(args))
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.0.get(name) {
            Some(Value::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// A side length or offset: parameters declared with non-negative ranges.
    pub fn pixels(&self, name: &str) -> Option<u32> {
        self.int(name)
            .map(|v| v.clamp(0, i64::from(u32::MAX)) as u32)
    }

    pub fn float(&self, name: &str) -> Option<f64> {
        match self.0.get(name) {
            Some(Value::Float(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.0.get(name) {
            Some(Value::Bool(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn choice(&self, name: &str) -> Option<&'static str> {
        match self.0.get(name) {
            Some(Value::Choice(v)) => Some(v),
            _ => None,
        }
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.0.get(name) {
            Some(Value::Text(v)) => Some(v),
            _ => None,
        }
    }

    pub fn ratio(&self, name: &str) -> Option<(u32, u32)> {
        match self.0.get(name) {
            Some(Value::Ratio(w, h)) => Some((*w, *h)),
            _ => None,
        }
    }

    pub fn color(&self, name: &str) -> Option<[u8; 3]> {
        match self.0.get(name) {
            Some(Value::Color(c)) => Some(*c),
            _ => None,
        }
    }
}

impl ParamKind {
    fn parse(&self, text: &str) -> Option<Value> {
        match *self {
            ParamKind::Int { min, max } => text
                .parse::<i64>()
                .ok()
                .filter(|v| (min..=max).contains(v))
                .map(Value::Int),
            ParamKind::Float { min, max } => text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && (min..=max).contains(v))
                .map(Value::Float),
            ParamKind::Bool => match text {
                "true" | "1" | "yes" => Some(Value::Bool(true)),
                "false" | "0" | "no" => Some(Value::Bool(false)),
                _ => None,
            },
            ParamKind::Choice { values } => values
                .iter()
                .find(|v| **v == text)
                .map(|v| Value::Choice(v)),
            ParamKind::Text { max_chars } => {
                let count = text.chars().count();
                let printable = text.chars().all(|c| !c.is_control());
                (count > 0 && count <= max_chars && printable)
                    .then(|| Value::Text(text.to_string()))
            }
            ParamKind::Ratio => {
                let (w, h) = text.split_once(':')?;
                let (w, h) = (w.parse::<u32>().ok()?, h.parse::<u32>().ok()?);
                let in_range = |v: u32| (1..=1000).contains(&v);
                (in_range(w) && in_range(h)).then_some(Value::Ratio(w, h))
            }
            ParamKind::Color => {
                let hex = text.strip_prefix('#').unwrap_or(text);
                if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let channel = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
                Some(Value::Color([channel(0)?, channel(2)?, channel(4)?]))
            }
        }
    }

    fn expectation(&self) -> String {
        match self {
            ParamKind::Int { min, max } => format!("must be a whole number from {min} to {max}"),
            ParamKind::Float { min, max } => format!("must be a number from {min} to {max}"),
            ParamKind::Bool => "must be true or false".to_string(),
            ParamKind::Choice { values } => format!("must be one of {}", values.join(", ")),
            ParamKind::Text { max_chars } => {
                format!("must be 1 to {max_chars} printable characters")
            }
            ParamKind::Ratio => "must be a ratio such as 16:9 (each side 1 to 1000)".to_string(),
            ParamKind::Color => "must be a colour as six hex digits, such as ffffff".to_string(),
        }
    }
}

/// Writes a value for a cache key using only characters safe in object names on
/// every backend: free text is hex-encoded.
pub fn key_text(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// `rrggbb`, for keys.
pub fn key_color(color: [u8; 3]) -> String {
    format!("{:02x}{:02x}{:02x}", color[0], color[1], color[2])
}

/// Owned `name=value` pairs from literals, as a query string parses into.
#[cfg(test)]
pub(crate) fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[ParamSpec] = &[
        ParamSpec {
            name: "w",
            kind: ParamKind::Int { min: 1, max: 10 },
            default: Some("5"),
            doc: "",
        },
        ParamSpec {
            name: "aspect",
            kind: ParamKind::Ratio,
            default: None,
            doc: "",
        },
        ParamSpec {
            name: "bg",
            kind: ParamKind::Color,
            default: None,
            doc: "",
        },
        ParamSpec {
            name: "sigma",
            kind: ParamKind::Float { min: 0.5, max: 2.0 },
            default: None,
            doc: "",
        },
    ];

    fn raw(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        owned(pairs)
    }

    #[test]
    fn validates_ranges_names_and_duplicates() {
        assert_eq!(Args::parse("t", SPECS, &[]).unwrap().int("w"), Some(5));
        let args = Args::parse(
            "t",
            SPECS,
            &raw(&[
                ("w", "7"),
                ("aspect", "16:9"),
                ("bg", "FF8000"),
                ("sigma", "1.5"),
            ]),
        )
        .unwrap();
        assert_eq!(args.int("w"), Some(7));
        assert_eq!(args.ratio("aspect"), Some((16, 9)));
        assert_eq!(args.color("bg"), Some([255, 128, 0]));
        assert_eq!(args.float("sigma"), Some(1.5));
        for bad in [
            &[("w", "0")][..],
            &[("w", "x")],
            &[("x", "1")],
            &[("w", "1"), ("w", "2")],
            &[("aspect", "16x9")],
            &[("aspect", "0:9")],
            &[("bg", "fff")],
            &[("sigma", "NaN")],
            &[("sigma", "3")],
        ] {
            let err = Args::parse("t", SPECS, &raw(bad)).unwrap_err();
            assert_eq!(err.kind, crate::ErrorKind::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn key_text_is_object_name_safe() {
        assert_eq!(key_text("@# /"), "4023202f");
    }
}
