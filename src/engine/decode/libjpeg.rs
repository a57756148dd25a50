//! How libjpeg (mozjpeg) reports trouble, and how we hear it.
//!
//! libjpeg stops on fatal errors by calling `error_exit`, which must not return; ours
//! unwinds with the message, and [`unwinding`] turns that into a 422. It reports damage
//! it can work around as warnings through `emit_message`, and then carries on: data
//! that ends early is padded with grey, a bad Huffman code is skipped over. A picture
//! with grey rows or garbled blocks is not the uploaded image, so the warnings that
//! mean lost pixel data are fatal here; the cosmetic ones (stray bytes between
//! segments, an odd JFIF version, a malformed ICC chunk) are not.

use std::ffi::c_int;

use mozjpeg_sys as jpeg;

use crate::error::{Error, Result};

/// Warnings after which the decoded pixels are not the image the file once held.
const LOST_DATA: [jpeg::J_MESSAGE_CODE; 4] = [
    jpeg::JWRN_HIT_MARKER, // "premature end of data segment": the scan was cut short
    jpeg::JWRN_JPEG_EOF,   // "premature end of JPEG file"
    jpeg::JWRN_HUFF_BAD_CODE, // garbled entropy-coded data
    jpeg::JWRN_MUST_RESYNC, // a restart marker missing or out of order
];

/// An error manager that unwinds on fatal errors and on lost-data warnings.
pub fn strict_errors() -> jpeg::jpeg_error_mgr {
    // SAFETY: jpeg_error_mgr is plain C data, and jpeg_std_error fills every field.
    let mut errors: jpeg::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { jpeg::jpeg_std_error(&mut errors) };
    errors.error_exit = Some(error_exit);
    errors.emit_message = Some(fail_on_lost_data);
    errors
}

/// Runs libjpeg (mozjpeg) code, whose errors unwind out of C as panics (not all of
/// the mozjpeg crate's calls catch them), and turns such an unwind into a 422 naming
/// libjpeg's message. Found by the `decode` fuzz target: a corrupt JPEG used to reach
/// the worker's panic guard with no message.
pub fn unwinding<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(payload) => Err(Error::undecodable(format!(
            "this jpeg cannot be decoded: {}",
            panic_message(payload)
        ))),
    }
}

/// What libjpeg said, from the panic its error handler unwound with.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    crate::error::panic_text(payload.as_ref())
        .unwrap_or("corrupt data")
        .to_string()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg::jpeg_common_struct) {
    let buffer = [0u8; 80];
    if let Some(format) = (*cinfo.err).format_message {
        format(cinfo, &buffer);
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    // resume_unwind skips the panic hook: no stack trace printed for a bad upload.
    std::panic::resume_unwind(Box::new(
        String::from_utf8_lossy(&buffer[..end]).into_owned(),
    ));
}

/// `emit_message`: level -1 is a warning, higher levels are trace output.
unsafe extern "C-unwind" fn fail_on_lost_data(cinfo: &mut jpeg::jpeg_common_struct, level: c_int) {
    if level < 0 && LOST_DATA.contains(&(*cinfo.err).msg_code) {
        error_exit(cinfo);
    }
}
