//! The transforms: one file each, all behind the [`Operation`] trait.
//!
//! A transform is declared by a [`Definition`]: its name, its parameters (see
//! [`ParamSpec`]) and a constructor from validated [`Args`]. Adding a transform means
//! adding a file here and one line to [`ALL`]; routing, validation, cache keys and
//! the CLI pick it up from there.

mod ascii;
mod blur;
mod brightness;
mod contrast;
mod convert;
mod crop;
mod flip;
mod grayscale;
mod resize;
mod rotate;
mod sharpen;
mod thumbnail;

use std::fmt;

use image::DynamicImage;

use crate::engine::params::{Args, ParamSpec};
use crate::error::{Error, Result};

/// A transform with its parameters resolved, ready to run.
pub trait Operation: Send + Sync + fmt::Debug {
    /// The canonical form: name and every resolved parameter in a fixed order, e.g.
    /// `thumbnail(w=128,h=128)`. Equivalent requests give equal keys.
    fn key(&self) -> String;

    /// Runs the transform on upright pixels.
    fn apply(&self, image: DynamicImage) -> Result<Output>;

    /// The size this step produces from an input of `input` pixels, known before any
    /// pixel is decoded: limits are checked, and decoders told how far they may
    /// shrink, from it.
    fn output_size(&self, input: (u32, u32)) -> (u32, u32) {
        input
    }

    /// For a first step that only scales down: the smallest input it needs to produce
    /// the same result, so the decoder can shrink on load. `None`: the full image.
    fn shrink_hint(&self, _input: (u32, u32)) -> Option<(u32, u32)> {
        None
    }

    /// The file extension of what a text transform writes (`txt`, `html`).
    fn text_extension(&self) -> &'static str {
        "txt"
    }
}

/// What a transform produces.
#[derive(Debug)]
pub enum Output {
    /// Pixels, encoded afterwards in the requested output format.
    Image(DynamicImage),
    /// Finished text, such as ASCII art; its kind is the step's `text_extension`.
    Text(String),
}

/// Whether a transform makes pixels (which take `format` and `q`) or text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produces {
    Image,
    Text,
}

/// The declaration of one transform.
#[derive(Debug)]
pub struct Definition {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [ParamSpec],
    pub produces: Produces,
    build: fn(&Args) -> Result<Box<dyn Operation>>,
}

impl Definition {
    /// Validates raw query parameters and resolves them into an operation.
    pub fn build(&self, raw: &[(String, String)]) -> Result<Box<dyn Operation>> {
        let args = Args::parse(self.name, self.params, raw)?;
        (self.build)(&args)
    }
}

/// Every transform the engine knows.
pub static ALL: &[&Definition] = &[
    &thumbnail::DEFINITION,
    &resize::DEFINITION,
    &crop::DEFINITION,
    &rotate::DEFINITION,
    &flip::DEFINITION,
    &grayscale::DEFINITION,
    &blur::DEFINITION,
    &sharpen::DEFINITION,
    &brightness::DEFINITION,
    &contrast::DEFINITION,
    &convert::DEFINITION,
    &ascii::DEFINITION,
];

/// The transform called `name`, or a 404 naming the ones that exist.
pub fn find(name: &str) -> Result<&'static Definition> {
    ALL.iter().copied().find(|d| d.name == name).ok_or_else(|| {
        let known: Vec<_> = ALL.iter().map(|d| d.name).collect();
        Error::not_found(
            "unknown_transform",
            format!(
                "there is no transform '{name}'; available: {}",
                known.join(", ")
            ),
        )
    })
}

/// Formats `name(k=v,...)` for keys.
fn canonical(name: &str, params: &[(&str, String)]) -> String {
    let inner: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if inner.is_empty() {
        name.to_string()
    } else {
        format!("{name}({})", inner.join(","))
    }
}
