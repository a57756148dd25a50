/* AVIF encoding through the system's libavif, used when build.rs finds it.
 *
 * A C shim rather than Rust declarations of libavif's structs: the compiler reads
 * their layout from the installed avif.h, so nothing here can drift from the library
 * it links (there is no bindgen on the build machines). One call does the whole job:
 * RGB(A) to full-range BT.601 YUV 4:2:0, then one still image through libavif's
 * preferred AV1 encoder (libaom first) on one thread. */

#include <avif/avif.h>
#include <stddef.h>
#include <stdint.h>
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
        strncpy(message, encoder->diag.error, 255);
        message[255] = '\0';
    }

done:
    if (result == AVIF_RESULT_OK) {
        *out = output.data;
        *out_len = output.size;
    } else {
        avifRWDataFree(&output);
        if (message[0] == '\0') {
            strncpy(message, avifResultToString(result), 255);
            message[255] = '\0';
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
