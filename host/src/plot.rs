//! `curves.png`: loss and accuracy per epoch, drawn with `plotters`.
//!
//! Left panel, "Loss per epoch": the network's training loss (blue; a thin blue line
//! through its means over twentieths of each epoch, so a one-epoch run draws a curve),
//! the evaluation loss (orange) and, thinner, each module's local loss (the loss its own
//! auxiliary head trains it with). Right panel, "Accuracy per epoch": the evaluation accuracy in percent
//! (orange). The x axis is the epoch; each panel has its legend. Text is drawn with the
//! DejaVu Sans font embedded in the binary (`assets/`), so no system font is needed.

use std::path::Path;
use std::sync::Once;

use hpff_core::plan::LossKind;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;

/// Size of the picture.
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 420;

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
/// The modules' local losses (matplotlib's tab10 after blue and orange).
const MODULE_COLOURS: [RGBColor; 8] = [
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_the_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TTF; if it ever were not, text would be missing,
        // and drawing reports that as an error.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The loss kinds that stand for a module's local loss, in order of preference: its
/// auxiliary classifier's cross-entropy, else the level of HPFF that has one, else the
/// network's classifier (the last module).
const LOCAL_KINDS: [LossKind; 6] = [
    LossKind::Classifier,
    LossKind::CascadeClassifier,
    LossKind::Independent,
    LossKind::Ce,
    LossKind::LastY,
    LossKind::LastX,
];

/// A named line of (epoch, value) points, with a dot at each point unless `dots` is off.
struct Series {
    name: String,
    colour: RGBColor,
    width: u32,
    points: Vec<(f64, f64)>,
    dots: bool,
}

/// One line per module: the first of [`LOCAL_KINDS`] the records hold for it.
/// The last module's is the training loss, drawn already.
fn module_series(records: &[EpochMetrics]) -> Vec<Series> {
    let modules = records.iter().flat_map(|r| r.losses.values().map(Vec::len)).max().unwrap_or(0);
    (0..modules.saturating_sub(1))
        .filter_map(|m| {
            let kind = LOCAL_KINDS.iter().find(|k| {
                records.iter().any(|r| r.losses.get(k.name()).and_then(|v| v.get(m).copied().flatten()).is_some())
            })?;
            let points = records
                .iter()
                .filter_map(|r| r.losses.get(kind.name())?.get(m).copied().flatten().map(|v| (r.epoch as f64, v)))
                .collect();
            Some(Series {
                name: format!("module {m} ({})", kind.name().replace('_', " ")),
                colour: MODULE_COLOURS[m % MODULE_COLOURS.len()],
                width: 1,
                points,
                dots: true,
            })
        })
        .collect()
}

/// The training loss within epochs ([`EpochMetrics::train_loss_curve`]): each run of
/// steps' mean at the middle of its run, a thin line without dots.
fn within_epochs(records: &[EpochMetrics]) -> Series {
    let points = records
        .iter()
        .flat_map(|r| {
            let k = r.train_loss_curve.len() as f64;
            r.train_loss_curve
                .iter()
                .enumerate()
                .filter_map(move |(i, v)| v.map(|v| (r.epoch as f64 - 1.0 + (i as f64 + 0.5) / k, v)))
        })
        .collect();
    Series { name: "train loss within epochs".into(), colour: BLUE, width: 1, points, dots: false }
}

/// Where a panel's legend goes; the y range leaves it a band of its own there, so it
/// never hides a line.
#[derive(Clone, Copy, PartialEq)]
enum Legend {
    Top,
    Bottom,
}

/// Height of the plotting area and of one legend entry, in pixels (about).
const PLOT_PX: f64 = 320.0;
const LEGEND_ENTRY_PX: f64 = 17.0;

/// `lo..hi` around the finite values of `series` (0..1 when there are none), from 0 when
/// `from_zero`, within `clamp`, with room for the legend.
fn y_range(series: &[Series], from_zero: bool, legend: Legend, clamp: (f64, f64)) -> (f64, f64) {
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|y| y.is_finite());
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let lo = if from_zero { lo.min(0.0) } else { lo };
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    let (lo, hi) = (if from_zero { lo } else { lo - pad }, hi + pad);
    let entries = series.iter().filter(|s| s.points.iter().any(|p| p.1.is_finite())).count() as f64;
    let share = ((entries * LEGEND_ENTRY_PX + 16.0) / PLOT_PX).min(0.6);
    let room = (hi - lo) * share / (1.0 - share);
    let (lo, hi) = match legend {
        Legend::Top => (lo, hi + room),
        Legend::Bottom => (lo - room, hi),
    };
    (lo.max(clamp.0), hi.min(clamp.1))
}

/// Tick labels asked of the y axis.
const Y_LABELS: usize = 6;

/// Decimals that tell apart ticks about `span / labels` apart: as many as the spacing has
/// before its first significant digit, so a one-epoch accuracy axis around 88 % reads
/// 87.6, 87.8, 88.0 rather than 88, 88, 88.
fn tick_decimals(span: f64, labels: usize) -> usize {
    let step = span / labels.max(1) as f64;
    if !(step.is_finite() && step > 0.0) {
        return 0;
    }
    (-step.log10()).ceil().clamp(0.0, 6.0) as usize
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("cannot draw the plot: {e}"))
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_label: &str,
    series: &[Series],
    x_max: u32,
    (y_lo, y_hi): (f64, f64),
    legend: Legend,
) -> Result<()> {
    let y_decimals = tick_decimals(y_hi - y_lo, Y_LABELS);
    let x_decimals = tick_decimals(x_max as f64 + 1.0, x_max.min(10) as usize + 2);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(38)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max as f64 + 1.0, y_lo..y_hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .x_labels(x_max.min(10) as usize + 2)
        .x_label_formatter(&|x| format!("{x:.x_decimals$}"))
        .y_labels(Y_LABELS)
        .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for s in series {
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite()).collect();
        if pts.is_empty() {
            continue;
        }
        let style = s.colour.stroke_width(s.width);
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        if s.dots {
            let r = s.width + 2;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, r, s.colour.filled()))).map_err(err)?;
        }
    }
    if series.iter().any(|s| s.points.iter().any(|p| p.1.is_finite())) {
        chart
            .configure_series_labels()
            .position(match legend {
                Legend::Top => SeriesLabelPosition::UpperRight,
                Legend::Bottom => SeriesLabelPosition::LowerRight,
            })
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Draws the curves of `records` into an RGB buffer of [`WIDTH`]×[`HEIGHT`] (`eval_name`
/// is "test" or "val").
pub fn render(records: &[EpochMetrics], eval_name: &str) -> Result<image::RgbImage> {
    register_the_font();
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let x_max = records.iter().map(|r| r.epoch).max().unwrap_or(1).max(1);
        let eval = |f: fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
            records.iter().filter_map(|r| f(r).map(|v| (r.epoch as f64, v))).collect()
        };
        let modules = module_series(records);
        let mut losses = vec![
            Series {
                name: if modules.is_empty() { "train loss".into() } else { "train loss (last module)".into() },
                colour: BLUE,
                width: 2,
                points: records.iter().map(|r| (r.epoch as f64, r.train_loss)).collect(),
                dots: true,
            },
            Series {
                name: format!("{eval_name} loss"),
                colour: ORANGE,
                width: 2,
                points: eval(|r| r.eval_loss),
                dots: true,
            },
        ];
        let within = within_epochs(records);
        if within.points.len() > records.len() {
            losses.insert(1, within);
        }
        losses.extend(modules);
        let accuracy = [Series {
            name: format!("{eval_name} accuracy"),
            colour: ORANGE,
            width: 2,
            points: eval(|r| r.eval_accuracy.map(|a| 100.0 * a)),
            dots: true,
        }];
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let y = y_range(&losses, true, Legend::Top, (f64::NEG_INFINITY, f64::INFINITY));
        panel(&left, "Loss per epoch", "loss", &losses, x_max, y, Legend::Top)?;
        let y = y_range(&accuracy, false, Legend::Bottom, (0.0, 100.0));
        panel(&right, "Accuracy per epoch", "accuracy (%)", &accuracy, x_max, y, Legend::Bottom)?;
        root.present().map_err(err)?;
    }
    image::RgbImage::from_raw(WIDTH, HEIGHT, buf).ok_or_else(|| err("the picture buffer has the wrong size"))
}

/// Writes `curves.png`.
pub fn save(path: &Path, records: &[EpochMetrics], eval_name: &str) -> Result<()> {
    render(records, eval_name)?
        .save(path)
        .map_err(|e| Error::msg(format!("{}: cannot write the plot: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn rec(epoch: u32, loss: f64, acc: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            epoch,
            lr: 0.1,
            train_loss: loss,
            losses: Default::default(),
            eval_split: acc.map(|_| "test".into()),
            eval_accuracy: acc,
            eval_loss: acc.map(|a| 1.0 - a),
            train_images: 10,
            steps: 1,
            skipped_steps: 0,
            images_per_s: 1.0,
            epoch_s: 1.0,
            elapsed_s: epoch as f64,
            train_loss_curve: Vec::new(),
        }
    }

    #[test]
    fn writes_a_png_of_the_expected_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("curves.png");
        let recs: Vec<_> =
            (1..=12).map(|e| rec(e, 2.0 / e as f64, (e % 3 != 0).then_some(0.5 + e as f64 / 30.0))).collect();
        save(&p, &recs, "TEST").unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        assert!(img.pixels().any(|p| *p == Rgb([BLUE.0, BLUE.1, BLUE.2])));
        assert!(img.pixels().any(|p| *p == Rgb([ORANGE.0, ORANGE.1, ORANGE.2])));
        // Degenerate inputs draw without panicking.
        save(&p, &[rec(1, f64::NAN, None)], "VAL").unwrap();
        save(&p, &[], "VAL").unwrap();
    }

    #[test]
    fn tick_labels_have_the_decimals_their_spacing_needs() {
        let labels = |lo: f64, hi: f64| -> Vec<String> {
            let d = tick_decimals(hi - lo, Y_LABELS);
            // The spacings plotters picks are 1, 2 or 5 × 10^k, at least span / labels.
            let raw = (hi - lo) / Y_LABELS as f64;
            let p = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|&s| s >= raw).unwrap();
            let first = (lo / step).ceil() as i64;
            (first..).map(|i| i as f64 * step).take_while(|&v| v <= hi).map(|v| format!("{v:.d$}")).collect()
        };
        for (lo, hi) in [(87.4, 88.6), (0.0, 100.0), (0.0, 2.5), (49.99, 50.01), (1e-3, 4e-3)] {
            let l = labels(lo, hi);
            assert!(l.len() >= 2, "{lo}..{hi}: {l:?}");
            assert!(l.windows(2).all(|w| w[0] != w[1]), "{lo}..{hi}: {l:?}");
        }
        assert_eq!(tick_decimals(100.0, Y_LABELS), 0);
        assert_eq!(tick_decimals(1.2, Y_LABELS), 1);
        assert_eq!(tick_decimals(f64::NAN, Y_LABELS), 0);
    }

    #[test]
    fn one_epoch_draws_a_curve_within_it() {
        let mut r = rec(1, 1.0, Some(0.6));
        r.train_loss_curve = (0..20).map(|i| Some(2.0 - i as f64 / 20.0)).collect();
        r.train_loss_curve[3] = None;
        let s = within_epochs(&[r.clone()]);
        assert_eq!(s.points.len(), 19);
        assert!((s.points[0].0 - 0.025).abs() < 1e-12 && (s.points[18].0 - 0.975).abs() < 1e-12);
        // The line spans the epoch: the picture differs from the one without it in many
        // pixel columns of the left panel.
        let with = render(&[r.clone()], "test").unwrap();
        r.train_loss_curve.clear();
        let without = render(&[r], "test").unwrap();
        let columns =
            (0..WIDTH / 2).filter(|&x| (0..HEIGHT).any(|y| with.get_pixel(x, y) != without.get_pixel(x, y))).count();
        assert!(columns > 150, "the curve changed {columns} columns");
    }

    #[test]
    fn one_line_per_module() {
        let mut recs: Vec<_> = (1..=3).map(|e| rec(e, 1.0 / e as f64, Some(0.5))).collect();
        for r in &mut recs {
            r.losses.insert("classifier".into(), vec![Some(2.0), Some(1.5), None]);
            r.losses.insert("ce".into(), vec![None, None, Some(r.train_loss)]);
        }
        let s = module_series(&recs);
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        // The last module's loss is the training loss, drawn already.
        assert_eq!(names, ["module 0 (classifier)", "module 1 (classifier)"]);
        let img = render(&recs, "test").unwrap();
        let c = MODULE_COLOURS[0];
        assert!(img.pixels().any(|p| *p == Rgb([c.0, c.1, c.2])));
    }
}
