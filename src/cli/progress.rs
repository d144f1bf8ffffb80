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
