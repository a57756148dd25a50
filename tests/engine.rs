//! The transform engine over HTTP: every transform, pipelines and presets, output
//! formats, colour, orientation, alpha, animation and limits, checked on pixels.

mod common;

use common::on_every_store;
use common::*;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use reqwest::StatusCode;

on_every_store!(
    transforms_lists_every_transform_with_its_parameter_schema,
    every_transform_works_over_http,
    pipelines_run_in_order_and_share_one_canonical_cache_entry,
    bad_pipelines_are_400_pointing_at_the_step,
    format_auto_follows_accept_and_varies_on_it,
    every_output_format_is_what_it_says,
    alpha_is_kept_where_the_format_allows_and_flattened_onto_bg_elsewhere,
    exif_orientations_one_to_eight_come_out_upright,
    embedded_icc_profiles_are_converted_to_srgb,
    sixteen_bit_and_gray_images_are_colour_managed_too,
    cmyk_jpegs_come_out_in_the_right_colours,
    ycck_jpegs_come_out_in_the_right_colours,
    avif_uploads_are_read_upright_by_builds_with_libavif,
    sixteen_bit_and_gray_alpha_pngs_work,
    an_animated_gif_gives_its_first_frame_as_a_still,
    apng_and_animated_webp_sources_animate_like_gifs,
    animated_true_on_a_still_source_gives_a_still,
    animated_true_keeps_every_frame_in_gif_and_webp,
    animations_over_max_frames_are_413,
    outputs_over_the_limit_are_413_before_decoding,
    small_thumbnails_of_progressive_jpegs_come_from_the_dc_scans_alone,
    animated_outputs_respect_the_output_limit_too,
    libjpeg_errors_are_422s_naming_the_error,
);

/// Four quadrants of distinct colours, so every orientation is recognisable.
fn quadrants(width: u32, height: u32) -> DynamicImage {
    const COLOURS: [[u8; 3]; 4] = [[220, 30, 30], [30, 200, 30], [30, 30, 220], [230, 230, 30]];
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        let quadrant = usize::from(x >= width / 2) + 2 * usize::from(y >= height / 2);
        Rgb(COLOURS[quadrant])
    }))
}

/// The colour at a fractional position, as the index of the closest quadrant colour.
fn quadrant_at(image: &DynamicImage, fx: f64, fy: f64) -> usize {
    const COLOURS: [[i32; 3]; 4] = [[220, 30, 30], [30, 200, 30], [30, 30, 220], [230, 230, 30]];
    let x = ((f64::from(image.width()) * fx) as u32).min(image.width() - 1);
    let y = ((f64::from(image.height()) * fy) as u32).min(image.height() - 1);
    let p = image.to_rgb8().get_pixel(x, y).0.map(i32::from);
    (0..4)
        .min_by_key(|&i| (0..3).map(|c| (p[c] - COLOURS[i][c]).abs()).sum::<i32>())
        .unwrap()
}

async fn upload(server: &TestServer, bytes: &[u8]) -> String {
    server.upload(bytes).await;
    sha1_hex(bytes)
}

async fn transforms_lists_every_transform_with_its_parameter_schema(backend: Backend) {
    let server = TestServer::on_with(backend, |s| {
        s.presets
            .insert("avatar".into(), "thumbnail(size=96,fit=cover)".into());
    })
    .await;
    let catalogue = server.get_json("/transforms/").await;
    let names: Vec<&str> = catalogue["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for expected in [
        "thumbnail",
        "resize",
        "crop",
        "rotate",
        "flip",
        "grayscale",
        "blur",
        "sharpen",
        "brightness",
        "contrast",
        "convert",
        "ascii",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let resize = catalogue["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "resize")
        .unwrap();
    let fit = resize["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fit")
        .unwrap();
    assert_eq!(fit["type"], "choice");
    assert_eq!(fit["default"], "cover");
    assert!(fit["values"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "contain"));
    let width = resize["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "w")
        .unwrap();
    assert_eq!(
        (
            width["type"].as_str(),
            width["min"].as_i64(),
            width["max"].as_i64()
        ),
        (Some("int"), Some(1), Some(16384))
    );
    let formats: Vec<&str> = catalogue["output_formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        formats,
        ["jpeg", "png", "webp", "avif", "gif", "bmp", "tiff"]
    );
    assert_eq!(
        catalogue["presets"]["avatar"],
        "thumbnail(size=96,fit=cover)"
    );
    assert!(catalogue["output_params"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "q"));
}

async fn every_transform_works_over_http(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = upload(&server, &encode(&quadrants(200, 100), ImageFormat::Png)).await;
    let cases: &[(&str, (u32, u32))] = &[
        ("resize/?w=100&h=100", (100, 100)),
        ("resize/?w=100&h=100&fit=inside", (100, 50)),
        ("resize/?w=50&h=50&fit=cover&gravity=entropy", (50, 50)),
        ("crop/?x=10&y=10&w=30&h=20", (30, 20)),
        ("crop/?aspect=1:1&gravity=east", (100, 100)),
        ("rotate/?deg=90", (100, 200)),
        ("flip/?axis=v", (200, 100)),
        ("grayscale/", (200, 100)),
        ("blur/?sigma=3", (200, 100)),
        ("sharpen/?amount=2", (200, 100)),
        ("brightness/?amount=20", (200, 100)),
        ("contrast/?amount=-20", (200, 100)),
        ("thumbnail/?size=64&fit=cover", (64, 64)),
    ];
    for (path, size) in cases {
        let response = server.get(&format!("/images/{id}/{path}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], "image/png", "{path}");
        let image = decode(&response.bytes().await.unwrap());
        assert_eq!((image.width(), image.height()), *size, "{path}");
    }
    // Pixels moved where they should: rotate 90 puts the top-left quadrant top-right,
    // a vertical flip puts it bottom-left, an east crop keeps the right half.
    assert_eq!(
        quadrant_at(
            &server
                .get_image(&format!("/images/{id}/rotate/?deg=90"))
                .await,
            0.75,
            0.25
        ),
        0
    );
    assert_eq!(
        quadrant_at(
            &server
                .get_image(&format!("/images/{id}/flip/?axis=v"))
                .await,
            0.25,
            0.75
        ),
        0
    );
    assert_eq!(
        quadrant_at(
            &server
                .get_image(&format!("/images/{id}/crop/?aspect=1:1&gravity=east"))
                .await,
            0.75,
            0.25
        ),
        1
    );
    let gray = server.get_image(&format!("/images/{id}/grayscale/")).await;
    assert!(!gray.color().has_color());
}

async fn pipelines_run_in_order_and_share_one_canonical_cache_entry(backend: Backend) {
    let server = TestServer::on_with(backend, |s| {
        s.presets.insert(
            "square".into(),
            "crop(aspect=1:1)/resize(w=64)/grayscale".into(),
        );
    })
    .await;
    let id = upload(&server, &encode(&quadrants(300, 200), ImageFormat::Jpeg)).await;
    let path = format!("/images/{id}/crop(aspect=1:1)/resize(w=64)/grayscale/?format=webp");
    let response = server.get(&path).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/webp");
    assert_eq!(response.headers()["x-cache"], "MISS");
    let image = decode(&response.bytes().await.unwrap());
    assert_eq!((image.width(), image.height()), (64, 64));
    let [r, g, b] = image.to_rgb8().get_pixel(10, 10).0;
    assert!(r.abs_diff(g) < 8 && g.abs_diff(b) < 8, "grey: {r} {g} {b}");

    // The preset is the same pipeline: same key, so already cached.
    let preset = server
        .get(&format!("/images/{id}/square/?format=webp"))
        .await;
    assert_eq!(preset.headers()["x-cache"], "HIT");
    let key = format!(
        "{}.e{ENGINE_VERSION}.crop(aspect=1:1,gravity=center)+resize(w=64,fit=cover,upscale=false,filter=lanczos3)+grayscale.q80.webp",
        blob_key(&id)
    );
    assert!(
        server.read_object(&key).await.is_some(),
        "{:?}",
        server.stored_files().await
    );

    // Percent-encoded, as browsers send it.
    let encoded =
        format!("/images/{id}/crop%28aspect%3D1%3A1%29/resize%28w%3D64%29/grayscale/?format=webp");
    assert_eq!(server.get(&encoded).await.headers()["x-cache"], "HIT");
}

async fn bad_pipelines_are_400_pointing_at_the_step(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = upload(&server, &jpeg(20, 20)).await;
    for (pipeline, code, step) in [
        (
            "crop(aspect=1:1)/resize(w=abc)",
            "invalid_parameter",
            "step 2",
        ),
        ("crop(aspect=1:1/resize(w=10)", "invalid_pipeline", "step 1"),
        ("grayscale/resize(w)", "invalid_pipeline", "step 2"),
        ("ascii/grayscale", "invalid_pipeline", "step 2"),
        ("grayscale/sepia", "unknown_transform", "step 2"),
    ] {
        let response = server.get(&format!("/images/{id}/{pipeline}/")).await;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        let expected = if code == "unknown_transform" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(status, expected, "{pipeline}: {body}");
        assert_eq!(body["error"]["code"], code, "{pipeline}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(step),
            "{pipeline}: {body}"
        );
    }
    let response = server
        .get(&format!("/images/{id}/grayscale/blur/?sigma=2"))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

async fn format_auto_follows_accept_and_varies_on_it(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = upload(&server, &jpeg(64, 48)).await;
    let path = server.url(&format!("/images/{id}/thumbnail/?size=32&format=auto"));
    for (accept, content_type) in [
        ("image/avif,image/webp,*/*", "image/avif"),
        ("image/webp,*/*", "image/webp"),
        ("*/*", "image/jpeg"),
    ] {
        let response = server
            .client
            .get(&path)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], content_type, "{accept}");
        assert_eq!(response.headers()["vary"], "accept");
        let body = response.bytes().await.unwrap();
        if content_type == "image/avif" {
            assert_eq!(&body[4..12], b"ftypavif");
        } else {
            assert_eq!(decode(&body).width(), 32);
        }
    }
    let derived = server
        .stored_files()
        .await
        .into_iter()
        .filter(|f| f.contains(&derived_marker()))
        .count();
    assert_eq!(derived, 3, "one cached object per negotiated format");
}

async fn every_output_format_is_what_it_says(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = upload(&server, &png(40, 30)).await;
    for (format, content_type) in [
        ("jpeg", "image/jpeg"),
        ("png", "image/png"),
        ("webp", "image/webp"),
        ("gif", "image/gif"),
        ("bmp", "image/bmp"),
        ("tiff", "image/tiff"),
        ("avif", "image/avif"),
    ] {
        let response = server
            .get(&format!("/images/{id}/convert/?format={format}"))
            .await;
        assert_eq!(response.headers()["content-type"], content_type);
        let body = response.bytes().await.unwrap();
        if format == "avif" {
            assert_eq!(&body[4..12], b"ftypavif");
            continue;
        }
        let image = decode(&body);
        assert_eq!((image.width(), image.height()), (40, 30), "{format}");
        assert!(is_red(&image, 5, 15) && is_blue(&image, 35, 15), "{format}");
    }
    let lossless = server
        .get_bytes(&format!("/images/{id}/convert/?format=webp&lossless=true"))
        .await;
    assert_eq!(&lossless[12..16], b"VP8L");
    assert_eq!(
        decode(&lossless).to_rgb8(),
        decode(&png(40, 30)).to_rgb8(),
        "lossless is exact"
    );
}

async fn alpha_is_kept_where_the_format_allows_and_flattened_onto_bg_elsewhere(backend: Backend) {
    let server = TestServer::on(backend).await;
    // Left half transparent, right half opaque blue.
    let rgba = RgbaImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([20, 20, 220, 255])
        }
    });
    let id = upload(
        &server,
        &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
    )
    .await;
    for format in ["png", "webp&lossless=true", "webp", "tiff"] {
        let image = server
            .get_image(&format!("/images/{id}/convert/?format={format}"))
            .await;
        assert!(image.color().has_alpha(), "{format}");
        assert_eq!(
            image.to_rgba8().get_pixel(5, 10).0[3],
            0,
            "{format} keeps transparency"
        );
    }
    let white = server
        .get_image(&format!("/images/{id}/convert/?format=jpeg"))
        .await
        .to_rgb8();
    assert!(
        white.get_pixel(5, 10).0.iter().all(|&c| c > 240),
        "default bg is white"
    );
    let red = server
        .get_image(&format!("/images/{id}/convert/?format=jpeg&bg=ff0000"))
        .await
        .to_rgb8();
    let [r, g, b] = red.get_pixel(5, 10).0;
    assert!(r > 240 && g < 20 && b < 20, "bg=ff0000: {r} {g} {b}");
    assert!(
        is_blue(&DynamicImage::ImageRgb8(red), 30, 10),
        "opaque pixels stay"
    );
}

async fn exif_orientations_one_to_eight_come_out_upright(backend: Backend) {
    let server = TestServer::on(backend).await;
    // Stored pixels for each orientation are chosen so that, once the tag is applied,
    // the upright image is `quadrants(40, 20)`: red top-left, green top-right.
    let upright = quadrants(40, 20);
    for orientation in 1..=8u16 {
        let stored = match orientation {
            1 => upright.clone(),
            2 => upright.fliph(),
            3 => upright.rotate180(),
            4 => upright.flipv(),
            5 => upright.rotate90().fliph(),
            6 => upright.rotate270(),
            7 => upright.rotate270().fliph(),
            _ => upright.rotate90(),
        };
        // WebP's EXIF chunk is bare TIFF by the spec, but exiftool and cameras write
        // JPEG's `Exif\0\0` prefix into it too: both are read.
        for format in ["jpeg", "webp", "webp with Exif prefix"] {
            let bytes = match format {
                "jpeg" => jpeg_with_orientation(&stored, orientation),
                "webp" => webp_with_orientation(&stored, orientation, false),
                _ => webp_with_orientation(&stored, orientation, true),
            };
            // Stored, its sidecar lists the size as shown, as every transform sees it.
            let id = upload(&server, &bytes).await;
            let meta: serde_json::Value = server.get_json(&format!("/images/{id}/meta/")).await;
            assert_eq!(
                (meta["width"].as_u64(), meta["height"].as_u64()),
                (Some(40), Some(20)),
                "{format} orientation {orientation}"
            );
            let response = server
                .post_raw("/on_demand/convert/?format=png", "image/x", bytes)
                .await;
            assert_eq!(response.status(), StatusCode::OK, "{format} {orientation}");
            let image = decode(&response.bytes().await.unwrap());
            assert_eq!(
                (image.width(), image.height()),
                (40, 20),
                "{format} orientation {orientation}"
            );
            let layout = [
                quadrant_at(&image, 0.25, 0.25),
                quadrant_at(&image, 0.75, 0.25),
                quadrant_at(&image, 0.25, 0.75),
            ];
            assert_eq!(layout, [0, 1, 2], "{format} orientation {orientation}");
        }
        // Formats that could carry the tag get none: viewers must not turn it again.
        let source = jpeg_with_orientation(&stored, orientation);
        for format in ["jpeg", "webp"] {
            let response = server
                .post_raw(
                    &format!("/on_demand/convert/?format={format}"),
                    "image/x",
                    source.clone(),
                )
                .await;
            let bytes = response.bytes().await.unwrap();
            let tagged = bytes.windows(6).any(|w| w == b"Exif\0\0")
                || (format == "webp" && bytes.windows(4).any(|w| w == b"EXIF"));
            assert!(!tagged, "{format} {orientation}");
            let image = decode(&bytes);
            assert_eq!(
                (image.width(), image.height()),
                (40, 20),
                "{format} {orientation}"
            );
        }
    }
}

/// An Adobe-RGB-like profile: sRGB's white, red and blue, a wider green, gamma 2.2.
fn wide_gamut() -> lcms2::Profile {
    use lcms2::{CIExyY, CIExyYTRIPLE, Profile, ToneCurve};
    let point = |x, y| CIExyY { x, y, Y: 1.0 };
    let primaries = CIExyYTRIPLE {
        Red: point(0.64, 0.33),
        Green: point(0.21, 0.71),
        Blue: point(0.15, 0.06),
    };
    let curve = ToneCurve::new(2.2);
    Profile::new_rgb(
        &point(0.3127, 0.3290),
        &primaries,
        &[&curve, &curve, &curve],
    )
    .unwrap()
}

/// What `colour` tagged with `profile` is in sRGB, by lcms2 directly: the reference.
/// Fails unless the conversion moves it noticeably, so that a test using it can fail.
fn in_srgb(profile: &lcms2::Profile, colour: [u8; 3]) -> [u8; 3] {
    use lcms2::{Intent, PixelFormat, Profile, Transform};
    let mut converted = [0u8; 3];
    Transform::<u8, u8>::new(
        profile,
        PixelFormat::RGB_8,
        &Profile::new_srgb(),
        PixelFormat::RGB_8,
        Intent::Perceptual,
    )
    .unwrap()
    .transform_pixels(&colour, &mut converted);
    assert!(
        converted
            .iter()
            .zip(colour)
            .any(|(c, o)| c.abs_diff(o) > 10),
        "the profile should move {colour:?}: {converted:?}"
    );
    converted
}

async fn embedded_icc_profiles_are_converted_to_srgb(backend: Backend) {
    let wide = wide_gamut();
    let colour = [90u8, 160, 90];
    let expected = in_srgb(&wide, colour);

    let flat = DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, Rgb(colour)));
    let tagged = jpeg_with_icc(&encode(&flat, ImageFormat::Jpeg), &wide.icc().unwrap());
    let response = server_convert_png(backend, tagged).await;
    let got = response.to_rgb8().get_pixel(8, 8).0;
    assert!(
        got.iter().zip(expected).all(|(g, e)| g.abs_diff(e) <= 4),
        "got {got:?}, expected {expected:?}"
    );
}

/// The same Adobe-RGB-like wide profile for 16-bit pixels, and a linear gray profile
/// for gray ones: both must come out as what they mean in sRGB.
async fn sixteen_bit_and_gray_images_are_colour_managed_too(backend: Backend) {
    use image::codecs::png::PngEncoder;
    use image::{ExtendedColorType, ImageEncoder, Luma};
    use lcms2::{CIExyY, Profile, ToneCurve};
    let wide = wide_gamut();
    let white = CIExyY {
        x: 0.3127,
        y: 0.3290,
        Y: 1.0,
    };
    let linear_gray = Profile::new_gray(&white, &ToneCurve::new(1.0)).unwrap();
    let png = |samples: &[u8], width: u32, colour: ExtendedColorType, icc: Vec<u8>| {
        let mut out = Vec::new();
        let mut encoder = PngEncoder::new(&mut out);
        encoder.set_icc_profile(icc).unwrap();
        encoder.write_image(samples, width, width, colour).unwrap();
        out
    };

    // 16-bit RGB, a colour inside sRGB's gamut (lcms2's 8 and 16-bit paths clip
    // differently in the last few levels near black).
    let expected = in_srgb(&wide, [130, 160, 120]);
    let colour = [130u16 * 257, 160 * 257, 120 * 257];
    let samples: Vec<u8> = (0..16 * 16)
        .flat_map(|_| colour)
        .flat_map(u16::to_be_bytes)
        .collect();
    let rgb16 = png(&samples, 16, ExtendedColorType::Rgb16, wide.icc().unwrap());
    let got = server_convert_png(backend, rgb16)
        .await
        .to_rgb8()
        .get_pixel(8, 8)
        .0;
    assert!(
        got.iter().zip(expected).all(|(g, e)| g.abs_diff(e) <= 4),
        "16-bit: got {got:?}, expected {expected:?}"
    );

    // Gray, linear: 20% linear light is sRGB 124, not 51 read as if sRGB.
    let expected = 124u8;
    let gray_png = png(
        &[51; 16 * 16],
        16,
        ExtendedColorType::L8,
        linear_gray.icc().unwrap(),
    );
    let flat_gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(16, 16, Luma([51])));
    let gray_jpeg = jpeg_with_icc(
        &encode(&flat_gray, ImageFormat::Jpeg),
        &linear_gray.icc().unwrap(),
    );
    for (what, bytes) in [("png", gray_png), ("jpeg", gray_jpeg)] {
        let got = server_convert_png(backend, bytes)
            .await
            .to_luma8()
            .get_pixel(8, 8)
            .0[0];
        assert!(
            got.abs_diff(expected) <= 3,
            "gray {what}: got {got}, expected {expected}"
        );
    }
}

/// A JPEG with `icc` inserted after SOI as an APP2 ICC_PROFILE segment.
fn jpeg_with_icc(jpeg: &[u8], icc: &[u8]) -> Vec<u8> {
    let mut tagged = jpeg[..2].to_vec();
    tagged.extend_from_slice(&[0xFF, 0xE2]);
    tagged.extend_from_slice(&((2 + 14 + icc.len()) as u16).to_be_bytes());
    tagged.extend_from_slice(b"ICC_PROFILE\0\x01\x01");
    tagged.extend_from_slice(icc);
    tagged.extend_from_slice(&jpeg[2..]);
    tagged
}

async fn server_convert_png(backend: Backend, bytes: Vec<u8>) -> DynamicImage {
    let server = TestServer::on(backend).await;
    let response = server
        .post_raw("/on_demand/convert/?format=png", "image/jpeg", bytes)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    decode(&response.bytes().await.unwrap())
}

async fn cmyk_jpegs_come_out_in_the_right_colours(backend: Backend) {
    let bytes = fixture("pil_sample_cmyk.jpg");
    let ours = server_convert_png(backend, bytes.clone()).await.to_rgb8();
    // The image crate's decoder converts CMYK on its own: an independent reference.
    let reference = image::load_from_memory(&bytes).unwrap().to_rgb8();
    assert_eq!(ours.dimensions(), reference.dimensions());
    let difference: u64 = ours
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = difference as f64 / ours.as_raw().len() as f64;
    assert!(mean < 6.0, "mean difference {mean}");
}

/// A CMYK JPEG of one colour, stored as `stored` (CMYK or YCCK), in Adobe's inverted
/// convention (255 is no ink), which libjpeg writes with an Adobe marker.
fn cmyk_jpeg(ink: [u8; 4], stored: mozjpeg::ColorSpace) -> Vec<u8> {
    let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_CMYK);
    compress.set_color_space(stored);
    compress.set_size(16, 16);
    compress.set_quality(95.0);
    let mut started = compress.start_compress(Vec::new()).unwrap();
    let inverted = ink.map(|channel| 255 - channel);
    started.write_scanlines(&inverted.repeat(16 * 16)).unwrap();
    started.finish().unwrap()
}

async fn ycck_jpegs_come_out_in_the_right_colours(backend: Backend) {
    let server = TestServer::on(backend).await;
    // Magenta and yellow ink make red; cyan and yellow make green.
    for (ink, expected) in [
        ([0, 255, 255, 0], [255, 0, 0]),
        ([255, 0, 255, 0], [0, 255, 0]),
    ] {
        for stored in [mozjpeg::ColorSpace::JCS_YCCK, mozjpeg::ColorSpace::JCS_CMYK] {
            let bytes = cmyk_jpeg(ink, stored);
            let transform = if stored == mozjpeg::ColorSpace::JCS_YCCK {
                2
            } else {
                0
            };
            let adobe = bytes.windows(5).position(|w| w == b"Adobe").unwrap();
            assert_eq!(bytes[adobe + 11], transform, "stored as {stored:?}");
            let response = server
                .post_raw("/on_demand/convert/?format=png", "image/jpeg", bytes)
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let image = decode(&response.bytes().await.unwrap()).to_rgb8();
            let pixel = image.get_pixel(8, 8).0;
            let close = pixel.iter().zip(expected).all(|(a, b)| a.abs_diff(b) < 12);
            assert!(close, "{ink:?} stored as {stored:?}: {pixel:?}");
        }
    }
}

async fn avif_uploads_are_read_upright_by_builds_with_libavif(backend: Backend) {
    let server = TestServer::on(backend).await;
    let turned = fixture("quadrants-irot1.avif");
    if !cfg!(libavif) {
        let response = server.post_raw("/", "image/avif", turned).await;
        expect_error(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
        return;
    }
    // Stored turned a quarter clockwise with irot=1, and mirrored with imir=1 (made by
    // libavif's avifenc): both come out as the upright quadrants.
    for name in ["quadrants-irot1.avif", "quadrants-imir1.avif"] {
        let id = upload(&server, &fixture(name)).await;
        let meta: serde_json::Value = server.get_json(&format!("/images/{id}/meta/")).await;
        assert_eq!(meta["format"], "avif", "{name}");
        assert_eq!(
            (meta["width"].as_u64(), meta["height"].as_u64()),
            (Some(40), Some(20)),
            "{name}: the size as shown"
        );
        let image = server
            .get_image(&format!("/images/{id}/convert/?format=png"))
            .await;
        assert_eq!((image.width(), image.height()), (40, 20), "{name}");
        let layout = [
            quadrant_at(&image, 0.25, 0.25),
            quadrant_at(&image, 0.75, 0.25),
            quadrant_at(&image, 0.25, 0.75),
        ];
        assert_eq!(layout, [0, 1, 2], "{name}");
        let thumb = server
            .get_image(&format!("/images/{id}/thumbnail/?w=10&format=png"))
            .await;
        assert_eq!((thumb.width(), thumb.height()), (10, 5), "{name}");
    }

    // The server's own AVIF of a half-transparent image reads back with its alpha.
    let mut rgba = quadrants(40, 20).to_rgba8();
    for (x, _, pixel) in rgba.enumerate_pixels_mut() {
        pixel.0[3] = if x < 20 { 255 } else { 0 };
    }
    let png = encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
    let avif = server
        .post_raw("/on_demand/convert/?format=avif&q=95", "image/png", png)
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let id = upload(&server, &avif).await;
    let back = server
        .get_image(&format!("/images/{id}/convert/?format=png"))
        .await
        .to_rgba8();
    assert_eq!(back.get_pixel(5, 5).0[3], 255);
    assert_eq!(back.get_pixel(35, 5).0[3], 0);
    let [r, g, b, _] = back.get_pixel(5, 5).0;
    assert!(r > 190 && g < 70 && b < 70, "red quadrant: {r} {g} {b}");

    // Cut short, it is refused at upload, before anything is stored.
    let response = server
        .post_raw("/", "image/avif", avif[..avif.len() / 2].to_vec())
        .await;
    expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "undecodable_image",
    )
    .await;
}

async fn sixteen_bit_and_gray_alpha_pngs_work(backend: Backend) {
    let server = TestServer::on(backend).await;
    let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(30, 20, |x, _| {
        image::Rgb([if x < 15 { 60000 } else { 0 }, 0, 0])
    }));
    let id = upload(&server, &encode(&deep, ImageFormat::Png)).await;
    let thumb = server
        .get_image(&format!("/images/{id}/thumbnail/?w=15"))
        .await;
    assert_eq!((thumb.width(), thumb.height()), (15, 10));
    let jpeg = server
        .get_image(&format!("/images/{id}/thumbnail/?w=15&format=jpeg"))
        .await;
    assert!(jpeg.to_rgb8().get_pixel(2, 5).0[0] > 200);

    let gray_alpha = DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_fn(20, 20, |x, _| {
        image::LumaA([128, if x < 10 { 0 } else { 255 }])
    }));
    let deep_gray_alpha =
        DynamicImage::ImageLumaA16(image::ImageBuffer::from_fn(20, 20, |x, _| {
            image::LumaA([128 * 257, if x < 10 { 0 } else { 65535 }])
        }));
    for source in [gray_alpha, deep_gray_alpha] {
        let id = upload(&server, &encode(&source, ImageFormat::Png)).await;
        let what = format!("{:?}", source.color());
        // Every format with alpha keeps it (AVIF: see the AVIF test, which reads back).
        for format in ["png", "webp", "tiff", "gif"] {
            for transform in ["convert/?", "resize/?w=10&"] {
                let image = server
                    .get_image(&format!("/images/{id}/{transform}format={format}"))
                    .await
                    .to_rgba8();
                let (width, _) = image.dimensions();
                let [clear, opaque] = [1, width - 2].map(|x| image.get_pixel(x, 5).0);
                assert_eq!(clear[3], 0, "{what} {transform} {format}");
                assert_eq!(opaque[3], 255, "{what} {transform} {format}");
                assert!(opaque[0].abs_diff(128) < 6, "{what} {format}: {opaque:?}");
            }
        }
        // The rest flatten onto `bg`, in colour when the background has colour.
        for format in ["jpeg", "bmp"] {
            let image = server
                .get_image(&format!("/images/{id}/convert/?format={format}&bg=ff0000"))
                .await
                .to_rgb8();
            let [r, g, b] = image.get_pixel(1, 5).0;
            assert!(r > 240 && g < 15 && b < 15, "{what} {format}: {r} {g} {b}");
            assert!(
                image.get_pixel(18, 5).0[0].abs_diff(128) < 6,
                "{what} {format}"
            );
        }
    }
}

/// A 16x16 animated GIF of three solid frames: red, green, blue.
fn traffic_light() -> Vec<u8> {
    let colours = [
        Rgba([220, 20, 20, 255]),
        Rgba([20, 200, 20, 255]),
        Rgba([20, 20, 220, 255]),
    ];
    let frames = colours.map(|colour| {
        image::Frame::from_parts(
            RgbaImage::from_pixel(16, 16, colour),
            0,
            0,
            image::Delay::from_numer_denom_ms(100, 1),
        )
    });
    let mut gif = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut gif);
        encoder.encode_frames(frames).unwrap();
    }
    gif
}

fn frames_of(decoder: impl image::AnimationDecoder<'static>) -> Vec<RgbaImage> {
    decoder
        .into_frames()
        .map(|f| f.unwrap().into_buffer())
        .collect()
}

async fn an_animated_gif_gives_its_first_frame_as_a_still(backend: Backend) {
    let server = TestServer::on(backend).await;
    let response = server
        .post_raw(
            "/on_demand/thumbnail/?size=8&format=png",
            "image/gif",
            traffic_light(),
        )
        .await;
    let still = decode(&response.bytes().await.unwrap());
    assert!(is_red(&still, 4, 4), "first frame");
}

async fn animated_true_keeps_every_frame_in_gif_and_webp(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = upload(&server, &traffic_light()).await;
    let gif = server
        .get(&format!("/images/{id}/thumbnail/?size=8&animated=true"))
        .await;
    assert_eq!(gif.headers()["content-type"], "image/gif");
    let bytes = gif.bytes().await.unwrap().to_vec();
    let frames =
        frames_of(image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes)).unwrap());
    assert_eq!(frames.len(), 3);
    assert!(
        frames.iter().all(|f| f.dimensions() == (8, 8)),
        "every frame went through the pipeline"
    );
    let greens: Vec<u8> = frames.iter().map(|f| f.get_pixel(4, 4).0[1]).collect();
    assert!(
        greens[0] < 100 && greens[1] > 150 && greens[2] < 100,
        "{greens:?}"
    );

    let webp = server
        .get(&format!(
            "/images/{id}/thumbnail/?size=8&animated=true&format=webp&lossless=true"
        ))
        .await;
    assert_eq!(webp.headers()["content-type"], "image/webp");
    let bytes = webp.bytes().await.unwrap().to_vec();
    assert!(bytes.windows(4).any(|w| w == b"ANIM"), "an animated WebP");
    let frames =
        frames_of(image::codecs::webp::WebPDecoder::new(std::io::Cursor::new(bytes)).unwrap());
    assert_eq!(frames.len(), 3);
    assert!(
        frames[2].get_pixel(4, 4).0[2] > 200,
        "the last frame is blue"
    );
}

/// The traffic light as an APNG: each frame's IDAT data taken from a PNG the image
/// crate encodes, framed with acTL/fcTL/fdAT chunks by hand (nothing here writes APNG).
fn traffic_light_apng() -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        !bytes.iter().fold(!0u32, |crc, &byte| {
            (0..8).fold(crc ^ u32::from(byte), |c, _| {
                (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg())
            })
        })
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend(u32::try_from(data.len()).unwrap().to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    /// The chunks of a PNG, as (type, data).
    fn chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        let mut found = Vec::new();
        let mut at = 8;
        while at + 8 <= png.len() {
            let length = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = png[at + 4..at + 8].try_into().unwrap();
            found.push((kind, png[at + 8..at + 8 + length].to_vec()));
            at += 12 + length;
        }
        found
    }
    let colours = [[220, 20, 20, 255], [20, 200, 20, 255], [20, 20, 220, 255]];
    let frames: Vec<Vec<([u8; 4], Vec<u8>)>> = colours
        .iter()
        .map(|&colour| {
            let frame = DynamicImage::ImageRgba8(RgbaImage::from_pixel(16, 16, Rgba(colour)));
            chunks(&encode(&frame, ImageFormat::Png))
        })
        .collect();
    let mut apng = b"\x89PNG\r\n\x1a\n".to_vec();
    let header = &frames[0]
        .iter()
        .find(|(kind, _)| kind == b"IHDR")
        .unwrap()
        .1;
    chunk(&mut apng, b"IHDR", header);
    let mut animation = 3u32.to_be_bytes().to_vec();
    animation.extend(0u32.to_be_bytes()); // loop forever
    chunk(&mut apng, b"acTL", &animation);
    let mut sequence = 0u32;
    for (index, frame) in frames.iter().enumerate() {
        let mut control = sequence.to_be_bytes().to_vec();
        sequence += 1;
        for value in [16u32, 16, 0, 0] {
            control.extend(value.to_be_bytes()); // width, height, x, y
        }
        control.extend([0, 10, 0, 100, 0, 0]); // 10/100 s, no dispose, source blend
        chunk(&mut apng, b"fcTL", &control);
        for (_, data) in frame.iter().filter(|(kind, _)| kind == b"IDAT") {
            if index == 0 {
                chunk(&mut apng, b"IDAT", data);
            } else {
                let mut frame_data = sequence.to_be_bytes().to_vec();
                sequence += 1;
                frame_data.extend(data);
                chunk(&mut apng, b"fdAT", &frame_data);
            }
        }
    }
    chunk(&mut apng, b"IEND", &[]);
    apng
}

async fn apng_and_animated_webp_sources_animate_like_gifs(backend: Backend) {
    let server = TestServer::on(backend).await;
    // The server's own animated WebP of the traffic light is the WebP source.
    let gif_id = upload(&server, &traffic_light()).await;
    let webp = server
        .get(&format!(
            "/images/{gif_id}/convert/?animated=true&format=webp&lossless=true"
        ))
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    assert!(webp.windows(4).any(|w| w == b"ANIM"), "an animated WebP");
    for (source, bytes) in [("apng", traffic_light_apng()), ("webp", webp)] {
        let id = upload(&server, &bytes).await;
        let still = server
            .get_image(&format!("/images/{id}/thumbnail/?size=8&format=png"))
            .await;
        assert!(is_red(&still, 4, 4), "{source}: the first frame as a still");
        let gif = server
            .get(&format!(
                "/images/{id}/thumbnail/?size=8&animated=true&format=gif"
            ))
            .await;
        assert_eq!(gif.headers()["content-type"], "image/gif", "{source}");
        let bytes = gif.bytes().await.unwrap().to_vec();
        let frames =
            frames_of(image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes)).unwrap());
        let greens: Vec<u8> = frames.iter().map(|f| f.get_pixel(4, 4).0[1]).collect();
        assert_eq!(frames.len(), 3, "{source}");
        assert!(
            greens[0] < 100 && greens[1] > 150 && greens[2] < 100,
            "{source}: {greens:?}"
        );
    }
}

async fn animated_true_on_a_still_source_gives_a_still(backend: Backend) {
    let server = TestServer::on(backend).await;
    let still = DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, Rgb([220, 20, 20])));
    for source in [ImageFormat::Png, ImageFormat::WebP] {
        let id = upload(&server, &encode(&still, source)).await;
        for format in ["gif", "webp"] {
            let path = format!("/images/{id}/thumbnail/?size=8&animated=true&format={format}");
            let response = server.get(&path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let bytes = response.bytes().await.unwrap();
            let image = decode(&bytes);
            assert_eq!(
                (image.width(), image.height()),
                (8, 8),
                "{source:?} {format}"
            );
            assert!(is_red(&image, 4, 4), "{source:?} {format}");
        }
    }
}

async fn animations_over_max_frames_are_413(backend: Backend) {
    let server = TestServer::on_with(backend, |s| s.limits.max_frames = 2).await;
    let response = server
        .post_raw(
            "/on_demand/convert/?format=gif&animated=true",
            "image/gif",
            traffic_light(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "max_frames");
}

async fn outputs_over_the_limit_are_413_before_decoding(backend: Backend) {
    let server = TestServer::on_with(backend, |s| s.limits.max_output_pixels = 1_000_000).await;
    let id = upload(&server, &jpeg(100, 100)).await;
    let response = server
        .get(&format!("/images/{id}/resize/?w=2000&h=2000&upscale=true"))
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "max_output_pixels");
    assert!(server
        .get(&format!("/images/{id}/resize/?w=1000&h=1000&upscale=true"))
        .await
        .status()
        .is_success());
}

/// A progressive JPEG (mozjpeg's default scan script: DC first, then AC).
fn progressive_jpeg(image: &DynamicImage) -> Vec<u8> {
    let rgb = image.to_rgb8();
    let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    compress.set_size(rgb.width() as usize, rgb.height() as usize);
    compress.set_quality(90.0);
    compress.set_progressive_mode();
    let mut started = compress.start_compress(Vec::new()).unwrap();
    started.write_scanlines(rgb.as_raw()).unwrap();
    started.finish().unwrap()
}

async fn small_thumbnails_of_progressive_jpegs_come_from_the_dc_scans_alone(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = progressive_jpeg(&quadrants(800, 400));
    assert_eq!(&bytes[..2], [0xFF, 0xD8]);
    // 800 / 8 = 100: the whole thumbnail can come from the DC coefficients.
    let thumb = server
        .post_raw(
            "/on_demand/thumbnail/?w=100&format=png",
            "image/jpeg",
            bytes.clone(),
        )
        .await;
    assert_eq!(thumb.status(), StatusCode::OK);
    let thumb = decode(&thumb.bytes().await.unwrap());
    assert_eq!((thumb.width(), thumb.height()), (100, 50));
    let layout = [
        quadrant_at(&thumb, 0.25, 0.25),
        quadrant_at(&thumb, 0.75, 0.25),
        quadrant_at(&thumb, 0.25, 0.75),
        quadrant_at(&thumb, 0.75, 0.75),
    ];
    assert_eq!(layout, [0, 1, 2, 3]);
    // The same picture a full decode and resize gives.
    let reference = image::load_from_memory(&bytes)
        .unwrap()
        .resize_exact(100, 50, image::imageops::FilterType::Lanczos3)
        .to_rgb8();
    let difference: u64 = thumb
        .to_rgb8()
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = difference as f64 / reference.as_raw().len() as f64;
    assert!(mean < 4.0, "mean difference {mean}");
    // Truncated in the AC scans: still refused, never padded with grey.
    let cut = bytes[..bytes.len() * 3 / 4].to_vec();
    let response = server
        .post_raw("/on_demand/thumbnail/?w=100", "image/jpeg", cut)
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

async fn animated_outputs_respect_the_output_limit_too(backend: Backend) {
    let server = TestServer::on_with(backend, |s| s.limits.max_output_pixels = 10_000).await;
    let path = "/on_demand/resize/?w=200&h=200&upscale=true&format=gif&animated=true";
    let response = server.post_raw(path, "image/gif", traffic_light()).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// Found by the `decode` fuzz target: a corrupt JPEG whose header probes fine but on
/// which libjpeg raises an error mid-decode. Its unwind used to escape the decoder and
/// reach the worker's last-resort guard; now it is a 422 with libjpeg's own words.
/// libjpeg's errors reach the client as 422s with libjpeg's words: at upload when it
/// cannot read the header (found by the `decode` fuzz target: the image crate's header
/// reader used to accept this file, and libjpeg then failed mid-decode), and on the
/// first GET when the trouble comes after the scan (a bad table before EOI).
async fn libjpeg_errors_are_422s_naming_the_error(backend: Backend) {
    let server = TestServer::on(backend).await;
    let response = server
        .post_raw("/", "image/jpeg", fixture("fuzz-jpeg-unwinds.jpg"))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "undecodable_image");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("cannot read this jpeg header: ") && message.contains("marker"),
        "{message}"
    );

    // A DHT with table index 32 after the scan: the header and the scan are fine.
    let mut bad_table = jpeg(64, 48);
    let end = bad_table.len() - 2;
    let mut dht = vec![0xFF, 0xC4, 0x00, 0x13, 0x20];
    dht.extend_from_slice(&[0; 16]);
    bad_table.splice(end..end, dht);
    let id = server.upload_id(&bad_table).await;
    let response = server.get(&format!("/images/{id}/grayscale/")).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "undecodable_image");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("this jpeg cannot be decoded: "),
        "{message}"
    );
    assert!(!message.contains("decoder failed"), "{message}");
}
