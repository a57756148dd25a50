//! Pipelines: several transforms in one request, and named presets of them.
//!
//! The grammar, as it appears in the path after the image id:
//!
//! ```text
//! pipeline := step ("/" step)*
//! step     := name [ "(" [ param ("," param)* ] ")" ]
//! param    := key "=" value          (value: any characters but "," and ")",
//!                                     percent-encoded where URLs require it)
//! name     := a transform, or a preset from the settings file
//! ```
//!
//! e.g. `crop(aspect=1:1)/resize(w=256)/grayscale`. A single step may instead take its
//! parameters from the query string (`thumbnail/?w=100`), the form of the core API.
//! Output options (`format`, `q`, ...) always come from the query string.
//!
//! A pipeline's key is its steps' canonical keys joined by `+`, so equivalent
//! spellings (a preset and its expansion, parameters in any order) share a cache entry.

use std::collections::BTreeMap;

use image::DynamicImage;

use crate::engine::ops::{self, Operation, Output, Produces};
use crate::error::{Error, Result};

/// Most steps one pipeline may have.
pub const MAX_STEPS: usize = 10;

/// One parsed step: a transform name and its raw parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawStep {
    name: String,
    params: Vec<(String, String)>,
}

/// Named pipelines from the settings file, checked when the service starts.
#[derive(Debug, Clone, Default)]
pub struct Presets(BTreeMap<String, Vec<RawStep>>);

impl Presets {
    /// Parses and validates every preset; a preset may not reuse a transform's name
    /// nor refer to another preset.
    pub fn new(definitions: &BTreeMap<String, String>) -> Result<Self> {
        let mut presets = BTreeMap::new();
        for (name, text) in definitions {
            let invalid = |why: String| {
                Error::bad_request("invalid_preset", format!("preset '{name}': {why}"))
            };
            if ops::find(name).is_ok() {
                return Err(invalid("has the name of a transform".to_string()));
            }
            let steps = parse_steps(text).map_err(|e| invalid(e.message))?;
            Pipeline::build(&steps, &[], &Presets::default()).map_err(|e| invalid(e.message))?;
            presets.insert(name.clone(), steps);
        }
        Ok(Self(presets))
    }

    /// Preset names and their pipelines, for `GET /transforms/`.
    pub fn describe(&self) -> BTreeMap<&str, String> {
        self.0
            .iter()
            .map(|(name, steps)| {
                let text: Vec<String> = steps.iter().map(RawStep::to_text).collect();
                (name.as_str(), text.join("/"))
            })
            .collect()
    }
}

/// A validated sequence of operations.
#[derive(Debug)]
pub struct Pipeline {
    steps: Vec<Box<dyn Operation>>,
    produces: Produces,
}

impl Pipeline {
    /// Parses the pipeline part of a path; `query` holds the transform parameters
    /// from the query string (output options already taken out).
    pub fn parse(path: &str, query: &[(String, String)], presets: &Presets) -> Result<Self> {
        Self::build(&parse_steps(path)?, query, presets)
    }

    fn build(raw: &[RawStep], query: &[(String, String)], presets: &Presets) -> Result<Self> {
        let mut expanded = Vec::new();
        for step in raw {
            match presets.0.get(&step.name) {
                Some(preset) if step.params.is_empty() => expanded.extend(preset.iter().cloned()),
                _ => expanded.push(step.clone()),
            }
        }
        if !query.is_empty() {
            match expanded.as_mut_slice() {
                [only] => only.params.extend(query.iter().cloned()),
                _ => {
                    return Err(Error::bad_request(
                        "invalid_pipeline",
                        "in a pipeline of several steps, give each its parameters in the path, \
                         e.g. resize(w=256); the query string is for output options",
                    ))
                }
            }
        }
        if expanded.len() > MAX_STEPS {
            return Err(Error::bad_request(
                "invalid_pipeline",
                format!(
                    "a pipeline may have at most {MAX_STEPS} steps, not {}",
                    expanded.len()
                ),
            ));
        }
        let mut steps = Vec::with_capacity(expanded.len());
        let mut produces = Produces::Image;
        for (index, step) in expanded.iter().enumerate() {
            let at_step = |err: Error| {
                if expanded.len() == 1 {
                    err
                } else {
                    Error {
                        message: format!(
                            "step {} '{}': {}",
                            index + 1,
                            step.to_text(),
                            err.message
                        ),
                        ..err
                    }
                }
            };
            if produces == Produces::Text {
                return Err(at_step(Error::bad_request(
                    "invalid_pipeline",
                    "a step that makes text (ascii) must be the last",
                )));
            }
            let definition = ops::find(&step.name).map_err(at_step)?;
            steps.push(definition.build(&step.params).map_err(at_step)?);
            produces = definition.produces;
        }
        Ok(Self { steps, produces })
    }

    /// The canonical key of the steps, e.g. `crop(aspect=1:1,gravity=center)+grayscale`.
    pub fn key(&self) -> String {
        let keys: Vec<String> = self.steps.iter().map(|s| s.key()).collect();
        keys.join("+")
    }

    pub fn produces(&self) -> Produces {
        self.produces
    }

    /// The file extension of a text result (`txt`, `html`).
    pub fn text_extension(&self) -> &'static str {
        self.steps.last().map_or("txt", |s| s.text_extension())
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Box<dyn Operation>] {
        &self.steps
    }

    /// Checks, from the upright input size alone, that no step would produce more than
    /// `max_output_pixels`, and returns how far the decoder may shrink on load.
    pub fn plan(&self, input: (u32, u32), max_output_pixels: u64) -> Result<Option<(u32, u32)>> {
        for (step, size) in self.steps.iter().zip(self.output_sizes(input)) {
            let pixels = u64::from(size.0) * u64::from(size.1);
            if pixels > max_output_pixels {
                return Err(Error::too_large(
                    "max_output_pixels",
                    format!(
                        "'{}' would make a {}x{} image ({pixels} pixels), over max_output_pixels ({max_output_pixels})",
                        step.key(),
                        size.0,
                        size.1
                    ),
                ));
            }
        }
        Ok(self.steps.first().and_then(|step| step.shrink_hint(input)))
    }

    /// The most pixels any step outputs, from an `input`-sized image.
    pub fn largest_output(&self, input: (u32, u32)) -> u64 {
        self.output_sizes(input)
            .map(|(width, height)| u64::from(width) * u64::from(height))
            .max()
            .unwrap_or(0)
    }

    /// The size each step outputs, in order, from an `input`-sized image.
    fn output_sizes(&self, input: (u32, u32)) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.steps.iter().scan(input, |size, step| {
            *size = step.output_size(*size);
            Some(*size)
        })
    }

    /// Runs every step in order.
    pub fn apply(&self, mut image: DynamicImage) -> Result<Output> {
        for step in &self.steps {
            match step.apply(image)? {
                Output::Image(next) => image = next,
                text @ Output::Text(_) => return Ok(text),
            }
        }
        Ok(Output::Image(image))
    }
}

impl RawStep {
    fn to_text(&self) -> String {
        if self.params.is_empty() {
            return self.name.clone();
        }
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}({})", self.name, params.join(","))
    }
}

/// Splits `a(k=v)/b/c(x=1,y=2)` into steps, percent-decoding each one.
fn parse_steps(path: &str) -> Result<Vec<RawStep>> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        return Err(Error::bad_request(
            "invalid_pipeline",
            "the pipeline is empty",
        ));
    }
    segments
        .iter()
        .enumerate()
        .map(|(index, segment)| {
            let text = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
            parse_step(&text).map_err(|why| {
                Error::bad_request(
                    "invalid_pipeline",
                    format!("step {} '{text}': {why}", index + 1),
                )
            })
        })
        .collect()
}

fn parse_step(text: &str) -> Result<RawStep, String> {
    let (name, params) = match text.split_once('(') {
        None => (text, ""),
        Some((name, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .ok_or("a '(' without its closing ')'")?;
            if inner.contains('(') || inner.contains(')') {
                return Err("parentheses cannot nest".to_string());
            }
            (name, inner)
        }
    };
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid_name {
        return Err(format!(
            "'{name}' is not a transform name (lowercase letters, digits, _)"
        ));
    }
    let params = params
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|param| {
            param
                .split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("'{param}' is not key=value"))
        })
        .collect::<Result<_, _>>()?;
    Ok(RawStep {
        name: name.to_string(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Result<String> {
        Pipeline::parse(path, &[], &Presets::default()).map(|p| p.key())
    }

    #[test]
    fn parses_steps_with_and_without_parameters() {
        assert_eq!(key("thumbnail(w=10,h=20)").unwrap(), "thumbnail(w=10,h=20)");
        assert_eq!(
            key("thumbnail(h=20, w=10)/").unwrap(),
            "thumbnail(w=10,h=20)"
        );
        assert_eq!(
            key("thumbnail(size=10)/ascii").unwrap(),
            "thumbnail(w=10,h=10)+ascii(width=100,invert=false)"
        );
        assert_eq!(
            key("thumbnail%28size%3D10%29").unwrap(),
            "thumbnail(w=10,h=10)"
        );
    }

    #[test]
    fn bad_syntax_points_at_the_step() {
        for (path, step) in [
            ("thumbnail/thumbnail(w=1", "step 2"),
            ("thumbnail/Thumb", "step 2"),
            ("thumbnail(w)", "step 1"),
            ("thumbnail/thumbnail(w=0)", "step 2"),
            ("thumbnail/nope", "step 2"),
            ("ascii/thumbnail", "step 2"),
        ] {
            let err = key(path).unwrap_err();
            assert!(err.message.contains(step), "{path}: {}", err.message);
        }
        let long = ["thumbnail"; MAX_STEPS + 1].join("/");
        assert_eq!(key(&long).unwrap_err().code, "invalid_pipeline");
    }

    #[test]
    fn query_parameters_belong_to_a_single_step_only() {
        let query = vec![("w".to_string(), "10".to_string())];
        let single = Pipeline::parse("thumbnail", &query, &Presets::default()).unwrap();
        assert_eq!(single.key(), "thumbnail(w=10)");
        assert!(Pipeline::parse("thumbnail/thumbnail", &query, &Presets::default()).is_err());
    }

    #[test]
    fn presets_expand_to_the_same_key_as_their_pipeline() {
        let mut definitions = BTreeMap::new();
        definitions.insert("small".to_string(), "thumbnail(size=32)".to_string());
        let presets = Presets::new(&definitions).unwrap();
        let preset = Pipeline::parse("small", &[], &presets).unwrap();
        assert_eq!(preset.key(), key("thumbnail(size=32)").unwrap());

        definitions.insert("thumbnail".to_string(), "ascii".to_string());
        assert_eq!(
            Presets::new(&definitions).unwrap_err().code,
            "invalid_preset"
        );
        let mut bad = BTreeMap::new();
        bad.insert("broken".to_string(), "thumbnail(w=0)".to_string());
        assert!(Presets::new(&bad).unwrap_err().message.contains("broken"));
    }
}
