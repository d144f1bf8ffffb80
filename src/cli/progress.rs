//! The progress line long commands draw on a terminal (never in `--json`/`--csv` output,
//! never when stderr is not a terminal): a bar, how far, the figures to watch and how long
//! is left.

/// `[######--------------] 12/40 loss 0.6931, 3.00 img/s, 9 s left`: `what` (the figures
/// worth watching) follows the count; the time left comes from the pace so far.
pub fn line(done: usize, total: usize, elapsed_s: f64, what: &str) -> String {
    const WIDTH: usize = 20;
    let total = total.max(1);
    let filled = (done.min(total) * WIDTH) / total;
    let left = if done > 0 && done < total {
        let per_item = elapsed_s / done as f64;
        format!(", {} left", duration((total - done) as f64 * per_item))
    } else {
        String::new()
    };
    format!(
        "[{}{}] {done}/{total}{what}{left}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    )
}

/// Redraw `text` in place on stderr (carriage return, then clear to the end of the line).
pub fn draw(text: &str) {
    eprint!("\r\x1b[K{text}");
}

/// Erase the line, so that ordinary output follows on a clean line.
pub fn clear() {
    eprint!("\r\x1b[K");
}

fn duration(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..=99 => format!("{s} s"),
        100..=5999 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Progress and epoch lines on stderr (none with --json), then the run.
#[cfg(feature = "torch")]
pub fn train(
    job: &allconv::train::run::TrainJob,
    json: bool,
) -> allconv::Result<allconv::train::run::TrainSummary> {
    let mut on_epoch = |l: &allconv::train::fit::EpochLog| {
        if !json {
            eprintln!(
                "epoch {:3} (stage {}, {}): loss {:.4} acc {:.3} | val_loss {:.4} val_acc {:.3} val_auroc {} | lr {:.2e} | {:.1} img/s, data wait {:.0}%{}",
                l.epoch, l.stage, l.stage_name, l.loss, l.acc, l.val_loss, l.val_acc,
                l.val_auroc.map_or("n/a".into(), |v| format!("{v:.4}")),
                l.lr, l.images_per_s, 100.0 * l.data_wait_share,
                if l.best { "  (best)" } else { "" }
            );
        }
    };
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal() && !json;
    let mut on_batch = |p: &allconv::train::fit::BatchProgress| {
        if tty {
            if p.batch == p.batches {
                clear();
            } else {
                let line = line(
                    p.batch,
                    p.batches,
                    p.elapsed_s,
                    &format!(" loss {:.4}, {:.1} img/s", p.loss, p.images_per_s),
                );
                draw(&format!("epoch {} {line}", p.epoch));
            }
        }
    };
    job.run(&mut on_epoch, &mut on_batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_the_bar_the_count_and_the_time_left() {
        assert_eq!(
            line(12, 40, 4.0, " loss 0.6931, 3.00 img/s"),
            "[######--------------] 12/40 loss 0.6931, 3.00 img/s, 9 s left"
        );
        assert_eq!(line(40, 40, 8.0, ""), "[####################] 40/40");
        assert_eq!(
            line(1, 1000, 2.0, ""),
            "[--------------------] 1/1000, 33 min 18 s left"
        );
        assert_eq!(line(0, 0, 0.0, ""), "[--------------------] 0/1");
        assert_eq!(duration(7300.0), "2 h 1 min");
    }
}
