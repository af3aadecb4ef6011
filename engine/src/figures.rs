//! A run (or a benchmark and its baseline) as pictures: PNG and SVG figures drawn with plotters,
//! and one self-contained HTML page that shows them with the run's figures as text. The page
//! loads nothing from the network: it opens offline, from the folder or copied elsewhere.
//!
//! The figures: task-latency CDF, completions over time, decode batch sizes, calls and dollars per
//! alias, and what the cache and collapsed calls saved. A figure whose data the run did not keep
//! (completion times and batch sizes are measured by `tutti bench`, not stored in a results file)
//! is left out, and the page says so.
//!
//! Text in the figures needs a TrueType font: DejaVu Sans (Debian's `fonts-dejavu-core`) or
//! Liberation Sans is looked for in the usual places, or `TUTTI_FONT` names one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use tutti_model::scheduler::BucketSnapshot;

use crate::report::{CallTally, Report};

/// Pixels of every figure.
const SIZE: (u32, u32) = (900, 520);
/// Where a font for the figures' text is looked for, first match wins (after `TUTTI_FONT`).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];
/// Line and bar colours of the runs, in order (tutti first, then the baseline).
const COLOURS: [RGBColor; 4] = [
    RGBColor(59, 130, 246),
    RGBColor(239, 68, 68),
    RGBColor(16, 185, 129),
    RGBColor(245, 158, 11),
];

#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error(
        "no TrueType font for the figures' text: looked for TUTTI_FONT and {}; install one \
         (Debian: apt-get install fonts-dejavu-core) or set TUTTI_FONT to a .ttf file",
        FONT_PATHS.join(", ")
    )]
    NoFont,
    #[error("the font {path} cannot be used: {why}")]
    BadFont { path: PathBuf, why: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot draw the figure {name}: {why}")]
    Draw { name: String, why: String },
}

/// One run as the figures need it.
#[derive(Debug, Clone)]
pub struct RunFigures {
    /// The legend's name for it (`tutti`, `baseline`, a file name).
    pub label: String,
    pub report: Report,
    /// The task-latency CDF: (milliseconds, fraction of tasks done within them), rising to 1.
    pub latency_cdf: Vec<(f64, f64)>,
    /// When each task ended, in seconds from the start of the run; empty when not measured.
    pub finished_s: Vec<f64>,
    /// Sequences per decode step, when measured.
    pub batch_size: Option<BucketSnapshot>,
    /// Billed, cache-served and joined calls and the dollars saved, when the ledger is at hand
    /// (a results file knows only which calls were served without billing).
    pub savings: Option<Savings>,
}

/// What the cache and collapsed calls saved in one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Savings {
    pub billed_calls: u64,
    pub cache_hits: u64,
    pub joined_calls: u64,
    pub spent_usd: f64,
    pub saved_usd: f64,
}

/// One figure written: its name, title and files.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: &'static str,
    pub title: &'static str,
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// The report folder: `index.html` and the figures.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub index: PathBuf,
    pub figures: Vec<Figure>,
    /// Figures left out, with why.
    pub skipped: Vec<(&'static str, &'static str)>,
}

/// Draws every figure the runs have data for into `dir` (created if needed) and writes
/// `dir/index.html`. `notes` are extra lines for the page (the profile, what was simulated).
pub fn write_report(
    dir: &Path,
    title: &str,
    runs: &[RunFigures],
    notes: &[String],
) -> Result<ReportFiles, FigureError> {
    load_font()?;
    std::fs::create_dir_all(dir).map_err(|source| FigureError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut figures = Vec::new();
    let mut skipped = Vec::new();
    macro_rules! figure {
        ($name:literal, $title:literal, $draw:ident) => {{
            let png = dir.join(concat!($name, ".png"));
            let svg = dir.join(concat!($name, ".svg"));
            let fail = |why: String| FigureError::Draw {
                name: $name.into(),
                why,
            };
            {
                let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
                $draw(&root, runs).map_err(|e| fail(e.to_string()))?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            {
                let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
                $draw(&root, runs).map_err(|e| fail(e.to_string()))?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            figures.push(Figure {
                name: $name,
                title: $title,
                png,
                svg,
            });
        }};
    }
    figure!("latency_cdf", "Task latency (CDF)", latency_cdf);
    if runs.iter().any(|r| !r.finished_s.is_empty()) {
        figure!(
            "throughput",
            "Tasks completed per second over time",
            throughput
        );
    } else {
        skipped.push((
            "throughput",
            "completion times are measured by `tutti bench` and are not stored in a results file",
        ));
    }
    if runs
        .iter()
        .any(|r| r.batch_size.as_ref().is_some_and(|b| b.count > 0))
    {
        figure!("batch_size", "Orchestrator decode batch size", batch_sizes);
    } else {
        skipped.push((
            "batch_size",
            "decode batch sizes are measured by `tutti bench` and are not stored in a results file",
        ));
    }
    figure!("alias_calls", "Calls per alias", alias_calls);
    figure!("alias_cost", "Dollars per alias", alias_cost);
    figure!("savings", "Calls served without billing", savings);
    let index = dir.join("index.html");
    let html = page(title, runs, notes, &figures, &skipped);
    std::fs::write(&index, html).map_err(|source| FigureError::Write {
        path: index.clone(),
        source,
    })?;
    Ok(ReportFiles {
        index,
        figures,
        skipped,
    })
}

/// Registers the figures' font once per process. Callers that run for long before they draw
/// (a benchmark) call it first, so that a missing font stops them before the work.
pub fn load_font() -> Result<(), FigureError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let path = std::env::var_os("TUTTI_FONT")
            .map(PathBuf::from)
            .or_else(|| FONT_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()))
            .ok_or_else(String::new)?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}\0{e}", path.display()))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}\0not a TrueType font", path.display()))
    });
    match loaded {
        Ok(()) => Ok(()),
        Err(e) if e.is_empty() => Err(FigureError::NoFont),
        Err(e) => {
            let (path, why) = e.split_once('\0').unwrap_or((e, ""));
            Err(FigureError::BadFont {
                path: path.into(),
                why: why.into(),
            })
        }
    }
}

type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// The fraction of tasks done within each latency, one line per run, on a log time axis.
fn latency_cdf<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunFigures],
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let max_ms = runs
        .iter()
        .filter_map(|r| r.latency_cdf.last())
        .map(|p| p.0)
        .fold(2.0f64, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption("Task latency (CDF)", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((1f64..max_ms * 1.1).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of tasks done")
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let points: Vec<(f64, f64)> = r
            .latency_cdf
            .iter()
            .map(|&(ms, q)| (ms.max(1.0), q))
            .collect();
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart)
}

/// Tasks completed per second, in bins of a fiftieth of the run, one line per run.
fn throughput<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[RunFigures]) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let series: Vec<(usize, Vec<(f64, f64)>)> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.finished_s.is_empty())
        .map(|(i, r)| (i, completions_per_second(&r.finished_s, 50)))
        .collect();
    let max_t = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let max_rate = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0);
    // A log axis: the baseline runs orders of magnitude slower, and both should be readable.
    // Empty bins sit on the floor.
    let floor = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .filter(|&v| v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(max_rate)
        / 2.0;
    let mut chart = ChartBuilder::on(root)
        .caption("Tasks completed per second", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..max_t * 1.02, (floor..max_rate * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time since the start of the run (s)")
        .y_desc("tasks/s (log scale)")
        .draw()?;
    for (i, points) in series {
        let points: Vec<(f64, f64)> = points.into_iter().map(|(t, v)| (t, v.max(floor))).collect();
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(runs[i].label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart)
}

/// Completions per second in `bins` equal bins over the run, at each bin's end.
fn completions_per_second(finished_s: &[f64], bins: usize) -> Vec<(f64, f64)> {
    let end = finished_s.iter().copied().fold(0.0f64, f64::max).max(1e-3);
    let width = end / bins as f64;
    let mut counts = vec![0u64; bins];
    for &t in finished_s {
        let b = ((t / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(b, &n)| ((b + 1) as f64 * width, n as f64 / width))
        .collect()
}

/// The share of decode steps in each batch-size bucket, bars side by side per run.
fn batch_sizes<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunFigures],
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let with: Vec<(usize, &BucketSnapshot)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.batch_size
                .as_ref()
                .filter(|b| b.count > 0)
                .map(|b| (i, b))
        })
        .collect();
    // Buckets up to the largest one any run used.
    let used = with
        .iter()
        .map(|(_, b)| {
            let mut last = 0;
            let mut previous = 0;
            for (k, &(_, c)) in b.cumulative.iter().enumerate() {
                if c > previous {
                    last = k;
                }
                previous = c;
            }
            last + 1
        })
        .max()
        .unwrap_or(1);
    let labels: Vec<String> = with[0].1.cumulative[..used]
        .iter()
        .map(|&(bound, _)| {
            if bound.is_finite() {
                format!("≤{bound}")
            } else {
                "more".into()
            }
        })
        .collect();
    let shares: Vec<Vec<f64>> = with
        .iter()
        .map(|(_, b)| {
            let mut previous = 0;
            b.cumulative[..used]
                .iter()
                .map(|&(_, c)| {
                    let own = c - previous;
                    previous = c;
                    own as f64 / b.count as f64
                })
                .collect()
        })
        .collect();
    let top = shares
        .iter()
        .flatten()
        .copied()
        .fold(0.0f64, f64::max)
        .max(0.01);
    let mut chart = ChartBuilder::on(root)
        .caption("Orchestrator decode batch size", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..used as f64, 0f64..top * 1.1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_desc("sequences per step")
        .y_desc("share of steps")
        .draw()?;
    categories(root, &chart, &labels, false)?;
    let n = with.len() as f64;
    for (j, ((i, _), share)) in with.iter().zip(&shares).enumerate() {
        let c = colour(*i);
        let w = 0.8 / n;
        chart
            .draw_series(share.iter().enumerate().map(|(k, &v)| {
                let x0 = k as f64 + 0.1 + j as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w, v)], c.filled())
            }))?
            .label(runs[*i].label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    legend(&mut chart)
}

/// Per-alias bars, side by side per run: `value` of each alias's tally.
fn alias_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunFigures],
    caption: &str,
    y_desc: &str,
    value: fn(&CallTally) -> f64,
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let aliases: Vec<&String> = {
        let mut all: BTreeMap<&String, ()> = BTreeMap::new();
        for r in runs {
            for a in r.report.aliases.keys() {
                all.insert(a, ());
            }
        }
        all.into_keys().collect()
    };
    let k = aliases.len().max(1);
    let top = runs
        .iter()
        .flat_map(|r| r.report.aliases.values().map(value))
        .fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(90)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..k as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .draw()?;
    let names: Vec<String> = aliases.iter().map(|a| a.to_string()).collect();
    categories(root, &chart, &names, true)?;
    let n = runs.len().max(1) as f64;
    for (j, r) in runs.iter().enumerate() {
        let c = colour(j);
        let w = 0.8 / n;
        chart
            .draw_series(aliases.iter().enumerate().map(|(i, a)| {
                let v = r.report.aliases.get(*a).map_or(0.0, value);
                let x0 = i as f64 + 0.1 + j as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w, v)], c.filled())
            }))?
            .label(r.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    legend(&mut chart)
}

fn alias_calls<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunFigures],
) -> Drawn<DB> {
    alias_bars(root, runs, "Calls per alias", "calls", |t| t.calls as f64)
}

fn alias_cost<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[RunFigures]) -> Drawn<DB> {
    alias_bars(root, runs, "Dollars per alias", "US$ billed", |t| {
        t.cost_usd
    })
}

/// Per run, the share of calls billed, served by the cache and joined to a call in flight.
fn savings<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[RunFigures]) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let parts: Vec<[(&str, f64); 3]> = runs
        .iter()
        .map(|r| match r.savings {
            Some(s) => [
                ("billed", s.billed_calls as f64),
                ("cache", s.cache_hits as f64),
                ("joined in flight", s.joined_calls as f64),
            ],
            None => [
                ("billed", (r.report.calls - r.report.cached_calls) as f64),
                ("cache or joined", r.report.cached_calls as f64),
                ("", 0.0),
            ],
        })
        .collect();
    let n = runs.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption("Calls served without billing", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..n as f64, 0f64..1.0)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("share of calls")
        .draw()?;
    let names: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    categories(root, &chart, &names, false)?;
    let fills = [colour(0), colour(2), colour(3)];
    let mut labelled = [false; 3];
    for (i, p) in parts.iter().enumerate() {
        let total: f64 = p.iter().map(|x| x.1).sum::<f64>().max(1.0);
        let mut base = 0.0;
        for (k, &(name, v)) in p.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let h = v / total;
            let c = fills[k];
            let bar = Rectangle::new(
                [(i as f64 + 0.25, base), (i as f64 + 0.75, base + h)],
                c.filled(),
            );
            let series = chart.draw_series(std::iter::once(bar))?;
            if !labelled[k] {
                labelled[k] = true;
                series.label(name).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled())
                });
            }
            base += h;
        }
    }
    legend(&mut chart)
}

/// Writes `labels` under the x axis of a chart whose categories sit at x = 0.5, 1.5, …; turned a
/// quarter when they are long.
fn categories<'a, DB: DrawingBackend + 'a>(
    root: &DrawingArea<DB, Shift>,
    chart: &ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    labels: &[String],
    turned: bool,
) -> Drawn<DB> {
    let y0 = chart.y_range().start;
    for (i, label) in labels.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, y0));
        let style = ("sans-serif", 13).into_font();
        let text = if turned {
            Text::new(
                label.clone(),
                (x - 7, y + 6),
                style.transform(FontTransform::Rotate90),
            )
        } else {
            Text::new(
                label.clone(),
                (x, y + 8),
                style.color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
            )
        };
        root.draw(&text)?;
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Drawn<DB> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()
}

/// The HTML page: a table of each run's figures, then every figure (inline SVG files by name,
/// PNG links), all relative to the folder.
fn page(
    title: &str,
    runs: &[RunFigures],
    notes: &[String],
    figures: &[Figure],
    skipped: &[(&str, &str)],
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
         body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:960px;color:#1d2330}}\
         h1{{font-size:22px}} h2{{font-size:17px;margin-top:1.6em}}\
         table{{border-collapse:collapse}} td,th{{padding:.3em .7em;border-bottom:1px solid #e5e7eb;text-align:left}}\
         td.num{{text-align:right;font-variant-numeric:tabular-nums}} img{{max-width:100%;border:1px solid #e5e7eb}}\
         pre{{background:#f6f7f9;padding:.8em;overflow-x:auto}} .muted{{color:#6b7280}}</style></head><body>\n\
         <h1>{t}</h1>\n",
        t = esc(title)
    );
    for n in notes {
        let _ = writeln!(h, "<p class=\"muted\">{}</p>", esc(n));
    }
    h.push_str("<table><tr><th></th>");
    for r in runs {
        let _ = write!(h, "<th>{}</th>", esc(&r.label));
    }
    h.push_str("</tr>\n");
    let row = |h: &mut String, name: &str, f: &dyn Fn(&RunFigures) -> String| {
        let _ = write!(h, "<tr><td>{}</td>", esc(name));
        for r in runs {
            let _ = write!(h, "<td class=\"num\">{}</td>", esc(&f(r)));
        }
        h.push_str("</tr>\n");
    };
    row(&mut h, "tasks", &|r| r.report.tasks.to_string());
    row(&mut h, "wall time (s)", &|r| {
        format!("{:.2}", r.report.wall_s)
    });
    row(&mut h, "tasks/s", &|r| {
        format!("{:.1}", r.report.tasks_per_s)
    });
    row(&mut h, "turns/s", &|r| {
        format!("{:.1}", r.report.turns_per_s)
    });
    row(&mut h, "latency p50 / p90 / p99 (ms)", &|r| {
        let l = r.report.task_latency_ms;
        format!("{} / {} / {}", l.p50, l.p90, l.p99)
    });
    row(&mut h, "calls (cached or joined)", &|r| {
        format!("{} ({})", r.report.calls, r.report.cached_calls)
    });
    row(&mut h, "US$ spent", &|r| {
        format!("{:.4}", r.report.cost_usd)
    });
    row(&mut h, "US$ per task", &|r| {
        format!("{:.6}", r.report.cost_per_task_usd)
    });
    row(&mut h, "US$ saved by the cache", &|r| {
        r.savings
            .map_or("not recorded".into(), |s| format!("{:.4}", s.saved_usd))
    });
    h.push_str("</table>\n");
    for f in figures {
        let file = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let _ = write!(
            h,
            "<h2>{}</h2>\n<img src=\"{svg}\" alt=\"{}\">\n<p class=\"muted\">Files: <a href=\"{png}\">{png}</a>, \
             <a href=\"{svg}\">{svg}</a></p>\n",
            esc(f.title),
            esc(f.title),
            svg = esc(&file(&f.svg)),
            png = esc(&file(&f.png)),
        );
    }
    for (name, why) in skipped {
        let _ = writeln!(
            h,
            "<p class=\"muted\">No {} figure: {}.</p>",
            esc(name),
            esc(why)
        );
    }
    for r in runs {
        let _ = write!(
            h,
            "<h2>{}: the run's report</h2>\n<pre>{}</pre>\n",
            esc(&r.label),
            esc(&r.report.lines().join("\n"))
        );
    }
    h.push_str("</body></html>\n");
    h
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_binned_per_second_over_the_run() {
        let done = [0.1, 0.2, 0.9, 1.0, 1.5, 2.0];
        let bins = completions_per_second(&done, 2);
        assert_eq!(bins, [(1.0, 3.0), (2.0, 3.0)]);
    }

    #[test]
    fn the_page_escapes_what_it_quotes() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
