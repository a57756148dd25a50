//! Image formats: sniffing from magic bytes, names, extensions and content types.

use std::fmt;

/// A raster format the engine reads or writes: it reads all but AVIF and writes all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Jpeg,
    Png,
    Gif,
    WebP,
    Avif,
    Bmp,
    Tiff,
}

impl Format {
    /// Every format, in the order they are listed to clients.
    pub const ALL: [Format; 7] = [
        Format::Jpeg,
        Format::Png,
        Format::WebP,
        Format::Avif,
        Format::Gif,
        Format::Bmp,
        Format::Tiff,
    ];

    /// Identifies a format from the first bytes of a file. File names and declared
    /// content types are never trusted for this.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        let starts = |magic: &[u8]| bytes.starts_with(magic);
        if starts(&[0xFF, 0xD8, 0xFF]) {
            Some(Format::Jpeg)
        } else if starts(b"\x89PNG\r\n\x1a\n") {
            Some(Format::Png)
        } else if starts(b"GIF87a") || starts(b"GIF89a") {
            Some(Format::Gif)
        } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
            Some(Format::WebP)
        } else if starts(b"BM") {
            Some(Format::Bmp)
        } else if starts(b"II*\0") || starts(b"MM\0*") {
            Some(Format::Tiff)
        } else if bytes.get(4..8) == Some(b"ftyp") && is_avif_brand(bytes.get(8..12)) {
            Some(Format::Avif)
        } else {
            None
        }
    }

    /// The short name used in parameters, JSON and cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Gif => "gif",
            Format::WebP => "webp",
            Format::Avif => "avif",
            Format::Bmp => "bmp",
            Format::Tiff => "tiff",
        }
    }

    /// Parses a name or a common extension (`jpg`, `tif`), case-insensitively.
    pub fn from_name(name: &str) -> Option<Format> {
        let name = name.to_ascii_lowercase();
        let name = match name.as_str() {
            "jpg" => "jpeg",
            "tif" => "tiff",
            other => other,
        };
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Gif => "image/gif",
            Format::WebP => "image/webp",
            Format::Avif => "image/avif",
            Format::Bmp => "image/bmp",
            Format::Tiff => "image/tiff",
        }
    }

    /// Whether uploads in this format are accepted: AVIF only by builds with
    /// libavif (see build.rs).
    pub fn is_readable(self) -> bool {
        self != Format::Avif || cfg!(libavif)
    }

    /// Whether a transform of a source in this format stays in it by default; the
    /// others (BMP, TIFF: not for the web) become PNG.
    pub fn keeps_itself(self) -> bool {
        matches!(
            self,
            Format::Jpeg | Format::Png | Format::WebP | Format::Gif
        )
    }

    /// Whether `q=` changes the output (WebP is lossy unless `lossless=true`).
    pub fn is_lossy(self) -> bool {
        matches!(self, Format::Jpeg | Format::Avif | Format::WebP)
    }

    /// Whether the encoder keeps transparency; the others get it flattened onto `bg`.
    pub fn has_alpha(self) -> bool {
        !matches!(self, Format::Jpeg | Format::Bmp)
    }

    /// Whether the format can hold an animation.
    pub fn can_animate(self) -> bool {
        matches!(self, Format::Gif | Format::WebP)
    }

    pub(crate) fn to_image_format(self) -> image::ImageFormat {
        match self {
            Format::Jpeg => image::ImageFormat::Jpeg,
            Format::Png => image::ImageFormat::Png,
            Format::Gif => image::ImageFormat::Gif,
            Format::WebP => image::ImageFormat::WebP,
            Format::Avif => image::ImageFormat::Avif,
            Format::Bmp => image::ImageFormat::Bmp,
            Format::Tiff => image::ImageFormat::Tiff,
        }
    }
}

/// Whether an ISOBMFF major brand is AVIF's: a still image or a sequence.
fn is_avif_brand(brand: Option<&[u8]>) -> bool {
    matches!(brand, Some(b"avif" | b"avis"))
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic_bytes_not_names() {
        assert_eq!(Format::sniff(b"\xFF\xD8\xFF\xE0rest"), Some(Format::Jpeg));
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Format::WebP));
        assert_eq!(Format::sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(Format::sniff(b"<html>"), None);
        assert_eq!(Format::sniff(b"\0\0\0\x20ftypavif\0\0"), Some(Format::Avif));
        assert_eq!(Format::sniff(b"\0\0\0\x20ftypheic\0\0"), None);
        assert_eq!(Format::from_name("JPG"), Some(Format::Jpeg));
    }
}
