//! `convert`: the image unchanged, re-encoded in the requested `format`.
//!
//! Behind `GET /images/<id>.png` and friends, and `GET /images/<id>/convert/?format=webp`.

use image::DynamicImage;

use super::{Definition, Operation, Output, Produces};
use crate::error::Result;

pub static DEFINITION: Definition = Definition {
    name: "convert",
    summary: "The whole image, upright, in the output format given by `format`.",
    params: &[],
    produces: Produces::Image,
    build: |_| Ok(Box::new(Convert)),
};

#[derive(Debug)]
struct Convert;

impl Operation for Convert {
    fn key(&self) -> String {
        "convert".to_string()
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        Ok(Output::Image(image))
    }
}
