//! A batch job's records: the lines of a JSONL input file read as records, each record's
//! `modelInput` answered with its family's own InvokeModel logic (the same validation and
//! response body; none of on-demand's latency, quotas or injected faults), and the output
//! files: one `<input>.out` per input file, its lines shuffled, and `manifest.json.out`.

use crate::catalog::Model;
use crate::families::common::{object, POISONED};
use crate::invoke::draw;
use crate::wire::Accepted;
use serde::Serialize;
use serde_json::Value;

/// Records whose `modelInput` contains this fail with 400, as async inputs marked so do.
const POISON_MARKER: &str = "poison";

/// One line of an input file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// A line with a `modelInput` to answer.
    Input { id: String, input: Value },
    /// A line that is no record (not JSON, no `modelInput`): answered with an error line, not
    /// a failure of the job.
    Broken {
        id: String,
        input: Option<Value>,
        message: String,
    },
}

/// An id for a record that came without one (AWS adds one too; 11 characters like its
/// examples' `CALL0000001`).
fn new_id() -> String {
    (0..11)
        .map(|_| {
            let c = fastrand::u8(0..36);
            char::from_digit(c as u32, 36)
                .expect("digit")
                .to_ascii_uppercase()
        })
        .collect()
}

/// The records of an input file: one per non-blank line.
pub(crate) fn parse(text: &str) -> Vec<Record> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let broken = |id: String, input: Option<Value>, message: &str| Record::Broken {
                id,
                input,
                message: message.to_string(),
            };
            let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line) else {
                return broken(new_id(), None, "The record is not a valid JSON object.");
            };
            let id = match o.get("recordId") {
                None | Some(Value::Null) => new_id(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => {
                    return broken(new_id(), None, "The record's recordId must be a string.")
                }
            };
            match o.get("modelInput") {
                None | Some(Value::Null) => broken(id, None, "The record has no modelInput."),
                Some(input) => Record::Input {
                    id,
                    input: input.clone(),
                },
            }
        })
        .collect()
}

/// A record's answer: the family's, or an error (HTTP status, message).
fn answer(
    model: &Model,
    input: &Value,
    poison: Option<&str>,
    failure: f64,
) -> Result<Accepted, (u16, String)> {
    if input.to_string().contains(POISON_MARKER) {
        return Err((400, POISONED.to_string()));
    }
    let o = object(input, "#").map_err(|e| (e.status, e.message))?;
    let accepted = (model.service.invoke)(model, &o, poison).map_err(|e| (e.status, e.message))?;
    if draw(failure) {
        return Err((500, "Internal server error".to_string()));
    }
    Ok(accepted)
}

/// An output line: `{"recordId","modelInput","modelOutput"}` or, for a record that failed,
/// `{"recordId","modelInput","error":{"errorCode","errorMessage"}}`. The answer's bytes go in
/// as they are (no second pass through serde for large vectors).
fn line(id: &str, input: Option<&Value>, outcome: Result<&[u8], (u16, &str)>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"recordId\":");
    out.extend_from_slice(Value::String(id.to_string()).to_string().as_bytes());
    if let Some(input) = input {
        out.extend_from_slice(b",\"modelInput\":");
        out.extend_from_slice(input.to_string().as_bytes());
    }
    match outcome {
        Ok(body) => {
            out.extend_from_slice(b",\"modelOutput\":");
            out.extend_from_slice(body);
        }
        Err((code, message)) => {
            let error = serde_json::json!({"errorCode": code, "errorMessage": message});
            out.extend_from_slice(b",\"error\":");
            out.extend_from_slice(error.to_string().as_bytes());
        }
    }
    out.push(b'}');
    out
}

/// `manifest.json.out`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub(crate) total_record_count: u64,
    pub(crate) processed_record_count: u64,
    pub(crate) success_record_count: u64,
    pub(crate) error_record_count: u64,
    pub(crate) input_token_count: u64,
    /// Embeddings generate no tokens.
    pub(crate) output_token_count: u64,
}

/// Every record of every file answered: the output files (name, JSONL) and the manifest.
/// `files` are (output name without `.out`, records). A share `unprocessed` of the records is
/// left out (not processed in time: the job ends `PartiallyCompleted`).
pub(crate) fn answer_all(
    model: &Model,
    files: &[(String, Vec<Record>)],
    poison: Option<&str>,
    (failure, unprocessed): (f64, f64),
) -> (Vec<(String, Vec<u8>)>, Manifest) {
    let mut m = Manifest::default();
    let mut outputs = Vec::with_capacity(files.len());
    for (name, records) in files {
        let mut lines: Vec<Vec<u8>> = records
            .iter()
            .filter_map(|r| {
                m.total_record_count += 1;
                if draw(unprocessed) {
                    return None;
                }
                m.processed_record_count += 1;
                let (id, input, outcome) = match r {
                    Record::Input { id, input } => {
                        (id, Some(input), answer(model, input, poison, failure))
                    }
                    Record::Broken { id, input, message } => {
                        (id, input.as_ref(), Err((400, message.clone())))
                    }
                };
                match outcome {
                    Ok(a) => {
                        m.success_record_count += 1;
                        m.input_token_count += a.tokens;
                        Some(line(id, input, Ok(&a.body)))
                    }
                    Err((code, message)) => {
                        m.error_record_count += 1;
                        Some(line(id, input, Err((code, &message))))
                    }
                }
            })
            .collect();
        // AWS does not keep the input's order: neither do we, so clients that assume it fail.
        fastrand::shuffle(&mut lines);
        let mut body = Vec::new();
        for l in lines {
            body.extend_from_slice(&l);
            body.push(b'\n');
        }
        outputs.push((format!("{name}.out"), body));
    }
    (outputs, m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;
    use serde_json::json;

    fn titan() -> &'static Model {
        catalog::resolve("amazon.titan-embed-text-v2:0")
            .unwrap()
            .model
    }

    fn lines(body: &[u8]) -> Vec<Value> {
        std::str::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn reads_records_and_broken_lines() {
        let text = "{\"recordId\":\"a\",\"modelInput\":{\"inputText\":\"x\"}}\n\n\
                    not json\n{\"recordId\":\"b\"}\n{\"modelInput\":{\"inputText\":\"y\"}}\n";
        let r = parse(text);
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[0],
            Record::Input {
                id: "a".into(),
                input: json!({"inputText": "x"})
            }
        );
        assert!(matches!(&r[1], Record::Broken { message, .. } if message.contains("JSON")));
        assert!(
            matches!(&r[2], Record::Broken { id, message, .. } if id == "b" && message.contains("modelInput"))
        );
        let Record::Input { id, .. } = &r[3] else {
            panic!("{:?}", r[3])
        };
        assert_eq!(id.len(), 11);
    }

    #[test]
    fn answers_like_invoke_model() {
        let records = vec![
            Record::Input {
                id: "ok".into(),
                input: json!({"inputText": "hello world", "dimensions": 256}),
            },
            Record::Input {
                id: "poisoned".into(),
                input: json!({"inputText": "a poison pill"}),
            },
            Record::Input {
                id: "invalid".into(),
                input: json!({"text": "hello"}),
            },
            Record::Broken {
                id: "broken".into(),
                input: None,
                message: "The record is not a valid JSON object.".into(),
            },
        ];
        let (files, m) = answer_all(titan(), &[("x.jsonl".into(), records)], None, (0.0, 0.0));
        assert_eq!(files[0].0, "x.jsonl.out");
        let out = lines(&files[0].1);
        let by_id = |id: &str| out.iter().find(|l| l["recordId"] == id).unwrap().clone();
        let ok = by_id("ok");
        assert_eq!(
            ok["modelOutput"]["embedding"].as_array().unwrap().len(),
            256
        );
        assert_eq!(ok["modelInput"]["inputText"], "hello world");
        assert_eq!(by_id("poisoned")["error"]["errorCode"], 400);
        let invalid = by_id("invalid")["error"].clone();
        assert_eq!(invalid["errorCode"], 400);
        assert!(invalid["errorMessage"]
            .as_str()
            .unwrap()
            .contains("extraneous key [text]"));
        assert!(by_id("broken").get("modelInput").is_none());
        assert_eq!(
            m,
            Manifest {
                total_record_count: 4,
                processed_record_count: 4,
                success_record_count: 1,
                error_record_count: 3,
                input_token_count: 2,
                output_token_count: 0,
            }
        );
    }

    #[test]
    fn nova_records_get_nova_answers() {
        let nova = catalog::resolve("amazon.nova-2-multimodal-embeddings-v1:0")
            .unwrap()
            .model;
        let input = json!({"taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": {
            "embeddingPurpose": "GENERIC_INDEX", "embeddingDimension": 256,
            "text": {"truncationMode": "END", "value": "hello nova"}}});
        let records = vec![Record::Input {
            id: "n".into(),
            input,
        }];
        let (files, m) = answer_all(nova, &[("n.jsonl".into(), records)], None, (0.0, 0.0));
        let out = lines(&files[0].1);
        let embedding = &out[0]["modelOutput"]["embeddings"][0];
        assert_eq!(embedding["embeddingType"], "TEXT");
        assert_eq!(embedding["embedding"].as_array().unwrap().len(), 256);
        assert_eq!((m.success_record_count, m.input_token_count), (1, 2));
    }

    #[test]
    fn injected_record_failures_are_500s() {
        let records: Vec<Record> = (0..5)
            .map(|i| Record::Input {
                id: format!("r{i}"),
                input: json!({"inputText": format!("text {i}")}),
            })
            .collect();
        let (files, m) = answer_all(titan(), &[("x.jsonl".into(), records)], None, (1.0, 0.0));
        assert_eq!(m.error_record_count, 5);
        for l in lines(&files[0].1) {
            assert_eq!(l["error"]["errorCode"], 500);
        }
    }

    #[test]
    fn output_lines_are_shuffled() {
        let records: Vec<Record> = (0..50)
            .map(|i| Record::Input {
                id: format!("r{i}"),
                input: json!({"inputText": format!("text {i}"), "dimensions": 256}),
            })
            .collect();
        let (files, _) = answer_all(titan(), &[("x.jsonl".into(), records)], None, (0.0, 0.0));
        let ids: Vec<String> = lines(&files[0].1)
            .iter()
            .map(|l| l["recordId"].as_str().unwrap().to_string())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
        assert_ne!(ids, sorted, "50 lines kept their order");
        assert_eq!(sorted.len(), 50);
    }
}
