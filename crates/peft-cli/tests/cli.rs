//! The `peft` binary end to end on the tiny test model: every command runs and prints
//! well-formed output; bad input is a clear error with a non-zero exit status.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../peft-models/tests/fixtures/tiny-llama")
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("peft-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("mkdir");
    p
}

fn peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .output()
        .expect("run peft")
}

fn ok(args: &[&str]) -> String {
    let out = peft(args);
    assert!(
        out.status.success(),
        "peft {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fail(args: &[&str]) -> String {
    let out = peft(args);
    assert!(!out.status.success(), "peft {args:?} should fail");
    String::from_utf8(out.stderr).expect("utf-8")
}

/// Runs `peft` expecting it to refuse the input cleanly: a non-zero exit status, an error that
/// contains `flag` (the option at fault) and `says`, and no panic.
fn refused(args: &[&str], flag: &str, says: &str) {
    let out = peft(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "peft {args:?} should fail");
    assert!(
        err.contains(flag) && err.contains(says),
        "peft {args:?}: the error should name {flag} and say {says:?}:\n{err}"
    );
    assert!(!err.contains("panicked"), "peft {args:?} panicked:\n{err}");
}

fn json(text: &str) -> Value {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    serde_json::from_str(line).expect("valid JSON")
}

fn write_data(dir: &Path) -> PathBuf {
    let lines: Vec<String> = (0..12)
        .map(|i| {
            format!("{{\"input\": \"name = Blue Spice {i} |\", \"output\": \" food = Italian\"}}")
        })
        .collect();
    let path = dir.join("data.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write");
    path
}

#[test]
fn train_resume_inspect_eval_generate() {
    let dir = tmp("train");
    let data = write_data(&dir);
    let out = dir.join("run");
    let (model, data_s, out_s) = (
        tiny().display().to_string(),
        data.display().to_string(),
        out.display().to_string(),
    );
    let stdout = ok(&[
        "train",
        "--model",
        &model,
        "--method",
        "prefix-mlp",
        "--data",
        &data_s,
        "--eval",
        &data_s,
        "--out",
        &out_s,
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--virtual-tokens",
        "3",
        "--mlp-hidden",
        "16",
        "--lr",
        "1e-2",
    ]);
    assert!(
        stdout.contains("adapter:") && stdout.contains("peft generate"),
        "{stdout}"
    );
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.jsonl",
        "train_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(out.join("loss.png")).expect("loss.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let train_lines = metrics
        .lines()
        .filter(|l| json(l)["event"] == "train")
        .count();
    assert_eq!(train_lines, 4);
    assert!(metrics.lines().any(|l| json(l)["event"] == "eval"));

    // Resume extends the run to 6 steps.
    ok(&["train", "--resume", &out_s, "--steps", "6"]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let steps: Vec<u64> = metrics
        .lines()
        .map(json)
        .filter(|v| v["event"] == "train")
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);

    let info = json(&ok(&["inspect", &out_s, "--json"]));
    assert_eq!(info["config"]["peft_type"], "PREFIX_TUNING");
    assert_eq!(info["config"]["prefix_projection"], true);
    assert_eq!(info["tensor_shape"], serde_json::json!([3, 2 * 2 * 2 * 8]));
    assert!(
        info["training_checkpoints"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    let text = ok(&["inspect", &out_s]);
    assert!(
        text.contains("compatible models:") && text.contains("2 layers"),
        "{text}"
    );

    let eval = json(&ok(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data_s,
        "--adapter",
        &out_s,
        "--json",
    ]));
    assert!(eval["loss"].as_f64().is_some_and(f64::is_finite));
    assert!(eval["perplexity"].as_f64().is_some_and(|p| p >= 1.0));
    assert!(
        eval["exact_match"]
            .as_f64()
            .is_some_and(|e| (0.0..=1.0).contains(&e))
    );

    let generated = json(&ok(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        &out_s,
        "--prompt",
        "name = Blue",
        "--max-new-tokens",
        "4",
        "--json",
        "--top-logits",
        "3",
    ]));
    assert!(
        generated["prompt_ids"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    assert!(
        generated["generated_ids"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.len() <= 4)
    );
    assert!(generated["generated_text"].is_string());
    let top = generated["top_logits"].as_array().expect("top logits");
    assert_eq!(top.len(), 3);
    assert!(top[0][1].as_f64() >= top[1][1].as_f64());
    assert_eq!(
        generated["base_top_logits"].as_array().map(Vec::len),
        Some(3)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_file_supplies_options() {
    let dir = tmp("config");
    let data = write_data(&dir);
    let out = dir.join("run");
    let cfg = dir.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\nmethod = \"prompt\"\ndata = {:?}\nout = {:?}\nsteps = 2\nbatch_size = 4\nvirtual-tokens = 2\ninit = \"random\"\n",
            tiny().display().to_string(),
            data.display().to_string(),
            out.display().to_string()
        ),
    )
    .expect("write");
    ok(&["train", "--config", &cfg.display().to_string()]);
    let settings_file = out.join("train_config.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&settings_file).expect("settings"))
            .expect("json");
    assert_eq!(settings["train"]["steps"], 2);
    assert_eq!(settings["virtual_tokens"], 2);

    // A resumed run's saved settings get the flags' range checks, naming the file and field.
    settings["train"]["checkpoint_every"] = 0.into();
    std::fs::write(&settings_file, settings.to_string()).expect("write");
    refused(
        &["train", "--resume", &out.display().to_string()],
        "train_config.json: train.checkpoint_every = 0",
        "at least 1",
    );

    // Config-file options go through the same range checks as the flags, naming the file.
    let cfg_s = cfg.display().to_string();
    for (text, flag, says) in [
        ("lr = nan\n", "--lr", "expected a finite number above 0"),
        ("lr = -0.5\n", "--lr", "expected a finite number above 0"),
        ("eval_every = 0\n", "--eval-every", "at least 1"),
        ("top-p = 0.5\n", "unknown option `top-p`", "run.toml"),
        ("steps = [1, 2]\n", "option `steps`", "one value"),
    ] {
        std::fs::write(&cfg, text).expect("write");
        refused(&["train", "--config", &cfg_s], flag, says);
        refused(&["train", "--config", &cfg_s], "run.toml", "");
    }
    let cfg_json = dir.join("run.json");
    std::fs::write(&cfg_json, r#"{"batch_size": 0}"#).expect("write");
    refused(
        &["train", "--config", &cfg_json.display().to_string()],
        "run.json: invalid value '0' for '--batch-size",
        "at least 1",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn benchmarks_print_well_formed_json() {
    let model = tiny().display().to_string();
    let t = json(&ok(&[
        "bench",
        "train",
        "--model",
        &model,
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--virtual-tokens",
        "2",
        "--json",
    ]));
    for key in [
        "backend",
        "method",
        "step_ms_median",
        "tokens_per_s",
        "peak_rss_mb",
    ] {
        assert!(!t[key].is_null(), "bench train: no {key}");
    }
    assert!(t["tokens_per_s"].as_f64().is_some_and(|v| v > 0.0));
    let g = json(&ok(&[
        "bench",
        "generate",
        "--model",
        &model,
        "--prompt-len",
        "4",
        "--new-tokens",
        "4",
        "--repeats",
        "1",
        "--json",
    ]));
    assert!(g["tokens_per_s"].as_f64().is_some_and(|v| v > 0.0));
    let a = json(&ok(&[
        "bench",
        "attention",
        "--batch",
        "1",
        "--seq",
        "8",
        "--prefix",
        "2",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--head-dim",
        "8",
        "--repeats",
        "1",
        "--json",
    ]));
    for pass in ["forward", "forward_backward"] {
        for key in ["fused_ms", "unfused_ms", "speedup", "reference_ms"] {
            assert!(
                a[pass][key].as_f64().is_some_and(|v| v > 0.0),
                "{pass}.{key}"
            );
        }
        // Each run's calls return before it ends, so the medians keep that order.
        for imp in ["fused", "unfused", "reference"] {
            let enqueue = a[pass][format!("{imp}_enqueue_ms")].as_f64();
            let total = a[pass][format!("{imp}_ms")].as_f64().unwrap_or(0.0);
            assert!(
                enqueue.is_some_and(|e| e > 0.0 && e <= total),
                "{pass}.{imp}_enqueue_ms {enqueue:?} against {total}"
            );
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tmp("bad");
    let model = tiny().display().to_string();
    let layout = |flag: &str, list: &str| {
        fail(&[
            "bench",
            "attention",
            "--batch",
            "1",
            "--seq",
            "4",
            flag,
            list,
        ])
    };
    let err = layout("--lanes", "3");
    assert!(
        err.contains("--lanes 3: the fused kernels take [1, 2, 4, 8]"),
        "{err}"
    );
    let err = layout("--lanes", "1,2");
    assert!(
        err.contains("--lanes: flex has no CubeCL kernels to lay out"),
        "{err}"
    );
    let err = layout("--rows", "1,32");
    assert!(
        err.contains("--rows 32: the fused kernels take [1, 2, 4, 8, 16]"),
        "{err}"
    );
    let err = layout("--rows", "2");
    assert!(
        err.contains("--rows: flex has no CubeCL kernels to lay out"),
        "{err}"
    );
    let err = layout("--blocks", "8,16");
    assert!(
        err.contains("--blocks 16: the fused kernels take [1, 2, 4, 8]"),
        "{err}"
    );
    let err = layout("--blocks", "8");
    assert!(
        err.contains("--blocks: flex has no CubeCL kernels to lay out"),
        "{err}"
    );
    let err = layout("--dkdv", "rows,tile");
    assert!(
        err.contains("kernel `tile`: the fused kernels are `rows` or `tiles`"),
        "{err}"
    );
    let err = layout("--dkdv", "tiles");
    assert!(
        err.contains("--dkdv: flex has no CubeCL kernels to lay out"),
        "{err}"
    );
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n").expect("write");
    let err = fail(&[
        "train",
        "--model",
        &model,
        "--data",
        &empty.display().to_string(),
        "--out",
        &dir.join("o").display().to_string(),
    ]);
    assert!(
        err.contains("empty.jsonl:0: the dataset has no examples"),
        "{err}"
    );
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"input\": \"x\"}\n").expect("write");
    let err = fail(&[
        "eval",
        "--model",
        &model,
        "--data",
        &bad.display().to_string(),
    ]);
    assert!(err.contains("bad.jsonl:2: missing field `output`"), "{err}");
    let err = fail(&[
        "generate",
        "--model",
        "/nowhere/model.gguf",
        "--prompt",
        "x",
    ]);
    assert!(
        err.contains("/nowhere/model.gguf") && err.contains("fetch-model"),
        "{err}"
    );
    let err = fail(&[
        "train",
        "--model",
        &model,
        "--data",
        &bad.display().to_string(),
        "--out",
        "o",
        "--method",
        "lora",
    ]);
    assert!(err.contains("unknown method `lora`"), "{err}");
    let err = fail(&["inspect", &dir.display().to_string()]);
    assert!(err.contains("adapter_config.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn numbers_out_of_range_are_clear_errors() {
    let model = tiny().display().to_string();
    let whole = "expected a whole number, at least 1";
    let positive = "expected a finite number above 0";
    // The case from the issue: 0 heads passed `0.is_multiple_of(0)` and hit a kernel assert.
    refused(
        &["bench", "attention", "--heads", "0", "--kv-heads", "0"],
        "--heads",
        whole,
    );
    fn attention<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["bench", "attention"];
        args.extend_from_slice(extra);
        args
    }
    refused(&attention(&["--kv-heads", "0"]), "--kv-heads", whole);
    refused(
        &attention(&["--heads", "4", "--kv-heads", "3"]),
        "--heads 4 is not a multiple of --kv-heads 3",
        "",
    );
    for flag in ["--batch", "--seq", "--head-dim", "--repeats"] {
        refused(&attention(&[flag, "0"]), flag, whole);
    }
    refused(
        &attention(&["--prefix", "-1"]),
        "--prefix",
        "expected a whole number, 0 or more",
    );
    refused(
        &[
            "bench",
            "attention",
            "--batch",
            "1000000",
            "--heads",
            "1000000",
            "--kv-heads",
            "1",
            "--seq",
            "1000000",
        ],
        "--batch 1000000",
        "too many elements",
    );
    for (flag, value, says) in [
        ("--batch-size", "0", whole),
        ("--seq-len", "1", "expected a whole number, at least 2"),
        ("--virtual-tokens", "0", whole),
        ("--steps", "0", whole),
        ("--warmup", "-1", "expected a whole number, 0 or more"),
    ] {
        refused(
            &["bench", "train", "--model", &model, flag, value],
            flag,
            says,
        );
    }
    for flag in ["--prompt-len", "--new-tokens", "--repeats"] {
        refused(
            &["bench", "generate", "--model", &model, flag, "0"],
            flag,
            whole,
        );
    }
    for (flag, value, says) in [
        ("--temperature", "-1", positive),
        ("--temperature", "0", positive),
        ("--temperature", "nan", positive),
        ("--temperature", "inf", positive),
        ("--top-p", "0", "expected a number above 0 and at most 1"),
        ("--top-p", "1.5", "expected a number above 0 and at most 1"),
        ("--top-p", "NaN", "expected a number above 0 and at most 1"),
        ("--top-k", "0", whole),
        ("--top-logits", "0", whole),
        (
            "--max-new-tokens",
            "-1",
            "expected a whole number, 0 or more",
        ),
        ("--seed", "-1", "expected a whole number from 0"),
    ] {
        refused(
            &["generate", "--model", &model, "--prompt", "x", flag, value],
            flag,
            says,
        );
    }
    for (flag, value, says) in [
        ("--batch-size", "0", whole),
        ("--max-len", "1", "expected a whole number, at least 2"),
    ] {
        refused(
            &["eval", "--model", &model, "--data", "d.jsonl", flag, value],
            flag,
            says,
        );
    }
    for (flag, value, says) in [
        ("--steps", "0", whole),
        ("--epochs", "0", positive),
        ("--epochs", "inf", positive),
        ("--batch-size", "0", whole),
        ("--grad-accum", "0", whole),
        ("--lr", "0", positive),
        ("--lr", "-1e-3", positive),
        ("--lr", "nan", positive),
        ("--warmup", "-1", "expected a whole number, 0 or more"),
        (
            "--weight-decay",
            "-0.1",
            "expected a finite number, 0 or more",
        ),
        (
            "--max-grad-norm",
            "nan",
            "expected a finite number, 0 or more",
        ),
        ("--virtual-tokens", "0", whole),
        ("--mlp-hidden", "0", whole),
        ("--max-len", "1", "expected a whole number, at least 2"),
        ("--eval-every", "0", whole),
        ("--checkpoint-every", "0", whole),
        ("--keep-checkpoints", "0", whole),
        ("--seed", "1e3", "expected a whole number from 0"),
    ] {
        refused(
            &[
                "train", "--model", &model, "--data", "d.jsonl", "--out", "o", flag, value,
            ],
            flag,
            says,
        );
    }
}

fn settings_of(run: &Path) -> Value {
    let text = std::fs::read_to_string(run.join("train_config.json")).expect("settings");
    serde_json::from_str(&text).expect("settings JSON")
}

/// `--precision bf16` on every command that loads the model: the run records it and resumes in
/// it, the benchmark reports the CPU kernel that ran (this machine's fastest), and a value other
/// than f32 or bf16 is refused naming the flag.
#[test]
fn bf16_precision_on_every_command() {
    let dir = tmp("bf16");
    let data = write_data(&dir);
    let out = dir.join("run");
    let (model, data_s, out_s) = (
        tiny().display().to_string(),
        data.display().to_string(),
        out.display().to_string(),
    );
    let trained = peft(&[
        "train",
        "--model",
        &model,
        "--method",
        "prompt",
        "--data",
        &data_s,
        "--out",
        &out_s,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--virtual-tokens",
        "2",
        "--precision",
        "bf16",
    ]);
    let log = String::from_utf8_lossy(&trained.stderr);
    assert!(trained.status.success(), "bf16 training failed:\n{log}");
    let kernel = peft_kernels::linear::cpu::CpuKernel::best();
    assert!(
        log.contains(&kernel.note()),
        "training names the bf16 kernel ({kernel}):\n{log}"
    );
    let settings = settings_of(&out);
    assert_eq!(settings["precision"], "bf16");
    ok(&["train", "--resume", &out_s, "--steps", "3"]);
    let settings = settings_of(&out);
    assert_eq!(settings["precision"], "bf16", "resume keeps the precision");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let losses: Vec<f64> = metrics
        .lines()
        .map(json)
        .filter(|v| v["event"] == "train")
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    assert_eq!(losses.len(), 3);
    peft_testing::assert_finite(&losses, "bf16 training losses");

    let eval = json(&ok(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data_s,
        "--adapter",
        &out_s,
        "--precision",
        "bf16",
        "--json",
    ]));
    assert!(eval["loss"].as_f64().is_some_and(f64::is_finite));
    let generated = json(&ok(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        &out_s,
        "--prompt",
        "name = Blue",
        "--max-new-tokens",
        "3",
        "--precision",
        "bf16",
        "--json",
    ]));
    assert!(generated["generated_text"].is_string());

    let bench = json(&ok(&[
        "bench",
        "train",
        "--model",
        &model,
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--virtual-tokens",
        "2",
        "--precision",
        "bf16",
        "--json",
    ]));
    assert_eq!(bench["precision"], "bf16");
    assert_eq!(
        bench["cpu_kernel"],
        peft_kernels::linear::cpu::CpuKernel::best().name()
    );
    assert!(bench["last_loss"].as_f64().is_some_and(f64::is_finite));
    let g = json(&ok(&[
        "bench",
        "generate",
        "--model",
        &model,
        "--prompt-len",
        "4",
        "--new-tokens",
        "2",
        "--repeats",
        "1",
        "--precision",
        "bf16",
        "--json",
    ]));
    assert!(g["tokens_per_s"].as_f64().is_some_and(|v| v > 0.0));

    for args in [
        vec!["eval", "--model", &model, "--data", &data_s],
        vec!["generate", "--model", &model, "--prompt", "x"],
        vec!["bench", "train", "--model", &model],
    ] {
        let mut args = args.clone();
        args.extend(["--precision", "f16"]);
        refused(&args, "--precision", "f16");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `peft inspect MODEL`: a model (a Hugging Face directory or a GGUF file) is summarised —
/// family, layer kinds, what each method trains — rather than read as an adapter.
#[test]
fn inspect_describes_a_model() {
    let gemma = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/families/gemma3");
    let dir = gemma.display().to_string();
    let info = json(&ok(&["inspect", &dir, "--json", "--virtual-tokens", "10"]));
    assert_eq!(info["family"], "Gemma3");
    assert_eq!(info["architecture"], "gemma3_text");
    assert_eq!(
        [
            &info["global_layers"],
            &info["sliding_layers"],
            &info["sliding_window"]
        ],
        [1, 5, 4]
    );
    let saved = |method: &str| {
        info["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .find(|m| m["method"] == method)
            .map(|m| m["saved_values"].clone())
    };
    // 10 tokens × hidden 32; 10 slots × 6 layers × (key + value) × 1 head × 16.
    assert_eq!(saved("prompt"), Some(320.into()));
    assert_eq!(saved("prefix"), Some(1920.into()));
    let text = ok(&["inspect", &gemma.join("model.gguf").display().to_string()]);
    assert!(
        text.contains("family:             gemma3")
            && text.contains("1 global, 5 sliding-window (4) layers")
            && text.contains("P + t − p < 4"),
        "{text}"
    );
}
