//! Whether an upload holds all of its image: structural walks, no decoding.
//!
//! Every walk reads only lengths and offsets, in time linear in the number of
//! segments, chunks or blocks (the JPEG scan search is a memchr). A file cut short
//! in transfer fails here and is refused at upload, instead of being stored and
//! failing on its first transform, or worse, decoding with grey rows.

use crate::engine::Format;

/// Whether `bytes`, already sniffed as `format`, reach the end of the image they
/// describe. Formats without a walk here count as complete.
pub fn is_complete(format: Format, bytes: &[u8]) -> bool {
    match format {
        Format::Jpeg => jpeg_reaches_end_of_image(bytes),
        Format::Png => png_reaches_iend(bytes),
        Format::Gif => gif_blocks_are_whole(bytes),
        Format::WebP => riff_is_whole(bytes),
        Format::Bmp => bmp_pixels_are_present(bytes),
        Format::Tiff => tiff_strips_are_present(bytes),
        Format::Avif => boxes_reach_the_end(bytes),
    }
}

/// Walks JPEG marker segments and entropy-coded scans until the EOI marker.
///
/// Bytes after EOI (camera trailers, the video of a motion photo, the second frame of
/// an MPO) are allowed, and junk between segments is skipped as libjpeg does.
fn jpeg_reaches_end_of_image(bytes: &[u8]) -> bool {
    let mut at = 2; // after SOI
    while at + 1 < bytes.len() {
        if bytes[at] != 0xFF {
            at += 1; // junk between segments: resynchronise on the next 0xFF
            continue;
        }
        let marker = bytes[at + 1];
        match marker {
            0xD9 => return true,
            0xFF => at += 1,               // fill byte
            0x01 | 0xD0..=0xD7 => at += 2, // markers without a length
            0xDA => match skip_scan(bytes, at) {
                Some(next) => at = next,
                None => return false,
            },
            _ => match segment_length(bytes, at) {
                Some(length) => at += 2 + length,
                None => return false,
            },
        }
    }
    false
}

/// The length field of the segment whose marker starts at `at`.
fn segment_length(bytes: &[u8], at: usize) -> Option<usize> {
    let high = *bytes.get(at + 2)?;
    let low = *bytes.get(at + 3)?;
    Some(usize::from(u16::from_be_bytes([high, low])))
}

/// Skips an SOS header and its entropy-coded data, returning the offset of the next
/// real marker.
fn skip_scan(bytes: &[u8], at: usize) -> Option<usize> {
    next_marker(bytes, at + 2 + segment_length(bytes, at)?)
}

/// The offset of the first real JPEG marker at or after `at` in entropy-coded data:
/// 0xFF followed by anything but a stuffed 0x00, a restart marker or more fill.
pub(in crate::engine) fn next_marker(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let ff = at + memchr::memchr(0xFF, bytes.get(at..)?)?;
        match *bytes.get(ff + 1)? {
            0x00 | 0xD0..=0xD7 | 0xFF => at = ff + 1,
            _ => return Some(ff),
        }
    }
}

/// Walks PNG chunks until IEND; a chunk that runs past the end means truncation.
fn png_reaches_iend(bytes: &[u8]) -> bool {
    let mut at = 8; // after the signature
    while let Some(header) = bytes.get(at..at + 8) {
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if &header[4..8] == b"IEND" {
            return true;
        }
        at = match at.checked_add(12 + length) {
            Some(next) => next,
            None => return false,
        };
    }
    false
}

/// Walks GIF blocks (extensions and images, each a chain of length-prefixed
/// sub-blocks) to the trailer. A file that ends cleanly after a whole image but
/// without the trailer byte is accepted, as browsers do; one that ends inside a
/// block, or holds a block type GIF does not have, is not.
fn gif_blocks_are_whole(bytes: &[u8]) -> bool {
    let color_table = |flags: u8| {
        if flags & 0x80 != 0 {
            3 << ((flags & 7) + 1)
        } else {
            0
        }
    };
    let Some(&screen_flags) = bytes.get(10) else {
        return false;
    };
    let mut at = 13 + color_table(screen_flags);
    let mut images = 0;
    loop {
        let block_end = match bytes.get(at) {
            None => return at == bytes.len() && images > 0,
            Some(0x3B) => return true,
            Some(0x21) => skip_sub_blocks(bytes, at + 2),
            Some(0x2C) => {
                images += 1;
                match bytes.get(at + 9) {
                    // The descriptor, a local colour table, the LZW code size byte.
                    Some(&flags) => skip_sub_blocks(bytes, at + 10 + color_table(flags) + 1),
                    None => None,
                }
            }
            Some(_) => None,
        };
        match block_end {
            Some(end) => at = end,
            None => return false,
        }
    }
}

/// The offset after a chain of GIF sub-blocks starting at `at`, if it is all there.
fn skip_sub_blocks(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let length = usize::from(*bytes.get(at)?);
        at += 1;
        if length == 0 {
            return Some(at);
        }
        at += length;
    }
}

/// A WebP is one RIFF chunk whose header gives its length.
fn riff_is_whole(bytes: &[u8]) -> bool {
    match bytes.get(4..8) {
        Some(size) => {
            let size = u64::from(u32::from_le_bytes(size.try_into().unwrap()));
            bytes.len() as u64 >= 8 + size
        }
        None => false,
    }
}

/// Whether a BMP's pixel array, where its header puts it, fits in the file. For
/// uncompressed rows the size follows from width, height and bit depth (the last row's
/// padding may be missing, as some writers leave it out); compressed data (RLE,
/// embedded JPEG or PNG) is as long as the header's image size says.
fn bmp_pixels_are_present(bytes: &[u8]) -> bool {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u64::from(u32::from_le_bytes(b.try_into().unwrap())))
    };
    let i32_at = |at: usize| u32_at(at).map(|v| u64::from((v as u32 as i32).unsigned_abs()));
    let (Some(offset), Some(header_size)) = (u32_at(10), u32_at(14)) else {
        return false;
    };
    let layout = if header_size == 12 {
        (u16_at(18), u16_at(20), u16_at(24), Some(0), Some(0))
    } else {
        (i32_at(18), i32_at(22), u16_at(28), u32_at(30), u32_at(34))
    };
    let (Some(width), Some(height), Some(bits), Some(compression), Some(image_size)) = layout
    else {
        return false;
    };
    let pixel_bytes = match compression {
        // BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS: rows padded to four bytes.
        0 | 3 | 6 if height > 0 => {
            let row_bits = width.saturating_mul(bits);
            let stride = row_bits.div_ceil(32) * 4;
            stride
                .saturating_mul(height - 1)
                .saturating_add(row_bits.div_ceil(8))
        }
        _ => image_size,
    };
    bytes.len() as u64 >= offset.saturating_add(pixel_bytes)
}

/// Whether every strip (or tile) the first TIFF directory lists lies inside the file.
/// A directory without strip tags is left to the decoder; BigTIFF is not walked.
fn tiff_strips_are_present(bytes: &[u8]) -> bool {
    let big_endian = bytes.starts_with(b"MM");
    let read = |at: usize, width: usize| -> Option<u64> {
        let field = bytes.get(at..at.checked_add(width)?)?;
        let mut value = 0u64;
        for i in 0..width {
            let byte = if big_endian {
                field[i]
            } else {
                field[width - 1 - i]
            };
            value = value << 8 | u64::from(byte);
        }
        Some(value)
    };
    if read(2, 2) != Some(42) {
        return true; // BigTIFF (43)
    }
    let Some(directory) = read(4, 4).map(|at| at as usize) else {
        return false;
    };
    let Some(entries) = read(directory, 2) else {
        return false;
    };
    // Each of the four tags: its values' width, count and where they are.
    let mut arrays: [Option<(usize, usize, usize)>; 4] = [None; 4];
    for entry in 0..entries as usize {
        let at = directory + 2 + entry * 12;
        let (Some(tag), Some(kind), Some(count)) = (read(at, 2), read(at + 2, 2), read(at + 4, 4))
        else {
            return false;
        };
        let slot = match tag {
            273 => 0, // StripOffsets
            279 => 1, // StripByteCounts
            324 => 2, // TileOffsets
            325 => 3, // TileByteCounts
            _ => continue,
        };
        let width = if kind == 3 { 2 } else { 4 };
        let count = count as usize;
        let values_at = if count * width <= 4 {
            Some(at + 8)
        } else {
            read(at + 8, 4).map(|offset| offset as usize)
        };
        match values_at {
            Some(values_at) => arrays[slot] = Some((width, count, values_at)),
            None => return false,
        }
    }
    let within = |offsets: Option<(usize, usize, usize)>, counts: Option<(usize, usize, usize)>| {
        let (Some((offset_width, count, offsets_at)), Some((count_width, _, counts_at))) =
            (offsets, counts)
        else {
            return true;
        };
        (0..count).all(|i| {
            match (
                read(offsets_at + i * offset_width, offset_width),
                read(counts_at + i * count_width, count_width),
            ) {
                (Some(offset), Some(length)) => offset + length <= bytes.len() as u64,
                _ => false,
            }
        })
    };
    within(arrays[0], arrays[1]) && within(arrays[2], arrays[3])
}

/// Whether an ISOBMFF file's top-level boxes (ftyp, meta, mdat, ...) end exactly at
/// the end of the file: a cut file's last box (the coded data) runs past it.
fn boxes_reach_the_end(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else {
            return false;
        };
        let size = match u32::from_be_bytes(header[..4].try_into().unwrap()) {
            0 => return true, // the last box runs to the end of the file
            1 => match bytes.get(at + 8..at + 16) {
                Some(large) => u64::from_be_bytes(large.try_into().unwrap()),
                None => return false,
            },
            size => u64::from(size),
        };
        if size < 8 {
            return false;
        }
        match usize::try_from(size)
            .ok()
            .and_then(|size| at.checked_add(size))
        {
            Some(end) if end <= bytes.len() => at = end,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::new_rgba8(64, 48)
            .write_to(&mut out, format)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn whole_files_are_complete_and_cut_ones_are_not() {
        use image::ImageFormat as F;
        for (format, ours) in [
            (F::Png, Format::Png),
            (F::Gif, Format::Gif),
            (F::WebP, Format::WebP),
            (F::Bmp, Format::Bmp),
            (F::Tiff, Format::Tiff),
        ] {
            let bytes = encoded(format);
            assert!(is_complete(ours, &bytes), "{format:?}");
            for cut in [13, bytes.len() / 2] {
                assert!(
                    !is_complete(ours, &bytes[..bytes.len() - cut]),
                    "{format:?} cut by {cut}"
                );
            }
        }
    }

    #[test]
    fn a_gif_without_its_trailer_byte_is_whole_if_its_image_is() {
        let bytes = encoded(image::ImageFormat::Gif);
        assert_eq!(bytes.last(), Some(&0x3B));
        assert!(is_complete(Format::Gif, &bytes[..bytes.len() - 1]));
    }

    /// A TIFF with its directory first and one strip of `strip` bytes after it, in
    /// either byte order.
    fn tiff_with_directory_first(big_endian: bool, strip: u32) -> Vec<u8> {
        let u16_bytes = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u32_bytes = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut bytes = if big_endian {
            b"MM".to_vec()
        } else {
            b"II".to_vec()
        };
        bytes.extend(u16_bytes(42));
        bytes.extend(u32_bytes(8));
        let entries: [(u16, u32); 2] = [(273, 8 + 2 + 2 * 12 + 4), (279, strip)];
        bytes.extend(u16_bytes(entries.len() as u16));
        for (tag, value) in entries {
            bytes.extend(u16_bytes(tag));
            bytes.extend(u16_bytes(4)); // LONG
            bytes.extend(u32_bytes(1));
            bytes.extend(u32_bytes(value));
        }
        bytes.extend(u32_bytes(0)); // no next directory
        bytes.extend(std::iter::repeat_n(0x55, strip as usize));
        bytes
    }

    #[test]
    fn a_tiff_strip_cut_short_is_caught_in_either_byte_order() {
        for big_endian in [false, true] {
            let bytes = tiff_with_directory_first(big_endian, 100);
            assert!(
                is_complete(Format::Tiff, &bytes),
                "big endian: {big_endian}"
            );
            assert!(!is_complete(Format::Tiff, &bytes[..bytes.len() - 1]));
        }
    }
}
