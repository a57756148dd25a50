//! Baseline JPEGs at 1/8 scale from their DC coefficients, the AC ones skipped.
//!
//! At 1/8 scale each 8x8 block becomes one pixel, the block's DC coefficient. A
//! baseline (sequential) JPEG interleaves every block's DC with its 63 AC
//! coefficients, so all of the entropy-coded data still has to be read, but the AC
//! coefficients need not be decoded, only stepped over. libjpeg decodes each AC symbol
//! in two dependent steps (its Huffman code, then its extra bits), stores it, zeroes
//! every block and calls an IDCT per block. Here one lookup on the next 12 bits steps
//! over a whole symbol, code and extra bits together, with the bits kept in a 64-bit
//! register. Baseline photos are most of what a web service stores, and this decode is
//! where libjpeg-based peers (Pillow, so thumbor) spend their time on a thumbnail.
//!
//! The pixels are libjpeg's 1/8 decode (the tests compare against mozjpeg): its
//! rounding of the DC, its box upsampling of chroma at this scale, its fixed-point
//! YCbCr to RGB, bit for bit. For 4:2:0, libjpeg decodes chroma with a 2x2 inverse DCT
//! instead of upsampling it, from every AC coefficient; ours does the same from the
//! two that carry nearly all of it, the first horizontal and vertical ones, which one
//! table lookup usually decodes, and steps over the rest as it does for luma. The
//! chroma is then libjpeg's where a block has no other coefficients, and on a photo
//! within two levels of it, 0.4 on average (DECISIONS, "4:2:0 chroma from two
//! coefficients"); luma is libjpeg's always. Only the common layouts take this path:
//! 8-bit Huffman baseline in one interleaved scan, gray or YCbCr with chroma at full or
//! half resolution. Anything else, and anything unexpected in the data (an invalid code, a
//! missing restart marker, a scan that stops early), returns `None`, and libjpeg
//! decodes the file and owns the error reporting.

use std::cell::RefCell;
use std::rc::Rc;
use std::thread::LocalKey;

use image::{DynamicImage, GrayImage, RgbImage};

use crate::engine::probe::complete::next_marker;

/// Decodes a baseline gray or YCbCr JPEG at 1/8 scale (each side rounded up), or
/// `None` when the layout is not one this path handles, the data is not clean, or the
/// scan does not end at EOI (a file cut short after its scan).
pub fn decode_dc(bytes: &[u8]) -> Option<DynamicImage> {
    let frame = Frame::parse(bytes)?;
    let planes = frame.decode_planes(bytes)?;
    Some(frame.to_image(&planes))
}

/// Bits of lookahead of the AC tables: 4096 entries of each fit in L1, and most
/// codes are shorter.
const AC_LOOKUP_BITS: u32 = 12;
/// Bits of lookahead of the DC table: its codes are short, and with their extra bits
/// most fit in 11.
const DC_LOOKUP_BITS: u32 = 11;
/// Skip-table lookups a refill of the bit register (to 56 bits or more) pays for.
/// Three at a time, the skip loop never asks how many bits are left, a branch on the
/// data that the CPU mispredicts: 5-8% of a thumbnail, measured.
const SKIPS_PER_REFILL: u32 = 3;
/// The most bits one skip-table entry may take, so that three fit in one refill.
/// Longer (a short code with a large value) is rare and takes the slow path.
const LONGEST_SKIP: u32 = 56 / SKIPS_PER_REFILL;
/// How far an end of block steps in a skip-table entry, where it is always the last
/// symbol: from below 64, such an entry lands at 160-223. Symbols that ran on past
/// the block land at 65-159 (at most six symbols of at most 16 steps after 63), or at
/// 224 and up with an end of block among them, so the three never meet ([`ends_block`]).
const END_OF_BLOCK_STEP: u32 = 160;
/// The skip-table entry for bits that start no symbol it can skip: no bits, and a
/// step that no block ends at.
const MISSING_SKIP: u16 = 255 << 8;

/// What the headers before the first scan say, for the layouts this path handles.
struct Frame {
    width: usize,
    height: usize,
    /// One or three components, in scan order, luma first.
    components: Vec<Component>,
    /// MCUs between restart markers (0: none).
    restart_interval: usize,
    /// Offset of the first byte of entropy-coded data.
    scan_start: usize,
}

struct Component {
    /// Blocks per MCU across and down (1 or 2 for luma, 1 for chroma and gray).
    h: usize,
    v: usize,
    /// Pixels per block side: 1, or 2 for 4:2:0 chroma, which libjpeg decodes at 2x2
    /// rather than upsample it from 1x1 (and so does ours, from fewer coefficients).
    scale: usize,
    /// The component's quantisation table, in natural (row-major) order.
    quantisers: [i64; 64],
    dc_table: Rc<DcTable>,
    ac_table: Rc<AcTable>,
}

/// One 1/8-scale plane per component: a byte per block, `stride` blocks per row.
pub(super) struct Plane {
    pub samples: Vec<u8>,
    pub stride: usize,
}

/// A component as the frame header declares it: id, sampling factors, quant table.
pub(super) type FrameComponent = (u8, usize, usize, usize);

impl Frame {
    /// Walks the marker segments up to the first scan.
    fn parse(bytes: &[u8]) -> Option<Frame> {
        if !bytes.starts_with(&[0xFF, 0xD8]) {
            return None;
        }
        let mut tables = Tables::default();
        let mut size_and_components = None;
        let mut at = 2;
        loop {
            if *bytes.get(at)? != 0xFF {
                return None; // junk between segments: libjpeg resynchronises, we don't
            }
            let marker = *bytes.get(at + 1)?;
            if marker == 0xFF {
                at += 1;
                continue;
            }
            let length = usize::from(be16(bytes.get(at + 2..)?)?);
            let body = bytes.get(at + 4..at + 2 + length)?;
            if tables.read(marker, body)? {
                at += 2 + length;
                continue;
            }
            match marker {
                0xC0 | 0xC1 => size_and_components = Some(parse_sof(body)?),
                // Progressive, lossless, hierarchical and arithmetic-coded frames, and
                // markers that have no place before the first scan.
                0xC2 | 0xC3 | 0xC5..=0xCF | 0x01 | 0xD0..=0xD9 => return None,
                0xDA => {
                    let (width, height, declared) = size_and_components?;
                    if tables.stores_rgb(&declared) {
                        return None;
                    }
                    let components = parse_sos(body, &declared, &tables)?;
                    return Some(Frame {
                        width,
                        height,
                        components,
                        restart_interval: tables.restart_interval,
                        scan_start: at + 2 + length,
                    });
                }
                _ => {}
            }
            at += 2 + length;
        }
    }

    /// Entropy-decodes the scan into one 1/8-scale plane per component, with BMI2
    /// where the CPU has it.
    fn decode_planes(&self, bytes: &[u8]) -> Option<Vec<Plane>> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("bmi2") {
            // SAFETY: the CPU has BMI2, which is all the function requires.
            return unsafe { self.decode_planes_bmi2(bytes) };
        }
        self.decode_planes_portable(bytes)
    }

    /// The same code compiled for BMI2 (every x86-64 CPU since 2013), whose
    /// one-instruction variable shift (`shlx`) shortens the chain of dependent
    /// instructions each symbol waits on: 3% of a thumbnail of the photo, 0-3% of the
    /// camera photo's, measured. The binary itself stays baseline x86-64.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "bmi1,bmi2,lzcnt")]
    unsafe fn decode_planes_bmi2(&self, bytes: &[u8]) -> Option<Vec<Plane>> {
        self.decode_planes_portable(bytes)
    }

    /// The decode itself. Everything it calls in the symbol loops is always inlined,
    /// so that the BMI2 copy is BMI2 throughout.
    #[inline(always)]
    fn decode_planes_portable(&self, bytes: &[u8]) -> Option<Vec<Plane>> {
        let (mcu_width, mcu_height) = (8 * self.components[0].h, 8 * self.components[0].v);
        let (mcus_across, mcus_down) = (
            self.width.div_ceil(mcu_width),
            self.height.div_ceil(mcu_height),
        );
        let mut planes: Vec<Plane> = self
            .components
            .iter()
            .map(|c| Plane {
                samples: vec![0; mcus_across * c.h * c.scale * mcus_down * c.v * c.scale],
                stride: mcus_across * c.h * c.scale,
            })
            .collect();
        let mut bits = Bits::new(bytes, self.scan_start);
        let mut predictions = [0i32; 3];
        let mut restarts = 0u8;
        let mut mcus_left_in_interval = self.restart_interval;
        for mcu_y in 0..mcus_down {
            for mcu_x in 0..mcus_across {
                if self.restart_interval > 0 {
                    if mcus_left_in_interval == 0 {
                        bits = bits.restart(restarts)?;
                        restarts = (restarts + 1) % 8;
                        predictions = [0; 3];
                        mcus_left_in_interval = self.restart_interval;
                    }
                    mcus_left_in_interval -= 1;
                }
                for ((component, plane), prediction) in self
                    .components
                    .iter()
                    .zip(&mut planes)
                    .zip(&mut predictions)
                {
                    for block_y in mcu_y * component.v..(mcu_y + 1) * component.v {
                        for block_x in mcu_x * component.h..(mcu_x + 1) * component.h {
                            *prediction =
                                prediction.wrapping_add(bits.dc_difference(&component.dc_table)?);
                            if component.scale == 1 {
                                plane.samples[block_y * plane.stride + block_x] =
                                    dc_sample(*prediction, component.quantisers[0]);
                                bits.skip_ac(&component.ac_table, 1)?;
                                continue;
                            }
                            let ([right, down], position) =
                                bits.low_ac_coefficients(&component.ac_table)?;
                            if position < 64 {
                                bits.skip_ac(&component.ac_table, position)?;
                            }
                            let [top, bottom] =
                                idct_2x2([*prediction, right, down], &component.quantisers);
                            let at = 2 * block_y * plane.stride + 2 * block_x;
                            plane.samples[at..at + 2].copy_from_slice(&top);
                            plane.samples[at + plane.stride..at + plane.stride + 2]
                                .copy_from_slice(&bottom);
                        }
                    }
                }
            }
        }
        // Only a scan that ends at EOI proves the file whole (see `jpeg::decode`).
        let ends_at_eoi =
            next_marker(bytes, bits.resume_at()).is_some_and(|at| bytes.get(at + 1) == Some(&0xD9));
        (bits.clean_end() && ends_at_eoi).then_some(planes)
    }

    fn to_image(&self, planes: &[Plane]) -> DynamicImage {
        let luma = &self.components[0];
        let chroma_scale = self.components.get(1).map_or(1, |c| c.scale);
        planes_to_image(
            (self.width, self.height),
            (luma.h, luma.v),
            chroma_scale,
            planes,
        )
    }
}

/// What the table and flag segments before (and between) scans have set up.
#[derive(Default)]
pub(super) struct Tables {
    /// Quantisation tables, in natural (row-major) order.
    pub quantisers: [Option<[i64; 64]>; 4],
    pub dc_codes: [Option<Codes>; 4],
    pub ac_codes: [Option<Codes>; 4],
    /// MCUs between restart markers (0: none).
    pub restart_interval: usize,
    jfif: bool,
    adobe_transform: Option<u8>,
}

impl Tables {
    /// Takes in a DHT, DQT, DRI, JFIF or Adobe segment: `Some(true)` if `marker` was
    /// one of those, `Some(false)` if not, `None` if it was malformed.
    pub(super) fn read(&mut self, marker: u8, body: &[u8]) -> Option<bool> {
        match marker {
            0xC4 => parse_dht(body, &mut self.dc_codes, &mut self.ac_codes)?,
            0xDB => parse_dqt(body, &mut self.quantisers)?,
            0xDD => self.restart_interval = usize::from(be16(body)?),
            0xE0 => self.jfif |= body.starts_with(b"JFIF\0"),
            0xEE if body.starts_with(b"Adobe") => self.adobe_transform = Some(*body.get(11)?),
            _ => return Some(false),
        }
        Some(true)
    }

    /// Whether a frame's three components are RGB, not YCbCr: libjpeg reads them as
    /// YCbCr unless an Adobe marker or, without JFIF, the ids R, G, B say otherwise.
    pub(super) fn stores_rgb(&self, declared: &[FrameComponent]) -> bool {
        let ids: Vec<u8> = declared.iter().map(|c| c.0).collect();
        let rgb = match self.adobe_transform {
            Some(transform) => transform != 1,
            None => !self.jfif && ids == b"RGB",
        };
        ids.len() == 3 && rgb
    }
}

/// The 1/8-scale image of a `size` frame from its planes: chroma upsampled by
/// repeating it (libjpeg's box filter at 1/8 scale; chroma decoded at `chroma_scale`
/// 2 is already full size) and converted to RGB; a single plane is gray.
pub(super) fn planes_to_image(
    size: (usize, usize),
    luma_sampling: (usize, usize),
    chroma_scale: usize,
    planes: &[Plane],
) -> DynamicImage {
    let (width, height) = (size.0.div_ceil(8), size.1.div_ceil(8));
    let luma = &planes[0];
    if planes.len() == 1 {
        let samples = (0..height)
            .flat_map(|y| &luma.samples[y * luma.stride..y * luma.stride + width])
            .copied()
            .collect();
        let image = GrayImage::from_raw(width as u32, height as u32, samples);
        return DynamicImage::ImageLuma8(image.expect("a plane covers the image"));
    }
    let (h, v) = (
        luma_sampling.0 / chroma_scale,
        luma_sampling.1 / chroma_scale,
    );
    let (cb, cr) = (&planes[1], &planes[2]);
    let mut samples = vec![0; width * height * 3];
    for (y, rgb_row) in samples.chunks_exact_mut(width * 3).enumerate() {
        let luma_row = &luma.samples[y * luma.stride..][..width];
        let chroma_at = (y / v) * cb.stride;
        let chroma_rows = (&cb.samples[chroma_at..], &cr.samples[chroma_at..]);
        match h {
            1 => row_to_rgb::<1>(luma_row, chroma_rows, rgb_row),
            _ => row_to_rgb::<2>(luma_row, chroma_rows, rgb_row),
        }
    }
    let image = RgbImage::from_raw(width as u32, height as u32, samples);
    DynamicImage::ImageRgb8(image.expect("planes cover the image"))
}

/// One row of pixels to RGB, with chroma across at 1/`H` of luma: `H` a constant so
/// that finding a pixel's chroma is a shift, not a division.
///
/// Sixteen pixels at a time, in fixed-size arrays: chroma widened to one sample a
/// pixel first, then each channel computed lane by lane, which the compiler turns
/// into vector code, then interleaved. Pixel by pixel, this was 2.5% of a camera
/// photo's thumbnail; now 1%.
fn row_to_rgb<const H: usize>(luma: &[u8], (cb, cr): (&[u8], &[u8]), rgb: &mut [u8]) {
    const CHUNK: usize = 16;
    let whole = luma.len() / CHUNK * CHUNK;
    for (start, rgb) in (0..whole)
        .step_by(CHUNK)
        .zip(rgb.chunks_exact_mut(3 * CHUNK))
    {
        let luma: [u8; CHUNK] = luma[start..start + CHUNK].try_into().expect("a chunk");
        let (cb, cr) = (&cb[start / H..][..CHUNK / H], &cr[start / H..][..CHUNK / H]);
        let (cb, cr): ([u8; CHUNK], [u8; CHUNK]) = (
            std::array::from_fn(|i| cb[i / H]),
            std::array::from_fn(|i| cr[i / H]),
        );
        let (mut red, mut green, mut blue) = ([0u8; CHUNK], [0u8; CHUNK], [0u8; CHUNK]);
        for i in 0..CHUNK {
            [red[i], green[i], blue[i]] = ycc_to_rgb(luma[i], cb[i], cr[i]);
        }
        for i in 0..CHUNK {
            rgb[3 * i] = red[i];
            rgb[3 * i + 1] = green[i];
            rgb[3 * i + 2] = blue[i];
        }
    }
    for x in whole..luma.len() {
        rgb[3 * x..3 * x + 3].copy_from_slice(&ycc_to_rgb(luma[x], cb[x / H], cr[x / H]));
    }
}

/// SOF0/SOF1/SOF2 (the body is the same): 8-bit samples, and one (gray) or three
/// components with the chroma sampled at 1 or 1/2 of luma each way.
pub(super) fn parse_sof(body: &[u8]) -> Option<(usize, usize, Vec<FrameComponent>)> {
    let (precision, height, width) = (*body.first()?, be16(body.get(1..)?)?, be16(body.get(3..)?)?);
    let count = usize::from(*body.get(5)?);
    let components: Vec<FrameComponent> = (0..count)
        .map(|i| {
            let entry = body.get(6 + 3 * i..9 + 3 * i)?;
            let (h, v) = (usize::from(entry[1] >> 4), usize::from(entry[1] & 15));
            Some((entry[0], h, v, usize::from(entry[2])))
        })
        .collect::<Option<_>>()?;
    let sampling_ok = match components.as_slice() {
        // A single component's scan is one block per MCU, whatever it declares.
        [_] => true,
        [luma, cb, cr] => {
            (1..=2).contains(&luma.1)
                && (1..=2).contains(&luma.2)
                && [cb, cr].iter().all(|c| c.1 == 1 && c.2 == 1)
        }
        _ => false,
    };
    (precision == 8 && width > 0 && height > 0 && sampling_ok).then_some((
        usize::from(width),
        usize::from(height),
        components,
    ))
}

/// DQT: quantisation tables of 8 or 16-bit values, stored in zigzag order.
fn parse_dqt(mut body: &[u8], quantisers: &mut [Option<[i64; 64]>; 4]) -> Option<()> {
    while let Some(&precision_and_id) = body.first() {
        let id = usize::from(precision_and_id & 15);
        let wide = match precision_and_id >> 4 {
            0 => false,
            1 => true,
            _ => return None,
        };
        let size = if wide { 128 } else { 64 };
        let values = body.get(1..1 + size)?;
        let mut table = [0; 64];
        for (zigzag, &natural) in ZIGZAG_TO_NATURAL.iter().enumerate() {
            table[natural] = match wide {
                true => i64::from(be16(&values[2 * zigzag..])?),
                false => i64::from(values[zigzag]),
            };
        }
        *quantisers.get_mut(id)? = Some(table);
        body = &body[1 + size..];
    }
    Some(())
}

/// Where the k-th coefficient of the zigzag scan sits in a row-major 8x8 block.
const ZIGZAG_TO_NATURAL: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// DHT: one or more Huffman tables, DC (class 0) or AC (class 1).
fn parse_dht(
    mut body: &[u8],
    dc_codes: &mut [Option<Codes>; 4],
    ac_codes: &mut [Option<Codes>; 4],
) -> Option<()> {
    while let Some(&class_and_id) = body.first() {
        let counts: [u8; 16] = body.get(1..17)?.try_into().ok()?;
        let total: usize = counts.iter().map(|&n| usize::from(n)).sum();
        let values = body.get(17..17 + total)?;
        let codes = Some(Codes::new(counts, values)?);
        let id = usize::from(class_and_id & 15);
        match class_and_id >> 4 {
            0 => *dc_codes.get_mut(id)? = codes,
            1 => *ac_codes.get_mut(id)? = codes,
            _ => return None,
        }
        body = &body[17 + total..];
    }
    Some(())
}

/// SOS: the first scan must hold every component, in frame order, as a baseline scan
/// does (spectral selection 0..63, no successive approximation).
fn parse_sos(body: &[u8], declared: &[FrameComponent], tables: &Tables) -> Option<Vec<Component>> {
    let Tables {
        quantisers,
        dc_codes,
        ac_codes,
        ..
    } = tables;
    let count = usize::from(*body.first()?);
    if count != declared.len() || body.get(1 + 2 * count..4 + 2 * count)? != [0, 63, 0] {
        return None;
    }
    let single = declared.len() == 1;
    let four_two_zero = declared
        .first()
        .is_some_and(|luma| (luma.1, luma.2) == (2, 2));
    declared
        .iter()
        .enumerate()
        .map(|(i, &(id, h, v, quant_table))| {
            let (scan_id, tables) = (body[1 + 2 * i], body[2 + 2 * i]);
            let (dc, ac) = (usize::from(tables >> 4), usize::from(tables & 15));
            let dc_codes = dc_codes.get(dc)?.as_ref()?;
            let ac_codes = ac_codes.get(ac)?.as_ref()?;
            // Only 4:2:0 chroma reads the block-start table; a table luma shares with
            // it is built again with one.
            let scale = if four_two_zero && i > 0 { 2 } else { 1 };
            let dc_table = built(&BUILT_DC_TABLES, dc_codes, false, || DcTable::new(dc_codes));
            let ac_table = built(&BUILT_AC_TABLES, ac_codes, scale == 2, || {
                AcTable::new(ac_codes, scale == 2)
            });
            (scan_id == id).then_some(Component {
                h: if single { 1 } else { h },
                v: if single { 1 } else { v },
                scale,
                quantisers: (*quantisers.get(quant_table)?)?,
                dc_table,
                ac_table,
            })
        })
        .collect()
}

/// Lookup tables built lately on this thread, most recent first, with the codes (and
/// the variant) they were built from. Building the tables of a photo's scan took 2%
/// of its thumbnail, and tables repeat: a camera writes the same ones into every
/// photo, one image's sizes are often rendered one after another, and Cb and Cr share
/// theirs. Transforms run on long-lived worker threads, so the tables stay warm.
type BuiltTables<T> = RefCell<Vec<(Codes, bool, Rc<T>)>>;

/// Lookup tables kept per thread, of each kind: each AC table with its block-start
/// table is about 40 KB.
const BUILT_TABLES_KEPT: usize = 8;

thread_local! {
    static BUILT_DC_TABLES: BuiltTables<DcTable> = const { RefCell::new(Vec::new()) };
    static BUILT_AC_TABLES: BuiltTables<AcTable> = const { RefCell::new(Vec::new()) };
}

/// The table for `codes` (and `variant`) from `cache`, else `build` it and keep it.
fn built<T>(
    cache: &'static LocalKey<BuiltTables<T>>,
    codes: &Codes,
    variant: bool,
    build: impl FnOnce() -> T,
) -> Rc<T> {
    cache.with_borrow_mut(|kept| {
        let found = kept.iter().position(|(kept_codes, kept_variant, _)| {
            *kept_variant == variant && kept_codes == codes
        });
        let entry = match found {
            Some(index) => kept.remove(index),
            None => (codes.clone(), variant, Rc::new(build())),
        };
        let table = Rc::clone(&entry.2);
        kept.insert(0, entry);
        kept.truncate(BUILT_TABLES_KEPT);
        table
    })
}

pub(super) fn be16(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// libjpeg's 1x1 inverse DCT: an eighth of the dequantised DC, rounded, level-shifted
/// and clamped. The coefficient is stored as 16 bits, as libjpeg's JCOEF is.
pub(super) fn dc_sample(prediction: i32, quantiser: i64) -> u8 {
    let coefficient = i64::from(prediction as i16);
    ((coefficient * quantiser + 4) >> 3)
        .saturating_add(128)
        .clamp(0, 255) as u8
}

/// libjpeg's 2x2 inverse DCT (jidctred.c) of the DC and the first horizontal and
/// vertical coefficients (natural 0, 1 and 8). libjpeg's also weighs rows and
/// columns 3, 5 and 7 (a third of the first's weight and less) and the diagonal
/// (1, 1); in 4:2:0 chroma, quantised coarsely, those are nearly always zero, and
/// leaving them out measured no loss of PSNR against a full-size Lanczos reference.
/// The coefficients are stored as 16 bits (JCOEF).
#[inline(always)]
fn idct_2x2([dc, right, down]: [i32; 3], quantisers: &[i64; 64]) -> [[u8; 2]; 2] {
    const CONST_BITS: u32 = 13;
    const PASS1_BITS: u32 = 2;
    /// FIX(3.624509785) = round(3.624509785 * 2^13): the weight of row or column 1.
    const TAP_1: i64 = 29692;
    let dequantised = |value: i32, at: usize| i64::from(value as i16) * quantisers[at];
    let descale = |value: i64, bits: u32| (value + (1 << (bits - 1))) >> bits;
    let (dc, right, down) = (
        dequantised(dc, 0),
        dequantised(right, 1),
        dequantised(down, 8),
    );
    // Columns 0 and 1, top and bottom, descaled as libjpeg's first pass does.
    let first_pass = |value: i64| descale(value, CONST_BITS - PASS1_BITS + 2);
    let (even, odd) = (dc << (CONST_BITS + 2), down * TAP_1);
    let left = [first_pass(even + odd), first_pass(even - odd)];
    let odd = first_pass(right << (CONST_BITS + 2)) * TAP_1;
    let sample =
        |value: i64| (descale(value, CONST_BITS + PASS1_BITS + 3 + 2) + 128).clamp(0, 255) as u8;
    // Row by row, not through `array::map`, which was not always inlined (3% of a
    // thumbnail).
    let row = |even: i64| {
        [
            sample((even << (CONST_BITS + 2)) + odd),
            sample((even << (CONST_BITS + 2)) - odd),
        ]
    };
    [row(left[0]), row(left[1])]
}

/// libjpeg's YCbCr to RGB (jdcolor.c): 16-bit fixed point, `FIX(x)` = round(x * 2^16).
fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    const HALF: i32 = 1 << 15;
    const FIX_1_40200: i32 = 91881;
    const FIX_1_77200: i32 = 116130;
    const FIX_0_71414: i32 = 46802;
    const FIX_0_34414: i32 = 22554;
    let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
    let red = y + ((FIX_1_40200 * cr + HALF) >> 16);
    let green = y + ((-FIX_0_34414 * cb + HALF - FIX_0_71414 * cr) >> 16);
    let blue = y + ((FIX_1_77200 * cb + HALF) >> 16);
    [red, green, blue].map(|c| c.clamp(0, 255) as u8)
}

/// A Huffman table's canonical codes (JPEG Annex C), for the codes the lookup
/// tables do not cover.
#[derive(Clone, PartialEq)]
pub(super) struct Codes {
    /// For each code length 1 to 16: the largest code of that length (-1: none) and
    /// what to add to a code of that length to index `values`.
    max_code: [i32; 17],
    offset: [i32; 17],
    values: Vec<u8>,
    /// Every (code, length, symbol), for building the lookup tables.
    listed: Vec<(u32, u32, u8)>,
}

impl Codes {
    fn new(counts: [u8; 16], values: &[u8]) -> Option<Codes> {
        let mut max_code = [-1; 17];
        let mut offset = [0; 17];
        let mut listed = Vec::with_capacity(values.len());
        let (mut code, mut index) = (0i32, 0usize);
        for length in 1..=16 {
            let count = usize::from(counts[length - 1]);
            offset[length] = index as i32 - code;
            for &symbol in &values[index..index + count] {
                listed.push((code as u32, length as u32, symbol));
                code += 1;
            }
            if count > 0 {
                max_code[length] = code - 1;
            }
            if code > 1 << length {
                return None; // more codes than this length can hold
            }
            index += count;
            code <<= 1;
        }
        Some(Codes {
            max_code,
            offset,
            values: values.to_vec(),
            listed,
        })
    }

    /// The (length, symbol) of the code at the top of `peek`, the next 16 bits.
    fn decode(&self, peek: u32) -> Option<(u32, u8)> {
        for length in 1..=16 {
            let code = (peek >> (16 - length)) as i32;
            if code <= self.max_code[length] {
                let index = (self.offset[length] + code) as usize;
                return self
                    .values
                    .get(index)
                    .map(|&symbol| (length as u32, symbol));
            }
        }
        None
    }

    /// Fills a lookup table of `bits` bits: every entry whose prefix is a code of at
    /// most `bits` bits gets `entry(length, symbol, index)`, `index` being the entry's
    /// own `bits` bits, so that the bits after the code can be read from it (0 leaves
    /// the entry a miss).
    fn lookup<T: Copy + Default>(&self, bits: u32, entry: impl Fn(u32, u8, u32) -> T) -> Vec<T> {
        let mut table = vec![T::default(); 1 << bits];
        for &(code, length, symbol) in self.listed.iter().filter(|c| c.1 <= bits) {
            let first = code << (bits - length);
            for index in first..first + (1 << (bits - length)) {
                table[index as usize] = entry(length, symbol, index);
            }
        }
        table
    }
}

/// DC codes. Where a code and its extra bits both fit in the lookahead (nearly every
/// difference in a photo), the entry is the whole difference: the bits it takes
/// (bits 0-4), [`DC_COMPLETE`] and the difference itself (bits 16-31), one lookup with
/// no branch on the size. Otherwise it is the code's length (0-4) and the size of the
/// difference (8-12), or 0 for a code longer than the lookahead.
pub(super) struct DcTable {
    lookup: Vec<u32>,
    codes: Codes,
}

/// Marks a DC lookup entry that holds the whole difference.
const DC_COMPLETE: u32 = 1 << 5;

impl DcTable {
    pub(super) fn new(codes: &Codes) -> DcTable {
        // A DC code's symbol is the size of the difference that follows it.
        let lookup = codes.lookup(DC_LOOKUP_BITS, |length, size, index| {
            let size = u32::from(size);
            match length + size <= DC_LOOKUP_BITS {
                true => {
                    let extra = index >> (DC_LOOKUP_BITS - length - size) & ((1 << size) - 1);
                    let difference = extend(extra as i32, size) as i16;
                    (length + size) | DC_COMPLETE | u32::from(difference as u16) << 16
                }
                false => length | size << 8,
            }
        });
        DcTable {
            lookup,
            codes: codes.clone(),
        }
    }
}

/// AC codes, looked up by the next 12 bits.
#[cfg_attr(test, derive(Clone))]
struct AcTable {
    /// As many whole symbols as the lookahead holds, for skipping them: their bits
    /// (bits 0-5, so that a shift by the whole entry, which the CPU masks to its low
    /// 6 bits, is a shift by the bits) and the coefficients they step together (8-15,
    /// taken with one shift), an end of block counting [`END_OF_BLOCK_STEP`]. When not
    /// even one symbol fits, the first one's bits and step, if they are at most
    /// [`LONGEST_SKIP`]; else [`MISSING_SKIP`]. Two bytes an entry, which the fields
    /// need and no more (the table's size was measured not to matter); an array, so
    /// that no lookup is bounds-checked. See [`ends_block`] for how a position past
    /// 63 tells a block's end from symbols that ran on into the next block.
    runs: Box<[u16; 1 << AC_LOOKUP_BITS]>,
    /// A block's first symbols, for 4:2:0 chroma: as many as the lookahead holds, from
    /// position 1 (bits 0-4 the bits they take, 5-11 the position they reach) with the
    /// coefficients at zigzag positions 1 and 2 (bits 12-21 and 22-31, signed); 0
    /// when they stop short of position 3 (a symbol longer than the lookahead, or a
    /// coefficient wanted that does not fit 10 bits). Empty for tables 4:2:0 chroma
    /// does not use.
    starts: Vec<u32>,
    codes: Codes,
}

impl AcTable {
    /// The tables for `codes`; the block-start one only `with_starts`.
    fn new(codes: &Codes, with_starts: bool) -> AcTable {
        let symbols = Self::symbols(codes);
        let runs = Self::skip_runs(&symbols);
        let starts = match with_starts {
            true => Self::block_starts(&symbols),
            false => Vec::new(),
        };
        AcTable {
            runs,
            starts,
            codes: codes.clone(),
        }
    }

    /// The skip table (`runs`) from the one-symbol entries.
    fn skip_runs(symbols: &[u16]) -> Box<[u16; 1 << AC_LOOKUP_BITS]> {
        let mask = (1 << AC_LOOKUP_BITS) - 1;
        let skip = |used: u32, step: u32| (used | step << 8) as u16;
        let runs = (0..1u32 << AC_LOOKUP_BITS).map(|index| {
            let (mut used, mut step) = (0, 0);
            // The bits past `used` are zeros here, so a symbol only counts if all of
            // it lies within the lookahead. An entry ends at the symbol whose steps
            // reach 64, an end of block always.
            while step < 64 {
                let entry = u32::from(symbols[((index << used) & mask) as usize]);
                let (total, this_step) = (entry & 31, entry >> 5 & 127);
                let this_step = match this_step {
                    64 => END_OF_BLOCK_STEP,
                    _ => this_step,
                };
                if entry == 0 || used + total > AC_LOOKUP_BITS {
                    if used == 0 && entry != 0 && total <= LONGEST_SKIP {
                        return skip(total, this_step); // one long symbol
                    }
                    break;
                }
                used += total;
                step += this_step;
            }
            match used {
                0 => MISSING_SKIP,
                _ => skip(used, step),
            }
        });
        let runs: Vec<u16> = runs.collect();
        runs.into_boxed_slice()
            .try_into()
            .expect("one entry per index")
    }

    /// The block-start table (`starts`) from the one-symbol entries.
    fn block_starts(symbols: &[u16]) -> Vec<u32> {
        let mask = (1 << AC_LOOKUP_BITS) - 1;
        (0..1u32 << AC_LOOKUP_BITS)
            .map(|index| {
                let (mut used, mut position, mut low) = (0, 1, [0i32; 2]);
                while position < 64 {
                    let entry = u32::from(symbols[((index << used) & mask) as usize]);
                    let (total, step, length) = (entry & 31, entry >> 5 & 127, entry >> 12);
                    if entry == 0 || used + total > AC_LOOKUP_BITS {
                        break;
                    }
                    let size = total - length;
                    let at = position + step - 1;
                    if size > 0 && at <= 2 {
                        if size > 9 {
                            break;
                        }
                        let extra = index >> (AC_LOOKUP_BITS - used - total) & ((1 << size) - 1);
                        low[at as usize - 1] = extend(extra as i32, size);
                    }
                    used += total;
                    position += step;
                }
                match position {
                    // Stopped before passing the coefficients wanted: the slow path.
                    ..3 => 0,
                    _ => {
                        let [right, down] = low.map(|value| value as u32 & 0x3FF);
                        used | position.min(64) << 5 | right << 12 | down << 22
                    }
                }
            })
            .collect()
    }

    /// One symbol per entry, what the other tables are built from: the bits it takes
    /// with its extra bits (bits 0-4, up to 27), how many coefficients it steps (5-11)
    /// and the code's own length (12-15); 0 for codes longer than the lookahead.
    fn symbols(codes: &Codes) -> Vec<u16> {
        codes.lookup(AC_LOOKUP_BITS, |length, symbol, _| {
            let total = length + u32::from(symbol & 15);
            (total | ac_step(symbol) << 5 | length << 12) as u16
        })
    }
}

/// How far an AC symbol moves along the block: past its run of zeros and its
/// coefficient; 16 zeros for ZRL (0xF0); to the end for EOB (and, as in libjpeg,
/// for any other symbol without a coefficient).
fn ac_step(symbol: u8) -> u32 {
    match (symbol >> 4, symbol & 15) {
        (15, 0) => 16,
        (_, 0) => 64,
        (run, _) => u32::from(run) + 1,
    }
}

/// The entropy-coded data as a stream of bits, kept left-aligned in a 64-bit
/// register. Stuffed bytes (0xFF 0x00) are unstuffed on the way in; at a marker the
/// stream stops and zeros are fed, counted, so that reading past it is detected.
#[derive(Clone, Copy)]
pub(super) struct Bits<'a> {
    data: &'a [u8],
    /// The next byte to load (its top bits may already sit below `count`).
    position: usize,
    bits: u64,
    /// Valid bits at the top of `bits`.
    count: u32,
    /// Where the data stopped at a marker (or the end of the file).
    marker: Option<usize>,
    /// Zero bits fed since then.
    padding: u32,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8], position: usize) -> Bits<'a> {
        Bits {
            data,
            position,
            bits: 0,
            count: 0,
            marker: None,
            padding: 0,
        }
    }

    /// Tops the register up to at least 56 bits: in one load when no 0xFF is among
    /// the bytes it takes or the one after (the common case), out of line otherwise.
    #[inline]
    fn refill(&mut self) {
        let word = self
            .data
            .get(self.position..self.position + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok());
        let take = (63 - self.count) >> 3;
        match word {
            Some(word) if bytes_before_ff(word) > take => {
                self.bits |= u64::from_be_bytes(word) >> self.count;
                self.position += take as usize;
                self.count |= 56;
            }
            _ => *self = self.refill_bytewise(),
        }
    }

    /// The out-of-line paths take and return the reader by value: given `&mut self`,
    /// the reader would have to live in memory, and every symbol of the hot loops
    /// would wait on a store and a load (a third of the decode, measured).
    ///
    /// Bytes before the next 0xFF are loaded together, and zeros past a marker are
    /// fed all at once: a camera photo with a restart marker every few MCUs meets a
    /// 0xFF every 130 bytes, and went byte by byte for 7% of its thumbnail.
    #[cold]
    fn refill_bytewise(mut self) -> Self {
        // To 56-63 bits, as the fast path: never 64, so that a count taken mod 64
        // (see `skipped`) is the count.
        while self.count < 56 {
            let room = (63 - self.count) / 8;
            if self.marker.is_some() {
                self.padding += 8 * room;
                self.count += 8 * room;
                break;
            }
            let word = self.data.get(self.position..self.position + 8);
            if let Some(word) = word.and_then(|w| <[u8; 8]>::try_from(w).ok()) {
                let take = bytes_before_ff(word).min(room);
                if take > 0 {
                    let loaded =
                        u64::from_be_bytes(word) & !(u64::MAX.checked_shr(8 * take).unwrap_or(0));
                    self.bits |= loaded >> self.count;
                    self.position += take as usize;
                    self.count += 8 * take;
                    continue;
                }
            }
            let byte = self.next_byte();
            self.bits |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
        self
    }

    fn next_byte(&mut self) -> u8 {
        if self.marker.is_none() {
            match self.data.get(self.position) {
                Some(0xFF) => {
                    // 0xFF 0x00 is a stuffed 0xFF; anything else after fill bytes is a marker.
                    let mut next = self.position + 1;
                    while self.data.get(next) == Some(&0xFF) {
                        next += 1;
                    }
                    if self.data.get(next) == Some(&0) {
                        self.position = next + 1;
                        return 0xFF;
                    }
                }
                Some(&byte) => {
                    self.position += 1;
                    return byte;
                }
                None => {}
            }
            self.marker = Some(self.position);
        }
        self.padding += 8;
        0
    }

    #[inline]
    fn consume(&mut self, bits: u32) {
        self.bits <<= bits;
        self.count -= bits;
    }

    /// The next DC difference (JPEG F.2.2.1). Always inlined: called out of line,
    /// the reader would have to live in memory through the whole block loop.
    #[inline(always)]
    pub(super) fn dc_difference(&mut self, table: &DcTable) -> Option<i32> {
        if self.count < 32 {
            self.refill();
        }
        let entry = table.lookup[(self.bits >> (64 - DC_LOOKUP_BITS)) as usize];
        if entry & DC_COMPLETE != 0 {
            self.consume(entry & 31);
            return Some((entry as i32) >> 16);
        }
        let (length, size) = match entry {
            0 => {
                let (length, size) = table.codes.decode((self.bits >> 48) as u32)?;
                (length, u32::from(size))
            }
            _ => (entry & 31, entry >> 8),
        };
        self.value(length, size)
    }

    /// The `size`-bit value after a `length`-bit code, both consumed.
    #[inline(always)]
    fn value(&mut self, length: u32, size: u32) -> Option<i32> {
        if size == 0 {
            self.consume(length);
            return Some(0);
        }
        if size > 16 {
            return None;
        }
        let value = (self.bits << length >> (64 - size)) as i32;
        self.consume(length + size);
        Some(extend(value, size))
    }

    /// Decodes a block's AC coefficients at zigzag positions 1 and 2, stepping over
    /// the symbols around them, in one lookup where the block's first symbols fit it.
    /// Returns them and the position it stopped at: 64 when the block ended, else
    /// where [`Self::skip_ac`] takes over.
    #[inline(always)]
    fn low_ac_coefficients(&mut self, table: &AcTable) -> Option<([i32; 2], u32)> {
        if self.count < 32 {
            self.refill();
        }
        let entry = table.starts[(self.bits >> (64 - AC_LOOKUP_BITS)) as usize];
        if entry != 0 {
            self.consume(entry & 31);
            let (right, down) = ((entry << 10) as i32 >> 22, entry as i32 >> 22);
            return Some(([right, down], entry >> 5 & 127));
        }
        let (this, low, position) = self.low_ac_one_by_one(table)?;
        *self = this;
        Some((low, position))
    }

    /// [`Self::low_ac_coefficients`] a symbol at a time, for codes longer than the
    /// lookahead.
    #[cold]
    fn low_ac_one_by_one(mut self, table: &AcTable) -> Option<(Self, [i32; 2], u32)> {
        let (mut position, mut low) = (1, [0; 2]);
        while position < 3 {
            if self.count < 32 {
                self.refill();
            }
            let (length, symbol) = table.codes.decode((self.bits >> 48) as u32)?;
            let (size, step) = (u32::from(symbol & 15), ac_step(symbol));
            match low.get_mut((position + step - 2) as usize) {
                Some(coefficient) if size > 0 => *coefficient = self.value(length, size)?,
                _ => self.consume(length + size),
            }
            position += step;
        }
        Some((self, low, position))
    }

    /// The next single bit: a DC refinement scan's one bit per block (JPEG G.1.2.1).
    #[inline]
    pub(super) fn bit(&mut self) -> bool {
        if self.count == 0 {
            self.refill();
        }
        let bit = self.bits >> 63 == 1;
        self.consume(1);
        bit
    }

    /// Where the entropy-coded data stopped at a marker, or the next byte to read.
    pub(super) fn resume_at(&self) -> usize {
        self.marker.unwrap_or(self.position)
    }

    /// Steps over a block's 63 AC coefficients, [`SKIPS_PER_REFILL`] lookups to a
    /// refill.
    #[inline(always)]
    fn skip_ac(&mut self, table: &AcTable, mut position: u32) -> Option<()> {
        let (mut bits, mut count) = (self.bits, self.count);
        loop {
            (bits, count) = self.refilled(bits, count & 63);
            for _ in 0..SKIPS_PER_REFILL {
                let entry = u32::from(table.runs[(bits >> (64 - AC_LOOKUP_BITS)) as usize]);
                let next = position + (entry >> 8);
                if next >= 64 {
                    if ends_block(next) {
                        (bits, count) = skipped(bits, count, entry);
                        (self.bits, self.count) = (bits, count & 63);
                        return Some(());
                    }
                    (self.bits, self.count) = (bits, count & 63);
                    return self.finish_block(table, position);
                }
                (bits, count) = skipped(bits, count, entry);
                position = next;
            }
        }
    }

    /// Steps over the rest of a block whose next skip-table entry is missing or runs
    /// past it: entry by entry, and a symbol at a time where an entry cannot be taken.
    #[cold]
    fn finish_block(&mut self, table: &AcTable, mut position: u32) -> Option<()> {
        while position < 64 {
            self.refill();
            let entry = u32::from(table.runs[(self.bits >> (64 - AC_LOOKUP_BITS)) as usize]);
            let next = position + (entry >> 8);
            if next < 64 || ends_block(next) {
                (self.bits, self.count) = skipped(self.bits, self.count, entry);
                self.count &= 63;
                position = next;
                continue;
            }
            let step;
            (*self, step) = self.skip_long_ac(table)?;
            position += step;
        }
        Some(())
    }

    /// [`Self::refill`] for a loop that holds the register in locals (`skip_ac`):
    /// takes them back, refills, and hands them out again.
    #[inline(always)]
    fn refilled(&mut self, bits: u64, count: u32) -> (u64, u32) {
        (self.bits, self.count) = (bits, count);
        self.refill();
        (self.bits, self.count)
    }

    /// One symbol decoded the slow way: a code longer than the lookahead, a symbol
    /// longer than [`LONGEST_SKIP`], or where the symbols looked up together would run
    /// past the block.
    #[cold]
    fn skip_long_ac(mut self, table: &AcTable) -> Option<(Self, u32)> {
        if self.count < 32 {
            self.refill();
        }
        let (length, symbol) = table.codes.decode((self.bits >> 48) as u32)?;
        self.consume(length + u32::from(symbol & 15));
        Some((self, ac_step(symbol)))
    }

    /// Whether every bit read was data, not padding fed past a marker.
    pub(super) fn clean_end(&self) -> bool {
        self.count >= self.padding
    }

    /// After a restart interval: what is left of the last byte is padding, the next
    /// marker is RST`n`, and decoding starts over after it.
    pub(super) fn restart(self, n: u8) -> Option<Bits<'a>> {
        if self.count.checked_sub(self.padding)? >= 8 {
            return None;
        }
        let mut at = self.marker.unwrap_or(self.position);
        while self.data.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        (self.data.get(at..at + 2)? == [0xFF, 0xD0 + n]).then(|| Bits::new(self.data, at + 2))
    }
}

/// The bit register and its count after skipping an entry's symbols. The count is
/// taken down by the whole entry, not only its bits (in 0-5): wrapping, its low six
/// bits stay right, and the caller masks them off before the next refill, one
/// instruction a refill instead of two a lookup.
#[inline(always)]
fn skipped(bits: u64, count: u32, entry: u32) -> (u64, u32) {
    // A shift by the whole entry: the CPU masks it to the low 6 bits, the bits.
    (bits.wrapping_shl(entry), count.wrapping_sub(entry))
}

/// Whether a position past 63, reached by a skip-table entry from one below 64, is
/// a block's end: exactly 64 (its last coefficient was the 63rd), or an end of block
/// after steps that stayed within it (`END_OF_BLOCK_STEP` plus 0-63). Symbols that
/// ran on past the block, into bits of the next, land elsewhere (65-159, or 224 and
/// up), as does [`MISSING_SKIP`]; those are taken a symbol at a time.
#[inline(always)]
fn ends_block(position: u32) -> bool {
    position == 64 || (END_OF_BLOCK_STEP..END_OF_BLOCK_STEP + 64).contains(&position)
}

/// A `size`-bit value sign-extended as JPEG's EXTEND does (F.2.2.1): values below
/// half the range are negative.
fn extend(value: i32, size: u32) -> i32 {
    match size > 0 && value < 1 << (size - 1) {
        true => value - (1 << size) + 1,
        false => value,
    }
}

/// How many of `word`'s bytes come before its first 0xFF: 8 when it has none.
fn bytes_before_ff(word: [u8; 8]) -> u32 {
    // Read little-endian, the first byte is the lowest, and the lowest zero byte of
    // the complement is found exactly (borrows only make false hits above it).
    let inverted = !u64::from_le_bytes(word);
    let hits = inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080;
    hits.trailing_zeros() / 8
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use mozjpeg::{ColorSpace, Compress, Decompress};

    pub(in crate::engine::decode) fn fixture(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// libjpeg's own decode at 1/8 scale: what ours must equal.
    pub(in crate::engine::decode) fn libjpeg_eighth(bytes: &[u8]) -> DynamicImage {
        let mut decompress = Decompress::new_mem(bytes).unwrap();
        decompress.scale(1);
        let gray = decompress.color_space() == ColorSpace::JCS_GRAYSCALE;
        let mut started = match gray {
            true => decompress.grayscale().unwrap(),
            false => decompress.rgb().unwrap(),
        };
        let (width, height) = (started.width() as u32, started.height() as u32);
        let samples: Vec<u8> = started.read_scanlines().unwrap();
        match gray {
            true => DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, samples).unwrap()),
            false => DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, samples).unwrap()),
        }
    }

    /// A baseline JPEG at quality `quality` with chroma blocks covering `chroma`
    /// pixels (1 or 2 each way), as our own encoder writes them.
    fn encode(image: &RgbImage, chroma: (u8, u8), quality: f32) -> Vec<u8> {
        let mut compress = Compress::new(ColorSpace::JCS_RGB);
        compress.set_size(image.width() as usize, image.height() as usize);
        compress.set_fastest_defaults();
        compress.set_optimize_coding(true);
        compress.set_quality(quality);
        compress.set_chroma_sampling_pixel_sizes(chroma, chroma);
        let mut started = compress.start_compress(Vec::new()).unwrap();
        started.write_scanlines(image.as_raw()).unwrap();
        started.finish().unwrap()
    }

    /// Noise (long codes, many extra bits) over gradients (long runs), 131x77 so
    /// that no side is a whole number of MCUs.
    pub(in crate::engine::decode) fn noisy_image() -> RgbImage {
        let mut state = 0x2545_F491u32;
        RgbImage::from_fn(131, 77, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = if x > 60 { (state % 160) as u8 } else { 0 };
            image::Rgb([
                (x * 2) as u8 ^ noise,
                (y * 3) as u8,
                noise.wrapping_add(x as u8),
            ])
        })
    }

    /// libjpeg's 1/8 decode of a YCbCr JPEG, left in YCbCr: the planes ours decodes.
    fn libjpeg_eighth_ycc(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
        let mut decompress = Decompress::new_mem(bytes).unwrap();
        decompress.scale(1);
        let mut started = decompress.to_colorspace(ColorSpace::JCS_YCbCr).unwrap();
        let (width, height) = (started.width(), started.height());
        (width, height, started.read_scanlines().unwrap())
    }

    /// For 4:2:0, whose chroma ours takes from fewer coefficients than libjpeg: the
    /// luma plane equals libjpeg's, and each chroma plane's mean difference from
    /// libjpeg's, in levels, is at most `chroma_within`.
    fn assert_luma_same_as_libjpeg(bytes: &[u8], chroma_within: f64, what: &str) {
        let frame = Frame::parse(bytes).unwrap();
        let planes = frame
            .decode_planes(bytes)
            .unwrap_or_else(|| panic!("{what}: declined"));
        let (width, height, theirs) = libjpeg_eighth_ycc(bytes);
        for (component, plane) in planes.iter().enumerate() {
            let ours = (0..height).flat_map(|y| &plane.samples[y * plane.stride..][..width]);
            let theirs = theirs.iter().skip(component).step_by(3);
            let differences: Vec<u32> = ours
                .zip(theirs)
                .map(|(&a, &b)| u32::from(a.abs_diff(b)))
                .collect();
            assert_eq!(differences.len(), width * height, "{what}");
            let mean = f64::from(differences.iter().sum::<u32>()) / differences.len() as f64;
            match component {
                0 => assert_eq!(mean, 0.0, "{what}: luma differs from libjpeg's"),
                _ => assert!(
                    mean <= chroma_within,
                    "{what}: chroma plane {component} {mean} levels off libjpeg's"
                ),
            }
        }
    }

    fn assert_same_as_libjpeg(bytes: &[u8], what: &str) {
        let ours = decode_dc(bytes).unwrap_or_else(|| panic!("{what}: declined"));
        let theirs = libjpeg_eighth(bytes);
        assert_eq!(ours.color(), theirs.color(), "{what}");
        assert_eq!(
            (ours.width(), ours.height()),
            (theirs.width(), theirs.height()),
            "{what}"
        );
        let differ = ours
            .as_bytes()
            .iter()
            .zip(theirs.as_bytes())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "{what}: samples that differ from libjpeg's");
    }

    #[test]
    fn pixels_are_libjpegs_one_eighth_decode() {
        let photo = image::load_from_memory(&fixture("baseline-restart-420.jpg"))
            .unwrap()
            .to_rgb8();
        // Chroma a level off on average at most, measured 0.14-0.40 on the photo and
        // 1.1-1.4 on the noise (the detail left out).
        for (name, image, chroma_within) in [("photo", photo, 0.5), ("noise", noisy_image(), 1.5)] {
            for chroma in [(1, 1), (2, 1), (1, 2), (2, 2)] {
                for quality in [60.0, 100.0] {
                    let bytes = encode(&image, chroma, quality);
                    let what = format!("{name} {chroma:?} q{quality}");
                    match chroma {
                        (2, 2) => assert_luma_same_as_libjpeg(&bytes, chroma_within, &what),
                        _ => assert_same_as_libjpeg(&bytes, &what),
                    }
                }
            }
        }
        // Restart markers (every 7 MCUs, and every row) and a gray JPEG, from Pillow.
        let restarts = fixture("baseline-restart-420.jpg");
        assert_luma_same_as_libjpeg(&restarts, 0.5, "restarts, 4:2:0");
        assert_same_as_libjpeg(&fixture("baseline-restart-gray.jpg"), "restarts, gray");
    }

    #[test]
    fn lookup_tables_are_built_once_and_kept() {
        let photo = fixture("baseline-restart-420.jpg");
        let (first, again) = (Frame::parse(&photo).unwrap(), Frame::parse(&photo).unwrap());
        let same = |a: &Component, b: &Component| {
            Rc::ptr_eq(&a.dc_table, &b.dc_table) && Rc::ptr_eq(&a.ac_table, &b.ac_table)
        };
        for (a, b) in first.components.iter().zip(&again.components) {
            assert!(
                same(a, b),
                "a second parse of one file builds its tables again"
            );
        }
        assert!(
            same(&first.components[1], &first.components[2]),
            "Cb and Cr share"
        );
        // Luma's AC table is kept apart from chroma's with block starts.
        assert!(first.components[0].ac_table.starts.is_empty());
        assert!(!first.components[1].ac_table.starts.is_empty());
        // Other codes get tables of their own, which still decode as libjpeg does.
        let noise = encode(&noisy_image(), (2, 2), 100.0);
        let other = Frame::parse(&noise).unwrap();
        assert!(!Rc::ptr_eq(
            &other.components[0].ac_table,
            &first.components[0].ac_table
        ));
        assert_luma_same_as_libjpeg(&noise, 1.5, "noise after the photo");
        assert_luma_same_as_libjpeg(&photo, 0.5, "the photo after the noise");
    }

    #[test]
    fn the_first_ff_byte_is_found_exactly() {
        // 0xFE after a 0xFF is where the zero-byte trick's borrow makes a false hit.
        for fill in [0x00, 0x01, 0x7F, 0x80, 0xFE] {
            assert_eq!(bytes_before_ff([fill; 8]), 8, "no 0xFF among {fill:#x}");
            for at in 0..8 {
                let mut word = [fill; 8];
                word[at] = 0xFF;
                assert_eq!(
                    bytes_before_ff(word),
                    at as u32,
                    "{fill:#x} with 0xFF at {at}"
                );
                word[7] = 0xFF;
                assert_eq!(bytes_before_ff(word), at as u32, "and at 7 too");
            }
        }
    }

    #[test]
    fn long_codes_take_the_slow_path_and_still_match() {
        let bytes = encode(&noisy_image(), (1, 1), 100.0);
        let frame = Frame::parse(&bytes).unwrap();
        let long = AcTable::symbols(&frame.components[0].ac_table.codes)
            .iter()
            .filter(|&&e| e == 0)
            .count();
        assert!(long > 0, "the noise should need codes beyond the lookahead");
        let dc = &frame.components[0].dc_table.lookup;
        let partial = dc.iter().filter(|&&e| e & DC_COMPLETE == 0).count();
        assert!(
            partial > 0,
            "some DC differences should not fit the lookahead"
        );
        assert!(partial < dc.len(), "and some should");
        assert_same_as_libjpeg(&bytes, "noise at q100");
    }

    #[test]
    fn symbols_too_long_to_skip_with_others_still_match() {
        // Black and white at random: large values with short codes.
        let mut state = 0x9E37_79B9u32;
        let speckles = RgbImage::from_fn(96, 64, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            image::Rgb([if state & 1 == 0 { 0 } else { 255 }; 3])
        });
        let bytes = encode(&speckles, (1, 1), 100.0);
        let table = &Frame::parse(&bytes).unwrap().components[0].ac_table;
        let symbols = AcTable::symbols(&table.codes);
        let too_long_to_skip = (symbols.iter().zip(table.runs.iter()))
            .filter(|&(&symbol, &run)| u32::from(symbol & 31) > LONGEST_SKIP && run == MISSING_SKIP)
            .count();
        assert!(
            too_long_to_skip > 0,
            "some symbols should be too long for {SKIPS_PER_REFILL} skips a refill"
        );
        assert!(table
            .runs
            .iter()
            .all(|&run| u32::from(run & 63) <= LONGEST_SKIP));
        assert_same_as_libjpeg(&bytes, "speckles at q100");
    }

    #[test]
    fn a_skip_entry_is_taken_only_where_its_symbols_stay_in_the_block() {
        let mask = (1 << AC_LOOKUP_BITS) - 1;
        let files = [
            fixture("baseline-restart-420.jpg"),
            encode(&noisy_image(), (1, 1), 100.0),
        ];
        let mut tables: Vec<AcTable> = (files.iter())
            .flat_map(|bytes| Frame::parse(bytes).unwrap().components)
            .map(|component| (*component.ac_table).clone())
            .collect();
        // Long runs in 2-bit codes (ZRL, 14 zeros and a 1, 15 zeros and a 1, end of
        // block): from 63, ZRL ZRL ZRL 0xE1 0xF1 run on to 142, which an end of block
        // step of 128 would take for a block's end.
        let mut counts = [0; 16];
        counts[1] = 4;
        let long_runs = Codes::new(counts, &[0xF0, 0xE1, 0xF1, 0x00]).unwrap();
        tables.push(AcTable::new(&long_runs, false));
        for table in &tables {
            let symbols = AcTable::symbols(&table.codes);
            for index in 0..1u32 << AC_LOOKUP_BITS {
                let entry = u32::from(table.runs[index as usize]);
                // The entry's symbols one by one: steps, 64 for an end of block.
                let (mut steps, mut used) = (Vec::new(), 0);
                while used < entry & 63 {
                    let symbol = u32::from(symbols[((index << used) & mask) as usize]);
                    steps.push(symbol >> 5 & 127);
                    used += symbol & 31;
                }
                for start in 1..64 {
                    // Every symbol but the last ends inside the block; the last
                    // ends the block at 64 at most, or is an end of block.
                    let mut position = start;
                    let mut inside = !steps.is_empty();
                    for (at, &step) in steps.iter().enumerate() {
                        position += step;
                        let last = at + 1 == steps.len();
                        inside &= match last {
                            false => position < 64,
                            true => step == 64 || position <= 64,
                        };
                    }
                    let next = start + (entry >> 8);
                    assert_eq!(
                        next < 64 || ends_block(next),
                        inside,
                        "entry {entry:#x} (steps {steps:?}) from {start}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_portable_decode_matches_the_bmi2_one() {
        for (chroma, quality) in [((2, 2), 100.0), ((1, 1), 60.0)] {
            let bytes = encode(&noisy_image(), chroma, quality);
            let frame = Frame::parse(&bytes).unwrap();
            let portable = frame.decode_planes_portable(&bytes).unwrap();
            let dispatched = frame.decode_planes(&bytes).unwrap();
            for (a, b) in portable.iter().zip(&dispatched) {
                assert_eq!(a.samples, b.samples, "{chroma:?} q{quality}");
            }
        }
    }

    /// A 4:2:0 image whose chroma blocks hold only the coefficients ours decodes:
    /// each 8x8 chroma block is a DC plus the first horizontal and vertical cosines
    /// (amplitudes varying from block to block), over noisy luma.
    fn low_frequency_chroma_image() -> RgbImage {
        let mut state = 0x2545_F491u32;
        let cosine = |at: u32| (std::f64::consts::PI * f64::from(2 * (at % 8) + 1) / 16.0).cos();
        RgbImage::from_fn(128, 96, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let luma = 80.0 + f64::from(state % 96);
            // Chroma samples are 2x2 pixels; chroma blocks 16x16.
            let (u, v, block) = (x / 2, y / 2, (x / 16 + 3 * (y / 16)) as i32);
            let amplitude = |seed: i32| f64::from((block * seed) % 29 - 14);
            let cb = amplitude(7) * cosine(u) + amplitude(11) * cosine(v);
            let cr = amplitude(13) * cosine(u) - amplitude(5) * cosine(v);
            let rgb = [
                luma + 1.402 * cr,
                luma - 0.344_136 * cb - 0.714_136 * cr,
                luma + 1.772 * cb,
            ];
            image::Rgb(rgb.map(|c| c.round().clamp(0.0, 255.0) as u8))
        })
    }

    #[test]
    fn chroma_with_only_the_coefficients_decoded_is_libjpegs_exactly() {
        for quality in [60.0, 80.0] {
            let bytes = encode(&low_frequency_chroma_image(), (2, 2), quality);
            assert_same_as_libjpeg(&bytes, &format!("low-frequency chroma q{quality}"));
        }
    }

    #[test]
    fn chroma_blocks_decoded_a_symbol_at_a_time_match_the_table() {
        let photo = image::load_from_memory(&fixture("baseline-restart-420.jpg"))
            .unwrap()
            .to_rgb8();
        for image in [photo, noisy_image(), low_frequency_chroma_image()] {
            let bytes = encode(&image, (2, 2), 100.0);
            let mut frame = Frame::parse(&bytes).unwrap();
            let by_table = frame.decode_planes(&bytes).unwrap();
            for component in &mut frame.components {
                let table = Rc::make_mut(&mut component.ac_table);
                table.starts.fill(0);
            }
            let one_by_one = frame.decode_planes(&bytes).unwrap();
            for (a, b) in by_table.iter().zip(&one_by_one) {
                assert_eq!(a.samples, b.samples);
            }
        }
    }

    #[test]
    fn scans_cut_short_are_declined() {
        for name in ["baseline-restart-420.jpg", "baseline-restart-gray.jpg"] {
            let bytes = fixture(name);
            let scan_start = Frame::parse(&bytes).unwrap().scan_start;
            // Right up to the EOI marker, which alone proves the file whole.
            let cuts = (scan_start..bytes.len())
                .step_by(37)
                .chain([bytes.len() - 2]);
            for cut in cuts {
                assert!(decode_dc(&bytes[..cut]).is_none(), "{name} cut at {cut}");
            }
            assert!(decode_dc(&bytes).is_some(), "{name} whole");
        }
    }

    #[test]
    fn corrupt_scans_never_panic() {
        let bytes = fixture("baseline-restart-420.jpg");
        let scan_start = Frame::parse(&bytes).unwrap().scan_start;
        let mut declined = 0;
        for at in (scan_start..bytes.len() - 2).step_by(11) {
            for flip in [0x01, 0x80, 0xFF] {
                let mut corrupt = bytes.clone();
                corrupt[at] ^= flip;
                declined += usize::from(decode_dc(&corrupt).is_none());
            }
        }
        assert!(declined > 0, "some corruption must be caught");
    }

    #[test]
    fn other_layouts_are_left_to_libjpeg() {
        let image = noisy_image();
        let mut compress = Compress::new(ColorSpace::JCS_RGB);
        compress.set_size(image.width() as usize, image.height() as usize);
        compress.set_progressive_mode();
        let mut started = compress.start_compress(Vec::new()).unwrap();
        started.write_scanlines(image.as_raw()).unwrap();
        let progressive = started.finish().unwrap();
        assert!(decode_dc(&progressive).is_none(), "progressive");
        assert!(decode_dc(&fixture("pil_sample_cmyk.jpg")).is_none(), "CMYK");
        assert!(decode_dc(b"\xFF\xD8\xFF\xD9").is_none(), "no frame");
        assert!(decode_dc(b"not a jpeg").is_none(), "not a jpeg");
    }
}
