//! Hugging Face BERT checkpoint (`config.json` + `model.safetensors`) → ONNX model, in pure Rust,
//! so ONNX Runtime can run checkpoints that ship only safetensors.
//!
//! The graph is `BertModel` up to `last_hidden_state`, written as ORT's fusions recognise it
//! (LayerNormalization, exact-erf GELU, additive attention mask). It was validated node for node
//! in Python against all-MiniLM-L6-v2's reference vectors. The few protobuf messages ONNX needs
//! are encoded by hand, fields in number order as `onnx` writes them.

use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::path::Path;

const IR_VERSION: i64 = 8;
const OPSET: i64 = 17;
/// TensorProto.DataType values.
const FLOAT: i64 = 1;
const INT64: i64 = 7;
/// Added to the scores of padded keys: exp(-10000) is 0 in f32, and it stays finite in f16.
const MASK_FILL: f32 = -10000.0;
const TO_HEADS: [(&str, Attr); 1] = [("perm", Attr::Ints(&[0, 2, 1, 3]))];
const KEYS_T: [(&str, Attr); 1] = [("perm", Attr::Ints(&[0, 2, 3, 1]))];
const GIVE_ONNX: &str = "give an ONNX file instead via `path`";

/// Builds an ONNX model (opset 17, ir_version 8) computing HF `BertModel`'s `last_hidden_state`.
/// Inputs: `input_ids`, `attention_mask`, `token_type_ids`: int64 [batch, sequence] (dynamic dims named "batch", "sequence").
/// Output: `last_hidden_state`: float [batch, sequence, hidden].
pub fn bert_onnx(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let config = BertConfig::read(&dir.join("config.json"))?;
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| unreadable(&path))?;
    let tensors = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let eps = config.eps();
    let mut builder = Builder {
        graph: Graph::default(),
        tensors,
        path: &path,
        eps,
    };
    builder.bert(&config)?;
    Ok(builder.graph.finish(config.hidden_size))
}

fn unreadable(path: &Path) -> String {
    let shown = path.display();
    format!("cannot read {shown}: a BERT checkpoint folder needs config.json and model.safetensors")
}

/// The `config.json` fields the graph depends on; absent optional ones mean HF's defaults.
#[derive(serde::Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
    layer_norm_eps: Option<f64>,
}

impl BertConfig {
    /// Reads and checks the config: only what this graph computes exactly is accepted.
    fn read(path: &Path) -> Result<Self> {
        let shown = path.display();
        let text = std::fs::read(path).with_context(|| unreadable(path))?;
        let value: serde_json::Value = serde_json::from_slice(&text).with_context(|| {
            format!("{shown}: invalid JSON; restore the checkpoint's config.json")
        })?;
        // model_type first, so another architecture is named as such, not as a missing field.
        let model_type = value.get("model_type").and_then(|t| t.as_str());
        if model_type != Some("bert") {
            let found = model_type.map_or("no model_type".into(), |t| format!("model_type {t:?}"));
            bail!("{shown}: {found}: only BERT checkpoints can be converted; {GIVE_ONNX}");
        }
        let config: Self = serde_json::from_value(value).with_context(|| {
            format!("{shown}: not a BERT config; restore the checkpoint's config.json")
        })?;
        let act = config.hidden_act.as_deref().unwrap_or("gelu");
        if act != "gelu" {
            bail!("{shown}: hidden_act {act:?} is not supported, only \"gelu\": {GIVE_ONNX}");
        }
        let positions = config.position_embedding_type.as_deref();
        if let Some(p) = positions.filter(|&p| p != "absolute") {
            bail!("{shown}: position_embedding_type {p:?} is not supported: {GIVE_ONNX}");
        }
        let (hidden, heads) = (config.hidden_size, config.num_attention_heads);
        if heads == 0 || hidden % heads != 0 {
            bail!("{shown}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
        }
        Ok(config)
    }

    fn eps(&self) -> f32 {
        self.layer_norm_eps.unwrap_or(1e-12) as f32
    }
}

/// 16-bit floats → little-endian f32 bytes.
fn widen(data: &[u8], to_f32: impl Fn([u8; 2]) -> f32) -> Vec<u8> {
    let f32s = data.chunks_exact(2).map(|b| to_f32([b[0], b[1]]));
    f32s.flat_map(f32::to_le_bytes).collect()
}

/// [rows, cols] → [cols, rows] on 4-byte elements: torch's Linear is [out, in], MatMul [in, out].
fn transpose(le_f32: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let mut out = vec![0u8; le_f32.len()];
    for r in 0..rows {
        for c in 0..cols {
            let (src, dst) = (4 * (r * cols + c), 4 * (c * rows + r));
            out[dst..dst + 4].copy_from_slice(&le_f32[src..src + 4]);
        }
    }
    out
}

struct Builder<'a> {
    graph: Graph,
    tensors: SafeTensors<'a>,
    path: &'a Path,
    eps: f32,
}

impl<'a> Builder<'a> {
    /// Weight `name` (with or without the `bert.` prefix `BertForX` checkpoints carry) as
    /// little-endian f32 bytes, its shape checked against the config (0 in `expected`: any).
    fn weight(&self, name: &str, expected: &[usize]) -> Result<(Vec<usize>, Cow<'a, [u8]>)> {
        let shown = self.path.display();
        let view = self
            .tensors
            .tensor(name)
            .or_else(|_| self.tensors.tensor(&format!("bert.{name}")))
            .map_err(|_| anyhow!("{shown}: weight `{name}` is missing; not BERT? {GIVE_ONNX}"))?;
        let shape = view.shape().to_vec();
        let fits = shape.len() == expected.len()
            && shape.iter().zip(expected).all(|(&s, &e)| e == 0 || s == e);
        if !fits {
            bail!("{shown}: weight `{name}` has shape {shape:?}, config.json implies {expected:?}");
        }
        let le_f32 = match view.dtype() {
            Dtype::F32 => Cow::Borrowed(view.data()),
            Dtype::F16 => Cow::Owned(widen(view.data(), |b| f16::from_le_bytes(b).to_f32())),
            Dtype::BF16 => Cow::Owned(widen(view.data(), |b| bf16::from_le_bytes(b).to_f32())),
            other => bail!("{shown}: weight `{name}` is {other:?}; only F32, F16, BF16 convert"),
        };
        Ok((shape, le_f32))
    }

    /// The forward pass. Nodes are named after the HF module computing them.
    fn bert(&mut self, config: &BertConfig) -> Result<()> {
        let (hidden, heads) = (config.hidden_size, config.num_attention_heads);
        let head_dim = hidden / heads;
        let g = &mut self.graph;
        g.ints("zero", &[0]);
        g.ints("mask_axes", &[1, 2]);
        g.ints("heads_shape", &[0, 0, heads as i64, head_dim as i64]);
        g.ints("hidden_shape", &[0, 0, hidden as i64]);
        g.scalar("one", 1.0);
        g.scalar("mask_fill", MASK_FILL);
        g.scalar("sqrt_head_dim", (head_dim as f32).sqrt());
        g.scalar("sqrt2", std::f32::consts::SQRT_2);
        g.scalar("half", 0.5);

        // Embeddings: word + absolute position + token type, then LayerNorm.
        for table in ["word", "position", "token_type"] {
            let name = format!("embeddings.{table}_embeddings.weight");
            let (shape, le_f32) = self.weight(&name, &[0, hidden])?;
            self.graph.initializer(&name, &shape, FLOAT, &le_f32);
        }
        let g = &mut self.graph;
        let table = "embeddings.word_embeddings.weight";
        let word = g.node("Gather", &[table, "input_ids"], "word");
        // Positions 0..sequence are the table's first rows: a Slice, not Range + Gather (ORT's
        // GatherToSliceFusion turns that pair into a Slice that fails at run time).
        let attrs = [("end", Attr::Int(2)), ("start", Attr::Int(1))];
        let seq = g.node_with("Shape", &["input_ids"], "sequence_length", &attrs);
        let table = "embeddings.position_embeddings.weight";
        let position = g.node("Slice", &[table, "zero", &seq, "zero"], "position");
        let table = "embeddings.token_type_embeddings.weight";
        let token_type = g.node("Gather", &[table, "token_type_ids"], "token_type");
        let sum = g.node("Add", &[&word, &position], "word_position");
        let sum = g.node("Add", &[&sum, &token_type], "embeddings");
        let mut x = self.layer_norm(&sum, "embeddings.LayerNorm", hidden)?;

        // Additive attention mask [batch, 1, 1, sequence]: 0 for tokens, MASK_FILL for padding.
        let g = &mut self.graph;
        let to_float = [("to", Attr::Int(FLOAT))];
        let m = g.node_with("Cast", &["attention_mask"], "mask.float", &to_float);
        let m = g.node("Sub", &["one", &m], "mask.inverted");
        let m = g.node("Mul", &[&m, "mask_fill"], "mask.additive");
        let mask = g.node("Unsqueeze", &[&m, "mask_axes"], "mask");

        for i in 0..config.num_hidden_layers {
            let p = |name: &str| format!("encoder.layer.{i}.{name}");
            let q = self.linear(&x, &p("attention.self.query"), hidden, hidden)?;
            let k = self.linear(&x, &p("attention.self.key"), hidden, hidden)?;
            let v = self.linear(&x, &p("attention.self.value"), hidden, hidden)?;
            let g = &mut self.graph;
            let q = g.node("Reshape", &[&q, "heads_shape"], &p("query.heads"));
            let k = g.node("Reshape", &[&k, "heads_shape"], &p("key.heads"));
            let v = g.node("Reshape", &[&v, "heads_shape"], &p("value.heads"));
            let q = g.node_with("Transpose", &[&q], &p("query.t"), &TO_HEADS);
            let k = g.node_with("Transpose", &[&k], &p("key.t"), &KEYS_T);
            let v = g.node_with("Transpose", &[&v], &p("value.t"), &TO_HEADS);
            let s = g.node("MatMul", &[&q, &k], &p("scores"));
            let s = g.node("Div", &[&s, "sqrt_head_dim"], &p("scores.scaled"));
            let s = g.node("Add", &[&s, &mask], &p("scores.masked"));
            let last_axis = [("axis", Attr::Int(-1))];
            let probs = g.node_with("Softmax", &[&s], &p("probs"), &last_axis);
            let c = g.node("MatMul", &[&probs, &v], &p("context"));
            let c = g.node_with("Transpose", &[&c], &p("context.t"), &TO_HEADS);
            let c = g.node("Reshape", &[&c, "hidden_shape"], &p("context.merged"));
            let a = self.linear(&c, &p("attention.output.dense"), hidden, hidden)?;
            let a = self.graph.node("Add", &[&a, &x], &p("attention.residual"));
            let a = self.layer_norm(&a, &p("attention.output.LayerNorm"), hidden)?;
            let inner = config.intermediate_size;
            let h = self.linear(&a, &p("intermediate.dense"), hidden, inner)?;
            // Exact GELU 0.5·h·(1 + erf(h/√2)), in the order ORT's GeluFusion matches.
            let g = &mut self.graph;
            let e = g.node("Div", &[&h, "sqrt2"], &p("gelu.div"));
            let e = g.node("Erf", &[&e], &p("gelu.erf"));
            let e = g.node("Add", &[&e, "one"], &p("gelu.add"));
            let e = g.node("Mul", &[&h, &e], &p("gelu.mul"));
            let h = g.node("Mul", &[&e, "half"], &p("gelu"));
            let o = self.linear(&h, &p("output.dense"), inner, hidden)?;
            let o = self.graph.node("Add", &[&o, &a], &p("output.residual"));
            x = self.layer_norm(&o, &p("output.LayerNorm"), hidden)?;
        }
        self.graph.node("Identity", &[&x], "last_hidden_state");
        Ok(())
    }

    /// `x @ W^T + b` for a torch Linear stored [out, in]; its output is named `prefix`.
    fn linear(&mut self, x: &str, prefix: &str, inputs: usize, outputs: usize) -> Result<String> {
        let (weight, bias) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        let (_, w) = self.weight(&weight, &[outputs, inputs])?;
        let (_, b) = self.weight(&bias, &[outputs])?;
        let g = &mut self.graph;
        let w = transpose(&w, outputs, inputs);
        g.initializer(&weight, &[inputs, outputs], FLOAT, &w);
        g.initializer(&bias, &[outputs], FLOAT, &b);
        let product = g.node("MatMul", &[x, &weight], &format!("{prefix}.matmul"));
        Ok(g.node("Add", &[&product, &bias], prefix))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str, hidden: usize) -> Result<String> {
        let (scale, bias) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        for name in [&scale, &bias] {
            let (_, le_f32) = self.weight(name, &[hidden])?;
            self.graph.initializer(name, &[hidden], FLOAT, &le_f32);
        }
        let attrs = [("axis", Attr::Int(-1)), ("epsilon", Attr::Float(self.eps))];
        let inputs: [&str; 3] = [x, &scale, &bias];
        Ok(self
            .graph
            .node_with("LayerNormalization", &inputs, prefix, &attrs))
    }
}

/// Node attributes; `onnx.helper` writes them sorted by name, and so do the call sites.
enum Attr {
    Int(i64),
    Float(f32),
    Ints(&'static [i64]),
}

/// A GraphProto under construction. Nodes are small and kept apart; the initializers (weights)
/// buffer becomes the model itself, so the weights are not copied whole once more.
#[derive(Default)]
struct Graph {
    nodes: Proto,
    initializers: Proto,
}

impl Graph {
    fn node(&mut self, op: &str, inputs: &[&str], output: &str) -> String {
        self.node_with(op, inputs, output, &[])
    }

    /// Adds a node whose single output (and name) is `output`; returns that name.
    fn node_with(
        &mut self,
        op: &str,
        inputs: &[&str],
        out: &str,
        attrs: &[(&str, Attr)],
    ) -> String {
        let mut node = Proto::default();
        for input in inputs {
            node.string(1, input);
        }
        node.string(2, out).string(3, out).string(4, op);
        for (name, value) in attrs {
            // AttributeProto{name, f | i | ints, type (20): FLOAT=1, INT=2, INTS=7}.
            let mut attr = Proto::default();
            attr.string(1, name);
            match value {
                Attr::Float(f) => attr.float(2, *f).int(20, 1),
                Attr::Int(i) => attr.int(3, *i).int(20, 2),
                Attr::Ints(ints) => ints.iter().fold(&mut attr, |a, &i| a.int(8, i)).int(20, 7),
            };
            node.message(5, &attr);
        }
        self.nodes.message(1, &node);
        out.to_string()
    }

    /// A TensorProto{dims, data_type, name, raw_data (little-endian)}; no dims: a scalar.
    fn initializer(&mut self, name: &str, dims: &[usize], data_type: i64, raw: &[u8]) {
        let mut tensor = Proto::default();
        dims.iter().fold(&mut tensor, |t, &d| t.int(1, d as i64));
        tensor.int(2, data_type).string(8, name).bytes(9, raw);
        self.initializers.message(5, &tensor);
    }

    fn scalar(&mut self, name: &str, value: f32) {
        self.initializer(name, &[], FLOAT, &value.to_le_bytes());
    }

    fn ints(&mut self, name: &str, values: &[i64]) {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, &[values.len()], INT64, &raw);
    }

    /// ModelProto{ir_version, producer_name, graph{nodes, name, initializers, inputs, output},
    /// opset_import}, the header prepended to the initializers buffer in place.
    fn finish(self, hidden: usize) -> Vec<u8> {
        let mut tail = Proto::default();
        for input in ["input_ids", "attention_mask", "token_type_ids"] {
            tail.message(11, &value_info(input, INT64, None));
        }
        tail.message(12, &value_info("last_hidden_state", FLOAT, Some(hidden)));
        let mut graph_head = self.nodes;
        graph_head.string(2, "bert");
        let graph_len = graph_head.0.len() + self.initializers.0.len() + tail.0.len();
        let mut head = Proto::default();
        head.int(1, IR_VERSION).string(2, "embedpipe").key(7, LEN);
        head.varint(graph_len as u64);
        head.0.extend_from_slice(&graph_head.0);
        let mut model = self.initializers;
        model.0.splice(0..0, head.0);
        model.0.extend_from_slice(&tail.0);
        // The default (ai.onnx) domain written out, as onnx.helper does.
        model.message(8, Proto::default().string(1, "").int(2, OPSET));
        model.0
    }
}

/// ValueInfoProto{name, TypeProto{tensor_type{elem_type, shape}}} of a [batch, sequence] tensor,
/// or [batch, sequence, hidden] with `hidden`.
fn value_info(name: &str, elem_type: i64, hidden: Option<usize>) -> Proto {
    let mut shape = Proto::default();
    for param in ["batch", "sequence"] {
        shape.message(1, Proto::default().string(2, param)); // Dimension.dim_param
    }
    if let Some(size) = hidden {
        shape.message(1, Proto::default().int(1, size as i64)); // Dimension.dim_value
    }
    let mut tensor = Proto::default();
    tensor.int(1, elem_type).message(2, &shape);
    let mut info = Proto::default();
    info.string(1, name)
        .message(2, Proto::default().message(1, &tensor));
    info
}

/// Protobuf wire types used here.
const VARINT: u8 = 0;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A protobuf message being written: the three wire types ONNX needs, repeated fields unpacked
/// (onnx.proto is proto2, and `onnx` itself writes them so).
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn varint(&mut self, mut value: u64) -> &mut Self {
        while value >= 0x80 {
            self.0.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
        self
    }

    fn key(&mut self, field: u32, wire_type: u8) -> &mut Self {
        self.varint((u64::from(field) << 3) | u64::from(wire_type))
    }

    /// int32/int64 fields; negatives take 10 bytes (two's complement), as protobuf specifies.
    fn int(&mut self, field: u32, value: i64) -> &mut Self {
        self.key(field, VARINT).varint(value as u64)
    }

    fn float(&mut self, field: u32, value: f32) -> &mut Self {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn bytes(&mut self, field: u32, value: &[u8]) -> &mut Self {
        self.key(field, LEN).varint(value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }

    fn string(&mut self, field: u32, value: &str) -> &mut Self {
        self.bytes(field, value.as_bytes())
    }

    fn message(&mut self, field: u32, message: &Proto) -> &mut Self {
        self.bytes(field, &message.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn written(write: impl FnOnce(&mut Proto) -> &mut Proto) -> Vec<u8> {
        let mut proto = Proto::default();
        write(&mut proto);
        proto.0
    }

    #[test]
    fn encoder_writes_protobuf_wire_format() {
        // The examples of protobuf's encoding guide, then what ONNX needs beyond them.
        assert_eq!(written(|p| p.int(1, 150)), [0x08, 0x96, 0x01]);
        assert_eq!(written(|p| p.string(2, "testing")), b"\x12\x07testing");
        assert_eq!(written(|p| p.varint(300)), [0xac, 0x02]);
        assert_eq!(written(|p| p.int(20, 7)), [0xa0, 0x01, 0x07]);
        assert_eq!(written(|p| p.float(2, 1.0)), [0x15, 0x00, 0x00, 0x80, 0x3f]);
        let minus_one = b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01";
        assert_eq!(written(|p| p.int(3, -1)), minus_one);
    }

    /// A 1-layer BERT (hidden 4, 2 heads, inner 8), `bert.`-prefixed as `BertForX` saves it,
    /// with an F16 word table and tensors the graph ignores; element k of a tensor is k.
    fn tiny_checkpoint(model_type: &str, layers: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "model_type": model_type, "hidden_size": 4, "num_attention_heads": 2,
            "num_hidden_layers": layers, "intermediate_size": 8, "hidden_act": "gelu",
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![10, 4]),
            ("embeddings.position_embeddings.weight".into(), vec![16, 4]),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, 4]),
            ("pooler.dense.weight".into(), vec![4, 4]),
        ];
        for (module, out, inp) in [
            ("attention.self.query", 4, 4),
            ("attention.self.key", 4, 4),
            ("attention.self.value", 4, 4),
            ("attention.output.dense", 4, 4),
            ("intermediate.dense", 8, 4),
            ("output.dense", 4, 8),
        ] {
            shapes.push((format!("encoder.layer.0.{module}.weight"), vec![out, inp]));
            shapes.push((format!("encoder.layer.0.{module}.bias"), vec![out]));
        }
        for norm in [
            "embeddings",
            "encoder.layer.0.attention.output",
            "encoder.layer.0.output",
        ] {
            shapes.push((format!("{norm}.LayerNorm.weight"), vec![4]));
            shapes.push((format!("{norm}.LayerNorm.bias"), vec![4]));
        }
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, shape) in shapes {
            let k = (0..shape.iter().product::<usize>()).map(|k| k as f32);
            let (dtype, data) = if name.starts_with("embeddings.word") {
                (
                    Dtype::F16,
                    k.flat_map(|k| f16::from_f32(k).to_le_bytes()).collect(),
                )
            } else {
                (Dtype::F32, k.flat_map(f32::to_le_bytes).collect())
            };
            tensors.push((format!("bert.{name}"), dtype, shape, data));
        }
        let position_ids = (0..16i64).flat_map(i64::to_le_bytes).collect();
        tensors.push((
            "embeddings.position_ids".into(),
            Dtype::I64,
            vec![1, 16],
            position_ids,
        ));
        let views = tensors.iter().map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        });
        let file = safetensors::serialize(views, None).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), file).unwrap();
        dir
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    #[test]
    fn converts_a_tiny_bert() {
        let dir = tiny_checkpoint("bert", 1);
        let model = bert_onnx(dir.path()).unwrap();
        // ir_version 8, producer_name "embedpipe", the graph (its length a varint at 14), and
        // opset_import{"", 17} last.
        assert!(model.starts_with(b"\x08\x08\x12\x09embedpipe\x3a"));
        assert!(model.ends_with(b"\x42\x04\x0a\x00\x10\x11"));
        let (mut graph_len, mut at) = (0, 14);
        for shift in (0..64).step_by(7) {
            graph_len |= usize::from(model[at] & 0x7f) << shift;
            at += 1;
            if model[at - 1] < 0x80 {
                break;
            }
        }
        assert_eq!(
            at + graph_len + 6,
            model.len(),
            "the graph spans up to opset_import"
        );
        // op_type fields: 6 Linear and 2 attention MatMuls, 3 LayerNorms, one Identity.
        assert_eq!(count(&model, b"\x22\x06MatMul"), 8);
        assert_eq!(count(&model, b"\x22\x12LayerNormalization"), 3);
        assert_eq!(count(&model, b"\x22\x08Identity"), 1);
        // Linear weights transposed ([8, 4] stored, [4, 8] in the graph), F16 widened to f32.
        let tensor = |name: &str, dims: &[usize], values: Vec<f32>| {
            let mut graph = Graph::default();
            let raw: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
            graph.initializer(name, dims, FLOAT, &raw);
            graph.initializers.0
        };
        let transposed = (0..32).map(|k| ((k % 8) * 4 + k / 8) as f32).collect();
        let inner = tensor(
            "encoder.layer.0.intermediate.dense.weight",
            &[4, 8],
            transposed,
        );
        assert_eq!(count(&model, &inner), 1);
        let word = (0..40).map(|k| k as f32).collect();
        let word = tensor("embeddings.word_embeddings.weight", &[10, 4], word);
        assert_eq!(count(&model, &word), 1);
    }

    #[test]
    fn refuses_what_it_cannot_convert_naming_the_file() {
        let dir = tiny_checkpoint("roberta", 1);
        let error = bert_onnx(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("config.json") && error.contains("only BERT"),
            "{error}"
        );
        let dir = tiny_checkpoint("bert", 2);
        let error = bert_onnx(dir.path()).unwrap_err().to_string();
        let missing = "model.safetensors: weight `encoder.layer.1.attention.self.query.weight`";
        assert!(error.contains(missing), "{error}");
    }
}
