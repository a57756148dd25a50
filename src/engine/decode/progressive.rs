//! Progressive JPEGs at 1/8 scale from their DC scans alone.
//!
//! At 1/8 scale each 8x8 block becomes one pixel, the block's DC coefficient. A
//! progressive JPEG sends every block's DC first and the detail (AC coefficients)
//! afterwards, in scans that make up nearly all of the file and the decoding time.
//! So only the DC scans are decoded, here by our own entropy decoder (the Huffman
//! and bit-reading machinery of [`baseline`](super::baseline)): the AC scans are
//! stepped over with memchr, and the DC refinement scans that libjpeg's default
//! progression sends last are read too, so the picture is libjpeg's full 1/8 decode
//! (for 4:2:0 chroma, libjpeg's 2x2 decode less its AC detail). Memory is one
//! coefficient per block, about 1 MB for a 12 MP 4:2:0 photo, where libjpeg's
//! buffered-image mode keeps every coefficient of the image (two bytes each, 36 MB)
//! before it can output anything.
//!
//! Layouts our decoder does not take (arithmetic coding, 12-bit samples, CMYK, odd
//! sampling) go to libjpeg's buffered-image mode, stopped once the DC scans are in.
//! The mozjpeg crate does not expose that mode, so that part is raw FFI.

use std::ffi::c_int;

use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg_sys as jpeg;

use super::baseline::{
    be16, dc_sample, parse_sof, planes_to_image, Bits, DcTable, FrameComponent, Plane, Tables,
};
use crate::engine::probe::complete::next_marker;
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
    if let Some(image) = decode_dc_scans(bytes) {
        return Ok(Some(image));
    }
    super::libjpeg::unwinding(|| decode_dc_unguarded(bytes))
}

/// Our decode of every DC scan, or `None` when the layout is not one
/// [`parse_sof`] takes or anything in the data is unexpected.
fn decode_dc_scans(bytes: &[u8]) -> Option<DynamicImage> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut tables = Tables::default();
    let mut frame: Option<DcFrame> = None;
    let mut at = 2;
    loop {
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        match marker {
            0xFF => {
                at += 1;
                continue;
            }
            0xD9 => break,
            0x01 | 0xD0..=0xD8 => return None,
            _ => {}
        }
        let length = usize::from(be16(bytes.get(at + 2..)?)?);
        let body = bytes.get(at + 4..at + 2 + length)?;
        at += 2 + length;
        if tables.read(marker, body)? {
            continue;
        }
        match marker {
            0xC2 if frame.is_none() => {
                let (width, height, components) = parse_sof(body)?;
                if tables.stores_rgb(&components) {
                    return None;
                }
                frame = Some(DcFrame::new((width, height), components));
            }
            // Other frame types, a second frame, arithmetic-coding conditioning.
            0xC0..=0xCF => return None,
            0xDA => at = frame.as_mut()?.scan(bytes, body, at, &tables)?,
            _ => {}
        }
    }
    frame?.to_image(&tables.quantisers)
}

/// A progressive frame and the DC coefficients its scans have sent so far.
struct DcFrame {
    size: (usize, usize),
    /// (id, blocks per MCU across, down, quantisation table); a lone component's MCU
    /// is one block, whatever it declares.
    components: Vec<FrameComponent>,
    /// MCUs across and down.
    mcus: (usize, usize),
    /// Per component, the DC coefficient of every block of the MCU-padded grid.
    coefficients: Vec<Vec<i32>>,
    /// Per component, whether its first DC scan has been read.
    started: Vec<bool>,
}

impl DcFrame {
    fn new(size: (usize, usize), mut components: Vec<FrameComponent>) -> DcFrame {
        if let [lone] = components.as_mut_slice() {
            (lone.1, lone.2) = (1, 1);
        }
        let (h, v) = (components[0].1, components[0].2);
        let mcus = (size.0.div_ceil(8 * h), size.1.div_ceil(8 * v));
        let coefficients = components
            .iter()
            .map(|c| vec![0; mcus.0 * c.1 * mcus.1 * c.2])
            .collect();
        let started = vec![false; components.len()];
        DcFrame {
            size,
            components,
            mcus,
            coefficients,
            started,
        }
    }

    /// Reads one scan whose header is `header` and whose data starts at `at`, and
    /// returns where the next marker is. AC scans are only stepped over.
    fn scan(&mut self, bytes: &[u8], header: &[u8], at: usize, tables: &Tables) -> Option<usize> {
        let restart_interval = tables.restart_interval;
        let count = usize::from(*header.first()?);
        let [spectral_start, spectral_end, approximation] =
            header.get(1 + 2 * count..4 + 2 * count)?.try_into().ok()?;
        if spectral_start != 0 {
            return next_marker(bytes, at);
        }
        if spectral_end != 0 || count == 0 {
            return None;
        }
        let (refining, shift) = (approximation >> 4 != 0, approximation & 15);
        // Each component of the scan: its index in the frame and, for a first scan,
        // its DC table.
        let scanned: Vec<(usize, Option<DcTable>)> = header[1..1 + 2 * count]
            .chunks(2)
            .map(|pair| {
                let index = self.components.iter().position(|c| c.0 == pair[0])?;
                let table = match refining {
                    true => None,
                    false => Some(DcTable::new(
                        tables.dc_codes.get(usize::from(pair[1] >> 4))?.as_ref()?,
                    )),
                };
                Some((index, table))
            })
            .collect::<Option<_>>()?;
        // An interleaved scan goes MCU by MCU; a lone component's scan goes block by
        // block over that component alone, without the MCU padding.
        let interleaved = count > 1;
        let (across, down) = match interleaved {
            true => self.mcus,
            false => {
                let (_, h, v, _) = self.components[scanned[0].0];
                let (max_h, max_v) = (self.components[0].1, self.components[0].2);
                (
                    (self.size.0 * h).div_ceil(max_h).div_ceil(8),
                    (self.size.1 * v).div_ceil(max_v).div_ceil(8),
                )
            }
        };
        let mut bits = Bits::new(bytes, at);
        let mut predictions = vec![0i32; count];
        let mut restarts = 0u8;
        let mut units_left_in_interval = restart_interval;
        for unit_y in 0..down {
            for unit_x in 0..across {
                if restart_interval > 0 {
                    if units_left_in_interval == 0 {
                        bits = bits.restart(restarts)?;
                        restarts = (restarts + 1) % 8;
                        predictions.fill(0);
                        units_left_in_interval = restart_interval;
                    }
                    units_left_in_interval -= 1;
                }
                for ((index, table), prediction) in scanned.iter().zip(&mut predictions) {
                    let (_, h, v, _) = self.components[*index];
                    let stride = self.mcus.0 * h;
                    let (h, v) = if interleaved { (h, v) } else { (1, 1) };
                    for block_y in unit_y * v..(unit_y + 1) * v {
                        for block_x in unit_x * h..(unit_x + 1) * h {
                            let coefficient =
                                self.coefficients[*index].get_mut(block_y * stride + block_x)?;
                            match table {
                                Some(table) => {
                                    *prediction =
                                        prediction.wrapping_add(bits.dc_difference(table)?);
                                    *coefficient = *prediction << shift;
                                }
                                None if bits.bit() => *coefficient |= 1 << shift,
                                None => {}
                            }
                        }
                    }
                }
            }
        }
        if !bits.clean_end() {
            return None;
        }
        if !refining {
            for (index, _) in &scanned {
                self.started[*index] = true;
            }
        }
        next_marker(bytes, bits.resume_at())
    }

    /// The 1/8-scale image, once every component has had its first DC scan.
    fn to_image(&self, quantisers: &[Option<[i64; 64]>; 4]) -> Option<DynamicImage> {
        if !self.started.iter().all(|&started| started) {
            return None;
        }
        let luma = (self.components[0].1, self.components[0].2);
        // As libjpeg does at 1/8, 4:2:0 chroma is decoded at 2x2 per block (here
        // without AC detail, so four equal samples) rather than upsampled.
        let chroma_scale = if luma == (2, 2) { 2 } else { 1 };
        let planes = self
            .components
            .iter()
            .zip(&self.coefficients)
            .enumerate()
            .map(|(i, (&(_, h, v, table), coefficients))| {
                let quantiser = (*quantisers.get(table)?)?[0];
                let scale = if i > 0 { chroma_scale } else { 1 };
                let blocks_across = self.mcus.0 * h;
                let stride = blocks_across * scale;
                let mut samples = vec![0; stride * self.mcus.1 * v * scale];
                for (block, &coefficient) in coefficients.iter().enumerate() {
                    let sample = dc_sample(coefficient, quantiser);
                    let (x, y) = (block % blocks_across * scale, block / blocks_across * scale);
                    for row in y..y + scale {
                        samples[row * stride + x..][..scale].fill(sample);
                    }
                }
                Some(Plane { samples, stride })
            })
            .collect::<Option<Vec<Plane>>>()?;
        Some(planes_to_image(self.size, luma, chroma_scale, &planes))
    }
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
    if coef_bits.is_null() {
        return false; // not progressive after all: read on to the end
    }
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

    use crate::engine::decode::baseline::tests::{fixture, libjpeg_eighth, noisy_image};
    use mozjpeg::{ColorSpace, Compress};

    /// A progressive JPEG with chroma blocks covering `chroma` pixels: libjpeg's
    /// default progression (DC refined in a late scan), or mozjpeg's optimised one.
    /// (Colour files whose DC comes a component per scan take the same path as the
    /// gray fixture's lone-component scans.)
    fn progressive(image: &image::RgbImage, chroma: (u8, u8), optimised: bool) -> Vec<u8> {
        let mut compress = Compress::new(ColorSpace::JCS_RGB);
        compress.set_size(image.width() as usize, image.height() as usize);
        if !optimised {
            compress.set_fastest_defaults();
        }
        compress.set_optimize_scans(optimised);
        compress.set_quality(85.0);
        compress.set_chroma_sampling_pixel_sizes(chroma, chroma);
        compress.set_progressive_mode();
        let mut started = compress.start_compress(Vec::new()).unwrap();
        started.write_scanlines(image.as_raw()).unwrap();
        started.finish().unwrap()
    }

    /// How many samples of our DC decode differ from libjpeg's full 1/8 decode, and
    /// by at most how much.
    fn compare_with_libjpeg(bytes: &[u8], what: &str) -> (usize, u8) {
        let ours = decode_dc_scans(bytes).unwrap_or_else(|| panic!("{what}: declined"));
        let theirs = libjpeg_eighth(bytes);
        assert_eq!(ours.color(), theirs.color(), "{what}");
        let size = |image: &DynamicImage| (image.width(), image.height());
        assert_eq!(size(&ours), size(&theirs), "{what}");
        let differences = ours
            .as_bytes()
            .iter()
            .zip(theirs.as_bytes())
            .map(|(a, b)| a.abs_diff(*b))
            .filter(|&d| d > 0);
        differences.fold((0, 0), |(count, max), d| (count + 1, max.max(d)))
    }

    #[test]
    fn dc_scans_give_libjpegs_one_eighth_decode() {
        let photo = image::load_from_memory(&fixture("baseline-restart-420.jpg"))
            .unwrap()
            .to_rgb8();
        for (name, image) in [("photo", photo), ("noise", noisy_image())] {
            for optimised in [false, true] {
                // Without 2x2 chroma, libjpeg's 1/8 decode is the DC alone: exact.
                for chroma in [(1, 1), (2, 1), (1, 2)] {
                    let bytes = progressive(&image, chroma, optimised);
                    let what = format!("{name} {chroma:?} optimised {optimised}");
                    assert_eq!(compare_with_libjpeg(&bytes, &what), (0, 0), "{what}");
                }
            }
        }
        assert_eq!(
            compare_with_libjpeg(&fixture("progressive-restart-gray.jpg"), "gray"),
            (0, 0)
        );
        // 4:2:0 chroma: libjpeg adds a 2x2 decode's AC detail, which we leave out.
        let (_, max) = compare_with_libjpeg(&fixture("progressive-restart-420.jpg"), "4:2:0");
        assert!(max <= 24, "4:2:0 differs by up to {max}");
    }

    #[test]
    fn cut_or_corrupt_scans_are_declined_without_panics() {
        for name in [
            "progressive-restart-420.jpg",
            "progressive-restart-gray.jpg",
        ] {
            let bytes = fixture(name);
            assert!(decode_dc_scans(&bytes).is_some(), "{name}");
            for cut in (600..bytes.len() - 4).step_by(97) {
                // Cut after the DC scans, the picture is still whole at 1/8; before,
                // it must be declined. Either way, no panic.
                let _ = decode_dc_scans(&bytes[..cut]);
            }
            assert!(
                decode_dc_scans(&bytes[..bytes.len() / 8]).is_none(),
                "{name}"
            );
            let mut declined = 0;
            for at in (400..bytes.len() - 2).step_by(13) {
                let mut corrupt = bytes.clone();
                corrupt[at] ^= 0xFF;
                declined += usize::from(decode_dc_scans(&corrupt).is_none());
            }
            assert!(declined > 0, "{name}: some corruption must be caught");
        }
    }

    #[test]
    fn other_layouts_fall_back_to_libjpeg() {
        assert!(decode_dc_scans(&fixture("baseline-restart-420.jpg")).is_none());
        assert!(decode_dc_scans(&fixture("pil_sample_cmyk.jpg")).is_none());
        // The fallback still decodes what ours declines: a 4:1:1 progressive file.
        let bytes = progressive(&noisy_image(), (4, 1), false);
        assert!(decode_dc_scans(&bytes).is_none());
        assert!(decode_dc(&bytes).unwrap().is_some());
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xC2, 0x00, 0x04, 0x00, 0x00];
        bytes.extend_from_slice(&[0xFF, 0xD9]);
        assert!(is_progressive(&bytes));
        assert!(decode_dc(&bytes).is_err());
    }
}
