//! Bedrock from the command line, against the emulator started by each test on loopback:
//! access and credential errors that stop a run (and what they print), `validate` checking model
//! parameters against the registry, and the emulator itself — SigV4 required, `run`/`search
//! --emulator`, and the `embedpipe emulator` command's flags.

mod common;

use common::EmuEnv as Env;
use common::*;
use embedpipe_emulator::Settings;
use std::process::Command;

#[test]
fn access_and_credential_errors_stop_the_run() {
    let env = Env::new(Settings {
        denied_models: vec!["amazon.titan-embed-text-v2:0".into()],
        access_key_id: Some(TEST_KEY.into()),
        ..Default::default()
    });
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v2:0\"",
            "column = \"title\"",
        ),
    );
    let out = env.run(&["run", &p]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("AccessDeniedException"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("bedrock:InvokeModel"), "{}", out.stderr);
    assert!(!env.db().join("t.lance").exists(), "nothing is committed");

    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v1\"",
            "column = \"title\"",
        ),
    );
    let out = env.run_with(&["run", &p], &[("AWS_ACCESS_KEY_ID", "AKIDSOMEONEELSE")]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("UnrecognizedClientException"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("credential chain"), "{}", out.stderr);
    assert!(!out.stderr.contains("test-secret"));
}

#[test]
fn missing_credentials_give_one_clear_error_not_a_wall_of_warnings() {
    let env = Env::new(Settings::default());
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v2:0\"\nconcurrency = 8",
            "column = \"title\"",
        ),
    );
    // No keys anywhere, and an instance-metadata service that answers but hands out no token
    // (the emulator stands in for it), as on a machine outside EC2 behind a proxy: the AWS
    // credential chain warns about it once per call in flight.
    let run = |args: &[&str]| {
        let mut cmd = aws_cli(env.dir.path(), &env.emu.endpoint(), args);
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", env.emu.endpoint());
        output(cmd)
    };
    let out = run(&["run", &p]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("credential chain"), "{}", out.stderr);
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
    assert_eq!(env.counters("amazon.titan-embed-text-v2:0").ok, 0);

    // `-v` shows what the chain tried.
    let out = run(&["run", &p, "-v"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("Ec2InstanceMetadata"),
        "{}",
        out.stderr
    );
}

#[test]
fn model_parameters_are_checked_against_the_registry() {
    let env = Env::new(Settings::default());
    let cases = [
        (
            "id = \"amazon.titan-embed-text-v2:0\"\ndimensions = 768",
            "1024, 512, 256",
        ),
        (
            "id = \"cohere.embed-v4:0\"\ntruncate = \"END\"",
            "NONE, LEFT, RIGHT",
        ),
        (
            "id = \"cohere.embed-english-v3\"\ntruncate = \"RIGHT\"",
            "NONE, START, END",
        ),
        (
            "id = \"amazon.titan-embed-text-v2:0\"\ninput_type = \"search_query\"",
            "its parameters: truncate, embedding_types",
        ),
        (
            "id = \"twelvelabs.marengo-embed-2-7-v1:0\"",
            "us.twelvelabs.marengo-embed-2-7-v1:0",
        ),
        (
            "id = \"amazon.nova-2-multimodal-embeddings-v1:0\"\npurpose = \"INDEX\"",
            "GENERIC_INDEX",
        ),
        (
            "id = \"cohere.embed-v4:0\"\nembedding_types = [\"int8\"]",
            "cannot be stored yet",
        ),
        (
            "id = \"cohere.embed-v4:0\"\nembedding_types = [\"int4\"]",
            "float, int8, uint8, binary, ubinary",
        ),
        (
            "id = \"amazon.titan-embed-text-v2:0\"\npath = \"x\"",
            "applies only to local models",
        ),
    ];
    for (model, help) in cases {
        let p = env.write(
            "p.toml",
            &bedrock_pipeline(&articles(), model, "column = \"title\""),
        );
        let out = env.run(&["validate", &p]);
        assert_eq!(out.code, 2, "{model}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(help), "{model}: {}", out.stderr);
        assert!(out.stderr.contains("p.toml:"), "{}", out.stderr);
    }
    assert_eq!(env.emu.stats().requests, 0, "validate makes no call");
}

#[test]
fn emulator_requires_sigv4_and_the_cli_can_serve_it() {
    let env = Env::new(Settings::default());
    // An unsigned request is refused like Bedrock does.
    let status = env.rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(env.emu.addr).await.unwrap();
        let body = r#"{"inputText":"hi"}"#;
        let req = format!(
            "POST /model/amazon.titan-embed-text-v1/invoke HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        resp
    });
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    assert!(
        status.contains("MissingAuthenticationTokenException"),
        "{status}"
    );
    assert_eq!(env.emu.stats().unauthenticated, 1);

    // `embedpipe run --emulator` needs no AWS setup at all.
    let p = env.write(
        "p.toml",
        &bedrock_pipeline(
            &articles(),
            "id = \"amazon.titan-embed-text-v2:0\"",
            "column = \"title\"",
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_embedpipe"))
        .args(["run", &p, "--emulator", "--json"])
        .current_dir(env.dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_ENDPOINT_URL_BEDROCK_RUNTIME")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hits = Command::new(env!("CARGO_BIN_EXE_embedpipe"))
        .args([
            "search",
            &p,
            "volcano eruption lava",
            "-k",
            "3",
            "--emulator",
            "--json",
        ])
        .current_dir(env.dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(
        hits.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&hits.stderr)
    );
    let hits: serde_json::Value = serde_json::from_slice(&hits.stdout).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 3);
}

#[test]
fn the_emulator_command_applies_its_flags() {
    use std::io::{BufRead, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_embedpipe"))
        .args(["emulator", "--port", "0", "--replay", "--rpm", "7"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /_emulator/config HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let cfg: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"));
    assert_eq!(cfg["replay"], true, "{cfg}");
    assert_eq!(cfg["quota"]["requests_per_minute"], 7, "{cfg}");
}
