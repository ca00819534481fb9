//! The paper in small: a layer-normalized tanh RNN against the same RNN without normalization,
//! trained with this crate's forward/backward on the adding problem, with a convergence plot.
//!
//! ```text
//! cargo run --release --example convergence              # the full comparison (< 3 minutes)
//! cargo run --release --example convergence -- --quick   # a smoke run in seconds
//! cargo run --release --example convergence -- --help    # every flag
//! ```
//!
//! Protocol, fixed before looking at results: both models start from the same weights and see
//! the same batches for a given seed; each is trained with Adam at every learning rate of the
//! same grid, for several seeds; each model is then reported at the learning rate with the
//! lowest median final validation loss. Validation uses one fixed held-out set. Then, at each
//! model's chosen rate, the recurrent and input weights are initialized at other scales
//! (×0.25 and ×4 by default): layer normalization is invariant to re-scaling the weight
//! matrix (the paper's Table 1), so only the plain model's training should change.

mod plot;
mod rnn;
mod task;
#[cfg(test)]
mod tests;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use rnn::{Adam, Rnn};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(about = "Layer-normalized vs plain tanh RNN on the adding problem")]
struct Args {
    /// Sequence length T of the adding problem.
    #[arg(long, default_value_t = 50)]
    seq_len: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// Training steps per run.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Sequences per training batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seeds (initial weights and batches), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Learning-rate grid, comma-separated; each model is reported at its best.
    #[arg(long, value_delimiter = ',', default_value = "0.0003,0.001,0.003")]
    learning_rates: Vec<f64>,
    /// Scales of the initial recurrent and input weights tried at each model's best learning
    /// rate, besides 1, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.25,4")]
    weight_scales: Vec<f64>,
    /// Validation loss that counts as solved (predicting the mean scores about 0.167).
    #[arg(long, default_value_t = 0.01)]
    target: f64,
    /// Evaluate on the validation set every this many steps.
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Held-out validation sequences.
    #[arg(long, default_value_t = 512)]
    validation: usize,
    /// Where to write the SVG plot.
    #[arg(long, default_value = "target/convergence.svg")]
    out: PathBuf,
    /// A smoke run in seconds (short sequences, few steps, one seed, one learning rate).
    #[arg(long)]
    quick: bool,
}

/// What a training run varies.
#[derive(Clone, Copy)]
struct Setting {
    layer_norm: bool,
    learning_rate: f64,
    weight_scale: f64,
    seed: u64,
}

/// Every combination of the given learning rates, weight scales and seeds for one model.
fn settings(layer_norm: bool, rates: &[f64], scales: &[f64], seeds: &[u64]) -> Vec<Setting> {
    let mut settings = Vec::new();
    for &learning_rate in rates {
        for &weight_scale in scales {
            for &seed in seeds {
                settings.push(Setting {
                    layer_norm,
                    learning_rate,
                    weight_scale,
                    seed,
                });
            }
        }
    }
    settings
}

/// One training run's result.
struct Run {
    setting: Setting,
    curve: Vec<(usize, f64)>,
}

impl Run {
    fn final_loss(&self) -> f64 {
        self.curve.last().map_or(f64::NAN, |p| p.1)
    }

    fn steps_to(&self, target: f64) -> Option<usize> {
        self.curve.iter().find(|p| p.1 <= target).map(|p| p.0)
    }
}

fn train(args: &Args, setting: Setting, validation: &task::Batch, progress: &ProgressBar) -> Run {
    let Setting {
        layer_norm,
        learning_rate,
        weight_scale,
        seed,
    } = setting;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Rnn::new(args.hidden, 2, layer_norm, weight_scale, &mut rng);
    let mut optimizer = Adam::new(&mut model, learning_rate, 1.0);
    let mut data = StdRng::seed_from_u64(seed + 1_000_000);
    let validate = |model: &Rnn| {
        Rnn::loss(
            &model.forward(&validation.inputs).prediction,
            &validation.targets,
        )
    };
    let mut curve = vec![(0, validate(&model))];
    for step in 1..=args.steps {
        let batch = task::adding_problem(&mut data, args.seq_len, args.batch);
        let (_, mut grads) = model.loss_and_gradients(&batch.inputs, &batch.targets);
        optimizer.update(&mut model, &mut grads);
        if step % args.eval_every == 0 || step == args.steps {
            curve.push((step, validate(&model)));
        }
        progress.inc(1);
    }
    Run { setting, curve }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn name(layer_norm: bool) -> &'static str {
    if layer_norm {
        "layer-normalized RNN"
    } else {
        "plain RNN (bias only)"
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::parse();
    if args.quick {
        (
            args.seq_len,
            args.hidden,
            args.steps,
            args.eval_every,
            args.validation,
        ) = (20, 16, 60, 20, 128);
        (args.seeds, args.learning_rates) = (vec![1], vec![0.003]);
        args.weight_scales = vec![4.0];
    }
    let started = Instant::now();
    let validation = task::adding_problem(
        &mut StdRng::seed_from_u64(424_242),
        args.seq_len,
        args.validation,
    );
    println!(
        "The adding problem: each input sequence (length T = {}) carries random numbers and two\n\
         markers; the target is the sum of the two marked numbers. Numbers are validation mean\n\
         squared error (MSE): lower is better; always predicting the mean (1) scores 0.167.",
        args.seq_len
    );
    let run_all = |settings: &[Setting]| -> Result<Vec<Run>, Box<dyn std::error::Error>> {
        let progress = ProgressBar::new((settings.len() * args.steps) as u64);
        progress.set_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {elapsed} (eta {eta})",
        )?);
        let runs = settings
            .par_iter()
            .map(|&setting| train(&args, setting, &validation, &progress))
            .collect();
        progress.finish_and_clear();
        Ok(runs)
    };
    let mut grid = Vec::new();
    for layer_norm in [true, false] {
        grid.extend(settings(
            layer_norm,
            &args.learning_rates,
            &[1.0],
            &args.seeds,
        ));
    }
    println!(
        "hidden = {}, batch = {}, {} steps; learning rates {:?}; seeds {:?}; {} runs, then weight scales {:?}",
        args.hidden, args.batch, args.steps, args.learning_rates, args.seeds, grid.len(), args.weight_scales
    );
    let mut runs = run_all(&grid)?;

    // Each model at the learning rate with the lowest median final validation loss.
    let finals_of = |runs: &[Run], keep: &dyn Fn(&Setting) -> bool| -> Vec<f64> {
        runs.iter()
            .filter(|r| keep(&r.setting))
            .map(Run::final_loss)
            .collect()
    };
    let mut best_rate = [0.0; 2];
    for layer_norm in [true, false] {
        best_rate[usize::from(layer_norm)] = args
            .learning_rates
            .iter()
            .copied()
            .min_by(|&a, &b| {
                let at = |rate: f64| {
                    median(&mut finals_of(&runs, &|s| {
                        s.layer_norm == layer_norm && s.learning_rate == rate
                    }))
                };
                at(a).total_cmp(&at(b))
            })
            .ok_or("empty learning-rate grid")?;
    }
    let mut scaled = Vec::new();
    for layer_norm in [true, false] {
        let rate = [best_rate[usize::from(layer_norm)]];
        scaled.extend(settings(
            layer_norm,
            &rate,
            &args.weight_scales,
            &args.seeds,
        ));
    }
    runs.extend(run_all(&scaled)?);

    let mut curves = Vec::new();
    println!();
    println!(
        "| model | initial weights | learning rate | steps to validation MSE ≤ {} (median [min, max]) | final validation MSE (median [min, max]) |",
        args.target
    );
    println!("|---|---|---|---|---|");
    let mut scales = vec![1.0];
    scales.extend(&args.weight_scales);
    for layer_norm in [true, false] {
        let best = best_rate[usize::from(layer_norm)];
        for &scale in &scales {
            let chosen: Vec<&Run> = runs
                .iter()
                .filter(|r| {
                    let s = r.setting;
                    s.layer_norm == layer_norm && s.learning_rate == best && s.weight_scale == scale
                })
                .collect();
            let mut finals: Vec<f64> = chosen.iter().map(|r| r.final_loss()).collect();
            let mut reached: Vec<f64> = chosen
                .iter()
                .filter_map(|r| r.steps_to(args.target))
                .map(|s| s as f64)
                .collect();
            let range = |values: &[f64]| {
                let low = values.iter().copied().fold(f64::INFINITY, f64::min);
                (low, values.iter().copied().fold(0.0, f64::max))
            };
            let steps_cell = if reached.len() == chosen.len() {
                let (low, high) = range(&reached);
                format!("{} [{low}, {high}]", median(&mut reached))
            } else {
                format!(
                    "not reached in {} of {} seeds",
                    chosen.len() - reached.len(),
                    chosen.len()
                )
            };
            let (low, high) = range(&finals);
            println!(
                "| {} | ×{scale} | {best} | {steps_cell} | {:.4} [{low:.4}, {high:.4}] |",
                name(layer_norm),
                median(&mut finals)
            );
            if scale == 1.0 {
                curves.push(plot::Curves {
                    label: format!("{} (lr {best})", name(layer_norm)),
                    layer_norm,
                    seeds: chosen.iter().map(|r| r.curve.clone()).collect(),
                });
            }
        }
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let title = format!(
        "Adding problem, T = {}: validation MSE (lower is better), {} seeds each",
        args.seq_len,
        args.seeds.len()
    );
    plot::write_svg(&args.out, &title, &curves, args.target)?;
    println!();
    println!("plot: {}", args.out.display());
    println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
