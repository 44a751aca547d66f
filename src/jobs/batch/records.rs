//! A batch job's records: each input as `{"recordId", "modelInput"}`, where `modelInput` is
//! exactly the body an on-demand call of the family would send for it alone, after the same
//! pre-flight (texts cut or refused, images checked and decoded once).

use crate::prepare::image_check::check_image;
use crate::prepare::Inputs;
use embedpipe_wire::{Image, ImageFormat, Input, ModelSpec, Params};

/// An image input moved to rayon: (position, its text if any, bytes, content hash).
type ImageRecord = (usize, Option<String>, std::sync::Arc<[u8]>, String);

/// One record line (without its newline), and whether it holds an image (billed per image).
pub(super) struct RecordLine {
    pub pos: usize,
    pub line: Vec<u8>,
    pub image: bool,
}

/// The records of the inputs at `positions` (`hashes[i]` is input i's content hash). An input
/// the pre-flight refuses gets none: the second pass sends it on-demand, which dead-letters it
/// with the same reason. Images are checked on rayon (a full decode each).
pub(super) async fn record_lines(
    spec: &'static ModelSpec,
    params: &Params,
    inputs: &Inputs,
    hashes: &[String],
    positions: Vec<usize>,
) -> anyhow::Result<Vec<RecordLine>> {
    match inputs {
        Inputs::Text(texts) => Ok(positions
            .into_iter()
            .filter_map(|i| {
                let line = record_line(spec, params, &Input::Text(&texts[i]), &hashes[i])?;
                Some(RecordLine {
                    pos: i,
                    line,
                    image: false,
                })
            })
            .collect()),
        Inputs::Image(_) | Inputs::TextImage(_) => {
            let picked: Vec<ImageRecord> = positions
                .into_iter()
                .map(|i| match inputs {
                    Inputs::Image(imgs) => (i, None, imgs[i].clone(), hashes[i].clone()),
                    Inputs::TextImage(pairs) => (
                        i,
                        Some(pairs[i].0.clone()),
                        pairs[i].1.clone(),
                        hashes[i].clone(),
                    ),
                    _ => unreachable!("matched above"),
                })
                .collect();
            let params = params.clone();
            crate::util::cpu(move || {
                use rayon::prelude::*;
                picked
                    .par_iter()
                    .filter_map(|(pos, text, bytes, hash)| {
                        let format = ImageFormat::detect(bytes)?;
                        let image = Image { bytes, format };
                        let input = match text {
                            Some(t) => Input::TextImage(t, image),
                            None => Input::Image(image),
                        };
                        let line = record_line(spec, &params, &input, hash)?;
                        Some(RecordLine {
                            pos: *pos,
                            line,
                            image: true,
                        })
                    })
                    .collect()
            })
            .await
        }
        // Video and audio go through async invoke, never into batch records.
        Inputs::Media(_) => Ok(Vec::new()),
    }
}

/// The record of one input, or `None` when the pre-flight refuses it.
fn record_line(
    spec: &'static ModelSpec,
    params: &Params,
    input: &Input<'_>,
    hash: &str,
) -> Option<Vec<u8>> {
    let cut = embedpipe_wire::preflight(spec, params, input, check_image).ok()?;
    let input = match (&cut, input) {
        (None, _) => *input,
        (Some(t), Input::TextImage(_, img)) => Input::TextImage(t, *img),
        (Some(t), _) => Input::Text(t),
    };
    let body = embedpipe_wire::build_request(spec, params, &[input]).ok()?;
    serde_json::to_vec(&serde_json::json!({"recordId": hash, "modelInput": body})).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nova() -> (&'static ModelSpec, Params) {
        let spec =
            embedpipe_wire::lookup("amazon.nova-2-multimodal-embeddings-v1:0").expect("nova");
        let params = Params::defaults(spec);
        (spec, params)
    }

    fn png(side: u32) -> std::sync::Arc<[u8]> {
        let img = ::image::RgbImage::from_pixel(side, side, ::image::Rgb([10, 200, 30]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ::image::ImageFormat::Png).unwrap();
        out.into_inner().into()
    }

    #[tokio::test]
    async fn an_image_record_holds_the_on_demand_body() {
        let (spec, params) = nova();
        let img = png(4);
        let inputs = Inputs::Image(vec![
            img.clone(),
            std::sync::Arc::from(&b"not an image"[..]),
        ]);
        let hashes = vec!["h0".to_string(), "h1".to_string()];
        let lines = record_lines(spec, &params, &inputs, &hashes, vec![0, 1])
            .await
            .unwrap();
        // The bytes that are no image get no record: on-demand dead-letters them.
        assert_eq!(lines.len(), 1);
        assert!(lines[0].image);
        let v: serde_json::Value = serde_json::from_slice(&lines[0].line).unwrap();
        assert_eq!(v["recordId"], "h0");
        let format = ImageFormat::detect(&img).unwrap();
        let body = embedpipe_wire::build_request(
            spec,
            &params,
            &[Input::Image(Image {
                bytes: &img,
                format,
            })],
        )
        .unwrap();
        assert_eq!(v["modelInput"], body);
    }

    #[tokio::test]
    async fn a_corrupt_image_gets_no_record() {
        let (spec, params) = nova();
        let mut cut = png(64).to_vec();
        cut.truncate(cut.len() / 2);
        let inputs = Inputs::Image(vec![cut.into()]);
        let lines = record_lines(spec, &params, &inputs, &["h".to_string()], vec![0])
            .await
            .unwrap();
        assert!(lines.is_empty());
    }
}
