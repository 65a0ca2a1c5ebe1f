//! The loss-curve PNG written next to a trained adapter.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Draws training (and evaluation) loss against the step into `png`.
pub fn loss_curve(
    train: &[(usize, f64)],
    eval: &[(usize, f64)],
    title: &str,
    png: &Path,
) -> Result<()> {
    if train.is_empty() {
        return Ok(());
    }
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the bundled font is invalid"))?;
    let all = train
        .iter()
        .chain(eval)
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let last = train
        .iter()
        .chain(eval)
        .map(|p| p.0)
        .max()
        .unwrap_or(1)
        .max(1);
    let name = png
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = png.with_file_name(format!(".{name}.partial.png"));
    {
        let root = BitMapBackend::new(&tmp, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0usize..last, (lo - pad)..(hi + pad))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("loss (nats / target token)")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), BLUE.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        if !eval.is_empty() {
            chart
                .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label("eval")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
            chart
                .draw_series(eval.iter().map(|&p| Circle::new(p, 4, RED.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    std::fs::rename(&tmp, png).with_context(|| format!("writing {}", png.display()))
}
