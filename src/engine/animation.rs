//! Animations kept as animations: with `animated=true` and GIF or WebP output, every
//! frame of an animated GIF, WebP or APNG goes through the pipeline and is encoded
//! with its timing. Without it, transforms use the first frame (see `decode`).
//!
//! Frames are decoded composited to the full canvas, so the whole animation is held
//! in memory: `max_frames` bounds the count, and all frames together must fit within
//! `max_input_pixels`.

use std::borrow::Cow;
use std::io::Cursor;

use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::imageops::FilterType;
use image::{AnimationDecoder, DynamicImage, Frame, Frames, RgbaImage};

use crate::config::Limits;
use crate::engine::ops::Output;
use crate::engine::{Format, OutputOptions, Pipeline};
use crate::error::{Error, Result};

/// Decodes every frame of `bytes`, runs `pipeline` on each, and encodes `format`.
pub fn render(
    bytes: &[u8],
    source: Format,
    limits: &Limits,
    pipeline: &Pipeline,
    format: Format,
    options: &OutputOptions,
) -> Result<Vec<u8>> {
    let failed = |err: image::ImageError| {
        Error::undecodable(format!("this {source} animation cannot be decoded: {err}"))
    };
    let frames: Frames = match source {
        Format::Gif => GifDecoder::new(Cursor::new(bytes))
            .map_err(failed)?
            .into_frames(),
        Format::WebP => WebPDecoder::new(Cursor::new(bytes))
            .map_err(failed)?
            .into_frames(),
        Format::Png => PngDecoder::new(Cursor::new(bytes))
            .map_err(failed)?
            .apng()
            .map_err(failed)?
            .into_frames(),
        other => {
            return Err(Error::bad_request(
                "invalid_parameter",
                format!("a {other} image has no animation to keep"),
            ))
        }
    };
    let mut transformed = Vec::new();
    let mut pixels = 0u64;
    for frame in frames {
        let frame = frame.map_err(failed)?;
        if transformed.len() as u64 >= limits.max_frames {
            return Err(Error::too_large(
                "max_frames",
                format!(
                    "the animation has more than max_frames ({}) frames",
                    limits.max_frames
                ),
            ));
        }
        pixels += u64::from(frame.buffer().width()) * u64::from(frame.buffer().height());
        if pixels > limits.max_input_pixels {
            return Err(Error::too_large(
                "max_input_pixels",
                format!(
                    "the animation's frames together exceed max_input_pixels ({})",
                    limits.max_input_pixels
                ),
            ));
        }
        let delay = frame.delay();
        let Output::Image(image) = pipeline.apply(DynamicImage::ImageRgba8(frame.into_buffer()))?
        else {
            return Err(Error::bad_request(
                "invalid_parameter",
                "animated=true needs an image result",
            ));
        };
        transformed.push(Frame::from_parts(image.into_rgba8(), 0, 0, delay));
    }
    if transformed.is_empty() {
        return Err(Error::undecodable(format!(
            "this {source} animation has no frames"
        )));
    }
    match format {
        Format::Gif => gif(transformed),
        _ => Ok(webp(&transformed, options)),
    }
}

fn gif(frames: Vec<Frame>) -> Result<Vec<u8>> {
    let failed =
        |err: image::ImageError| Error::internal(format!("encoding the gif failed: {err}"));
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(failed)?;
        encoder.encode_frames(frames).map_err(failed)?;
    }
    Ok(out)
}

/// An animated WebP of `frames`, of which there is at least one.
fn webp(frames: &[Frame], options: &OutputOptions) -> Vec<u8> {
    let first = &frames[0];
    let mut config = webp::WebPConfig::new().expect("libwebp's default config");
    config.lossless = i32::from(options.lossless);
    config.quality = f32::from(options.quality);
    let (width, height) = first.buffer().dimensions();
    let mut encoder = webp::AnimEncoder::new(width, height, &config);
    encoder.set_loop_count(0);
    // Every frame must have the canvas size; the same pipeline makes them equal anyway.
    let canvases: Vec<Cow<RgbaImage>> = frames
        .iter()
        .map(|f| match f.buffer().dimensions() == (width, height) {
            true => Cow::Borrowed(f.buffer()),
            false => Cow::Owned(image::imageops::resize(
                f.buffer(),
                width,
                height,
                FilterType::Triangle,
            )),
        })
        .collect();
    let mut timestamp = 0i32;
    for (frame, canvas) in frames.iter().zip(&canvases) {
        encoder.add_frame(webp::AnimFrame::from_rgba(canvas, width, height, timestamp));
        let (numerator, denominator) = frame.delay().numer_denom_ms();
        timestamp += (numerator / denominator.max(1)) as i32;
    }
    encoder.encode().to_vec()
}
