//! `wsedge-loadgen plot-compare`: Draws a head-to-head (server CPU per upgrade, upgrades per second) from JSON rows of

use super::*;

/// Draws a head-to-head (server CPU per upgrade, upgrades per second) from JSON rows of
/// {"name", "upgrades_per_sec", "cpu_us_per_upgrade"}; used by benches/compare.sh --plot.
#[derive(Debug, Args)]
pub struct PlotCompareArgs {
    #[arg(value_name = "ROWS.json")]
    pub rows: PathBuf,
    #[command(flatten)]
    pub plot: PlotArgs,
}

/// Runs the subcommand.
pub fn run(args: PlotCompareArgs) -> anyhow::Result<()> {
    let PlotCompareArgs { rows, plot } = args;
    let text =
        std::fs::read_to_string(&rows).with_context(|| format!("reading {}", rows.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", rows.display()))?;
    let contenders = value
        .as_array()
        .with_context(|| format!("{} is not a JSON array of rows", rows.display()))?
        .iter()
        .map(|row| {
            Some(plot::Contender {
                name: row["name"].as_str()?.to_owned(),
                upgrades_per_sec: row["upgrades_per_sec"].as_f64()?,
                cpu_us_per_upgrade: row["cpu_us_per_upgrade"].as_f64()?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .with_context(|| {
            format!(
                "{}: every row needs name, upgrades_per_sec and cpu_us_per_upgrade",
                rows.display()
            )
        })?;
    let Some(path) = &plot.plot else {
        usage_error("plot-compare needs --plot FILE.svg".into());
    };
    let title = plot
        .plot_title
        .as_deref()
        .unwrap_or("server CPU per upgrade and upgrades per second");
    plot::contenders(path, title, &contenders)?;
    Ok(())
}
