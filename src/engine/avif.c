/* AVIF through the system's libavif, used when build.rs finds it: encoding
 * (encode/avif.rs) and decoding (decode/avif.rs).
 *
 * A C shim rather than Rust declarations of libavif's structs: the compiler reads
 * their layout from the installed avif.h, so nothing here can drift from the library
 * it links (there is no bindgen on the build machines). Encoding is one call: RGB(A)
 * to full-range BT.601 YUV 4:2:0, then one still image through libavif's preferred AV1
 * encoder (libaom first) on one thread. Decoding is open (the container: size, alpha,
 * rotation, mirroring, ICC), then pixels (the first frame as 8-bit RGBA), then close. */

#include <avif/avif.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* The AV1 encoder libavif picks, e.g. "aom". */
const char *progimage_avif_codec(void) {
    const char *name = avifCodecName(AVIF_CODEC_CHOICE_AUTO, AVIF_CODEC_FLAG_CAN_ENCODE);
    return name ? name : "none";
}

/* Encodes width x height 8-bit RGB (channels 3) or RGBA (channels 4) pixels, rows
 * packed. On success returns 0 and hands over *out (free with progimage_avif_free);
 * otherwise returns libavif's error code and leaves a message in `message`. */
int progimage_avif_encode(const uint8_t *pixels, uint32_t width, uint32_t height,
                          int channels, int quantizer, int speed, uint8_t **out,
                          size_t *out_len, char message[256]) {
    avifResult result = AVIF_RESULT_OUT_OF_MEMORY;
    avifRWData output = AVIF_DATA_EMPTY;
    avifEncoder *encoder = NULL;
    avifImage *image = avifImageCreate(width, height, 8, AVIF_PIXEL_FORMAT_YUV420);
    message[0] = '\0';
    if (image == NULL) {
        goto done;
    }
    image->yuvRange = AVIF_RANGE_FULL;
    image->colorPrimaries = AVIF_COLOR_PRIMARIES_BT709;
    image->transferCharacteristics = AVIF_TRANSFER_CHARACTERISTICS_SRGB;
    image->matrixCoefficients = AVIF_MATRIX_COEFFICIENTS_BT601;

    avifRGBImage rgb;
    avifRGBImageSetDefaults(&rgb, image);
    rgb.format = channels == 4 ? AVIF_RGB_FORMAT_RGBA : AVIF_RGB_FORMAT_RGB;
    rgb.pixels = (uint8_t *)pixels;
    rgb.rowBytes = width * (uint32_t)channels;
    result = avifImageRGBToYUV(image, &rgb);
    if (result != AVIF_RESULT_OK) {
        goto done;
    }

    encoder = avifEncoderCreate();
    if (encoder == NULL) {
        result = AVIF_RESULT_OUT_OF_MEMORY;
        goto done;
    }
    encoder->maxThreads = 1;
    encoder->speed = speed;
    encoder->minQuantizer = quantizer;
    encoder->maxQuantizer = quantizer;
    encoder->minQuantizerAlpha = quantizer;
    encoder->maxQuantizerAlpha = quantizer;
    result = avifEncoderWrite(encoder, image, &output);
    if (result != AVIF_RESULT_OK) {
        snprintf(message, 256, "%s", encoder->diag.error);
    }

done:
    if (result == AVIF_RESULT_OK) {
        *out = output.data;
        *out_len = output.size;
    } else {
        avifRWDataFree(&output);
        if (message[0] == '\0') {
            snprintf(message, 256, "%s", avifResultToString(result));
        }
    }
    if (encoder != NULL) {
        avifEncoderDestroy(encoder);
    }
    if (image != NULL) {
        avifImageDestroy(image);
    }
    return (int)result;
}

/* Frees what progimage_avif_encode handed over. */
void progimage_avif_free(uint8_t *data, size_t len) {
    avifRWData output = {data, len};
    avifRWDataFree(&output);
}

/* Copies libavif's message for `result` (or the decoder's detail) into `message`. */
static int failed(avifResult result, const avifDecoder *decoder, char message[256]) {
    const char *detail = decoder != NULL && decoder->diag.error[0] != '\0'
                             ? decoder->diag.error
                             : avifResultToString(result);
    snprintf(message, 256, "%s", detail);
    return (int)result;
}

/* Parses the container of `data` (which must outlive the handle) with at most
 * `max_pixels` pixels. On success returns 0 with the handle and what the header says:
 * stored size, alpha, `rotation` in anticlockwise quarter turns, `mirror` -1 (none),
 * 0 (top and bottom exchanged, after the rotation) or 1 (left and right), and the ICC
 * profile (valid until close; length 0 when none). */
int progimage_avif_open(const uint8_t *data, size_t len, uint32_t max_pixels, void **handle,
                        uint32_t *width, uint32_t *height, int *has_alpha, int *rotation,
                        int *mirror, const uint8_t **icc, size_t *icc_len, char message[256]) {
    avifDecoder *decoder = avifDecoderCreate();
    message[0] = '\0';
    if (decoder == NULL) {
        return failed(AVIF_RESULT_OUT_OF_MEMORY, NULL, message);
    }
    decoder->maxThreads = 1;
    /* libavif refuses limits above its own default (16384 x 16384) as unsupported. */
    decoder->imageSizeLimit = max_pixels > 0 && max_pixels < AVIF_DEFAULT_IMAGE_SIZE_LIMIT
                                  ? max_pixels
                                  : AVIF_DEFAULT_IMAGE_SIZE_LIMIT;
    /* Browsers show files that miss a pixi box or have an odd clean aperture. */
    decoder->strictFlags = AVIF_STRICT_DISABLED;
    avifResult result = avifDecoderSetIOMemory(decoder, data, len);
    if (result == AVIF_RESULT_OK) {
        result = avifDecoderParse(decoder);
    }
    if (result != AVIF_RESULT_OK) {
        int code = failed(result, decoder, message);
        avifDecoderDestroy(decoder);
        return code;
    }
    const avifImage *image = decoder->image;
    *handle = decoder;
    *width = image->width;
    *height = image->height;
    *has_alpha = decoder->alphaPresent ? 1 : 0;
    *rotation = (image->transformFlags & AVIF_TRANSFORM_IROT) ? image->irot.angle % 4 : 0;
    *mirror = (image->transformFlags & AVIF_TRANSFORM_IMIR) ? image->imir.mode : -1;
    *icc = image->icc.data;
    *icc_len = image->icc.size;
    return 0;
}

/* Decodes the first frame into `rgba`: width x height x 4 bytes, rows packed. */
int progimage_avif_pixels(void *handle, uint8_t *rgba, char message[256]) {
    avifDecoder *decoder = handle;
    message[0] = '\0';
    avifResult result = avifDecoderNextImage(decoder);
    if (result != AVIF_RESULT_OK) {
        return failed(result, decoder, message);
    }
    avifRGBImage rgb;
    avifRGBImageSetDefaults(&rgb, decoder->image);
    rgb.format = AVIF_RGB_FORMAT_RGBA;
    rgb.depth = 8;
    rgb.pixels = rgba;
    rgb.rowBytes = decoder->image->width * 4;
    result = avifImageYUVToRGB(decoder->image, &rgb);
    return result == AVIF_RESULT_OK ? 0 : failed(result, decoder, message);
}

void progimage_avif_close(void *handle) {
    avifDecoderDestroy(handle);
}
