//! Plots for papers and reports, as PNG or SVG (chosen by the file extension): metric curves
//! of one or many runs, confusion matrices, reliability diagrams, residual plots and drift
//! histograms.
//!
//! Text is drawn with an embedded DejaVu Sans, so plots look the same on every machine and
//! need no system font library. Files are written under a temporary name and renamed, so a
//! reader never sees half a plot.
//!
//! ```no_run
//! # fn main() -> kiln_train::Result<()> {
//! use kiln_train::plot::{Series, line_chart};
//! let loss = Series::new("val_loss", vec![(1.0, 0.9), (2.0, 0.5), (3.0, 0.4)]);
//! line_chart(&[loss], "validation loss", "epoch", "loss", false, "val_loss.svg".as_ref())?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::eval::CalibrationBin;
use crate::{Error, Result};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 600);

/// Draws a chart's series legend at a position, in the style every plot here shares.
macro_rules! legend {
    ($chart:expr, $position:expr) => {
        $chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 15))
            .position($position)
            .draw()
            .map_err(e2s)?
    };
}

/// One curve: `(x, y)` points in x order, and its legend label. Non-finite points are left out
/// of the drawing and of the axis ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A named curve.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { label: label.into(), points }
    }
}

type Drawn = std::result::Result<(), String>;

/// Something drawable on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn;
}

fn font(path: &Path) -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        [FontStyle::Normal, FontStyle::Bold]
            .into_iter()
            .all(|style| plotters::style::register_font(FAMILY, style, FONT).is_ok())
    });
    if ok { Ok(()) } else { Err(plot_err(path, "the embedded font could not be loaded")) }
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Plot { path: path.to_path_buf(), message: e.to_string() }
}

fn e2s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Draws `figure` on a PNG or SVG canvas (by `path`'s extension) and renames it into place.
fn render(path: &Path, figure: &impl Figure) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let ext = match ext.as_deref() {
        Some(e @ ("png" | "svg")) => e.to_string(),
        _ => return Err(plot_err(path, "the file name must end in .png or .svg")),
    };
    font(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| plot_err(&dir, e))?;
    // The backends choose the encoding by extension, so the temporary name keeps it.
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plot");
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{stem}.{}-{n}.tmp.{ext}", std::process::id()));
    let drawn = if ext == "png" {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(e2s).and_then(|()| figure.draw(&root)).and_then(|()| root.present().map_err(e2s))
    } else {
        let root = SVGBackend::new(&tmp, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(e2s).and_then(|()| figure.draw(&root)).and_then(|()| root.present().map_err(e2s))
    };
    let result =
        drawn.map_err(|e| plot_err(path, e)).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| plot_err(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A padded range over finite values; `(0, 1)` when there are none.
fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return if log { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    // Clamped so that values near f64::MAX (a diverging loss) still give a finite range.
    let clamp = |v: f64| v.clamp(-f64::MAX, f64::MAX);
    if log {
        return (lo / 1.2, clamp(hi * 1.2));
    }
    let pad = if hi > lo { clamp(hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    (clamp(lo - pad), clamp(hi + pad))
}

struct Lines<'a> {
    series: &'a [Series],
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    log_y: bool,
}

fn finite(points: &[(f64, f64)], log_y: bool) -> Vec<(f64, f64)> {
    points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0)).collect()
}

impl Figure for Lines<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        // The ranges cover only what is drawn: a NaN loss at a far step must not stretch x.
        let drawn: Vec<Vec<(f64, f64)>> = self.series.iter().map(|s| finite(&s.points, self.log_y)).collect();
        let xs = range(drawn.iter().flatten().map(|p| p.0), false);
        let ys = range(drawn.iter().flatten().map(|p| p.1), self.log_y);
        let mut builder = ChartBuilder::on(root);
        builder.caption(self.title, (FAMILY, 26)).margin(16).x_label_area_size(48).y_label_area_size(72);
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(self.x_label)
                    .y_desc(self.y_label)
                    .label_style((FAMILY, 15))
                    .axis_desc_style((FAMILY, 17))
                    .draw()
                    .map_err(e2s)?;
                for (i, s) in self.series.iter().enumerate() {
                    let color = Palette99::pick(i).to_rgba();
                    let points = finite(&s.points, self.log_y);
                    chart
                        .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                        .map_err(e2s)?
                        .label(s.label.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                    if points.len() < 40 {
                        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(e2s)?;
                    }
                }
                legend!(chart, SeriesLabelPosition::UpperRight);
            }};
        }
        if self.log_y {
            body!(builder.build_cartesian_2d(xs.0..xs.1, (ys.0..ys.1).log_scale()).map_err(e2s)?);
        } else {
            body!(builder.build_cartesian_2d(xs.0..xs.1, ys.0..ys.1).map_err(e2s)?);
        }
        Ok(())
    }
}

/// Curves on shared axes (metric curves of one or many runs), with a legend.
pub fn line_chart(
    series: &[Series],
    title: &str,
    x_label: &str,
    y_label: &str,
    log_y: bool,
    path: &Path,
) -> Result<()> {
    if series.iter().all(|s| finite(&s.points, log_y).is_empty()) {
        return Err(plot_err(path, "nothing to draw: no finite points"));
    }
    render(path, &Lines { series, title, x_label, y_label, log_y })
}

struct Confusion<'a> {
    matrix: &'a [Vec<u64>],
    labels: &'a [String],
    title: &'a str,
}

impl Figure for Confusion<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        let k = self.labels.len();
        let size = k as f64;
        // Cell (p, t) spans [p, p + 1] × [k − 1 − t, k − t]: true classes top to bottom.
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FAMILY, 26))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(96)
            .build_cartesian_2d(0.0..size, 0.0..size)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_desc("predicted")
            .y_desc("true")
            .axis_desc_style((FAMILY, 17))
            .draw()
            .map_err(e2s)?;
        let row = |t: usize| (k - 1 - t) as f64;
        for (t, counts) in self.matrix.iter().enumerate() {
            // Each row normalised by its support: the diagonal reads as recall.
            let support = counts.iter().sum::<u64>().max(1) as f64;
            for (p, &n) in counts.iter().enumerate() {
                let share = n as f64 / support;
                let shade = 255 - (share * 200.0) as u8;
                let (x, y) = (p as f64, row(t));
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x, y), (x + 1.0, y + 1.0)],
                        RGBColor(shade, shade, 255).filled(),
                    )))
                    .map_err(e2s)?;
                if k <= 20 {
                    let color = if share > 0.6 { WHITE } else { BLACK };
                    let style = TextStyle::from((FAMILY, 14).into_font())
                        .color(&color)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    root.draw_text(&n.to_string(), &style, chart.backend_coord(&(x + 0.5, y + 0.5))).map_err(e2s)?;
                }
            }
        }
        // Class names at the centres of the columns (below) and rows (left).
        if k <= 40 {
            let below = TextStyle::from((FAMILY, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
            let left = TextStyle::from((FAMILY, 14).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
            for (i, label) in self.labels.iter().enumerate() {
                let (cx, bottom) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
                root.draw_text(label, &below, (cx, bottom + 6)).map_err(e2s)?;
                let (left_edge, cy) = chart.backend_coord(&(0.0, row(i) + 0.5));
                root.draw_text(label, &left, (left_edge - 6, cy)).map_err(e2s)?;
            }
        }
        Ok(())
    }
}

/// A confusion matrix (`matrix[true][predicted]`, as in
/// [`ClassificationReport::confusion`](crate::ClassificationReport::confusion)), shaded by the
/// share of each true class, with counts in the cells.
pub fn confusion_matrix(matrix: &[Vec<u64>], labels: &[String], title: &str, path: &Path) -> Result<()> {
    let k = labels.len();
    if k == 0 || matrix.len() != k || matrix.iter().any(|row| row.len() != k) {
        return Err(plot_err(path, format!("the confusion matrix must be {k} x {k}, one row and column per label")));
    }
    render(path, &Confusion { matrix, labels, title })
}

struct Reliability<'a> {
    bins: &'a [CalibrationBin],
    title: &'a str,
}

impl Figure for Reliability<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FAMILY, 26))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc("confidence (top probability)")
            .y_desc("accuracy")
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17))
            .draw()
            .map_err(e2s)?;
        let total = self.bins.iter().map(|b| b.count).sum::<usize>().max(1) as f64;
        // Bars: each bin's accuracy, shaded by its share of rows.
        for b in self.bins.iter().filter(|b| b.count > 0) {
            let alpha = 0.25 + 0.6 * (b.count as f64 / total).sqrt();
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(b.lower, 0.0), (b.upper, b.accuracy)],
                    BLUE.mix(alpha).filled(),
                )))
                .map_err(e2s)?;
        }
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.6).stroke_width(1)))
            .map_err(e2s)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
        let points: Vec<(f64, f64)> =
            self.bins.iter().filter(|b| b.count > 0).map(|b| (b.confidence, b.accuracy)).collect();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), RED.stroke_width(2)))
            .map_err(e2s)?
            .label("model")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, RED.filled()))).map_err(e2s)?;
        legend!(chart, SeriesLabelPosition::UpperLeft);
        Ok(())
    }
}

/// A reliability diagram from confidence bins ([`EvalReport::calibration`](crate::EvalReport)):
/// each bin's accuracy against its mean confidence, and the diagonal of perfect calibration.
pub fn calibration_curve(bins: &[CalibrationBin], title: &str, path: &Path) -> Result<()> {
    if bins.iter().all(|b| b.count == 0) {
        return Err(plot_err(path, "nothing to draw: every calibration bin is empty"));
    }
    render(path, &Reliability { bins, title })
}

struct Histograms<'a> {
    reference: &'a [f64],
    current: &'a [f64],
    bins: usize,
    title: &'a str,
    x_label: &'a str,
}

/// Each finite value's bin over `[lo, hi]`, as shares of the sample.
fn shares(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    let mut counts = vec![0usize; bins];
    let width = (hi - lo) / bins as f64;
    let mut n = 0usize;
    for v in values.iter().filter(|v| v.is_finite()) {
        let b = if width > 0.0 { (((v - lo) / width) as usize).min(bins - 1) } else { 0 };
        counts[b] += 1;
        n += 1;
    }
    counts.into_iter().map(|c| c as f64 / n.max(1) as f64).collect()
}

impl Figure for Histograms<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let (lo, hi) = {
            let (lo, hi) = range(self.reference.iter().chain(self.current).copied(), false);
            if hi > lo { (lo, hi) } else { (lo - 0.5, hi + 0.5) }
        };
        let reference = shares(self.reference, lo, hi, self.bins);
        let current = shares(self.current, lo, hi, self.bins);
        let top = reference.iter().chain(&current).copied().fold(0.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FAMILY, 26))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(lo..hi, 0.0..top.max(1e-9))
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc("share of rows")
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17))
            .draw()
            .map_err(e2s)?;
        let width = (hi - lo) / self.bins as f64;
        for (name, values, color) in [("reference", &reference, BLUE), ("current", &current, RED)] {
            chart
                .draw_series(values.iter().enumerate().map(|(i, share)| {
                    let x0 = lo + i as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, *share)], color.mix(0.35).filled())
                }))
                .map_err(e2s)?
                .label(format!(
                    "{name} ({} rows)",
                    if name == "reference" { self.reference } else { self.current }
                        .iter()
                        .filter(|v| v.is_finite())
                        .count()
                ))
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.mix(0.5).filled()));
        }
        legend!(chart, SeriesLabelPosition::UpperRight);
        Ok(())
    }
}

struct Residuals<'a> {
    truth: &'a [f64],
    predicted: &'a [f64],
    title: &'a str,
    unit: &'a str,
}

impl Figure for Residuals<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        let points: Vec<(f64, f64)> = self
            .truth
            .iter()
            .zip(self.predicted)
            .map(|(t, p)| (*p, t - p))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let xs = range(points.iter().map(|p| p.0), false);
        // Symmetric about zero, so over- and under-prediction read alike.
        let reach = match points.iter().map(|p| p.1.abs()).fold(0.0, f64::max) {
            r if r > 0.0 => r * 1.05,
            _ => 1.0, // every prediction exact
        };
        let unit = if self.unit.is_empty() { String::new() } else { format!(" ({})", self.unit) };
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FAMILY, 26))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(xs.0..xs.1, -reach..reach)
            .map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc(format!("predicted{unit}"))
            .y_desc(format!("true − predicted{unit}"))
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17))
            .draw()
            .map_err(e2s)?;
        chart.draw_series(LineSeries::new([(xs.0, 0.0), (xs.1, 0.0)], BLACK.stroke_width(1))).map_err(e2s)?;
        let color = Palette99::pick(0).to_rgba();
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.mix(0.6).filled())))
            .map_err(e2s)?
            .label(format!("{} rows", points.len()))
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        legend!(chart, SeriesLabelPosition::UpperRight);
        Ok(())
    }
}

/// A regression's residual plot: each row's error (`true − predicted`) against its
/// prediction, around a zero line, in the target's `unit` (may be empty). A funnel or a curve
/// shows what the model misses; rows with a non-finite value are left out.
pub fn residual_plot(truth: &[f64], predicted: &[f64], title: &str, unit: &str, path: &Path) -> Result<()> {
    if truth.len() != predicted.len() {
        return Err(plot_err(path, format!("{} true values for {} predictions", truth.len(), predicted.len())));
    }
    if !truth.iter().zip(predicted).any(|(t, p)| t.is_finite() && p.is_finite()) {
        return Err(plot_err(path, "nothing to draw: no row with a finite truth and prediction"));
    }
    render(path, &Residuals { truth, predicted, title, unit })
}

/// The most bins [`drift_histogram`] draws; more would be narrower than a pixel.
pub const MAX_BINS: usize = 1000;

/// Overlaid histograms of a numeric column in the reference (training) data and in current
/// (served) data, as shares of each sample, over `bins` equal-width bins.
pub fn drift_histogram(
    reference: &[f64],
    current: &[f64],
    bins: usize,
    title: &str,
    column: &str,
    path: &Path,
) -> Result<()> {
    if bins == 0 || bins > MAX_BINS {
        return Err(plot_err(path, format!("a histogram takes 1 to {MAX_BINS} bins, not {bins}")));
    }
    if !reference.iter().chain(current).any(|v| v.is_finite()) {
        return Err(plot_err(path, "nothing to draw: no finite values"));
    }
    render(path, &Histograms { reference, current, bins, title, x_label: column })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_finite_value() {
        let s = shares(&[0.0, 0.5, 1.0, f64::NAN, 1.0], 0.0, 1.0, 2);
        assert_eq!(s, vec![0.25, 0.75]);
        assert_eq!(shares(&[3.0, 3.0], 3.0, 3.0, 4), vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn ranges_pad_and_skip_non_finite() {
        assert_eq!(range([1.0, f64::NAN, 3.0].into_iter(), false), (0.9, 3.1));
        assert_eq!(range([f64::NAN].into_iter(), false), (0.0, 1.0));
        let (lo, hi) = range([-1.0, 0.0, 10.0].into_iter(), true);
        assert!(lo > 0.0 && hi > 10.0);
    }
}
