//! PNG charts of what the sections measured. Sections return `Figure`s as
//! data; main merges those that share a file (the durable-commit chart
//! gathers bpfdb, Redis and SQLite from three sections) and draws them here.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

/// The labels' font (Debian fonts-dejavu-core, installed by `make deps`):
/// plotters draws text with ab_glyph from the font's bytes, so no
/// fontconfig or freetype is needed.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const PANEL_PX: (u32, u32) = (640, 480);
/// Width of one category on a bar chart's x axis, in axis units.
const CATEGORY_UNITS: i32 = 100;
/// The y axis reaches at least this factor over the largest value.
const LEGEND_HEADROOM: f64 = 4.0;
/// A line chart's x axis reaches this factor past its end points, which
/// keeps them off the frame.
const X_MARGIN: f64 = 1.5;
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One PNG: panels side by side.
pub struct Figure {
    pub file: &'static str,
    pub caption: String,
    pub panels: Vec<Panel>,
}

pub struct Panel {
    pub title: String,
    pub x: Axis,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Both kinds of panel draw y on a log scale: the systems compared differ
/// by orders of magnitude.
pub enum Axis {
    /// Grouped bars; a point's x is the index of its category.
    Categories(Vec<String>),
    /// Lines over a log x axis with this label.
    Log(String),
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Adds `new` to `figs`: into the figure with the same file and the panel
/// with the same title if there is one, skipping series already there.
pub fn merge(figs: &mut Vec<Figure>, new: Figure) {
    let Some(fig) = figs.iter_mut().find(|f| f.file == new.file) else {
        figs.push(new);
        return;
    };
    for panel in new.panels {
        match fig.panels.iter_mut().find(|p| p.title == panel.title) {
            Some(p) => {
                for s in panel.series {
                    if !p.series.iter().any(|o| o.name == s.name) {
                        p.series.push(s);
                    }
                }
            }
            None => fig.panels.push(panel),
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

fn register_font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (make deps)"))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT}: not a font plotters can read"))
    })
    .clone()
}

/// Writes `fig` as PNG into `dir`.
pub fn write(fig: &Figure, dir: &Path) -> Result<(), String> {
    register_font()?;
    let path = dir.join(fig.file);
    let width = PANEL_PX.0 * fig.panels.len().max(1) as u32;
    let root = BitMapBackend::new(&path, (width, PANEL_PX.1)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (area, panel) in root
        .split_evenly((1, fig.panels.len()))
        .iter()
        .zip(&fig.panels)
    {
        draw_panel(area, panel)?;
    }
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type Builder<'a, 'b, 'c> = ChartBuilder<'a, 'b, BitMapBackend<'c>>;

fn draw_panel(area: &Area, panel: &Panel) -> Result<(), String> {
    let ys = panel.series.iter().flat_map(|s| s.points.iter());
    let y = decades(ys.map(|p| p.1));
    let mut chart = ChartBuilder::on(area);
    chart
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    match &panel.x {
        Axis::Categories(names) => bars(&mut chart, panel, names, y),
        Axis::Log(x_label) => lines(&mut chart, panel, x_label, y),
    }
}

/// Grouped bars from the bottom of the y axis up to each value.
fn bars(chart: &mut Builder, panel: &Panel, names: &[String], y: (f64, f64)) -> Result<(), String> {
    // Integer x (plotters offers no tick choice for f64 axes): each
    // category is CATEGORY_UNITS wide, its bars side by side.
    let n = names.len() as i32;
    let ticks = (0..n)
        .map(|i| i * CATEGORY_UNITS + CATEGORY_UNITS / 2)
        .collect();
    let x = (0..n * CATEGORY_UNITS).with_key_points(ticks);
    let label = |x: &i32| {
        let i = usize::try_from(x / CATEGORY_UNITS).unwrap_or(usize::MAX);
        names.get(i).cloned().unwrap_or_default()
    };
    let mut c = chart
        .build_cartesian_2d(x, (y.0..y.1).log_scale())
        .map_err(err)?;
    mesh(&mut c, panel, "", &label)?;
    let width = CATEGORY_UNITS * 8 / 10 / panel.series.len().max(1) as i32;
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let left = CATEGORY_UNITS / 10 + i as i32 * width;
        let rects = s.points.iter().map(|&(x, v)| {
            let x = x as i32 * CATEGORY_UNITS + left;
            Rectangle::new([(x, y.0), (x + width, v)], color.filled())
        });
        c.draw_series(rects)
            .map_err(err)?
            .label(&s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    legend(&mut c)
}

/// Lines with a dot at each point, over a log x axis ticked at the points.
fn lines(chart: &mut Builder, panel: &Panel, x_label: &str, y: (f64, f64)) -> Result<(), String> {
    let xs = panel.series.iter().flat_map(|s| s.points.iter());
    let mut ticks: Vec<f64> = xs.map(|p| p.0).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let (first, last) = match (ticks.first(), ticks.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => (1.0, 10.0),
    };
    let x = (first / X_MARGIN..last * X_MARGIN)
        .log_scale()
        .with_key_points(ticks);
    let mut c = chart
        .build_cartesian_2d(x, (y.0..y.1).log_scale())
        .map_err(err)?;
    mesh(&mut c, panel, x_label, &|x: &f64| short(*x))?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = color.stroke_width(2);
        c.draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(err)?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
        c.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    legend(&mut c)
}

fn mesh<'a, 'b: 'a, X, XT>(
    c: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, LogCoord<f64>>>,
    panel: &Panel,
    x_label: &str,
    x_fmt: &dyn Fn(&XT) -> String,
) -> Result<(), String>
where
    X: Ranged<ValueType = XT> + ValueFormatter<XT>,
{
    c.configure_mesh()
        .disable_x_mesh()
        .x_desc(x_label)
        .y_desc(&panel.y_label)
        .x_label_formatter(x_fmt)
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(err)
}

fn legend<'a, 'b: 'a, X: Ranged>(
    c: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, LogCoord<f64>>>,
) -> Result<(), String> {
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// Whole decades around the values, so the log axis has labelled ends.
fn decades(ys: impl Iterator<Item = f64>) -> (f64, f64) {
    let (min, max) = ys
        .filter(|y| *y > 0.0)
        .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    if min > max {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf(min.log10().floor());
    // Headroom over the top value keeps the legend (upper left) clear.
    let hi = 10f64.powf((max * LEGEND_HEADROOM).log10().ceil());
    (lo, hi)
}

/// 1500 -> "1.5k", 1000000 -> "1M": axis labels stay short.
fn short(x: f64) -> String {
    let (v, unit) = match x.abs() {
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    let s = format!("{v:.1}");
    format!("{}{unit}", s.trim_end_matches(".0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(series: &[&str]) -> Figure {
        Figure {
            file: "f.png",
            caption: String::new(),
            panels: vec![Panel {
                title: "p".into(),
                x: Axis::Log("x".into()),
                y_label: String::new(),
                series: series
                    .iter()
                    .map(|n| Series {
                        name: n.to_string(),
                        points: vec![(1.0, 1.0)],
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn merge_joins_panels_and_skips_series_already_there() {
        let mut figs = vec![fig(&["bpfdb", "redis"])];
        merge(&mut figs, fig(&["bpfdb", "sqlite"]));
        let names: Vec<&str> = figs[0].panels[0]
            .series
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!((figs.len(), names), (1, vec!["bpfdb", "redis", "sqlite"]));
    }

    #[test]
    fn axes_span_whole_decades_with_room_for_the_legend() {
        assert_eq!(decades([150.0, 2000.0].into_iter()), (100.0, 10_000.0));
        assert_eq!(decades([30.0, 3000.0].into_iter()), (10.0, 100_000.0));
        assert_eq!(
            (short(1500.0), short(1e6), short(16.0)),
            ("1.5k".into(), "1M".into(), "16".into())
        );
    }
}
