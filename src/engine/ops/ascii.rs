//! `ascii`: the image as ASCII art, for terminals, logs and browsers.
//!
//! One character per cell, `width` columns (default 100). A terminal cell is about
//! twice as tall as it is wide, so the row count is halved to keep the picture's
//! proportions: rows = round(height / width x columns / 2).
//!
//! The default ramp runs from dark to light: `@%#*+=-:. ` (ten steps; `@` is the
//! darkest pixel, a space the lightest), which reads right as dark text on a light
//! background; `invert=true` reverses it for light text on a dark background.
//! `ramp=` takes a named ramp or explicit characters (dark to light).
//! `color=ansi` adds 24-bit ANSI colour escapes for terminals; `color=html` writes an
//! HTML page with a `<pre>` of coloured spans.

use fast_image_resize::{FilterType, ResizeAlg};
use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::encode::flatten;
use crate::engine::params::{key_text, Args, ParamKind, ParamSpec};
use crate::engine::resize::resize;
use crate::error::{Error, Result};

/// Named ramps, each from the darkest character to the lightest.
pub const RAMPS: &[(&str, &str)] = &[
    ("standard", "@%#*+=-:. "),
    (
        "detailed",
        "$@B%8&WM#*oahkbdpqwmZO0QLCJUYXzcvunxrjft/\\|()1{}[]?-_+~<>i!lI;:,\"^`'. ",
    ),
    ("blocks", "█▓▒░ "),
    ("simple", "#+-. "),
];

/// How much taller a terminal cell is than it is wide.
const CELL_ASPECT: f64 = 2.0;

pub static DEFINITION: Definition = Definition {
    name: "ascii",
    summary: "Renders the image as ASCII art: text/plain, ANSI-coloured text, or an HTML page.",
    params: &[
        ParamSpec {
            name: "width",
            kind: ParamKind::Int { min: 1, max: 1000 },
            default: Some("100"),
            doc: "Columns of characters.",
        },
        ParamSpec {
            name: "invert",
            kind: ParamKind::Bool,
            default: Some("false"),
            doc: "Reverse the ramp, for light text on a dark background.",
        },
        ParamSpec {
            name: "ramp",
            kind: ParamKind::Text { max_chars: 100 },
            default: Some("standard"),
            doc: "standard (@%#*+=-:. ), detailed (70 steps), blocks (█▓▒░ ), simple (#+-. ), or at least two characters of your own, dark to light.",
        },
        ParamSpec {
            name: "color",
            kind: ParamKind::Choice { values: &["none", "ansi", "html"] },
            default: Some("none"),
            doc: "none: plain text; ansi: 24-bit colour escapes; html: a page of coloured spans.",
        },
    ],
    produces: Produces::Text,
    build: |args| Ascii::from_args(args).map(|a| Box::new(a) as _),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Color {
    None,
    Ansi,
    Html,
}

#[derive(Debug)]
struct Ascii {
    columns: u32,
    invert: bool,
    /// The ramp's name, or `None` for explicit characters.
    ramp_name: Option<&'static str>,
    ramp: Vec<char>,
    color: Color,
}

impl Ascii {
    fn from_args(args: &Args) -> Result<Self> {
        let ramp_text = args.text("ramp").unwrap_or("standard");
        let named = RAMPS.iter().find(|(name, _)| *name == ramp_text);
        let ramp: Vec<char> = named
            .map_or(ramp_text, |(_, chars)| chars)
            .chars()
            .collect();
        if ramp.len() < 2 {
            return Err(Error::bad_request(
                "invalid_parameter",
                "parameter 'ramp' of 'ascii' needs a ramp name or at least two characters",
            ));
        }
        Ok(Self {
            columns: args.pixels("width").unwrap_or(100),
            invert: args.bool("invert").unwrap_or(false),
            ramp_name: named.map(|(name, _)| *name),
            ramp,
            color: match args.choice("color") {
                Some("ansi") => Color::Ansi,
                Some("html") => Color::Html,
                _ => Color::None,
            },
        })
    }

    fn rows_for(&self, (width, height): (u32, u32)) -> u32 {
        let rows = f64::from(height) / f64::from(width) * f64::from(self.columns) / CELL_ASPECT;
        (rows.round() as u32).max(1)
    }

    /// Splits 0-255 into equal bands, one per character: 0 is the first, 255 the
    /// last, and every character covers as many grey levels as the others.
    fn character(&self, luma: u8) -> char {
        let steps = self.ramp.len() - 1;
        let index = usize::from(luma) * self.ramp.len() / 256;
        self.ramp[if self.invert { steps - index } else { index }]
    }
}

impl Operation for Ascii {
    fn key(&self) -> String {
        let mut params = vec![
            ("width", self.columns.to_string()),
            ("invert", self.invert.to_string()),
        ];
        match self.ramp_name {
            Some("standard") => {}
            Some(name) => params.push(("ramp", name.to_string())),
            None => params.push((
                "ramp",
                format!("x{}", key_text(&self.ramp.iter().collect::<String>())),
            )),
        }
        if self.color != Color::None {
            params.push((
                "color",
                if self.color == Color::Ansi {
                    "ansi"
                } else {
                    "html"
                }
                .to_string(),
            ));
        }
        canonical("ascii", &params)
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        let rows = self.rows_for((image.width(), image.height()));
        // Transparent areas read as the background: composite onto white first.
        let flat = DynamicImage::ImageRgb8(flatten(&image, [255, 255, 255]).into_rgb8());
        let cells = resize(
            &flat,
            (self.columns, rows),
            ResizeAlg::Convolution(FilterType::Box),
        )?
        .into_rgb8();
        let mut text = String::new();
        if self.color == Color::Html {
            text.push_str(HTML_HEAD);
        }
        for row in cells.rows() {
            for pixel in row {
                let [r, g, b] = pixel.0;
                let luma =
                    ((u32::from(r) * 299 + u32::from(g) * 587 + u32::from(b) * 114) / 1000) as u8;
                let c = self.character(luma);
                match self.color {
                    Color::None => text.push(c),
                    Color::Ansi => text.push_str(&format!("\x1b[38;2;{r};{g};{b}m{c}")),
                    Color::Html => text.push_str(&format!(
                        "<span style=\"color:#{r:02x}{g:02x}{b:02x}\">{}</span>",
                        escape(c)
                    )),
                }
            }
            if self.color == Color::Ansi {
                text.push_str("\x1b[0m");
            }
            text.push('\n');
        }
        if self.color == Color::Html {
            text.push_str("</pre></body></html>\n");
        }
        Ok(Output::Text(text))
    }

    fn output_size(&self, input: (u32, u32)) -> (u32, u32) {
        (self.columns, self.rows_for(input))
    }

    fn shrink_hint(&self, input: (u32, u32)) -> Option<(u32, u32)> {
        Some(self.output_size(input))
    }

    fn text_extension(&self) -> &'static str {
        if self.color == Color::Html {
            "html"
        } else {
            "txt"
        }
    }
}

const HTML_HEAD: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ascii</title>\
<style>body{margin:0;background:#fff}pre{font:10px/1 monospace;letter-spacing:0;margin:0}</style>\
</head><body><pre>";

fn escape(c: char) -> String {
    match c {
        '<' => "&lt;".to_string(),
        '>' => "&gt;".to_string(),
        '&' => "&amp;".to_string(),
        '"' => "&quot;".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ascii(pairs: &[(&str, &str)]) -> Box<dyn Operation> {
        let raw = crate::engine::params::owned(pairs);
        DEFINITION.build(&raw).unwrap()
    }

    fn render(op: &dyn Operation, image: DynamicImage) -> String {
        let Output::Text(text) = op.apply(image).unwrap() else {
            panic!("text expected")
        };
        text
    }

    fn halves() -> DynamicImage {
        let mut img = image::GrayImage::new(4, 8);
        for (x, _, p) in img.enumerate_pixels_mut() {
            p.0[0] = if x < 2 { 0 } else { 255 };
        }
        DynamicImage::ImageLuma8(img)
    }

    #[test]
    fn black_and_white_map_to_the_ends_of_the_ramp() {
        assert_eq!(
            render(&*ascii(&[("width", "4")]), halves()),
            "@@  \n@@  \n@@  \n@@  \n"
        );
        assert_eq!(
            render(&*ascii(&[("width", "4"), ("invert", "true")]), halves()),
            "  @@\n  @@\n  @@\n  @@\n"
        );
        assert_eq!(
            render(&*ascii(&[("width", "4"), ("ramp", "blocks")]), halves()),
            "██  \n██  \n██  \n██  \n"
        );
        assert_eq!(
            render(&*ascii(&[("width", "4"), ("ramp", "XO")]), halves()),
            "XXOO\nXXOO\nXXOO\nXXOO\n"
        );
    }

    #[test]
    fn a_gradient_uses_every_character_equally() {
        let op = ascii(&[("width", "256"), ("ramp", "0123")]);
        let ramp = image::GrayImage::from_fn(256, 10, |x, _| image::Luma([x as u8]));
        let text = render(&*op, DynamicImage::ImageLuma8(ramp));
        let row = text.lines().next().unwrap();
        for digit in ['0', '1', '2', '3'] {
            assert_eq!(row.chars().filter(|&c| c == digit).count(), 64, "{row}");
        }
    }

    #[test]
    fn colour_modes_wrap_each_cell() {
        let ansi = render(&*ascii(&[("width", "4"), ("color", "ansi")]), halves());
        assert!(ansi.starts_with("\x1b[38;2;0;0;0m@"), "{ansi:?}");
        assert!(ansi.lines().all(|l| l.ends_with("\x1b[0m")));
        let op = ascii(&[("width", "4"), ("color", "html")]);
        assert_eq!(op.text_extension(), "html");
        let html = render(&*op, halves());
        assert!(
            html.starts_with("<!doctype html>")
                && html.contains("<span style=\"color:#ffffff\"> </span>")
        );
    }

    #[test]
    fn keys_name_non_default_ramps_and_colours() {
        assert_eq!(ascii(&[]).key(), "ascii(width=100,invert=false)");
        assert_eq!(ascii(&[("ramp", "standard")]).key(), ascii(&[]).key());
        assert_eq!(
            ascii(&[("ramp", "XO"), ("color", "html")]).key(),
            "ascii(width=100,invert=false,ramp=x584f,color=html)"
        );
        let err = DEFINITION
            .build(&[("ramp".into(), "X".into())])
            .unwrap_err();
        assert_eq!(err.code, "invalid_parameter");
    }
}
