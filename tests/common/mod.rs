//! Helpers shared by the integration tests: the real `tutti` binary and real files.
#![allow(dead_code)]

pub mod faults;
pub mod llama;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn tutti() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `tutti run TASKS -o OUT --config CONFIG`.
pub fn tutti_run(tasks: &Path, out: &Path, config: &Path) -> Command {
    let mut cmd = tutti();
    cmd.arg("run")
        .arg(tasks)
        .arg("-o")
        .arg(out)
        .arg("--config")
        .arg(config);
    cmd
}

/// Whether pyarrow (with Flight) is importable; in CI it must be (`.ci/run` installs it), so a
/// test that needs it skips only off CI.
pub fn pyarrow() -> bool {
    python_imports("import pyarrow.flight, pyarrow.parquet", "pyarrow")
}

/// Whether `python3 -c IMPORTS` succeeds. Off CI a test that needs the modules skips (saying
/// `pip install PACKAGES`); in CI they must be there, since `.ci/run` installs them.
pub fn python_imports(imports: &str, packages: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", imports])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install {packages} (pip install {packages})"
        );
        eprintln!("skipped: {packages} not installed (pip install {packages})");
    }
    ok
}

/// Runs the binary and returns its output, with stderr as text for assertions.
pub fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("run tutti");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

/// Writes `n` arithmetic tasks as JSON Lines.
pub fn write_tasks(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        let (a, b) = (i % 97 + 2, i % 89 + 3);
        s.push_str(&format!(
            "{{\"id\": \"task-{i}\", \"prompt\": \"What is {a} + {b}?\", \"reference\": \"{}\"}}\n",
            a + b
        ));
    }
    std::fs::write(path, s).unwrap();
}

/// Every `id` in a Parquet results file.
pub fn result_ids(path: &Path) -> Vec<String> {
    use arrow::array::{Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = batch.column_by_name("id").unwrap();
        let col = col.as_any().downcast_ref::<StringArray>().unwrap();
        ids.extend((0..col.len()).map(|i| col.value(i).to_string()));
    }
    ids
}

/// The bundled simulated catalog (`configs/toolorchestra-sim.toml`) with its latencies compressed
/// by `time_scale` instead of 0.001 and `max_live_tasks` tasks live, written into `dir`.
pub fn sim_config(dir: &Path, time_scale: f64, max_live_tasks: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo("configs/toolorchestra-sim.toml")).unwrap();
    let scale = format!("time_scale = {time_scale}");
    let live = format!("max_live_tasks = {max_live_tasks}");
    let text = text
        .replace("time_scale = 0.001", &scale)
        .replace("max_live_tasks = 1024", &live);
    assert!(text.contains(&scale) && text.contains(&live));
    let path = dir.join(format!("sim-{time_scale}-{max_live_tasks}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until a running `tutti run` has committed `n` result segments into `parts`, failing if it
/// ends first (it must still be running to be killed mid-run) or nothing comes within `timeout`.
pub fn wait_for_segments(child: &mut std::process::Child, parts: &Path, n: usize, timeout_s: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    loop {
        let segments = std::fs::read_dir(parts)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
                    .count()
            })
            .unwrap_or(0);
        if segments >= n {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no results committed in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
