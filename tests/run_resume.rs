//! `tutti run` killed with SIGKILL mid-run and resumed ends with every task exactly once.

mod common;

use std::collections::HashSet;

use common::*;

#[test]
fn killed_run_resumes_to_every_id_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let out = dir.path().join("out.parquet");
    let parts = dir.path().join("out.parquet.parts");
    write_tasks(&tasks, 10_000);
    // The first run is slowed (calls of ~0.2–2 s, 128 tasks live) so it cannot finish in the few
    // seconds before it is killed, however loaded the machine; the resumed run is the usual
    // simulation. Which results are already done does not depend on the config.
    let slow = sim_config(dir.path(), 0.02, 128);
    let config = repo("configs/toolorchestra-sim.toml");

    let mut child = tutti()
        .arg("run")
        .arg(&tasks)
        .arg("-o")
        .arg(&out)
        .arg("--config")
        .arg(&slow)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some results are committed, then kill without warning.
    wait_for_segments(&mut child, &parts, 2, 120);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.exists(), "the run was killed before it finished");

    // Without --resume the leftovers are refused rather than silently overwritten.
    let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
    assert!(!o.status.success());
    assert!(err.contains("--resume"), "{err}");

    let (o, err) = run(tutti_run(&tasks, &out, &config).arg("--resume"));
    assert!(o.status.success(), "{err}");
    let ids = result_ids(&out);
    assert_eq!(ids.len(), 10_000);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 10_000);
    assert!(!parts.exists(), "segments are merged away");
}

#[test]
fn bundled_example_runs_end_to_end_in_simulation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.parquet");
    let (o, err) = run(tutti()
        .arg("run")
        .arg(repo("examples/tasks.jsonl"))
        .arg("-o")
        .arg(&out)
        .arg("--config")
        .arg(repo("configs/toolorchestra-sim.toml"))
        .arg("--json"));
    assert!(o.status.success(), "{err}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = std::fs::read_to_string(repo("examples/tasks.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(summary["rows"], n as u64);
    assert_eq!(result_ids(&out).len(), n);
}

/// Issue 19, B5: a segment corrupted inside a page (its footer intact) was found only at the
/// final merge, after every remaining task ran, and a truncated one stopped the resume without
/// saying what to do. Both now stop `tutti run --resume` when it opens the parts directory,
/// before any task runs, with the commands that recover; following them, run by a shell as
/// printed, ends with every id exactly once.
#[test]
fn a_damaged_segment_stops_resume_at_open_and_the_printed_commands_recover() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let out = dir.path().join("out.parquet");
    let parts = dir.path().join("out.parquet.parts");
    write_tasks(&tasks, 3_000);
    let slow = sim_config(dir.path(), 0.02, 128);
    let mut child = tutti_run(&tasks, &out, &slow)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_segments(&mut child, &parts, 3, 120);
    child.kill().unwrap();
    child.wait().unwrap();

    let mut segments: Vec<_> = std::fs::read_dir(&parts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    segments.sort();
    // Bytes of the first page overwritten; the footer (and so the file's structure) intact.
    let in_a_page = &segments[0];
    let mut bytes = std::fs::read(in_a_page).unwrap();
    bytes[64..80].fill(0xff);
    std::fs::write(in_a_page, &bytes).unwrap();
    // Cut in half.
    let cut = &segments[1];
    let len = std::fs::metadata(cut).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(cut)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let config = repo("configs/toolorchestra-sim.toml");
    for damaged in [in_a_page, cut] {
        let (o, err) = run(tutti_run(&tasks, &out, &config).arg("--resume"));
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains(&format!("{} is damaged", damaged.display())),
            "{err}"
        );
        assert!(!out.exists(), "nothing was merged: {err}");
        let now = std::fs::read_dir(&parts).unwrap().count();
        assert!(now <= segments.len(), "no task ran: {err}");
        // The recovery: the `mv` line, then the command to run again, as printed.
        let commands: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("  ")).collect();
        assert_eq!(commands.len(), 2, "{err}");
        assert!(commands[0].starts_with("mv "), "{err}");
        assert!(commands[1].contains("--resume"), "{err}");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(commands[0])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(!damaged.exists());
        if damaged == cut {
            let (o, err) = run(std::process::Command::new("sh").arg("-c").arg(commands[1]));
            assert!(o.status.success(), "{err}");
        }
    }
    let ids = result_ids(&out);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (3_000, 3_000));
    assert!(
        dir.path().join("out.parquet.seg-000000.damaged").exists()
            && dir.path().join("out.parquet.seg-000001.damaged").exists(),
        "the damaged segments are kept beside the output"
    );
}
