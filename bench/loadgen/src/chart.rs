//! Line charts for the report and the soak, in one look: a caption, axes
//! from zero to a little above the largest value, and a legend when the
//! lines have names.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// One line: its points, colour, marker size (0: none) and legend name.
pub struct Line {
    pub name: Option<String>,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
    pub marker: u32,
}

/// What a chart shows besides its lines.
pub struct Frame<'a> {
    pub caption: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// Room above the largest y value, as a factor (1.1: 10 %).
    pub y_headroom: f64,
}

impl<'a> Frame<'a> {
    /// Axes from zero to 10 % above the largest value.
    pub fn new(caption: &'a str, x_desc: &'a str, y_desc: &'a str) -> Self {
        Self {
            caption,
            x_desc,
            y_desc,
            y_headroom: 1.1,
        }
    }
}

pub type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws `lines` on `area` within `frame`; returns the chart for more
/// (a marker line, say).
pub fn lines<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    frame: &Frame<'_>,
    lines: Vec<Line>,
) -> anyhow::Result<Chart<'a, 'b>> {
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let max_x = all().map(|p| p.0).fold(1.0, f64::max);
    let max_y = all().map(|p| p.1).fold(0.1, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(frame.caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y * frame.y_headroom)?;
    chart
        .configure_mesh()
        .x_desc(frame.x_desc)
        .y_desc(frame.y_desc)
        .draw()?;
    let named = lines.iter().any(|l| l.name.is_some());
    for line in lines {
        let color = line.color;
        let drawn = chart.draw_series(LineSeries::new(
            line.points.iter().copied(),
            color.stroke_width(2),
        ))?;
        if let Some(name) = line.name {
            drawn.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        if line.marker > 0 {
            chart.draw_series(
                line.points
                    .into_iter()
                    .map(|p| Circle::new(p, line.marker, color.filled())),
            )?;
        }
    }
    if named {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(chart)
}

/// A PNG of one chart of `lines`, 900 by 540 pixels.
pub fn png(file: &Path, frame: &Frame<'_>, lines: Vec<Line>) -> anyhow::Result<()> {
    let root = BitMapBackend::new(file, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    self::lines(&root, frame, lines)?;
    root.present()?;
    Ok(())
}
