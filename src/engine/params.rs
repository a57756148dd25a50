//! Declared parameter schemas, and validation of query parameters against them.
//!
//! Each transform declares its parameters once ([`ParamSpec`]: name, type, range,
//! default). The same declaration validates requests, fills in defaults for the
//! canonical cache key, and is what clients can be shown of a transform.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};

/// The type and range of one parameter.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ParamKind {
    Int { min: i64, max: i64 },
    Bool,
    Choice { values: &'static [&'static str] },
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bool(bool),
    Choice(&'static str),
}

/// Validated parameters, defaults filled in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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

    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.0.get(name) {
            Some(Value::Bool(v)) => Some(*v),
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
            ParamKind::Bool => match text {
                "true" | "1" | "yes" => Some(Value::Bool(true)),
                "false" | "0" | "no" => Some(Value::Bool(false)),
                _ => None,
            },
            ParamKind::Choice { values } => values
                .iter()
                .find(|v| **v == text)
                .map(|v| Value::Choice(v)),
        }
    }

    fn expectation(&self) -> String {
        match self {
            ParamKind::Int { min, max } => format!("must be a whole number from {min} to {max}"),
            ParamKind::Bool => "must be true or false".to_string(),
            ParamKind::Choice { values } => format!("must be one of {}", values.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[ParamSpec] = &[ParamSpec {
        name: "w",
        kind: ParamKind::Int { min: 1, max: 10 },
        default: Some("5"),
        doc: "",
    }];

    fn raw(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn validates_ranges_names_and_duplicates() {
        assert_eq!(Args::parse("t", SPECS, &[]).unwrap().int("w"), Some(5));
        assert_eq!(
            Args::parse("t", SPECS, &raw(&[("w", "7")]))
                .unwrap()
                .int("w"),
            Some(7)
        );
        for bad in [
            &[("w", "0")][..],
            &[("w", "x")],
            &[("x", "1")],
            &[("w", "1"), ("w", "2")],
        ] {
            let err = Args::parse("t", SPECS, &raw(bad)).unwrap_err();
            assert_eq!(err.kind, crate::ErrorKind::BadRequest, "{bad:?}");
        }
    }
}
