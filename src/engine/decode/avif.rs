//! AVIF through libavif (dav1d or libaom underneath), in builds that found it.
//!
//! The container says the stored size, whether there is alpha, and how the picture is
//! to be turned (`irot`, anticlockwise quarter turns) and mirrored (`imir`, after the
//! turn), which is AVIF's EXIF orientation; the first frame is decoded as 8-bit RGBA
//! (image sequences give their first frame, as animations do elsewhere without
//! `animated=true`). No shrink-on-load: AV1 has no scaled decode. An embedded ICC
//! profile is converted to sRGB like any other; CICP colour signalling other than
//! sRGB's (Display P3, BT.2020) is not converted yet.

use std::ffi::{c_char, c_int, c_void, CStr};

use image::{DynamicImage, RgbaImage};

use crate::config::Limits;
use crate::engine::color;
use crate::error::{Error, Result};

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn progimage_avif_open(
        data: *const u8,
        len: usize,
        max_pixels: u32,
        handle: *mut *mut c_void,
        width: *mut u32,
        height: *mut u32,
        has_alpha: *mut c_int,
        rotation: *mut c_int,
        mirror: *mut c_int,
        icc: *mut *const u8,
        icc_len: *mut usize,
        message: *mut c_char,
    ) -> c_int;
    fn progimage_avif_pixels(handle: *mut c_void, rgba: *mut u8, message: *mut c_char) -> c_int;
    fn progimage_avif_close(handle: *mut c_void);
}

/// A parsed AVIF container, closed on drop. Borrows the bytes it was opened on.
struct Container<'a> {
    handle: *mut c_void,
    width: u32,
    height: u32,
    has_alpha: bool,
    rotation: c_int,
    mirror: c_int,
    icc: Option<&'a [u8]>,
}

impl<'a> Container<'a> {
    fn open(bytes: &'a [u8], max_pixels: u64) -> std::result::Result<Self, String> {
        let mut container = Container {
            handle: std::ptr::null_mut(),
            width: 0,
            height: 0,
            has_alpha: false,
            rotation: 0,
            mirror: -1,
            icc: None,
        };
        let (mut alpha, mut icc, mut icc_len) = (0, std::ptr::null(), 0);
        let mut message: [c_char; 256] = [0; 256];
        // SAFETY: `bytes` outlives the container (its lifetime), every out-pointer is
        // valid for a write of its type, and `message` holds 256 bytes.
        let status = unsafe {
            progimage_avif_open(
                bytes.as_ptr(),
                bytes.len(),
                u32::try_from(max_pixels).unwrap_or(u32::MAX),
                &mut container.handle,
                &mut container.width,
                &mut container.height,
                &mut alpha,
                &mut container.rotation,
                &mut container.mirror,
                &mut icc,
                &mut icc_len,
                message.as_mut_ptr(),
            )
        };
        if status != 0 {
            return Err(message_of(&message));
        }
        container.has_alpha = alpha != 0;
        // SAFETY: libavif owns the profile until the container closes, which the
        // borrow of `bytes` (the container's lifetime) cannot outlast.
        container.icc = (icc_len > 0).then(|| unsafe { std::slice::from_raw_parts(icc, icc_len) });
        Ok(container)
    }

    /// The size once turned upright.
    fn upright(&self) -> (u32, u32) {
        match self.rotation % 2 {
            0 => (self.width, self.height),
            _ => (self.height, self.width),
        }
    }

    fn pixels(&self) -> std::result::Result<RgbaImage, String> {
        let mut rgba = vec![0u8; self.width as usize * self.height as usize * 4];
        let mut message: [c_char; 256] = [0; 256];
        // SAFETY: `rgba` holds width x height x 4 bytes, the size the container
        // declared; `message` holds 256 bytes.
        let status =
            unsafe { progimage_avif_pixels(self.handle, rgba.as_mut_ptr(), message.as_mut_ptr()) };
        if status != 0 {
            return Err(message_of(&message));
        }
        Ok(RgbaImage::from_raw(self.width, self.height, rgba).expect("sized to fit"))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: the handle came from a successful open and is closed once.
            unsafe { progimage_avif_close(self.handle) }
        }
    }
}

fn message_of(message: &[c_char; 256]) -> String {
    // SAFETY: the shim leaves a NUL-terminated message in the buffer.
    unsafe { CStr::from_ptr(message.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The stored size the container declares.
pub fn header_size(bytes: &[u8]) -> std::result::Result<(u32, u32), String> {
    let container = Container::open(bytes, u64::MAX)?;
    Ok((container.width, container.height))
}

/// The size once turned upright by the container's `irot`.
pub fn upright_size(bytes: &[u8]) -> std::result::Result<(u32, u32), String> {
    Ok(Container::open(bytes, u64::MAX)?.upright())
}

/// Decodes the first frame, turned upright and in sRGB.
pub fn decode(
    bytes: &[u8],
    limits: &Limits,
    plan: impl FnOnce((u32, u32)) -> Result<Option<(u32, u32)>>,
) -> Result<DynamicImage> {
    let failed = |err: String| Error::undecodable(format!("this avif cannot be decoded: {err}"));
    let container = Container::open(bytes, limits.max_input_pixels).map_err(failed)?;
    plan(container.upright())?;
    let rgba = container.pixels().map_err(failed)?;
    let mut image = match container.has_alpha {
        true => DynamicImage::ImageRgba8(rgba),
        false => DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba).into_rgb8()),
    };
    if let Some(icc) = container.icc {
        image = color::to_srgb(image, icc);
    }
    image = match container.rotation {
        1 => image.rotate270(),
        2 => image.rotate180(),
        3 => image.rotate90(),
        _ => image,
    };
    Ok(match container.mirror {
        0 => image.flipv(),
        1 => image.fliph(),
        _ => image,
    })
}
