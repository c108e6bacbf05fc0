//! `medgen bench curate`: videos/hour/core of the classical curation path (curate.segment →
//! curate.black_border → curate.dedup) against an equivalent Python pipeline (PySceneDetect +
//! OpenCV, `scripts/bench/curate_baseline.py`) and a plain `gst-launch-1.0 filesrc ! decodebin !
//! fakesink` decode (the decode floor), on the same files in the same run.
//!
//! Every measurement runs in a child process pinned to one CPU (`sched_setaffinity` before exec,
//! so decoder threads share that core too): ours is `medgen run -q -w 1` of a generated graph
//! with a fresh store each repeat (nothing memoised), the baseline runs with `OMP_NUM_THREADS=1`
//! and `cv2.setNumThreads(1)`. Times are wall clock of the child, best of `repeats`; the decode
//! floor has gst-launch's own start-up subtracted per file. CPU seconds (user + system of the
//! child) are reported alongside.

use anyhow::{Context, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The baseline script, embedded so that the benchmark runs from any folder.
const BASELINE_PY: &str = include_str!("../../scripts/bench/curate_baseline.py");
/// The venv that `scripts/bench/setup-baseline.sh` creates, relative to the current folder.
const DEFAULT_PYTHON: &str = ".cache/benchenv/bin/python";
/// Overrides the baseline's Python interpreter.
pub const PYTHON_ENV: &str = "MEDGEN_BENCH_PYTHON";
/// Ours counts as decode-bound when its time is at most this multiple of the decode floor.
pub const DECODE_BOUND_RATIO: f64 = 1.25;
/// Video file extensions taken from the sample folder (DICOM is left out: OpenCV cannot read it).
const VIDEO_EXTS: [&str; 7] = ["mp4", "mpg", "mpeg", "mkv", "webm", "mov", "avi"];

/// How to run the curation benchmark.
#[derive(Clone, Debug)]
pub struct CurateBenchOptions {
    /// Folder with the videos (default `.cache/samples`).
    pub dir: Option<PathBuf>,
    /// Only the two smallest files.
    pub quick: bool,
    /// Runs per measurement; the best counts.
    pub repeats: u32,
}

/// One timed pipeline.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Measurement {
    /// Best wall-clock seconds over the repeats.
    pub wall_s: f64,
    /// User + system CPU seconds of that run.
    pub cpu_s: f64,
    /// Cores it was allowed (1 when pinned).
    pub cores: usize,
    /// videos × 3600 / (wall_s × cores).
    pub videos_per_hour_core: f64,
}

impl Measurement {
    /// A measurement of `videos` files in `wall_s` seconds on `cores` cores.
    pub fn new(videos: usize, wall_s: f64, cpu_s: f64, cores: usize) -> Measurement {
        let cores = cores.max(1);
        let videos_per_hour_core =
            if wall_s > 0.0 { videos as f64 * 3600.0 / (wall_s * cores as f64) } else { f64::INFINITY };
        Measurement { wall_s, cpu_s, cores, videos_per_hour_core }
    }
}

/// Busy seconds of one node of our graph (from `medgen run --summary-json`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeBusy {
    pub node: String,
    pub op: String,
    pub items_out: u64,
    pub busy_s: f64,
}

/// The benchmark's results.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CurateReport {
    /// File names, in the order given to every pipeline.
    pub files: Vec<String>,
    pub videos: usize,
    pub repeats: u32,
    /// CPUs of this machine.
    pub cpus: usize,
    /// Whether every child was pinned to one CPU.
    pub pinned: bool,
    /// Ours: `medgen run -w 1` of source.files → curate.segment → curate.black_border →
    /// curate.dedup → sink.jsonl.
    pub ours: Measurement,
    /// Per-node busy seconds of our best run.
    pub ours_nodes: Vec<NodeBusy>,
    /// Clips out of curate.segment, and clips in the sink's file (kept after border and dedup),
    /// in our best run.
    pub ours_clips: u64,
    pub ours_kept: u64,
    /// The PySceneDetect + OpenCV baseline; `None` without its venv.
    pub baseline: Option<Measurement>,
    /// The baseline's own JSON of its best run (shots, clips, kept, its internal seconds, versions).
    pub baseline_output: Option<serde_json::Value>,
    /// Why the baseline did not run.
    pub baseline_missing: Option<String>,
    /// `gst-launch-1.0 filesrc ! decodebin ! fakesink` over the same files, start-up subtracted.
    pub decode_floor: Measurement,
    /// gst-launch-1.0's start-up seconds, subtracted once per file.
    pub gst_launch_startup_s: f64,
    /// baseline wall / ours wall (> 1: ours is faster).
    pub speedup_vs_baseline: Option<f64>,
    /// ours wall / decode floor wall (1: ours costs a decode).
    pub ours_over_decode_floor: f64,
    /// baseline wall / decode floor wall.
    pub baseline_over_decode_floor: Option<f64>,
}

impl CurateReport {
    /// Fill in the ratios from the measurements.
    pub fn with_ratios(mut self) -> CurateReport {
        let floor = self.decode_floor.wall_s;
        self.ours_over_decode_floor = ratio(self.ours.wall_s, floor);
        self.speedup_vs_baseline = self.baseline.as_ref().map(|b| ratio(b.wall_s, self.ours.wall_s));
        self.baseline_over_decode_floor = self.baseline.as_ref().map(|b| ratio(b.wall_s, floor));
        self
    }

    /// Ours is at most [`DECODE_BOUND_RATIO`] times the decode floor.
    pub fn decode_bound(&self) -> bool {
        self.ours_over_decode_floor <= DECODE_BOUND_RATIO
    }
}

/// One line of the table.
fn row(f: &mut std::fmt::Formatter<'_>, name: &str, m: &Measurement, vs_floor: Option<f64>) -> std::fmt::Result {
    let vs = vs_floor.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "—".into());
    writeln!(f, "  {name:<44} {:>9.2} {:>9.2} {:>16.0} {:>10}", m.wall_s, m.cpu_s, m.videos_per_hour_core, vs)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::INFINITY }
}

impl std::fmt::Display for CurateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pin = if self.pinned { "each pinned to 1 CPU" } else { "NOT pinned" };
        writeln!(
            f,
            "classical curation, {} videos ({}); best of {}; {} CPUs, {pin}",
            self.videos,
            self.files.join(", "),
            self.repeats,
            self.cpus
        )?;
        writeln!(
            f,
            "  {:<44} {:>9} {:>9} {:>16} {:>10}",
            "pipeline", "wall s", "CPU s", "videos/hour/core", "vs floor"
        )?;
        row(f, "ours: medgen run -w 1 (segment→border→dedup)", &self.ours, Some(self.ours_over_decode_floor))?;
        match &self.baseline {
            Some(b) => row(f, "baseline: PySceneDetect + OpenCV", b, self.baseline_over_decode_floor)?,
            None => writeln!(f, "  {:<44} {:>9}", "baseline: PySceneDetect + OpenCV", "not run")?,
        }
        row(f, "decode floor: gst-launch decodebin ! fakesink", &self.decode_floor, Some(1.0))?;
        let nodes: Vec<String> =
            self.ours_nodes.iter().map(|n| format!("{} {:.2} s ({} out)", n.op, n.busy_s, n.items_out)).collect();
        writeln!(f, "ours, busy per node: {}", nodes.join(", "))?;
        write!(f, "ours: {} clips, {} kept", self.ours_clips, self.ours_kept)?;
        if let Some(out) = &self.baseline_output {
            let get = |k: &str| out.get(k).map(|v| v.to_string()).unwrap_or_else(|| "?".into());
            write!(
                f,
                "; baseline: {} shots, {} clips, {} kept (its own timer: {} s)",
                get("shots"),
                get("clips"),
                get("kept"),
                out.get("seconds").and_then(|v| v.as_f64()).map(|s| format!("{s:.2}")).unwrap_or_else(|| "?".into())
            )?;
        }
        writeln!(f)?;
        match self.speedup_vs_baseline {
            Some(s) => {
                let verdict = if s > 1.0 { "faster than" } else { "NOT faster than" };
                writeln!(f, "ours is {verdict} the baseline: {s:.2}× its videos/hour/core")?
            }
            None => writeln!(f, "baseline not run: {}", self.baseline_missing.as_deref().unwrap_or("?"))?,
        }
        let verdict = if self.decode_bound() { "decode-bound" } else { "NOT decode-bound" };
        writeln!(
            f,
            "ours is {verdict}: {:.2}× the decode floor (decode-bound means ≤ {DECODE_BOUND_RATIO}×)",
            self.ours_over_decode_floor
        )
    }
}

/// The video files of `dir`, sorted by name; with `quick`, the two smallest.
pub fn sample_files(dir: &Path, quick: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {} (run scripts/fetch-samples.sh)", dir.display()))?;
    for e in entries {
        let p = e?.path();
        let ext = p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).unwrap_or_default();
        if p.is_file() && VIDEO_EXTS.contains(&ext.as_str()) {
            files.push(p);
        }
    }
    if files.is_empty() {
        bail!("no video files ({}) in {} (run scripts/fetch-samples.sh)", VIDEO_EXTS.join(", "), dir.display());
    }
    files.sort();
    if quick {
        files.sort_by_key(|p| (std::fs::metadata(p).map(|m| m.len()).unwrap_or(u64::MAX), p.clone()));
        files.truncate(2);
        files.sort();
    }
    Ok(files)
}

/// The graph of our path over `videos/*` next to it.
pub fn graph_toml() -> &'static str {
    r#"[graph]
name = "bench-curate"
description = "medgen bench curate: the classical curation path"

[nodes.videos]
op = "source.files"
paths = ["videos/*"]

[nodes.clips]
op = "curate.segment"
inputs = ["videos"]
sample_fps = 1.0
min_seconds = 2.0
min_height = 0

[nodes.border]
op = "curate.black_border"
inputs = ["clips"]

[nodes.unique]
op = "curate.dedup"
inputs = ["border"]

[nodes.out]
op = "sink.jsonl"
inputs = ["unique"]
path = "clips.jsonl"
"#
}

/// The first CPU this process may run on.
#[cfg(target_os = "linux")]
fn first_cpu() -> Option<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set))
    }
}

#[cfg(not(target_os = "linux"))]
fn first_cpu() -> Option<usize> {
    None
}

/// Pin the child (and every thread it starts) to `cpu`.
#[cfg(target_os = "linux")]
fn pin(cmd: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe sched_setaffinity system call on a stack-local set.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn pin(_cmd: &mut Command, _cpu: usize) {}

/// User + system seconds of all waited-for children so far.
fn children_cpu_s() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(u.ru_utime) + tv(u.ru_stime)
    }
}

/// Run `cmd` to completion: (wall seconds, CPU seconds, stdout). Fails on a non-zero exit.
fn timed(mut cmd: Command, cpu: Option<usize>, what: &str) -> anyhow::Result<(f64, f64, String)> {
    if let Some(c) = cpu {
        pin(&mut cmd, c);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let cpu_before = children_cpu_s();
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("cannot start {what}"))?;
    let wall = started.elapsed().as_secs_f64();
    let cpu_s = children_cpu_s() - cpu_before;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String =
            err.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        bail!("{what} failed ({}):\n{tail}", out.status);
    }
    Ok((wall, cpu_s, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn gst_launch(args: &[String]) -> Command {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("-q").args(args);
    cmd
}

/// The Python interpreter of the baseline, or why there is none.
fn baseline_python() -> Result<PathBuf, String> {
    let (path, from_env) = match std::env::var_os(PYTHON_ENV) {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from(DEFAULT_PYTHON), false),
    };
    if path.is_file() {
        return Ok(path);
    }
    let origin = if from_env { format!(" (from {PYTHON_ENV})") } else { String::new() };
    Err(format!(
        "no baseline venv: {}{origin} is missing; create it with `bash scripts/bench/setup-baseline.sh` in the \
         repository root (pinned scenedetect, opencv-python-headless, numpy from PyPI), then run this from there",
        path.display()
    ))
}

/// Run the benchmark; `log` gets progress lines.
pub fn bench_curate(opts: &CurateBenchOptions, log: &mut dyn FnMut(&str)) -> anyhow::Result<CurateReport> {
    let dir = opts.dir.clone().unwrap_or_else(|| PathBuf::from(".cache/samples"));
    let sources = sample_files(&dir, opts.quick)?;
    let repeats = opts.repeats.max(1);
    let exe = std::env::current_exe().context("cannot find the medgen executable")?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu = first_cpu();
    let pinned = cpu.is_some();
    let cores = if pinned { 1 } else { cpus };
    if !pinned {
        log("cannot pin the children to one CPU on this system; videos/hour/core divides by all CPUs");
    }

    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let videos_dir = tmp.path().join("videos");
    std::fs::create_dir_all(&videos_dir)?;
    let mut files = Vec::new();
    for src in &sources {
        let name = src.file_name().context("a file without a name")?;
        let dst = videos_dir.join(name);
        std::fs::copy(src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        files.push(dst);
    }
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let graph = tmp.path().join("curate.toml");
    std::fs::write(&graph, graph_toml())?;
    let script = tmp.path().join("curate_baseline.py");
    std::fs::write(&script, BASELINE_PY)?;
    log(&format!("{} videos from {}: {}", files.len(), dir.display(), names.join(", ")));

    let python = baseline_python();
    if let Err(why) = &python {
        log(why);
    }

    // gst-launch's own start-up, subtracted from each per-file decode.
    let mut startup = f64::INFINITY;
    for _ in 0..3 {
        let args: Vec<String> = ["fakesrc", "num-buffers=1", "!", "fakesink"].iter().map(|s| s.to_string()).collect();
        let (w, _, _) = timed(gst_launch(&args), cpu, "gst-launch-1.0 (install gstreamer1.0-tools)")?;
        startup = startup.min(w);
    }

    let mut best_ours: Option<(f64, f64, serde_json::Value, u64)> = None;
    let mut best_base: Option<(f64, f64, serde_json::Value)> = None;
    let mut best_floor: Option<(f64, f64)> = None;
    for r in 0..repeats {
        // Ours: a fresh store each run, so nothing comes from the memo cache.
        let store = tmp.path().join(format!("store-{r}"));
        let summary = tmp.path().join(format!("summary-{r}.json"));
        let mut cmd = Command::new(&exe);
        cmd.args(["run", "-q", "-w", "1", "--summary-json"])
            .arg(&summary)
            .arg("--store")
            .arg(&store)
            .arg(&graph)
            .env("OMP_NUM_THREADS", "1");
        let (w, c, _) = timed(cmd, cpu, "medgen run")?;
        let sum: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary)?)
            .with_context(|| format!("cannot parse {}", summary.display()))?;
        // Kept clips: the lines of the sink's file (a node's items_out counts retracted outputs too).
        let kept = std::fs::read_to_string(store.join("outputs/clips.jsonl"))
            .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64)
            .unwrap_or(0);
        std::fs::remove_dir_all(&store).ok();
        log(&format!("run {}: ours {w:.2} s wall, {c:.2} s CPU", r + 1));
        if best_ours.as_ref().is_none_or(|b| w < b.0) {
            best_ours = Some((w, c, sum, kept));
        }

        if let Ok(py) = &python {
            let mut cmd = Command::new(py);
            cmd.arg(&script)
                .args(&files)
                .env("OMP_NUM_THREADS", "1")
                .env("OPENBLAS_NUM_THREADS", "1")
                .env("PYTHONWARNINGS", "ignore");
            let (w, c, out) = timed(cmd, cpu, "the Python baseline")?;
            let json: serde_json::Value = out
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .context("the Python baseline printed no JSON line")?;
            log(&format!("run {}: baseline {w:.2} s wall, {c:.2} s CPU", r + 1));
            if best_base.as_ref().is_none_or(|b| w < b.0) {
                best_base = Some((w, c, json));
            }
        }

        let (mut fw, mut fc) = (0.0, 0.0);
        for file in &files {
            let args = vec![
                "filesrc".to_string(),
                format!("location=\"{}\"", file.display()),
                "!".into(),
                "decodebin".into(),
                "!".into(),
                "fakesink".into(),
            ];
            let (w, c, _) = timed(gst_launch(&args), cpu, "gst-launch-1.0 decode")?;
            fw += (w - startup).max(0.0);
            fc += c;
        }
        log(&format!("run {}: decode floor {fw:.2} s wall", r + 1));
        if best_floor.is_none_or(|b| fw < b.0) {
            best_floor = Some((fw, fc));
        }
    }

    let (ow, oc, sum, kept) = best_ours.expect("at least one repeat");
    let nodes: Vec<NodeBusy> = sum["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| NodeBusy {
                    node: n["node"].as_str().unwrap_or("?").into(),
                    op: n["op"].as_str().unwrap_or("?").into(),
                    items_out: n["items_out"].as_u64().unwrap_or(0),
                    busy_s: n["busy_s"].as_f64().unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default();
    let out_of = |node: &str| nodes.iter().find(|n| n.node == node).map(|n| n.items_out).unwrap_or(0);
    let (fw, fc) = best_floor.expect("at least one repeat");
    let n = files.len();
    let report = CurateReport {
        files: names,
        videos: n,
        repeats,
        cpus,
        pinned,
        ours: Measurement::new(n, ow, oc, cores),
        ours_clips: out_of("clips"),
        ours_kept: kept,
        ours_nodes: nodes,
        baseline: best_base.as_ref().map(|(w, c, _)| Measurement::new(n, *w, *c, cores)),
        baseline_output: best_base.map(|(_, _, j)| j),
        baseline_missing: python.err(),
        decode_floor: Measurement::new(n, fw, fc, cores),
        gst_launch_startup_s: startup,
        speedup_vs_baseline: None,
        ours_over_decode_floor: 0.0,
        baseline_over_decode_floor: None,
    };
    Ok(report.with_ratios())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(baseline: Option<f64>) -> CurateReport {
        CurateReport {
            files: vec!["a.mp4".into(), "b.mp4".into()],
            videos: 2,
            repeats: 1,
            cpus: 2,
            pinned: true,
            ours: Measurement::new(2, 4.0, 3.9, 1),
            ours_nodes: vec![NodeBusy { node: "clips".into(), op: "curate.segment".into(), items_out: 3, busy_s: 2.5 }],
            ours_clips: 3,
            ours_kept: 2,
            baseline: baseline.map(|w| Measurement::new(2, w, w, 1)),
            baseline_output: baseline.map(|_| serde_json::json!({"shots": 3, "clips": 3, "kept": 2, "seconds": 7.5})),
            baseline_missing: if baseline.is_none() { Some("no venv".into()) } else { None },
            decode_floor: Measurement::new(2, 2.0, 2.0, 1),
            gst_launch_startup_s: 0.03,
            speedup_vs_baseline: None,
            ours_over_decode_floor: 0.0,
            baseline_over_decode_floor: None,
        }
        .with_ratios()
    }

    #[test]
    fn videos_per_hour_core() {
        let m = Measurement::new(5, 10.0, 9.0, 1);
        assert!((m.videos_per_hour_core - 1800.0).abs() < 1e-9);
        let m = Measurement::new(5, 10.0, 9.0, 2);
        assert!((m.videos_per_hour_core - 900.0).abs() < 1e-9);
        assert!(Measurement::new(1, 0.0, 0.0, 1).videos_per_hour_core.is_infinite());
    }

    #[test]
    fn ratios_and_verdicts() {
        let r = report(Some(8.0));
        assert_eq!(r.speedup_vs_baseline, Some(2.0));
        assert_eq!(r.ours_over_decode_floor, 2.0);
        assert_eq!(r.baseline_over_decode_floor, Some(4.0));
        assert!(!r.decode_bound());
        let text = r.to_string();
        assert!(text.contains("ours is faster than the baseline: 2.00×"), "{text}");
        assert!(text.contains("ours is NOT decode-bound: 2.00×"), "{text}");
        assert!(text.contains("1800"), "ours: 2 videos in 4 s on 1 core is 1800 videos/hour/core\n{text}");
        assert!(text.contains("baseline: 3 shots, 3 clips, 2 kept (its own timer: 7.50 s)"), "{text}");

        let mut fast = report(Some(3.0));
        fast.decode_floor = Measurement::new(2, 3.5, 3.5, 1);
        let fast = fast.with_ratios();
        assert!(fast.decode_bound());
        let text = fast.to_string();
        assert!(text.contains("NOT faster than the baseline: 0.75×"), "{text}");
        assert!(text.contains("ours is decode-bound: 1.14×"), "{text}");
    }

    #[test]
    fn without_baseline() {
        let r = report(None);
        assert_eq!(r.speedup_vs_baseline, None);
        assert_eq!(r.baseline_over_decode_floor, None);
        let text = r.to_string();
        assert!(text.contains("not run"), "{text}");
        assert!(text.contains("baseline not run: no venv"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["baseline"].is_null());
        assert_eq!(json["ours"]["videos_per_hour_core"], 1800.0);
    }

    #[test]
    fn quick_takes_the_two_smallest_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in [("c.mp4", 30), ("a.mpg", 10), ("b.mkv", 20), ("x.dcm", 1), ("notes.txt", 1)] {
            std::fs::write(dir.path().join(name), vec![0u8; size]).unwrap();
        }
        let all = sample_files(dir.path(), false).unwrap();
        let names =
            |v: &[PathBuf]| v.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(names(&all), ["a.mpg", "b.mkv", "c.mp4"]);
        assert_eq!(names(&sample_files(dir.path(), true).unwrap()), ["a.mpg", "b.mkv"]);
        let empty = tempfile::tempdir().unwrap();
        assert!(sample_files(empty.path(), false).is_err());
    }
}
