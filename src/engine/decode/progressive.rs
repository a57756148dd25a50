//! Progressive JPEGs at 1/8 scale from their DC scans alone.
//!
//! At 1/8 scale each 8x8 block becomes one pixel, the block's DC coefficient. A
//! progressive JPEG sends every block's DC first and the detail (AC coefficients)
//! afterwards, in scans that make up nearly all of the file and the decoding time.
//! libjpeg's buffered-image mode lets us stop once the DC scans are in and output
//! right then: the same picture a full 1/8 decode gives (at most the last DC bit short
//! when the encoder refines it in a later scan), for a fraction of the work.
//! The mozjpeg crate does not expose buffered-image mode, so this is raw FFI.

use std::ffi::c_int;

use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg_sys as jpeg;

use crate::error::{Error, Result};

// jpeg_consume_input's answers (jpeglib.h).
const JPEG_SUSPENDED: c_int = 0;
const JPEG_REACHED_EOI: c_int = 2;
const JPEG_SCAN_COMPLETED: c_int = 4;

/// Whether the frame header is progressive (SOF2, or SOF6/10/14 for the rarer codings).
pub fn is_progressive(bytes: &[u8]) -> bool {
    let mut at = 2;
    while at + 3 < bytes.len() && bytes[at] == 0xFF {
        match bytes[at + 1] {
            0xC2 | 0xC6 | 0xCA | 0xCE => return true,
            0xC0 | 0xC1 | 0xC3 | 0xC5 | 0xC7 | 0xC9 | 0xCB | 0xCD | 0xCF | 0xDA => return false,
            0xFF => at += 1,
            _ => at += 2 + usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
        }
    }
    false
}

/// Decodes the DC scans of an RGB (YCbCr) or gray progressive JPEG at 1/8 scale, or
/// `None` for colour spaces this path does not handle (CMYK goes the ordinary way).
pub fn decode_dc(bytes: &[u8]) -> Result<Option<DynamicImage>> {
    super::libjpeg::unwinding(|| decode_dc_unguarded(bytes))
}

/// libjpeg state, destroyed however decoding ends (errors unwind through it).
struct Decompressor {
    cinfo: Box<jpeg::jpeg_decompress_struct>,
    _errors: Box<jpeg::jpeg_error_mgr>,
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: created by jpeg_create_decompress in `new` and destroyed only here.
        unsafe { jpeg::jpeg_destroy_decompress(&mut self.cinfo) }
    }
}

impl Decompressor {
    fn new(bytes: &[u8]) -> Self {
        // SAFETY: both structs are plain C data that libjpeg initialises; the error
        // manager is boxed so its address stays valid for as long as cinfo points at it.
        unsafe {
            let mut errors = Box::new(super::libjpeg::strict_errors());
            let mut cinfo: Box<jpeg::jpeg_decompress_struct> = Box::new(std::mem::zeroed());
            cinfo.common.err = &mut *errors;
            jpeg::jpeg_create_decompress(&mut *cinfo);
            jpeg::jpeg_mem_src(&mut cinfo, bytes.as_ptr(), bytes.len() as _);
            Self {
                cinfo,
                _errors: errors,
            }
        }
    }
}

fn decode_dc_unguarded(bytes: &[u8]) -> Result<Option<DynamicImage>> {
    let mut decompressor = Decompressor::new(bytes);
    let cinfo = &mut *decompressor.cinfo;
    // SAFETY: every call follows libjpeg's documented buffered-image sequence on a
    // live decompressor; `bytes` outlives it; rows are written into a buffer sized
    // from output_width x output_components as libjpeg reports them.
    unsafe {
        jpeg::jpeg_read_header(cinfo, 1);
        let gray = match cinfo.jpeg_color_space {
            jpeg::J_COLOR_SPACE::JCS_GRAYSCALE => true,
            jpeg::J_COLOR_SPACE::JCS_YCbCr | jpeg::J_COLOR_SPACE::JCS_RGB => false,
            _ => return Ok(None),
        };
        cinfo.buffered_image = 1;
        cinfo.scale_num = 1;
        cinfo.scale_denom = 8;
        cinfo.do_block_smoothing = 0;
        cinfo.out_color_space = if gray {
            jpeg::J_COLOR_SPACE::JCS_GRAYSCALE
        } else {
            jpeg::J_COLOR_SPACE::JCS_RGB
        };
        jpeg::jpeg_start_decompress(cinfo);
        loop {
            match jpeg::jpeg_consume_input(cinfo) {
                JPEG_SUSPENDED => return Err(Error::undecodable("this jpeg is truncated")),
                JPEG_REACHED_EOI => break,
                JPEG_SCAN_COMPLETED if dc_complete(cinfo) => break,
                _ => {}
            }
        }
        jpeg::jpeg_start_output(cinfo, cinfo.input_scan_number);
        let (width, height) = (cinfo.output_width as usize, cinfo.output_height as usize);
        let row = width * cinfo.output_components as usize;
        let mut pixels = vec![0u8; row * height];
        while (cinfo.output_scanline as usize) < height {
            let mut line = pixels
                .as_mut_ptr()
                .add(cinfo.output_scanline as usize * row);
            jpeg::jpeg_read_scanlines(cinfo, &mut line, 1);
        }
        let (width, height) = (width as u32, height as u32);
        let image = if gray {
            GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8)
        } else {
            RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
        };
        Ok(image)
    }
}

/// Whether every component's DC coefficients have arrived (coef_bits[c][0] is the
/// precision so far, -1 before any).
unsafe fn dc_complete(cinfo: &jpeg::jpeg_decompress_struct) -> bool {
    let coef_bits = cinfo.coef_bits as *const [c_int; 64];
    (0..cinfo.num_components as usize).all(|c| (*coef_bits.add(c))[0] >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_jpegs_are_not_progressive() {
        let mut out = std::io::Cursor::new(Vec::new());
        DynamicImage::new_rgb8(16, 16)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        assert!(!is_progressive(out.get_ref()));
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xC2, 0x00, 0x04, 0x00, 0x00];
        bytes.extend_from_slice(&[0xFF, 0xD9]);
        assert!(is_progressive(&bytes));
        assert!(decode_dc(&bytes).is_err());
    }
}
