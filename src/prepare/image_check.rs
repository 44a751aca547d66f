//! Image checks before sending: pixel size from the header, a JPEG cut short, and one full
//! decode, so a corrupt or oversized image is refused rather than paid for. They need image
//! decoders, which the wire layer does not have: [`check_image`] is what the pipeline passes to
//! [`embedpipe_wire::preflight`], and [`pixel_count`] what it passes to [`embedpipe_wire::usage`].

use crate::util::FailureKind;
use embedpipe_wire::{Image, ImageFormat, ModelSpec, Rejection};

/// Most memory one image may take while it is decoded (16-bit RGBA at 8,000x8,000 px fits).
const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// Largest GIF frame the GIF decoder unpacks (its own fixed budget, 50 MB of RGBA, about
/// 3,500x3,500 px): a larger GIF gets the header checks only, rather than be refused as corrupt.
const GIF_DECODE_BYTES: u64 = 50_000_000;

/// Checks that an image is within the family's pixel limit and decodes, so that a cut-off or
/// corrupt file is not sent (and paid for). The size is read from the header first: a file that
/// declares giant dimensions (a decompression bomb) is refused without decoding. The one full
/// decode is CPU work: call this on rayon. Its refusals travel through the wire pre-flight as
/// codes: the text of a [`FailureKind`], which dispatch reads back with
/// [`FailureKind::from_wire`].
pub fn check_image(spec: &ModelSpec, img: &Image<'_>) -> Result<(), Rejection> {
    let unreadable = FailureKind::UnreadableImage.as_str();
    let too_large = FailureKind::ImageTooLarge.as_str();
    let side = spec.limits.image_side();
    let size = imagesize::blob_size(img.bytes)
        .map_err(|e| (unreadable, format!("the image header cannot be read: {e}")))?;
    if size.width > side as usize || size.height > side as usize {
        return Err((
            too_large,
            format!(
                "the image is {}x{} pixels, over the {side}x{side} limit of {}",
                size.width, size.height, spec.id
            ),
        ));
    }
    if img.format == ImageFormat::Jpeg && !jpeg_is_complete(img.bytes) {
        return Err((
            unreadable,
            "the JPEG is cut short: its image data has no end-of-image marker".into(),
        ));
    }
    if img.format == ImageFormat::Gif
        && size.width as u64 * size.height as u64 * 4 > GIF_DECODE_BYTES
    {
        return Ok(());
    }
    let format = match img.format {
        ImageFormat::Png => ::image::ImageFormat::Png,
        ImageFormat::Jpeg => ::image::ImageFormat::Jpeg,
        ImageFormat::Gif => ::image::ImageFormat::Gif,
        ImageFormat::Webp => ::image::ImageFormat::WebP,
    };
    // The decoder checks the header against these before it allocates anything.
    let mut limits = ::image::Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = ::image::ImageReader::with_format(std::io::Cursor::new(img.bytes), format);
    reader.limits(limits);
    // A decoder that panics on a hostile file costs that row, not the run.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()));
    match decoded {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(::image::ImageError::Limits(e))) => Err((
            too_large,
            format!(
                "the image cannot be decoded within {} MiB: {e}",
                MAX_DECODE_BYTES >> 20
            ),
        )),
        Ok(Err(e)) => Err((
            unreadable,
            format!("the {} image cannot be decoded: {e}", img.format.as_str()),
        )),
        Err(_) => Err((
            unreadable,
            format!("the {} image cannot be decoded", img.format.as_str()),
        )),
    }
}

/// Whether a JPEG's image data runs to its end-of-image marker. JPEG decoders fill a cut-off
/// scan with grey rather than fail, so a truncated file would decode.
fn jpeg_is_complete(b: &[u8]) -> bool {
    // Step over the marker segments up to the first start of scan (an EXIF thumbnail, with an
    // end marker of its own, sits inside its APP1 segment), then look for the end marker: in
    // scan data 0xFF is followed only by 0x00 or a restart marker, so FF D9 there is the end.
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return false;
        }
        let marker = b[i + 1];
        match marker {
            // A fill byte.
            0xFF => i += 1,
            // Markers without a length.
            0x01 | 0xD0..=0xD8 => i += 2,
            0xD9 => return false,
            _ => {
                let next = i + 2 + usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
                if marker == 0xDA {
                    return b.get(next..).is_some_and(|scan| {
                        scan.windows(2).rev().any(|w| w[0] == 0xFF && w[1] == 0xD9)
                    });
                }
                i = next;
            }
        }
    }
    false
}

/// An image's pixel count from its header, when it can be read (Cohere v4 bills by pixels).
pub fn pixel_count(img: &Image<'_>) -> Option<u64> {
    imagesize::blob_size(img.bytes)
        .ok()
        .map(|s| (s.width * s.height) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedpipe_wire::families::{cohere, marengo, nova, titan_multimodal, titan_text};
    use embedpipe_wire::{Input, Params};

    /// The wire pre-flight with this module's image check, as the pipeline runs it; every code
    /// it refuses with must be a named [`FailureKind`].
    fn preflight(
        spec: &ModelSpec,
        params: &Params,
        input: &Input<'_>,
    ) -> Result<Option<String>, Rejection> {
        let r = embedpipe_wire::preflight(spec, params, input, check_image);
        if let Err((code, _)) = &r {
            let kind = FailureKind::from_wire(code);
            assert!(!matches!(kind, FailureKind::UnknownRejection(_)), "{code}");
        }
        r
    }

    #[test]
    fn preflight_rejects_and_truncates() {
        let mut p = Params::defaults(&cohere::V3_ENGLISH);
        let long = "x".repeat(3000);
        let e = preflight(&cohere::V3_ENGLISH, &p, &Input::Text(&long)).unwrap_err();
        assert_eq!(e.0, "input_too_long");
        assert!(e.1.contains("2048"), "{}", e.1);
        p.truncate = Some("END".into());
        let cut = preflight(&cohere::V3_ENGLISH, &p, &Input::Text(&long)).unwrap();
        assert_eq!(cut.unwrap().len(), 2048);
        assert_eq!(
            preflight(&cohere::V3_ENGLISH, &p, &Input::Text(" "))
                .unwrap_err()
                .0,
            "empty_input"
        );
        let gif = Image {
            bytes: b"GIF89a\x01\0\x01\0",
            format: ImageFormat::Gif,
        };
        let e = preflight(&titan_multimodal::SPEC, &p, &Input::Image(gif)).unwrap_err();
        assert_eq!(e.0, "unsupported_image_format");
        assert!(e.1.contains("png, jpeg"), "{}", e.1);
        let e = preflight(&titan_text::V2, &p, &Input::Image(gif)).unwrap_err();
        assert_eq!(e.0, "wrong_modality");
        // A PNG header claiming 4000x10 pixels is over Titan multimodal's 2048 px side.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&4000u32.to_be_bytes());
        png.extend_from_slice(&10u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0]);
        let big = Image {
            bytes: &png,
            format: ImageFormat::Png,
        };
        let e = preflight(&titan_multimodal::SPEC, &p, &Input::Image(big)).unwrap_err();
        assert_eq!(e.0, "image_too_large");
        assert!(e.1.contains("4000x10"), "{}", e.1);
    }

    /// A small PNG or JPEG of noise (so its data does not compress to almost nothing).
    fn encoded(format: ::image::ImageFormat) -> Vec<u8> {
        let mut x = 0x2545_f491_u32;
        let img = ::image::RgbImage::from_fn(64, 48, |_, _| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let [r, g, b, _] = x.to_le_bytes();
            ::image::Rgb([r, g, b])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn preflight_decodes_images_and_checks_their_pixels() {
        let p = Params::defaults(&nova::SPEC);
        let check = |spec: &ModelSpec, bytes: &[u8]| -> Result<(), &'static str> {
            let format = ImageFormat::detect(bytes).unwrap();
            preflight(spec, &p, &Input::Image(Image { bytes, format }))
                .map(|_| ())
                .map_err(|e| e.0)
        };
        let png = encoded(::image::ImageFormat::Png);
        let jpeg = encoded(::image::ImageFormat::Jpeg);
        // The signature and IHDR (33 bytes) are sound, what follows is not PNG.
        let mut garbage = png[..33].to_vec();
        garbage.extend_from_slice(&[0xAB; 512]);
        // Bytes after the end marker (camera trailers) are no reason to refuse a JPEG.
        let mut trailer = jpeg.clone();
        trailer.extend_from_slice(b"\0\0trailer");
        for spec in [&nova::SPEC, &cohere::V4, &titan_multimodal::SPEC] {
            assert_eq!(check(spec, &png), Ok(()), "{}", spec.id);
            assert_eq!(check(spec, &jpeg), Ok(()), "{}", spec.id);
            assert_eq!(check(spec, &trailer), Ok(()), "{}", spec.id);
            // Cut short: the header is intact, the image data is not.
            let half = &png[..png.len() / 2];
            assert_eq!(check(spec, half), Err("unreadable_image"), "{}", spec.id);
            let cut = &jpeg[..jpeg.len() * 2 / 3];
            assert_eq!(check(spec, cut), Err("unreadable_image"), "{}", spec.id);
            assert_eq!(
                check(spec, &garbage),
                Err("unreadable_image"),
                "{}",
                spec.id
            );
        }
        // A header declaring 60000x60000 pixels is refused from the header, for every family.
        let mut giant = png.clone();
        giant[16..20].copy_from_slice(&60000u32.to_be_bytes());
        giant[20..24].copy_from_slice(&60000u32.to_be_bytes());
        for spec in [
            &nova::SPEC,
            &cohere::V4,
            &cohere::V3_ENGLISH,
            &marengo::V3_0,
            &titan_multimodal::SPEC,
        ] {
            let img = Image {
                bytes: &giant,
                format: ImageFormat::Png,
            };
            let e = preflight(spec, &p, &Input::Image(img)).unwrap_err();
            assert_eq!(e.0, "image_too_large", "{}", spec.id);
            assert!(e.1.contains("60000x60000"), "{}", e.1);
        }
        // Text and image together: the image is checked the same way.
        let cut = Image {
            bytes: &png[..png.len() / 2],
            format: ImageFormat::Png,
        };
        let e = preflight(&cohere::V4, &p, &Input::TextImage("a caption", cut)).unwrap_err();
        assert_eq!(e.0, "unreadable_image");
    }

    #[test]
    fn jpeg_completeness_looks_past_the_headers() {
        let jpeg = encoded(::image::ImageFormat::Jpeg);
        assert!(jpeg_is_complete(&jpeg));
        // Cut just before the end marker.
        assert!(!jpeg_is_complete(&jpeg[..jpeg.len() - 2]));
        // An end marker inside a header segment (a thumbnail in APP1) does not count.
        let mut app1 = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        app1.extend_from_slice(&jpeg[2..jpeg.len() - 2]);
        assert!(!jpeg_is_complete(&app1));
    }
}
