//! Resuming across processes: a `peft train` killed (SIGKILL, no chance to write anything) after
//! its first periodic checkpoint and continued with `peft train --resume` writes the same adapter
//! bytes and the same loss curve as a run that was never interrupted.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("peft-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("mkdir");
    p
}

/// `peft train` on the tiny model: prefix through the MLP, a checkpoint every two steps.
fn train(data: &Path, out: &Path, steps: usize) -> Command {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../peft-models/tests/fixtures/tiny-llama");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft"));
    cmd.arg("train")
        .args(["--model".as_ref(), model.as_os_str()])
        .args(["--data".as_ref(), data.as_os_str()])
        .args(["--out".as_ref(), out.as_os_str()])
        .args(["--method", "prefix-mlp", "--virtual-tokens", "3"])
        .args([
            "--mlp-hidden",
            "16",
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
        ])
        .args(["--lr", "1e-2", "--warmup", "3", "--checkpoint-every", "2"])
        .args(["--steps", &steps.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_ok(mut cmd: Command, what: &str) {
    let out = cmd.output().expect("run peft");
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `"train"` lines of a run's metrics log: step and loss.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|v| v["event"] == "train")
        .map(|v| {
            let loss = v["loss"].as_f64().expect("loss");
            assert!(loss.is_finite(), "non-finite loss in {}", run.display());
            (v["step"].as_u64().expect("step"), loss)
        })
        .collect()
}

/// The committed checkpoints of a run (`checkpoints/step-NNNNNNNN`; one being written has
/// another name until its rename).
fn checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("step-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn killed_and_resumed_run_writes_the_uninterrupted_runs_adapter() {
    let dir = tmp("resume");
    let lines: Vec<String> = (0..24)
        .map(|i| {
            format!(
                "{{\"input\": \"name = Blue Spice {i} |\", \"output\": \" food = Italian {}\"}}",
                i % 5
            )
        })
        .collect();
    let data = dir.join("data.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").expect("write data");
    // Enough steps that the run is still going when its first checkpoint appears.
    let steps = 400;

    let full = dir.join("full");
    run_ok(train(&data, &full, steps), "the uninterrupted run");

    let split = dir.join("split");
    let mut child = train(&data, &split, steps).spawn().expect("spawn peft");
    let start = Instant::now();
    while checkpoints(&split).is_empty() {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the run ended before its first checkpoint"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint within 300 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the run finished before it was killed ({status}); raise `steps`"
    );
    assert!(
        !split.join("adapter_model.safetensors").exists(),
        "a killed run has no final adapter"
    );
    let kept = checkpoints(&split);
    assert!(!kept.is_empty() && kept.len() < steps / 2, "{kept:?}");

    let mut resume = Command::new(env!("CARGO_BIN_EXE_peft"));
    resume
        .args(["train".as_ref(), "--resume".as_ref(), split.as_os_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    run_ok(resume, "the resumed run");

    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        let a = std::fs::read(full.join(file)).expect("uninterrupted");
        let b = std::fs::read(split.join(file)).expect("resumed");
        assert!(
            a == b,
            "{file} differs between the uninterrupted and the killed-and-resumed run \
             (killed after {kept:?})"
        );
    }
    let (a, b) = (losses(&full), losses(&split));
    assert_eq!(a.len(), steps);
    assert_eq!(a, b, "loss curves differ");
    let _ = std::fs::remove_dir_all(&dir);
}
