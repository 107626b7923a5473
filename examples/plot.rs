//! Pictures of a load run, as SVG: for each stack (a client sent the same
//! traffic through), its latency percentiles as grouped bars, and its
//! success rate over the run, bucket by bucket, with the fault's time
//! shaded. The demo and the fault suite (`benches/faults.rs`, which
//! includes this file with `#[path]`) both draw with it.
//!
//! Plotters' SVG backend writes text as `<text>` elements and leaves the
//! font to the viewer, so no font is loaded here (plotters' `ttf` feature
//! and font-kit stay out of the build).
//!
//! Measuring stays apart from drawing: a run keeps each request's send
//! time and outcome, and only once it is over are they counted into a
//! [`Timeline`] and drawn.

use std::collections::BTreeSet;
use std::error::Error;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The percentiles drawn, with their labels.
pub const PERCENTILES: [(f64, &str); 4] = [
    (0.50, "p50"),
    (0.90, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
];

const WIDTH: u32 = 960;
const HEIGHT: u32 = 420;
/// The latency panel's share of the width; the timeline has the rest.
const LATENCY_WIDTH: u32 = 390;
const FONT: &str = "sans-serif";
/// The product's stacks are drawn in blues...
const MESH_COLORS: [RGBColor; 2] = [RGBColor(0, 114, 178), RGBColor(86, 180, 233)];
/// ...the others in these (Okabe and Ito's colours, told apart by
/// colour-blind readers too).
const OTHER_COLORS: [RGBColor; 4] = [
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(120, 120, 120),
];
const FAULT_COLORS: [RGBColor; 2] = [RGBColor(213, 94, 0), RGBColor(240, 200, 0)];

/// Requests sent and requests that succeeded, per bucket of a run's time.
#[derive(Clone, Debug)]
pub struct Timeline {
    bucket: Duration,
    sent: Vec<u32>,
    succeeded: Vec<u32>,
}

// === impl Timeline ===

impl Timeline {
    /// An empty timeline of `bucket`-long buckets, room made for a run of
    /// `span` (a longer one grows it).
    pub fn new(bucket: Duration, span: Duration) -> Timeline {
        let bucket = bucket.max(Duration::from_millis(1));
        let buckets = (span.as_nanos() / bucket.as_nanos()) as usize + 1;
        Timeline {
            bucket,
            sent: vec![0; buckets],
            succeeded: vec![0; buckets],
        }
    }

    /// Counts one request, sent `sent_at` after the run started.
    pub fn record(&mut self, sent_at: Duration, succeeded: bool) {
        let i = (sent_at.as_nanos() / self.bucket.as_nanos()) as usize;
        if i >= self.sent.len() {
            self.sent.resize(i + 1, 0);
            self.succeeded.resize(i + 1, 0);
        }
        self.sent[i] += 1;
        self.succeeded[i] += u32::from(succeeded);
    }

    /// Each bucket's start and end in seconds and the percentage of its
    /// requests that succeeded; buckets nothing was sent in are left out.
    fn success_percent(&self) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        let at = |i: usize| (self.bucket * i as u32).as_secs_f64();
        self.sent
            .iter()
            .zip(&self.succeeded)
            .enumerate()
            .filter(|(_, (sent, _))| **sent > 0)
            .map(move |(i, (sent, ok))| {
                (at(i), at(i + 1), 100.0 * f64::from(*ok) / f64::from(*sent))
            })
    }

    /// From the start of the run to the end of its last bucket with a
    /// request.
    fn span(&self) -> Duration {
        let last = self.sent.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1);
        self.bucket * last as u32
    }
}

/// What one stack got: its latency percentiles and its timeline.
#[derive(Clone, Debug)]
pub struct Stack {
    name: String,
    /// At [`PERCENTILES`], in milliseconds.
    percentiles_ms: [f64; 4],
    timeline: Timeline,
}

// === impl Stack ===

impl Stack {
    /// The stack `name`, from its latencies sorted in increasing order
    /// (percentiles by nearest rank) and its timeline.
    pub fn new(
        name: impl Into<String>,
        sorted_latencies: &[Duration],
        timeline: Timeline,
    ) -> Stack {
        let percentiles_ms =
            PERCENTILES.map(|(p, _)| percentile(sorted_latencies, p).as_secs_f64() * 1e3);
        Stack {
            name: name.into(),
            percentiles_ms,
            timeline,
        }
    }

    fn color(&self, index: usize, stacks: &[Stack]) -> RGBColor {
        let is_mesh = |s: &Stack| s.name.starts_with("tower-mesh");
        let (palette, rank): (&[RGBColor], usize) = if is_mesh(self) {
            (
                &MESH_COLORS,
                stacks[..index].iter().filter(|s| is_mesh(s)).count(),
            )
        } else {
            (
                &OTHER_COLORS,
                stacks[..index].iter().filter(|s| !is_mesh(s)).count(),
            )
        };
        palette[rank % palette.len()]
    }
}

/// The latency at `p` (0 to 1) of `sorted`, by nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A time a fault was in force, from the start of the run; windows with
/// the same label share a colour and one legend entry.
#[derive(Clone, Debug)]
pub struct FaultWindow {
    /// When the fault began...
    pub from: Duration,
    /// ...and ended (the run's end for a fault that never did).
    pub to: Duration,
    /// What the fault was, for the legend.
    pub label: String,
}

/// One picture: a title, the stacks side by side, the faults shaded.
#[derive(Clone, Debug)]
pub struct Picture {
    /// The line above both panels.
    pub title: String,
    /// In the order of the legend.
    pub stacks: Vec<Stack>,
    /// Shaded on the timeline.
    pub faults: Vec<FaultWindow>,
}

// === impl Picture ===

impl Picture {
    /// Writes the picture to `path`, making its folder if need be.
    pub fn write(&self, path: &Path) -> Result<(), Box<dyn Error>> {
        let svg = self.to_svg()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, svg)?;
        Ok(())
    }

    /// The picture as an SVG document.
    pub fn to_svg(&self) -> Result<String, Box<dyn Error>> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
            root.fill(&WHITE)?;
            let root = root.titled(&self.title, (FONT, 21))?;
            let legend = self.legend();
            let rows = legend.rows(WIDTH - 24);
            let (_, height) = root.dim_in_pixel();
            let (charts, strip) = root.split_vertically(height - 10 - 20 * rows);
            let (latency, timeline) = charts.split_horizontally(LATENCY_WIDTH);
            self.draw_latency(&latency)?;
            self.draw_timeline(&timeline)?;
            legend.draw(&strip, WIDTH - 24)?;
            root.present()?;
        }
        Ok(svg)
    }

    fn draw_latency<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), Box<dyn Error>>
    where
        DB::ErrorType: 'static,
    {
        // Log scale: a slow tail is ten or a hundred times the median.
        let shown = |ms: f64| ms.max(0.01);
        let values = self.stacks.iter().flat_map(|s| s.percentiles_ms.map(shown));
        let (lo, hi) = values.fold((f64::MAX, 0.01f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let lo = 10f64.powf(lo.min(hi).log10().floor());
        // Room above the tallest bar for its label.
        let hi = hi * 2.5;
        let groups = PERCENTILES.len();
        let x = Ticks::new(0.0..groups as f64, (0..groups).map(|g| g as f64 + 0.5));
        let mut chart = ChartBuilder::on(area)
            .caption("latency percentiles (ms, log scale)", (FONT, 17))
            .margin(8)
            .margin_right(20)
            .x_label_area_size(24)
            .y_label_area_size(44)
            .build_cartesian_2d(x, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_max_light_lines(0)
            .bold_line_style(RGBColor(225, 225, 225))
            .x_label_formatter(&|x| PERCENTILES[(*x as usize).min(groups - 1)].1.to_owned())
            .y_label_formatter(&|ms| number(*ms))
            .label_style((FONT, 15))
            .draw()?;
        // Each group of bars takes 80% of its slot, one bar per stack.
        let width = 0.8 / self.stacks.len().max(1) as f64;
        let label_bars = self.stacks.len() <= 3;
        for (i, stack) in self.stacks.iter().enumerate() {
            let color = stack.color(i, &self.stacks);
            let bars = stack.percentiles_ms.iter().enumerate().map(|(g, ms)| {
                let left = g as f64 + 0.1 + width * i as f64;
                Rectangle::new(
                    [(left, lo), (left + width * 0.92, shown(*ms))],
                    color.filled(),
                )
            });
            chart.draw_series(bars)?;
            if label_bars {
                let style = TextStyle::from((FONT, 13).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                let labels = stack.percentiles_ms.iter().enumerate().map(|(g, ms)| {
                    let middle = g as f64 + 0.1 + width * (i as f64 + 0.46);
                    Text::new(number(*ms), (middle, shown(*ms) * 1.05), style.clone())
                });
                chart.draw_series(labels)?;
            }
        }
        Ok(())
    }

    fn draw_timeline<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), Box<dyn Error>>
    where
        DB::ErrorType: 'static,
    {
        let span = self
            .stacks
            .iter()
            .map(|s| s.timeline.span())
            .chain(self.faults.iter().map(|f| f.to))
            .max()
            .unwrap_or_default()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let bucket = self
            .stacks
            .first()
            .map_or(Duration::ZERO, |s| s.timeline.bucket);
        let caption = format!(
            "success per {} ms, by when each request was sent",
            bucket.as_millis()
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 17))
            .margin(8)
            .margin_right(20)
            .x_label_area_size(44)
            .y_label_area_size(44)
            .build_cartesian_2d(
                0.0..span,
                Ticks::new(0.0..105.0, [0.0, 25.0, 50.0, 75.0, 100.0]),
            )?;
        chart
            .configure_mesh()
            .x_max_light_lines(0)
            .y_max_light_lines(0)
            .bold_line_style(RGBColor(225, 225, 225))
            .x_desc("seconds into the run")
            .x_label_formatter(&|s| number(*s))
            .y_label_formatter(&|p| format!("{p:.0}%"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 15))
            .draw()?;
        let labels = self.fault_labels();
        let bands = self.faults.iter().map(|f| {
            let color = fault_color(&labels, &f.label);
            let (from, to) = (f.from.as_secs_f64().min(span), f.to.as_secs_f64().min(span));
            Rectangle::new([(from, 0.0), (to, 105.0)], color.mix(0.15).filled())
        });
        chart.draw_series(bands)?;
        for (i, stack) in self.stacks.iter().enumerate() {
            // A step for each bucket: its value holds over its whole width.
            let steps: Vec<(f64, f64)> = stack
                .timeline
                .success_percent()
                .flat_map(|(start, end, percent)| [(start, percent), (end, percent)])
                .collect();
            let color = stack.color(i, &self.stacks);
            chart.draw_series(std::iter::once(PathElement::new(
                steps,
                color.stroke_width(2),
            )))?;
        }
        Ok(())
    }

    /// The faults' labels, each once, in a fixed order.
    fn fault_labels(&self) -> Vec<&str> {
        let labels: BTreeSet<&str> = self.faults.iter().map(|f| f.label.as_str()).collect();
        labels.into_iter().collect()
    }

    fn legend(&self) -> Legend {
        let labels = self.fault_labels();
        let stacks = self
            .stacks
            .iter()
            .enumerate()
            .map(|(i, s)| (s.color(i, &self.stacks).filled(), s.name.clone()));
        let faults = labels.iter().map(|l| {
            (
                fault_color(&labels, l).mix(0.35).filled(),
                format!("fault: {l}"),
            )
        });
        Legend {
            entries: stacks.chain(faults).collect(),
        }
    }
}

fn fault_color(labels: &[&str], label: &str) -> RGBColor {
    let i = labels.iter().position(|l| *l == label).unwrap_or(0);
    FAULT_COLORS[i % FAULT_COLORS.len()]
}

/// The legend below both panels: a swatch and a name per stack and fault,
/// in as many rows as they need.
struct Legend {
    entries: Vec<(ShapeStyle, String)>,
}

// === impl Legend ===

impl Legend {
    const SWATCH: i32 = 14;
    const GAP: i32 = 22;

    /// Where each entry starts, as (row, x).
    fn layout(&self, width: u32) -> Vec<(u32, i32)> {
        let font = (FONT, 16).into_font();
        let (mut row, mut x) = (0, 0);
        self.entries
            .iter()
            .map(|(_, name)| {
                let text = font
                    .box_size(name)
                    .map_or(7 * name.len() as i32, |(w, _)| w as i32);
                let size = Self::SWATCH + 6 + text;
                if x > 0 && x + size > width as i32 {
                    (row, x) = (row + 1, 0);
                }
                let at = (row, x);
                x += size + Self::GAP;
                at
            })
            .collect()
    }

    fn rows(&self, width: u32) -> u32 {
        self.layout(width).last().map_or(1, |(row, _)| row + 1)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        width: u32,
    ) -> Result<(), Box<dyn Error>>
    where
        DB::ErrorType: 'static,
    {
        let style = TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for ((swatch, name), (row, x)) in self.entries.iter().zip(self.layout(width)) {
            let (x, y) = (12 + x, 10 + 20 * row as i32);
            area.draw(&Rectangle::new(
                [(x, y - 5), (x + Self::SWATCH, y + 5)],
                *swatch,
            ))?;
            area.draw(&Text::new(
                name.as_str(),
                (x + Self::SWATCH + 6, y),
                style.clone(),
            ))?;
        }
        Ok(())
    }
}

/// A linear axis with ticks where they are asked for: under each group
/// of bars, at round percentages. (Plotters' `with_key_points` does the
/// same but cannot take a label formatter in 0.3.)
struct Ticks {
    range: Range<f64>,
    ticks: Vec<f64>,
}

// === impl Ticks ===

impl Ticks {
    fn new(range: Range<f64>, ticks: impl IntoIterator<Item = f64>) -> Ticks {
        Ticks {
            range,
            ticks: ticks.into_iter().collect(),
        }
    }
}

impl Ranged for Ticks {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (f64::from(limit.1 - limit.0) * share).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// `value` with at most three significant digits and no trailing zeros.
fn number(value: f64) -> String {
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else if value >= 1.0 {
        2
    } else {
        3
    };
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// Where a picture goes by default: `<target>/<name>`, in the workspace's
/// target directory (where `cargo` puts it, whatever the directory the
/// program was started in).
pub fn target_path(name: &str) -> PathBuf {
    // Both packages that draw (examples/, benches/) sit at the
    // workspace's root.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || workspace.unwrap_or(Path::new(".")).join("target"),
        PathBuf::from,
    );
    target.join(name)
}

#[cfg(test)]
mod tests {
    // The fault suite includes this file too, and `clippy --all-targets`
    // checks it with `cfg(test)` but no test harness: the tests vanish, so
    // this import goes unused there (and the tests share no helper, which
    // would be dead).
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn a_picture_is_one_svg_document_naming_every_stack_percentile_and_fault() {
        let ms = Duration::from_millis;
        let mut bare = Timeline::new(ms(100), ms(1000));
        let mut mesh = Timeline::new(ms(100), ms(1000));
        for i in 0..1000 {
            bare.record(ms(i), i % 5 != 0);
            mesh.record(ms(i), true);
        }
        let latencies: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let picture = Picture {
            title: "two stacks, one fault".to_owned(),
            stacks: vec![
                Stack::new("bare hyper", &latencies, bare),
                Stack::new("tower-mesh", &latencies[..500], mesh),
            ],
            faults: vec![FaultWindow {
                from: ms(300),
                to: ms(600),
                label: "instance 4 answers 503".to_owned(),
            }],
        };
        let svg = picture.to_svg().expect("drawn");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        for text in [
            "two stacks, one fault",
            "bare hyper",
            "tower-mesh",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "fault: instance 4 answers 503",
            "latency percentiles (ms, log scale)",
            "success per 100 ms, by when each request was sent",
        ] {
            // Plotters writes each text on a line of its own.
            let element = format!("\n{text}\n</text>");
            assert!(svg.contains(&element), "no text {text:?} in the picture");
        }
        // Two stacks' lines, and text written as text: no font was needed.
        assert!(svg.matches("<polyline").count() >= 2);
        assert!(svg.contains("<text"));
        assert!(svg.len() < 60_000, "{} bytes", svg.len());
    }

    #[test]
    fn a_picture_without_requests_or_faults_still_draws() {
        let ms = Duration::from_millis;
        let empty = Picture {
            title: "nothing sent".to_owned(),
            stacks: vec![Stack::new("tower-mesh", &[], Timeline::new(ms(50), ms(0)))],
            faults: Vec::new(),
        };
        let svg = empty.to_svg().expect("drawn");
        assert!(svg.contains("\ntower-mesh\n</text>"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn a_timeline_counts_each_request_in_the_bucket_it_was_sent_in() {
        let ms = Duration::from_millis;
        let mut timeline = Timeline::new(ms(100), ms(200));
        timeline.record(ms(10), true);
        timeline.record(ms(99), false);
        timeline.record(ms(150), true);
        // Past the span: the timeline grows; the empty bucket is skipped.
        timeline.record(ms(350), false);
        let buckets: Vec<_> = timeline.success_percent().collect();
        assert_eq!(
            buckets,
            vec![(0.0, 0.1, 50.0), (0.1, 0.2, 100.0), (0.3, 0.4, 0.0)]
        );
        assert_eq!(timeline.span(), ms(400));
    }

    #[test]
    fn percentiles_are_taken_by_nearest_rank() {
        let ms = Duration::from_millis;
        let sorted: Vec<Duration> = (1..=1000).map(ms).collect();
        assert_eq!(percentile(&sorted, 0.5), ms(500));
        assert_eq!(percentile(&sorted, 0.999), ms(999));
        assert_eq!(percentile(&sorted, 1.0), ms(1000));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn numbers_keep_three_significant_digits_at_most() {
        assert_eq!(number(0.1234), "0.123");
        assert_eq!(number(12.0), "12");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(250.4), "250");
    }
}
