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
//! lowest median final validation loss. Validation uses one fixed held-out set.

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

/// One training run's result.
struct Run {
    layer_norm: bool,
    learning_rate: f64,
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

fn train(
    args: &Args,
    layer_norm: bool,
    learning_rate: f64,
    seed: u64,
    validation: &task::Batch,
    progress: &ProgressBar,
) -> Run {
    let mut model = Rnn::new(args.hidden, 2, layer_norm, &mut StdRng::seed_from_u64(seed));
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
    Run {
        layer_norm,
        learning_rate,
        curve,
    }
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
    }
    let started = Instant::now();
    let validation = task::adding_problem(
        &mut StdRng::seed_from_u64(424_242),
        args.seq_len,
        args.validation,
    );
    let mut configurations: Vec<(bool, f64, u64)> = Vec::new();
    for layer_norm in [true, false] {
        for &learning_rate in &args.learning_rates {
            for &seed in &args.seeds {
                configurations.push((layer_norm, learning_rate, seed));
            }
        }
    }
    println!(
        "adding problem, T = {}, hidden = {}, batch = {}, {} steps; learning rates {:?}; seeds {:?}; {} runs",
        args.seq_len, args.hidden, args.batch, args.steps, args.learning_rates, args.seeds, configurations.len()
    );
    let progress = ProgressBar::new((configurations.len() * args.steps) as u64);
    progress.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} steps  {elapsed} (eta {eta})",
    )?);
    let runs: Vec<Run> = configurations
        .par_iter()
        .map(|&(ln, lr, seed)| train(&args, ln, lr, seed, &validation, &progress))
        .collect();
    progress.finish_and_clear();

    // Each model at the learning rate with the lowest median final validation loss.
    let mut curves = Vec::new();
    println!();
    println!(
        "| model | best learning rate | steps to validation MSE ≤ {} (median [min, max]) | final validation MSE (median [min, max]) |",
        args.target
    );
    println!("|---|---|---|---|");
    for layer_norm in [true, false] {
        let median_final = |lr: f64| {
            let mut finals: Vec<f64> = runs
                .iter()
                .filter(|r| r.layer_norm == layer_norm && r.learning_rate == lr)
                .map(Run::final_loss)
                .collect();
            median(&mut finals)
        };
        let best = args
            .learning_rates
            .iter()
            .copied()
            .min_by(|a, b| median_final(*a).total_cmp(&median_final(*b)))
            .ok_or("empty learning-rate grid")?;
        let chosen: Vec<&Run> = runs
            .iter()
            .filter(|r| r.layer_norm == layer_norm && r.learning_rate == best)
            .collect();
        let mut finals: Vec<f64> = chosen.iter().map(|r| r.final_loss()).collect();
        let reached: Vec<f64> = chosen
            .iter()
            .filter_map(|r| r.steps_to(args.target))
            .map(|s| s as f64)
            .collect();
        let steps_cell = if reached.len() == chosen.len() {
            let mut reached = reached.clone();
            let (low, high) = (
                reached.iter().copied().fold(f64::INFINITY, f64::min),
                reached.iter().copied().fold(0.0, f64::max),
            );
            format!("{} [{low}, {high}]", median(&mut reached))
        } else {
            format!(
                "not reached in {} of {} seeds",
                chosen.len() - reached.len(),
                chosen.len()
            )
        };
        let (low, high) = (
            finals.iter().copied().fold(f64::INFINITY, f64::min),
            finals.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "| {} | {best} | {steps_cell} | {:.4} [{low:.4}, {high:.4}] |",
            name(layer_norm),
            median(&mut finals)
        );
        for run in chosen {
            curves.push(plot::Curve {
                label: format!("{} (lr {best})", name(layer_norm)),
                layer_norm,
                points: run.curve.clone(),
            });
        }
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let title = format!(
        "Adding problem, T = {}: validation loss, {} seeds each",
        args.seq_len,
        args.seeds.len()
    );
    plot::write_svg(&args.out, &title, &curves, args.target)?;
    println!();
    println!("plot: {}", args.out.display());
    println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
