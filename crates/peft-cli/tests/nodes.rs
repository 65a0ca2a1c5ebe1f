//! `peft train --nodes 2` as two processes on 127.0.0.1, with `peft coordinator` started and
//! stopped by each test: the same adapter as one process; a node killed mid-run stops the other
//! at once with an error naming it, the last checkpoint stays and `--resume` on one process
//! finishes the run; nodes started with different settings are refused.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("peft-nodes-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("mkdir");
    p
}

fn data(dir: &Path) -> PathBuf {
    let path = dir.join("train.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"input": "name = Blue Spice {i} |{}", "output": " food = Italian {}"}}"#,
                " area = riverside".repeat(i % 3),
                i % 7
            )
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).expect("write data");
    path
}

/// `peft train` on the tiny model, prompt tuning.
fn train(data: &Path, out: &Path, steps: usize) -> Command {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../peft-models/tests/fixtures/tiny-llama");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft"));
    cmd.arg("train")
        .args(["--model".as_ref(), model.as_os_str()])
        .args(["--data".as_ref(), data.as_os_str()])
        .args(["--out".as_ref(), out.as_os_str()])
        .args(["--method", "prompt", "--virtual-tokens", "4"])
        .args(["--batch-size", "8", "--steps", &steps.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn node(mut cmd: Command, rank: usize, port: u16) -> Command {
    cmd.args(["--nodes", "2", "--node-rank", &rank.to_string()])
        .args(["--coordinator", &format!("127.0.0.1:{port}")])
        .args(["--peer-timeout", "60"]);
    cmd
}

/// A free port for the coordinator, and the coordinator serving it (stopped on drop).
struct Coordinator(Child, u16);

impl Coordinator {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_peft"))
            .args(["coordinator", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the coordinator");
        Self(child, port)
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn finish(child: Child, what: &str) -> (bool, String) {
    let out = child.wait_with_output().expect(what);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(mut cmd: Command, what: &str) {
    let (ok, stderr) = finish(cmd.spawn().expect(what), what);
    assert!(ok, "{what} failed:\n{stderr}");
}

/// The adapter's values, in the file's tensor order.
fn adapter(run: &Path) -> Vec<f32> {
    let bytes = std::fs::read(run.join("adapter_model.safetensors")).expect("adapter file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
    names.sort();
    let mut values = Vec::new();
    for name in names {
        let t = st.tensor(&name).expect("tensor");
        values.extend(
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    assert!(!values.is_empty());
    values
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(x.is_finite() && y.is_finite(), "non-finite adapter value");
            (x - y).abs()
        })
        .fold(0.0, f32::max)
}

#[test]
fn two_processes_give_the_adapter_of_one() {
    let dir = tmp("equal");
    let data = data(&dir);
    let (one, two) = (dir.join("one"), dir.join("two"));
    run_ok(train(&data, &one, 10), "one process");
    let coordinator = Coordinator::start();
    let n1 = node(train(&data, &two, 10), 1, coordinator.1)
        .spawn()
        .expect("node 1");
    run_ok(node(train(&data, &two, 10), 0, coordinator.1), "node 0");
    let (ok, stderr) = finish(n1, "node 1");
    assert!(ok, "node 1 failed:\n{stderr}");
    let worst = max_abs_diff(&adapter(&one), &adapter(&two));
    eprintln!("two processes against one: max |Δ| = {worst:e}");
    assert!(worst <= 1e-5, "max |Δ| = {worst:e}");
}

#[test]
fn a_killed_node_stops_the_other_and_one_process_resumes() {
    let dir = tmp("killed");
    let data = data(&dir);
    let run = dir.join("run");
    let steps = 400;
    let coordinator = Coordinator::start();
    let with_checkpoints = |rank| {
        let mut cmd = node(train(&data, &run, steps), rank, coordinator.1);
        cmd.args(["--checkpoint-every", "20"]);
        cmd
    };
    let mut n1 = with_checkpoints(1).spawn().expect("node 1");
    let n0 = with_checkpoints(0).spawn().expect("node 0");
    let first = run.join("checkpoints/step-00000020");
    let started = Instant::now();
    while !first.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    n1.kill().expect("kill node 1");
    let killed = Instant::now();
    let _ = n1.wait();
    let (ok, stderr) = finish(n0, "node 0");
    let stopped = killed.elapsed();
    eprintln!("node 0 stopped {stopped:?} after node 1 was killed");
    assert!(!ok, "node 0 must fail when node 1 is gone");
    assert!(
        stderr.contains("node 1 left the run"),
        "the error names the lost node:\n{stderr}"
    );
    // The coordinator tells node 0 at its next sum: within a step, far below --peer-timeout.
    assert!(
        stopped < Duration::from_secs(30),
        "stopped after {stopped:?}"
    );
    assert!(
        !run.join("adapter_model.safetensors").exists(),
        "the run did not finish"
    );
    // One process continues from the last checkpoint to the end.
    let mut resume = Command::new(env!("CARGO_BIN_EXE_peft"));
    resume
        .args(["train".as_ref(), "--resume".as_ref(), run.as_os_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    run_ok(resume, "resume on one process");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let last = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "train")
        .map(|v| v["step"].as_u64().expect("step"))
        .collect::<Vec<_>>();
    assert_eq!(
        last,
        (1..=steps as u64).collect::<Vec<_>>(),
        "every step logged once"
    );
    assert!(adapter(&run).iter().all(|v| v.is_finite()));
}

#[test]
fn nodes_with_different_settings_are_refused() {
    let dir = tmp("mismatch");
    let data = data(&dir);
    let run = dir.join("run");
    let coordinator = Coordinator::start();
    let mut other = node(train(&data, &run, 5), 1, coordinator.1);
    other.args(["--seed", "7"]);
    let n1 = other.spawn().expect("node 1");
    let n0 = node(train(&data, &run, 5), 0, coordinator.1)
        .spawn()
        .expect("node 0");
    for (child, what) in [(n0, "node 0"), (n1, "node 1")] {
        let (ok, stderr) = finish(child, what);
        assert!(!ok, "{what} must refuse the run");
        assert!(
            stderr.contains("the nodes disagree on `seed`: node 1"),
            "{what}:\n{stderr}"
        );
    }
}
