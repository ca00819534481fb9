//! The paper's claims on real data: a multi-layer perceptron on the UCI handwritten digits with
//! no normalization, with batch normalization and with layer normalization (this crate), at
//! batch size 128 and at batch size 4, where batch statistics are noise.
//!
//! ```text
//! cargo run --release --example digits                  # the full comparison (< 3 minutes)
//! cargo run --release --example digits -- --quick       # a smoke run in seconds
//! cargo run --release --example digits -- --help        # every flag
//! ```
//!
//! Protocol, fixed before looking at results: one train/test split (1347/450) of the 1797
//! images; per seed, all three variants start from the same weights and see the same batches
//! in the same order; plain SGD (no momentum, no weight decay) at every learning rate of a
//! small grid per batch size; each (variant, batch size) is reported at the learning rate with
//! the lowest median final test error; test error after every epoch.

mod batch_norm;
mod data;
mod mlp;
mod plot;
#[cfg(test)]
mod tests;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mlp::{Mlp, Variant};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(about = "No normalization vs batch norm vs layer norm on handwritten digits")]
struct Args {
    /// Hidden units per layer (64 → H → H → 10).
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Epochs at batch size 128.
    #[arg(long, default_value_t = 60)]
    epochs_large: usize,
    /// Epochs at batch size 4.
    #[arg(long, default_value_t = 20)]
    epochs_small: usize,
    /// Seeds (initial weights and batch order), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5")]
    seeds: Vec<u64>,
    /// Learning-rate grid at batch size 128, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.03,0.1,0.3,1")]
    learning_rates_large: Vec<f64>,
    /// Learning-rate grid at batch size 4, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.003,0.01,0.03,0.1")]
    learning_rates_small: Vec<f64>,
    /// Test error (fraction) that counts as reached.
    #[arg(long, default_value_t = 0.03)]
    target: f64,
    /// Where to write the SVG plot.
    #[arg(long, default_value = "target/digits.svg")]
    out: PathBuf,
    /// A smoke run in seconds (small network, few epochs, one seed, one learning rate).
    #[arg(long)]
    quick: bool,
}

/// The images held out for testing.
const TEST_IMAGES: usize = 450;
/// The split's seed: one split for every run.
const SPLIT_SEED: u64 = 0;
/// The two batch sizes of the paper's figure.
const BATCH_SIZES: [usize; 2] = [128, 4];

/// One training run: test error before training (epoch 0) and after every epoch.
struct Run {
    variant: Variant,
    batch: usize,
    learning_rate: f64,
    errors: Vec<f64>,
}

fn train(
    args: &Args,
    split: &data::Split,
    (variant, batch, learning_rate, seed): (Variant, usize, f64, u64),
    epochs: usize,
    progress: &ProgressBar,
) -> Run {
    let mut model = Mlp::<f32>::new(variant, args.hidden, &mut StdRng::seed_from_u64(seed));
    let mut order_rng = StdRng::seed_from_u64(seed + 1_000_000);
    let mut order: Vec<usize> = (0..split.train.len()).collect();
    let test_error =
        |model: &Mlp<f32>| model.error_rate(split.test.images.view(), &split.test.labels);
    let mut errors = vec![test_error(&model)];
    for _ in 0..epochs {
        order.shuffle(&mut order_rng);
        for indices in order.chunks(batch) {
            let batch = split.train.select(indices);
            let (_, grads) = model.loss_and_gradients(batch.images.view(), &batch.labels);
            model.sgd_step(&grads, learning_rate as f32);
        }
        errors.push(test_error(&model));
        progress.inc(1);
    }
    Run {
        variant,
        batch,
        learning_rate,
        errors,
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

/// The runs of one (variant, batch size, learning rate), one per seed.
struct Group<'r> {
    variant: Variant,
    batch: usize,
    learning_rate: f64,
    runs: Vec<&'r Run>,
}

impl Group<'_> {
    /// The median over seeds of the test error after each epoch.
    fn median_curve(&self) -> Vec<f64> {
        let epochs = self.runs[0].errors.len();
        (0..epochs)
            .map(|epoch| {
                median(
                    &mut self
                        .runs
                        .iter()
                        .map(|r| r.errors[epoch])
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    }

    fn finals(&self) -> Vec<f64> {
        let mut finals: Vec<f64> = self
            .runs
            .iter()
            .map(|r| *r.errors.last().expect("epoch 0"))
            .collect();
        finals.sort_by(f64::total_cmp);
        finals
    }
}

fn percent(value: f64) -> String {
    format!("{:.1}%", 100.0 * value)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::parse();
    if args.quick {
        args.hidden = 32;
        args.epochs_large = 4;
        args.epochs_small = 2;
        args.seeds.truncate(1);
        args.learning_rates_large = vec![0.1];
        args.learning_rates_small = vec![0.01];
    }
    let started = Instant::now();
    let split = data::split(&data::load(), TEST_IMAGES, SPLIT_SEED);
    println!(
        "Handwritten digits (UCI, 8x8 images, 10 classes): {} training and {} test images.",
        split.train.len(),
        split.test.len()
    );
    println!(
        "An MLP 64 -> {h} -> {h} -> 10 (ReLU) trained with plain SGD, three ways:",
        h = args.hidden
    );
    println!(
        "  no normalization (a bias after each hidden layer), batch norm, layer norm (this crate)."
    );
    println!("Numbers are TEST ERROR, the share of test images misclassified: lower is better;");
    println!("guessing scores 90%. Each variant is shown at its best learning rate (lowest median");
    println!(
        "final error over seeds {:?}); the same seed gives every variant the same start.\n",
        args.seeds
    );

    let epochs_of = |batch: usize| {
        if batch == 128 {
            args.epochs_large
        } else {
            args.epochs_small
        }
    };
    let rates_of = |batch: usize| {
        if batch == 128 {
            args.learning_rates_large.clone()
        } else {
            args.learning_rates_small.clone()
        }
    };
    let mut jobs = Vec::new();
    for batch in BATCH_SIZES {
        for variant in Variant::ALL {
            for rate in rates_of(batch) {
                for &seed in &args.seeds {
                    jobs.push((variant, batch, rate, seed));
                }
            }
        }
    }
    let total_epochs: usize = jobs.iter().map(|job| epochs_of(job.1)).sum();
    let progress = ProgressBar::new(total_epochs as u64);
    progress.set_style(ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} epochs, {elapsed} elapsed, ~{eta} left",
    )?);
    progress.set_message(format!("{} training runs", jobs.len()));
    let runs: Vec<Run> = jobs
        .par_iter()
        .map(|&job| train(&args, &split, job, epochs_of(job.1), &progress))
        .collect();
    progress.finish_and_clear();

    let mut best: Vec<Group> = Vec::new();
    for batch in BATCH_SIZES {
        for variant in Variant::ALL {
            let groups = rates_of(batch).into_iter().map(|rate| Group {
                variant,
                batch,
                learning_rate: rate,
                runs: runs
                    .iter()
                    .filter(|r| r.variant == variant && r.batch == batch && r.learning_rate == rate)
                    .collect(),
            });
            let chosen = groups
                .min_by(|a, b| median(&mut a.finals()).total_cmp(&median(&mut b.finals())))
                .expect("a learning rate");
            best.push(chosen);
        }
    }

    println!(
        "{:<6} {:<17} {:>6} {:>13} {:>22} {:>20}",
        "batch", "variant", "lr", "error @ 1/4", "final error", "epochs to reach"
    );
    println!(
        "{:<6} {:<17} {:>6} {:>13} {:>22} {:>20}",
        "",
        "",
        "",
        "(median)",
        "median [min, max]",
        format!("{} (median)", percent(args.target))
    );
    for group in &best {
        let epochs = epochs_of(group.batch);
        let curve = group.median_curve();
        let quarter = epochs.div_ceil(4);
        let finals = group.finals();
        let reached = curve
            .iter()
            .position(|&e| e <= args.target)
            .map_or(format!("not in {epochs}"), |epoch| epoch.to_string());
        println!(
            "{:<6} {:<17} {:>6} {:>13} {:>22} {:>20}",
            group.batch,
            group.variant.name(),
            group.learning_rate,
            format!("{} (ep {quarter})", percent(curve[quarter])),
            format!(
                "{} [{}, {}]",
                percent(median(&mut finals.clone())),
                percent(finals[0]),
                percent(finals[finals.len() - 1])
            ),
            reached
        );
    }
    println!(
        "\nEpochs: {} at batch 128, {} at batch 4. Wall time {:.0} s on {} threads.",
        args.epochs_large,
        args.epochs_small,
        started.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );

    let panels: Vec<plot::Panel> = BATCH_SIZES
        .iter()
        .map(|&batch| plot::Panel {
            title: format!("batch size {batch}"),
            curves: best
                .iter()
                .filter(|g| g.batch == batch)
                .map(|g| plot::Curves {
                    label: format!("{} (lr {})", g.variant.name(), g.learning_rate),
                    color: plot::color(g.variant),
                    median: g.median_curve(),
                    seeds: g.runs.iter().map(|r| r.errors.clone()).collect(),
                })
                .collect(),
        })
        .collect();
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    plot::write_svg(&args.out, &panels, args.target)?;
    println!("Plot: {}", args.out.display());
    Ok(())
}
